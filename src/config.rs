//! Configuration from the environment (docs/configuration.md), validated once at
//! start-up. An invalid value is a [`ConfigError`] naming the variable, the value
//! and what was expected; secrets are never echoed back.
//!
//! An empty variable counts as unset. A CLI flag, where one exists, is applied by
//! the binary on top of what [`Config::from_env`] returns.

use crate::error::ConfigError;
pub use crate::secret::Secret;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// When the event log calls `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Never: lines reach the OS with one `write(2)` per batch before `publish`
    /// returns; the OS writes them to disk when it likes (and at `stop`).
    Never,
    /// Group commit (the default): one `write(2)` per batch of concurrent
    /// publishes before they return, and an `fdatasync` at most every
    /// [`BATCH_FSYNC_INTERVAL`] while unsynced lines exist. A process crash loses
    /// nothing accepted; a power loss at most that interval.
    #[default]
    Batch,
    /// `fdatasync` after every batch, before the publishes in it return.
    Always,
}

/// How long the `batch` policy lets written lines wait for their `fdatasync`.
pub const BATCH_FSYNC_INTERVAL: Duration = Duration::from_millis(100);

impl std::str::FromStr for FsyncPolicy {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "never" => Ok(FsyncPolicy::Never),
            "batch" => Ok(FsyncPolicy::Batch),
            "always" => Ok(FsyncPolicy::Always),
            _ => Err(()),
        }
    }
}

/// The default of `PM_MAX_BODY_BYTES`: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Every setting of pm-events, with the defaults of docs/configuration.md.
#[derive(Debug, Clone)]
pub struct Config {
    /// `PM_LOG_DIR`: root of every log file and of durable state.
    pub log_dir: PathBuf,
    /// `PM_QUEUE_CAPACITY`: events accepted but not yet handled, at most.
    pub queue_capacity: usize,
    /// `PM_HANDLER_TIMEOUT_SECS`: time limit of one handler on one event.
    pub handler_timeout: Duration,
    /// `PM_FSYNC`: `never`, `batch` or `always`.
    pub fsync: FsyncPolicy,
    /// `PM_LOG_MAX_BYTES`: size at which a handler `.jsonl` file is rotated.
    pub log_max_bytes: u64,
    /// `PM_LOG_KEEP`: rotated handler log files kept (`file.jsonl.1` .. `.N`).
    pub log_keep: usize,
    /// `WEBHOOK_SIGNATURE_SECRET` (used exactly as configured, spaces included),
    /// then `PM_WEBHOOK_PREVIOUS_SECRET` if set: the first signs, any verifies.
    pub webhook_secrets: Vec<Secret>,
    /// `PM_ALLOW_UNSIGNED`: allow webhook delivery without a secret.
    pub allow_unsigned: bool,
    /// `WEBHOOK_TIMEOUT_SECS`: time limit of one outgoing delivery attempt.
    pub webhook_timeout: Duration,
    /// `WEBHOOK_MAX_RETRIES`: retries after the first attempt.
    pub webhook_max_retries: u32,
    /// `WEBHOOK_BACKOFF_BASE_MS`: base of the exponential retry schedule.
    pub webhook_backoff_base: Duration,
    /// `PM_WEBHOOK_CONCURRENCY`: concurrent requests per webhook endpoint.
    pub webhook_concurrency: usize,
    /// Webhook routes: the specification's `*_WEBHOOK_URL` variables, keyed by the
    /// variable's name, and `PM_WEBHOOK_URL_<TYPE>` keyed by that variable's name too.
    pub webhook_urls: BTreeMap<String, String>,
    /// `PM_BIND`: the address `serve` listens on.
    pub bind: SocketAddr,
    /// `PM_API_TOKEN`: bearer token required by `POST /events`.
    pub api_token: Option<Secret>,
    /// `PM_MAX_BODY_BYTES`: incoming HTTP body limit.
    pub max_body_bytes: usize,
    /// `PM_SMTP_URL`: SMTP server for report distribution.
    pub smtp_url: Option<String>,
    /// `PM_MAIL_FROM`: sender of report e-mail.
    pub mail_from: String,
    /// `PM_REPORT_AUTO_DISTRIBUTE`: e-mail reports to their recipients.
    pub report_auto_distribute: bool,
    /// `PM_NATS_URL`: run the bus over NATS JetStream.
    pub nats_url: Option<String>,
    /// `PM_CONSUMER_GROUP`: durable consumer shared by cooperating processes.
    pub consumer_group: String,
    /// `PM_FILE_ROOTS`: the directories (separated by `:`) whose files events
    /// that arrive over HTTP may name; none by default.
    pub file_roots: Vec<PathBuf>,
    /// `PM_MAIL_ALLOWED_DOMAINS`: the only (lower-case) domains report mail may
    /// go to, when set (comma-separated).
    pub mail_allowed_domains: Option<Vec<String>>,
    /// `PM_NODE_ID`: this process's name in the group (default: host name).
    pub node_id: String,
    /// `PM_ENDPOINT_ALLOW_NETS`: networks (comma-separated CIDRs) managed endpoints
    /// may reach although they are loopback, private, link-local, shared,
    /// unspecified, broadcast or multicast; none by default.
    pub endpoint_allow_nets: Vec<ipnet::IpNet>,
    /// `PM_ENDPOINT_DISABLE_AFTER`: a managed endpoint failing without a success for
    /// this long is disabled (default 5 days).
    pub endpoint_disable_after: Duration,
}

