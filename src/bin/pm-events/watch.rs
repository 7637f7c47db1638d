//! `pm-events watch DIR...`: publishes `file_change` events for what happens in
//! directories (recursively), through the built-in handlers and webhooks.
//!
//! File-system events come from the `notify` crate, debounced by
//! `notify-debouncer-full` (one event per burst of writes, renames paired). The log
//! directory is never watched into (the watcher would feed on its own logs), nor
//! anything matching an `--ignore` glob. A file that vanishes before it is read
//! is skipped; directories themselves are not reported.

use crate::app::{report, shutdown_signal};
use crate::cli::{UsageError, say};
use anyhow::{Context as _, Result};
use globset::{Glob, GlobSet, GlobSetBuilder};
use notify_debouncer_full::notify::RecursiveMode;
use notify_debouncer_full::notify::event::{EventKind, ModifyKind, RenameMode};
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use pm_events::Config;
use pm_events::handlers::file_change::{CHECKSUM_LIMIT, md5_file};
use pm_events::timespec::parse_duration;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `watch`.
#[derive(clap::Args)]
pub struct Args {
    /// Directories to watch (recursively).
    #[arg(value_name = "DIR", required = true)]
    dirs: Vec<PathBuf>,
    /// Paths to ignore (glob, matched against the full path; repeatable), e.g. '**/*.tmp'.
    #[arg(long, value_name = "GLOB")]
    ignore: Vec<String>,
    /// Quiet time that ends a burst of changes to one file.
    #[arg(long, default_value = "300ms", value_parser = parse_duration)]
    debounce: Duration,
    /// How long to wait for webhook deliveries when stopping.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    wait: Duration,
}

/// The changes of one debounced batch, one per path, in the order paths first
/// changed.
#[derive(Default)]
struct Changes {
    list: Vec<(PathBuf, Option<&'static str>)>,
    index: std::collections::HashMap<PathBuf, usize>,
}

impl Changes {
    /// Adds `change` of `path`, merged with the path's earlier change in the batch:
    /// deleted then created is modified (an atomic save), created then deleted is
    /// nothing (a short-lived file), created then modified stays created, and
    /// otherwise the later change wins.
    fn add(&mut self, path: &Path, change: &'static str) {
        let Some(&i) = self.index.get(path) else {
            self.index.insert(path.to_path_buf(), self.list.len());
            self.list.push((path.to_path_buf(), Some(change)));
            return;
        };
        let slot = &mut self.list[i].1;
        *slot = match (*slot, change) {
            (Some("deleted"), "created") => Some("modified"),
            (Some("created"), "deleted") => None,
            (Some("created"), "modified") => Some("created"),
            (_, later) => Some(later),
        };
    }

    fn into_list(self) -> impl Iterator<Item = (PathBuf, &'static str)> {
        self.list.into_iter().filter_map(|(p, c)| Some((p, c?)))
    }
}

/// The file changes a watcher's change of `path` stands for, given the files
/// known to exist (kept up to date here for deletions):
/// - deleted, yet a file is there: it was replaced by a rename, so modified;
/// - deleted, and a directory is there: nothing (the directory moved back, say);
/// - deleted, not a known file but a directory that held known files (`rm -r`,
///   which inotify reports once, for the directory): each of those files deleted;
/// - created where a file was known: replaced by a rename over it, so modified.
fn resolve(
    path: PathBuf,
    change: &'static str,
    known: &mut std::collections::HashSet<PathBuf>,
) -> Vec<(PathBuf, &'static str)> {
    if change == "created" && known.contains(&path) {
        return vec![(path, "modified")];
    }
    if change != "deleted" {
        return vec![(path, change)];
    }
    if path.is_file() {
        return vec![(path, "modified")];
    }
    if path.is_dir() {
        return Vec::new();
    }
    if known.remove(&path) {
        return vec![(path, "deleted")];
    }
    let mut inside: Vec<PathBuf> = known
        .iter()
        .filter(|k| k.starts_with(&path) && !k.exists())
        .cloned()
        .collect();
    if inside.is_empty() {
        // A file this watcher never saw: reported as it came.
        return vec![(path, "deleted")];
    }
    inside.sort();
    for k in &inside {
        known.remove(k);
    }
    inside.into_iter().map(|k| (k, "deleted")).collect()
}

/// The files under `dirs` (not following symbolic links), except what `skip` excludes.
fn files_under(dirs: Vec<PathBuf>, skip: &impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = dirs;
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let (p, Ok(t)) = (e.path(), e.file_type()) else {
                continue;
            };
            if skip(&p) {
                continue;
            }
            if t.is_dir() {
                todo.push(p);
            } else if t.is_file() {
                files.push(p);
            }
        }
    }
    files
}

/// Facts of a file for its event, or `None` if it vanished or is not a file.
fn facts(path: &Path, change: &str) -> Option<Value> {
    let mut data = json!({"file_path": path.display().to_string(), "change_type": change});
    if change == "deleted" {
        return Some(data);
    }
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    data["size"] = meta.len().into();
    if let Ok(t) = meta.modified() {
        let t: chrono::DateTime<chrono::Utc> = t.into();
        data["modified_time"] = t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true).into();
    }
    if meta.len() <= CHECKSUM_LIMIT {
        // The file may vanish between stat and read: then it is skipped.
        data["checksum"] = md5_file(path).ok()?.into();
    }
    Some(data)
}

