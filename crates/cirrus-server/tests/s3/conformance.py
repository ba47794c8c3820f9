"""S3 conformance and "no side effects from what is not implemented", driven by boto3.

Run by tests/s3.rs as: python3 conformance.py ENDPOINT CREDENTIALS_FILE
The server runs with a 1 KiB minimum part size, so multipart checks stay small.
Every check is an assert; the first failure ends the run with a traceback.
"""

import base64
import configparser
import datetime
import hashlib
import sys

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT, CREDENTIALS = sys.argv[1], sys.argv[2]
keys = configparser.ConfigParser()
keys.read(CREDENTIALS)
ACCESS, SECRET = keys["default"]["aws_access_key_id"], keys["default"]["aws_secret_access_key"]


def client(**config):
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, **config),
    )


s3 = client()
# Unchecked parameters: the model's operations are called with only what addresses them.
loose = client(parameter_validation=False)


def error_of(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError(f"{getattr(call, '__name__', call)} succeeded but should have failed")


# --- 1. Nothing Cirrus does not implement has a side effect ---------------------------

IMPLEMENTED = {
    "ListBuckets", "CreateBucket", "DeleteBucket", "HeadBucket", "GetBucketLocation",
    "ListObjects", "ListObjectsV2", "ListMultipartUploads", "DeleteObjects", "PutObject",
    "CopyObject", "GetObject", "HeadObject", "DeleteObject", "CreateMultipartUpload",
    "UploadPart", "UploadPartCopy", "CompleteMultipartUpload", "AbortMultipartUpload",
    "ListParts",
}
# Operations botocore cannot send to a path-style endpoint on this machine: they go to a
# host-prefixed endpoint (S3 Object Lambda) and never reach the server.
UNREACHABLE = {"WriteGetObjectResponse"}
# Directory-bucket (S3 Express) calls are signed for another service, so they are refused
# at authentication.
OTHER_SERVICE = {"ListDirectoryBuckets", "CreateSession"}

BODY = b"precious bytes\n"
s3.create_bucket(Bucket="keep")
s3.create_bucket(Bucket="empty")
s3.put_object(
    Bucket="keep", Key="obj", Body=BODY, ContentType="text/x-precious",
    Metadata={"owner": "alice"},
)


def state():
    """Everything an unsupported call could have changed."""
    head = s3.head_object(Bucket="keep", Key="obj")
    body = s3.get_object(Bucket="keep", Key="obj")["Body"].read()
    keys_ = [o["Key"] for o in s3.list_objects_v2(Bucket="keep").get("Contents", [])]
    buckets = sorted(b["Name"] for b in s3.list_buckets()["Buckets"])
    s3.head_bucket(Bucket="empty")
    return (body, head["ContentType"], head["Metadata"], head["ETag"], keys_, buckets)


before = state()
model = s3.meta.service_model
refused = []
for name in model.operation_names:
    if name in IMPLEMENTED or name in UNREACHABLE:
        continue
    op = model.operation_model(name)
    uri = op.http["requestUri"]
    params = {}
    members = op.input_shape.members if op.input_shape else {}
    if "Bucket" in members:
        params["Bucket"] = "keep" if "{Key+}" in uri else "empty"
    if "Key" in members:
        params["Key"] = "obj"
    # A body where the operation sends one: the bytes that would overwrite the object if
    # it fell through to PutObject.
    if op.input_shape is not None and op.input_shape.serialization.get("payload"):
        payload = op.input_shape.serialization["payload"]
        if members[payload].type_name == "blob":
            params[payload] = b"tags that must not replace the object"
    method = getattr(loose, botocore.xform_name(name))
    try:
        method(**params)
        raise AssertionError(f"{name} succeeded")
    except ClientError as e:
        code = e.response["Error"]["Code"]
        status = e.response["ResponseMetadata"]["HTTPStatusCode"]
        expected = [("NotImplemented", 501), ("MethodNotAllowed", 405)]
        if name in OTHER_SERVICE:
            expected.append(("AuthorizationHeaderMalformed", 400))
        assert (code, status) in expected, (
            name, code, status, e.response["Error"].get("Message"))
        refused.append(name)
    except botocore.exceptions.BotoCoreError as e:
        raise AssertionError(f"{name}: the client failed before an answer: {e!r}")
    assert state() == before, f"{name} changed something"
assert len(refused) > 60, refused

# Versions: only "null" (the current object) exists.
for call, kw in [
    (loose.get_object, {}), (loose.head_object, {}), (loose.delete_object, {}),
    (loose.get_object_tagging, {}), (loose.delete_object_tagging, {}),
]:
    code = error_of(call, Bucket="keep", Key="obj", VersionId="3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY", **kw)
    assert code in (("NotImplemented", 501), ("501", 501)), (call.__name__, code)
    assert state() == before
assert s3.get_object(Bucket="keep", Key="obj", VersionId="null")["Body"].read() == BODY
code = error_of(s3.copy_object, Bucket="keep", Key="copy",
                CopySource={"Bucket": "keep", "Key": "obj", "VersionId": "abc"})
assert code == ("NotImplemented", 501), code
# A DeleteObjects entry with a version gets its own error; the others are deleted.
s3.put_object(Bucket="keep", Key="scratch", Body=b"x")
result = s3.delete_objects(Bucket="keep", Delete={"Objects": [
    {"Key": "obj", "VersionId": "abc"}, {"Key": "scratch"}]})
assert [d["Key"] for d in result.get("Deleted", [])] == ["scratch"], result
assert [(e["Key"], e["Code"]) for e in result["Errors"]] == [("obj", "NotImplemented")], result
assert state() == before

# Header modes with effects Cirrus does not have are refused, and nothing is written.
for extra in [
    {"Tagging": "a=b"},
    {"ObjectLockMode": "GOVERNANCE",
     "ObjectLockRetainUntilDate": datetime.datetime(2030, 1, 1)},
    {"ObjectLockLegalHoldStatus": "ON"},
    {"ServerSideEncryption": "aws:kms"},
    {"StorageClass": "GLACIER"},
    {"ACL": "public-read"},
    {"GrantRead": 'uri="http://acs.amazonaws.com/groups/global/AllUsers"'},
    {"WebsiteRedirectLocation": "/elsewhere"},
]:
    code = error_of(s3.put_object, Bucket="keep", Key="obj", Body=b"overwritten", **extra)
    assert code == ("NotImplemented", 501), (extra, code)
    assert state() == before, extra
# What is already so is accepted: a private ACL, the standard class.
s3.put_object(Bucket="keep", Key="plain", Body=b"p", ACL="private", StorageClass="STANDARD")
s3.delete_object(Bucket="keep", Key="plain")
# Unknown query parameters on implemented operations are refused too.
def add_query(request, **kwargs):
    request.url += ("&" if "?" in request.url else "?") + "unknown-mode=1"
loose.meta.events.register_first("before-sign.s3.GetObject", add_query)
assert error_of(loose.get_object, Bucket="keep", Key="obj") == ("NotImplemented", 501)
loose.meta.events.unregister("before-sign.s3.GetObject", add_query)
assert state() == before


# --- 2. Behaviour real clients rely on ------------------------------------------------

obj = s3.head_object(Bucket="keep", Key="obj")
etag, modified = obj["ETag"], obj["LastModified"]
past = modified - datetime.timedelta(days=1)
future = modified + datetime.timedelta(days=1)

# GET/HEAD conditions.
assert error_of(s3.get_object, Bucket="keep", Key="obj", IfModifiedSince=future)[1] == 304
assert error_of(s3.head_object, Bucket="keep", Key="obj", IfModifiedSince=future)[1] == 304
assert s3.get_object(Bucket="keep", Key="obj", IfModifiedSince=past)["Body"].read() == BODY
assert error_of(s3.get_object, Bucket="keep", Key="obj", IfUnmodifiedSince=past) == (
    "PreconditionFailed", 412)
assert error_of(s3.head_object, Bucket="keep", Key="obj", IfUnmodifiedSince=past)[1] == 412
assert s3.get_object(Bucket="keep", Key="obj", IfUnmodifiedSince=future)["Body"].read() == BODY
# If-Match wins over If-Unmodified-Since, If-None-Match over If-Modified-Since.
s3.get_object(Bucket="keep", Key="obj", IfMatch=etag, IfUnmodifiedSince=past)
s3.get_object(Bucket="keep", Key="obj", IfNoneMatch='"other"', IfModifiedSince=future)

# CopyObject source conditions: 412 when they fail, and nothing copied.
for cond in [
    {"CopySourceIfMatch": '"0000"'},
    {"CopySourceIfNoneMatch": etag},
    {"CopySourceIfModifiedSince": future},
    {"CopySourceIfUnmodifiedSince": past},
]:
    code = error_of(s3.copy_object, Bucket="keep", Key="copy",
                    CopySource={"Bucket": "keep", "Key": "obj"}, **cond)
    assert code == ("PreconditionFailed", 412), (cond, code)
    assert error_of(s3.head_object, Bucket="keep", Key="copy")[1] == 404, cond
s3.copy_object(Bucket="keep", Key="copy", CopySource={"Bucket": "keep", "Key": "obj"},
               CopySourceIfMatch=etag, CopySourceIfUnmodifiedSince=past)
assert s3.get_object(Bucket="keep", Key="copy")["Body"].read() == BODY
s3.copy_object(Bucket="keep", Key="copy2", CopySource={"Bucket": "keep", "Key": "obj"},
               CopySourceIfNoneMatch='"other"', CopySourceIfModifiedSince=past)
s3.delete_objects(Bucket="keep", Delete={"Objects": [{"Key": "copy"}, {"Key": "copy2"}]})


def crc64nvme(data, crc=0):
    """CRC-64/NVME (reflected, polynomial 0xad93d23594c93659), bit by bit: for checking."""
    crc ^= 0xFFFFFFFFFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x9A6C9329AC4BC9B5 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFFFFFFFFFF


assert crc64nvme(b"123456789") == 0xAE8B14860A799888


def b64(raw):
    return base64.b64encode(raw).decode()


PART1, PART2 = b"a" * 1500, b"b" * 700

# Parts: GET/HEAD ?partNumber=N, with the parts count; past the last part, 416.
up = s3.create_multipart_upload(Bucket="keep", Key="parts")["UploadId"]
e1 = s3.upload_part(Bucket="keep", Key="parts", UploadId=up, PartNumber=1, Body=PART1)["ETag"]
e2 = s3.upload_part(Bucket="keep", Key="parts", UploadId=up, PartNumber=2, Body=PART2)["ETag"]
parts = [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]
# Duplicate part numbers are out of order, as S3 answers.
assert error_of(s3.complete_multipart_upload, Bucket="keep", Key="parts", UploadId=up,
                MultipartUpload={"Parts": [parts[0], parts[0], parts[1]]}) == (
    "InvalidPartOrder", 400)
done = s3.complete_multipart_upload(Bucket="keep", Key="parts", UploadId=up,
                                    MultipartUpload={"Parts": parts})
# A retry of the same completion (its answer lost) gets the same answer.
again = s3.complete_multipart_upload(Bucket="keep", Key="parts", UploadId=up,
                                     MultipartUpload={"Parts": parts})
assert again["ETag"] == done["ETag"], (again, done)
# ...but not a different part list.
assert error_of(s3.complete_multipart_upload, Bucket="keep", Key="parts", UploadId=up,
                MultipartUpload={"Parts": parts[:1]}) == ("NoSuchUpload", 404)
p2 = s3.get_object(Bucket="keep", Key="parts", PartNumber=2)
assert p2["Body"].read() == PART2
assert p2["PartsCount"] == 2 and p2["ContentRange"] == f"bytes 1500-2199/2200", p2
h1 = s3.head_object(Bucket="keep", Key="parts", PartNumber=1)
assert h1["ContentLength"] == 1500 and h1["PartsCount"] == 2, h1
assert error_of(s3.get_object, Bucket="keep", Key="parts", PartNumber=3) == (
    "InvalidPartNumber", 416)
assert error_of(s3.get_object, Bucket="keep", Key="parts", PartNumber=1, Range="bytes=0-1")[1] == 400
# A simple object is its own part 1.
assert s3.get_object(Bucket="keep", Key="obj", PartNumber=1)["Body"].read() == BODY
assert error_of(s3.get_object, Bucket="keep", Key="obj", PartNumber=2)[1] == 416

# Checksums across multipart: composite SHA-256.
up = s3.create_multipart_upload(Bucket="keep", Key="sha", ChecksumAlgorithm="SHA256")
assert up["ChecksumAlgorithm"] == "SHA256" and up.get("ChecksumType") == "COMPOSITE", up
up = up["UploadId"]
r1 = s3.upload_part(Bucket="keep", Key="sha", UploadId=up, PartNumber=1, Body=PART1,
                    ChecksumAlgorithm="SHA256")
r2 = s3.upload_part(Bucket="keep", Key="sha", UploadId=up, PartNumber=2, Body=PART2,
                    ChecksumAlgorithm="SHA256")
assert r1["ChecksumSHA256"] == b64(hashlib.sha256(PART1).digest()), r1
listed = s3.list_parts(Bucket="keep", Key="sha", UploadId=up)
assert [p["ChecksumSHA256"] for p in listed["Parts"]] == [r1["ChecksumSHA256"], r2["ChecksumSHA256"]]
assert listed["ChecksumAlgorithm"] == "SHA256", listed
# A part named with a checksum it does not have is refused.
assert error_of(s3.complete_multipart_upload, Bucket="keep", Key="sha", UploadId=up,
                MultipartUpload={"Parts": [
                    {"PartNumber": 1, "ETag": r1["ETag"], "ChecksumSHA256": r2["ChecksumSHA256"]},
                    {"PartNumber": 2, "ETag": r2["ETag"], "ChecksumSHA256": r2["ChecksumSHA256"]},
                ]}) == ("InvalidPart", 400)
done = s3.complete_multipart_upload(Bucket="keep", Key="sha", UploadId=up, MultipartUpload={
    "Parts": [
        {"PartNumber": 1, "ETag": r1["ETag"], "ChecksumSHA256": r1["ChecksumSHA256"]},
        {"PartNumber": 2, "ETag": r2["ETag"], "ChecksumSHA256": r2["ChecksumSHA256"]},
    ]})
composite = b64(hashlib.sha256(hashlib.sha256(PART1).digest() + hashlib.sha256(PART2).digest()).digest())
assert done["ChecksumSHA256"] == composite + "-2", done
assert done["ChecksumType"] == "COMPOSITE", done
head = s3.head_object(Bucket="keep", Key="sha", ChecksumMode="ENABLED")
assert head["ChecksumSHA256"] == composite + "-2" and head["ChecksumType"] == "COMPOSITE", head

# CRC64NVME: full-object, computed over the joined bytes. (boto3 cannot compute
# CRC64NVME without awscrt, so the parts carry none and the server computes them.)
plain = client(request_checksum_calculation="when_required")
up = s3.create_multipart_upload(Bucket="keep", Key="crc", ChecksumAlgorithm="CRC64NVME")
assert up["ChecksumType"] == "FULL_OBJECT", up
up = up["UploadId"]
c1 = plain.upload_part(Bucket="keep", Key="crc", UploadId=up, PartNumber=1, Body=PART1)
c2 = plain.upload_part(Bucket="keep", Key="crc", UploadId=up, PartNumber=2, Body=PART2)
assert c1["ChecksumCRC64NVME"] == b64(crc64nvme(PART1).to_bytes(8, "big")), c1
done = s3.complete_multipart_upload(Bucket="keep", Key="crc", UploadId=up, MultipartUpload={
    "Parts": [{"PartNumber": 1, "ETag": c1["ETag"]}, {"PartNumber": 2, "ETag": c2["ETag"]}]})
whole = b64(crc64nvme(PART1 + PART2).to_bytes(8, "big"))
assert done["ChecksumCRC64NVME"] == whole and done["ChecksumType"] == "FULL_OBJECT", done
head = s3.head_object(Bucket="keep", Key="crc", ChecksumMode="ENABLED")
assert head["ChecksumCRC64NVME"] == whole, head
# A part with another algorithm than the upload's is refused.
up = s3.create_multipart_upload(Bucket="keep", Key="mix", ChecksumAlgorithm="CRC32")["UploadId"]
assert error_of(s3.upload_part, Bucket="keep", Key="mix", UploadId=up, PartNumber=1,
                Body=PART1, ChecksumAlgorithm="SHA1") == ("InvalidRequest", 400)
# SHA-256 cannot be full-object.
assert error_of(s3.create_multipart_upload, Bucket="keep", Key="x", ChecksumAlgorithm="SHA256",
                ChecksumType="FULL_OBJECT")[1] == 400

# UploadPartCopy past the end of its source: InvalidRange.
assert error_of(s3.upload_part_copy, Bucket="keep", Key="mix", UploadId=up, PartNumber=1,
                CopySource={"Bucket": "keep", "Key": "obj"},
                CopySourceRange=f"bytes=0-{len(BODY)}") == ("InvalidRange", 416)
s3.abort_multipart_upload(Bucket="keep", Key="mix", UploadId=up)

# (Non-ASCII metadata: boto3 refuses it client-side; tests/s3.rs sends it with curl.)

# ListBuckets pages; ListObjectsV2 takes an empty token and returns owners when asked.
for b in ("page-a", "page-b", "page-c"):
    s3.create_bucket(Bucket=b)
first = s3.list_buckets(MaxBuckets=2, Prefix="page-")
assert [b["Name"] for b in first["Buckets"]] == ["page-a", "page-b"], first
rest = s3.list_buckets(MaxBuckets=2, Prefix="page-", ContinuationToken=first["ContinuationToken"])
assert [b["Name"] for b in rest["Buckets"]] == ["page-c"] and "ContinuationToken" not in rest, rest
listing = s3.list_objects_v2(Bucket="keep", ContinuationToken="", FetchOwner=True)
assert all(o["Owner"]["ID"] == "cirrus" for o in listing["Contents"]), listing
assert "Owner" not in s3.list_objects_v2(Bucket="keep")["Contents"][0]

# A bucket holding only uploads in progress is deleted, and its uploads with it.
s3.create_bucket(Bucket="pending")
s3.create_multipart_upload(Bucket="pending", Key="never-finished")
s3.delete_bucket(Bucket="pending")
assert error_of(s3.head_bucket, Bucket="pending")[1] == 404
s3.create_bucket(Bucket="pending")
assert s3.list_multipart_uploads(Bucket="pending").get("Uploads", []) == []

# SigV2 presigned URLs are capped at a week, as SigV4's are.
v2 = client(signature_version="s3")
import urllib.error
import urllib.request
url = v2.generate_presigned_url("get_object", Params={"Bucket": "keep", "Key": "obj"},
                                ExpiresIn=8 * 24 * 3600)
try:
    urllib.request.urlopen(url)
    raise AssertionError("an 8-day SigV2 URL worked")
except urllib.error.HTTPError as e:
    assert e.code == 400 and b"AuthorizationQueryParametersError" in e.read(), e.code
url = v2.generate_presigned_url("get_object", Params={"Bucket": "keep", "Key": "obj"},
                                ExpiresIn=3600)
assert urllib.request.urlopen(url).read() == BODY

assert s3.get_object(Bucket="keep", Key="obj")["Body"].read() == BODY
print(f"conformance: {len(refused)} unsupported operations refused without side effects")
