"""Cirrus's runtime for Python Lambda handlers: the Lambda Runtime API loop.

Runs inside the function's sandbox as `python3 -I -S /opt/cirrus/bootstrap.py`. It imports
the handler named by _HANDLER (module.function, the module found under
LAMBDA_TASK_ROOT), then asks the Runtime API for one event at a time, calls the handler
with the event and a context object, and posts the result or the error back.

Start-up time is the cold start users wait for, so this speaks HTTP/1.1 over one
kept-alive socket itself (http.client pulls in the email package, tens of
milliseconds) and imports traceback only when a handler fails. `-S` skips site's .pth
processing (code that runs at every start); the host's package directories are added
to sys.path here instead, as site would.
"""

import json
import os
import socket
import sys
import time

HOST, _, PORT = os.environ["AWS_LAMBDA_RUNTIME_API"].partition(":")
PREFIX = "/2018-06-01/runtime"


class RuntimeApi:
    """One keep-alive connection to the Runtime API: each invocation is two requests."""

    def __init__(self):
        self.sock = socket.create_connection((HOST, int(PORT or 80)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def _fill(self):
        chunk = self.sock.recv(262144)
        if not chunk:
            raise ConnectionError("the Runtime API closed the connection")
        self.buf += chunk

    def _line(self):
        while (end := self.buf.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    def _exactly(self, n):
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def request(self, method, path, body=b"", headers=()):
        head = [f"{method} {PREFIX}{path} HTTP/1.1", f"Host: {HOST}",
                f"Content-Length: {len(body)}"]
        head.extend(f"{name}: {value}" for name, value in headers)
        self.sock.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        status = int(self._line().split(b" ", 2)[1])
        fields = {}
        while line := self._line():
            name, _, value = line.decode("utf-8", "replace").partition(":")
            fields[name.strip().lower()] = value.strip()
        if "content-length" in fields:
            data = self._exactly(int(fields["content-length"]))
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int(self._line().split(b";")[0], 16):
                parts.append(self._exactly(size))
                self._exactly(2)
            while self._line():
                pass
            data = b"".join(parts)
        else:
            data = b""
        if status >= 300:
            raise RuntimeError(f"Runtime API {method} {path}: {status} {data!r}")
        return fields, data

    def post(self, path, body, headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.request("POST", path, data, headers)


def error_document(e, kind=None):
    import traceback
    return {
        "errorType": kind or type(e).__name__,
        "errorMessage": str(e),
        # The handler's frames, not this loop's.
        "stackTrace": [
            line
            for frame, line in zip(traceback.extract_tb(e.__traceback__),
                                   traceback.format_tb(e.__traceback__))
            if frame.filename != __file__
        ],
    }


class Context:
    def __init__(self, headers):
        self.aws_request_id = headers.get("lambda-runtime-aws-request-id", "")
        self.invoked_function_arn = headers.get("lambda-runtime-invoked-function-arn", "")
        self._deadline_ms = int(headers.get("lambda-runtime-deadline-ms", "0"))
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        context = headers.get("lambda-runtime-client-context")
        self.client_context = json.loads(context) if context else None

    def get_remaining_time_in_millis(self):
        return max(self._deadline_ms - int(time.time() * 1000), 0)


def package_paths():
    """The host's site-packages directories and the directories their .pth files name
    (as site would add them, without running any code a .pth file holds)."""
    import site
    paths = []
    for directory in site.getsitepackages():
        if not os.path.isdir(directory):
            continue
        paths.append(directory)
        for name in sorted(os.listdir(directory)):
            if not name.endswith(".pth"):
                continue
            try:
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    for line in f:
                        line = line.strip()
                        if line and not line.startswith(("#", "import ", "import\t")):
                            path = os.path.join(directory, line)
                            if os.path.isdir(path):
                                paths.append(path)
            except OSError:
                pass
    return paths


def load_handler():
    name = os.environ.get("_HANDLER", "")
    module_name, _, function_name = name.rpartition(".")
    if not module_name:
        raise ValueError(f"Bad handler {name!r}: use module.function")
    sys.path.insert(0, os.environ.get("LAMBDA_TASK_ROOT", "/var/task"))
    sys.path.extend(package_paths())
    import importlib
    try:
        module = importlib.import_module(module_name.replace("/", "."))
    except Exception as e:
        raise ImportError(f"Unable to import module '{module_name}': {e}") from e
    handler = getattr(module, function_name, None)
    if handler is None:
        raise AttributeError(f"Handler '{function_name}' missing on module '{module_name}'")
    return handler


def main():
    api = RuntimeApi()
    try:
        handler = load_handler()
    except ImportError as e:
        kind = "Runtime.ImportModuleError"
        api.post("/init/error", error_document(e, kind),
                 [("Lambda-Runtime-Function-Error-Type", kind)])
        sys.exit(1)
    except Exception as e:
        kind = "Runtime.HandlerNotFound"
        api.post("/init/error", error_document(e, kind),
                 [("Lambda-Runtime-Function-Error-Type", kind)])
        sys.exit(1)
    while True:
        headers, body = api.request("GET", "/invocation/next")
        request_id = headers.get("lambda-runtime-aws-request-id", "")
        try:
            event = json.loads(body) if body else {}
            result = handler(event, Context(headers))
            payload = json.dumps(result).encode()
        except Exception as e:
            sys.stdout.flush()
            api.post(f"/invocation/{request_id}/error", error_document(e),
                     [("Lambda-Runtime-Function-Error-Type", "Unhandled")])
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        api.post(f"/invocation/{request_id}/response", payload)


if __name__ == "__main__":
    main()
