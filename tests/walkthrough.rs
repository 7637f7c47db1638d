//! The README's five-minute walkthrough, run as written against the built
//! binary: its shell blocks are taken from the README itself, with the port
//! and the receiver's directory made free ones and `watch` (which runs until
//! stopped) left out. If the README's commands stop working, this fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

/// The shell blocks of the README section `## Five minutes with it`.
fn walkthrough_blocks() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("## Five minutes with it").unwrap();
    let end = start + readme[start..].find("\n## In Rust").unwrap();
    bash_blocks(&readme[start..end])
}

/// The ```` ```bash ```` blocks of a Markdown text.
fn bash_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line) {
            (None, "```bash") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let blocks = walkthrough_blocks();
    assert!(blocks.len() >= 5, "{blocks:?}");
    let dir = tempfile::tempdir().unwrap();
    let receiver = dir.path().join("receiver");
    let port = common::free_port().to_string();
    let receiver_port = common::free_port().to_string();
    let script: String = blocks
        .join("\n")
        .lines()
        .filter(|l| !l.trim_start().starts_with("pm-events watch"))
        .map(|l| {
            l.replace(":8787", &format!(":{port}"))
                .replace(":8788", &format!(":{receiver_port}"))
                .replace("/tmp/receiver", receiver.to_str().unwrap())
                .replace(
                    "pm-events serve &",
                    &format!("pm-events serve --bind 127.0.0.1:{port} & wait_for_server {port}"),
                )
                .replace(
                    &format!("--bind 127.0.0.1:{receiver_port} &"),
                    &format!("--bind 127.0.0.1:{receiver_port} & wait_for_server {receiver_port}"),
                )
        })
        .collect::<Vec<_>>()
        .join("\n");
    // A server answers /healthz once it listens; wait for that, not a time.
    let prelude = "wait_for_server() { for _ in $(seq 1 200); do curl -s -o /dev/null 127.0.0.1:$1/healthz && return 0; sleep 0.05; done; return 1; }\n".to_string();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_pm-events")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("{prelude}{script}\nwait"))
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("RUST_LOG")
        .env_remove("PM_LOG_DIR")
        .env_remove("WEBHOOK_SIGNATURE_SECRET")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}\n{stderr}");
    for needle in [
        // publish, and the refused payload with the field named
        "data.severity: expected one of low, medium, high, critical, got 5",
        "Built-in event types",
        // tail and stats
        "sec_001: Unusual logins [ok]",
        "sec_001 escalated to critical",
        "open risks: 1",
        "\"open_alerts\"",
        // a signed webhook delivered to the receiver, which verified it
        "webhooks: 1 delivered",
        // an endpoint added while the server runs, and its deliveries
        "signing:       hmac-sha256",
        "endpoint(s) in",
        // POST /events, a signed incoming webhook, the metrics
        "{\"event_id\":",
        "pm_events_published_total{type=\"deployment\"}",
        // replay
        "replayed",
        // the page, and a risk alert resolved as its Resolve button does
        "HTTP/1.1 200 OK",
        "\"alert_id\":\"sec_001\"",
        "\"resolved\":true",
    ] {
        assert!(all.contains(needle), "{needle:?} missing from:\n{all}");
    }
    // The receiver logged what it was sent and what was posted to it.
    let received = pm_events::journal::read_day(&receiver, pm_events::journal::today()).unwrap();
    assert!(received.len() >= 2, "{received:?}");
    assert!(!all.contains("panicked"), "{all}");
}

/// Every example of docs/events.md, run as written (its `/tmp` files made in a
/// temp directory, its webhook URL a local receiver's): each is accepted and
/// handled.
#[tokio::test(flavor = "multi_thread")]
async fn the_event_examples_of_the_docs_are_accepted_and_handled() {
    let rx = common::TestReceiver::start().await;
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/events.md"))
            .unwrap();
    let blocks = bash_blocks(&docs);
    assert_eq!(
        blocks.len(),
        4,
        "one example per built-in type, and one custom"
    );
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("notes.txt"), "notes").unwrap();
    std::fs::write(
        files.join("report.pdf"),
        b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
    )
    .unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_pm-events")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for block in blocks {
        let script = block
            .replace("/tmp/", &format!("{}/", files.display()))
            .replace("https://hooks.example.com/deploy", &rx.url("/deploy"));
        let (d, p) = (dir.path().to_path_buf(), path.clone());
        let out = tokio::task::spawn_blocking(move || {
            Command::new("bash")
                .arg("-c")
                .arg(&script)
                .current_dir(&d)
                .env("PATH", p)
                .env("WEBHOOK_SIGNATURE_SECRET", "docs-test-secret")
                .env_remove("RUST_LOG")
                .env_remove("PM_LOG_DIR")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{block}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let logged = common::logged(&dir.path().join("logs"));
    let ok = |file: &str| {
        common::jsonl(&dir.path().join("logs").join(file))
            .iter()
            .filter(|l| l["status"] == "ok")
            .count()
    };
    assert_eq!(ok("file_changes/file_changes.jsonl"), 1);
    assert_eq!(ok("reports/report_generations.jsonl"), 1);
    assert_eq!(ok("risk_alerts/risk_alerts.jsonl"), 1);
    assert_eq!(rx.requests("/deploy").len(), 1, "the custom type's webhook");
    assert!(logged.len() >= 4, "{logged:?}");
}
