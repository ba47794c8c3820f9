"""The S3 API driven by boto3 (and botocore's own signer for hand-made requests).

Run by tests/s3.rs as: python3 boto3_suite.py ENDPOINT CREDENTIALS_FILE
Every check is an assert; the first failure ends the run with a traceback.
"""

import base64
import concurrent.futures
import configparser
import hashlib
import os
import socket
import sys
import time
import urllib.error
import urllib.request
import zlib

import boto3
import botocore.httpchecksum
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from urllib.parse import quote, urlparse

ENDPOINT, CREDENTIALS = sys.argv[1], sys.argv[2]
keys = configparser.ConfigParser()
keys.read(CREDENTIALS)
ACCESS, SECRET = keys["default"]["aws_access_key_id"], keys["default"]["aws_secret_access_key"]

s3 = boto3.client(
    "s3",
    endpoint_url=ENDPOINT,
    aws_access_key_id=ACCESS,
    aws_secret_access_key=SECRET,
    region_name="us-east-1",
    # Retries as real clients make them (4xx answers are never retried, so no error code
    # checked below can be hidden by them).
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
)


def code_of(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError(f"{call.__name__} succeeded but should have failed")


class Signer(S3SigV4Auth):
    """botocore's S3 signer, signing the payload hash the request claims (if any)."""

    def __init__(self, secret, claimed):
        super().__init__(Credentials(ACCESS, secret), "s3", "us-east-1")
        self.claimed = claimed

    def payload(self, request):
        return self.claimed or super().payload(request)


def raw(method, path, body=b"", headers=None, sign=True, secret=SECRET):
    """A request signed by botocore's SigV4 signer (or not at all), sent by urllib."""
    url = ENDPOINT + path
    headers = dict(headers or {})
    claimed = headers.pop("x-amz-content-sha256", None)
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    if sign:
        Signer(secret, claimed).add_auth(request)
    prepared = urllib.request.Request(url, data=body or None, method=method, headers=dict(request.headers))
    try:
        with urllib.request.urlopen(prepared) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# --- buckets -------------------------------------------------------------------------
s3.create_bucket(Bucket="box")
assert code_of(s3.create_bucket, Bucket="box") == ("BucketAlreadyOwnedByYou", 409)
assert code_of(s3.create_bucket, Bucket="Bad_Name") == ("InvalidBucketName", 400)
assert "box" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
s3.head_bucket(Bucket="box")
assert code_of(s3.head_bucket, Bucket="nope")[1] == 404
assert code_of(s3.list_objects_v2, Bucket="nope") == ("NoSuchBucket", 404)

# --- put / get / head / metadata / checksums -----------------------------------------
put = s3.put_object(Bucket="box", Key="a.txt", Body=b"hello world", ContentType="text/plain",
                    Metadata={"owner": "ann"})
assert put["ETag"] == '"%s"' % hashlib.md5(b"hello world").hexdigest(), put["ETag"]
got = s3.get_object(Bucket="box", Key="a.txt")
assert got["Body"].read() == b"hello world"
assert got["ContentType"] == "text/plain"
assert got["Metadata"] == {"owner": "ann"}
head = s3.head_object(Bucket="box", Key="a.txt")
assert head["ContentLength"] == 11
assert s3.get_object(Bucket="box", Key="a.txt", Range="bytes=6-")["Body"].read() == b"world"
assert s3.get_object(Bucket="box", Key="a.txt", Range="bytes=-5")["Body"].read() == b"world"
assert code_of(s3.get_object, Bucket="box", Key="a.txt", Range="bytes=50-") == ("InvalidRange", 416)
assert code_of(s3.get_object, Bucket="box", Key="missing") == ("NoSuchKey", 404)
assert code_of(s3.head_object, Bucket="box", Key="missing")[1] == 404

# Kept headers and response overrides (how a presigned link names its download).
s3.put_object(Bucket="box", Key="report.pdf", Body=b"%PDF", ContentType="application/pdf",
              CacheControl="max-age=60", ContentDisposition="inline", ContentLanguage="en")
head = s3.head_object(Bucket="box", Key="report.pdf")
assert (head["CacheControl"], head["ContentDisposition"], head["ContentLanguage"]) == ("max-age=60", "inline", "en"), head
assert "header:cache-control" not in head["Metadata"] and head["Metadata"] == {}, head["Metadata"]
got = s3.get_object(Bucket="box", Key="report.pdf", ResponseContentDisposition='attachment; filename="r.pdf"',
                    ResponseContentType="application/octet-stream")
assert got["ContentDisposition"] == 'attachment; filename="r.pdf"' and got["ContentType"] == "application/octet-stream"

# SHA256 and CRC32 checksums: sent by boto3, verified and stored, returned on GET.
s3.put_object(Bucket="box", Key="sum", Body=b"abc", ChecksumAlgorithm="SHA256")
got = s3.get_object(Bucket="box", Key="sum", ChecksumMode="ENABLED")
assert got["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(b"abc").digest()).decode()
assert got["Body"].read() == b"abc"
crc = base64.b64encode(zlib.crc32(b"abc").to_bytes(4, "big")).decode()
s3.put_object(Bucket="box", Key="crc", Body=b"abc", ChecksumCRC32=crc)
wrong = base64.b64encode((zlib.crc32(b"abc") ^ 1).to_bytes(4, "big")).decode()
assert code_of(s3.put_object, Bucket="box", Key="crc", Body=b"abd", ChecksumCRC32=crc) == ("BadDigest", 400)
assert code_of(s3.put_object, Bucket="box", Key="crc", Body=b"abc", ChecksumCRC32=wrong) == ("BadDigest", 400)
assert s3.get_object(Bucket="box", Key="crc")["Body"].read() == b"abc"  # intact

# aws-chunked with a checksum trailer: what botocore sends over TLS
# (STREAMING-UNSIGNED-PAYLOAD-TRAILER). Make it believe the endpoint is https.
real_urlparse = botocore.httpchecksum.urlparse
botocore.httpchecksum.urlparse = lambda u: real_urlparse(u.replace("http://", "https://", 1))
try:
    big = os.urandom(3 * 1024 * 1024 + 17)  # several 1 MiB aws-chunks
    s3.put_object(Bucket="box", Key="chunked.bin", Body=big, ChecksumAlgorithm="CRC32")
finally:
    botocore.httpchecksum.urlparse = real_urlparse
got = s3.get_object(Bucket="box", Key="chunked.bin", ChecksumMode="ENABLED")
assert got["Body"].read() == big
assert got["ChecksumCRC32"] == base64.b64encode(zlib.crc32(big).to_bytes(4, "big")).decode()

# The same framing by hand with a wrong trailer checksum: BadDigest, nothing stored.
payload = b"chunky"
body = b"%x\r\n%s\r\n0\r\nx-amz-checksum-crc32:%s\r\n\r\n" % (len(payload), payload, wrong.encode())
status, text = raw("PUT", "/box/trailer-bad", body, {
    "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    "content-encoding": "aws-chunked", "x-amz-trailer": "x-amz-checksum-crc32",
    "x-amz-decoded-content-length": str(len(payload)),
})
assert status == 400 and b"<Code>BadDigest</Code>" in text, (status, text)
assert code_of(s3.head_object, Bucket="box", Key="trailer-bad")[1] == 404
good = base64.b64encode(zlib.crc32(payload).to_bytes(4, "big"))
body = b"%x\r\n%s\r\n0\r\nx-amz-checksum-crc32:%s\r\n\r\n" % (len(payload), payload, good)
status, text = raw("PUT", "/box/trailer-good", body, {
    "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    "content-encoding": "aws-chunked", "x-amz-trailer": "x-amz-checksum-crc32",
    "x-amz-decoded-content-length": str(len(payload)),
})
assert status == 200, (status, text)
assert s3.get_object(Bucket="box", Key="trailer-good")["Body"].read() == payload

# Conditional writes: create-only and replace-only-this-version.
first = s3.put_object(Bucket="box", Key="cond", Body=b"v1", IfNoneMatch="*")
assert code_of(s3.put_object, Bucket="box", Key="cond", Body=b"v2", IfNoneMatch="*") == ("PreconditionFailed", 412)
assert code_of(s3.put_object, Bucket="box", Key="cond", Body=b"v2", IfMatch='"0000"') == ("PreconditionFailed", 412)
assert code_of(s3.put_object, Bucket="box", Key="nothing-here", Body=b"v2", IfMatch=first["ETag"])[1] == 404
s3.put_object(Bucket="box", Key="cond", Body=b"v2", IfMatch=first["ETag"])
assert s3.get_object(Bucket="box", Key="cond")["Body"].read() == b"v2"

# --- opaque keys: nothing escapes the data dir --------------------------------------
odd = ["../../escape.txt", "dir/../../../etc/passwd", "with space/é ü/+plus", "/leading", "a//b", "..", "%2e%2e"]
for k in odd:
    s3.put_object(Bucket="box", Key=k, Body=k.encode())
for k in odd:
    assert s3.get_object(Bucket="box", Key=k)["Body"].read() == k.encode(), k

# --- listing: prefix, delimiter, pages, encoding -------------------------------------
for i in range(5):
    s3.put_object(Bucket="box", Key=f"logs/2026/{i}.log", Body=b"x")
s3.put_object(Bucket="box", Key="logs/top.log", Body=b"x")
listed = s3.list_objects_v2(Bucket="box", Prefix="logs/", Delimiter="/")
assert [c["Prefix"] for c in listed["CommonPrefixes"]] == ["logs/2026/"], listed
assert [o["Key"] for o in listed["Contents"]] == ["logs/top.log"]
pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket="box", Prefix="logs/2026/",
                                                          PaginationConfig={"PageSize": 2}))
