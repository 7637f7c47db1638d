//! The binary's everyday commands: watch, publish -, tail, replay, stats, completions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::wait_until;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pm-events"));
    c.args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env("PM_LOG_DIR", dir.join("logs"));
    c
}

fn run(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = cmd(dir, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn events(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir.join("logs/events")) {
        for f in rd.flatten() {
            out.extend(common::jsonl(&f.path()));
        }
    }
    out
}

/// A child whose stdout lines are collected as they come.
struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn start(mut c: Command) -> Running {
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
        });
        Running { child, lines }
    }
    fn has(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }
    fn stop(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_reports_real_file_changes_and_ignores_its_own_logs() {
    let dir = tempfile::tempdir().unwrap();
    let watched = dir.path().join("watched");
    std::fs::create_dir_all(watched.join("sub")).unwrap();
    // The log directory is inside the watched tree: the watcher must not feed on it.
    let mut c = cmd(
        dir.path(),
        &[
            "watch",
            watched.to_str().unwrap(),
            "--ignore",
            "**/*.tmp",
            "--debounce",
            "100ms",
        ],
    );
    c.env("PM_LOG_DIR", watched.join("logs"));
    let w = Running::start(c);
    wait_until(T, || w.has("watching")).await;
    let f = watched.join("sub/notes.txt");
    std::fs::write(&f, "one\n").unwrap();
    wait_until(T, || w.has("created")).await;
    std::fs::write(watched.join("scratch.tmp"), "ignored").unwrap();
    let mut h = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
    h.write_all(b"two\n").unwrap();
    drop(h);
    wait_until(T, || w.has("modified")).await;
    std::fs::remove_file(&f).unwrap();
    wait_until(T, || w.has("deleted")).await;
    assert!(w.stop().success(), "SIGTERM stops the watcher cleanly");

    let log: Vec<Value> = std::fs::read_dir(watched.join("logs/events"))
        .unwrap()
        .flatten()
        .flat_map(|e| common::jsonl(&e.path()))
        .collect();
    let mut seen: Vec<(String, String)> = log
        .iter()
        .map(|e| {
            (
                e["data"]["change_type"].as_str().unwrap().to_string(),
                e["data"]["file_path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.dedup();
    let path = f.canonicalize().unwrap_or(f.clone()).display().to_string();
    let kinds: Vec<&str> = seen
        .iter()
        .filter(|(_, p)| p.ends_with("sub/notes.txt"))
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(kinds.first(), Some(&"created"), "{seen:?}");
    assert!(kinds.contains(&"modified"), "{seen:?}");
    assert_eq!(kinds.last(), Some(&"deleted"), "{seen:?}");
    assert!(
        seen.iter()
            .all(|(_, p)| !p.contains("/logs/") && !p.ends_with(".tmp")),
        "{seen:?} ({path})"
    );
    let created = log
        .iter()
        .find(|e| e["data"]["change_type"] == "created")
        .unwrap();
    assert_eq!(created["data"]["size"], 4);
    assert_eq!(
        created["data"]["checksum"], "5bbf5a52328e7439ae6e719dfe712200",
        "md5 of one\\n"
    );
}

/// `watch` of `watched` (logs under `dir/logs`, outside it), once it says it watches.
async fn watching(dir: &Path, watched: &Path, debounce: &str) -> Running {
    let mut c = cmd(
        dir,
        &["watch", watched.to_str().unwrap(), "--debounce", debounce],
    );
    c.env("PM_LOG_DIR", dir.join("logs"));
    let w = Running::start(c);
    wait_until(T, || w.has("watching")).await;
    w
}

#[tokio::test(flavor = "multi_thread")]
async fn an_editors_atomic_save_is_one_modification() {
    let dir = tempfile::tempdir().unwrap();
    let watched = dir.path().join("watched");
    std::fs::create_dir_all(&watched).unwrap();
    let f = watched.join("notes.txt");
    std::fs::write(&f, "one\n").unwrap();
    let w = watching(dir.path(), &watched, "300ms").await;
    // As vim and many editors save: write a temporary file, rename it over the original.
    let tmp = watched.join(".notes.txt.swp");
    std::fs::write(&tmp, "one\ntwo\n").unwrap();
    std::fs::rename(&tmp, &f).unwrap();
    wait_until(T, || w.has("notes.txt")).await;
    assert!(w.stop().success());
    let logged: Vec<(String, String)> = events(dir.path())
        .iter()
        .map(|e| {
            (
                e["data"]["change_type"].as_str().unwrap().to_string(),
                e["data"]["file_path"].as_str().unwrap().to_string(),
            )
        })
        .filter(|(_, p)| p.ends_with("notes.txt"))
        .collect();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0].0, "modified", "{logged:?}");
    // The handler accepted it (a "deleted" for a file that exists is refused).
    let handled = common::jsonl(&dir.path().join("logs/file_changes/file_changes.jsonl"));
    assert_eq!(handled.len(), 1, "{handled:?}");
    assert_eq!(handled[0]["status"], "ok", "{handled:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn directories_removed_or_moved_in_are_reported_file_by_file() {
    let dir = tempfile::tempdir().unwrap();
    let watched = dir.path().join("watched");
    std::fs::create_dir_all(watched.join("sub/deeper")).unwrap();
    std::fs::write(watched.join("sub/a.txt"), "a").unwrap();
    std::fs::write(watched.join("sub/deeper/b.txt"), "b").unwrap();
    std::fs::write(watched.join("kept.txt"), "k").unwrap();
    let w = watching(dir.path(), &watched, "200ms").await;
    // The watcher knows the files once its start-up walk is done; a file created
    // now is known from its event, and shows that the walk and the watch are on.
    std::fs::write(watched.join("sub/c.txt"), "c").unwrap();
    // Handled (the handler checks the file system) before the directory goes.
    let handled = dir.path().join("logs/file_changes/file_changes.jsonl");
    wait_until(T, || {
        std::fs::read_to_string(&handled)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("c.txt") && l.ends_with('}'))
    })
    .await;
    // inotify reports `rm -r` once, for the directory.
    std::fs::remove_dir_all(watched.join("sub")).unwrap();
    wait_until(T, || w.has("b.txt")).await;
    // A directory moved in: its files are created.
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(outside.join("inner")).unwrap();
    std::fs::write(outside.join("x.txt"), "x").unwrap();
    std::fs::write(outside.join("inner/y.txt"), "y").unwrap();
    std::fs::rename(&outside, watched.join("moved")).unwrap();
    wait_until(T, || w.has("y.txt") && w.has("x.txt")).await;
    assert!(w.stop().success());
    // The files of one change type, relative to the watched directory, sorted.
    let files = |change: &str| {
        let mut v: Vec<String> = events(dir.path())
            .iter()
            .filter(|e| e["data"]["change_type"] == change)
            .map(|e| {
                let p = e["data"]["file_path"].as_str().unwrap();
                p.rsplit("watched/").next().unwrap().to_string()
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        files("deleted"),
        ["sub/a.txt", "sub/c.txt", "sub/deeper/b.txt"]
    );
    let created = files("created");
    assert_eq!(created, ["moved/inner/y.txt", "moved/x.txt", "sub/c.txt"]);
    let refused: Vec<Value> = common::jsonl(&handled)
        .into_iter()
        .filter(|l| l["status"] != "ok")
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
}

#[test]
fn publish_from_stdin_reports_bad_lines_by_number_and_publishes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let input = [
        r#"{"type":"deployment","data":{"service":"a"}}"#,
        r#"{"type":"deployment","data":"#,
        r#"{"type":"file_change","data":{"file_path":"/x"}}"#,
        "",
        r#"{"type":"deployment","data":{"service":"b"},"source":"ci"}"#,
        r#"{"type":"deployment","data":[1]}"#,
    ]
    .join("\n");
    let out = run(dir.path(), &["publish", "-"], &input);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("line 2: invalid JSON"), "{err}");
    assert!(
        err.contains(
            "line 3: invalid file_change payload: data.change_type: required field is missing"
        ),
        "{err}"
    );
    assert!(
        err.contains("line 6: `data` must be a JSON object"),
        "{err}"
    );
    assert!(
        !err.contains("line 1:") && !err.contains("line 5:"),
        "{err}"
    );
    let logged = events(dir.path());
    assert_eq!(logged.len(), 2);
    assert_eq!(logged[1]["source"], "ci");
    assert_eq!(
        text(&out.stdout).lines().count(),
        2,
        "one id per published event"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_from_stdin_publishes_each_line_as_it_comes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cmd(dir.path(), &["publish", "-"]);
    c.stdin(Stdio::piped());
    let mut p = Running::start(c);
    let mut stdin = p.child.stdin.take().unwrap();
    writeln!(stdin, r#"{{"type":"deployment","data":{{"n":1}}}}"#).unwrap();
    stdin.flush().unwrap();
    // Published (its id printed, its line in the event log) while stdin is still open.
    wait_until(T, || p.lines.lock().unwrap().len() == 1).await;
    assert_eq!(events(dir.path()).len(), 1);
    writeln!(stdin, r#"{{"type":"deployment","data":{{"n":2}}}}"#).unwrap();
    drop(stdin);
    let status = p.child.wait().unwrap();
    assert!(status.success());
    assert_eq!(p.lines.lock().unwrap().len(), 2);
    let logged = events(dir.path());
    assert_eq!(
        logged
            .iter()
            .map(|e| e["data"]["n"].clone())
            .collect::<Vec<_>>(),
        [json!(1), json!(2)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_to_a_running_server_with_url() {
    let dir = tempfile::tempdir().unwrap();
    let srv_dir = dir.path().join("server");
    std::fs::create_dir_all(&srv_dir).unwrap();
    let mut c = cmd(&srv_dir, &["serve", "--bind", "127.0.0.1:0"]);
    c.env("PM_API_TOKEN", "t0k");
    let s = Running::start(c);
    wait_until(T, || s.has("listening on")).await;
    let url = s.lines.lock().unwrap()[0]
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    let mut p = cmd(
        dir.path(),
        &[
            "publish",
            "--url",
            &url,
            "deployment",
            r#"{"service":"remote"}"#,
        ],
    );
    p.env("PM_API_TOKEN", "t0k");
    let out = p.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut wrong = cmd(dir.path(), &["publish", "--url", &url, "deployment", "{}"]);
    wrong.env("PM_API_TOKEN", "nope");
    let out2 = wrong.output().unwrap();
    assert_eq!(out2.status.code(), Some(1));
    assert!(text(&out2.stderr).contains("401"), "{}", text(&out2.stderr));
    // Built-in types are checked before sending.
    let bad = cmd(
        dir.path(),
        &[
            "publish",
            "--url",
            &url,
            "risk_alert",
            r#"{"alert_id":"x"}"#,
        ],
    )
    .output()
    .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(s.stop().success());
    let logged = events(&srv_dir);
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0]["event_id"], text(&out.stdout).trim());
    assert!(
        !dir.path().join("logs").exists(),
        "--url publishes nothing locally"
    );
}

/// Writes an event log for today with events at the given ages (seconds ago).
fn write_event_log(dir: &Path, items: &[(&str, f64, Value)]) -> Vec<String> {
    let now = pm_events::event::now_unix();
    let path = pm_events::journal::day_path(&dir.join("logs"), pm_events::journal::today());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut ids = Vec::new();
    let mut text = String::new();
    for (ty, age, data) in items {
        let mut e = pm_events::Event::new(*ty, data.clone());
        // Stay within today's UTC date, whatever the time of day.
        let midnight = (now / 86400.0).floor() * 86400.0;
        e.timestamp = (now - age).max(midnight + 1.0);
        ids.push(e.event_id.clone());
        text.push_str(&e.to_json());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
    ids
}

fn alert(id: &str) -> Value {
    json!({"alert_id": id, "risk_type": "security", "severity": "low", "title": id, "risk_score": 0.1})
}

#[test]
fn replay_re_dispatches_exactly_the_selected_range() {
    let dir = tempfile::tempdir().unwrap();
    let now = pm_events::event::now_unix();
    let since_midnight = now - (now / 86400.0).floor() * 86400.0;
    // Spread the events over what has passed of today (at least a few seconds apart).
    let span = since_midnight.clamp(8.0, 4.0 * 3600.0);
    let ages = [span * 0.95, span * 0.6, span * 0.4, span * 0.05];
    write_event_log(
        dir.path(),
        &[
            ("risk_alert", ages[0], alert("too_old")),
            ("risk_alert", ages[1], alert("in_range_1")),
            ("deployment", ages[1], json!({"service": "not this type"})),
            ("risk_alert", ages[2], alert("in_range_2")),
            ("risk_alert", ages[3], alert("too_new")),
        ],
    );
    let since = format!("{}s", (span * 0.75) as u64);
    let until = format!("{}s", (span * 0.2) as u64);
    let dry = run(
        dir.path(),
        &[
            "replay",
            "--since",
            &since,
            "--until",
            &until,
            "--type",
            "risk_alert",
            "--dry-run",
        ],
        "",
    );
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    assert!(
        text(&dry.stdout).contains("2 event(s) would be replayed"),
        "{}",
        text(&dry.stdout)
    );
    assert!(
        !dir.path()
            .join("logs/risk_alerts/risk_alerts.jsonl")
            .exists(),
        "a dry run dispatches nothing"
    );

    let out = run(
        dir.path(),
        &[
            "replay",
            "--since",
            &since,
            "--until",
            &until,
            "--type",
            "risk_alert",
            "--no-webhooks",
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("replayed 2 event(s)"),
        "{}",
        text(&out.stdout)
    );
    let handled: Vec<String> =
        common::jsonl(&dir.path().join("logs/risk_alerts/risk_alerts.jsonl"))
            .iter()
            .map(|l| l["alert_id"].as_str().unwrap().to_string())
            .collect();
    let mut handled_sorted = handled.clone();
    handled_sorted.sort();
    assert_eq!(handled_sorted, ["in_range_1", "in_range_2"]);
    assert_eq!(
        events(dir.path()).len(),
        5,
        "replayed events are not logged a second time"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_prints_filters_and_follows() {
    let dir = tempfile::tempdir().unwrap();
    let ids = write_event_log(
        dir.path(),
        &[
            ("risk_alert", 5.0, alert("a1")),
            ("deployment", 4.0, json!({"service": "api"})),
        ],
    );
    let out = run(dir.path(), &["tail"], "");
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(
        stdout.contains(&ids[0][..8]) && stdout.contains("low security a1"),
        "{stdout}"
    );
    let only = run(dir.path(), &["tail", "--type", "deployment", "--json"], "");
    let lines: Vec<Value> = text(&only.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["event_id"], ids[1].as_str());

    // --follow prints lines appended while it runs.
    let f = Running::start({
        let mut c = cmd(dir.path(), &["tail", "--follow", "--type", "deployment"]);
        c.stdin(Stdio::null());
        c
    });
    wait_until(T, || f.has(&ids[1][..8])).await;
    let published = run(
        dir.path(),
        &["publish", "deployment", r#"{"service":"late"}"#],
        "",
    );
    let new_id = text(&published.stdout).trim().to_string();
    wait_until(T, || f.has(&new_id[..8])).await;
    assert!(f.has("late"));
    assert!(f.stop().success());
}

#[test]
fn stats_counts_from_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    write_event_log(
        dir.path(),
        &[
            ("risk_alert", 3.0, alert("a")),
            ("risk_alert", 2.0, alert("b")),
            ("deployment", 1.0, json!({})),
        ],
    );
    let out = run(dir.path(), &["stats", "--json"], "");
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let today = pm_events::journal::today().format("%Y-%m-%d").to_string();
    assert_eq!(
        v["events_by_day"][&today],
        json!({"deployment": 1, "risk_alert": 2})
    );
    let human = run(dir.path(), &["stats"], "");
    assert!(
        text(&human.stdout).contains("risk_alert 2"),
        "{}",
        text(&human.stdout)
    );
}

#[test]
fn completions_and_help_for_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = run(dir.path(), &["completions", shell], "");
        assert!(out.status.success());
        assert!(text(&out.stdout).contains("pm-events"), "{shell}");
    }
    for sub in [
        "demo",
        "publish",
        "serve",
        "watch",
        "tail",
        "replay",
        "stats",
        "webhooks",
        "bench",
        "completions",
    ] {
        let out = run(dir.path(), &[sub, "--help"], "");
        assert!(out.status.success(), "{sub} --help");
        assert!(text(&out.stdout).contains("Usage"), "{sub}");
    }
}

#[test]
fn bad_arguments_exit_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (vec!["tail", "--since", "someday"], "invalid time"),
        (vec!["replay"], "--since"),
        (
            vec!["replay", "--since", "1h", "--until", "2h"],
            "--until must be after --since",
        ),
        (
            vec!["watch", "/definitely/not/here"],
            "cannot watch /definitely/not/here",
        ),
        (
            vec!["watch", ".", "--ignore", "a[b"],
            "invalid --ignore glob",
        ),
        (vec!["completions", "tcsh"], "tcsh"),
        (vec!["publish", "-", "{}"], "give no JSON argument"),
        (vec!["publish", "x"], "missing the JSON argument"),
    ] {
        let out = run(dir.path(), &args, "");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}
