//! The endpoint record and the validation of what a caller may set on it.
//!
//! [`Endpoint`] is what every answer shows (every field present, `null` when unset).
//! [`apply`] checks one JSON object of fields — a create or a patch — against the
//! rules of docs/webhooks.md and names the field at fault.

use super::filter::Filter;
use crate::event::validate_type;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// How an endpoint's deliveries are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Signing {
    /// HMAC-SHA256: `X-Webhook-Signature` and Standard Webhooks `v1,` signatures.
    #[default]
    HmacSha256,
    /// Standard Webhooks asymmetric signatures (`v1a,`), verified with a `whpk_` key.
    Ed25519,
}

/// Where an endpoint comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Managed over the API or the CLI.
    Api,
    /// One of the route variables of the environment; read-only.
    Env,
}

/// One destination of webhooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `ep_<32 hex>` for managed endpoints; the variable's name for environment ones.
    pub id: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// Free text.
    pub description: Option<String>,
    /// Types delivered: names, `*`, or a prefix ending in `*` (`risk_*`).
    pub event_types: Vec<String>,
    /// A payload filter (see [`super::filter`]), or `null`.
    pub filter: Option<Value>,
    /// Extra request headers, or `null`.
    pub headers: Option<BTreeMap<String, String>>,
    /// Disabled endpoints keep their deliveries until enabled again.
    pub enabled: bool,
    /// Why it was disabled, when it was.
    pub disabled_reason: Option<String>,
    /// How deliveries are signed.
    pub signing: Signing,
    /// At most this many requests per second (`null`: no limit).
    pub rate_limit_per_s: Option<u32>,
    /// Retries after the first attempt (`null`: `WEBHOOK_MAX_RETRIES`).
    pub max_retries: Option<u32>,
    /// Time limit of one attempt in seconds (`null`: `WEBHOOK_TIMEOUT_SECS`).
    pub timeout_secs: Option<f64>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// `api` or `env`.
    pub source: Source,
}

impl Endpoint {
    /// An endpoint `id` of `source` delivering every type to `url`, with every
    /// optional field unset, enabled, HMAC-signed, made at `created_at`.
    pub fn new(id: String, url: String, source: Source, created_at: String) -> Endpoint {
        Endpoint {
            id,
            url,
            description: None,
            event_types: vec!["*".into()],
            filter: None,
            headers: None,
            enabled: true,
            disabled_reason: None,
            signing: Signing::HmacSha256,
            rate_limit_per_s: None,
            max_retries: None,
            timeout_secs: None,
            updated_at: created_at.clone(),
            created_at,
            source,
        }
    }
}

/// Why a field was refused: which one and what it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// The field's path (`url`, `filter.data.size.$gt`, `headers.X-Token`).
    pub field: String,
    /// What was wrong.
    pub problem: String,
}

fn field(name: &str, problem: impl Into<String>) -> FieldError {
    FieldError {
        field: name.to_string(),
        problem: problem.into(),
    }
}

/// Longest accepted URL, description, header value.
const MAX_URL: usize = 2048;
const MAX_DESCRIPTION: usize = 1024;
const MAX_HEADERS: usize = 32;
const MAX_HEADER_VALUE: usize = 4096;
const MAX_TYPES: usize = 256;

/// Headers an endpoint may not set: the ones that carry the request's meaning,
/// its signatures or its trace.
pub const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "x-webhook-signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "traceparent",
    "tracestate",
];

/// Whether one of `patterns` takes `event_type` (`*`, `prefix*`, or the name).
pub fn type_matches(patterns: &[String], event_type: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => p == event_type,
    })
}

