//! `pm-events publish`: publish one event (`TYPE JSON`) or JSON Lines from stdin
//! (`-`), in-process (handlers run, the bus drains) or to a running server (`--url`).

use crate::app::report;
use crate::cli::{UsageError, say};
use anyhow::Result;
use pm_events::app::App;
use pm_events::timespec::parse_duration;
use pm_events::{Config, Event, strict_json};
use pm_events::{door, handlers};
use serde_json::Value;
use std::io::BufRead;
use std::process::ExitCode;
use std::time::Duration;

/// The fields of the built-in payloads, shown by `publish --help` (the full
/// reference, with the values each field allows, is docs/events.md).
pub const BUILTIN_PAYLOADS: &str = "\
Built-in event types (their data is checked before anything is published; * = required):
  file_change   file_path*, change_type* (created|modified|deleted), size, modified_time, checksum (MD5)
  report_ready  report_id*, report_type* (daily|weekly|monthly|custom), report_path*,
                report_format* (pdf|html|json), generated_at, size_bytes, recipients [e-mail],
                metadata {author, tags}
  risk_alert    alert_id*, risk_type* (security|performance|compliance|financial),
                severity* (low|medium|high|critical), title*, risk_score* (0 to 1), description,
                affected_resources [..], detected_at, source_system, mitigation_steps [..], metadata
Times are RFC 3339 (2025-01-15T10:30:00Z). Any other type takes any JSON object.
Every field, with examples: docs/events.md.

Examples:
  pm-events publish risk_alert '{\"alert_id\":\"a1\",\"risk_type\":\"security\",\"severity\":\"high\",\"title\":\"Unusual logins\",\"risk_score\":0.85}'
  tail -f events.jsonl | pm-events publish -      # lines of {\"type\",\"data\",\"source\"?}";

/// Arguments of `publish`.
#[derive(clap::Args)]
pub struct Args {
    /// The event type (letters, digits, '_', '-', '.'), or `-` to read JSON Lines
    /// `{"type","data","source"?}` from stdin, one event per line.
    #[arg(value_name = "TYPE")]
    event_type: String,
    /// The event data: a JSON object (not with `-`).
    #[arg(value_name = "JSON")]
    json: Option<String>,
    /// The event source (default "personal-manager").
    #[arg(long)]
    source: Option<String>,
    /// Send to a running `pm-events serve` at this base URL (POST /events, with
    /// `Authorization: Bearer $PM_API_TOKEN` when set) instead of publishing in-process.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// How long to wait for the webhook deliveries the events cause (in-process).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    wait: Duration,
    /// The event's id, used as an idempotency key: if an event with this id was
    /// accepted in the last 24 hours, nothing is published and its id is printed
    /// again (not with `-`).
    #[arg(long, value_name = "ID")]
    id: Option<String>,
}