/// The specification's webhook URL variables.
pub const ROUTE_VARIABLES: [&str; 7] = {
    let t = ROUTE_TABLE;
    [
        t[0].name, t[1].name, t[2].name, t[3].name, t[4].name, t[5].name, t[6].name,
    ]
};

/// One route variable of the specification and the events it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteVariable {
    /// The variable.
    pub name: &'static str,
    /// The event type it takes.
    pub event_type: &'static str,
    /// For risk alerts: the `data.severity` it takes (`None`: any).
    pub severity: Option<&'static str>,
}

impl RouteVariable {
    /// The payload filter it amounts to (`{"data.severity": ...}`), if any.
    pub fn filter(&self) -> Option<serde_json::Value> {
        self.severity
            .map(|s| serde_json::json!({ "data.severity": s }))
    }
}

const fn var(
    name: &'static str,
    event_type: &'static str,
    severity: Option<&'static str>,
) -> RouteVariable {
    RouteVariable {
        name,
        event_type,
        severity,
    }
}

/// The route variables, in the order they are tried.
pub const ROUTE_TABLE: [RouteVariable; 7] = [
    var("FILE_CHANGE_WEBHOOK_URL", "file_change", None),
    var("REPORT_READY_WEBHOOK_URL", "report_ready", None),
    var("CRITICAL_ALERT_WEBHOOK_URL", "risk_alert", Some("critical")),
    var("HIGH_ALERT_WEBHOOK_URL", "risk_alert", Some("high")),
    var("MEDIUM_ALERT_WEBHOOK_URL", "risk_alert", Some("medium")),
    var("LOW_ALERT_WEBHOOK_URL", "risk_alert", Some("low")),
    var("DEFAULT_RISK_WEBHOOK_URL", "risk_alert", None),
];

/// The table entry of the variable `name`, if it is one of the table's.
pub fn table_entry(name: &str) -> Option<&'static RouteVariable> {
    ROUTE_TABLE.iter().find(|v| v.name == name)
}

/// A bad `PM_ENDPOINT_ALLOW_NETS` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a CIDR network (such as 127.0.0.0/8 or fd00::/8)")]
pub struct BadNet(pub String);

/// Parses `PM_ENDPOINT_ALLOW_NETS`: comma-separated CIDRs (a bare address is its /32 or /128).
pub fn parse_nets(text: &str) -> Result<Vec<ipnet::IpNet>, BadNet> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| BadNet(s.to_string()))
        })
        .collect()
}

