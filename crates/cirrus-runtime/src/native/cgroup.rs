//! One cgroup per native environment: its memory cap, its process cap, and the figures
//! each invocation is metered by. Works on cgroup v1 (a directory per controller:
//! memory, pids, cpuacct) and on cgroup v2 (one directory, under the server's own
//! cgroup, which must have the memory and pids controllers delegated to it). v1 is used
//! where its controllers are mounted, because a controller bound to v1 is missing from
//! v2 (this is how hybrid hosts are).

use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The controllers Cirrus needs, under the v1 hierarchy.
const V1_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpuacct"];
const ROOT: &str = "/sys/fs/cgroup";
/// v2 mount points: the whole tree (unified hosts) or beside v1 (hybrid hosts).
const V2_MOUNTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];
/// The v2 controllers Cirrus needs (CPU time is in every v2 cgroup's `cpu.stat`).
const V2_CONTROLLERS: [&str; 2] = ["memory", "pids"];

/// Processes one environment may run at once: a fork bomb stops here.
pub const MAX_PIDS: u32 = 128;

/// Where environments' cgroups go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hierarchy {
    /// `/sys/fs/cgroup/<controller>/cirrus/<id>`.
    V1,
    /// `<dir>/<id>`, `dir` a cgroup (below the server's own) with memory and pids
    /// enabled for its children.
    V2(PathBuf),
}

static HIERARCHY: OnceLock<Result<Hierarchy, String>> = OnceLock::new();

fn hierarchy() -> Result<&'static Hierarchy, String> {
    HIERARCHY.get_or_init(detect).as_ref().map_err(Clone::clone)
}

fn detect() -> Result<Hierarchy, String> {
    let Some(v1) = v1_missing() else {
        return Ok(Hierarchy::V1);
    };
    v2_parent().map(Hierarchy::V2).map_err(|v2| {
        format!("neither cgroup v1 ({v1}) nor cgroup v2 ({v2}) can confine native runtimes")
    })
}

/// What the v1 hierarchy lacks, or `None` when it can be used.
fn v1_missing() -> Option<String> {
    for controller in V1_CONTROLLERS {
        let base = Path::new(ROOT).join(controller);
        if !base.join("cgroup.procs").exists() {
            return Some(format!(
                "the {controller} controller is not mounted at {}",
                base.display()
            ));
        }
        let ours = base.join("cirrus");
        if let Err(e) = std::fs::create_dir_all(&ours) {
            return Some(format!("cannot create {}: {e}", ours.display()));
        }
        remove_orphans(&ours);
    }
    None
}

/// The process's own v2 cgroup, from a `/proc/self/cgroup` text (its `0::` line).
fn own_v2_cgroup(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
}

/// The controllers a v2 cgroup's `cgroup.controllers` lists that Cirrus lacks.
fn v2_lacking(controllers: &str) -> Vec<&'static str> {
    let present: Vec<&str> = controllers.split_whitespace().collect();
    V2_CONTROLLERS
        .into_iter()
        .filter(|c| !present.contains(c))
        .collect()
}

/// Prepares `<own cgroup>/cirrus` for environments. v2 lets only leaves hold processes
/// once controllers are enabled for children, so the server's processes move into a
/// leaf of their own (`cirrus-server`) first, unless the server is at the root.
fn v2_parent() -> Result<PathBuf, String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let own = own_v2_cgroup(&text).ok_or("this process is in no v2 cgroup")?;
    let mount = V2_MOUNTS
        .iter()
        .map(Path::new)
        .find(|m| m.join("cgroup.controllers").exists())
        .ok_or("no v2 hierarchy is mounted")?;
    let own_dir = mount.join(own.trim_start_matches('/'));
    let controllers = std::fs::read_to_string(own_dir.join("cgroup.controllers"))
        .map_err(|e| format!("{}: {e}", own_dir.display()))?;
    let lacking = v2_lacking(&controllers);
    if !lacking.is_empty() {
        return Err(format!(
            "the {} controller(s) are not delegated to {} (run the server with Delegate=yes, or as root on a cgroup v2 host)",
            lacking.join(" and "),
            own_dir.display()
        ));
    }
    let write = |dir: &Path, file: &str, value: &str| {
        std::fs::write(dir.join(file), value)
            .map_err(|e| format!("writing {value:?} to {}: {e}", dir.join(file).display()))
    };
    if own != "/" {
        let leaf = own_dir.join("cirrus-server");
        std::fs::create_dir_all(&leaf).map_err(|e| format!("{}: {e}", leaf.display()))?;
        let procs = std::fs::read_to_string(own_dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines() {
            // A process that ended meanwhile cannot move; that is fine.
            let _ = write(&leaf, "cgroup.procs", pid.trim());
        }
    }
    let enable = "+memory +pids";
    write(&own_dir, "cgroup.subtree_control", enable)?;
    let ours = own_dir.join("cirrus");
    std::fs::create_dir_all(&ours).map_err(|e| format!("{}: {e}", ours.display()))?;
    write(&ours, "cgroup.subtree_control", enable)?;
    remove_orphans(&ours);
    Ok(ours)
}

