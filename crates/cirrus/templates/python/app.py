"""{{name}}: a Cirrus function in Python. Edit `handle`: a request comes in, a response
goes out."""

from cirrus_http import Request, Response, function


def handle(request: Request) -> Response:
    name = request.body.decode("utf-8", errors="replace").strip() or "world"
    return Response(200, f"Hello, {name}! ({request.method} {request.path})\n")


IncomingHandler = function(handle)
