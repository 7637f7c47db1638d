//! The delivery engine's settings.

use crate::config::{Config, FsyncPolicy};
use std::path::PathBuf;
use std::time::Duration;

/// Settings of the delivery engine.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Retries after the first attempt (`WEBHOOK_MAX_RETRIES`).
    pub max_retries: u32,
    /// Time limit of one attempt (`WEBHOOK_TIMEOUT_SECS`).
    pub timeout: Duration,
    /// Base of the backoff (`WEBHOOK_BACKOFF_BASE_MS`).
    pub backoff_base: Duration,
    /// Longest backoff (5 minutes).
    pub backoff_cap: Duration,
    /// Concurrent requests per endpoint (`PM_WEBHOOK_CONCURRENCY`).
    pub per_endpoint: usize,
    /// Deliver without a signature when no secret is set (`PM_ALLOW_UNSIGNED`).
    pub allow_unsigned: bool,
    /// Log directory: the outbox and the logs live in `<log dir>/webhooks/`.
    pub log_dir: PathBuf,
    /// Sync policy of the outbox and logs.
    pub fsync: FsyncPolicy,
    /// Handler log rotation size and count.
    pub log_max_bytes: u64,
    /// Rotated files kept.
    pub log_keep: usize,
    /// This process's name in the attempt and dead-letter logs (`PM_NODE_ID`,
    /// default the host name): with NATS, any node may make an attempt.
    pub node: String,
    /// Most deliveries of one endpoint held in memory at once (queued, in flight
    /// or waiting for a retry); the others wait in the outbox until room is made
    /// ([`DEFAULT_WINDOW`]).
    pub window: usize,
    /// A managed endpoint failing without a success for this long is disabled
    /// (`PM_ENDPOINT_DISABLE_AFTER`).
    pub disable_after: Duration,
}

/// Default of [`DeliveryConfig::window`]: about 10 MB of memory per endpoint.
pub const DEFAULT_WINDOW: usize = 4096;

/// Longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

impl DeliveryConfig {
    /// The engine settings of `config`.
    pub fn from_config(c: &Config) -> Self {
        DeliveryConfig {
            max_retries: c.webhook_max_retries,
            timeout: c.webhook_timeout,
            backoff_base: c.webhook_backoff_base,
            backoff_cap: Duration::from_secs(300),
            per_endpoint: c.webhook_concurrency,
            allow_unsigned: c.allow_unsigned,
            log_dir: c.log_dir.clone(),
            fsync: c.fsync,
            log_max_bytes: c.log_max_bytes,
            log_keep: c.log_keep,
            node: c.node_id.clone(),
            disable_after: c.endpoint_disable_after,
            window: DEFAULT_WINDOW,
        }
    }
}