/// Runs `publish`. Events from stdin are published as they are read (memory
/// stays flat however long the input is); a line that is not a valid event is
/// reported with its number and skipped.
pub async fn run(cfg: Config, args: Args) -> Result<ExitCode> {
    let single = if args.event_type == "-" {
        if args.json.is_some() {
            return Err(UsageError(
                "with `-`, events come from stdin: give no JSON argument".into(),
            )
            .into());
        }
        None
    } else {
        let json = args.json.as_deref().ok_or_else(|| {
            UsageError(
                "missing the JSON argument (the event data), e.g. '{\"key\":\"value\"}'".into(),
            )
        })?;
        let data: Value = strict_json::from_str(json)
            .map_err(|e| UsageError(format!("invalid JSON for the event data: {e}")))?;
        let mut e = door::from_parts(&args.event_type, data, args.source.as_deref())
            .and_then(|e| handlers::operator_door().check(&e).map(|()| e))
            .map_err(|e| UsageError(e.to_string()))?;
        if let Some(id) = &args.id {
            e.event_id = id.clone();
            e.validate()
                .map_err(|m| UsageError(format!("invalid --id: {m}")))?;
        }
        Some(e)
    };
    if args.id.is_some() && single.is_none() {
        return Err(UsageError("--id takes a single event (TYPE JSON), not `-`".into()).into());
    }
    let once = args.id.is_some();
    let mut sink = match &args.url {
        Some(url) => Sink::Remote(Remote::new(&cfg, url)?),
        None => {
            let app = crate::app::open(&cfg, false).await?;
            app.bus.start().await?;
            Sink::Local(app)
        }
    };
    let (mut bad_lines, mut published) = (0usize, 0usize);
    let mut all_ok = true;
    // A publish that fails for good (the bus refused, the server is unreachable)
    // ends the input; what was published is still drained and reported.
    let mut fatal = None;
    match single {
        Some(e) => match sink.send(e, once).await {
            Ok(ok) => {
                all_ok &= ok;
                published += 1;
            }
            Err(e) => fatal = Some(e),
        },
        None => {
            let lines = stdin_lines();
            let outcome = match &mut sink {
                Sink::Local(app) => publish_pipelined(app, lines).await,
                Sink::Remote(_) => publish_lines(&mut sink, lines).await,
            };
            published = outcome.published;
            bad_lines = outcome.bad_lines;
            all_ok &= outcome.all_ok;
            fatal = outcome.fatal;
        }
    }
    // One refusal, one exit code: a single event the server refused as invalid
    // exits 2, as one the CLI refuses itself.
    let refused_single = args.event_type != "-"
        && matches!(&sink, Sink::Remote(r) if r.refused.load(std::sync::atomic::Ordering::Relaxed));
    let finished = sink.finish(args.wait).await?;
    if let Some(e) = fatal {
        return Err(e);
    }
    if refused_single {
        return Ok(ExitCode::from(2));
    }
    if bad_lines > 0 {
        eprintln!("pm-events: {bad_lines} line(s) refused, {published} event(s) published");
    }
    Ok(if all_ok && finished && bad_lines == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What became of the lines of stdin.
#[derive(Default)]
struct Outcome {
    published: usize,
    bad_lines: usize,
    all_ok: bool,
    /// The error that ended the input, if one did.
    fatal: Option<anyhow::Error>,
}

/// One `publish -` line read by the door and checked by the CLI's door rules;
/// the message names the problem.
fn read_line(line: &[u8]) -> Result<Event, String> {
    let e = door::line(line).map_err(|e| e.to_string())?;
    handlers::operator_door()
        .check(&e)
        .map_err(|e| e.to_string())?;
    Ok(e)
}

/// Events of `publish -` in flight at once (in-process).
const IN_FLIGHT: usize = 1024;

/// `publish -` in-process: each event is handed over without waiting for its
/// write ([`pm_events::EventBus::publish_pipelined`]), up to [`IN_FLIGHT`] at
/// once, and its id printed, in input order, once it is accepted (its line in
/// the event log).
async fn publish_pipelined(
    app: &App,
    mut lines: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
) -> Outcome {
    let mut out = Outcome {
        all_ok: true,
        ..Outcome::default()
    };
    let mut window: std::collections::VecDeque<pm_events::PublishAck> =
        std::collections::VecDeque::with_capacity(IN_FLIGHT);
    let mut n = 0usize;
    let mut input_open = true;
    while input_open || !window.is_empty() {
        tokio::select! {
            biased;
            accepted = async {
                match window.front_mut() {
                    Some(ack) => ack.await,
                    None => std::future::pending().await,
                }
            }, if !window.is_empty() => {
                window.pop_front();
                match accepted {
                    Ok(id) => {
                        say!("{id}");
                        out.published += 1;
                    }
                    Err(e) => {
                        out.fatal.get_or_insert(e.into());
                        input_open = false;
                    }
                }
            }
            line = lines.recv(), if input_open && out.fatal.is_none() && window.len() < IN_FLIGHT => {
                let Some(line) = line else {
                    input_open = false;
                    continue;
                };
                n += 1;
                let line = match line {
                    Ok(l) => l,
                    Err(e) => {
                        out.fatal = Some(anyhow::Error::new(e).context("read stdin"));
                        input_open = false;
                        continue;
                    }
                };
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match read_line(&line) {
                    Ok(e) => match app.bus.publish_pipelined(e).await {
                        Ok(ack) => window.push_back(ack),
                        Err(e) => {
                            out.fatal = Some(e.into());
                            input_open = false;
                        }
                    },
                    Err(m) => {
                        out.bad_lines += 1;
                        eprintln!("pm-events: line {n}: {m}");
                    }
                }
            }
        }
    }
    out
}

/// `publish -` to a server: one request per line, in order.
async fn publish_lines(
    sink: &mut Sink,
    mut lines: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
) -> Outcome {
    let mut out = Outcome {
        all_ok: true,
        ..Outcome::default()
    };
    let mut n = 0usize;
    while let Some(line) = lines.recv().await {
        n += 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                out.fatal = Some(anyhow::Error::new(e).context("read stdin"));
                break;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match read_line(&line) {
            Ok(e) => match sink.send(e, false).await {
                Ok(ok) => {
                    out.all_ok &= ok;
                    out.published += 1;
                }
                Err(e) => {
                    out.fatal = Some(e);
                    break;
                }
            },
            Err(m) => {
                out.bad_lines += 1;
                eprintln!("pm-events: line {n}: {m}");
            }
        }
    }
    out
}

/// The lines of stdin as bytes (a line that is not UTF-8 is refused on its
/// own, not the end of the input), read by a thread of their own and handed
/// over through a bounded channel (the reader waits while the publisher is behind).
fn stdin_lines() -> tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().split(b'\n') {
            let line = line.map(|mut l| {
                if l.last() == Some(&b'\r') {
                    l.pop();
                }
                l
            });
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Where `publish` sends events: the in-process bus, or a server.
enum Sink {
    Local(App),
    Remote(Remote),
}

impl Sink {
    /// Publishes one event (`once`: unless its id was accepted before):
    /// `Ok(false)` when a server refused it (reported), `Err` when publishing
    /// cannot go on.
    async fn send(&mut self, e: Event, once: bool) -> Result<bool> {
        match self {
            Sink::Local(app) if once => {
                let a = app.bus.publish_once(e).await?;
                say!("{}", a.event_id);
                if a.duplicate {
                    eprintln!(
                        "pm-events: an event with this id was accepted already; nothing was published"
                    );
                }
                Ok(true)
            }
            Sink::Local(app) => {
                let id = app.bus.publish_event(e).await?;
                say!("{id}");
                Ok(true)
            }
            Sink::Remote(r) => r.send(&e, once).await,
        }
    }

    /// In-process: stops the bus (every published event handled) and waits for
    /// the webhook deliveries, up to `wait`; `false` if any of that failed.
    async fn finish(self, wait: Duration) -> Result<bool> {
        let Sink::Local(app) = self else {
            return Ok(true);
        };
        let bus = app.bus.clone();
        let log_dir = app.log_dir.clone();
        let outcome = crate::app::stop(app, wait).await?;
        let delivered = report(outcome, &log_dir);
        let st = bus.stats();
        // Each failed handler run has said so in its own line.
        let failed = st.failed + st.panicked + st.timed_out;
        Ok(delivered && failed == 0)
    }
}

/// A running `pm-events serve`: `POST /events`.
struct Remote {
    client: reqwest::Client,
    endpoint: String,
    token: Option<pm_events::config::Secret>,
    /// Set when the server answered 400: it refused an event as invalid.
    refused: std::sync::atomic::AtomicBool,
}

impl Remote {
    fn new(cfg: &Config, url: &str) -> Result<Self> {
        let parsed = reqwest::Url::parse(url).map_err(|e| {
            UsageError(format!(
                "--url {url:?} is not a URL ({e}); give the server's base URL, e.g. http://127.0.0.1:8787"
            ))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(UsageError(format!(
                "--url {url:?}: expected an http:// or https:// base URL, e.g. http://127.0.0.1:8787"
            ))
            .into());
        }
        Ok(Remote {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            endpoint: format!("{}/events", url.trim_end_matches('/')),
            token: cfg.api_token.clone(),
            refused: std::sync::atomic::AtomicBool::new(false),
        })
    }

    async fn send(&self, e: &Event, once: bool) -> Result<bool> {
        let endpoint = &self.endpoint;
        let mut body =
            serde_json::json!({"type": e.event_type, "data": e.data, "source": e.source});
        if once {
            body["event_id"] = e.event_id.clone().into();
        }
        let mut req = self
            .client
            .post(endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body)?);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        let resp = req.send().await.map_err(|e| {
            let hint = if e.is_connect() {
                "; is `pm-events serve` running there?"
            } else {
                ""
            };
            anyhow::anyhow!(
                "cannot reach {endpoint}: {}{hint}",
                pm_events::error::chain(&e.without_url())
            )
        })?;
        let status = resp.status();
        let v: Value = resp
            .text()
            .await
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        if status.is_success() {
            say!("{}", v["event_id"].as_str().unwrap_or(""));
            if v["duplicate"] == true {
                eprintln!(
                    "pm-events: an event with this id was accepted already; nothing was published"
                );
            }
            Ok(true)
        } else {
            eprintln!(
                "pm-events: {endpoint} answered {}: {}",
                status.as_u16(),
                v["message"].as_str().unwrap_or("(no message)")
            );
            // The server refused the event itself: as the CLI's own refusal, exit 2.
            if status == reqwest::StatusCode::BAD_REQUEST {
                self.refused
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(false)
        }
    }
}
