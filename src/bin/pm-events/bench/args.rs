//! The arguments of `pm-events bench`.

/// Arguments of `bench`.
#[derive(clap::Args)]
pub struct Args {
    /// What to measure.
    #[arg(value_enum, default_value = "bus")]
    pub(super) what: What,
    /// Events per throughput run.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) events: u64,
    /// Concurrent publisher tasks (the baselines use the same number of senders).
    #[arg(long, default_value_t = 8)]
    pub(crate) publishers: u64,
    /// Rate of the latency run, events per second.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) rate: u64,
    /// Length of the latency run, seconds.
    #[arg(long, default_value_t = 3)]
    pub(crate) seconds: u64,
    /// Events of the memory burst.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) burst: u64,
    /// Webhook deliveries per run (`bench webhooks`).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) deliveries: u64,
    /// Concurrent requests (`bench webhooks`): the engine's per-endpoint bound and the baseline's.
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: usize,
    /// Rounds of the throughput runs (`bench bus`, `bench webhooks`: every run in
    /// turn, medians reported).
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
    /// `bench recovery`: sizes of the handled logs to start on.
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
    pub(crate) handled: Vec<u64>,
    /// Run only the bus with the log on (for profiling).
    #[arg(long, hide = true)]
    pub(crate) only_log_on: bool,
    /// Run only the bus with the log off (for profiling).
    #[arg(long, hide = true)]
    pub(crate) only_log_off: bool,
    /// Run only the pipelined publish (for profiling).
    #[arg(long, hide = true)]
    pub(crate) only_pipelined: bool,
    /// `bench webhooks`: managed endpoints of the fan-out run (each its own receiver).
    #[arg(long, default_value_t = 10)]
    pub(crate) endpoints: usize,
    /// `bench webhooks`: events per second of the latency run.
    #[arg(long, default_value_t = 500)]
    pub(crate) webhook_rate: u64,
    /// Run only the engine of `bench webhooks` (for profiling).
    #[arg(long, hide = true)]
    pub(crate) only_engine: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum What {
    /// The event bus and its write-ahead log.
    Bus,
    /// Signed, durable webhook deliveries against bare HTTP POSTs.
    Webhooks,
    /// Signed incoming webhooks through `serve` against a bare axum route.
    Serve,
    /// Crash recovery: re-dispatch of unhandled events, start-up on a large handled log.
    Recovery,
}
