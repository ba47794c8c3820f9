//! The two canonical serverless flows, end to end on the real binary: a photo uploaded
//! with the aws CLI becomes a thumbnail, a metadata row and a summary; a form posted
//! with curl becomes a row (or a 400 and nothing).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{aws, aws_ok, repo, Up};
use std::process::Command;
use std::time::{Duration, Instant};

fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A test photo: a colour gradient.
fn photo(width: usize, height: usize) -> (Vec<u8>, Vec<u8>) {
    let mut pixels = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            pixels.extend_from_slice(&[
                (x * 255 / width) as u8,
                (y * 255 / height) as u8,
                ((x + y) % 256) as u8,
            ]);
        }
    }
    let mut file = format!("P6\n# a comment\n{width} {height}\n255\n").into_bytes();
    file.extend_from_slice(&pixels);
    (file, pixels)
}

/// The thumbnail the example must produce: a box filter by a whole factor so the larger
/// side fits `size`, rounding to nearest.
fn expected_thumbnail(pixels: &[u8], width: usize, height: usize, size: usize) -> Vec<u8> {
    let factor = width.max(height).div_ceil(size);
    let (w, h) = (width.div_ceil(factor), height.div_ceil(factor));
    let mut out = format!("P6\n{w} {h}\n255\n").into_bytes();
    for ty in 0..h {
        for tx in 0..w {
            let mut sum = [0u32; 3];
            let mut n = 0;
            for y in ty * factor..((ty + 1) * factor).min(height) {
                for x in tx * factor..((tx + 1) * factor).min(width) {
                    for c in 0..3 {
                        sum[c] += u32::from(pixels[(y * width + x) * 3 + c]);
                    }
                    n += 1;
                }
            }
            out.extend(sum.iter().map(|s| ((s + n / 2) / n) as u8));
        }
    }
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

#[test]
fn photo_upload_makes_a_thumbnail_a_row_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let manifest = repo("examples/storage/photos.toml");
    let up = Up::start(&home.join("data"), &["--app", manifest.to_str().unwrap()]);
    aws_ok(&up, home, &["s3", "mb", "s3://uploads"]);
    aws_ok(&up, home, &["s3", "mb", "s3://thumbnails"]);

    let (file, pixels) = photo(200, 120);
    let local = home.join("photo.ppm");
    std::fs::write(&local, &file).unwrap();
    // Not a .ppm: the trigger's suffix filter ignores it.
    std::fs::write(home.join("notes.txt"), b"not a photo").unwrap();
    aws_ok(
        &up,
        home,
        &[
            "s3",
            "cp",
            home.join("notes.txt").to_str().unwrap(),
            "s3://uploads/notes.txt",
        ],
    );
    aws_ok(
        &up,
        home,
        &["s3", "cp", local.to_str().unwrap(), "s3://uploads/"],
    );

    let thumb = eventually("the thumbnail", || {
        let out = aws(&up, home, &["s3", "cp", "s3://thumbnails/photo.ppm", "-"]);
        out.status.success().then_some(out.stdout)
    });
    assert!(
        thumb == expected_thumbnail(&pixels, 200, 120, 64),
        "the thumbnail's bytes differ from a 4x box filter of the photo"
    );
    assert!(thumb.starts_with(b"P6\n50 30\n255\n"));

    let row = up.cli_json(&["kv", "get", "photos", "photo.ppm"]);
    assert_eq!(row["width"], 200, "{row}");
    assert_eq!(row["height"], 120);
    assert_eq!(row["size"], file.len());
    assert_eq!(row["sha256"], sha256_hex(&file));
    assert_eq!(row["thumbnail"]["bucket"], "thumbnails");
    assert_eq!(row["thumbnail"]["size"], thumb.len());

    let summaries = eventually("the summary row", || {
        let page = up.cli_json(&["kv", "ls", "photo_summaries"]);
        let items = page["items"].as_array().cloned().unwrap_or_default();
        (!items.is_empty()).then_some(items)
    });
    assert_eq!(summaries.len(), 1);
    let key = summaries[0]["key"].as_str().unwrap();
    let summary = up.cli_json(&["kv", "get", "photo_summaries", key]);
    assert_eq!(summary["photo"], "photo.ppm");
    assert_eq!(summary["pixels"], 200 * 120);
    assert!(
        summary["text"]
            .as_str()
            .unwrap()
            .contains("photo.ppm is 200x120"),
        "{summary}"
    );

    // A broken photo fails loudly (422, its reason logged) and writes nothing.
    std::fs::write(home.join("bad.ppm"), b"P6\n10 10\n255\nshort").unwrap();
    aws_ok(
        &up,
        home,
        &[
            "s3",
            "cp",
            home.join("bad.ppm").to_str().unwrap(),
            "s3://uploads/bad.ppm",
        ],
    );
    let failed = eventually("the failed invocation", || {
        let page = up.cli_json(&["invocations", "thumbnail"]);
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["status"] == 422)
            .cloned()
    });
    assert_eq!(failed["trigger"], "bucket");
    let logs = up.cli_ok(&["logs", "thumbnail"]);
    assert!(
        logs.contains("bad.ppm: the PPM needs 300 bytes of pixels"),
        "{logs}"
    );
    assert!(!aws(
        &up,
        home,
        &[
            "s3api",
            "head-object",
            "--bucket",
            "thumbnails",
            "--key",
            "bad.ppm"
        ]
    )
    .status
    .success());
    // notes.txt never reached the function (it would have failed, naming it), and the
    // good photo was handled once.
    assert!(!logs.contains("notes.txt"), "{logs}");
    assert_eq!(logs.matches("made 1 thumbnail(s)").count(), 1, "{logs}");
}