assert [len(p["Contents"]) for p in pages] == [2, 2, 1], pages
assert [o["Key"] for p in pages for o in p["Contents"]] == [f"logs/2026/{i}.log" for i in range(5)]
# Common prefixes count toward pages and are never repeated across them.
pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket="box", Delimiter="/",
                                                          PaginationConfig={"PageSize": 1}))
prefixes = [c["Prefix"] for p in pages for c in p.get("CommonPrefixes", [])]
assert len(prefixes) == len(set(prefixes)), prefixes
assert "logs/" in prefixes and "with space/" in prefixes, prefixes
everything = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket="box") for o in p.get("Contents", [])]
assert set(odd) <= set(everything), everything  # boto3 asks for encoding-type=url and decodes
assert everything == sorted(everything, key=lambda k: k.encode())
# A "folder" object and a key with the highest code point do not derail paging.
for k in ["dirs/", "dirs/a.jpg", "dirs/b.jpg", "zz/\U0010FFFFz", "zz/x"]:
    s3.put_object(Bucket="box", Key=k, Body=b"d")
keys = [o["Key"] for p in s3.get_paginator("list_objects").paginate(
    Bucket="box", Prefix="dirs/", Delimiter="/", PaginationConfig={"PageSize": 1}) for o in p.get("Contents", [])]
