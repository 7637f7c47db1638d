//! The built `pm-events` binary, run as a user would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::process::{Command, Output};

fn pm(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pm-events"));
    c.args(args).current_dir(dir).env_remove("RUST_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn log_lines(dir: &std::path::Path) -> Vec<Value> {
    let events = dir.join("logs/events");
    let mut out = Vec::new();
    for f in std::fs::read_dir(&events).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        out.extend(
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap()),
        );
    }
    out
}

/// Each run without a chosen log directory has one of its own, so its report
/// counts its own events only; the invalid payloads it publishes on purpose
/// print no error lines.
#[test]
fn each_demo_run_is_self_contained_and_its_output_unambiguous() {
    let dir = tempfile::tempdir().unwrap();
    let mut reports = Vec::new();
    for _ in 0..2 {
        let out = pm(dir.path(), &["demo"], &[]);
        assert!(out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("ERROR") && !stderr.contains("WARN"),
            "{stderr}"
        );
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let dashboard = stdout
            .lines()
            .find(|l| l.trim_start().starts_with("dashboard"))
            .unwrap()
            .split(" (")
            .next()
            .unwrap()
            .to_string();
        assert!(
            dashboard.contains("3 open alerts") && dashboard.contains("escalations 2"),
            "{dashboard}"
        );
        assert!(
            !stdout.contains("escalated_to critical mitigation [block_ip"),
            "{stdout}"
        );
        reports.push(dashboard);
    }
    assert_eq!(reports[0], reports[1]);
    let runs = std::fs::read_dir(dir.path().join("logs/demo"))
        .unwrap()
        .count();
    assert_eq!(runs, 2, "one log directory per run");
}

#[test]
fn demo_runs_the_examples_and_logs_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = pm(dir.path(), &["--log-dir", "logs", "demo"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Deployment success: api-gateway 1.2.3"),
        "{stdout}"
    );
    // Every webhook arrived with valid signatures, including the one that failed twice first.
    assert!(
        stdout.contains("webhooks           11 delivered (11 with every signature verified"),
        "{stdout}"
    );
    assert!(
        stdout.contains("/webhooks/deploy   deployment   attempt 3  answered 200"),
        "{stdout}"
    );
    // Each handler worked on real files and refused its invalid payload.
    for needle in [
        "created notes.txt size 11",
        "-> content_changed",
        "-> removed",
        "daily_report_20250115 (pdf)",
        "weekly_report_2025w03 (json)",
        "monthly_report_202501 (html)",
        "not-an-address=invalid_address",
        "block_ip=executed, notify_owner=skipped",
        "fin_alert_042 low score 0.9 escalated_to medium",
        "data.change_type: required field is missing",
        "does not start with %PDF-",
        "data.severity: expected one of low, medium, high, critical, got \"urgent\"",
        "3 open alerts",
    ] {
        assert!(stdout.contains(needle), "{needle} missing from:\n{stdout}");
    }
    let lines = log_lines(dir.path());
    assert_eq!(
        lines.len(),
        20,
        "18 published + 2 escalations (the critical alert is at the top already)"
    );
    let types: Vec<&str> = lines.iter().map(|v| v["type"].as_str().unwrap()).collect();
    for t in [
        "file_change",
        "report_ready",
        "risk_alert",
        "risk_escalated",
        "deployment",
        "custom_event",
    ] {
        assert!(types.contains(&t), "{t} missing");
    }
    let emls = std::fs::read_dir(dir.path().join("logs/outbox"))
        .unwrap()
        .count();
    assert_eq!(emls, 6, "two valid recipients × three reports");
}

#[test]
fn publish_prints_the_id_and_logs_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("elsewhere");
    let out = pm(
        dir.path(),
        &[
            "publish",
            "deployment",
            r#"{"service":"api","status":"success"}"#,
        ],
        &[("PM_LOG_DIR", logs.to_str().unwrap())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let text: String = std::fs::read_dir(logs.join("events"))
        .unwrap()
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .collect();
    let v: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["event_id"], id);
    assert_eq!(v["data"]["service"], "api");
    // --log-dir wins over PM_LOG_DIR.
    let flag = dir.path().join("flag");
    let out = pm(
        dir.path(),
        &["--log-dir", flag.to_str().unwrap(), "publish", "x", "{}"],
        &[("PM_LOG_DIR", logs.to_str().unwrap())],
    );
    assert!(out.status.success());
    assert!(flag.join("events").exists());
}

#[test]
fn bad_arguments_exit_2_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (vec!["publish", "x", "{not json"], "invalid JSON"),
        (vec!["publish", "x", "[1,2]"], "must be a JSON object"),
        (vec!["publish", "a..b", "{}"], "invalid type"),
        (vec!["publish", "x"], "JSON"),
        (vec!["no-such-command"], "no-such-command"),
    ] {
        let out = pm(dir.path(), &args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert!(
        !dir.path().join("logs").exists(),
        "nothing invalid is logged"
    );
}

#[test]
fn invalid_configuration_stops_start_up_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for (k, v) in [
        ("PM_QUEUE_CAPACITY", "many"),
        ("PM_FSYNC", "sometimes"),
        ("PM_HANDLER_TIMEOUT_SECS", "0"),
        ("PM_BIND", "nowhere"),
    ] {
        let out = pm(dir.path(), &["demo"], &[(k, v)]);
        assert_eq!(out.status.code(), Some(2), "{k}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(k) && err.contains("expected"), "{k}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn an_unusable_log_dir_is_a_runtime_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let out = pm(
        dir.path(),
        &["publish", "x", "{}"],
        &[("PM_LOG_DIR", file.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plain-file"), "{err}");
}