#[test]
fn feedback_form_stores_valid_posts_and_refuses_invalid_ones() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = repo("examples/storage/feedback.toml");
    let up = Up::start(
        &dir.path().join("data"),
        &["--app", manifest.to_str().unwrap()],
    );
    let url = format!("{}/feedback", up.url);
    let page = up.curl(&[&url]);
    assert!(page.contains("<form method=\"post\">"), "{page}");

    let answer = up.curl(&[
        "-w",
        "\n%{http_code}",
        "--data-urlencode",
        "name=Ann Example",
        "--data-urlencode",
        "email=ann@example.com",
        "--data-urlencode",
        "message=Fast & friendly, thanks!",
        "--data-urlencode",
        "rating=5",
        &url,
    ]);
    let (body, status) = answer.rsplit_once('\n').unwrap();
    assert_eq!(status, "201", "{body}");
    let id = serde_json::from_str::<serde_json::Value>(body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let row = up.cli_json(&["kv", "get", "feedback", &id]);
    assert_eq!(row["name"], "Ann Example");
    assert_eq!(row["email"], "ann@example.com");
    assert_eq!(row["message"], "Fast & friendly, thanks!");
    assert_eq!(row["rating"], "5");

    for (form, field) in [
        (
            vec!["name=Bob", "email=not-an-address", "message=hi"],
            "email",
        ),
        (
            vec!["name=Bob", "email=bob@example.com", "message="],
            "message",
        ),
        (vec!["email=bob@example.com", "message=hi"], "name"),
        (
            vec![
                "name=Bob",
                "email=bob@example.com",
                "message=hi",
                "rating=9",
            ],
            "rating",
        ),
    ] {
        let mut args = vec!["-w", "\n%{http_code}"];
        for f in &form {
            args.extend(["--data-urlencode", f]);
        }
        args.push(&url);
        let answer = up.curl(&args);
        let (body, status) = answer.rsplit_once('\n').unwrap();
        assert_eq!(status, "400", "{form:?}: {body}");
        let errors: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(errors["errors"][field].is_string(), "{form:?}: {body}");
    }
    let answer = up.curl(&[
        "-w",
        "\n%{http_code}",
        "-H",
        "content-type: application/json",
        "-d",
        "{}",
        &url,
    ]);
    assert!(answer.ends_with("\n400"), "{answer}");
    let all = up.cli_json(&["kv", "ls", "feedback"]);
    assert_eq!(
        all["items"].as_array().unwrap().len(),
        1,
        "only the valid post is stored: {all}"
    );
}

