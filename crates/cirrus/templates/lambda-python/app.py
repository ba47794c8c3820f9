"""{{name}}: a Lambda handler on Cirrus's {{runtime}} runtime. Over /fn it receives an
API Gateway HTTP API (2.0) event and answers with statusCode, headers and body."""

import json


def handler(event, context):
    body = event.get("body") or ""
    name = body.strip() or "world"
    return {
        "statusCode": 200,
        "headers": {"content-type": "text/plain; charset=utf-8"},
        "body": f"Hello, {name}! (request {context.aws_request_id})\n",
    }
