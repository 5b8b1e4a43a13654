//! Telemetry for every process of the platform: `tracing` logs (JSON when stdout is not a
//! terminal), OpenTelemetry spans exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set, and W3C trace context (`traceparent`, `tracestate`) carried in Kafka headers.
//!
//! Spans are always recorded by an OpenTelemetry tracer, also when nothing exports them,
//! so trace context crosses every Kafka hop whether or not a collector is configured.

mod flow;
mod http_headers;
mod kafka_headers;
mod log_format;

pub use flow::{
    FlowHere, Traced, continue_flow, current_traceparent, flow_here, flow_parent, span_context_of,
    trace_id_in, traceparent_of,
};
pub use http_headers::extract_http_context;
pub use kafka_headers::{HeaderExtractor, HeaderInjector, extract_context, inject_current_context};

use std::{
    io::IsTerminal,
    sync::{Arc, OnceLock},
};

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("otlp exporter: {0}")]
    Exporter(String),
    #[error("log filter: {0}")]
    Filter(String),
    #[error("a global subscriber is already installed")]
    AlreadyInstalled,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Flushes and stops exporting when the process ends. Keep it alive in `main`.
#[derive(Debug)]
#[must_use = "dropping the guard stops span export"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl TelemetryGuard {
    /// Exports what is still buffered; call once before exit.
    pub fn shutdown(self) {
        // Errors here only mean the collector went away; nothing is left to do about it.
        let _ = self.provider.force_flush();
        let _ = self.provider.shutdown();
    }
}

/// Installs logs, traces and the W3C propagator for `service`. Log level comes from
/// `RUST_LOG` (default `info`).
pub fn init(service: &'static str) -> Result<TelemetryGuard> {
    init_with_defaults(service, &[])
}

/// Like [`init`], with `defaults` (filter directives such as `"some_crate=warn"`) added
/// for every target that `RUST_LOG` does not name itself. A disabled span costs nothing,
/// while an enabled one is recorded and, with OTLP on, exported: this keeps a library
/// that opens spans per inner call out of the traces unless asked for.
pub fn init_with_defaults(service: &'static str, defaults: &[&str]) -> Result<TelemetryGuard> {
    install(service, defaults, true)
}

/// Like [`init_with_defaults`], but spans are never exported, whatever
/// `OTEL_EXPORTER_OTLP_ENDPOINT` says: for a process whose spans are its internals (the
/// embedded broker), which would bury the platform's own in a trace viewer.
pub fn init_without_export(service: &'static str, defaults: &[&str]) -> Result<TelemetryGuard> {
    install(service, defaults, false)
}

fn install(service: &'static str, defaults: &[&str], export: bool) -> Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = tracer_provider(service, export)?;
    let tracer = provider.tracer(service);
    opentelemetry::global::set_tracer_provider(provider.clone());

    let asked = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter = EnvFilter::try_new(if asked.trim().is_empty() {
        "info"
    } else {
        &asked
    })
    .map_err(|e| Error::Filter(e.to_string()))?;
    for directive in defaults {
        let target = directive.split('=').next().unwrap_or_default();
        if !asked.contains(target) {
            filter = filter.add_directive(
                directive
                    .parse()
                    .map_err(|e| Error::Filter(format!("{directive}: {e}")))?,
            );
        }
    }
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(otel_layer(tracer));
    let dispatch = if std::io::stdout().is_terminal() {
        tracing::Dispatch::new(registry.with(tracing_subscriber::fmt::layer().with_target(false)))
    } else {
        let handle = Arc::new(OnceLock::new());
        let dispatch = tracing::Dispatch::new(
            registry.with(log_format::json_lines(handle.clone(), std::io::stdout)),
        );
        let _ = handle.set(dispatch.downgrade());
        dispatch
    };
    let installed = tracing::dispatcher::set_global_default(dispatch);
    installed.map_err(|_| Error::AlreadyInstalled)?;
    Ok(TelemetryGuard { provider })
}

/// Spans and propagation without log output (tests, tools): trace ids are real and cross
/// Kafka hops exactly as in a service.
pub fn init_traces_only(service: &'static str) -> Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = tracer_provider(service, true)?;
    let tracer = provider.tracer(service);
    opentelemetry::global::set_tracer_provider(provider.clone());
    tracing_subscriber::registry()
        .with(otel_layer(tracer))
        .try_init()
        .map_err(|_| Error::AlreadyInstalled)?;
    Ok(TelemetryGuard { provider })
}

/// The layer that turns `tracing` spans into OpenTelemetry spans, at a cost per span
/// rather than per poll: no busy / idle timings (two clock reads on every poll of an
/// instrumented future), no thread attributes (the thread's name copied into every span),
/// and no OpenTelemetry context made current on every enter (the platform reads a span's
/// context through the span, never through `Context::current()`).
fn otel_layer<S>(
    tracer: opentelemetry_sdk::trace::Tracer,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_context_activation(false)
}

fn tracer_provider(service: &'static str, export: bool) -> Result<SdkTracerProvider> {
    let resource = Resource::builder()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
    if !export || endpoint.trim().is_empty() {
        return Ok(builder.build());
    }
    // The OTLP standard default is http/protobuf; gRPC is chosen the standard way.
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_default();
    let exporter = match protocol.as_str() {
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build(),
        _ => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build(),
    }
    .map_err(|e| Error::Exporter(e.to_string()))?;
    Ok(builder.with_batch_exporter(exporter).build())
}

/// Hex trace id of the current span, when it has one; stored in events as `trace_id`.
pub fn current_trace_id() -> Option<String> {
    trace_id_of(&tracing::Span::current())
}

/// Hex trace id of `span`, when it has one.
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}
