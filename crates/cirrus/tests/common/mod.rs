//! What the end-to-end test binaries share: the real `cirrus up` on port 0 and the
//! clients that drive it.

#![allow(dead_code)] // each test binary uses its own part

pub mod browser;
pub mod mosquitto;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_cirrus");

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// A `cirrus up` process, killed when dropped.
pub struct Up {
    pub child: Child,
    pub url: String,
    /// The S3 API's address.
    pub s3: String,
    /// The dashboard's URL (`…/ui`, on its own listener).
    pub dashboard: String,
    pub data_dir: PathBuf,
    pub stderr: mpsc::Receiver<String>,
}

impl Up {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Up {
        Self::start_with(Command::new(BIN), data_dir, extra)
    }

    /// Starts the server through `command`, which runs `cirrus` (e.g. `prlimit …
    /// cirrus` to start it under other resource limits).
    pub fn start_with(mut command: Command, data_dir: &Path, extra: &[&str]) -> Up {
        let mut child = command
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--s3-listen",
                "127.0.0.1:0",
                "--dashboard-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn,cirrus_server=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cirrus up starts");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        let mut s3 = String::new();
        let mut dashboard = String::new();
        let url = loop {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(line) => match line.strip_prefix("listening on ") {
                    Some(url) => break url.to_owned(),
                    None => {
                        if let Some(rest) = line.strip_prefix("S3 API on ") {
                            s3 = rest.split_whitespace().next().unwrap_or("").to_owned();
                        }
                        if let Some(rest) = line.strip_prefix("dashboard on ") {
                            dashboard = rest.trim().to_owned();
                        }
                        seen.push(line)
                    }
                },
                Err(_) => panic!("server did not start; stderr so far: {seen:#?}"),
            }
        };
        Up {
            child,
            url,
            s3,
            dashboard,
            data_dir: data_dir.to_owned(),
            stderr: rx,
        }
    }

    /// Runs the CLI against this server, finding it through the data dir alone.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("CIRRUS_DATA_DIR", &self.data_dir)
            .env_remove("CIRRUS_URL")
            .env_remove("CIRRUS_TOKEN")
            .output()
            .expect("cli runs")
    }

    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "cirrus {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.cli_ok(&all)).expect("--json output is JSON")
    }

    /// `cirrus secret set NAME` with `value` on stdin; what it printed.
    pub fn set_secret(&self, name: &str, value: &str) -> String {
        use std::io::Write as _;
        let mut child = Command::new(BIN)
            .args(["secret", "set", name])
            .env("CIRRUS_DATA_DIR", &self.data_dir)
            .env_remove("CIRRUS_URL")
            .env_remove("CIRRUS_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cli runs");
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(value.as_bytes())
                .expect("the value is written");
        }
        let out = child.wait_with_output().expect("cli runs");
        assert!(
            out.status.success(),
            "secret set: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The admin token, as the server wrote it into its data dir.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .expect("the server wrote its admin token")
            .trim()
            .to_owned()
    }

    /// The `scheduled_time` of every schedule event a `fixtures/log_input.wat` function
    /// logged (its logs hold each event's body).
    pub fn scheduled_times(&self, function: &str) -> Vec<String> {
        let logs = self.cli_ok(&["--json", "logs", function, "--limit", "1000"]);
        logs.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|l| {
                // The body has no newline of its own: the guest's closing line follows it.
                let line = l["line"].as_str()?;
                serde_json::from_str::<serde_json::Value>(&line[..=line.rfind('}')?]).ok()
            })
            .filter_map(|event| event["scheduled_time"].as_str().map(str::to_owned))
            .collect()
    }

    pub fn curl(&self, args: &[&str]) -> String {
        let out = Command::new("curl")
            .args(["-sS"])
            .args(args)
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP request a test server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request read off a test server's connection (the body by
/// `content-length`).
pub fn read_request(reader: &mut std::io::BufReader<std::net::TcpStream>) -> Option<Received> {
    use std::io::Read as _;
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.trim_end().split_once(':') {
            headers.push((name.trim().to_lowercase(), value.trim().to_owned()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        path,
        headers,
        body,
    })
}

/// A port nothing listens on (now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until something listens on `port` (a service a test started).
pub fn wait_listening(port: u16, what: &str) {
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what} did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A deployment package holding one file `name` with `source`, zipped by Python's own
/// zip tool (a real client of the format), written into `dir` as `STEM.zip`.
pub fn package(dir: &Path, name: &str, source: &[u8]) -> PathBuf {
    let code = dir.join(format!("{name}.src"));
    std::fs::create_dir_all(&code).expect("a package folder");
    std::fs::write(code.join(name), source).expect("the package's file");
    let stem = Path::new(name).file_stem().unwrap_or_default();
    let zip = dir.join(stem).with_extension("zip");
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-c"])
        .arg(&zip)
        .arg(name)
        .current_dir(&code)
        .status()
        .expect("python3 runs");
    assert!(status.success(), "zipping {name}");
    zip
}

/// Runs a Python `script` (boto3 and the like) with `args`, which must succeed; its
/// stdout, trimmed.
pub fn python(script: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// [`python`] for a script that prints JSON.
pub fn python_json(script: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> serde_json::Value {
    serde_json::from_str(&python(script, args)).expect("the script prints JSON")
}

/// `cirrus up` on ports of its own (no S3 or dashboard listener) over `data_dir`, with
/// `extra` flags, for a start that must fail: its error output.
pub fn up_refused(data_dir: &Path, extra: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let out = Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--s3-listen", "off"])
        .args(["--dashboard-listen", "off", "--data-dir"])
        .arg(data_dir)
        .args(extra.iter().map(|a| a.as_ref()))
        .output()
        .expect("cirrus runs");
    assert!(!out.status.success(), "cirrus up started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The aws CLI against a node's S3 listener: its own config in `home` (path-style), the
/// node's keys file.
pub fn aws(up: &Up, home: &Path, args: &[&str]) -> Output {
    let config = home.join("aws-config");
    if !config.exists() {
        std::fs::write(
            &config,
            "[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n",
        )
        .unwrap();
    }
    Command::new("aws")
        .args(["--endpoint-url", &up.s3])
        .args(args)
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            up.data_dir.join("s3-credentials"),
        )
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("the aws CLI runs (scripts/test installs it)")
}

/// [`aws`], which must succeed; its standard output.
pub fn aws_ok(up: &Up, home: &Path, args: &[&str]) -> Vec<u8> {
    let out = aws(up, home, args);
    assert!(
        out.status.success(),
        "aws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
