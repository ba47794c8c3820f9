//! Real NATS servers for tests: `nats-server -js` processes on free ports with their own
//! storage, stopped when dropped. Used by the store's conformance tests and by the
//! cluster tests (which also need a three-server NATS cluster).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NATS_SERVER: &str = "/usr/sbin/nats-server";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_listening(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "nats-server did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One `nats-server -js`, possibly a member of a cluster.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
    store: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl NatsServer {
    /// A lone server with JetStream, its storage in a temporary directory.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = dir.path().to_owned();
        let mut server = Self::spawn(free_port(), Vec::new(), &store);
        server._dir = Some(dir);
        server
    }

    fn spawn(port: u16, args: Vec<String>, store: &Path) -> Self {
        assert!(
            Path::new(NATS_SERVER).exists(),
            "nats-server is missing: scripts/test installs Debian's nats-server"
        );
        let mut server = Self {
            child: None,
            port,
            args,
            store: store.to_owned(),
            _dir: None,
        };
        server.resume();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL): its clients lose their connection at once.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same storage.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "nats-server is running already");
        let child = Command::new(NATS_SERVER)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        wait_listening(self.port);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Three NATS servers routed into one cluster, JetStream on each: R3 streams survive
/// losing any one of them.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_urls = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let servers = routes
            .iter()
            .enumerate()
            .map(|(i, route)| {
                let store = dir.path().join(format!("n{i}"));
                std::fs::create_dir_all(&store).expect("a store directory");
                NatsServer::spawn(
                    free_port(),
                    vec![
                        "--name".into(),
                        format!("n{i}"),
                        "--cluster_name".into(),
                        "cirrus-test".into(),
                        "--cluster".into(),
                        format!("nats://127.0.0.1:{route}"),
                        "--routes".into(),
                        route_urls.clone(),
                    ],
                    &store,
                )
            })
            .collect();
        Self { servers, _dir: dir }
    }

    /// Every server's URL, comma-separated, as `--cluster` takes them.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A successful invocation record of function `f`, numbered `i` (request id `r{i}`,
/// started `i` seconds after a fixed moment).
pub fn invocation_record(i: usize) -> cirrus_api::InvocationRecord {
    serde_json::from_value(serde_json::json!({
        "request_id": format!("r{i}"), "function": "f", "version": 1, "trigger": "http",
        "attempt": 1, "parent_request_id": null,
        "started_at": crate::clock::rfc3339(1_700_000_000_000 + i as u64 * 1000),
        "duration_ms": 1.5, "billed_ms": 2, "init_ms": null, "memory_mb": 128,
        "peak_memory_bytes": 65536, "cpu_ms": 0.25, "request_bytes": 10,
        "response_bytes": 20, "cold_start": false, "trace_id": "t", "span_id": "s",
        "parent_span_id": null, "outcome": "success", "status": 200,
        "error_code": null, "error_message": null
    }))
    .expect("a valid invocation record")
}
