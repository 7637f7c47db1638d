//! `report_ready`: a report was generated and is ready to be distributed.
//!
//! Payload (as specified): `report_id`, `report_type` (`daily` | `weekly` | `monthly` |
//! `custom`), `report_path`, `report_format` (`pdf` | `html` | `json`) — required;
//! `generated_at` (RFC 3339), `size_bytes`, `recipients` (e-mail addresses),
//! `metadata` (`author`, `tags`, anything else) — optional; other fields are kept.
//!
//! The handler checks the report exists, that its content is of its format (a PDF
//! starts with `%PDF-`, JSON parses, HTML has an `<html` or `<!doctype html` near
//! the top), and that `size_bytes` (when given) is the file's size; writes the
//! sidecar `<report>.meta.json` (atomically); e-mails the report as an attachment
//! to each recipient when `auto_distribute` (a bad address or a failed send is
//! reported for that recipient, the others go on); logs; and triggers the
//! `REPORT_READY_WEBHOOK_URL` webhook.
//!
//! # `<report>.meta.json`
//!
//! `report_id`, `report_type`, `report_format`, `report_path`, `size_bytes` (the
//! file's), `sha256` (hex), `generated_at`, `recipients`, `tags`, `author`, `written_at`.
//!
//! # `reports/report_generations.jsonl`
//!
//! `timestamp`, `event_id`, `status` (`ok` | `invalid`), `reason`, `report_id`,
//! `report_type`, `report_format`, `report_path`, `size_bytes`, `sha256`,
//! `metadata_file`, `distribution` (`mailer`: `smtp` | `file` | `off`, and per
//! recipient `{recipient, status: sent | invalid_address | failed, detail}`),
//! `webhook`.

use super::common::{
    Context, HandleError, SetupError, append, check_time, decode, extra_fields, log_line,
    now_rfc3339, one_of, write_atomic,
};
use super::mail::{MailAttachment, Mailer};
use crate::event::Event;
use crate::handler::{Handler, HandlerError};
use crate::jsonl::JsonlWriter;
use async_trait::async_trait;
use lettre::message::Mailbox;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Report period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportType {
    /// Daily.
    Daily,
    /// Weekly.
    Weekly,
    /// Monthly.
    Monthly,
    /// Custom.
    Custom,
}

one_of!(ReportType { Daily => "daily", Weekly => "weekly", Monthly => "monthly", Custom => "custom" });

/// Report file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportFormat {
    /// PDF.
    Pdf,
    /// HTML.
    Html,
    /// JSON.
    Json,
}

one_of!(ReportFormat { Pdf => "pdf", Html => "html", Json => "json" });

impl ReportFormat {
    fn mime(self) -> &'static str {
        match self {
            ReportFormat::Pdf => "application/pdf",
            ReportFormat::Html => "text/html",
            ReportFormat::Json => "application/json",
        }
    }
}

/// Optional report metadata.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReportMetadata {
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Anything else.
    #[serde(flatten, skip_deserializing)]
    pub extra: Map<String, Value>,
}

/// The `report_ready` payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportReady {
    /// Report id.
    pub report_id: String,
    /// Period.
    pub report_type: ReportType,
    /// Path of the report file.
    pub report_path: String,
    /// Format of the file.
    pub report_format: ReportFormat,
    /// When it was generated (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_at: Option<String>,
    /// Expected size of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// E-mail recipients.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// Metadata.
    #[serde(default)]
    pub metadata: ReportMetadata,
    /// Fields the specification does not name, kept.
    #[serde(flatten, skip_deserializing)]
    pub extra: Map<String, Value>,
}

impl ReportReady {
    /// The door check of a payload from outside: [`parse`](Self::parse), and every
    /// recipient a valid e-mail address. (The handler itself mails the valid
    /// addresses of a list and records the others as `invalid_address`.)
    pub fn check(data: &Value) -> Result<Self, HandleError> {
        let r = Self::parse(data)?;
        for (i, rcpt) in r.recipients.iter().enumerate() {
            if rcpt.parse::<lettre::Address>().is_err() {
                return Err(HandleError::invalid(
                    "report_ready",
                    format!("data.recipients[{i}]: expected an e-mail address, got {rcpt:?}"),
                ));
            }
        }
        Ok(r)
    }

