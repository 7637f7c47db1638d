//! The risk dashboard (`risk_alerts/dashboard.json`): the open alerts, kept by
//! alert id, written atomically and merged with what other processes on the same
//! log directory wrote.

use super::payload::{RiskType, Severity};
use crate::handlers::common::{now_rfc3339, write_atomic};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One open alert on the dashboard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenAlert {
    /// Alert id.
    pub alert_id: String,
    /// Severity.
    pub severity: Severity,
    /// Kind.
    pub risk_type: RiskType,
    /// Title.
    pub title: String,
    /// Long description.
    #[serde(default)]
    pub description: String,
    /// Score.
    pub risk_score: f64,
    /// Affected resources.
    #[serde(default)]
    pub affected_resources: Vec<String>,
    /// Detected at.
    pub detected_at: Option<String>,
    /// Escalated to this severity, if escalated.
    pub escalated_to: Option<Severity>,
    /// What each mitigation step did: `{step, status, detail}`.
    #[serde(default)]
    pub mitigation: Vec<Value>,
    /// Last event about it.
    pub event_id: String,
}

/// The risk dashboard (`risk_alerts/dashboard.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Dashboard {
    /// Open alerts, most severe (then highest score) first.
    pub open_alerts: Vec<OpenAlert>,
    /// Open alerts per severity.
    pub counts_by_severity: BTreeMap<String, u64>,
    /// Open alerts per risk type.
    pub counts_by_type: BTreeMap<String, u64>,
    /// Highest score among open alerts.
    pub highest_risk_score: f64,
    /// Alert events received (valid ones).
    pub alerts_received: u64,
    /// Escalations made.
    pub escalations: u64,
    /// Open alerts resolved (`risk_resolved`).
    #[serde(default)]
    pub alerts_resolved: u64,
    /// When it last changed (RFC 3339).
    pub last_update: Option<String>,
}

/// How often the dashboard file is rewritten at most.
pub const DASHBOARD_INTERVAL: Duration = Duration::from_millis(200);

/// The dashboard as this process sees it, and what it changed since it last
/// merged its changes into the file.
///
/// Several processes may handle alerts on one log directory, so the file is
/// never simply overwritten with one process's view: a write takes the file's
/// lock (`dashboard.json.lock`), reads what is there, adds this process's
/// changes (its alerts replace those of the same `alert_id`, its resolutions
/// remove theirs, its counts are added), writes the result atomically and lets go.
struct DashState {
    /// The view: the file as last merged, plus the changes since.
    open: BTreeMap<String, OpenAlert>,
    received: u64,
    escalations: u64,
    resolved: u64,
    last_update: Option<String>,
    /// Changes not yet in the file.
    delta: DashDelta,
    /// The changes a write under way is putting in the file; `None` between writes.
    in_flight: Option<DashDelta>,
    /// When the last write of the file ended.
    last_write: Option<Instant>,
    /// A delayed write is scheduled.
    flush_scheduled: bool,
    /// A write is under way (on some thread); no other starts meanwhile.
    writing: bool,
}

/// This process's changes to the dashboard since its last write.
#[derive(Default, Clone)]
struct DashDelta {
    /// Alerts raised or updated (never also in `resolved`).
    alerts: BTreeMap<String, OpenAlert>,
    /// Alerts resolved (never also in `alerts`).
    resolved: BTreeSet<String>,
    received: u64,
    escalations: u64,
    resolutions: u64,
}

impl DashDelta {
    fn is_empty(&self) -> bool {
        self.alerts.is_empty()
            && self.resolved.is_empty()
            && self.received == 0
            && self.escalations == 0
            && self.resolutions == 0
    }

