"""The AWS Lambda-compatible API driven by boto3 (and botocore's own SigV4 signer for
hand-made requests).

Run by the Rust integration test as:
    python3 boto3_suite.py ENDPOINT CREDENTIALS_FILE FIXTURES_DIR
ENDPOINT is the server's main listener (the API is at /2015-03-31/...), CREDENTIALS_FILE
an INI file whose [default] section has aws_access_key_id / aws_secret_access_key, and
FIXTURES_DIR the repo's fixtures/ (WASI preview-1 command modules as .wat).

Every check is an assert; the first failure ends the run with a traceback. Function
names carry a random suffix, so a rerun against the same server never collides.
"""

import base64
import configparser
import hashlib
import io
import json
import secrets
import struct
import sys
import time
import urllib.error
import urllib.request
import zipfile
from datetime import datetime
from pathlib import Path

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

ENDPOINT, CREDENTIALS, FIXTURES = sys.argv[1].rstrip("/"), sys.argv[2], Path(sys.argv[3])
GOLDEN = Path(__file__).resolve().parent / "golden"
keys = configparser.ConfigParser()
keys.read(CREDENTIALS)
ACCESS, SECRET = keys["default"]["aws_access_key_id"], keys["default"]["aws_secret_access_key"]

REGION, ACCOUNT = "us-east-1", "000000000000"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/cirrus-test"
RUN = secrets.token_hex(3)  # in every function name: reruns never collide
STALE_REVISION = "00000000-0000-0000-0000-000000000000"


def client(access=ACCESS, secret=SECRET, validate=True):
    return boto3.client(
        "lambda",
        endpoint_url=ENDPOINT,
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        region_name=REGION,
        # One attempt, no retries, so no error code checked below can be hidden by a
        # retry. (In botocore, retries={"max_attempts": 1} means one *retry*, two attempts
        # in all, and 429s would be retried after a back-off.)
        config=Config(
            retries={"total_max_attempts": 1},
            read_timeout=60,
            connect_timeout=10,
            parameter_validation=validate,
        ),
    )


lam = client()
# botocore refuses a few requests before sending them (Role is required, MemorySize below
# 128, Timeout below 1, MaximumEventAgeInSeconds below 60). This client sends them anyway,
# so what gets checked is the server's answer.
loose = client(validate=False)


# --- helpers -----------------------------------------------------------------------------

def section(title):
    print(f"--- {title}", flush=True)


def fname(prefix):
    return f"{prefix}-{RUN}"


def fn_arn(function, qualifier=None):
    arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function}"
    return f"{arn}:{qualifier}" if qualifier else arn


def fixture(file):
    return (FIXTURES / file).read_bytes()


def make_zip(files):
    """A deployment package built in memory: {path in zip: bytes}."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in files.items():
            z.writestr(path, data)
    return buf.getvalue()


def guest_zip(fixture_name, as_name=None):
    """A zip holding one fixture, stored as `as_name` (default: its own name)."""
    return make_zip({as_name or fixture_name: fixture(fixture_name)})


def subprocess_node_major():
    """The Lambda runtime name of the host's Node.js (nodejs20.x for v20)."""
    import subprocess
    version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout
    return f"nodejs{version.strip().lstrip('v').split('.')[0]}.x"