    /// Decodes and checks the fields that need no file.
    pub fn parse(data: &Value) -> Result<Self, HandleError> {
        let mut r: ReportReady = decode("report_ready", data)?;
        r.extra = extra_fields(
            data,
            &[
                "report_id",
                "report_type",
                "report_path",
                "report_format",
                "generated_at",
                "size_bytes",
                "recipients",
                "metadata",
            ],
        );
        if let Some(m) = data.get("metadata") {
            r.metadata.extra = extra_fields(m, &["author", "tags"]);
        }
        let bad = |m: String| HandleError::invalid("report_ready", m);
        if r.report_id.trim().is_empty() {
            return Err(bad("data.report_id: must not be empty".into()));
        }
        if r.report_path.trim().is_empty() {
            return Err(bad("data.report_path: must not be empty".into()));
        }
        if r.report_path.contains('\0') {
            return Err(bad(
                "data.report_path: must not contain a NUL character".into()
            ));
        }

        check_time("generated_at", &r.generated_at).map_err(bad)?;
        Ok(r)
    }
}

/// Checks that `bytes` are of `format`.
pub fn content_matches(format: ReportFormat, bytes: &[u8]) -> Result<(), String> {
    match format {
        ReportFormat::Pdf if bytes.starts_with(b"%PDF-") => Ok(()),
        ReportFormat::Pdf => Err("the file does not start with %PDF- (not a PDF)".into()),
        ReportFormat::Json => serde_json::from_slice::<Value>(bytes)
            .map(|_| ())
            .map_err(|e| format!("the file is not valid JSON: {e}")),
        ReportFormat::Html => {
            let head =
                String::from_utf8_lossy(&bytes[..bytes.len().min(2048)]).to_ascii_lowercase();
            if head.contains("<html") || head.contains("<!doctype html") {
                Ok(())
            } else {
                Err("the file has no <html> or <!DOCTYPE html> near its top (not HTML)".into())
            }
        }
    }
}

/// The specification's `ReportReadyHandler`.
pub struct ReportReadyHandler {
    /// E-mail the report to its recipients (the specification's `auto_distribute`).
    pub auto_distribute: bool,
    ctx: Context,
    mailer: Mailer,
    from: Mailbox,
    log: JsonlWriter,
}

impl ReportReadyHandler {
    /// The specification's `ReportReadyHandler(auto_distribute=...)`, configured from the environment, without webhooks.
    pub fn new(auto_distribute: bool) -> Result<Self, SetupError> {
        let c = crate::Config::from_env()?;
        Self::with_context(
            auto_distribute,
            Context::from_config(&c),
            Mailer::from_config(&c)?,
        )
    }

    /// A handler writing under `ctx`, mailing through `mailer`.
    pub fn with_context(
        auto_distribute: bool,
        ctx: Context,
        mailer: Mailer,
    ) -> Result<Self, SetupError> {
        let log = ctx.writer("reports/report_generations.jsonl")?;
        let from = ctx
            .mail_from
            .parse::<Mailbox>()
            .map_err(|e| SetupError::Mail(format!("PM_MAIL_FROM: {e}")))?;
        Ok(ReportReadyHandler {
            auto_distribute,
            ctx,
            mailer,
            from,
            log,
        })
    }

