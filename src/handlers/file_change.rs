//! `file_change`: a file was created, modified or deleted.
//!
//! Payload (as specified): `file_path` (string, required), `change_type`
//! (`created` | `modified` | `deleted`, required), `size` (bytes), `modified_time`
//! (RFC 3339), `checksum` (MD5 hex); other fields are kept.
//!
//! The handler checks that a created or modified file exists and a deleted one
//! does not; fills `size`, `modified_time` and `checksum` (MD5, for files up to
//! [`CHECKSUM_LIMIT`]) when they are missing and the file is readable; processes
//! the change against what it has seen of the file before (a modification whose
//! checksum equals the last one is metadata only); logs; and triggers the
//! `FILE_CHANGE_WEBHOOK_URL` webhook with the completed data.
//!
//! # `file_changes/file_changes.jsonl`
//!
//! `timestamp`, `event_id`, `status` (`ok` | `invalid`), `reason` (when invalid),
//! `file_path`, `change_type`, `size`, `modified_time`, `checksum`, `action`
//! (`indexed`, `content_changed`, `metadata_changed`, `removed`),
//! `previous_checksum` (on a modification, when known), `webhook` (route and
//! delivery id, or null).

use super::common::{
    Context, HandleError, SetupError, append, check_time, decode, extra_fields, log_line, one_of,
};
use crate::event::Event;
use crate::handler::{Handler, HandlerError};
use crate::jsonl::JsonlWriter;
use async_trait::async_trait;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;

/// Largest file whose MD5 checksum is computed (64 MiB).
pub const CHECKSUM_LIMIT: u64 = 64 * 1024 * 1024;

/// What happened to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeType {
    /// Created.
    Created,
    /// Modified.
    Modified,
    /// Deleted.
    Deleted,
}

one_of!(ChangeType { Created => "created", Modified => "modified", Deleted => "deleted" });

/// The `file_change` payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileChange {
    /// Path of the file.
    pub file_path: String,
    /// What happened.
    pub change_type: ChangeType,
    /// Size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Modification time, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_time: Option<String>,
    /// MD5 hex digest of the content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Fields the specification does not name, kept as they are.
    #[serde(flatten, skip_deserializing)]
    pub extra: Map<String, Value>,
}

impl FileChange {
    /// Decodes and checks a payload.
    pub fn parse(data: &Value) -> Result<Self, HandleError> {
        let mut fc: FileChange = decode("file_change", data)?;
        fc.extra = extra_fields(
            data,
            &[
                "file_path",
                "change_type",
                "size",
                "modified_time",
                "checksum",
            ],
        );
        let bad = |r: String| HandleError::invalid("file_change", r);
        if fc.file_path.trim().is_empty() {
            return Err(bad("data.file_path: must not be empty".into()));
        }
        if fc.file_path.contains('\0') {
            return Err(bad(
                "data.file_path: must not contain a NUL character".into()
            ));
        }
        check_time("modified_time", &fc.modified_time).map_err(bad)?;
        if let Some(c) = &fc.checksum
            && (c.len() != 32 || !c.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(bad(format!(
                "data.checksum: expected an MD5 hex digest (32 hex digits), got {c:?}"
            )));
        }
        Ok(fc)
    }
}

/// The specification's `FileChangeHandler`.
pub struct FileChangeHandler {
    /// Write `file_changes.jsonl` (the specification's `log_changes`).
    pub log_changes: bool,
    ctx: Context,
    log: JsonlWriter,
    /// Last known checksum per path, to tell content changes from metadata changes.
    known: Mutex<HashMap<String, Option<String>>>,
}