/// `WEBHOOK_MAX_RETRIES`: retries of a delivery after its first attempt.
pub const WEBHOOK_MAX_RETRIES: &str = "WEBHOOK_MAX_RETRIES";

/// `WEBHOOK_TIMEOUT_SECS`: time limit of one delivery attempt.
pub const WEBHOOK_TIMEOUT_SECS: &str = "WEBHOOK_TIMEOUT_SECS";

/// Every setting variable read by [`Config::from_vars`] (the route variables and
/// `PM_WEBHOOK_URL_<TYPE>` aside). A `PM_` or `WEBHOOK_` variable not in it is
/// a likely typo: [`Config::from_env`] warns of it, naming the nearest.
pub const SETTING_VARIABLES: &[&str] = &[
    "PM_LOG_DIR",
    "PM_QUEUE_CAPACITY",
    "PM_HANDLER_TIMEOUT_SECS",
    "PM_FSYNC",
    "PM_LOG_MAX_BYTES",
    "PM_LOG_KEEP",
    "WEBHOOK_SIGNATURE_SECRET",
    "PM_WEBHOOK_PREVIOUS_SECRET",
    "PM_FILE_ROOTS",
    "PM_MAIL_ALLOWED_DOMAINS",
    "PM_ALLOW_UNSIGNED",
    "PM_ENDPOINT_DISABLE_AFTER",
    "PM_ENDPOINT_ALLOW_NETS",
    WEBHOOK_TIMEOUT_SECS,
    WEBHOOK_MAX_RETRIES,
    "WEBHOOK_BACKOFF_BASE_MS",
    "PM_WEBHOOK_CONCURRENCY",
    "PM_BIND",
    "PM_API_TOKEN",
    "PM_MAX_BODY_BYTES",
    "PM_SMTP_URL",
    "PM_MAIL_FROM",
    "PM_REPORT_AUTO_DISTRIBUTE",
    "PM_NATS_URL",
    "PM_CONSUMER_GROUP",
    "PM_NODE_ID",
];

/// The known variable nearest to `name`: the same words in another order or
/// with a prefix more or less (`PM_WEBHOOK_MAX_RETRIES` → `WEBHOOK_MAX_RETRIES`).
fn nearest_variable(name: &str) -> Option<&'static str> {
    let words = |n: &str| -> Vec<String> {
        let mut w: Vec<String> = n
            .split('_')
            .filter(|w| !w.is_empty() && *w != "PM" && *w != "SECS")
            .map(str::to_string)
            .collect();
        w.sort();
        w
    };
    let mine = words(name);
    SETTING_VARIABLES.iter().copied().find(|k| words(k) == mine)
}

/// Prefix of the route variables for other event types.
pub const CUSTOM_WEBHOOK_PREFIX: &str = "PM_WEBHOOK_URL_";

impl Default for Config {
    fn default() -> Self {
        Config {
            log_dir: PathBuf::from("./logs"),
            queue_capacity: 10_000,
            handler_timeout: Duration::from_secs(30),
            fsync: FsyncPolicy::Batch,
            log_max_bytes: 100 * 1024 * 1024,
            log_keep: 5,
            webhook_secrets: Vec::new(),
            allow_unsigned: false,
            webhook_timeout: Duration::from_secs(10),
            webhook_max_retries: 5,
            webhook_backoff_base: Duration::from_millis(1000),
            webhook_concurrency: 16,
            webhook_urls: BTreeMap::new(),
            bind: SocketAddr::from(([127, 0, 0, 1], 8787)),
            api_token: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            smtp_url: None,
            mail_from: "pm-events <pm-events@localhost>".into(),
            report_auto_distribute: true,
            nats_url: None,
            consumer_group: "pm-events".into(),
            node_id: default_node_id(),
            file_roots: Vec::new(),
            endpoint_allow_nets: Vec::new(),
            endpoint_disable_after: Duration::from_secs(5 * 24 * 3600),
            mail_allowed_domains: None,
        }
    }
}

