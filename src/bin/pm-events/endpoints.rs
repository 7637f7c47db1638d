//! `pm-events endpoints ...`: manage the webhook endpoints of a log directory (or of
//! the NATS cluster with `PM_NATS_URL`). A running `serve` sees a change within a
//! second. The fields are checked exactly as `POST /api/v1/endpoints` checks them.

use crate::cli::{UsageError, say};
use anyhow::Result;
use pm_events::app::open_endpoints;
use pm_events::endpoint::{Endpoint, EndpointError, Endpoints};
use pm_events::timespec::parse_duration;
use pm_events::webhook::WebhookEngine;
use pm_events::{Config, Event};
use serde_json::{Map, Value, json};
use std::process::ExitCode;
use std::time::Duration;

/// The settable fields, shared by `add` and `update`.
#[derive(clap::Args, Default)]
pub struct Fields {
    /// Event types it receives, comma-separated: names, `*`, or prefixes such as `risk_*`.
    #[arg(long, value_name = "T,..", value_delimiter = ',')]
    types: Vec<String>,
    /// A payload filter (JSON; docs/webhooks.md), e.g. '{"data.severity":{"$in":["high","critical"]}}'.
    #[arg(long, value_name = "JSON")]
    filter: Option<String>,
    /// An extra request header `Name:value` (repeatable).
    #[arg(long = "header", value_name = "K:V")]
    headers: Vec<String>,
    /// Free text.
    #[arg(long, value_name = "D")]
    description: Option<String>,
    /// At most this many requests per second.
    #[arg(long, value_name = "N")]
    rate_limit: Option<u32>,
    #[arg(long, value_name = "N", help = format!(
        "Retries after the first attempt (default: ${})",
        pm_events::config::WEBHOOK_MAX_RETRIES
    ))]
    max_retries: Option<u32>,
    #[arg(long, value_name = "S", value_parser = parse_duration, help = format!(
        "Time limit of one attempt (`10s`, `1.5s`; default: ${})",
        pm_events::config::WEBHOOK_TIMEOUT_SECS
    ))]
    timeout: Option<Duration>,
}