def sha256_b64(data):
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def zip_bomb():
    """A zip whose one entry, bomb.wasm, inflates to 200 MiB of zeros (about 200 KB
    compressed), written in 1 MiB pieces so this script never holds the 200 MiB."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("bomb.wasm", "w") as entry:
            chunk = bytes(1 << 20)
            for _ in range(200):
                entry.write(chunk)
    return buf.getvalue()


def declaring(package, size):
    """`package` (one entry) with the uncompressed size in its local header and central
    directory rewritten to `size`: the entry claims `size` bytes and inflates to more. A
    server that sizes its buffers or limits by the claim is fooled."""
    data = bytearray(package)
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    assert local == 0 and central > 0, "zipfile wrote an unexpected layout"
    struct.pack_into("<I", data, local + 22, size)
    struct.pack_into("<I", data, central + 24, size)
    return bytes(data)


# The smallest WASI command there is, in binary: exports `_start` (which returns at once)
# and `memory`. Checks the .wasm path of a deployment package (the fixtures are .wat).
NOOP_WASM = bytes.fromhex(
    "0061736d01000000"  # magic, version 1
    "010401600000"  # type section: () -> ()
    "03020100"  # function section: one function of type 0
    "0503010001"  # memory section: one memory, min 1 page
    "071302"  # export section, 2 exports:
    "065f73746172740000"  # "_start" -> func 0
    "066d656d6f72790200"  # "memory" -> memory 0
    "0a040102000b"  # code section: one body, no locals, `end`
)

ECHO_ZIP = guest_zip("echo.wat")
# log_input.wat stored under echo.wat's name: UpdateFunctionCode cannot change the Handler,
# so new code for a function whose Handler is echo.wat must keep that file name.
QUIET_AS_ECHO_ZIP = guest_zip("log_input.wat", as_name="echo.wat")

CREATED = []  # every function this run made, deleted at the end


def create(function, zip_bytes, client=lam, **params):
    """CreateFunction with Code={"ZipFile": zip_bytes}; Runtime "wasi" and Role ROLE unless
    given (a parameter given as None is left out of the request)."""
    params = {"Runtime": "wasi", "Role": ROLE, **params}
    params = {k: v for k, v in params.items() if v is not None}
    cfg = client.create_function(FunctionName=function, Code={"ZipFile": zip_bytes}, **params)
    CREATED.append(function)
    return cfg


def expect_error(call, code, status, **params):
    """Calls `call(**params)`, which must raise a ClientError with error code `code` and
    HTTP status `status` (either may be a tuple of acceptable values). Returns botocore's
    parsed error response for further checks."""
    codes = code if isinstance(code, tuple) else (code,)
    statuses = status if isinstance(status, tuple) else (status,)
    op = getattr(call, "__name__", repr(call))
    try:
        call(**params)
    except ClientError as e:
        got_code = e.response["Error"]["Code"]
        got_status = e.response["ResponseMetadata"]["HTTPStatusCode"]
        assert got_code in codes and got_status in statuses, (
            f"{op}: expected {codes} / HTTP {statuses}, got {got_code} / HTTP {got_status}: "
            f"{e.response['Error'].get('Message')!r}"
        )
        return e.response
    raise AssertionError(f"{op} succeeded but should have failed with {codes}")


def message_of(error_response):
    return error_response["Error"].get("Message") or ""


def assert_absent(function):
    """Nothing was created: the name is unknown."""
    expect_error(lam.get_function, "ResourceNotFoundException", 404, FunctionName=function)


def all_function_names():
    names, marker = [], None
    for _ in range(10_000):
        page = lam.list_functions(**({"Marker": marker} if marker else {}))
        names += [f["FunctionName"] for f in page["Functions"]]
        marker = page.get("NextMarker")
        if not marker:
            return names
    raise AssertionError("ListFunctions never stopped paging")


def invoke(function, event=None, **params):
    """Invoke with a JSON event; returns (response, payload bytes)."""
    payload = json.dumps({} if event is None else event).encode()
    response = lam.invoke(FunctionName=function, Payload=payload, **params)
    return response, response["Payload"].read()


def assert_echoes(function, **params):
    """The function runs echo.wat: the event comes back as the payload."""
    event = {"echo": function, "n": [1, 2, 3]}
    response, payload = invoke(function, event, **params)
    assert response["StatusCode"] == 200, response
    assert "FunctionError" not in response, (response, payload)
    assert json.loads(payload) == event, payload
    return response


def function_error(function, **params):
    """Invokes a function that must fail; returns (response, error document)."""
    response, payload = invoke(function, {"k": "v"}, LogType="Tail", **params)
    assert response["StatusCode"] == 200, response
    assert response.get("FunctionError") == "Unhandled", (response, payload)
    error = json.loads(payload)
    assert isinstance(error.get("errorType"), str) and error["errorType"], error
    assert isinstance(error.get("errorMessage"), str) and error["errorMessage"], error
    assert isinstance(error.get("stackTrace"), list), error
    return response, error


def log_of(response):
    log = base64.b64decode(response["LogResult"])
    assert len(log) <= 4096, f"LogResult is the last 4 KB of the log, got {len(log)} bytes"
    return log.decode(errors="replace")


def json_type(value):
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object", type(None): "null"}[type(value)]


def assert_shaped_like(actual, golden, keys, what):
    """Every key in `keys` is in `actual` with the JSON type Lambda gives it in `golden`."""
    for key in keys:
        assert key in golden, f"golden file lacks {key}: fix the list or the file"
        assert key in actual, f"{what}: no {key} (Lambda sends e.g. {golden[key]!r})"
        assert json_type(actual[key]) == json_type(golden[key]), (
            f"{what}: {key} is a {json_type(actual[key])} ({actual[key]!r}); "
            f"Lambda's is a {json_type(golden[key])} ({golden[key]!r})"
        )


def golden(file):
    return json.loads((GOLDEN / file).read_text())


def raw(method, path, body=b"", headers=None, sign=True, access=ACCESS, secret=SECRET):
    """A request signed by botocore's SigV4 signer for lambda/us-east-1 (or not signed at
    all), sent by urllib. Returns (status, headers, body bytes)."""
    url = ENDPOINT + path
    headers = dict(headers or {})
    if body:
        headers.setdefault("Content-Type", "application/json")
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    if sign:
        SigV4Auth(Credentials(access, secret), "lambda", REGION).add_auth(request)
    prepared = urllib.request.Request(
        url, data=body or None, method=method, headers=dict(request.headers.items())
    )
    try:
        with urllib.request.urlopen(prepared, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def http_post(url, body):
    """A plain, unsigned HTTP POST (what a browser or curl sends to a function URL)."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def assert_config(cfg, function, zip_bytes, **expected):
    """What every FunctionConfiguration Cirrus returns must hold, plus `expected` values."""
    version = expected.get("Version", "$LATEST")
    qualifier = None if version == "$LATEST" else version
    assert cfg["FunctionName"] == function, cfg
    assert cfg["FunctionArn"] == fn_arn(function, qualifier), cfg["FunctionArn"]
    assert cfg["Runtime"] == "wasi", cfg
    assert isinstance(cfg["CodeSize"], int) and not isinstance(cfg["CodeSize"], bool), cfg
    assert cfg["CodeSize"] > 0, cfg
    assert cfg["CodeSha256"] == sha256_b64(zip_bytes), (cfg["CodeSha256"], sha256_b64(zip_bytes))
    assert cfg["State"] == "Active", cfg
    assert cfg["LastUpdateStatus"] == "Successful", cfg
    assert isinstance(cfg["RevisionId"], str) and cfg["RevisionId"], cfg
    assert isinstance(cfg["Description"], str), cfg
    # Lambda's LastModified is ISO 8601 with milliseconds, e.g. 2020-04-10T19:06:32.563+0000.
    assert datetime.fromisoformat(cfg["LastModified"]).tzinfo is not None, cfg["LastModified"]
    assert cfg["PackageType"] == "Zip", cfg
    # (botocore turns a string into a list of its characters, hence the raw-JSON checks too)
    architectures = cfg["Architectures"]
    assert isinstance(architectures, list) and len(architectures) == 1, cfg
    assert isinstance(architectures[0], str) and len(architectures[0]) > 1, cfg
    for key, value in expected.items():
        assert cfg.get(key) == value, f"{key}: expected {value!r}, got {cfg.get(key)!r}"


