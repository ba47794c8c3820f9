//! Secrets, scoped API keys and the audit log, end to end: the real server, the CLI,
//! curl, and boto3 for the keys' AWS pairs.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{repo, Up};
use std::time::Duration;

/// `curl` answering `BODY\nSTATUS`.
fn call(up: &Up, method: &str, path: &str, token: &str, body: Option<&str>) -> (String, u16) {
    let url = format!("{}{path}", up.url);
    let auth = format!("Authorization: Bearer {token}");
    let mut args = vec!["-X", method, "-H", &auth, "-w", "\n%{http_code}", &url];
    if let Some(body) = body {
        args.extend(["--data-binary", body]);
    }
    let out = up.curl(&args);
    let (body, status) = out.rsplit_once('\n').unwrap();
    (body.to_owned(), status.parse().unwrap())
}

#[test]
fn secrets_are_resolved_at_start_rotated_without_redeploy_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]);
    let env = repo("fixtures/env.wat");
    let env = env.to_str().unwrap();

    // A reference to a secret that does not exist is refused at deploy.
    let out = up.cli(&[
        "deploy",
        "app",
        env,
        "--env",
        "DB_PASSWORD=secret:db-password",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("env.DB_PASSWORD references secret \"db-password\", which does not exist")
            && err.contains("cirrus secret set db-password"),
        "{err}"
    );

    let said = up.set_secret("db-password", "hunter2\n");
    assert!(said.contains("secret db-password created"), "{said}");
    // No idle environments kept: each call starts a new one, which resolves anew.
    up.cli_ok(&[
        "deploy",
        "app",
        env,
        "--env",
        "DB_PASSWORD=secret:db-password",
        "--max-idle",
        "0",
    ]);
    let seen = up.cli_ok(&["invoke", "app"]);
    // The trailing newline from stdin is dropped.
    assert!(seen.contains("DB_PASSWORD=hunter2\n"), "{seen}");

    // Never returned: not by get, ls, the secrets list, or sitting in the database file.
    let shown = up.cli_ok(&["--json", "get", "app"]);
    assert!(
        !shown.contains("hunter2") && shown.contains("secret:db-password"),
        "{shown}"
    );
    let listed = up.cli_json(&["secret", "ls"]);
    assert_eq!(listed[0]["name"], "db-password");
    assert_eq!(listed[0]["used_by"][0], "app@1");
    assert!(!listed.to_string().contains("hunter2"));
    let table = up.cli_ok(&["secret", "ls"]);
    assert!(
        table.contains("db-password") && table.contains("app@1"),
        "{table}"
    );
    for file in ["cirrus.db", "cirrus.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join(file)) {
            assert!(
                !bytes.windows(7).any(|w| w == b"hunter2"),
                "{file} holds the secret in plaintext"
            );
        }
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("secrets.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // Rotation: no redeploy, the next environment gets the new value.
    let said = up.set_secret("db-password", "correct horse");
    assert!(said.contains("rotated"), "{said}");
    let seen = up.cli_ok(&["invoke", "app"]);
    assert!(seen.contains("DB_PASSWORD=correct horse\n"), "{seen}");
    assert_eq!(
        up.cli_json(&["versions", "app"]).as_array().unwrap().len(),
        1
    );

    // Deleting a referenced secret is refused, naming who uses it; nothing changes.
    let out = up.cli(&["secret", "rm", "db-password"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("referenced by app@1"), "{err}");
    assert!(up
        .cli_ok(&["invoke", "app"])
        .contains("DB_PASSWORD=correct horse"));
    // Once nothing references it, it goes.
    up.cli_ok(&["rm", "app"]);
    up.cli_ok(&["secret", "rm", "db-password"]);
    assert_eq!(up.cli_json(&["secret", "ls"]), serde_json::json!([]));

    // Bad input: names, sizes, encodings.
    let token = up.admin_token();
    let (body, status) = call(&up, "PUT", "/v1/secrets/Bad%20Name", &token, Some("x"));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not a valid secret name"), "{body}");
    let big = "x".repeat(70_000);
    let (body, status) = call(&up, "PUT", "/v1/secrets/big", &token, Some(&big));
    assert_eq!(status, 413, "{body}");
    let (body, status) = call(&up, "DELETE", "/v1/secrets/nope", &token, None);
    assert_eq!(status, 404, "{body}");
}

#[test]
fn the_secrets_key_can_live_elsewhere_and_a_wrong_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = dir.path().join("vault.key");
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let key_arg = key.to_str().unwrap();
    {
        let up = Up::start(&data, &["--secrets-key-file", key_arg]);
        up.set_secret("api-token", "s3cr3t");
        assert!(!data.join("secrets.key").exists());
    }
    // Restarted with the same key: the secret opens.
    {
        let up = Up::start(&data, &["--secrets-key-file", key_arg]);
        assert_eq!(up.cli_json(&["secret", "ls"])[0]["name"], "api-token");
    }
    // With another key (the default one, created anew) the server refuses to start and
    // says why.
    let err = common::up_refused(&data, &[]);
    assert!(
        err.contains("was sealed with secrets key") && err.contains("secrets.key"),
        "{err}"
    );
    // A key file others can read is refused, naming the fix.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let err = common::up_refused(&data, &[&"--secrets-key-file", &key_arg]);
    assert!(err.contains("chmod 600"), "{err}");
}

/// The token and AWS pair `cirrus key create` printed.
fn create_key(up: &Up, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["key", "create"];
    all.extend_from_slice(args);
    up.cli_json(&all)
}

#[test]
fn scoped_keys_open_only_what_their_scope_names_and_the_audit_log_says_who() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]);
    let echo = repo("fixtures/echo.wat");
    let echo = echo.to_str().unwrap();
    up.cli_ok(&["deploy", "private", echo, "--private"]);
    up.cli_ok(&["deploy", "other", echo, "--private"]);

    let read = create_key(&up, &["--scope", "read", "--name", "dashboards"]);
    let deploy = create_key(&up, &["--scope", "deploy"]);
    let invoke = create_key(&up, &["--scope", "invoke:private"]);
    let read_token = read["token"].as_str().unwrap();
    let deploy_token = deploy["token"].as_str().unwrap();
    let invoke_token = invoke["token"].as_str().unwrap();
    assert_eq!(read["scope"], "read");
    assert!(read_token.starts_with("ck_"));

    // read: reads, nothing else.
    let (_, status) = call(&up, "GET", "/v1/functions", read_token, None);
    assert_eq!(status, 200);
    let (body, status) = call(&up, "DELETE", "/v1/functions/other", read_token, None);
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("has scope read") && body.contains("needs scope deploy"),
        "{body}"
    );
    let (_, status) = call(&up, "GET", "/v1/keys", read_token, None);
    assert_eq!(status, 403);
    let (_, status) = call(
        &up,
        "POST",
        "/v1/functions/private/invoke",
        read_token,
        Some("x"),
    );
    assert_eq!(status, 403);

    // deploy: changes functions and invokes any, but manages no keys or secrets.
    let alias = r#"{"version":1}"#;
    let (body, status) = call(
        &up,
        "PUT",
        "/v1/functions/other/aliases/live",
        deploy_token,
        Some(alias),
    );
    assert_eq!(status, 200, "{body}");
    let (_, status) = call(
        &up,
        "POST",
        "/v1/functions/other/invoke",
        deploy_token,
        Some("hi"),
    );
    assert_eq!(status, 200);
    let (_, status) = call(
        &up,
        "POST",
        "/v1/keys",
        deploy_token,
        Some(r#"{"scope":"admin"}"#),
    );
    assert_eq!(status, 403);
    let (_, status) = call(&up, "PUT", "/v1/secrets/x", deploy_token, Some("v"));
    assert_eq!(status, 403);

    // invoke:private: that private function over /fn and the invoke API, nothing more;
    // the guest never sees the key.
    let (body, status) = call(&up, "POST", "/fn/private", invoke_token, Some("ping"));
    assert_eq!((body.as_str(), status), ("ping", 200));
    let (_, status) = call(
        &up,
        "POST",
        "/v1/functions/private/invoke",
        invoke_token,
        Some("x"),
    );
    assert_eq!(status, 200);
    let (_, status) = call(&up, "POST", "/fn/other", invoke_token, Some("ping"));
    assert_eq!(
        status, 404,
        "a private function stays hidden from other keys"
    );
    let (_, status) = call(&up, "GET", "/v1/functions", invoke_token, None);
    assert_eq!(status, 403);

    // Revoked: refused at once, with the reason.
    let id = invoke["id"].as_str().unwrap();
    up.cli_ok(&["key", "revoke", id]);
    let (body, status) = call(
        &up,
        "POST",
        "/v1/functions/private/invoke",
        invoke_token,
        Some("x"),
    );
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains(&format!("API key {id} was revoked at")),
        "{body}"
    );
    let (_, status) = call(&up, "POST", "/fn/private", invoke_token, Some("ping"));
    assert_eq!(status, 404);

    // Expired: likewise.
    let brief = create_key(&up, &["--scope", "read", "--expires", "1s"]);
    assert!(brief["expires_at"].is_string());
    std::thread::sleep(Duration::from_millis(1500));
    let (body, status) = call(
        &up,
        "GET",
        "/v1/functions",
        brief["token"].as_str().unwrap(),
        None,
    );
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("expired at"), "{body}");
    // A made-up key is unknown; a bad scope or expiry is refused.
    let (body, status) = call(&up, "GET", "/v1/functions", "ck_000000000000_nope", None);
    assert_eq!(status, 401);
    assert!(body.contains("unknown API key"), "{body}");
    let out = up.cli(&["key", "create", "--scope", "root"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invoke:FUNCTION"));
    let token = up.admin_token();
    let (body, status) = call(
        &up,
        "POST",
        "/v1/keys",
        &token,
        Some(r#"{"scope":"read","expires_in":"soon"}"#),
    );
    assert_eq!(status, 400, "{body}");
    let (body, status) = call(
        &up,
        "POST",
        "/v1/keys",
        &token,
        Some(r#"{"scope":"read","owner":"x"}"#),
    );
    assert_eq!(status, 400, "{body}");

    // Listed without secrets; revoked ones say so.
    let listed = up.cli_ok(&["key", "ls"]);
    assert!(
        listed.contains("dashboards") && listed.contains("revoked"),
        "{listed}"
    );
    assert!(
        !listed.contains(read_token)
            && !listed.contains(deploy["secret_access_key"].as_str().unwrap())
    );

    // The audit log: who did what, refused attempts included; reads are not actions.
    std::thread::sleep(Duration::from_millis(300));
    let audit = up.cli_json(&["audit", "--limit", "200"]);
    let entries = audit.as_array().unwrap();
    let has = |actor: &str, method: &str, path: &str, status: u64| {
        entries.iter().any(|e| {
            e["actor"] == actor
                && e["method"] == method
                && e["path"] == path
                && e["status"] == status
        })
    };
    let deploy_actor = format!("key:{}", deploy["id"].as_str().unwrap());
    let read_actor = format!("key:{}", read["id"].as_str().unwrap());
    assert!(
        has(
            &deploy_actor,
            "PUT",
            "/v1/functions/other/aliases/live",
            200
        ),
        "{audit:#}"
    );
    assert!(
        has(&read_actor, "DELETE", "/v1/functions/other", 403),
        "{audit:#}"
    );
    assert!(
        has("admin-token", "DELETE", &format!("/v1/keys/{id}"), 200),
        "{audit:#}"
    );
    assert!(
        has("admin-token", "PUT", "/v1/functions/private", 201)
            || has("admin-token", "PUT", "/v1/functions/private", 200),
        "{audit:#}"
    );
    assert!(!entries.iter().any(|e| e["method"] == "GET"), "{audit:#}");
    let (_, status) = call(&up, "GET", "/v1/audit", read_token, None);
    assert_eq!(status, 403, "the audit log is the admin's");
}

const AWS_WITH_KEY: &str = r#"
import boto3, sys, json
from botocore.config import Config
from botocore.exceptions import ClientError
s3_url, api_url, key_id, secret = sys.argv[1:5]
cfg = Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1})
kw = dict(region_name="us-east-1", aws_access_key_id=key_id, aws_secret_access_key=secret, config=cfg)
s3 = boto3.client("s3", endpoint_url=s3_url, **kw)
lam = boto3.client("lambda", endpoint_url=api_url, **kw)
out = {}
def attempt(name, f):
    try:
        f(); out[name] = "ok"
    except ClientError as e:
        out[name] = e.response["Error"]["Code"] + ": " + e.response["Error"]["Message"]
attempt("get", lambda: s3.get_object(Bucket="shared", Key="a.txt")["Body"].read())
attempt("put", lambda: s3.put_object(Bucket="shared", Key="b.txt", Body=b"x"))
attempt("invoke", lambda: lam.invoke(FunctionName="private", Payload=b"{}"))
attempt("list", lambda: lam.list_functions())
attempt("delete", lambda: lam.delete_function(FunctionName="private"))
print(json.dumps(out))
"#;

fn aws_with(up: &Up, key: &serde_json::Value) -> serde_json::Value {
    common::python_json(
        AWS_WITH_KEY,
        &[
            &up.s3,
            &up.url,
            &key["access_key_id"].as_str().unwrap(),
            &key["secret_access_key"].as_str().unwrap(),
        ],
    )
}

#[test]
fn keys_aws_pairs_carry_the_same_scopes_to_s3_and_the_lambda_api() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]);
    up.cli_ok(&[
        "deploy",
        "private",
        repo("fixtures/echo.wat").to_str().unwrap(),
        "--private",
    ]);
    up.cli_ok(&["bucket", "mb", "shared"]);
    let token = up.admin_token();
    let (_, status) = call(
        &up,
        "PUT",
        "/v1/buckets/shared/objects/a.txt",
        &token,
        Some("hello"),
    );
    assert_eq!(status, 201);

    let read = aws_with(&up, &create_key(&up, &["--scope", "read"]));
    assert_eq!(read["get"], "ok", "{read}");
    assert!(
        read["put"].as_str().unwrap().starts_with("AccessDenied"),
        "{read}"
    );
    assert!(
        read["invoke"]
            .as_str()
            .unwrap()
            .starts_with("AccessDeniedException"),
        "{read}"
    );
    assert_eq!(read["list"], "ok", "{read}");

    let invoke = create_key(&up, &["--scope", "invoke:private"]);
    let seen = aws_with(&up, &invoke);
    assert_eq!(seen["invoke"], "ok", "{seen}");
    assert!(
        seen["get"].as_str().unwrap().starts_with("AccessDenied"),
        "{seen}"
    );
    assert!(
        seen["delete"]
            .as_str()
            .unwrap()
            .starts_with("AccessDeniedException"),
        "{seen}"
    );

    // Revoked: the AWS pair stops working at once too, with the reason.
    up.cli_ok(&["key", "revoke", invoke["id"].as_str().unwrap()]);
    let seen = aws_with(&up, &invoke);
    assert!(
        seen["get"].as_str().unwrap().contains("was revoked at"),
        "{seen}"
    );
    assert!(
        seen["invoke"].as_str().unwrap().contains("was revoked at"),
        "{seen}"
    );
    // Nothing was deleted by any of it.
    assert_eq!(up.cli_json(&["ls"]).as_array().unwrap().len(), 1);
}
