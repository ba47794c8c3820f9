"""The AWS Lambda-compatible API driven by the aws CLI (`aws lambda ... --endpoint-url`).

Run by the Rust integration test as:
    python3 aws_cli_suite.py ENDPOINT CREDENTIALS_FILE FIXTURES_DIR
(the same arguments as boto3_suite.py). Uses `aws` from PATH, or `python3 -m awscli`
when there is none.

Every check is an assert; the first failure ends the run with a traceback. Function
names carry a random suffix, so a rerun against the same server never collides.
"""

import base64
import configparser
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ENDPOINT, CREDENTIALS, FIXTURES = sys.argv[1].rstrip("/"), sys.argv[2], Path(sys.argv[3])
keys = configparser.ConfigParser()
keys.read(CREDENTIALS)
ACCESS, SECRET = keys["default"]["aws_access_key_id"], keys["default"]["aws_secret_access_key"]

REGION, ACCOUNT = "us-east-1", "000000000000"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/x"
RUN = secrets.token_hex(3)  # in every function name: reruns never collide
WORK = Path(tempfile.mkdtemp(prefix="cirrus-lambda-cli-"))

AWS = ["aws"] if shutil.which("aws") else [sys.executable, "-m", "awscli"]

# The CLI's environment: these keys and nothing from the machine's own AWS setup (no
# profile, config file or endpoint override can leak in). AWS_MAX_ATTEMPTS=1 means one
# attempt in all, so no error is hidden behind retries.
(WORK / "config").write_text(
    f"[default]\nregion = {REGION}\ncli_binary_format = raw-in-base64-out\n"
)
ENV = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
ENV.update(
    AWS_ACCESS_KEY_ID=ACCESS,
    AWS_SECRET_ACCESS_KEY=SECRET,
    AWS_DEFAULT_REGION=REGION,
    AWS_CONFIG_FILE=str(WORK / "config"),
    AWS_SHARED_CREDENTIALS_FILE=str(WORK / "no-credentials-file"),
    AWS_MAX_ATTEMPTS="1",
    AWS_PAGER="",
)


def section(title):
    print(f"--- {title}", flush=True)


def cli_major_version():
    out = subprocess.run(AWS + ["--version"], capture_output=True, text=True, env=ENV, timeout=60)
    found = re.search(r"aws-cli/(\d+)\.", out.stdout + out.stderr)
    assert found, f"cannot tell the aws CLI's version: {out.stdout!r} {out.stderr!r}"
    return int(found.group(1))


# v2 reads --payload as base64 unless told `raw-in-base64-out`; v1 always sends it raw
# and has no --cli-binary-format option at all (it stops with "Unknown options"). The
# config file above says raw-in-base64-out too, for either.
BINARY_FORMAT = ["--cli-binary-format", "raw-in-base64-out"] if cli_major_version() >= 2 else []


def aws(*args, ok=True):
    """Runs `aws lambda ARGS` against the server; with ok=True, it must succeed."""
    command = AWS + [
        "--endpoint-url", ENDPOINT, "--output", "json", "--region", REGION,
        "--cli-read-timeout", "60", "--cli-connect-timeout", "10",
        "lambda", *args,
    ]
    out = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=180)
    if ok:
        assert out.returncode == 0, (
            f"aws lambda {' '.join(args)} exited {out.returncode}\n"
            f"stdout: {out.stdout}\nstderr: {out.stderr}"
        )
    return out


def aws_json(*args):
    out = aws(*args)
    try:
        return json.loads(out.stdout)
    except ValueError:
        raise AssertionError(f"aws lambda {' '.join(args)} printed no JSON: {out.stdout!r}")