fn default_node_id() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "pm-events".into())
}

fn err(var: &str, value: &str, expected: &str) -> ConfigError {
    ConfigError {
        var: var.into(),
        value: value.into(),
        expected: expected.into(),
    }
}

/// A signing secret from `var`, exactly as configured; a `whsec_` one must carry base64.
fn secret(var: &str, value: &str) -> Result<Secret, ConfigError> {
    let s = Secret::new(value);
    match s.standard_key() {
        Ok(_) => Ok(s),
        Err(e) => Err(err(var, "<a secret starting with whsec_>", &e.to_string())),
    }
}

struct Vars(HashMap<String, String>);

impl Vars {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn parse<T: std::str::FromStr>(
        &self,
        name: &str,
        expected: &str,
        ok: impl Fn(&T) -> bool,
    ) -> Result<Option<T>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.trim().parse::<T>() {
                Ok(t) if ok(&t) => Ok(Some(t)),
                _ => Err(err(name, v, expected)),
            },
        }
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(Some(true)),
                "0" | "false" | "no" | "off" => Ok(Some(false)),
                _ => Err(err(name, v, "a boolean (true/false, 1/0, yes/no, on/off)")),
            },
        }
    }

    fn secs(&self, name: &str) -> Result<Option<Duration>, ConfigError> {
        Ok(self
            .parse::<f64>(name, "a positive number of seconds", |s| {
                s.is_finite() && *s > 0.0 && *s <= 86_400.0 * 365.0
            })?
            .map(Duration::from_secs_f64))
    }

    fn url(&self, name: &str, schemes: &[&str]) -> Result<Option<String>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => {
                let v = v.trim();
                let ok = schemes.iter().any(|s| {
                    v.strip_prefix(s)
                        .and_then(|rest| rest.strip_prefix("://"))
                        .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
                });
                if ok {
                    Ok(Some(v.to_string()))
                } else {
                    let expected = format!(
                        "a URL starting with {}",
                        schemes
                            .iter()
                            .map(|s| format!("{s}://"))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    );
                    Err(err(name, v, &expected))
                }
            }
        }
    }
}