/// Sends the headers and 8 MiB of a 64 MiB presigned PUT, says "sent", then waits.
const HALF_UPLOAD: &str = r#"
import boto3, configparser, socket, sys, time
from botocore.config import Config
from urllib.parse import urlparse
keys = configparser.ConfigParser(); keys.read(sys.argv[2])
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
    aws_access_key_id=keys["default"]["aws_access_key_id"],
    aws_secret_access_key=keys["default"]["aws_secret_access_key"],
    config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
url = urlparse(s3.generate_presigned_url("put_object", Params={"Bucket": "crash", "Key": "big.bin"}, ExpiresIn=60))
sock = socket.create_connection((url.hostname, url.port))
sock.sendall(f"PUT {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Length: {64 << 20}\r\n\r\n".encode())
sock.sendall(b"x" * (8 << 20))
print("sent", flush=True)
time.sleep(60)
"#;

#[test]
fn a_crash_mid_upload_leaves_nothing_visible() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let data = home.join("data");
    let up = Up::start(&data, &[]);
    aws_ok(&up, home, &["s3", "mb", "s3://crash"]);
    let mut client = Command::new("python3")
        .args(["-c", HALF_UPLOAD, &up.s3])
        .arg(data.join("s3-credentials"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(client.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "sent");
    std::thread::sleep(Duration::from_millis(300));
    // Part of the body is on disk in objects/tmp; the server dies without warning.
    let pid = up.child.id().to_string();
    Command::new("kill").args(["-KILL", &pid]).status().unwrap();
    let _ = client.kill();
    let _ = client.wait();
    drop(up);

    let up = Up::start(&data, &[]);
    let out = aws(
        &up,
        home,
        &[
            "s3api",
            "head-object",
            "--bucket",
            "crash",
            "--key",
            "big.bin",
        ],
    );
    assert!(!out.status.success(), "a half-written object is visible");
    let listed = aws_ok(&up, home, &["s3", "ls", "s3://crash/"]);
    assert!(listed.is_empty(), "{}", String::from_utf8_lossy(&listed));
    assert_eq!(
        std::fs::read_dir(data.join("objects/tmp")).unwrap().count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(data.join("objects/blobs"))
            .unwrap()
            .count(),
        0
    );
    // And the store works on.
    std::fs::write(home.join("small"), b"after the crash").unwrap();
    aws_ok(
        &up,
        home,
        &[
            "s3",
            "cp",
            home.join("small").to_str().unwrap(),
            "s3://crash/small",
        ],
    );
    assert_eq!(
        aws_ok(&up, home, &["s3", "cp", "s3://crash/small", "-"]),
        b"after the crash"
    );
}

#[test]
fn cli_manages_buckets_and_objects() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let up = Up::start(&home.join("data"), &[]);
    up.cli_ok(&["bucket", "mb", "docs"]);
    let out = up.cli(&["bucket", "mb", "docs"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists already"));
    let out = up.cli(&["bucket", "mb", "Bad_Name"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid bucket name"));
    let file = home.join("report final.pdf");
    std::fs::write(&file, b"%PDF-1.7 pretend").unwrap();
    let stored = up.cli_json(&[
        "object",
        "put",
        "docs",
        "2026/report final.pdf",
        file.to_str().unwrap(),
        "--content-type",
        "application/pdf",
    ]);
    assert_eq!(stored["size"], 16);
    // The S3 API sees the same object.
    let head = aws_ok(
        &up,
        home,
        &[
            "s3api",
            "head-object",
            "--bucket",
            "docs",
            "--key",
            "2026/report final.pdf",
        ],
    );
    let head: serde_json::Value = serde_json::from_slice(&head).unwrap();
    assert_eq!(head["ContentType"], "application/pdf");
    assert_eq!(
        head["ETag"],
        format!("\"{}\"", stored["etag"].as_str().unwrap())
    );
    let listed = up.cli_ok(&["object", "ls", "docs", "--prefix", "2026/"]);
    assert!(listed.contains("2026/report final.pdf"), "{listed}");
    let got = home.join("got.pdf");
    up.cli_ok(&[
        "object",
        "get",
        "docs",
        "2026/report final.pdf",
        "-o",
        got.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&got).unwrap(), b"%PDF-1.7 pretend");
    // The JSON API speaks its own statuses: 416 for a range past the end, 409 for a
    // failed create-only write.
    let token = std::fs::read_to_string(home.join("data/admin.token")).unwrap();
    let url = format!("{}/v1/buckets/docs/objects/2026/report%20final.pdf", up.url);
    let auth = format!("Authorization: Bearer {}", token.trim());
    let status = up.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &auth,
        "-H",
        "Range: bytes=500-",
        &url,
    ]);
    assert_eq!(status, "416");
    let status = up.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &auth,
        "-H",
        "If-None-Match: *",
        "-X",
        "PUT",
        "--data-binary",
        "x",
        &url,
    ]);
    assert_eq!(status, "409");
    let out = up.cli(&["bucket", "rb", "docs"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    up.cli_ok(&["object", "rm", "docs", "2026/report final.pdf"]);
    let out = up.cli(&["object", "get", "docs", "2026/report final.pdf"]);
    assert!(!out.status.success());
    up.cli_ok(&["bucket", "rb", "docs"]);
    assert!(up.cli_json(&["bucket", "ls"])["items"]
        .as_array()
        .unwrap()
        .is_empty());
    let out = up.cli(&["object", "put", "docs", "x", file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("NoSuchBucket"));
}

#[test]
fn aws_s3_sync_round_trips_and_sees_nothing_to_do_twice() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let up = Up::start(&home.join("data"), &[]);
    let src = home.join("src");
    std::fs::create_dir_all(src.join("sub dir")).unwrap();
    for (name, text) in [
        ("a.txt", "one"),
        ("b.txt", "two"),
        ("sub dir/c d.txt", "three"),
    ] {
        std::fs::write(src.join(name), text).unwrap();
    }
    aws_ok(&up, home, &["s3", "mb", "s3://mirror"]);
    let first = aws_ok(
        &up,
        home,
        &["s3", "sync", src.to_str().unwrap(), "s3://mirror/backup"],
    );
    assert_eq!(
        String::from_utf8_lossy(&first).matches("upload:").count(),
        3
    );
    // Listing sizes and times match the files: nothing is sent again.
    let again = aws_ok(
        &up,
        home,
        &["s3", "sync", src.to_str().unwrap(), "s3://mirror/backup"],
    );
    assert!(
        !String::from_utf8_lossy(&again).contains("upload:"),
        "{}",
        String::from_utf8_lossy(&again)
    );
    std::fs::remove_file(src.join("b.txt")).unwrap();
    std::fs::write(src.join("a.txt"), "one, changed").unwrap();
    let third = aws_ok(
        &up,
        home,
        &[
            "s3",
            "sync",
            "--delete",
            src.to_str().unwrap(),
            "s3://mirror/backup",
        ],
    );
    let third = String::from_utf8_lossy(&third);
    assert!(
        third.contains("delete: s3://mirror/backup/b.txt") && third.contains("upload:"),
        "{third}"
    );
    let dst = home.join("dst");
    aws_ok(
        &up,
        home,
        &["s3", "sync", "s3://mirror/backup", dst.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(dst.join("a.txt")).unwrap(),
        "one, changed"
    );
    assert_eq!(
        std::fs::read_to_string(dst.join("sub dir/c d.txt")).unwrap(),
        "three"
    );
    assert!(!dst.join("b.txt").exists());
}