def write_zip(path, files):
    """Writes a deployment package {path in zip: bytes} to `path`; returns its bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def sha256_b64(data):
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def invoke(function, event, *extra):
    """`aws lambda invoke` with a JSON payload; returns (printed JSON, output file bytes)."""
    out_file = WORK / f"out-{secrets.token_hex(4)}.json"
    printed = aws_json(
        "invoke", "--function-name", function, "--payload", json.dumps(event),
        *BINARY_FORMAT, *extra, str(out_file),
    )
    return printed, out_file.read_bytes()


def names_listed(*extra):
    return [f["FunctionName"] for f in aws_json("list-functions", *extra)["Functions"]]


echo_zip_path = WORK / "echo.zip"
ECHO_ZIP = write_zip(echo_zip_path, {"echo.wat": (FIXTURES / "echo.wat").read_bytes()})
# log_input.wat under echo.wat's name: update-function-code cannot change the handler.
quiet_zip_path = WORK / "quiet.zip"
QUIET_ZIP = write_zip(quiet_zip_path, {"echo.wat": (FIXTURES / "log_input.wat").read_bytes()})
function = f"cli-{RUN}"

# --- create-function ---------------------------------------------------------------------
section("create-function")
created = aws_json(
    "create-function", "--function-name", function, "--zip-file", f"fileb://{echo_zip_path}",
    "--handler", "echo.wat", "--runtime", "wasi", "--role", ROLE,
)
assert created["FunctionName"] == function, created
assert created["FunctionArn"] == f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function}", created
assert (created["Runtime"], created["Handler"], created["Role"]) == ("wasi", "echo.wat", ROLE), created
assert created["CodeSha256"] == sha256_b64(ECHO_ZIP), (created["CodeSha256"], sha256_b64(ECHO_ZIP))
assert isinstance(created["CodeSize"], int) and created["CodeSize"] > 0, created
assert (created["MemorySize"], created["Timeout"]) == (128, 3), created
assert (created["State"], created["LastUpdateStatus"]) == ("Active", "Successful"), created

# --- invoke ------------------------------------------------------------------------------
section("invoke")
event = {"from": "cli", "n": 1}
printed, output = invoke(function, event)
assert printed["StatusCode"] == 200, printed
assert "FunctionError" not in printed, printed
assert printed.get("ExecutedVersion") == "$LATEST" or printed.get("ExecutedVersion", "").isdigit(), printed
assert json.loads(output) == event, output
# --log-type Tail: the log tail comes back base64-encoded.
printed, output = invoke(function, {"tail": True}, "--log-type", "Tail")
assert "echo: done" in base64.b64decode(printed["LogResult"]).decode(errors="replace"), printed

# --- list-functions / get-function -------------------------------------------------------
section("list-functions and get-function")
assert names_listed().count(function) == 1
# --page-size 1 makes the CLI fetch one function per request, following NextMarker.
assert names_listed("--page-size", "1").count(function) == 1
got = aws_json("get-function", "--function-name", function)
assert got["Configuration"]["FunctionName"] == function, got
assert got["Configuration"]["CodeSha256"] == sha256_b64(ECHO_ZIP), got
assert "Code" in got, got

# --- update-function-code ----------------------------------------------------------------
section("update-function-code")
updated = aws_json("update-function-code", "--function-name", function,
                   "--zip-file", f"fileb://{quiet_zip_path}")
assert updated["CodeSha256"] == sha256_b64(QUIET_ZIP), updated
assert updated["CodeSha256"] != created["CodeSha256"]
printed, output = invoke(function, {"now": "quiet"})
assert printed["StatusCode"] == 200 and output == b"", (printed, output)

# --- update-function-configuration ---------------------------------------------------------
section("update-function-configuration")
updated = aws_json("update-function-configuration", "--function-name", function,
                   "--timeout", "10", "--memory-size", "256", "--environment", "Variables={A=b}")
assert (updated["Timeout"], updated["MemorySize"]) == (10, 256), updated
assert updated["Environment"]["Variables"] == {"A": "b"}, updated
shown = aws_json("get-function-configuration", "--function-name", function)
assert (shown["Timeout"], shown["MemorySize"]) == (10, 256), shown
assert shown["Environment"]["Variables"] == {"A": "b"}, shown

# --- publish-version, create-alias, invoke --qualifier -------------------------------------
section("publish-version and aliases")
published = aws_json("publish-version", "--function-name", function)
version = published["Version"]
assert version.isdigit(), published
assert published["FunctionArn"].endswith(f":{function}:{version}"), published
alias = aws_json("create-alias", "--function-name", function, "--name", "live",
                 "--function-version", version)
assert alias["AliasArn"] == f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function}:live", alias
assert alias["FunctionVersion"] == version, alias
printed, output = invoke(function, {"via": "alias"}, "--qualifier", "live")
assert printed["StatusCode"] == 200 and printed["ExecutedVersion"] == version, printed
assert output == b"", output  # the published code is log_input.wat's

# --- errors --------------------------------------------------------------------------------
section("errors")
missing = aws("get-function", "--function-name", f"missing-{RUN}", ok=False)
assert missing.returncode != 0, missing
assert "ResourceNotFoundException" in missing.stderr, missing.stderr

# --- delete-function -----------------------------------------------------------------------
section("delete-function")
aws("delete-function", "--function-name", function)
gone = aws("get-function", "--function-name", function, ok=False)
assert gone.returncode != 0 and "ResourceNotFoundException" in gone.stderr, gone.stderr
assert function not in names_listed()

shutil.rmtree(WORK, ignore_errors=True)
print("aws CLI Lambda suite: all checks passed", flush=True)