    /// `open` with these changes applied.
    fn apply_to(&self, open: &mut BTreeMap<String, OpenAlert>) {
        for id in &self.resolved {
            open.remove(id);
        }
        open.extend(self.alerts.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// Puts back changes a failed write took out, under those made since.
    fn restore(&mut self, older: DashDelta) {
        for (k, v) in older.alerts {
            if !self.resolved.contains(&k) {
                self.alerts.entry(k).or_insert(v);
            }
        }
        for k in older.resolved {
            if !self.alerts.contains_key(&k) {
                self.resolved.insert(k);
            }
        }
        self.received += older.received;
        self.escalations += older.escalations;
        self.resolutions += older.resolutions;
    }
}

/// The dashboard of one handler: its state, its file, and a signal for those
/// who wait on a change.
pub(super) struct DashboardBook {
    /// Shared with the delayed writes this book spawns; they end by themselves.
    state: Arc<Mutex<DashState>>,
    path: PathBuf,
    /// Bumped on every change; the resolve route of `serve` waits on it.
    changed: tokio::sync::watch::Sender<u64>,
}

impl DashboardBook {
    /// The dashboard at `path`, loaded from the file when there is one.
    pub(super) fn open(path: PathBuf) -> Self {
        let loaded = read_file(&path);
        let state = DashState {
            open: loaded
                .open_alerts
                .into_iter()
                .map(|a| (a.alert_id.clone(), a))
                .collect(),
            received: loaded.alerts_received,
            escalations: loaded.escalations,
            resolved: loaded.alerts_resolved,
            last_update: loaded.last_update,
            delta: DashDelta::default(),
            in_flight: None,
            last_write: None,
            flush_scheduled: false,
            writing: false,
        };
        DashboardBook {
            state: Arc::new(Mutex::new(state)),
            path,
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// This process's view.
    pub(super) fn view(&self) -> Dashboard {
        render(&self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The file as it is now, with this process's changes not yet in it.
    pub(super) fn current(&self) -> Dashboard {
        let on_disk = read_file(&self.path);
        let d = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut open = by_id(on_disk.open_alerts);
        // A write under way may or may not be in what was read: its alerts are
        // applied again (which changes nothing if they are in), its counts are
        // not (they show once it is written).
        if let Some(f) = &d.in_flight {
            f.apply_to(&mut open);
        }
        d.delta.apply_to(&mut open);
        render(&DashState {
            open,
            received: on_disk.alerts_received + d.delta.received,
            escalations: on_disk.escalations + d.delta.escalations,
            resolved: on_disk.alerts_resolved + d.delta.resolutions,
            last_update: d.last_update.clone().max(on_disk.last_update),
            delta: DashDelta::default(),
            in_flight: None,
            last_write: None,
            flush_scheduled: false,
            writing: false,
        })
    }

    /// A receiver told of every change of this process's view.
    pub(super) fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Records an alert (new, or an update of one open under its id).
    pub(super) fn record_alert(&self, alert: OpenAlert) {
        self.change(|d| {
            let escalated = u64::from(alert.escalated_to.is_some());
            d.received += 1;
            d.escalations += escalated;
            d.delta.received += 1;
            d.delta.escalations += escalated;
            d.delta.resolved.remove(&alert.alert_id);
            d.open.insert(alert.alert_id.clone(), alert.clone());
            d.delta.alerts.insert(alert.alert_id.clone(), alert);
        });
    }

    /// Removes an alert; `false` when it was not open, neither in this process's
    /// view nor in the file (another process may have raised it since the last merge).
    pub(super) fn resolve(&self, alert_id: &str) -> bool {
        let in_view = self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
            .contains_key(alert_id);
        let in_file = !in_view
            && read_file(&self.path)
                .open_alerts
                .iter()
                .any(|a| a.alert_id == alert_id);
        let mut was_open = false;
        self.change(|d| {
            was_open = d.open.remove(alert_id).is_some() || in_file;
            d.delta.alerts.remove(alert_id);
            d.delta.resolved.insert(alert_id.to_string());
            if was_open {
                d.resolved += 1;
                d.delta.resolutions += 1;
            }
        });
        was_open
    }

    /// Writes the file now if this process changed it.
    pub(super) fn flush(&self) {
        write_dashboard(&self.state, &self.path);
    }

    /// Applies `f`, then writes the file now or schedules a write.
    fn change(&self, f: impl FnOnce(&mut DashState)) {
        let write_now = {
            let mut d = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut d);
            d.last_update = Some(now_rfc3339());
            // The interval counts from the end of the last write, and a write
            // never starts while another runs: a large dashboard takes a while to
            // merge, and a write per alert would make handling quadratic.
            let due = !d.writing
                && d.last_write
                    .is_none_or(|t| t.elapsed() >= DASHBOARD_INTERVAL);
            if !due && !d.flush_scheduled {
                // Write the last changes once the interval has passed.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    d.flush_scheduled = true;
                    let (dash, path) = (self.state.clone(), self.path.clone());
                    rt.spawn(async move {
                        loop {
                            tokio::time::sleep(DASHBOARD_INTERVAL).await;
                            let (dash, path) = (dash.clone(), path.clone());
                            let wrote =
                                tokio::task::spawn_blocking(move || write_dashboard(&dash, &path))
                                    .await;
                            if !matches!(wrote, Ok(false)) {
                                break;
                            }
                        }
                    });
                }
            }
            due
        };
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        if write_now {
            write_dashboard(&self.state, &self.path);
        }
    }
}

impl Drop for DashboardBook {
    fn drop(&mut self) {
        write_dashboard(&self.state, &self.path);
    }
}

fn by_id(alerts: Vec<OpenAlert>) -> BTreeMap<String, OpenAlert> {
    alerts
        .into_iter()
        .map(|a| (a.alert_id.clone(), a))
        .collect()
}

/// The dashboard file; an empty one when there is none or it cannot be read.
fn read_file(path: &Path) -> Dashboard {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %crate::error::chain(&e), "unreadable risk dashboard; starting a new one");
            Dashboard::default()
        }),
        Err(_) => Dashboard::default(),
    }
}

