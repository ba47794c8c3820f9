"""Cirrus's runtime for Python Lambda handlers: the Lambda Runtime API loop.

Runs inside the function's sandbox as `python3 -I /opt/cirrus/bootstrap.py`. It imports
the handler named by _HANDLER (module.function, the module found under
LAMBDA_TASK_ROOT), then asks the Runtime API for one event at a time, calls the handler
with the event and a context object, and posts the result or the error back.
"""

import http.client
import importlib
import json
import os
import sys
import time
import traceback

HOST, _, PORT = os.environ["AWS_LAMBDA_RUNTIME_API"].partition(":")
PREFIX = "/2018-06-01/runtime"
# One connection, kept alive: every invocation is two requests on it.
api = http.client.HTTPConnection(HOST, int(PORT or 80))


def request(method, path, body=None, headers=None):
    api.request(method, PREFIX + path, body=body, headers=headers or {})
    response = api.getresponse()
    data = response.read()
    if response.status >= 300:
        raise RuntimeError(f"Runtime API {method} {path}: {response.status} {data!r}")
    return response, data


def post(path, body, headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request("POST", path, data, headers)


def error_document(e, kind=None):
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
        self.aws_request_id = headers.get("Lambda-Runtime-Aws-Request-Id", "")
        self.invoked_function_arn = headers.get("Lambda-Runtime-Invoked-Function-Arn", "")
        self._deadline_ms = int(headers.get("Lambda-Runtime-Deadline-Ms", "0"))
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        context = headers.get("Lambda-Runtime-Client-Context")
        self.client_context = json.loads(context) if context else None

    def get_remaining_time_in_millis(self):
        return max(self._deadline_ms - int(time.time() * 1000), 0)


def load_handler():
    name = os.environ.get("_HANDLER", "")
    module_name, _, function_name = name.rpartition(".")
    if not module_name:
        raise ValueError(f"Bad handler {name!r}: use module.function")
    sys.path.insert(0, os.environ.get("LAMBDA_TASK_ROOT", "/var/task"))
    try:
        module = importlib.import_module(module_name.replace("/", "."))
    except Exception as e:
        raise ImportError(f"Unable to import module '{module_name}': {e}") from e
    handler = getattr(module, function_name, None)
    if handler is None:
        raise AttributeError(f"Handler '{function_name}' missing on module '{module_name}'")
    return handler


def main():
    try:
        handler = load_handler()
    except ImportError as e:
        post("/init/error", error_document(e, "Runtime.ImportModuleError"),
             {"Lambda-Runtime-Function-Error-Type": "Runtime.ImportModuleError"})
        sys.exit(1)
    except Exception as e:
        post("/init/error", error_document(e, "Runtime.HandlerNotFound"),
             {"Lambda-Runtime-Function-Error-Type": "Runtime.HandlerNotFound"})
        sys.exit(1)
    while True:
        response, body = request("GET", "/invocation/next")
        headers = response.headers  # case-insensitive
        request_id = headers.get("Lambda-Runtime-Aws-Request-Id", "")
        try:
            event = json.loads(body) if body else {}
            result = handler(event, Context(headers))
            payload = json.dumps(result).encode()
        except Exception as e:
            sys.stdout.flush()
            post(f"/invocation/{request_id}/error", error_document(e),
                 {"Lambda-Runtime-Function-Error-Type": "Unhandled"})
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        post(f"/invocation/{request_id}/response", payload)


if __name__ == "__main__":
    main()