# The keys of a FunctionConfiguration that Cirrus shares with Lambda (golden/README.md).
CONFIG_KEYS = [
    "FunctionName", "FunctionArn", "Runtime", "Role", "Handler", "CodeSize", "Description",
    "Timeout", "MemorySize", "LastModified", "CodeSha256", "Version", "State",
    "LastUpdateStatus", "RevisionId", "PackageType", "Architectures",
]
GOLDEN_CONFIG = golden("function_configuration.json")


# --- 1. create and describe a function -------------------------------------------------
section("create and describe")
echo = fname("echo")
env = {"Variables": {"GREETING": "hi"}}
created = create(echo, ECHO_ZIP, Handler="echo.wat", Description="echoes its event",
                 Environment=env)
assert_config(created, echo, ECHO_ZIP, Handler="echo.wat", Description="echoes its event",
              Environment=env, Role=ROLE, MemorySize=128, Timeout=3, Version="$LATEST")
got = lam.get_function_configuration(FunctionName=echo)
assert_config(got, echo, ECHO_ZIP, Handler="echo.wat", Environment=env, Role=ROLE,
              MemorySize=128, Timeout=3, Version="$LATEST")
assert got["RevisionId"] == created["RevisionId"], "nothing changed, yet the RevisionId did"
full = lam.get_function(FunctionName=echo)
assert_config(full["Configuration"], echo, ECHO_ZIP, Handler="echo.wat", Version="$LATEST")
assert isinstance(full.get("Code"), dict), full  # only its presence is part of the contract

# The golden shape: CreateFunction, GetFunctionConfiguration and GetFunction's
# Configuration carry every key Lambda's do, with the same JSON types; checked on the raw
# JSON too, so nothing botocore does to a value can hide a wrong type.
for what, cfg in [("CreateFunction", created), ("GetFunctionConfiguration", got),
                  ("GetFunction.Configuration", full["Configuration"])]:
    assert_shaped_like(cfg, GOLDEN_CONFIG, CONFIG_KEYS, what)
status, _, body = raw("GET", f"/2015-03-31/functions/{echo}/configuration")
assert status == 200, (status, body)
assert_shaped_like(json.loads(body), GOLDEN_CONFIG, CONFIG_KEYS, "raw GetFunctionConfiguration")
status, _, body = raw("GET", f"/2015-03-31/functions/{echo}")
assert status == 200, (status, body)
raw_full = json.loads(body)
assert_shaped_like(raw_full, golden("get_function.json"), ["Configuration", "Code"], "raw GetFunction")
assert_shaped_like(raw_full["Configuration"], GOLDEN_CONFIG, CONFIG_KEYS, "raw GetFunction.Configuration")

# A name taken is a conflict, and the function is unchanged.
expect_error(create, "ResourceConflictException", 409, function=echo,
             zip_bytes=QUIET_AS_ECHO_ZIP, Handler="echo.wat")
assert lam.get_function_configuration(FunctionName=echo)["CodeSha256"] == sha256_b64(ECHO_ZIP)

# --- 2. deployment packages --------------------------------------------------------------
section("deployment packages")
# No Handler, Role or Runtime: the zip's only wasm/wat file is the code, the runtime is wasi.
bare = fname("bare")
cfg = create(bare, ECHO_ZIP, client=loose, Handler=None, Role=None, Runtime=None)
assert_config(cfg, bare, ECHO_ZIP)
assert cfg.get("Handler") in (None, "", "echo.wat"), cfg.get("Handler")
assert not cfg.get("Role"), f"no Role was given, got {cfg.get('Role')!r}"
assert_echoes(bare)
# An empty Handler means the same.
empty_handler = fname("empty-handler")
create(empty_handler, ECHO_ZIP, Handler="")
assert_echoes(empty_handler)

# A binary .wasm module (a no-op command: runs, says nothing).
noop_zip = make_zip({"noop.wasm": NOOP_WASM})
noop = fname("noop")
assert_config(create(noop, noop_zip, Handler="noop.wasm"), noop, noop_zip, Handler="noop.wasm")
response, payload = invoke(noop)
assert response["StatusCode"] == 200 and "FunctionError" not in response, response
assert payload == b"", payload

# Several files: the Handler picks one (log_input.wat writes nothing to stdout).
mixed_zip = make_zip({"README.txt": b"docs\n", "echo.wat": fixture("echo.wat"),
                      "quiet.wat": fixture("log_input.wat")})
quiet = fname("quiet")
assert_config(create(quiet, mixed_zip, Handler="quiet.wat"), quiet, mixed_zip, Handler="quiet.wat")
response, payload = invoke(quiet, {"logged": True})
assert response["StatusCode"] == 200 and payload == b"", (response, payload)
# Two wasm/wat files and no Handler: which one is meant is not clear, so it is refused.
ambiguous = fname("ambiguous")
expect_error(create, "InvalidParameterValueException", 400, function=ambiguous,
             zip_bytes=mixed_zip, client=loose, Handler=None)
assert_absent(ambiguous)