assert keys == ["dirs/", "dirs/a.jpg", "dirs/b.jpg"], keys
pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket="box", Prefix="zz", Delimiter="/",
                                                          PaginationConfig={"PageSize": 1}))
assert [c["Prefix"] for p in pages for c in p.get("CommonPrefixes", [])] == ["zz/"], pages
s3.delete_objects(Bucket="box", Delete={"Objects": [{"Key": k} for k in ["dirs/", "dirs/a.jpg", "dirs/b.jpg", "zz/\U0010FFFFz", "zz/x"]]})
nothing = s3.list_objects_v2(Bucket="box", MaxKeys=0)
assert nothing["IsTruncated"] is False and nothing["KeyCount"] == 0, nothing
v1 = s3.list_objects(Bucket="box", Prefix="logs/", MaxKeys=3)
assert v1["IsTruncated"] and len(v1["Contents"]) == 3
assert code_of(s3.list_objects_v2, Bucket="box", ContinuationToken="!!!")[0] == "InvalidArgument"

# --- copy / delete -------------------------------------------------------------------
copied = s3.copy_object(Bucket="box", Key="copy.txt", CopySource={"Bucket": "box", "Key": "a.txt"})
assert copied["CopyObjectResult"]["ETag"] == put["ETag"]
assert s3.get_object(Bucket="box", Key="copy.txt")["Metadata"] == {"owner": "ann"}
s3.copy_object(Bucket="box", Key="copy2.txt", CopySource={"Bucket": "box", "Key": "with space/é ü/+plus"},
               MetadataDirective="REPLACE", Metadata={"k": "v"}, ContentType="text/x")
got = s3.get_object(Bucket="box", Key="copy2.txt")
assert got["Metadata"] == {"k": "v"} and got["ContentType"] == "text/x"
assert code_of(s3.copy_object, Bucket="box", Key="c3", CopySource={"Bucket": "box", "Key": "missing"})[0] == "NoSuchKey"
s3.delete_object(Bucket="box", Key="copy2.txt")
s3.delete_object(Bucket="box", Key="never-existed")  # deleting a missing key succeeds
assert code_of(s3.head_object, Bucket="box", Key="copy2.txt")[1] == 404
result = s3.delete_objects(Bucket="box", Delete={"Objects": [{"Key": k} for k in odd]})
assert sorted(d["Key"] for d in result["Deleted"]) == sorted(odd)
for k in odd:
    assert code_of(s3.head_object, Bucket="box", Key=k)[1] == 404

