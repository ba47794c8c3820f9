#!/usr/bin/env python3
"""Writes the seed corpus, fuzz/corpus/<target>/<name>: small realistic inputs from the
tests, the examples and AWS's documentation, in each target's input form (see the
target's source). Run it again after changing a target's input form; the fuzzers' own
findings live elsewhere (scripts/fuzz keeps them under its work directory). The
`regression-*` files beside the seeds are inputs that once failed a target: they are
kept by hand, not written here."""

import hashlib
import hmac
import os
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(ROOT, "corpus")
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AK = "AKIAIOSFODNN7EXAMPLE"


def u64(n):
    return struct.pack(">Q", n)


def write(target, name, data):
    folder = os.path.join(CORPUS, target)
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


# AWS's SigV4 examples ("Signature Calculations for the Authorization Header").
GET_OBJECT = (
    "GET /test.txt\n"
    "host: examplebucket.s3.amazonaws.com\n"
    "range: bytes=0-9\n"
    "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
    "x-amz-date: 20130524T000000Z\n"
    f"authorization: AWS4-HMAC-SHA256 Credential={AK}/20130524/us-east-1/s3/aws4_request,"
    "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
    "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41\n"
)
PUT_OBJECT = (
    "PUT /test$file.text\n"
    "host: examplebucket.s3.amazonaws.com\n"
    "date: Fri, 24 May 2013 00:00:00 GMT\n"
    "x-amz-date: 20130524T000000Z\n"
    "x-amz-storage-class: REDUCED_REDUNDANCY\n"
    "x-amz-content-sha256: 44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072\n"
    f"authorization: AWS4-HMAC-SHA256 Credential={AK}/20130524/us-east-1/s3/aws4_request,"
    "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,"
    "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd\n"
    "\nWelcome to Amazon S3."
)
LIST_OBJECTS = (
    "GET /?max-keys=2&prefix=J\n"
    "host: examplebucket.s3.amazonaws.com\n"
    "x-amz-date: 20130524T000000Z\n"
    "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
    f"authorization: AWS4-HMAC-SHA256 Credential={AK}/20130524/us-east-1/s3/aws4_request,"
    "SignedHeaders=host;x-amz-content-sha256;x-amz-date,"
    "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7\n"
)
STREAMING = (
    "PUT /examplebucket/chunkObject.txt\n"
    "host: s3.amazonaws.com\n"
    "x-amz-date: 20130524T000000Z\n"
    "x-amz-storage-class: REDUCED_REDUNDANCY\n"
    "x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD\n"
    "content-encoding: aws-chunked\n"
    "x-amz-decoded-content-length: 66560\n"
    "content-length: 66824\n"
    f"authorization: AWS4-HMAC-SHA256 Credential={AK}/20130524/us-east-1/s3/aws4_request,"
    "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
    "x-amz-decoded-content-length;x-amz-storage-class,"
    "Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9\n"
)
PRESIGNED = (
    "GET /test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    f"&X-Amz-Credential={AK}%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404\n"
    "host: examplebucket.s3.amazonaws.com\n"
)
# AWS's SigV2 query-string example ("Signing and Authenticating REST Requests").
PRESIGNED_V2 = (
    "GET /awsexamplebucket1/photos/puppy.jpg"
    f"?AWSAccessKeyId={AK}&Signature=NpgCjnDzrM%2BWFzoENXmpNDUsSn8%3D&Expires=1175139620\n"
    "host: awsexamplebucket1.s3.us-west-1.amazonaws.com\n"
)
PLAIN = [
    "PUT /photos/cat.jpg\nhost: 127.0.0.1:9000\ncontent-type: image/jpeg\nx-amz-meta-owner: ann\n",
    "POST /photos/big.bin?uploads\nhost: 127.0.0.1:9000\nx-amz-checksum-algorithm: CRC32\n",
    "PUT /photos/big.bin?partNumber=2&uploadId=0199a\nhost: 127.0.0.1:9000\n"
    "x-amz-copy-source: /other/src%20key\nx-amz-copy-source-range: bytes=0-5242879\n",
    "GET /photos?list-type=2&prefix=a%2Fb&delimiter=%2F&encoding-type=url\nhost: localhost\n",
    "DELETE /photos/a+b%2Fc\nhost: 127.0.0.1:9000\nx-amz-meta-x: 1\nx-amz-meta-x: 2\n",
]

for i, request in enumerate([GET_OBJECT, PUT_OBJECT, LIST_OBJECTS, STREAMING, PRESIGNED] + PLAIN):
    write("sigv4_header", f"request-{i}", request)

# sigv4_presigned: expires (u64), age (u64), region (byte), then the request.
choices = u64(3600) + u64(60) + b"\x00"
for i, request in enumerate([PRESIGNED, GET_OBJECT] + PLAIN):
    write("sigv4_presigned", f"request-{i}", choices + request.encode())