# --- 3. invalid CreateFunction requests: refused, nothing created -------------------------
section("invalid CreateFunction requests")
refusals = [
    # (name prefix, package, extra parameters, word the message must contain or None)
    ("not-zip", b"not a zip", {"Handler": "echo.wat"}, None),
    ("no-wasm", make_zip({"README.txt": b"no code here\n"}), {}, None),
    ("bad-wasm", make_zip({"bad.wasm": b"\0asm\x01\0\0\0this is no module"}), {"Handler": "bad.wasm"}, None),
    ("bad-wat", make_zip({"bad.wat": b"(module (func (oops)))"}), {"Handler": "bad.wat"}, None),
    ("no-start", guest_zip("no_start.wat"), {"Handler": "no_start.wat"}, None),
    ("bad-import", guest_zip("bad_import.wat"), {"Handler": "bad_import.wat"}, None),
    ("no-handler-file", ECHO_ZIP, {"Handler": "missing.wat"}, "missing.wat"),
    ("memory-low", ECHO_ZIP, {"Handler": "echo.wat", "MemorySize": 64}, None),
    ("memory-high", ECHO_ZIP, {"Handler": "echo.wat", "MemorySize": 20000}, None),
    ("timeout-zero", ECHO_ZIP, {"Handler": "echo.wat", "Timeout": 0}, None),
    ("timeout-high", ECHO_ZIP, {"Handler": "echo.wat", "Timeout": 1000}, None),
    ("runtime", ECHO_ZIP, {"Handler": "echo.wat", "Runtime": "java21"}, "java21"),
    # Features Cirrus does not have: refused by name rather than silently ignored.
    ("layers", ECHO_ZIP, {"Handler": "echo.wat",
                          "Layers": [f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:deps:1"]}, "layer"),
    ("vpc", ECHO_ZIP, {"Handler": "echo.wat",
                       "VpcConfig": {"SubnetIds": ["subnet-0abc"], "SecurityGroupIds": ["sg-0abc"]}}, "vpc"),
    ("snapstart", ECHO_ZIP, {"Handler": "echo.wat", "SnapStart": {"ApplyOn": "PublishedVersions"}}, "snapstart"),
]
for prefix, package, params, mentions in refusals:
    function = fname(prefix)
    error = expect_error(create, "InvalidParameterValueException", 400, function=function,
                         zip_bytes=package, client=loose, **params)
    assert message_of(error), f"{prefix}: the error says nothing"
    if mentions:
        assert mentions.lower() in message_of(error).lower(), (prefix, message_of(error))
    assert_absent(function)

# A container image: PackageType Image with an ImageUri and no zip at all.
image = fname("image")
error = expect_error(loose.create_function, "InvalidParameterValueException", 400,
                     FunctionName=image, Role=ROLE, PackageType="Image",
                     Code={"ImageUri": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/app:latest"})
assert "image" in message_of(error).lower(), message_of(error)
assert_absent(image)

# An empty VpcConfig (what SAM and Terraform send for "no VPC") is not a VPC: accepted.
no_vpc = fname("no-vpc")
create(no_vpc, ECHO_ZIP, Handler="echo.wat", VpcConfig={"SubnetIds": [], "SecurityGroupIds": []})
assert_echoes(no_vpc)

# A name Lambda would not accept. It is in the body (no URL can name it), so check the list.
expect_error(create, "InvalidParameterValueException", 400, function="bad name!",
             zip_bytes=ECHO_ZIP, client=loose, Handler="echo.wat")
assert "bad name!" not in all_function_names()

# Zip bombs: 200 MiB of zeros in ~200 KB, once honestly declared and once claiming 1 KiB.
bomb = zip_bomb()
assert len(bomb) < 1_000_000, len(bomb)
for prefix, package in [("bomb", bomb), ("lying-bomb", declaring(bomb, 1024))]:
    function = fname(prefix)
    expect_error(create, ("InvalidParameterValueException", "RequestTooLargeException"),
                 (400, 413), function=function, zip_bytes=package, client=loose,
                 Handler="bomb.wasm")
    assert_absent(function)

# --- 4. Invoke ---------------------------------------------------------------------------
section("invoke")
response = assert_echoes(echo)
# Unqualified calls run $LATEST; Cirrus may name the numbered version that is $LATEST now.
executed = response.get("ExecutedVersion")
assert executed == "$LATEST" or (executed or "").isdigit(), response

# LogType=Tail: the base64 tail of this invocation's log, which has echo.wat's stderr line.
response, payload = invoke(echo, {"tail": 1}, LogType="Tail")
assert json.loads(payload) == {"tail": 1}, payload
assert "echo: done" in log_of(response), log_of(response)

# Event: accepted for later (the durable queue), nothing comes back.
response, payload = invoke(quiet, {"async": True}, InvocationType="Event")
assert (response["StatusCode"], payload) == (202, b""), f"Event: {response['StatusCode']} {payload!r}"
# DryRun: the request is checked, nothing runs.
response, payload = invoke(echo, {"dry": True}, InvocationType="DryRun")
assert (response["StatusCode"], payload) == (204, b""), f"DryRun: {response['StatusCode']} {payload!r}"
# ClientContext (base64 JSON, as mobile SDKs send it) is accepted.
context = base64.b64encode(json.dumps({"custom": {"app": "suite"}, "env": {}}).encode()).decode()
assert_echoes(echo, ClientContext=context)

# An event that is not JSON is refused before anything runs.
expect_error(lam.invoke, "InvalidRequestContentException", 400, FunctionName=echo,
             Payload=b"{this is not json")
# Unknown function, version or alias.
expect_error(lam.invoke, "ResourceNotFoundException", 404, FunctionName=fname("nobody"), Payload=b"{}")
expect_error(lam.invoke, "ResourceNotFoundException", 404, FunctionName=echo, Qualifier="9999", Payload=b"{}")
expect_error(lam.invoke, "ResourceNotFoundException", 404, FunctionName=echo, Qualifier="ghost", Payload=b"{}")
expect_error(lam.get_function, "ResourceNotFoundException", 404, FunctionName=echo, Qualifier="9999")
expect_error(lam.get_function_configuration, "ResourceNotFoundException", 404, FunctionName=echo,
             Qualifier="ghost")

# --- 5. function errors, the Lambda way: HTTP 200 + FunctionError + error document ----------
section("function errors")
error_keys = ["errorMessage", "errorType", "stackTrace"]
golden_error = golden("invoke_function_error.json")

trap = fname("trap")
create(trap, guest_zip("trap.wat"), Handler="trap.wat")
response, error = function_error(trap)
assert error["errorType"].startswith("Runtime."), error
assert_shaped_like(error, golden_error["payload"], error_keys, "trap error document")

overflow = fname("overflow")
create(overflow, guest_zip("stack_overflow.wat"), Handler="stack_overflow.wat")
response, error = function_error(overflow)
assert error["errorType"].startswith("Runtime."), error

exit_fail = fname("exit-fail")
create(exit_fail, guest_zip("exit_fail.wat"), Handler="exit_fail.wat")
response, error = function_error(exit_fail)
assert error["errorType"] == "Runtime.ExitError", error
# What the guest said on stderr before exiting is in its log.
assert "database unreachable: giving up" in log_of(response), log_of(response)

loop = fname("loop")
create(loop, guest_zip("loop.wat"), Handler="loop.wat", Timeout=1)
started = time.monotonic()
response, error = function_error(loop)
elapsed = time.monotonic() - started
assert error["errorType"] == "Sandbox.Timedout", error
assert "Task timed out after 1.00 seconds" in error["errorMessage"], error
assert 0.9 <= elapsed < 30, f"a 1 s timeout took {elapsed:.2f} s"
timeout_golden = golden("invoke_timeout_error.json")["payload"]
assert_shaped_like(error, timeout_golden, list(timeout_golden), "timeout error document")

grow = fname("grow")
create(grow, guest_zip("grow.wat"), Handler="grow.wat", MemorySize=128)
response, error = function_error(grow)
assert error["errorType"] == "Runtime.OutOfMemory", error

# Sleeping 500 ms is within a 1 s timeout: the limit is not hit early.
sleep = fname("sleep")
create(sleep, guest_zip("sleep.wat"), Handler="sleep.wat", Timeout=1)
response, payload = invoke(sleep)
assert "FunctionError" not in response, (response, payload)
assert payload == b"slept\n", payload

# --- 6. UpdateFunctionConfiguration --------------------------------------------------------
section("update configuration")
before = lam.get_function_configuration(FunctionName=echo)
new_env = {"Variables": {"A": "b"}}
after = lam.update_function_configuration(FunctionName=echo, MemorySize=256, Timeout=10,
                                          Environment=new_env, Description="changed")
assert_config(after, echo, ECHO_ZIP, MemorySize=256, Timeout=10, Environment=new_env,
              Description="changed", Handler="echo.wat")
assert after["RevisionId"] != before["RevisionId"], "the configuration changed, the RevisionId did not"
assert_config(lam.get_function_configuration(FunctionName=echo), echo, ECHO_ZIP, MemorySize=256,
              Timeout=10, Environment=new_env, Description="changed", RevisionId=after["RevisionId"])
assert_echoes(echo)
# Bad values are refused and change nothing.
for params in [{"MemorySize": 64}, {"MemorySize": 20000}, {"Timeout": 0}, {"Timeout": 1000},
               {"Runtime": "java21"}]:
    expect_error(loose.update_function_configuration, "InvalidParameterValueException", 400,
                 FunctionName=echo, **params)
assert_config(lam.get_function_configuration(FunctionName=echo), echo, ECHO_ZIP, MemorySize=256,
              Timeout=10, RevisionId=after["RevisionId"])
expect_error(lam.update_function_configuration, "ResourceNotFoundException", 404,
             FunctionName=fname("nobody"), Timeout=5)

# The guest sees its Environment, before and after an update (env.wat prints its environment).
env_fn = fname("env")
create(env_fn, guest_zip("env.wat"), Handler="env.wat", Environment={"Variables": {"GREETING": "hi"}})
_, payload = invoke(env_fn)
assert "GREETING=hi" in payload.decode(), payload
lam.update_function_configuration(FunctionName=env_fn, Environment={"Variables": {"A": "b"}})
_, payload = invoke(env_fn)
assert "A=b" in payload.decode() and "GREETING" not in payload.decode(), payload

# --- 7. UpdateFunctionCode -----------------------------------------------------------------
section("update code")
before = lam.get_function_configuration(FunctionName=echo)
after = lam.update_function_code(FunctionName=echo, ZipFile=QUIET_AS_ECHO_ZIP)
assert_config(after, echo, QUIET_AS_ECHO_ZIP, MemorySize=256, Timeout=10, Handler="echo.wat")
assert after["CodeSha256"] != before["CodeSha256"]
assert after["RevisionId"] != before["RevisionId"], "the code changed, the RevisionId did not"
response, payload = invoke(echo, {"now": "quiet"})
assert response["StatusCode"] == 200 and payload == b"", (response, payload)
# New code without the Handler's file is refused; the code is unchanged.
expect_error(lam.update_function_code, "InvalidParameterValueException", 400, FunctionName=echo,
             ZipFile=guest_zip("log_input.wat"))
expect_error(lam.update_function_code, "InvalidParameterValueException", 400, FunctionName=echo,
             ZipFile=b"not a zip")
assert lam.get_function_configuration(FunctionName=echo)["CodeSha256"] == sha256_b64(QUIET_AS_ECHO_ZIP)
expect_error(lam.update_function_code, "ResourceNotFoundException", 404,
             FunctionName=fname("nobody"), ZipFile=ECHO_ZIP)

# --- 8. RevisionId preconditions -------------------------------------------------------------
section("RevisionId preconditions")
current = lam.get_function_configuration(FunctionName=echo)
expect_error(lam.update_function_configuration, "PreconditionFailedException", 412,
             FunctionName=echo, Description="lost update", RevisionId=STALE_REVISION)
expect_error(lam.update_function_code, "PreconditionFailedException", 412, FunctionName=echo,
             ZipFile=ECHO_ZIP, RevisionId=STALE_REVISION)
expect_error(lam.publish_version, "PreconditionFailedException", 412, FunctionName=echo,
             RevisionId=STALE_REVISION)
unchanged = lam.get_function_configuration(FunctionName=echo)
assert (unchanged["RevisionId"], unchanged["Description"], unchanged["CodeSha256"]) == (
    current["RevisionId"], current["Description"], current["CodeSha256"]), unchanged
# The current RevisionId goes through.
updated = lam.update_function_configuration(FunctionName=echo, Description="guarded",
                                            RevisionId=current["RevisionId"])
assert updated["Description"] == "guarded" and updated["RevisionId"] != current["RevisionId"]

# --- 9. versions -----------------------------------------------------------------------------
section("versions")
ver = fname("versions")
create(ver, ECHO_ZIP, Handler="echo.wat")
v1 = lam.publish_version(FunctionName=ver)
assert v1["Version"].isdigit(), v1["Version"]
assert_config(v1, ver, ECHO_ZIP, Version=v1["Version"], Handler="echo.wat")
assert_shaped_like(v1, GOLDEN_CONFIG, CONFIG_KEYS, "PublishVersion")
# Nothing changed since: publishing again gives the same version.
assert lam.publish_version(FunctionName=ver)["Version"] == v1["Version"]
lam.update_function_code(FunctionName=ver, ZipFile=QUIET_AS_ECHO_ZIP)
v2 = lam.publish_version(FunctionName=ver)
assert v2["Version"].isdigit() and int(v2["Version"]) > int(v1["Version"]), (v1["Version"], v2["Version"])
assert v2["CodeSha256"] == sha256_b64(QUIET_AS_ECHO_ZIP)
V1, V2 = v1["Version"], v2["Version"]

listed = lam.list_versions_by_function(FunctionName=ver)["Versions"]
versions = [v["Version"] for v in listed]
assert len(versions) == len(set(versions)), versions
assert {"$LATEST", V1, V2} <= set(versions), versions
for v in listed:
    if v["Version"] == "$LATEST":  # Lambda lists it as name:$LATEST; either form will do
        assert v["FunctionArn"] in (fn_arn(ver), fn_arn(ver, "$LATEST")), v
    else:
        assert v["FunctionArn"] == fn_arn(ver, v["Version"]), v
# A version keeps the code it was published with.
old = lam.get_function_configuration(FunctionName=ver, Qualifier=V1)
assert_config(old, ver, ECHO_ZIP, Version=V1)
response = assert_echoes(ver, Qualifier=V1)
assert response["ExecutedVersion"] == V1, response
assert assert_echoes(f"{ver}:{V1}")["ExecutedVersion"] == V1  # FunctionName "name:version"
response, payload = invoke(ver, Qualifier=V2)
assert payload == b"" and response["ExecutedVersion"] == V2, (response, payload)
expect_error(lam.invoke, "ResourceNotFoundException", 404, FunctionName=ver, Qualifier="9999", Payload=b"{}")

# --- 10. aliases -----------------------------------------------------------------------------
section("aliases")
# Cirrus aliases carry no description: one is refused, and nothing is created.
expect_error(lam.create_alias, "InvalidParameterValueException", 400, FunctionName=ver,
             Name="live", FunctionVersion=V1, Description="traffic")
expect_error(lam.get_alias, "ResourceNotFoundException", 404, FunctionName=ver, Name="live")
alias = lam.create_alias(FunctionName=ver, Name="live", FunctionVersion=V1)
assert alias["AliasArn"] == fn_arn(ver, "live"), alias
assert (alias["Name"], alias["FunctionVersion"]) == ("live", V1), alias
assert isinstance(alias["RevisionId"], str) and alias["RevisionId"], alias
expect_error(lam.create_alias, "ResourceConflictException", 409, FunctionName=ver, Name="live",
             FunctionVersion=V2)
got = lam.get_alias(FunctionName=ver, Name="live")
assert (got["AliasArn"], got["FunctionVersion"], got["RevisionId"]) == (
    alias["AliasArn"], V1, alias["RevisionId"]), got
assert "live" in [a["Name"] for a in lam.list_aliases(FunctionName=ver)["Aliases"]]

# Every way of naming the alias runs the version it points at.
for function, params in [(ver, {"Qualifier": "live"}),
                         (f"{ver}:live", {}),
                         (fn_arn(ver, "live"), {})]:
    response = assert_echoes(function, **params)
    assert response["ExecutedVersion"] == V1, (function, params, response)
response = assert_echoes(fn_arn(ver), Qualifier=V1)  # a full unqualified ARN + Qualifier
assert response["ExecutedVersion"] == V1, response

expect_error(lam.update_alias, "PreconditionFailedException", 412, FunctionName=ver, Name="live",
             FunctionVersion=V2, RevisionId=STALE_REVISION)
assert lam.get_alias(FunctionName=ver, Name="live")["FunctionVersion"] == V1
moved = lam.update_alias(FunctionName=ver, Name="live", FunctionVersion=V2,
                         RevisionId=alias["RevisionId"])
assert moved["FunctionVersion"] == V2 and moved["RevisionId"] != alias["RevisionId"], moved
response, payload = invoke(ver, Qualifier="live")
assert payload == b"" and response["ExecutedVersion"] == V2, (response, payload)

expect_error(lam.get_alias, "ResourceNotFoundException", 404, FunctionName=ver, Name="ghost")
expect_error(lam.create_alias, ("ResourceNotFoundException", "InvalidParameterValueException"),
             (404, 400), FunctionName=ver, Name="nowhere", FunctionVersion="9999")
lam.delete_alias(FunctionName=ver, Name="live")
expect_error(lam.get_alias, "ResourceNotFoundException", 404, FunctionName=ver, Name="live")
expect_error(lam.invoke, "ResourceNotFoundException", 404, FunctionName=ver, Qualifier="live",
             Payload=b"{}")
expect_error(lam.update_alias, "ResourceNotFoundException", 404, FunctionName=ver, Name="live",
             FunctionVersion=V1)

# --- 11. reserved concurrency and throttling ---------------------------------------------------
section("concurrency and throttling")
throttled = fname("throttled")
create(throttled, ECHO_ZIP, Handler="echo.wat")
put = lam.put_function_concurrency(FunctionName=throttled, ReservedConcurrentExecutions=0)
assert put["ReservedConcurrentExecutions"] == 0, put
assert lam.get_function_concurrency(FunctionName=throttled)["ReservedConcurrentExecutions"] == 0
error = expect_error(lam.invoke, "TooManyRequestsException", 429, FunctionName=throttled,
                     Payload=b"{}")
reasons = lam.meta.service_model.shape_for("ThrottleReason").enum
assert error.get("Reason") in reasons, f"Reason {error.get('Reason')!r} is not one of {reasons}"
# The same, raw: Reason is in the JSON body, the code in x-amzn-ErrorType.
status, headers, body = raw("POST", f"/2015-03-31/functions/{throttled}/invocations", b"{}")
throttle_golden = golden("too_many_requests.json")
assert status == throttle_golden["status"], (status, body)
assert headers.get("x-amzn-ErrorType", "").split(":")[0] == "TooManyRequestsException", dict(headers)
assert_shaped_like(json.loads(body), throttle_golden["body"], ["Type", "Reason"], "throttle body")
lam.delete_function_concurrency(FunctionName=throttled)
assert "ReservedConcurrentExecutions" not in lam.get_function_concurrency(FunctionName=throttled)
assert_echoes(throttled)

# --- 12. asynchronous invocation settings ------------------------------------------------------
section("event invoke config")
target = fname("destination")
create(target, guest_zip("log_input.wat"), Handler="log_input.wat")
destinations = {"OnSuccess": {"Destination": fn_arn(target)},
                "OnFailure": {"Destination": fn_arn(target)}}
put = lam.put_function_event_invoke_config(FunctionName=quiet, MaximumRetryAttempts=1,
                                           MaximumEventAgeInSeconds=120,
                                           DestinationConfig=destinations)
for cfg in [put, lam.get_function_event_invoke_config(FunctionName=quiet)]:
    assert cfg["MaximumRetryAttempts"] == 1, cfg
    assert cfg["MaximumEventAgeInSeconds"] == 120, cfg
    assert cfg["DestinationConfig"] == destinations, cfg
    assert cfg["FunctionArn"].startswith(fn_arn(quiet)), cfg
for params in [{"MaximumRetryAttempts": 3}, {"MaximumRetryAttempts": -1},
               {"MaximumEventAgeInSeconds": 59}, {"MaximumEventAgeInSeconds": 21601}]:
    expect_error(loose.put_function_event_invoke_config, "InvalidParameterValueException", 400,
                 FunctionName=quiet, **params)
missing_target = {"OnFailure": {"Destination": fn_arn(fname("nobody"))}}
expect_error(lam.put_function_event_invoke_config,
             ("InvalidParameterValueException", "ResourceNotFoundException"), (400, 404),
             FunctionName=quiet, MaximumRetryAttempts=0, DestinationConfig=missing_target)
kept = lam.get_function_event_invoke_config(FunctionName=quiet)
assert (kept["MaximumRetryAttempts"], kept["MaximumEventAgeInSeconds"], kept["DestinationConfig"]) == (
    1, 120, destinations), kept
lam.delete_function_event_invoke_config(FunctionName=quiet)
expect_error(lam.get_function_event_invoke_config, "ResourceNotFoundException", 404,
             FunctionName=quiet)

# --- 13. function URLs -------------------------------------------------------------------------
section("function URLs")
public = fname("public")
create(public, ECHO_ZIP, Handler="echo.wat")
# A function made through this API is private until it has an AuthType NONE URL.
status, _ = http_post(f"{ENDPOINT}/fn/{public}/", b'{"early": true}')
assert status == 404, status
url = lam.create_function_url_config(FunctionName=public, AuthType="NONE")
assert url["FunctionUrl"].startswith("http") and url["FunctionUrl"].endswith(f"/fn/{public}/"), url
assert url["AuthType"] == "NONE" and url["FunctionArn"].startswith(fn_arn(public)), url
status, body = http_post(url["FunctionUrl"], b'{"via": "url"}')
assert (status, body) == (200, b'{"via": "url"}'), (status, body)
got = lam.get_function_url_config(FunctionName=public)
assert (got["FunctionUrl"], got["AuthType"]) == (url["FunctionUrl"], "NONE"), got
expect_error(lam.create_function_url_config, "ResourceConflictException", 409,
             FunctionName=public, AuthType="NONE")
# Without its URL config, the function is private again.
lam.delete_function_url_config(FunctionName=public)
status, _ = http_post(f"{ENDPOINT}/fn/{public}/", b"{}")
assert status == 404, status

iam = fname("iam")
create(iam, ECHO_ZIP, Handler="echo.wat")
url = lam.create_function_url_config(FunctionName=iam, AuthType="AWS_IAM")
assert url["AuthType"] == "AWS_IAM", url
status, _ = http_post(f"{ENDPOINT}/fn/{iam}/", b"{}")
assert status == 404, f"an AWS_IAM function answered an unsigned request: {status}"

# --- 14. ListFunctions paging ----------------------------------------------------------------
section("list functions")
paged = [fname(f"page-{i}") for i in range(5)]
for function in paged:
    create(function, ECHO_ZIP, Handler="echo.wat")
seen, items, marker, pages = [], {}, None, 0
while True:
    params = {"MaxItems": 2, **({"Marker": marker} if marker else {})}
    page = lam.list_functions(**params)
    pages += 1
    assert len(page["Functions"]) <= 2, f"MaxItems=2 gave {len(page['Functions'])}"
    seen += [f["FunctionName"] for f in page["Functions"]]
    items.update((f["FunctionName"], f) for f in page["Functions"])
    marker = page.get("NextMarker")
    if not marker:
        break
    assert pages < 10_000, "ListFunctions never stopped paging"
assert len(seen) == len(set(seen)), "a function was listed twice"
for function in paged:
    assert seen.count(function) == 1, f"{function} listed {seen.count(function)} times"
assert pages >= 3, f"5+ functions in pages of 2 took {pages} pages"
assert_shaped_like(items[paged[0]], GOLDEN_CONFIG, CONFIG_KEYS, "ListFunctions item")

# --- 15. operations Cirrus does not implement ------------------------------------------------
section("unimplemented operations")
for call, params, operation in [
    (lam.list_layers, {}, "ListLayers"),
    (lam.get_account_settings, {}, "GetAccountSettings"),
    (lam.add_permission, {"FunctionName": echo, "StatementId": "anyone",
                          "Action": "lambda:InvokeFunction", "Principal": "*"}, "AddPermission"),
    (lam.list_event_source_mappings, {}, "ListEventSourceMappings"),
]:
    try:
        call(**params)
    except ClientError as e:
        status = e.response["ResponseMetadata"]["HTTPStatusCode"]
        message = message_of(e.response)
        assert 400 <= status <= 599, (operation, status)
        assert message, f"{operation}: an error with no message"
        assert operation.lower() in message.lower(), f"{operation}: {message!r} does not name it"
    else:
        raise AssertionError(f"{operation} succeeded, but Cirrus does not implement it")
    lam.get_function_configuration(FunctionName=echo)  # and the server is still fine

# --- 16. hand-made requests --------------------------------------------------------------
section("raw requests")
# A signed CreateFunction whose body is not JSON.
status, headers, body = raw("POST", "/2015-03-31/functions", b"this is not json")
assert status == 400, (status, body)
assert headers.get("x-amzn-ErrorType"), f"no x-amzn-ErrorType: {dict(headers)}"
# An error body, raw, against Lambda's: status, x-amzn-ErrorType, Type and Message.
error_golden = golden("error_response.json")
status, headers, body = raw("GET", f"/2015-03-31/functions/{fname('nobody')}/configuration")
assert status == error_golden["status"], (status, body)
assert headers.get("x-amzn-ErrorType", "").split(":")[0] == "ResourceNotFoundException", dict(headers)
assert_shaped_like(json.loads(body), error_golden["body"], ["Type", "Message"], "error body")

# --- 17. authentication ----------------------------------------------------------------
section("authentication")
allowed = ("InvalidSignatureException", "UnrecognizedClientException")
expect_error(client(secret=SECRET + "x").list_functions, allowed, 403)
expect_error(client(access="AKIA" + "Z" * 16, secret=SECRET).list_functions, allowed, 403)
status, _, _ = raw("GET", "/2015-03-31/functions", sign=False)
assert status in (401, 403), f"an unsigned request got {status}"

# --- 17b. native runtimes: the same zip as on AWS ---------------------------------------------
section("native runtimes")
NATIVE = FIXTURES / "native"
python_zip = make_zip({"app.py": (NATIVE / "app.py").read_bytes()})
py = fname("py")
cfg = create(py, python_zip, Runtime="python3.11", Handler="app.hello", Timeout=5)
assert (cfg["Runtime"], cfg["Handler"]) == ("python3.11", "app.hello"), cfg
assert cfg["CodeSha256"] == sha256_b64(python_zip), cfg
response, payload = invoke(py, {"from": "boto3"})
assert response["StatusCode"] == 200 and "FunctionError" not in response, (response, payload)
answer = json.loads(payload)
assert answer["event"] == {"from": "boto3"} and answer["function_name"] == py, answer
# Asynchronously, through the durable queue.
queued = lam.invoke(FunctionName=py, InvocationType="Event", Payload=b'{"async": true}')
assert queued["StatusCode"] == 202, queued
# A handler's exception, as Lambda reports it.
failing = fname("pyfail")
create(failing, python_zip, Runtime="python3.11", Handler="app.fail")
response, payload = invoke(failing, {"x": 1})
assert response.get("FunctionError") == "Unhandled", response
assert json.loads(payload)["errorType"] == "ValueError", payload
# A new handler is configuration; a new runtime needs new code.
updated = lam.update_function_configuration(FunctionName=failing, Handler="app.hello")
assert updated["Handler"] == "app.hello", updated
response, payload = invoke(failing, {"y": 2})
assert "FunctionError" not in response and json.loads(payload)["event"] == {"y": 2}, payload
expect_error(lam.update_function_configuration, "InvalidParameterValueException", 400,
             FunctionName=failing, Runtime="wasi")
# Node.js, on the host's major version.
node_runtime = next(r for r in ("nodejs24.x", "nodejs22.x", "nodejs20.x", "nodejs18.x")
                    if subprocess_node_major() == r)
js = fname("js")
create(js, make_zip({"app.mjs": (NATIVE / "app.mjs").read_bytes()}), Runtime=node_runtime,
       Handler="app.handler")
response, payload = invoke(js, {"from": "boto3"})
assert json.loads(payload)["event"] == {"from": "boto3"}, payload
expect_error(lam.create_function, "InvalidParameterValueException", 400, FunctionName=fname("j"),
             Runtime="java21", Role=ROLE, Handler="a.b", Code={"ZipFile": python_zip})

# --- 18. DeleteFunction, and cleaning up ------------------------------------------------
section("delete")
lam.delete_function(FunctionName=echo)
assert_absent(echo)
expect_error(lam.get_function_configuration, "ResourceNotFoundException", 404, FunctionName=echo)
expect_error(lam.invoke, "ResourceNotFoundException", 404, FunctionName=echo, Payload=b"{}")
expect_error(lam.delete_function, "ResourceNotFoundException", 404, FunctionName=echo)
# Deleting a function takes its versions and aliases with it.
lam.delete_function(FunctionName=ver)
expect_error(lam.list_versions_by_function, "ResourceNotFoundException", 404, FunctionName=ver)
for function in CREATED:
    if function not in (echo, ver):
        lam.delete_function(FunctionName=function)
    assert_absent(function)
remaining = [n for n in all_function_names() if n.endswith(RUN)]
assert not remaining, f"left behind: {remaining}"

print("boto3 Lambda suite: all checks passed", flush=True)
