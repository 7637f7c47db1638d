//! The same bus API over NATS JetStream: events go to the stream `PM_EVENTS`,
//! and every process of one consumer group shares the work.
//!
//! ```bash
//! nats-server -js &            # or any JetStream server
//! PM_NATS_URL=nats://127.0.0.1:4222 cargo run --example nats
//! ```

use pm_events::transport::NatsTransport;
use pm_events::{Event, EventBus};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Ok(url) = std::env::var("PM_NATS_URL") else {
        eprintln!("set PM_NATS_URL (e.g. nats://127.0.0.1:4222) to a JetStream server");
        return Ok(());
    };
    // ack_wait above the handler timeout: how long an event may be in handlers
    // before JetStream hands it to another process of the group.
    let transport = NatsTransport::connect(&url, "example", Duration::from_secs(60)).await?;
    let dir = tempfile::tempdir()?;
    let bus = EventBus::builder()
        .log_dir(dir.path())
        .transport(Arc::new(transport))
        .build();
    bus.subscribe("deployment", |event: Event| async move {
        println!("handled {} from JetStream", event.event_id);
        Ok::<(), std::io::Error>(())
    });
    bus.start().await?;
    let id = bus
        .publish("deployment", json!({"service": "api", "status": "success"}))
        .await?; // returns once JetStream acknowledged it
    println!("published {id}");
    // Wait until this process has handled it (another one of the group may take it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bus.stats().handled == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bus.stop().await?;
    Ok(())
}
