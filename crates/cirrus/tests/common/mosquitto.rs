//! A mosquitto broker of a test's own, for the MQTT trigger tests.

use super::{free_port, wait_listening};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A mosquitto broker on a free port, killed when dropped. Its persistence file lives
/// in `dir`, so a restart keeps the sessions (and their queued messages).
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Mosquitto {
        Self::start_on(dir, free_port())
    }

    pub fn start_on(dir: &Path, port: u16) -> Mosquitto {
        assert!(
            Path::new("/usr/sbin/mosquitto").exists(),
            "mosquitto is missing: scripts/test installs Debian's mosquitto and mosquitto-clients"
        );
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nautosave_interval 1\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        wait_listening(port, "mosquitto");
        Mosquitto {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Publishes one message at QoS 1 (`extra`: more mosquitto_pub flags).
    pub fn publish(&self, topic: &str, message: &[u8], extra: &[&str]) {
        let file = self.dir.join("message");
        std::fs::write(&file, message).unwrap();
        let out = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q", "1"])
            .args(["-t", topic, "-f"])
            .arg(&file)
            .args(extra)
            .output()
            .expect("mosquitto_pub runs (Debian's mosquitto-clients)");
        assert!(
            out.status.success(),
            "mosquitto_pub: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the broker the way a crash would not: cleanly, so it saves its sessions.
    pub fn stop(mut self) -> (PathBuf, u16) {
        terminate(&self.child);
        let _ = self.child.wait();
        (self.dir.clone(), self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn terminate(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}
