//! Publish and subscribe on the embedded bus: handlers for a type, for every
//! type, and with a filter; single, built and batched publishes; a clean stop.
//!
//! ```bash
//! cargo run --example publish_subscribe
//! ```

use pm_events::{Event, EventBus};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    // Log under a directory of our own; EventBus::new() uses ./logs, from_env() PM_* variables.
    let bus = EventBus::builder()
        .log_dir(dir.path())
        .queue_capacity(1000)
        .build();

    // Any async closure Fn(Event) -> Result<(), E> is a handler.
    let id = bus.subscribe("file_change", |event: Event| async move {
        println!("file_change: {}", event.data["file_path"]);
        Ok::<(), std::io::Error>(())
    });
    bus.subscribe("*", |event: Event| async move {
        println!("  (every type) {} {}", event.event_type, event.event_id);
        Ok::<(), std::io::Error>(())
    });
    bus.subscribe_filtered(
        "custom_event",
        |e| e.data["priority"] == "high",
        |event: Event| async move {
            println!("high priority: {}", event.data);
            Ok::<(), std::io::Error>(())
        },
    );

    bus.start().await?;
    bus.publish("file_change", json!({"file_path": "/tmp/a.txt"}))
        .await?;
    let deployment = Event::new(
        "deployment",
        json!({"service": "api-gateway", "status": "success", "version": "1.2.3"}),
    );
    bus.publish(deployment, None).await?;
    bus.publish_batch((1..=3).map(|i| {
        Event::new(
            "file_change",
            json!({ "file_path": format!("/tmp/file{i}.txt") }),
        )
    }))
    .await?;
    bus.publish("custom_event", json!({"priority": "high"}))
        .await?;
    bus.publish("custom_event", json!({"priority": "low"}))
        .await?;

    // Many events in flight: each ack resolves once its line is in the log.
    let mut acks = Vec::new();
    for i in 0..100 {
        acks.push(
            bus.publish_pipelined(Event::new("tick", json!({ "i": i })))
                .await?,
        );
    }
    for ack in acks {
        ack.await?;
    }

    println!("subscribers: {:?}", bus.get_subscribers());
    println!("log file: {}", bus.get_log_file().display());
    bus.unsubscribe("file_change", id);
    bus.stop().await?; // every accepted event is handled before this returns
    println!("{:?}", bus.stats());
    Ok(())
}