# --- presigned GET (and PUT) ----------------------------------------------------------
# boto3 presigns with SigV2 unless the client says s3v4; both forms work.
v4 = boto3.client(
    "s3", endpoint_url=ENDPOINT, aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
    region_name="us-east-1", config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
)
for client in (s3, v4):
    url = client.generate_presigned_url("get_object", Params={"Bucket": "box", "Key": "a.txt"}, ExpiresIn=60)
    with urllib.request.urlopen(url) as r:
        assert r.read() == b"hello world"
    tampered = url.replace("a.txt", "copy.txt")
    try:
        urllib.request.urlopen(tampered)
        raise AssertionError("a tampered presigned URL worked")
    except urllib.error.HTTPError as e:
        assert e.code == 403 and b"SignatureDoesNotMatch" in e.read()
expired = v4.generate_presigned_url("get_object", Params={"Bucket": "box", "Key": "a.txt"}, ExpiresIn=1)
time.sleep(2)
try:
    urllib.request.urlopen(expired)
    raise AssertionError("an expired presigned URL worked")
except urllib.error.HTTPError as e:
    assert e.code == 403 and b"expired" in e.read()
url = v4.generate_presigned_url("put_object", Params={"Bucket": "box", "Key": "via-url"}, ExpiresIn=60)
with urllib.request.urlopen(urllib.request.Request(url, data=b"posted", method="PUT")) as r:
    assert r.status == 200
assert s3.get_object(Bucket="box", Key="via-url")["Body"].read() == b"posted"

# A client that goes away mid-upload leaves nothing visible.
url = urlparse(v4.generate_presigned_url("put_object", Params={"Bucket": "box", "Key": "partial"}, ExpiresIn=60))
sock = socket.create_connection((url.hostname, url.port))
sock.sendall(f"PUT {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Length: 1000000\r\n\r\n".encode() + b"x" * 1000)
sock.close()
time.sleep(0.3)
assert code_of(s3.head_object, Bucket="box", Key="partial")[1] == 404

# --- multipart: parts concurrently and out of order ---------------------------------
MiB = 1024 * 1024
parts = [os.urandom(5 * MiB) for _ in range(3)] + [b"tail"]
upload = s3.create_multipart_upload(Bucket="box", Key="multi.bin", ContentType="application/x-test")
uid = upload["UploadId"]
assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket="box")["Uploads"]] == [uid]


def send(n):
    return n, s3.upload_part(Bucket="box", Key="multi.bin", UploadId=uid, PartNumber=n, Body=parts[n - 1])["ETag"]


with concurrent.futures.ThreadPoolExecutor(4) as pool:
    etags = dict(pool.map(send, [4, 2, 3, 1]))
listed = s3.list_parts(Bucket="box", Key="multi.bin", UploadId=uid)
assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2, 3, 4]
assert code_of(s3.complete_multipart_upload, Bucket="box", Key="multi.bin", UploadId=uid,
               MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": etags[2]}, {"PartNumber": 1, "ETag": etags[1]}]}) == ("InvalidPartOrder", 400)
assert code_of(s3.complete_multipart_upload, Bucket="box", Key="multi.bin", UploadId=uid,
               MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etags[2]}]}) == ("InvalidPart", 400)
assert code_of(s3.complete_multipart_upload, Bucket="box", Key="multi.bin", UploadId=uid,
               MultipartUpload={"Parts": [{"PartNumber": 4, "ETag": etags[4]}, {"PartNumber": 5, "ETag": etags[4]}]}) == ("InvalidPart", 400)
# A create-only completion of a key that exists is refused, and the upload stays.
s3.put_object(Bucket="box", Key="multi.bin", Body=b"already here")
assert code_of(s3.complete_multipart_upload, Bucket="box", Key="multi.bin", UploadId=uid, IfNoneMatch="*",
               MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in [1, 2, 3, 4]]}) == ("PreconditionFailed", 412)
assert s3.get_object(Bucket="box", Key="multi.bin")["Body"].read() == b"already here"
done = s3.complete_multipart_upload(Bucket="box", Key="multi.bin", UploadId=uid,
                                    MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in [1, 2, 3, 4]]})
digests = b"".join(hashlib.md5(p).digest() for p in parts)
assert done["ETag"] == '"%s-4"' % hashlib.md5(digests).hexdigest(), done
whole = b"".join(parts)
got = s3.get_object(Bucket="box", Key="multi.bin")
assert got["ContentType"] == "application/x-test"
assert got["Body"].read() == whole
assert s3.get_object(Bucket="box", Key="multi.bin", Range=f"bytes={5 * MiB - 2}-{5 * MiB + 1}")["Body"].read() == whole[5 * MiB - 2:5 * MiB + 2]
assert code_of(s3.list_parts, Bucket="box", Key="multi.bin", UploadId=uid) == ("NoSuchUpload", 404)
assert s3.list_multipart_uploads(Bucket="box").get("Uploads", []) == []

