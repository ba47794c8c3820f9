"""The glue between Cirrus (a wasi:http/proxy host) and `handle` in app.py: reads the
whole request, calls the handler, writes its response. You should not need to edit it.

componentize-py generates `wit_world` and `componentize_py_types` from ./wit (the WIT
Cirrus serves) at build time.
"""

from dataclasses import dataclass, field

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import streams, types
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


@dataclass
class Request:
    method: str
    # The path below the function: /fn/NAME/a/b?x=1 arrives as /a/b?x=1.
    path: str
    headers: dict
    body: bytes


@dataclass
class Response:
    status: int = 200
    body: bytes | str = b""
    headers: dict = field(default_factory=lambda: {"content-type": "text/plain; charset=utf-8"})


def _method(method) -> str:
    if isinstance(method, types.Method_Other):
        return method.value
    return type(method).__name__.split("_", 1)[1].upper()


def _read(request: IncomingRequest) -> Request:
    headers = {}
    for name, value in request.headers().entries():
        headers[name] = value.decode("utf-8", errors="replace")
    chunks = []
    body = request.consume()
    with body.stream() as stream:
        while True:
            try:
                chunks.append(stream.blocking_read(65536))
            except Err as e:
                if isinstance(e.value, streams.StreamError_Closed):
                    break
                raise
    types.IncomingBody.finish(body)
    return Request(_method(request.method()), request.path_with_query() or "/", headers, b"".join(chunks))


def serve(handle, request: IncomingRequest, response_out: ResponseOutparam) -> None:
    answer = handle(_read(request))
    payload = answer.body.encode("utf-8") if isinstance(answer.body, str) else answer.body
    headers = Fields.from_list([(k, str(v).encode()) for k, v in answer.headers.items()])
    response = OutgoingResponse(headers)
    response.set_status_code(answer.status)
    out_body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    with out_body.write() as stream:
        for i in range(0, len(payload), 4096):
            stream.blocking_write_and_flush(payload[i:i + 4096])
    OutgoingBody.finish(out_body, None)


def function(handle):
    """Makes `handle(request) -> Response` the component's incoming handler."""

    class IncomingHandler(exports.IncomingHandler):
        def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
            serve(handle, request, response_out)

    return IncomingHandler
