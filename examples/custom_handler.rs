//! A handler with state and a name of its own, subscribed with a filter so it
//! only ever sees the events it wants.
//!
//! ```bash
//! cargo run --example custom_handler
//! ```

use pm_events::{Event, EventBus, Handler, HandlerError};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts failed deployments per run and refuses events without a service.
#[derive(Default)]
struct DeploymentWatcher {
    failures: AtomicU64,
}

#[async_trait::async_trait]
impl Handler for DeploymentWatcher {
    async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        let service = event.data["service"]
            .as_str()
            .ok_or("data.service: expected a string")?;
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        println!("{service} failed to deploy ({n} failure(s) so far)");
        Ok(())
    }

    fn name(&self) -> &str {
        "deployment-watcher"
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let bus = EventBus::builder().log_dir(dir.path()).build();
    let watcher = std::sync::Arc::new(DeploymentWatcher::default());
    // Only failed deployments reach the handler; the filter runs in the dispatcher.
    bus.subscribe_arc_filtered(
        "deployment",
        |e| e.data["status"] == "failed",
        watcher.clone(),
    );
    bus.start().await?;
    for (service, status) in [("api", "success"), ("web", "failed"), ("db", "failed")] {
        bus.publish("deployment", json!({"service": service, "status": status}))
            .await?;
    }
    // A handler error is logged with the event id and counted; the bus goes on.
    bus.publish("deployment", json!({"status": "failed"}))
        .await?;
    bus.stop().await?;
    let stats = bus.stats();
    println!(
        "handled {}, failed {}, failures counted {}",
        stats.handled,
        stats.failed,
        watcher.failures.load(Ordering::Relaxed)
    );
    Ok(())
}