/// `endpoints` subcommands.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Create an endpoint; prints it with its secret (or public key, with --ed25519).
    Add {
        /// Where deliveries are POSTed.
        url: String,
        #[command(flatten)]
        fields: Fields,
        /// Sign with Ed25519 (Standard Webhooks `v1a`) instead of HMAC-SHA256.
        #[arg(long)]
        ed25519: bool,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
        /// Sign with the secret in this environment variable (`whsec_` + base64 of
        /// 24–64 bytes; e.g. one the receiver has already) instead of a new one. Named,
        /// not given, so that it stays out of the process list and shell history.
        #[arg(long, value_name = "VAR", conflicts_with = "ed25519")]
        secret_env: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List every endpoint (those of the environment too).
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show one endpoint.
    Show {
        /// The endpoint id.
        id: String,
        /// Print its secret (or public key) too.
        #[arg(long)]
        secret: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change an endpoint's fields.
    Update {
        /// The endpoint id.
        id: String,
        /// A new URL.
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        fields: Fields,
        /// Remove its filter.
        #[arg(long, conflicts_with = "filter")]
        no_filter: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Enable an endpoint: its kept deliveries go out.
    Enable {
        /// The endpoint id.
        id: String,
    },
    /// Disable an endpoint: its deliveries are kept, not sent, until it is enabled.
    Disable {
        /// The endpoint id.
        id: String,
        /// Why (shown as `disabled_reason`).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Give an endpoint a new secret; the old one keeps signing for the overlap.
    RotateSecret {
        /// The endpoint id.
        id: String,
        /// How long the old secret stays valid.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        overlap: Duration,
    },
    /// Remove an endpoint; its pending deliveries become dead letters.
    Remove {
        /// The endpoint id.
        id: String,
    },
    /// Send a signed `endpoint_test` event to one endpoint and wait for the answer.
    Test {
        /// The endpoint id.
        id: String,
        /// How long to wait.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        wait: Duration,
    },
}

impl Fields {
    fn into_map(self) -> Result<Map<String, Value>> {
        let mut m = Map::new();
        if !self.types.is_empty() {
            m.insert("event_types".into(), json!(self.types));
        }
        if let Some(f) = self.filter {
            let v = pm_events::strict_json::from_str(&f)
                .map_err(|e| UsageError(format!("--filter: not JSON: {e}")))?;
            m.insert("filter".into(), v);
        }
        if !self.headers.is_empty() {
            let mut h = Map::new();
            for kv in &self.headers {
                let (k, v) = kv
                    .split_once(':')
                    .ok_or_else(|| UsageError(format!("--header {kv:?}: expected Name:value")))?;
                h.insert(k.trim().to_string(), Value::String(v.trim().to_string()));
            }
            m.insert("headers".into(), Value::Object(h));
        }
        if let Some(d) = self.description {
            m.insert("description".into(), json!(d));
        }
        if let Some(n) = self.rate_limit {
            m.insert("rate_limit_per_s".into(), json!(n));
        }
        if let Some(n) = self.max_retries {
            m.insert("max_retries".into(), json!(n));
        }
        if let Some(t) = self.timeout {
            m.insert("timeout_secs".into(), json!(t.as_secs_f64()));
        }
        Ok(m)
    }
}

/// A field refused or an unknown id is the caller's mistake: exit 2 with the message.
fn usage(e: EndpointError) -> anyhow::Error {
    match e {
        EndpointError::NotFound(_) | EndpointError::ReadOnly(_) | EndpointError::Invalid(_) => {
            UsageError(e.to_string()).into()
        }
        other => other.into(),
    }
}

fn print(ep: &Endpoint, extra: Option<&Value>, as_json: bool) -> Result<()> {
    if as_json {
        let mut v = json!(ep);
        if let (Value::Object(m), Some(Value::Object(x))) = (&mut v, extra) {
            m.extend(x.clone());
        }
        say!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    let opt = |o: Option<String>| o.unwrap_or_else(|| "-".into());
    say!("id:            {}", ep.id);
    say!("url:           {}", ep.url);
    say!(
        "state:         {}",
        if ep.enabled {
            "enabled".to_string()
        } else {
            format!("disabled ({})", opt(ep.disabled_reason.clone()))
        }
    );
    say!("event types:   {}", ep.event_types.join(","));
    say!(
        "filter:        {}",
        opt(ep.filter.as_ref().map(Value::to_string))
    );
    say!(
        "headers:       {}",
        opt(ep
            .headers
            .as_ref()
            .map(|h| h.keys().cloned().collect::<Vec<_>>().join(", ")))
    );
    say!(
        "signing:       {}",
        json!(ep.signing).as_str().unwrap_or("")
    );
    say!(
        "rate limit:    {}",
        opt(ep.rate_limit_per_s.map(|n| format!("{n}/s")))
    );
    say!(
        "max retries:   {}",
        opt(ep.max_retries.map(|n| n.to_string()))
    );
    say!(
        "timeout:       {}",
        opt(ep.timeout_secs.map(|t| format!("{t}s")))
    );
    say!("description:   {}", opt(ep.description.clone()));
    say!("source:        {}", json!(ep.source).as_str().unwrap_or(""));
    if let Some(Value::Object(x)) = extra {
        for (k, v) in x {
            say!("{:<14} {}", format!("{k}:"), v.as_str().unwrap_or(""));
        }
    }
    Ok(())
}

fn list_line(ep: &Endpoint) -> String {
    format!(
        "{:<36} {:<8} {:<24} {}{}",
        ep.id,
        if ep.enabled { "enabled" } else { "disabled" },
        ep.event_types.join(","),
        ep.url,
        ep.description
            .as_deref()
            .map(|d| format!("  ({d})"))
            .unwrap_or_default()
    )
}

/// The delivery engine of the log directory, with the endpoints attached.
pub async fn engine(cfg: &Config, endpoints: &Endpoints) -> Result<WebhookEngine> {
    Ok(pm_events::app::open_engine(cfg, endpoints)?)
}

/// Waits for `ids`: this process delivers them when no other one does, else the
/// process that delivers does. Prints one line; exit 1 if one failed for good.
pub async fn wait_for(engine: &WebhookEngine, ids: &[String], wait: Duration) -> Result<ExitCode> {
    if engine.is_owner() {
        engine.start()?;
    } else {
        eprintln!("another pm-events process delivers for this log directory; waiting for it");
    }
    let o = engine.wait(ids, wait).await?;
    engine.shutdown().await;
    let what = if o.delivered > 0 {
        "delivered"
    } else if o.dead > 0 {
        "failed"
    } else {
        "still pending"
    };
    eprintln!(
        "{what} (see `pm-events deliveries show {}`)",
        ids.first().map(String::as_str).unwrap_or("")
    );
    Ok(if o.dead == 0 && o.pending == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs an `endpoints` subcommand.
pub async fn run(cfg: Config, cmd: Cmd) -> Result<ExitCode> {
    let eps = open_endpoints(&cfg).await?;
    match cmd {
        Cmd::Add {
            url,
            fields,
            ed25519,
            disabled,
            secret_env,
            json,
        } => {
            let mut m = fields.into_map()?;
            let given = secret_env.is_some();
            if let Some(var) = secret_env {
                let s = std::env::var(&var).map_err(|_| {
                    UsageError(format!("--secret-env {var}: that variable is not set"))
                })?;
                m.insert("secret".into(), json!(s));
            }
            m.insert("url".into(), json!(url));
            if ed25519 {
                m.insert("signing".into(), json!("ed25519"));
            }
            if disabled {
                m.insert("enabled".into(), json!(false));
            }
            let (ep, secret) = eps.create(&m).await.map_err(usage)?;
            // A secret the caller gave is theirs already: not printed back.
            print(&ep, (!given).then_some(&secret), json)?;
        }
        Cmd::List { json } => {
            let all = eps.list();
            for ep in &all {
                if json {
                    say!("{}", serde_json::to_string(ep)?);
                } else {
                    say!("{}", list_line(ep));
                }
            }
            if !json {
                eprintln!("{} endpoint(s) in {}", all.len(), eps.describe());
            }
        }
        Cmd::Show { id, secret, json } => {
            let ep = eps
                .get(&id)
                .ok_or_else(|| usage(EndpointError::NotFound(id.clone())))?;
            let extra = if secret {
                Some(eps.secret(&id).await.map_err(usage)?)
            } else {
                None
            };
            let figures = pm_events::webhook::history::figures(
                &cfg.log_dir,
                &id,
                pm_events::event::now_unix(),
            );
            if json {
                let mut v = json!(ep);
                if let (Some(m), Some(Value::Object(x))) = (v.as_object_mut(), extra) {
                    m.extend(x);
                }
                if let Some(m) = v.as_object_mut() {
                    m.insert("health".into(), json!(figures));
                }
                say!("{}", serde_json::to_string(&v)?);
            } else {
                print(&ep, extra.as_ref(), false)?;
                let pct = |v: Option<f64>| v.map(|r| format!("{:.1} %", r * 100.0));
                let ms = |v: Option<f64>| v.map(|m| format!("{m:.1} ms"));
                say!(
                    "last hour:     {} attempts, {} delivered, p50 {}, p99 {}",
                    figures.attempts_1h,
                    pct(figures.success_rate_1h).unwrap_or_else(|| "-".into()),
                    ms(figures.p50_ms).unwrap_or_else(|| "-".into()),
                    ms(figures.p99_ms).unwrap_or_else(|| "-".into())
                );
                say!(
                    "last error:    {}",
                    match (&figures.last_error, &figures.last_error_at) {
                        (Some(e), Some(t)) => format!("{e} ({t})"),
                        _ => "-".into(),
                    }
                );
                say!(
                    "last success:  {}",
                    figures.last_success_at.as_deref().unwrap_or("-")
                );
            }
        }
        Cmd::Update {
            id,
            url,
            fields,
            no_filter,
            json,
        } => {
            let mut m = fields.into_map()?;
            if let Some(u) = url {
                m.insert("url".into(), json!(u));
            }
            if no_filter {
                m.insert("filter".into(), Value::Null);
            }
            if m.is_empty() {
                return Err(UsageError("nothing to change: give at least one field".into()).into());
            }
            let ep = eps.update(&id, &m).await.map_err(usage)?;
            print(&ep, None, json)?;
        }
        Cmd::Enable { id } => {
            let ep = eps.set_enabled(&id, true, None).await.map_err(usage)?;
            eprintln!("{} enabled; its kept deliveries go out", ep.id);
        }
        Cmd::Disable { id, reason } => {
            let ep = eps
                .set_enabled(&id, false, reason.as_deref())
                .await
                .map_err(usage)?;
            eprintln!(
                "{} disabled; its deliveries are kept until it is enabled",
                ep.id
            );
        }
        Cmd::RotateSecret { id, overlap } => {
            let secret = eps.rotate(&id, overlap).await.map_err(usage)?;
            for (k, v) in secret.as_object().into_iter().flatten() {
                say!("{k}: {}", v.as_str().unwrap_or(""));
            }
            eprintln!(
                "the previous secret keeps signing for {}",
                humantime::format_duration(overlap)
            );
        }
        Cmd::Remove { id } => {
            let ep = eps.remove(&id).await.map_err(usage)?;
            let engine = engine(&cfg, &eps).await?;
            let n = engine.endpoint_removed(&ep.id).await?;
            engine.shutdown().await;
            eprintln!(
                "{} removed; {n} pending deliveries became dead letters",
                ep.id
            );
        }
        Cmd::Test { id, wait } => {
            let m = eps.managed(&id).ok_or_else(|| {
                usage(if eps.get(&id).is_some() {
                    EndpointError::ReadOnly(id.clone())
                } else {
                    EndpointError::NotFound(id.clone())
                })
            })?;
            let engine = engine(&cfg, &eps).await?;
            let event = Event::new(
                "endpoint_test",
                json!({"endpoint_id": id, "message": "a test delivery from pm-events"}),
            );
            let delivery = engine.enqueue_endpoint(&event, &m, true).await?;
            say!("{delivery}");
            return wait_for(&engine, &[delivery], wait).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}
