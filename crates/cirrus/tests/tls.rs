//! TLS on every listener, end to end: a self-signed certificate made with openssl,
//! curl (HTTP/1.1 and HTTP/2), boto3 and the CLI trusting it, reloads on SIGHUP and file
//! change without dropping open connections, and bad certificate files refused clearly.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::Up;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA in `dir` (`ca.crt`, made once): what clients are told to trust.
fn ca(dir: &Path) -> PathBuf {
    let cert = dir.join("ca.crt");
    if !cert.exists() {
        let key = dir.join("ca.key");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=cirrus test CA",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]);
    }
    cert
}

/// A server certificate for 127.0.0.1 and localhost, signed by the test CA, with `cn`
/// as its subject.
fn make_cert(dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf) {
    let ca_cert = ca(dir);
    let ca_key = dir.join("ca.key");
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost
basicConstraints=CA:FALSE
",
    )
    .unwrap();
    let subject = format!("/CN={cn}");
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        &subject,
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        ca_cert.to_str().unwrap(),
        "-CAkey",
        ca_key.to_str().unwrap(),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        ext.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    (cert, key)
}

fn start_tls(data: &Path, cert: &Path, key: &Path) -> Up {
    Up::start(
        data,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
}

/// The subject CN the server presents now, read with openssl s_client.
fn served_cn(url: &str) -> String {
    let authority = url.trim_start_matches("https://");
    let authority = authority.split('/').next().unwrap();
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            authority,
            "-servername",
            "localhost",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("subject=CN = "))
        .or_else(|| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix("subject=CN="))
        })
        .unwrap_or_else(|| panic!("no subject in {text}"))
        .trim()
        .to_owned()
}

const KEEP_ALIVE: &str = r#"
import http.client, ssl, sys, time, json
host, port, ca, signal_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
conn = http.client.HTTPSConnection(host, port, context=ctx)
conn.request("GET", "/v1/health"); first = conn.getresponse(); first.read()
sock = conn.sock
print("connected", flush=True)
# The test replaces the certificate and waits for the reload, then says go.
while True:
    try:
        open(signal_file).close(); break
    except FileNotFoundError:
        time.sleep(0.05)
conn.request("GET", "/v1/health"); second = conn.getresponse(); second.read()
print(json.dumps({"first": first.status, "second": second.status, "same_socket": conn.sock is sock}))
"#;

#[test]
fn every_listener_speaks_tls_and_reloads_its_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path(), "one", "cirrus-one");
    let live_cert = dir.path().join("live.crt");
    let live_key = dir.path().join("live.key");
    std::fs::copy(&cert, &live_cert).unwrap();
    std::fs::copy(&key, &live_key).unwrap();
    let up = start_tls(&dir.path().join("data"), &live_cert, &live_key);
    assert!(up.url.starts_with("https://"), "{}", up.url);
    assert!(up.s3.starts_with("https://"), "{}", up.s3);
    assert!(up.dashboard.starts_with("https://"), "{}", up.dashboard);
    let ca_file = ca(dir.path());
    let ca = ca_file.to_str().unwrap();

    // curl trusting the certificate: HTTP/1.1, and HTTP/2 when offered.
    let health = format!("{}/v1/health", up.url);
    let v1 = up.curl(&[
        "--cacert",
        ca,
        "--http1.1",
        "-w",
        " %{http_version}",
        &health,
    ]);
    assert!(v1.ends_with(" 1.1") && v1.contains("ok"), "{v1}");
    let v2 = up.curl(&["--cacert", ca, "--http2", "-w", " %{http_version}", &health]);
    assert!(v2.ends_with(" 2") && v2.contains("ok"), "{v2}");
    // Functions over HTTP/2 too.
    let echo = common::repo("fixtures/echo.wat");
    up.cli_ok(&["--cacert", ca, "deploy", "echo", echo.to_str().unwrap()]);
    let answer = up.curl(&[
        "--cacert",
        ca,
        "--http2",
        "--data",
        "over h2",
        &format!("{}/fn/echo", up.url),
    ]);
    assert_eq!(answer, "over h2");
    // The dashboard's listener and the S3 API's.
    let page = up.curl(&["--cacert", ca, &up.dashboard]);
    assert!(page.contains("<html"), "{page}");
    // Without the certificate trusted, clients refuse the server.
    let out = Command::new("curl")
        .args(["-sS", &health])
        .output()
        .unwrap();
    assert!(!out.status.success());

    // boto3 with verify= against the S3 API.
    let script = r#"