/// Checks a URL for an endpoint: absolute `http` or `https`, with a host.
pub fn check_url(url: &str) -> Result<reqwest::Url, FieldError> {
    if url.len() > MAX_URL {
        return Err(field("url", format!("at most {MAX_URL} bytes")));
    }
    let u =
        reqwest::Url::parse(url).map_err(|e| field("url", format!("not an absolute URL ({e})")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(field("url", "the scheme must be http or https"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(field("url", "the URL has no host"));
    }
    if u.port() == Some(0) {
        return Err(field("url", "port 0 cannot be connected to"));
    }
    Ok(u)
}

fn string(v: &Value, name: &str) -> Result<String, FieldError> {
    v.as_str().map(str::to_string).ok_or_else(|| {
        field(
            name,
            format!("expected a string, got {}", crate::event::json_kind(v)),
        )
    })
}

fn optional<T>(
    v: &Value,
    parse: impl FnOnce(&Value) -> Result<T, FieldError>,
) -> Result<Option<T>, FieldError> {
    if v.is_null() {
        Ok(None)
    } else {
        parse(v).map(Some)
    }
}

fn whole(v: &Value, name: &str, lo: u64, hi: u64) -> Result<u32, FieldError> {
    match v.as_u64() {
        Some(n) if (lo..=hi).contains(&n) => Ok(n as u32),
        _ => Err(field(
            name,
            format!("expected a whole number from {lo} to {hi}"),
        )),
    }
}

fn event_types(v: &Value) -> Result<Vec<String>, FieldError> {
    let Value::Array(items) = v else {
        return Err(field("event_types", "expected an array of event types"));
    };
    if items.is_empty() {
        return Err(field(
            "event_types",
            "expected at least one type (\"*\" for all)",
        ));
    }
    if items.len() > MAX_TYPES {
        return Err(field("event_types", format!("at most {MAX_TYPES} types")));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let at = format!("event_types[{i}]");
            let t = string(t, &at)?;
            if t == "*" {
                return Ok(t);
            }
            let name = t.strip_suffix('*').unwrap_or(&t);
            if name.contains('*') {
                return Err(field(&at, "`*` may only end a pattern (risk_*)"));
            }
            // A prefix may end in a separator (`com.example.*`).
            let name = name.trim_end_matches(['.', '_', '-']);
            validate_type(name).map_err(|e| field(&at, e))?;
            Ok(t)
        })
        .collect()
}

fn headers(v: &Value) -> Result<BTreeMap<String, String>, FieldError> {
    let Value::Object(m) = v else {
        return Err(field(
            "headers",
            "expected an object of header names and values",
        ));
    };
    if m.len() > MAX_HEADERS {
        return Err(field("headers", format!("at most {MAX_HEADERS} headers")));
    }
    let mut out = BTreeMap::new();
    for (k, v) in m {
        let at = format!("headers.{k}");
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| field(&at, "not a valid header name"))?;
        if RESERVED_HEADERS.contains(&name.as_str()) {
            return Err(field(&at, "set by pm-events itself; choose another header"));
        }
        let value = string(v, &at)?;
        if value.len() > MAX_HEADER_VALUE || reqwest::header::HeaderValue::from_str(&value).is_err()
        {
            return Err(field(
                &at,
                "not a valid header value (visible ASCII, at most 4096 bytes)",
            ));
        }
        out.insert(k.clone(), value);
    }
    Ok(out)
}

/// What a create or patch may contain, besides the endpoint's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new endpoint: `url` is required, `signing` may be chosen.
    Create,
    /// A change of an existing one: `signing` is fixed.
    Patch,
}

/// The settable fields, in the order of docs/webhooks.md.
pub const SETTABLE: &[&str] = &[
    "url",
    "description",
    "event_types",
    "filter",
    "headers",
    "enabled",
    "signing",
    "rate_limit_per_s",
    "max_retries",
    "timeout_secs",
];

