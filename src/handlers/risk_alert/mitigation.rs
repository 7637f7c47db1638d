//! Mitigation steps: the executors registered by step name, and running an
//! alert's steps through them.

use super::payload::RiskAlert;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// A mitigation step's implementation: gets the alert, returns what it did or why it failed.
pub type MitigationFn = Arc<dyn Fn(&RiskAlert) -> Result<String, String> + Send + Sync>;

/// The registered mitigation step implementations, by step name.
#[derive(Default, Clone)]
pub struct MitigationExecutor {
    steps: HashMap<String, MitigationFn>,
}

impl MitigationExecutor {
    /// Registers `f` for the step `name`.
    pub fn register(
        &mut self,
        name: impl Into<String>,
        f: impl Fn(&RiskAlert) -> Result<String, String> + Send + Sync + 'static,
    ) {
        self.steps.insert(name.into(), Arc::new(f));
    }

    /// Runs every step of `alert`: `{step, status: executed | failed | skipped, detail}`.
    pub fn run(&self, alert: &RiskAlert) -> Vec<Value> {
        alert
            .mitigation_steps
            .iter()
            .map(|step| match self.steps.get(step) {
                Some(f) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(alert))) {
                    Ok(Ok(detail)) => json!({"step": step, "status": "executed", "detail": detail}),
                    Ok(Err(e)) => json!({"step": step, "status": "failed", "detail": e}),
                    Err(_) => json!({"step": step, "status": "failed", "detail": "the executor panicked"}),
                },
                None => {
                    tracing::info!(alert_id = %alert.alert_id, step = %step, "mitigation step logged (no executor registered)");
                    json!({"step": step, "status": "skipped", "detail": "no executor registered; logged only"})
                }
            })
            .collect()
    }
}