fn render(d: &DashState) -> Dashboard {
    let mut open: Vec<OpenAlert> = d.open.values().cloned().collect();
    open.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(b.risk_score.total_cmp(&a.risk_score))
            .then(a.alert_id.cmp(&b.alert_id))
    });
    let mut by_sev = BTreeMap::new();
    let mut by_type = BTreeMap::new();
    let mut max: f64 = 0.0;
    for a in &open {
        *by_sev.entry(a.severity.as_str().to_string()).or_insert(0) += 1;
        let t = serde_json::to_value(a.risk_type)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        *by_type.entry(t).or_insert(0) += 1;
        max = max.max(a.risk_score);
    }
    Dashboard {
        open_alerts: open,
        counts_by_severity: by_sev,
        counts_by_type: by_type,
        highest_risk_score: max,
        alerts_received: d.received,
        escalations: d.escalations,
        alerts_resolved: d.resolved,
        last_update: d.last_update.clone(),
    }
}

/// Merges this process's changes into the dashboard file (see [`DashState`]);
/// `false` when another write is under way (nothing done: try again later).
fn write_dashboard(dash: &Mutex<DashState>, path: &Path) -> bool {
    let delta = {
        let mut d = dash.lock().unwrap_or_else(PoisonError::into_inner);
        if d.writing {
            return false;
        }
        d.flush_scheduled = false;
        if d.delta.is_empty() {
            return true;
        }
        d.writing = true;
        let delta = std::mem::take(&mut d.delta);
        d.in_flight = Some(delta.clone());
        delta
    };
    let result = merge_into_file(path, &delta);
    let mut d = dash.lock().unwrap_or_else(PoisonError::into_inner);
    d.writing = false;
    d.in_flight = None;
    d.last_write = Some(Instant::now());
    match result {
        Ok(merged) => {
            // The view becomes the file, plus what changed while it was written.
            if d.delta.is_empty() {
                d.last_update = merged.last_update.clone();
            }
            let mut open = by_id(merged.open_alerts);
            d.delta.apply_to(&mut open);
            d.open = open;
            d.received = merged.alerts_received + d.delta.received;
            d.escalations = merged.escalations + d.delta.escalations;
            d.resolved = merged.alerts_resolved + d.delta.resolutions;
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot write the risk dashboard");
            // Keep the changes for the next write.
            d.delta.restore(delta);
        }
    }
    true
}