impl Config {
    /// Reads and validates the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        let mut vars = Vec::new();
        for (k, v) in std::env::vars_os() {
            let Some(k) = k.to_str().map(str::to_string) else {
                continue;
            };
            if k.ends_with("_WEBHOOK_URL") && !ROUTE_VARIABLES.contains(&k.as_str()) {
                tracing::warn!(
                    variable = %k,
                    "not used: it looks like a webhook route, but the routes are {} and PM_WEBHOOK_URL_<TYPE>",
                    ROUTE_VARIABLES.join(", ")
                );
            }
            if !is_ours(&k) {
                continue;
            }
            if !SETTING_VARIABLES.contains(&k.as_str())
                && !ROUTE_VARIABLES.contains(&k.as_str())
                && !k.starts_with(CUSTOM_WEBHOOK_PREFIX)
                && let Some(near) = nearest_variable(&k)
            {
                tracing::warn!(variable = %k, "not a pm-events setting, so it is not used; did you mean {near}?");
            }
            match v.into_string() {
                Ok(v) => vars.push((k, v)),
                Err(_) => return Err(err(&k, "<not UTF-8>", "a UTF-8 value")),
            }
        }
        Config::from_vars(vars)
    }

    /// Reads and validates the configuration from the given `(name, value)` pairs;
    /// names that are not pm-events settings are ignored.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let v = Vars(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        let mut c = Config::default();
        if let Some(d) = v.get("PM_LOG_DIR") {
            c.log_dir = PathBuf::from(d);
        }
        if let Some(n) = v.parse(
            "PM_QUEUE_CAPACITY",
            "an integer from 1 to 10000000",
            |n: &usize| (1..=10_000_000).contains(n),
        )? {
            c.queue_capacity = n;
        }
        if let Some(d) = v.secs("PM_HANDLER_TIMEOUT_SECS")? {
            c.handler_timeout = d;
        }
        if let Some(s) = v.get("PM_FSYNC") {
            c.fsync = s
                .trim()
                .parse()
                .map_err(|_| err("PM_FSYNC", s, "one of never, batch, always"))?;
        }
        if let Some(n) = v.parse(
            "PM_LOG_MAX_BYTES",
            "an integer of at least 1024 (bytes)",
            |n: &u64| *n >= 1024,
        )? {
            c.log_max_bytes = n;
        }
        if let Some(n) = v.parse("PM_LOG_KEEP", "an integer from 1 to 1000", |n: &usize| {
            (1..=1000).contains(n)
        })? {
            c.log_keep = n;
        }
        if let Some(s) = v.get("WEBHOOK_SIGNATURE_SECRET") {
            // One secret, used exactly as configured (spaces included).
            c.webhook_secrets = vec![secret("WEBHOOK_SIGNATURE_SECRET", s)?];
            if let Some(p) = v.get("PM_WEBHOOK_PREVIOUS_SECRET") {
                c.webhook_secrets
                    .push(secret("PM_WEBHOOK_PREVIOUS_SECRET", p)?);
            }
        } else if v.get("PM_WEBHOOK_PREVIOUS_SECRET").is_some() {
            return Err(err(
                "PM_WEBHOOK_PREVIOUS_SECRET",
                "<set>",
                "WEBHOOK_SIGNATURE_SECRET to be set too (the previous secret is only accepted beside a current one)",
            ));
        }
        if let Some(b) = v.bool("PM_ALLOW_UNSIGNED")? {
            c.allow_unsigned = b;
        }
        if let Some(d) = v.secs(WEBHOOK_TIMEOUT_SECS)? {
            c.webhook_timeout = d;
        }
        if let Some(n) = v.parse(
            WEBHOOK_MAX_RETRIES,
            "an integer from 0 to 100",
            |n: &u32| *n <= 100,
        )? {
            c.webhook_max_retries = n;
        }
        if let Some(n) = v.parse(
            "WEBHOOK_BACKOFF_BASE_MS",
            "an integer from 1 to 3600000 (milliseconds)",
            |n: &u64| (1..=3_600_000).contains(n),
        )? {
            c.webhook_backoff_base = Duration::from_millis(n);
        }
        if let Some(n) = v.parse(
            "PM_WEBHOOK_CONCURRENCY",
            "an integer from 1 to 1024",
            |n: &usize| (1..=1024).contains(n),
        )? {
            c.webhook_concurrency = n;
        }
        let mut names: Vec<&String> =
            v.0.keys()
                .filter(|k| {
                    ROUTE_VARIABLES.contains(&k.as_str()) || k.starts_with(CUSTOM_WEBHOOK_PREFIX)
                })
                .collect();
        names.sort();
        for name in names {
            if let Some(suffix) = name.strip_prefix(CUSTOM_WEBHOOK_PREFIX)
                && suffix.chars().any(|c| c.is_ascii_lowercase())
            {
                // Route variables are upper case; this one would never be looked up.
                tracing::warn!(
                    variable = %name,
                    "not used: route variables are upper case ({CUSTOM_WEBHOOK_PREFIX}{})",
                    suffix.to_ascii_uppercase().replace(['.', '-'], "_")
                );
                continue;
            }
            if let Some(suffix) = name.strip_prefix(CUSTOM_WEBHOOK_PREFIX)
                && crate::event::validate_type(&suffix.to_ascii_lowercase()).is_err()
            {
                return Err(err(
                    name,
                    "",
                    "PM_WEBHOOK_URL_<TYPE> with TYPE made of letters, digits, '_' and '-'",
                ));
            }
            if let Some(url) = v.url(name, &["http", "https"])? {
                c.webhook_urls.insert(name.clone(), url);
            }
        }
        if let Some(s) = v.get("PM_BIND") {
            c.bind = resolve_bind(s).map_err(|e| err("PM_BIND", s, &e))?;
        }
        c.api_token = v.get("PM_API_TOKEN").map(Secret::new);
        if let Some(n) = v.parse(
            "PM_MAX_BODY_BYTES",
            "an integer from 1024 to 1073741824 (bytes)",
            |n: &usize| (1024..=1 << 30).contains(n),
        )? {
            c.max_body_bytes = n;
        }
        c.smtp_url = v.url("PM_SMTP_URL", &["smtp", "smtps"])?;
        if let Some(f) = v.get("PM_MAIL_FROM") {
            if f.parse::<lettre::message::Mailbox>().is_err() {
                return Err(err(
                    "PM_MAIL_FROM",
                    f,
                    "an e-mail address, optionally with a name: Name <user@host>",
                ));
            }
            c.mail_from = f.to_string();
        }
        if let Some(b) = v.bool("PM_REPORT_AUTO_DISTRIBUTE")? {
            c.report_auto_distribute = b;
        }
        c.nats_url = v.url("PM_NATS_URL", &["nats", "tls"])?;
        if let Some(g) = v.get("PM_CONSUMER_GROUP") {
            if crate::event::validate_type(g).is_err() {
                return Err(err(
                    "PM_CONSUMER_GROUP",
                    g,
                    "a name of letters, digits, '_' and '-'",
                ));
            }
            c.consumer_group = g.to_string();
        }
        if let Some(n) = v.get("PM_NODE_ID") {
            c.node_id = n.to_string();
        }
        if let Some(d) = v.get("PM_ENDPOINT_DISABLE_AFTER") {
            c.endpoint_disable_after = humantime::parse_duration(d.trim())
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    err(
                        "PM_ENDPOINT_DISABLE_AFTER",
                        d,
                        "a duration such as 5d, 12h or 30m",
                    )
                })?;
        }
        if let Some(nets) = v.get("PM_ENDPOINT_ALLOW_NETS") {
            c.endpoint_allow_nets = parse_nets(nets).map_err(|e| {
                err(
                    "PM_ENDPOINT_ALLOW_NETS",
                    &e.0,
                    "comma-separated CIDR networks such as 127.0.0.0/8,fd00::/8",
                )
            })?;
        }
        if let Some(roots) = v.get("PM_FILE_ROOTS") {
            c.file_roots = std::env::split_paths(roots)
                .filter(|p| !p.as_os_str().is_empty())
                .collect();
        }
        if let Some(list) = v.get("PM_MAIL_ALLOWED_DOMAINS") {
            let domains: Vec<String> = list
                .split(',')
                .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
                .filter(|d| !d.is_empty())
                .collect();
            if let Some(d) = domains.iter().find(|d| {
                !d.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            }) {
                return Err(err(
                    "PM_MAIL_ALLOWED_DOMAINS",
                    d,
                    "domain names separated by commas, like example.com,example.org",
                ));
            }
            c.mail_allowed_domains = Some(domains);
        }
        Ok(c)
    }

    /// The configured URL for the webhook route variable `name`, if any.
    pub fn webhook_url(&self, name: &str) -> Option<&str> {
        self.webhook_urls.get(name).map(String::as_str)
    }
}