import boto3, configparser, sys
from botocore.config import Config
keys = configparser.ConfigParser(); keys.read(sys.argv[2])
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1", verify=sys.argv[3],
    aws_access_key_id=keys["default"]["aws_access_key_id"],
    aws_secret_access_key=keys["default"]["aws_secret_access_key"],
    config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
s3.create_bucket(Bucket="tls")
s3.put_object(Bucket="tls", Key="k", Body=b"secure")
print(s3.get_object(Bucket="tls", Key="k")["Body"].read().decode())
"#;
    let credentials = up.data_dir.join("s3-credentials");
    assert_eq!(
        common::python(script, &[&up.s3, &credentials, &ca]),
        "secure"
    );

    // An open connection, then a new certificate: the connection keeps working, new
    // handshakes get the new certificate.
    assert_eq!(served_cn(&up.url), "cirrus-one");
    let port = up.url.rsplit(':').next().unwrap().to_owned();
    let go = dir.path().join("go");
    let (cert2, key2) = make_cert(dir.path(), "two", "cirrus-two");
    let mut client = Command::new("python3")
        .args(["-c", KEEP_ALIVE, "127.0.0.1", &port])
        .arg(&ca_file)
        .arg(&go)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "connected");
    // Key first, then certificate: a reload between the two writes fails (they do not
    // match) and keeps the old pair; the next change completes it.
    std::fs::copy(&key2, &live_key).unwrap();
    std::fs::copy(&cert2, &live_cert).unwrap();
    let mut reloaded = false;
    for _ in 0..50 {
        if served_cn(&up.url) == "cirrus-two" {
            reloaded = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(reloaded, "the new certificate was not picked up");
    std::fs::write(&go, "").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    client.wait().unwrap();
    let kept: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        kept,
        serde_json::json!({"first": 200, "second": 200, "same_socket": true})
    );

    // A broken pair on disk (SIGHUP asks for it at once) leaves the good one serving.
    std::fs::write(&live_cert, "not a certificate").unwrap();
    let pid = up.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(served_cn(&up.url), "cirrus-two");
    let v1 = up.curl(&["--cacert", ca, &health]);
    assert!(v1.contains("ok"), "{v1}");
    let reason = up
        .stderr
        .try_iter()
        .find(|l| l.contains("TLS certificate not reloaded"))
        .expect("the failed reload is logged");
    assert!(reason.contains("holds no PEM certificate"), "{reason}");
}

#[test]
fn bad_certificate_files_stop_the_start_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path(), "good", "good");
    let (_, other_key) = make_cert(dir.path(), "other", "other");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let missing = dir.path().join("missing.pem");
    for (cert, key, expected) in [
        (&missing, &key, "missing.pem"),
        (&garbage, &key, "holds no PEM certificate"),
        (&cert, &garbage, "holds no PEM private key"),
        (&cert, &other_key, "does not belong to the certificate"),
    ] {
        let err = common::up_refused(
            &dir.path().join("data"),
            &[&"--tls-cert", cert, &"--tls-key", key],
        );
        assert!(err.contains(expected), "{expected}: {err}");
    }
    // One without the other is refused by the CLI.
    let out = Command::new(common::BIN)
        .args(["up", "--tls-cert"])
        .arg(&cert)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
}