    /// The specification's `handle_report_ready(event)`.
    pub async fn handle_report_ready(&self, event: &Event) -> Result<Value, HandleError> {
        let r = match ReportReady::parse(&event.data) {
            Ok(r) => r,
            Err(e) => return Err(self.invalid(event, e, Map::new())),
        };
        let path = match self
            .ctx
            .access
            .check_path("data.report_path", &r.report_path)
        {
            Ok(p) => p,
            Err(m) => {
                let e = HandleError::invalid("report_ready", m);
                return Err(self.invalid(event, e, summary(&r)));
            }
        };
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) => {
                let e = HandleError::invalid(
                    "report_ready",
                    format!("report {} cannot be read: {e}", r.report_path),
                );
                return Err(self.invalid(event, e, summary(&r)));
            }
        };
        if let Err(m) = content_matches(r.report_format, &bytes) {
            return Err(self.invalid(event, HandleError::invalid("report_ready", m), summary(&r)));
        }
        let size = bytes.len() as u64;
        if let Some(expected) = r.size_bytes
            && expected != size
        {
            let e = HandleError::invalid(
                "report_ready",
                format!("`size_bytes` is {expected} but the file has {size} bytes"),
            );
            return Err(self.invalid(event, e, summary(&r)));
        }
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let meta_path = {
            let mut p = path.as_os_str().to_owned();
            p.push(".meta.json");
            PathBuf::from(p)
        };
        let meta = json!({
            "report_id": r.report_id, "report_type": r.report_type, "report_format": r.report_format,
            "report_path": r.report_path, "size_bytes": size, "sha256": sha256,
            "generated_at": r.generated_at, "recipients": r.recipients,
            "tags": r.metadata.tags, "author": r.metadata.author, "written_at": now_rfc3339(),
        });
        let meta_bytes = serde_json::to_vec_pretty(&meta).unwrap_or_default();
        let mp = meta_path.clone();
        let written = tokio::task::spawn_blocking(move || write_atomic(&mp, &meta_bytes)).await;
        if let Err(e) = written
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            return Err(HandleError::Failed(format!(
                "cannot write {}: {e}",
                meta_path.display()
            )));
        }
        let distribution = if self.auto_distribute {
            self.distribute(&r, &path, bytes).await
        } else {
            json!({"mailer": "off", "recipients": []})
        };
        let mut data = serde_json::to_value(&r).unwrap_or(Value::Null);
        if let Some(m) = data.as_object_mut() {
            m.insert("size_bytes".into(), size.into());
            m.insert("sha256".into(), sha256.clone().into());
        }
        let enriched = Event {
            data,
            ..event.clone()
        };
        let webhook = self.ctx.deliver_routed(&enriched).await;
        let mut fields = summary(&r);
        fields.insert("size_bytes".into(), size.into());
        fields.insert("sha256".into(), sha256.into());
        fields.insert(
            "metadata_file".into(),
            meta_path.display().to_string().into(),
        );
        fields.insert("distribution".into(), distribution);
        fields.insert("webhook".into(), webhook);
        let line = log_line(event, "ok", None, fields);
        append(&self.log, &line);
        Ok(line)
    }

    async fn distribute(&self, r: &ReportReady, path: &Path, bytes: Vec<u8>) -> Value {
        let attachment = MailAttachment {
            filename: path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| format!("{}.{}", r.report_id, format_ext(r.report_format))),
            content_type: r.report_format.mime().into(),
            bytes,
        };
        let subject =
            format!("Report ready: {} ({:?})", r.report_id, r.report_type).replace('"', "");
        let text = format!(
            "The {} report {} is ready.\nFormat: {}\nGenerated: {}\n",
            serde_json::to_value(r.report_type)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            r.report_id,
            r.report_format.mime(),
            r.generated_at.as_deref().unwrap_or("-"),
        );
        let mut results = Vec::new();
        for (i, rcpt) in r.recipients.iter().enumerate() {
            let field = format!("data.recipients[{i}]");
            let outcome = match rcpt.parse::<Mailbox>() {
                Ok(_) if self.ctx.access.check_recipient(&field, rcpt).is_err() => {
                    json!({"recipient": rcpt, "status": "not_allowed", "detail": "its domain is not in PM_MAIL_ALLOWED_DOMAINS"})
                }
                Err(e) => {
                    json!({"recipient": rcpt, "status": "invalid_address", "detail": e.to_string()})
                }
                Ok(to) => match self
                    .mailer
                    .send(&self.from, &to, &subject, &text, Some(&attachment))
                    .await
                {
                    Ok(where_) => json!({"recipient": rcpt, "status": "sent", "detail": where_}),
                    Err(e) => json!({"recipient": rcpt, "status": "failed", "detail": e}),
                },
            };
            if outcome["status"] != "sent" {
                tracing::warn!(report_id = %r.report_id, recipient = %rcpt, detail = %outcome["detail"], "report not sent to a recipient");
            }
            results.push(outcome);
        }
        json!({"mailer": self.mailer.kind(), "recipients": results})
    }

    fn invalid(
        &self,
        event: &Event,
        e: HandleError,
        mut fields: Map<String, Value>,
    ) -> HandleError {
        if fields.is_empty() {
            fields.insert("data".into(), event.data.clone());
        }
        append(
            &self.log,
            &log_line(event, "invalid", Some(&e.to_string()), fields),
        );
        e
    }
}

fn format_ext(f: ReportFormat) -> &'static str {
    match f {
        ReportFormat::Pdf => "pdf",
        ReportFormat::Html => "html",
        ReportFormat::Json => "json",
    }
}

fn summary(r: &ReportReady) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("report_id".into(), r.report_id.clone().into());
    m.insert(
        "report_type".into(),
        serde_json::to_value(r.report_type).unwrap_or(Value::Null),
    );
    m.insert(
        "report_format".into(),
        serde_json::to_value(r.report_format).unwrap_or(Value::Null),
    );
    m.insert("report_path".into(), r.report_path.clone().into());
    m
}

#[async_trait]
impl Handler for ReportReadyHandler {
    async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        self.handle_report_ready(&event).await?;
        Ok(())
    }

    fn name(&self) -> &str {
        "ReportReadyHandler"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_recognised_by_content() {
        assert!(content_matches(ReportFormat::Pdf, b"%PDF-1.4\n...").is_ok());
        assert!(content_matches(ReportFormat::Pdf, b"<html>").is_err());
        assert!(content_matches(ReportFormat::Json, br#"{"a":1}"#).is_ok());
        assert!(content_matches(ReportFormat::Json, b"{nope").is_err());
        assert!(content_matches(ReportFormat::Html, b"<!DOCTYPE html><html></html>").is_ok());
        assert!(content_matches(ReportFormat::Html, b"plain text").is_err());
    }
}