# Uploads in progress page like everything else.
open_uploads = [s3.create_multipart_upload(Bucket="box", Key=k)["UploadId"] for k in ["u/a", "u/a", "u/b"]]
listed = [(u["Key"], u["UploadId"]) for p in s3.get_paginator("list_multipart_uploads").paginate(
    Bucket="box", Prefix="u/", PaginationConfig={"PageSize": 1}) for u in p.get("Uploads", [])]
assert sorted(listed) == sorted(zip(["u/a", "u/a", "u/b"], open_uploads)), listed
assert len(listed) == 3
for (k, uid) in zip(["u/a", "u/a", "u/b"], open_uploads):
    s3.abort_multipart_upload(Bucket="box", Key=k, UploadId=uid)

# Too-small parts, bad part numbers, abort.
uid = s3.create_multipart_upload(Bucket="box", Key="small.bin")["UploadId"]
e1 = s3.upload_part(Bucket="box", Key="small.bin", UploadId=uid, PartNumber=1, Body=b"tiny")["ETag"]
e2 = s3.upload_part(Bucket="box", Key="small.bin", UploadId=uid, PartNumber=2, Body=b"tiny")["ETag"]
assert code_of(s3.complete_multipart_upload, Bucket="box", Key="small.bin", UploadId=uid,
               MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]}) == ("EntityTooSmall", 400)
assert code_of(s3.upload_part, Bucket="box", Key="small.bin", UploadId=uid, PartNumber=10001, Body=b"x") == ("InvalidArgument", 400)
assert code_of(s3.upload_part, Bucket="box", Key="small.bin", UploadId="nope", PartNumber=1, Body=b"x") == ("NoSuchUpload", 404)
s3.abort_multipart_upload(Bucket="box", Key="small.bin", UploadId=uid)
assert code_of(s3.abort_multipart_upload, Bucket="box", Key="small.bin", UploadId=uid) == ("NoSuchUpload", 404)
assert code_of(s3.head_object, Bucket="box", Key="small.bin")[1] == 404

# --- signatures and malformed requests ----------------------------------------------
# An unsigned x-amz-* header cannot change what a presigned request does.
url = urlparse(v4.generate_presigned_url("put_object", Params={"Bucket": "box", "Key": "hijack"}, ExpiresIn=60))
request = urllib.request.Request(f"{ENDPOINT}{url.path}?{url.query}", data=b"", method="PUT",
                                 headers={"x-amz-copy-source": "box/a.txt"})
try:
    urllib.request.urlopen(request)
    raise AssertionError("an unsigned copy source was obeyed")
except urllib.error.HTTPError as e:
    assert e.code == 403 and b"not signed" in e.read()
assert code_of(s3.head_object, Bucket="box", Key="hijack")[1] == 404

status, text = raw("GET", "/box/a.txt", sign=False)
assert status == 403 and b"<Code>AccessDenied</Code>" in text, text
status, text = raw("GET", "/box/a.txt", secret="wrong" + SECRET)
assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in text, text
status, text = raw("PUT", "/box/liar", b"actual", {"x-amz-content-sha256": hashlib.sha256(b"claimed").hexdigest()})
assert status == 400 and b"XAmzContentSHA256Mismatch" in text, text
uid = s3.create_multipart_upload(Bucket="box", Key="x.bin")["UploadId"]
status, text = raw("POST", f"/box/x.bin?uploadId={uid}", b"<CompleteMultipartUpload><Part>")
assert status == 400 and b"<Code>MalformedXML</Code>" in text, text
status, text = raw("POST", "/box?delete", b"<Delete><Object><Key>a.txt</Object></Delete>",
                   {"content-md5": base64.b64encode(hashlib.md5(b"<Delete><Object><Key>a.txt</Object></Delete>").digest()).decode()})
assert status == 400 and b"MalformedXML" in text, text
assert s3.get_object(Bucket="box", Key="a.txt")["Body"].read() == b"hello world"  # intact

# --- deleting buckets ----------------------------------------------------------------
assert code_of(s3.delete_bucket, Bucket="box") == ("BucketNotEmpty", 409)
s3.create_bucket(Bucket="empty")
s3.delete_bucket(Bucket="empty")
assert code_of(s3.delete_bucket, Bucket="empty") == ("NoSuchBucket", 404)
print("boto3 suite passed")