/// Under the file's lock: reads the dashboard, adds `delta`, writes it; the result.
fn merge_into_file(path: &Path, delta: &DashDelta) -> std::io::Result<Dashboard> {
    if let Some(dir) = path.parent() {
        crate::private_files::create_dir_all(dir)?;
    }
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock = crate::private_files::open_options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(PathBuf::from(lock_path))?;
    lock.lock()?;
    let on_disk = read_file(path);
    let mut open = by_id(on_disk.open_alerts);
    delta.apply_to(&mut open);
    let merged = render(&DashState {
        open,
        received: on_disk.alerts_received + delta.received,
        escalations: on_disk.escalations + delta.escalations,
        resolved: on_disk.alerts_resolved + delta.resolutions,
        last_update: Some(now_rfc3339()),
        delta: DashDelta::default(),
        in_flight: None,
        last_write: None,
        flush_scheduled: false,
        writing: false,
    });
    let written = serde_json::to_vec_pretty(&merged)
        .map_err(std::io::Error::other)
        .and_then(|bytes| write_atomic(path, &bytes));
    let _ = lock.unlock();
    written.map(|()| merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(id: &str, severity: Severity) -> OpenAlert {
        OpenAlert {
            alert_id: id.into(),
            severity,
            risk_type: RiskType::Security,
            title: format!("alert {id}"),
            description: String::new(),
            risk_score: 0.5,
            affected_resources: vec![],
            detected_at: None,
            escalated_to: None,
            mitigation: vec![],
            event_id: format!("ev-{id}"),
        }
    }

    fn open_ids(d: &Dashboard) -> Vec<&str> {
        d.open_alerts.iter().map(|a| a.alert_id.as_str()).collect()
    }

    #[test]
    fn an_alert_raised_by_one_process_is_resolved_by_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dashboard.json");
        let raiser = DashboardBook::open(path.clone());
        let resolver = DashboardBook::open(path.clone());
        raiser.record_alert(alert("a", Severity::Critical));
        raiser.record_alert(alert("b", Severity::Low));
        raiser.flush();
        // The resolver never merged the file, yet sees the alert was open.
        assert!(
            resolver
                .current()
                .open_alerts
                .iter()
                .any(|a| a.alert_id == "a")
        );
        assert!(resolver.resolve("a"));
        resolver.flush();
        let on_disk = read_file(&path);
        assert_eq!(open_ids(&on_disk), ["b"]);
        assert_eq!(on_disk.alerts_resolved, 1);
        assert_eq!(on_disk.alerts_received, 2);
        assert_eq!(open_ids(&raiser.current()), ["b"]);
        // Resolving what is not open changes no count.
        assert!(!resolver.resolve("zzz"));
        resolver.flush();
        assert_eq!(read_file(&path).alerts_resolved, 1);
    }

    #[test]
    fn an_alert_raised_again_after_its_resolution_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dashboard.json");
        let book = DashboardBook::open(path.clone());
        book.record_alert(alert("a", Severity::High));
        book.flush();
        assert!(book.resolve("a"));
        book.record_alert(alert("a", Severity::Critical));
        book.flush();
        let d = read_file(&path);
        assert_eq!(open_ids(&d), ["a"]);
        assert_eq!(d.open_alerts[0].severity, Severity::Critical);
        // And resolved again, within one write.
        assert!(book.resolve("a"));
        book.flush();
        assert!(read_file(&path).open_alerts.is_empty());
        assert!(book.view().open_alerts.is_empty());
    }

    #[test]
    fn a_failed_write_keeps_its_changes_under_the_newer_ones() {
        let mut newer = DashDelta::default();
        newer.resolved.insert("a".into());
        newer.alerts.insert("b".into(), alert("b", Severity::Low));
        let mut older = DashDelta::default();
        older.alerts.insert("a".into(), alert("a", Severity::High));
        older.resolved.insert("b".into());
        older.received = 2;
        newer.restore(older);
        let mut open = BTreeMap::new();
        newer.apply_to(&mut open);
        assert_eq!(open.keys().collect::<Vec<_>>(), ["b"]);
        assert!(newer.resolved.contains("a") && !newer.resolved.contains("b"));
        assert_eq!(newer.received, 2);
    }
}