/// Applies the fields of `m` to `ep`, checking each; `null` unsets an optional field.
/// Nothing is changed when an error is returned.
pub fn apply(ep: &mut Endpoint, m: &Map<String, Value>, change: Change) -> Result<(), FieldError> {
    let mut next = ep.clone();
    for (k, v) in m {
        match k.as_str() {
            "url" => {
                let u = string(v, "url")?;
                check_url(&u)?;
                next.url = u;
            }
            "description" => {
                next.description = optional(v, |v| {
                    let s = string(v, "description")?;
                    if s.chars().count() > MAX_DESCRIPTION {
                        return Err(field(
                            "description",
                            format!("at most {MAX_DESCRIPTION} characters"),
                        ));
                    }
                    Ok(s)
                })?
            }
            "event_types" => next.event_types = event_types(v)?,
            "filter" => {
                next.filter = optional(v, |v| {
                    Filter::compile(v).map_err(|e| field(&e.path, e.problem))?;
                    Ok(v.clone())
                })?
            }
            "headers" => next.headers = optional(v, headers)?.filter(|h| !h.is_empty()),
            "enabled" => {
                next.enabled = v
                    .as_bool()
                    .ok_or_else(|| field("enabled", "expected true or false"))?;
                if next.enabled {
                    next.disabled_reason = None;
                } else if !ep.enabled {
                    // Disabled already: keep the reason it has.
                } else {
                    next.disabled_reason = Some("disabled by hand".into());
                }
            }
            "signing" => {
                let s: Signing = serde_json::from_value(v.clone())
                    .map_err(|_| field("signing", "expected \"hmac-sha256\" or \"ed25519\""))?;
                if change == Change::Patch && s != ep.signing {
                    return Err(field(
                        "signing",
                        "fixed when the endpoint is created; create a new endpoint to change it",
                    ));
                }
                next.signing = s;
            }
            "rate_limit_per_s" => {
                next.rate_limit_per_s = optional(v, |v| whole(v, "rate_limit_per_s", 1, 100_000))?
            }
            "max_retries" => next.max_retries = optional(v, |v| whole(v, "max_retries", 0, 50))?,
            "timeout_secs" => {
                next.timeout_secs = optional(v, |v| match v.as_f64() {
                    Some(s) if (0.1..=300.0).contains(&s) => Ok(s),
                    _ => Err(field(
                        "timeout_secs",
                        "expected a number of seconds from 0.1 to 300",
                    )),
                })?
            }
            "secret" => {
                return Err(field(
                    k,
                    "given only at create; change it with POST /api/v1/endpoints/{id}/secret/rotate",
                ));
            }
            "id" | "created_at" | "updated_at" | "source" | "disabled_reason" | "public_key" => {
                return Err(field(k, "set by the server; it cannot be changed"));
            }
            _ => {
                return Err(field(
                    k,
                    format!("unknown field (expected one of {})", SETTABLE.join(", ")),
                ));
            }
        }
    }
    if change == Change::Create && !m.contains_key("url") {
        return Err(field("url", "required"));
    }
    *ep = next;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn blank() -> Endpoint {
        Endpoint::new("ep_x".into(), String::new(), Source::Api, String::new())
    }

    fn try_create(v: Value) -> Result<Endpoint, String> {
        let mut ep = blank();
        let Value::Object(m) = v else { unreachable!() };
        apply(&mut ep, &m, Change::Create).map_err(|e| e.to_string())?;
        Ok(ep)
    }

    #[test]
    fn patterns_match_names_prefixes_and_all() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(type_matches(&p(&["*"]), "anything"));
        assert!(type_matches(&p(&["risk_*"]), "risk_alert"));
        assert!(!type_matches(&p(&["risk_*"]), "file_change"));
        assert!(type_matches(&p(&["file_change", "x"]), "file_change"));
        assert!(!type_matches(&p(&["file_change"]), "file_changes"));
    }

    #[test]
    fn fields_are_checked_and_named() {
        let ep = try_create(json!({"url": "https://h.example/x", "event_types": ["risk_*", "com.example.*"],
            "headers": {"X-Token": "t"}, "max_retries": 2, "timeout_secs": 1.5, "signing": "ed25519"}))
        .expect("valid");
        assert_eq!(ep.signing, Signing::Ed25519);
        assert_eq!(ep.max_retries, Some(2));
        let e = |v| try_create(v).expect_err("refused");
        assert!(e(json!({})).starts_with("url: required"));
        assert!(e(json!({"url": "ftp://h/x"})).starts_with("url: the scheme"));
        assert!(e(json!({"url": "not a url"})).starts_with("url: not an absolute URL"));
        assert!(e(json!({"url": "http://h.example:0/"})).starts_with("url: port 0"));
        assert!(
            e(json!({"url": "http://h/", "event_types": ["a*b"]})).starts_with("event_types[0]:")
        );
        assert!(e(json!({"url": "http://h/", "event_types": []})).starts_with("event_types:"));
        assert!(
            e(json!({"url": "http://h/", "headers": {"webhook-id": "x"}}))
                .starts_with("headers.webhook-id:")
        );
        assert!(
            e(json!({"url": "http://h/", "headers": {"bad name": "x"}}))
                .starts_with("headers.bad name:")
        );
        assert!(e(json!({"url": "http://h/", "max_retries": -1})).starts_with("max_retries:"));
        assert!(
            e(json!({"url": "http://h/", "filter": {"data.a": {"$gt": {}}}}))
                .starts_with("filter.data.a.$gt:")
        );
        assert!(e(json!({"url": "http://h/", "id": "x"})).starts_with("id: set by the server"));
        assert!(e(json!({"url": "http://h/", "colour": "x"})).starts_with("colour: unknown field"));
        assert!(e(json!({"url": "http://h/", "signing": "rsa"})).starts_with("signing:"));
    }

    #[test]
    fn a_patch_unsets_with_null_and_cannot_change_signing() {
        let mut ep = try_create(json!({"url": "https://h/", "description": "d", "max_retries": 1}))
            .expect("valid");
        let Value::Object(m) = json!({"description": null, "max_retries": null, "enabled": false})
        else {
            unreachable!()
        };
        apply(&mut ep, &m, Change::Patch).expect("valid patch");
        assert_eq!(
            (ep.description.clone(), ep.max_retries, ep.enabled),
            (None, None, false)
        );
        assert_eq!(ep.disabled_reason.as_deref(), Some("disabled by hand"));
        let Value::Object(m) = json!({"signing": "ed25519"}) else {
            unreachable!()
        };
        assert!(apply(&mut ep, &m, Change::Patch).is_err());
        let Value::Object(m) = json!({"enabled": true}) else {
            unreachable!()
        };
        apply(&mut ep, &m, Change::Patch).expect("valid patch");
        assert_eq!(ep.disabled_reason, None);
    }
}
