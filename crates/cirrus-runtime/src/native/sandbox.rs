//! The sandbox a native runtime runs in: bubblewrap with every namespace unshared (user,
//! mount, PID, IPC, UTS, network, cgroup), all capabilities dropped, an unprivileged
//! user, a read-only root of the host's `/usr` and nothing else of the host: the code
//! read-only at `/var/task`, Cirrus's bootstraps at `/opt/cirrus`, a size-capped
//! `/tmp`, and the CA certificates (for HTTPS through the egress proxy). The process joins its cgroups before it becomes bubblewrap, so everything it
//! starts is confined and metered.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub const BWRAP: &str = "/usr/bin/bwrap";
/// `/tmp` inside the sandbox, as Lambda's default ephemeral storage.
const TMP_BYTES: u64 = 512 << 20;
/// The unprivileged user inside.
const UID: &str = "65534";

/// Whether bubblewrap is there to sandbox with.
pub fn check() -> Result<(), String> {
    if Path::new(BWRAP).exists() {
        Ok(())
    } else {
        Err(format!(
            "{BWRAP} is missing (Debian package bubblewrap): native runtimes need it as their sandbox"
        ))
    }
}

/// What to run, and with what.
pub struct Spec<'a> {
    pub code: &'a Path,
    pub bootstraps: &'a Path,
    /// The runtime's command line inside the sandbox.
    pub command: &'a [String],
    pub env: &'a [(String, String)],
    /// The environment's cgroup `cgroup.procs` files.
    pub cgroup_procs: &'a [PathBuf],
    /// Seccomp filters (compiled BPF) the sandbox loads.
    pub seccomp: &'a [PathBuf],
}

/// A command that joins the cgroups, then execs bubblewrap, which waits for a byte on
/// its standard input (`--block-fd 0`) before it runs the runtime, so the host can
/// set up the Runtime API inside the new network namespace first.
pub fn command(spec: &Spec<'_>) -> tokio::process::Command {
    // `$$` is the shell, which then becomes bubblewrap: joining first means no process
    // of the sandbox ever runs outside the cgroups.
    // The seccomp filters are opened as descriptors 3, 4, … for bubblewrap to load.
    let mut join = String::from("set -e; ");
    for i in 0..spec.cgroup_procs.len() {
        join.push_str(&format!("echo $$ > \"${{{}}}\"; ", i + 1));
    }
    for (j, _) in spec.seccomp.iter().enumerate() {
        let arg = spec.cgroup_procs.len() + j + 1;
        join.push_str(&format!("exec {}<\"${{{arg}}}\"; ", j + 3));
    }
    join.push_str(&format!(
        "shift {}; exec \"$@\"",
        spec.cgroup_procs.len() + spec.seccomp.len()
    ));
    let mut command = tokio::process::Command::new("/bin/sh");
    command.arg("-c").arg(join).arg("sh");
    command.args(spec.cgroup_procs).args(spec.seccomp);
    let mut args: Vec<OsString> = Vec::new();
    let mut arg = |a: &str| args.push(a.into());
    for a in [
        BWRAP,
        "--unshare-all",
        "--unshare-user",
        "--uid",
        UID,
        "--gid",
        UID,
        "--cap-drop",
        "ALL",
        "--die-with-parent",
        "--new-session",
        "--block-fd",
        "0",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/sbin",
        "/sbin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--ro-bind-try",
        "/etc/ssl",
        "/etc/ssl",
        "--ro-bind-try",
        "/etc/ca-certificates",
        "/etc/ca-certificates",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        &TMP_BYTES.to_string(),
        "--tmpfs",
        "/tmp",
        "--chdir",
        "/var/task",
        "--clearenv",
    ] {
        arg(a);
    }
    command.args(args);
    for j in 0..spec.seccomp.len() {
        command.arg("--add-seccomp-fd").arg((j + 3).to_string());
    }
    command
        .arg("--ro-bind")
        .arg(spec.code)
        .arg("/var/task")
        .arg("--ro-bind")
        .arg(spec.bootstraps)
        .arg("/opt/cirrus");
    for (name, value) in spec.env {
        command.arg("--setenv").arg(name).arg(value);
    }
    command.arg("--").args(spec.command);
    command
}

/// The first child of `pid` (bubblewrap's sandbox init), once it exists.
pub async fn child_of(pid: u32) -> std::io::Result<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    for _ in 0..500 {
        let children = tokio::fs::read_to_string(&path).await?;
        if let Some(child) = children
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
        {
            return Ok(child);
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    Err(std::io::Error::other("the sandbox did not start"))
}

/// Listeners bound inside the network namespace of `pid`: a thread of its own enters
/// that namespace, binds, and ends (a pooled thread would stay in there); the sockets
/// stay where they were made, so what the host serves on them is reachable only from
/// inside, and what the host connects to from there leaves from the host's network.
pub async fn listen_in(
    pid: u32,
    addresses: Vec<String>,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let bound = (|| {
            let namespace = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&namespace),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            addresses
                .iter()
                .map(|address| bind_when_up(address))
                .collect::<std::io::Result<Vec<_>>>()
        })();
        let _ = tx.send(bound);
    });
    rx.await.map_err(std::io::Error::other)?
}

/// Binds `address` in the current thread's network namespace. bubblewrap brings the
/// namespace's loopback up just after its init process appears, so binding can come
/// first and find no 127.0.0.1 yet (`EADDRNOTAVAIL`): that is waited out, briefly.
fn bind_when_up(address: &str) -> std::io::Result<std::net::TcpListener> {
    let mut waited = std::time::Duration::ZERO;
    loop {
        match std::net::TcpListener::bind(address) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrNotAvailable
                    && waited < std::time::Duration::from_secs(2) =>
            {
                let pause = std::time::Duration::from_micros(200);
                std::thread::sleep(pause);
                waited += pause;
            }
            bound => return bound,
        }
    }
}
