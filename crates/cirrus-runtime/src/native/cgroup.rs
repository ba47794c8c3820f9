//! One cgroup (v1: memory, pids, cpuacct) per native environment: its memory cap, its
//! process cap, and the figures each invocation is metered by.

use std::path::{Path, PathBuf};

/// The controllers Cirrus needs, under the v1 hierarchy.
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpuacct"];
const ROOT: &str = "/sys/fs/cgroup";

/// Processes one environment may run at once: a fork bomb stops here.
pub const MAX_PIDS: u32 = 128;

/// Whether this host lets Cirrus make cgroups it can confine native code in; the error
/// says what is missing.
pub fn check() -> Result<(), String> {
    for controller in CONTROLLERS {
        let base = Path::new(ROOT).join(controller);
        if !base.join("cgroup.procs").exists() {
            return Err(format!(
                "the cgroup v1 {controller} controller is not mounted at {}",
                base.display()
            ));
        }
        let ours = base.join("cirrus");
        std::fs::create_dir_all(&ours)
            .map_err(|e| format!("cannot create {}: {e}", ours.display()))?;
        remove_orphans(&ours);
    }
    Ok(())
}

/// Cgroups left by a server that is gone (killed before it could remove them): each is
/// named after its server's pid, so those of live servers are left alone.
fn remove_orphans(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let server = name
            .to_string_lossy()
            .split('-')
            .next()
            .unwrap_or("")
            .to_owned();
        if !server.is_empty() && !Path::new("/proc").join(&server).exists() {
            // Fails, harmlessly, while processes are still in it.
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// An environment's cgroups; dropping it kills what is left in them and removes them.
pub struct Cgroup {
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    pub fn create(id: &str, memory_bytes: u64) -> std::io::Result<Self> {
        let dirs: Vec<PathBuf> = CONTROLLERS
            .iter()
            .map(|c| Path::new(ROOT).join(c).join("cirrus").join(id))
            .collect();
        for dir in &dirs {
            std::fs::create_dir_all(dir)?;
        }
        let cgroup = Self { dirs };
        cgroup.write("memory", "memory.limit_in_bytes", &memory_bytes.to_string())?;
        // Swap would let an environment exceed its memory quietly; not every kernel
        // accounts it, so this one may be absent.
        let _ = cgroup.write(
            "memory",
            "memory.memsw.limit_in_bytes",
            &memory_bytes.to_string(),
        );
        cgroup.write("pids", "pids.max", &MAX_PIDS.to_string())?;
        Ok(cgroup)
    }

    fn dir(&self, controller: &str) -> &Path {
        let index = CONTROLLERS
            .iter()
            .position(|c| *c == controller)
            .unwrap_or(0);
        &self.dirs[index]
    }

    fn write(&self, controller: &str, file: &str, value: &str) -> std::io::Result<()> {
        std::fs::write(self.dir(controller).join(file), value)
    }

    fn read_u64(&self, controller: &str, file: &str) -> u64 {
        std::fs::read_to_string(self.dir(controller).join(file))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The `cgroup.procs` files a process writes its pid to in order to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Starts a new peak-memory reading.
    pub fn reset_peak(&self) {
        let _ = self.write("memory", "memory.max_usage_in_bytes", "0");
    }

    pub fn peak_memory(&self) -> u64 {
        self.read_u64("memory", "memory.max_usage_in_bytes")
    }

    pub fn memory(&self) -> u64 {
        self.read_u64("memory", "memory.usage_in_bytes")
    }

    /// CPU time of every process in it, ever.
    pub fn cpu_ns(&self) -> u64 {
        self.read_u64("cpuacct", "cpuacct.usage")
    }

    /// Whether the kernel killed a process in it for memory.
    pub fn oom_killed(&self) -> bool {
        let control = std::fs::read_to_string(self.dir("memory").join("memory.oom_control"))
            .unwrap_or_default();
        let killed = control
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        killed > 0 || self.read_u64("memory", "memory.failcnt") > 0 && self.memory() == 0
    }

    fn kill_all(&self) {
        for dir in &self.dirs {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.kill_all();
        let dirs = std::mem::take(&mut self.dirs);
        // The killed processes take a moment to leave; a cgroup with members cannot go.
        std::thread::spawn(move || {
            for _ in 0..100 {
                if dirs
                    .iter()
                    .all(|d| std::fs::remove_dir(d).is_ok() || !d.exists())
                {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            tracing::warn!("could not remove the cgroups {dirs:?}");
        });
    }
}
