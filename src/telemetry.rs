//! Traces from publish to delivery (OpenTelemetry; docs/webhooks.md, "Traces").
//!
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set (and the other standard `OTEL_*` variables),
//! [`init_from_env`] exports spans over OTLP/HTTP (protobuf): one `publish` span per
//! accepted event, one `handle` span per handler run, one `webhook.attempt` span per
//! delivery attempt, all in the event's trace. The trace travels as a W3C
//! `traceparent`: received on `POST /events` or `/webhooks/incoming` it is continued;
//! it is kept with each delivery (in the outbox), and every webhook request carries
//! the `traceparent` of its attempt.
//!
//! Unset (or `OTEL_SDK_DISABLED=true`), nothing is built or exported: each point of a
//! span costs one atomic load, and a webhook's `traceparent` is the one the event
//! arrived with, or a fresh unsampled one.

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are made and exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The exporter and its provider while traces are on; dropping it flushes what is
/// left and stops the export.
pub struct Telemetry {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "cannot flush the last spans");
        }
    }
}

/// Why traces could not be turned on.
#[derive(Debug, thiserror::Error)]
#[error("OpenTelemetry export to OTEL_EXPORTER_OTLP_ENDPOINT: {0}")]
pub struct TelemetryError(String);

/// Turns traces on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and `OTEL_SDK_DISABLED` is not `true`.
/// Keep the returned value for the life of the process.
pub fn init_from_env() -> Result<Option<Telemetry>, TelemetryError> {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    if !(set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        || std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
    {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TelemetryError(e.to_string()))?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "pm-events".into());
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some(Telemetry { provider }))
}

/// `traceparent` if it is a valid W3C value (version `00`), normalised to lower case.
pub fn valid_traceparent(value: &str) -> Option<String> {
    let v = value.trim().to_ascii_lowercase();
    let parts: Vec<&str> = v.split('-').collect();
    let [version, trace, span, flags] = parts.as_slice() else {
        return None;
    };
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (*version == "00"
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && span.bytes().any(|b| b != b'0'))
    .then_some(v)
}

fn context_of(traceparent: Option<&str>) -> Context {
    let Some(tp) = traceparent.and_then(valid_traceparent) else {
        return Context::new();
    };
    let parts: Vec<&str> = tp.split('-').collect();
    let (Ok(trace), Ok(span)) = (TraceId::from_hex(parts[1]), SpanId::from_hex(parts[2])) else {
        return Context::new();
    };
    let flags = u8::from_str_radix(parts[3], 16).unwrap_or(1);
    Context::new().with_remote_span_context(SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    ))
}

fn traceparent_of(sc: &SpanContext) -> String {
    format!(
        "00-{:032x}-{:016x}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// A fresh `traceparent`, not sampled (for a webhook whose event came with none, while
/// traces are off).
pub fn fresh_traceparent() -> String {
    let t = uuid::Uuid::new_v4().simple().to_string();
    let s = uuid::Uuid::new_v4().simple().to_string();
    format!("00-{t}-{}-00", &s[..16])
}

/// A span under way (nothing when traces are off).
pub struct Span {
    inner: Option<opentelemetry::global::BoxedSpan>,
    traceparent: Option<String>,
}

/// The kinds of span pm-events makes.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Accepting an event.
    Publish,
    /// A handler's run.
    Handle,
    /// A webhook request.
    Attempt,
}

/// Starts a span `name` in the trace of `parent` (a `traceparent`; a new trace
/// without one). `attrs` are only built when traces are on.
pub fn start(
    name: &'static str,
    kind: Kind,
    parent: Option<&str>,
    attrs: impl FnOnce() -> Vec<KeyValue>,
) -> Span {
    if !enabled() {
        return Span {
            inner: None,
            traceparent: None,
        };
    }
    let tracer = opentelemetry::global::tracer("pm-events");
    let span = tracer
        .span_builder(name)
        .with_kind(match kind {
            Kind::Publish => SpanKind::Producer,
            Kind::Handle => SpanKind::Consumer,
            Kind::Attempt => SpanKind::Client,
        })
        .with_attributes(attrs())
        .start_with_context(&tracer, &context_of(parent));
    let traceparent = Some(traceparent_of(span.span_context()));
    Span {
        inner: Some(span),
        traceparent,
    }
}

impl Span {
    /// Its `traceparent`, when traces are on.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// Adds an attribute.
    pub fn set(&mut self, kv: impl FnOnce() -> KeyValue) {
        if let Some(s) = &mut self.inner {
            s.set_attribute(kv());
        }
    }

    /// Marks it failed with `message`.
    pub fn fail(&mut self, message: impl FnOnce() -> String) {
        if let Some(s) = &mut self.inner {
            s.set_status(Status::error(message()));
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(s) = &mut self.inner {
            s.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_checked_and_made() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(valid_traceparent(ok).as_deref(), Some(ok));
        assert_eq!(valid_traceparent(&ok.to_uppercase()).as_deref(), Some(ok));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(valid_traceparent(bad), None, "{bad}");
        }
        assert!(valid_traceparent(&fresh_traceparent()).is_some());
        assert!(!enabled());
        let s = start("x", Kind::Publish, Some(ok), Vec::new);
        assert_eq!(s.traceparent(), None, "off: nothing made");
    }
}
