//! A real nats-server with JetStream, started on a free port in a temporary directory.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Nats {
    pub child: Child,
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts nats-server on a port of its own choosing (`-p -1`) and reads the port
/// from the ports file it writes, named after its pid: no race with another test
/// (or anything else) for a port picked beforehand.
pub async fn nats() -> Nats {
    let dir = tempfile::tempdir().unwrap();
    let bin = std::env::var("PM_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    let mut child = Command::new(&bin)
        .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
        .arg(dir.path())
        .arg("--ports_file_dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {bin} ({e}): run the tests with scripts/test.sh, which installs it"
            )
        });
    let suffix = format!("_{}.ports", child.id());
    let ports_file = || {
        std::fs::read_dir(dir.path())
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(&suffix))
            .map(|e| e.path())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let url = loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{bin} exited at start: {status}");
        }
        let found = ports_file()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["nats"][0].as_str().map(str::to_string));
        if let Some(url) = found {
            break url;
        }
        assert!(std::time::Instant::now() < deadline, "{bin} did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Nats { child, url, dir }
}