/// MD5 hex of a file, streamed.
pub fn md5_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn rfc3339_of(t: std::time::SystemTime) -> Option<String> {
    let d: chrono::DateTime<chrono::Utc> = t.into();
    Some(d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// Fills what is missing from the file itself; errors if the file vanished.
fn complete(fc: &mut FileChange) -> std::io::Result<()> {
    let path = Path::new(&fc.file_path);
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if fc.size.is_none() {
        fc.size = Some(meta.len());
    }
    if fc.modified_time.is_none() {
        fc.modified_time = meta.modified().ok().and_then(rfc3339_of);
    }
    if fc.checksum.is_none() && meta.len() <= CHECKSUM_LIMIT {
        fc.checksum = Some(md5_file(path)?);
    }
    Ok(())
}

impl FileChangeHandler {
    /// The specification's `FileChangeHandler(log_changes=...)`, configured from the environment, without webhooks.
    pub fn new(log_changes: bool) -> Result<Self, SetupError> {
        Self::with_context(
            log_changes,
            Context::from_config(&crate::Config::from_env()?),
        )
    }

    /// A handler writing under `ctx`.
    pub fn with_context(log_changes: bool, ctx: Context) -> Result<Self, SetupError> {
        let log = ctx.writer("file_changes/file_changes.jsonl")?;
        Ok(FileChangeHandler {
            log_changes,
            ctx,
            log,
            known: Mutex::new(HashMap::new()),
        })
    }

    fn record(&self, line: &Value) {
        if self.log_changes {
            append(&self.log, line);
        }
    }

    /// The specification's `handle_file_change(event)`.
    pub async fn handle_file_change(&self, event: &Event) -> Result<Value, HandleError> {
        let mut fc = match FileChange::parse(&event.data) {
            Ok(fc) => fc,
            Err(e) => {
                self.invalid(event, &e, Map::new());
                return Err(e);
            }
        };
        if let Err(m) = self.ctx.access.check_path("data.file_path", &fc.file_path) {
            let e = HandleError::invalid("file_change", m);
            self.invalid(event, &e, summary(&fc));
            return Err(e);
        }
        let exists = Path::new(&fc.file_path).exists();
        let problem = match (fc.change_type, exists) {
            (ChangeType::Created | ChangeType::Modified, false) => {
                Some(format!("file {} does not exist", fc.file_path))
            }
            (ChangeType::Deleted, true) => Some(format!("file {} still exists", fc.file_path)),
            _ => None,
        };
        if let Some(p) = problem {
            let e = HandleError::invalid("file_change", p);
            self.invalid(event, &e, summary(&fc));
            return Err(e);
        }
        if fc.change_type != ChangeType::Deleted {
            let mut filled = fc.clone();
            let result =
                tokio::task::spawn_blocking(move || complete(&mut filled).map(|_| filled)).await;
            match result {
                Ok(Ok(f)) => fc = f,
                Ok(Err(e)) => {
                    // The file vanished or became unreadable between the event and now.
                    let e = HandleError::invalid(
                        "file_change",
                        format!("file {} cannot be read: {e}", fc.file_path),
                    );
                    self.invalid(event, &e, summary(&fc));
                    return Err(e);
                }
                Err(e) => return Err(HandleError::Failed(format!("checksum task failed: {e}"))),
            }
        }
        let (action, previous) = {
            let mut known = self
                .known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match fc.change_type {
                ChangeType::Created => {
                    known.insert(fc.file_path.clone(), fc.checksum.clone());
                    ("indexed", None)
                }
                ChangeType::Modified => {
                    let prev = known
                        .insert(fc.file_path.clone(), fc.checksum.clone())
                        .flatten();
                    let same = prev.is_some() && prev == fc.checksum;
                    (
                        if same {
                            "metadata_changed"
                        } else {
                            "content_changed"
                        },
                        prev,
                    )
                }
                ChangeType::Deleted => {
                    known.remove(&fc.file_path);
                    ("removed", None)
                }
            }
        };
        let data = serde_json::to_value(&fc).unwrap_or(Value::Null);
        let enriched = Event {
            data: data.clone(),
            ..event.clone()
        };
        let webhook = self.ctx.deliver_routed(&enriched).await;
        let mut fields = summary(&fc);
        fields.insert("action".into(), action.into());
        if let Some(p) = previous {
            fields.insert("previous_checksum".into(), p.into());
        }
        fields.insert("webhook".into(), webhook);
        let line = log_line(event, "ok", None, fields);
        self.record(&line);
        tracing::debug!(event_id = %event.event_id, action, path = %fc.file_path, "file change handled");
        Ok(line)
    }

    fn invalid(&self, event: &Event, e: &HandleError, mut fields: Map<String, Value>) {
        if fields.is_empty() {
            fields.insert("data".into(), event.data.clone());
        }
        let reason = e.to_string();
        self.record(&log_line(event, "invalid", Some(&reason), fields));
    }
}

fn summary(fc: &FileChange) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("file_path".into(), fc.file_path.clone().into());
    m.insert(
        "change_type".into(),
        serde_json::to_value(fc.change_type).unwrap_or(Value::Null),
    );
    m.insert(
        "size".into(),
        fc.size.map(Value::from).unwrap_or(Value::Null),
    );
    m.insert(
        "modified_time".into(),
        fc.modified_time
            .clone()
            .map(Value::from)
            .unwrap_or(Value::Null),
    );
    m.insert(
        "checksum".into(),
        fc.checksum.clone().map(Value::from).unwrap_or(Value::Null),
    );
    m
}

#[async_trait]
impl Handler for FileChangeHandler {
    async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        self.handle_file_change(&event).await?;
        Ok(())
    }

    fn name(&self) -> &str {
        "FileChangeHandler"
    }
}