/// Runs `watch` until Ctrl-C or SIGTERM.
pub async fn run(cfg: Config, args: Args) -> Result<ExitCode> {
    let mut dirs = Vec::new();
    for d in &args.dirs {
        let c = d
            .canonicalize()
            .map_err(|e| UsageError(format!("cannot watch {}: {e}", d.display())))?;
        if !c.is_dir() {
            return Err(
                UsageError(format!("cannot watch {}: not a directory", d.display())).into(),
            );
        }
        dirs.push(c);
    }
    let mut globs = GlobSetBuilder::new();
    for g in &args.ignore {
        globs.add(
            Glob::new(g).map_err(|e| UsageError(format!("invalid --ignore glob {g:?}: {e}")))?,
        );
    }
    let ignore: GlobSet = globs
        .build()
        .map_err(|e| UsageError(format!("--ignore: {e}")))?;
    std::fs::create_dir_all(&cfg.log_dir)
        .with_context(|| format!("create {}", cfg.log_dir.display()))?;
    let log_dir = cfg
        .log_dir
        .canonicalize()
        .unwrap_or_else(|_| cfg.log_dir.clone());
    let skip = move |p: &Path| p.starts_with(&log_dir) || ignore.is_match(p);

    let app = crate::app::open(&cfg, false).await?;
    app.bus.start().await?;
    // The files there now, so that a file replaced by a rename (an editor's atomic
    // save) reads as modified, not created; kept up to date from the events. Walked
    // before the watch begins: a file made after the walk is then reported as
    // created (one made between the walk and the watch is not reported at all,
    // like one made before the start).
    let mut known = {
        let (dirs, skip) = (dirs.clone(), skip.clone());
        tokio::task::spawn_blocking(move || {
            files_under(dirs, &skip)
                .into_iter()
                .collect::<std::collections::HashSet<_>>()
        })
        .await
        .unwrap_or_default()
    };

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<DebounceEventResult>();
    let mut debouncer = new_debouncer(args.debounce, None, move |r: DebounceEventResult| {
        let _ = tx.send(r);
    })
    .context("start the file watcher")?;
    for d in &dirs {
        debouncer
            .watch(d, RecursiveMode::Recursive)
            .with_context(|| format!("watch {}", d.display()))?;
    }
    say!(
        "watching {} (log directory and --ignore excluded); Ctrl-C stops",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut published = 0u64;
    loop {
        let batch = tokio::select! {
            _ = &mut stop => break,
            b = rx.recv() => match b { Some(b) => b, None => break },
        };
        let events = match batch {
            Ok(ev) => ev,
            Err(errors) => {
                for e in errors {
                    tracing::warn!(error = %e, "file watcher error");
                }
                continue;
            }
        };
        // What happened to each path over the batch, merged in order: an editor's
        // atomic save (write a temporary file, rename it over the original) shows
        // as the original deleted and created again, which is one modification.
        let mut changes = Changes::default();
        for ev in &events {
            let raw: Vec<(&Path, &'static str)> = match ev.kind {
                EventKind::Create(_) => ev.paths.iter().map(|p| (p.as_path(), "created")).collect(),
                EventKind::Remove(_) => ev.paths.iter().map(|p| (p.as_path(), "deleted")).collect(),
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) if ev.paths.len() == 2 => {
                    vec![
                        (ev.paths[0].as_path(), "deleted"),
                        (ev.paths[1].as_path(), "created"),
                    ]
                }
                EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                    ev.paths.iter().map(|p| (p.as_path(), "deleted")).collect()
                }
                EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                    ev.paths.iter().map(|p| (p.as_path(), "created")).collect()
                }
                EventKind::Modify(ModifyKind::Metadata(_)) => Vec::new(),
                EventKind::Modify(_) => {
                    ev.paths.iter().map(|p| (p.as_path(), "modified")).collect()
                }
                _ => Vec::new(),
            };
            for (path, change) in raw {
                if change == "created" && path.is_dir() {
                    // A directory moved in, or made and filled before its watch was
                    // set: its files are what was created.
                    let (dir, skip) = (path.to_path_buf(), skip.clone());
                    let files = tokio::task::spawn_blocking(move || files_under(vec![dir], &skip))
                        .await
                        .unwrap_or_default();
                    for f in files {
                        changes.add(&f, "created");
                    }
                } else {
                    changes.add(path, change);
                }
            }
        }
        for (path, change) in changes.into_list() {
            if skip(&path) {
                continue;
            }
            for (path, change) in resolve(path, change, &mut known) {
                let p = path.clone();
                let ch = change.to_string();
                let Some(data) = tokio::task::spawn_blocking(move || facts(&p, &ch))
                    .await
                    .ok()
                    .flatten()
                else {
                    tracing::debug!(path = %path.display(), "changed path vanished or is not a file; skipped");
                    continue;
                };
                if change != "deleted" {
                    known.insert(path.clone());
                }
                match app.bus.publish("file_change", data).await {
                    Ok(id) => {
                        published += 1;
                        say!("{change:<8} {}  {}", path.display(), &id[..8]);
                    }
                    Err(e) => tracing::error!(error = %e, "cannot publish a file change"),
                }
            }
        }
    }
    drop(debouncer);
    eprintln!("stopping: {published} file change(s) published; draining");
    let log_dir = app.log_dir.clone();
    let outcome = crate::app::stop(app, args.wait).await?;
    report(outcome, &log_dir);
    Ok(ExitCode::SUCCESS)
}