fn is_ours(name: &str) -> bool {
    name.starts_with("PM_") || name.starts_with("WEBHOOK_") || ROUTE_VARIABLES.contains(&name)
}

/// A listening address from `host:port`: an IP address (`127.0.0.1:8787`,
/// `[::1]:8787`) or a host name (`localhost:8787`), resolved once (an IPv4
/// address preferred, as `localhost` usually means 127.0.0.1).
pub fn resolve_bind(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let s = s.trim();
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let expected =
        || "a host (or IP address) and port, like 127.0.0.1:8787 or localhost:8787".to_string();
    if !s.contains(':') {
        return Err(expected());
    }
    let addrs: Vec<_> = s.to_socket_addrs().map_err(|_| expected())?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_setting_is_matched_to_the_real_one() {
        assert_eq!(
            nearest_variable("PM_WEBHOOK_MAX_RETRIES"),
            Some("WEBHOOK_MAX_RETRIES")
        );
        assert_eq!(
            nearest_variable("PM_WEBHOOK_TIMEOUT"),
            Some("WEBHOOK_TIMEOUT_SECS")
        );
        assert_eq!(nearest_variable("PM_TEST_PYTHON"), None);
    }

    #[test]
    fn defaults_match_the_design() {
        let c = Config::from_vars(Vec::<(String, String)>::new()).unwrap();
        assert_eq!(c.log_dir, PathBuf::from("./logs"));
        assert_eq!(c.queue_capacity, 10_000);
        assert_eq!(c.handler_timeout, Duration::from_secs(30));
        assert_eq!(c.fsync, FsyncPolicy::Batch);
        assert_eq!(c.bind.to_string(), "127.0.0.1:8787");
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert!(c.report_auto_distribute);
        assert_eq!(c.consumer_group, "pm-events");
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        for (k, v) in [
            ("PM_QUEUE_CAPACITY", "lots"),
            ("PM_QUEUE_CAPACITY", "0"),
            ("PM_HANDLER_TIMEOUT_SECS", "-1"),
            ("PM_FSYNC", "sometimes"),
            ("PM_BIND", "localhost"),
            ("WEBHOOK_MAX_RETRIES", "many"),
            ("FILE_CHANGE_WEBHOOK_URL", "ftp://x"),
            ("PM_WEBHOOK_URL_DEPLOYMENT", "not a url"),
            ("PM_ALLOW_UNSIGNED", "perhaps"),
            ("PM_SMTP_URL", "http://x"),
            ("PM_MAIL_FROM", "not an address"),
            ("PM_WEBHOOK_CONCURRENCY", "0"),
        ] {
            let e = Config::from_vars([(k, v)]).unwrap_err();
            assert_eq!(e.var, k);
            assert!(e.to_string().contains(k), "{e}");
        }
    }

    #[test]
    fn secrets_are_not_echoed() {
        let e = Config::from_vars([("WEBHOOK_SIGNATURE_SECRET", "whsec_!!!!hunter2")]).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let c = Config::from_vars([("WEBHOOK_SIGNATURE_SECRET", "s3cret other")]).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn the_signing_secret_is_used_exactly_and_rotation_has_its_own_variable() {
        let c = Config::from_vars([("WEBHOOK_SIGNATURE_SECRET", " It's a Secret to Everybody ")])
            .unwrap();
        assert_eq!(c.webhook_secrets.len(), 1);
        assert_eq!(
            c.webhook_secrets[0].expose(),
            " It's a Secret to Everybody "
        );
        let c = Config::from_vars([
            ("WEBHOOK_SIGNATURE_SECRET", "new one"),
            ("PM_WEBHOOK_PREVIOUS_SECRET", "old one"),
        ])
        .unwrap();
        let got: Vec<&str> = c.webhook_secrets.iter().map(|s| s.expose()).collect();
        assert_eq!(got, ["new one", "old one"]);
        let e = Config::from_vars([("PM_WEBHOOK_PREVIOUS_SECRET", "old")]).unwrap_err();
        assert_eq!(e.var, "PM_WEBHOOK_PREVIOUS_SECRET");
    }

    #[test]
    fn routes_are_collected() {
        let c = Config::from_vars([
            ("FILE_CHANGE_WEBHOOK_URL", "http://127.0.0.1:9/files"),
            ("PM_WEBHOOK_URL_DEPLOYMENT", "https://example.test/d"),
            ("UNRELATED", "x"),
        ])
        .unwrap();
        assert_eq!(
            c.webhook_url("FILE_CHANGE_WEBHOOK_URL"),
            Some("http://127.0.0.1:9/files")
        );
        assert_eq!(
            c.webhook_url("PM_WEBHOOK_URL_DEPLOYMENT"),
            Some("https://example.test/d")
        );
    }
}