# sigv2_presigned: Expires (u64), then the request.
for i, request in enumerate([PRESIGNED_V2] + PLAIN):
    write("sigv2_presigned", f"request-{i}", u64(1_175_139_620) + request.encode())


def signing_key(date="20130524", region="us-east-1"):
    k = hmac.new(f"AWS4{SECRET}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def signed_chunks(chunks, trailer=None):
    """A signed aws-chunked body with the streaming example's signing material."""
    key = signing_key()
    scope = "20130524/us-east-1/s3/aws4_request"
    empty = hashlib.sha256(b"").hexdigest()
    previous = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    body = b""
    for data in chunks + [b""]:
        to_sign = (
            f"AWS4-HMAC-SHA256-PAYLOAD\n20130524T000000Z\n{scope}\n{previous}\n{empty}\n"
            f"{hashlib.sha256(data).hexdigest()}"
        )
        previous = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        body += f"{len(data):x};chunk-signature={previous}\r\n".encode() + data
        if data:
            body += b"\r\n"
    if trailer:
        body += trailer.encode() + b"\r\n"
        canonical = trailer + "\n"
        to_sign = (
            f"AWS4-HMAC-SHA256-TRAILER\n20130524T000000Z\n{scope}\n{previous}\n"
            f"{hashlib.sha256(canonical.encode()).hexdigest()}"
        )
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        body += f"x-amz-trailer-signature:{signature}\r\n".encode()
    return body + b"\r\n"


# aws_chunked: signed (bit 0 of a byte), four read sizes, then the body.
UNSIGNED = b"\x00\x03\x07\x01\x40"
SIGNED = b"\x01\x03\x07\x01\x40"
write("aws_chunked", "unsigned-trailer",
      UNSIGNED + b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n")
write("aws_chunked", "unsigned-ext", UNSIGNED + b"3;ext=1\r\nabc\r\n0\r\n\r\n")
write("aws_chunked", "unsigned-no-final-line", UNSIGNED + b"4\r\nabcd\r\n0\r\n")
write("aws_chunked", "signed", SIGNED + signed_chunks([b"a" * 100, b"b" * 20]))
write("aws_chunked", "signed-trailer",
      SIGNED + signed_chunks([b"hello world"], "x-amz-checksum-crc32:DUoRhQ=="))

# body_headers: requests whose headers describe a body.
for i, request in enumerate([
    STREAMING,
    PUT_OBJECT,
    "PUT /b/k\nx-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER\n"
    "x-amz-trailer: x-amz-checksum-crc32\nx-amz-decoded-content-length: 11\n"
    "content-encoding: aws-chunked\n",
    "PUT /b/k\nx-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER\n"
    "x-amz-trailer: x-amz-checksum-crc32c\n",
    "PUT /b/k\nx-amz-content-sha256: UNSIGNED-PAYLOAD\ncontent-md5: XrY7u+Ae7tCTyyK7j1rNww==\n"
    "x-amz-checksum-sha256: uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek=\n",
    "PUT /b/k\nx-amz-sdk-checksum-algorithm: CRC32C\ncontent-length: 5\n",
]):
    write("body_headers", f"request-{i}", request)

# s3_xml: DeleteObjects documents (AWS's example and the tests'); listing key lines.
write("s3_xml", "delete-aws",
      '<?xml version="1.0" encoding="UTF-8"?>\n'
      '<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Quiet>true</Quiet>'
      "<Object><Key>sample1.txt</Key></Object>"
      "<Object><Key>sample2.txt</Key><VersionId>OYcLXagmS.WaD..oyH4KRguB95_YhLs7</VersionId>"
      "</Object></Delete>")
write("s3_xml", "delete-escaped",
      "<Delete><Object><Key>a &amp; b/&#x1F600;&lt;c&gt;</Key></Object></Delete>")
write("s3_xml", "delete-broken", "<Delete><Object><Key>x</Object>")
write("s3_xml", "keys", "photos/2024/cat & dog <1>.jpg\nphotos/")
write("s3_xml", "keys-odd", 'a\r\nb\t"c\'\nd]]>e')

# multipart_complete: AWS's example and the tests'.
write("multipart_complete", "aws",
      "<CompleteMultipartUpload>\n  <Part>\n    <PartNumber>1</PartNumber>\n"
      '    <ETag>"a54357aff0632cce46d942af68356b38"</ETag>\n  </Part>\n  <Part>\n'
      '    <PartNumber>2</PartNumber>\n    <ETag>"0c78aef83f66abc1fa1e8477f296d394"</ETag>\n'
      "  </Part>\n</CompleteMultipartUpload>")
write("multipart_complete", "namespaced",
      '<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Part>'
      '<ETag>"a"</ETag><PartNumber>2</PartNumber></Part><Part><ETag>&quot;b&quot;</ETag>'
      "<PartNumber>3</PartNumber><ChecksumCRC32>DUoRhQ==</ChecksumCRC32></Part>"
      "</CompleteMultipartUpload>")
write("multipart_complete", "empty", "<CompleteMultipartUpload/>")

# range_conditional: size, two numbers (u64 each), then a request.
for i, request in enumerate([
    'GET /b/k\nrange: bytes=0-9\nif-match: "e3b0c442"\n',
    "GET /b/k\nrange: bytes=-500\nif-none-match: *\n",
    "GET /b/k\nrange: bytes=9500-\nif-none-match: W/\"x\", \"y\"\n",
    "GET /b/k\nrange: bytes=0-1,5-6\n",
    "PUT /b/k\nx-amz-copy-source: /src/a%20b?versionId=null\nif-match: \"abc\"\n",
    "PUT /b/k\nx-amz-copy-source: src\nif-none-match: \"abc\"\n",
]):
    write("range_conditional", f"request-{i}", u64(10_000) + u64(0) + u64(99) + request.encode())

# api_json: deploy configs, triggers, alias targets, destinations, grants, durations.
for i, text in enumerate([
    '{"memory_mb":64,"timeout":"2s","env":{"GREETING":"hi"},"public":false}',
    '{"max_concurrency":4,"min_loaded":1,"idle_timeout":"10m","allowed_hosts":["api.example.com:8443"]}',
    '{"storage":["bucket:uploads:read","kv:photos:write"],"max_attempts":5,"retry_delay":"250ms",'
    '"max_event_age":"1h","on_success":["function:b","topic:done","kv:t","bucket:out/{key}.txt"],'
    '"on_failure":"dlq"}',
    '{"timeout":30}',
    '{"route":"GET /orders/{id}"}',
    '{"topic":"orders.created"}',
    '{"schedule":"rate(5 minutes)"}',
    '{"table":"photos"}',
    '{"bucket":{"name":"uploads","events":["created"],"prefix":"photos/","suffix":".ppm"}}',
    '{"version":3}',
    "function:resize",
    "bucket:out/{request_id}.json",
    "bucket:uploads:write",
    "1m 30s",
    "250ms",
]):
    write("api_json", f"input-{i}", text)

# api_params: a /fn segment (first line), then headers.
for i, text in enumerate([
    "hello%40prod\nx-cirrus-idempotency-key: order-42\nif-match: \"3\"\n",
    "f%24LATEST\nif-none-match: *\n",
    "2026-11-01\n",
    "2026-11-01T10:00:00.123Z\n",
    "bad%4\nx-cirrus-idempotency-key: a b\n",
]):
    write("api_params", f"input-{i}", text)

# manifest: the examples' and the tests' cirrus.toml.
repo = os.path.dirname(ROOT)
for name in ["examples/cirrus.toml", "examples/storage/feedback.toml",
             "examples/storage/photos.toml", "examples/hello-py/cirrus.toml"]:
    with open(os.path.join(repo, name), "rb") as f:
        write("manifest", name.replace("/", "-"), f.read())
write("manifest", "pipeline",
      '[functions.a]\nsource = "a.wasm"\non_success = ["function:c"]\n'
      '[functions.b]\nsource = "b.wasm"\n'
      '[functions.c]\nsource = "c.wasm"\non_success = ["function:b"]\n'
      'triggers = [{ route = "GET /o/{id}" }, { topic = "orders" }, { schedule = "0 9 * * *" }]\n')

# schedule: a time (u64 ms), then the expression.
for i, text in enumerate([
    "rate(5 minutes)", "rate(1 day)", "0 9 * * MON-FRI", "TZ=Europe/Paris 0 9 * * *",
    "CRON_TZ=America/New_York */15 * * * *", "0 0 29 2 *", "@daily", "0 0 L * *",
]):
    write("schedule", f"input-{i}", u64(1_795_348_800_000) + text.encode())

# route: patterns from the README and the tests.
for i, text in enumerate([
    "GET /orders/{id}", "/files/{*path}", "POST /orders/new", "/", "get /a/{x}/b/{y}",
]):
    write("route", f"input-{i}", text)

# cloudevents: structured and binary requests; then id/source/type/data lines.
for i, text in enumerate([
    'POST /v1/topics/orders\ncontent-type: application/cloudevents+json\n\n'
    '{"specversion":"1.0","id":"1","source":"/shop","type":"order.created","data":{"n":1}}',
    'POST /v1/topics/orders\ncontent-type: application/cloudevents+json; charset=utf-8\n\n'
    '{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"aGk="}',
    "POST /v1/topics/orders\nce-specversion: 1.0\nce-id: 7\nce-source: /s\nce-type: t\n"
    "content-type: text/plain\n\nhello",
    "A234-1234-1234\n/mycontext/subcontext\ncom.example.someevent\n<much wow=\"xml\"/>",
]):
    write("cloudevents", f"input-{i}", text)

# traceparent: the W3C specification's examples.
for i, text in enumerate([
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
    "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like",
    "00-00000000000000000000000000000000-0000000000000000-00",
]):
    write("traceparent", f"input-{i}", text)