/// Whether this host lets Cirrus make cgroups it can confine native code in; the error
/// says what is missing.
pub fn check() -> Result<(), String> {
    hierarchy().map(|_| ())
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
        if !server.is_empty()
            && server.bytes().all(|b| b.is_ascii_digit())
            && !Path::new("/proc").join(&server).exists()
        {
            // Fails, harmlessly, while processes are still in it.
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// An environment's cgroups; dropping it kills what is left in them and removes them.
pub struct Cgroup {
    hierarchy: &'static Hierarchy,
    /// v1: one per controller, in [`V1_CONTROLLERS`] order; v2: the one.
    dirs: Vec<PathBuf>,
    /// v2's `memory.peak`, kept open: a write resets the peak this descriptor reads.
    peak: Option<std::fs::File>,
}

impl Cgroup {
    pub fn create(id: &str, memory_bytes: u64) -> std::io::Result<Self> {
        let hierarchy = hierarchy().map_err(std::io::Error::other)?;
        let dirs: Vec<PathBuf> = match hierarchy {
            Hierarchy::V1 => V1_CONTROLLERS
                .iter()
                .map(|c| Path::new(ROOT).join(c).join("cirrus").join(id))
                .collect(),
            Hierarchy::V2(parent) => vec![parent.join(id)],
        };
        for dir in &dirs {
            std::fs::create_dir_all(dir)?;
        }
        let mut cgroup = Self {
            hierarchy,
            dirs,
            peak: None,
        };
        let memory = memory_bytes.to_string();
        match hierarchy {
            Hierarchy::V1 => {
                cgroup.write("memory", "memory.limit_in_bytes", &memory)?;
                // Swap would let an environment exceed its memory quietly; not every
                // kernel accounts it, so this one may be absent.
                let _ = cgroup.write("memory", "memory.memsw.limit_in_bytes", &memory);
            }
            Hierarchy::V2(_) => {
                cgroup.write("memory", "memory.max", &memory)?;
                let _ = cgroup.write("memory", "memory.swap.max", "0");
                cgroup.peak = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(cgroup.dirs[0].join("memory.peak"))
                    .ok();
            }
        }
        cgroup.write("pids", "pids.max", &MAX_PIDS.to_string())?;
        Ok(cgroup)
    }

    fn dir(&self, controller: &str) -> &Path {
        let index = match self.hierarchy {
            Hierarchy::V1 => V1_CONTROLLERS
                .iter()
                .position(|c| *c == controller)
                .unwrap_or(0),
            Hierarchy::V2(_) => 0,
        };
        &self.dirs[index]
    }

    fn write(&self, controller: &str, file: &str, value: &str) -> std::io::Result<()> {
        std::fs::write(self.dir(controller).join(file), value)
    }

    fn read(&self, controller: &str, file: &str) -> String {
        std::fs::read_to_string(self.dir(controller).join(file)).unwrap_or_default()
    }

    fn read_u64(&self, controller: &str, file: &str) -> u64 {
        self.read(controller, file).trim().parse().unwrap_or(0)
    }

    /// The `cgroup.procs` files a process writes its pid to in order to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Starts a new peak-memory reading.
    pub fn reset_peak(&mut self) {
        match self.hierarchy {
            Hierarchy::V1 => {
                let _ = self.write("memory", "memory.max_usage_in_bytes", "0");
            }
            // Kernels before 6.12 cannot reset it: the peak is then the environment's.
            Hierarchy::V2(_) => {
                if let Some(peak) = &mut self.peak {
                    let _ = peak.write_all(b"reset");
                }
            }
        }
    }

    pub fn peak_memory(&mut self) -> u64 {
        match self.hierarchy {
            Hierarchy::V1 => self.read_u64("memory", "memory.max_usage_in_bytes"),
            Hierarchy::V2(_) => {
                let Some(peak) = &mut self.peak else {
                    return self.memory();
                };
                let mut text = String::new();
                let _ = peak.rewind();
                let _ = peak.read_to_string(&mut text);
                text.trim().parse().unwrap_or(0)
            }
        }
    }

    pub fn memory(&self) -> u64 {
        match self.hierarchy {
            Hierarchy::V1 => self.read_u64("memory", "memory.usage_in_bytes"),
            Hierarchy::V2(_) => self.read_u64("memory", "memory.current"),
        }
    }

    /// CPU time of every process in it, ever.
    pub fn cpu_ns(&self) -> u64 {
        match self.hierarchy {
            Hierarchy::V1 => self.read_u64("cpuacct", "cpuacct.usage"),
            Hierarchy::V2(_) => {
                flat_keyed(&self.read("cpu", "cpu.stat"), "usage_usec").saturating_mul(1000)
            }
        }
    }

    /// Whether the kernel killed a process in it for memory.
    pub fn oom_killed(&self) -> bool {
        match self.hierarchy {
            Hierarchy::V1 => {
                let killed = flat_keyed(&self.read("memory", "memory.oom_control"), "oom_kill");
                killed > 0 || self.read_u64("memory", "memory.failcnt") > 0 && self.memory() == 0
            }
            Hierarchy::V2(_) => flat_keyed(&self.read("memory", "memory.events"), "oom_kill") > 0,
        }
    }

    fn kill_all(&self) {
        // v2 kills the whole tree at once where the kernel has `cgroup.kill` (5.14).
        if let Hierarchy::V2(_) = self.hierarchy {
            if self.write("pids", "cgroup.kill", "1").is_ok() {
                return;
            }
        }
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

/// The value of `key` in a flat-keyed cgroup file (`key value` lines), or 0.
fn flat_keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            let (k, v) = line.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.kill_all();
        self.peak = None;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_files_are_read_by_key() {
        let stat = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n";
        assert_eq!(flat_keyed(stat, "usage_usec"), 1500);
        assert_eq!(flat_keyed(stat, "system_usec"), 500);
        assert_eq!(flat_keyed(stat, "nr_throttled"), 0);
        let events = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(flat_keyed(events, "oom_kill"), 1);
        assert_eq!(flat_keyed(events, "oom"), 1);
    }

    #[test]
    fn the_servers_own_v2_cgroup_is_its_0_line() {
        let hybrid =
            "12:memory:/user.slice\n1:name=systemd:/user.slice\n0::/user.slice/session-1.scope\n";
        assert_eq!(own_v2_cgroup(hybrid), Some("/user.slice/session-1.scope"));
        assert_eq!(own_v2_cgroup("0::/\n"), Some("/"));
        assert_eq!(own_v2_cgroup("4:pids:/\n3:memory:/\n"), None);
    }

    #[test]
    fn a_v2_cgroup_without_memory_and_pids_cannot_confine() {
        assert!(v2_lacking("cpuset cpu io memory hugetlb pids rdma misc").is_empty());
        assert_eq!(v2_lacking("hugetlb"), vec!["memory", "pids"]);
        assert_eq!(v2_lacking("cpu memory"), vec!["pids"]);
    }

    #[test]
    fn this_host_has_a_hierarchy_that_confines_or_says_why_not() {
        match hierarchy() {
            Ok(Hierarchy::V1) => {
                assert!(Path::new("/sys/fs/cgroup/memory/cirrus").is_dir());
            }
            Ok(Hierarchy::V2(parent)) => {
                let control = std::fs::read_to_string(parent.join("cgroup.subtree_control"))
                    .unwrap_or_default();
                assert!(v2_lacking(&control).is_empty(), "{control}");
            }
            Err(why) => assert!(why.contains("cgroup"), "{why}"),
        }
    }
}
