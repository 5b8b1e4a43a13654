//! W3C trace context in Kafka message headers, so one trace follows an event across topics.

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Writes propagation fields into headers being built for a produce.
pub struct HeaderInjector<'a>(pub &'a mut OwnedHeaders);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` says nothing (W3C lets it be left out) and every header
        // is a row the embedded broker writes and reads back per record.
        if value.is_empty() {
            return;
        }
        let headers = std::mem::replace(self.0, OwnedHeaders::new());
        *self.0 = headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
}

/// Reads propagation fields from the headers of a consumed record. Non-UTF-8 values are
/// ignored rather than failing the record: trace context is advisory.
pub struct HeaderExtractor<'a, H: Headers>(pub &'a H);

impl<H: Headers> Extractor for HeaderExtractor<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.key).collect()
    }
}

/// Adds the current span's context (`traceparent`, `tracestate`) to `headers`.
pub fn inject_current_context(mut headers: OwnedHeaders) -> OwnedHeaders {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(&mut headers))
    });
    headers
}

/// The remote parent carried by a record's headers (empty context when there is none).
pub fn extract_context<H: Headers>(headers: Option<&H>) -> Context {
    match headers {
        Some(headers) => opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(headers))
        }),
        None => Context::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    /// A remote, sampled span context with `state`, the W3C propagator installed.
    fn remote_span(state: TraceState) -> SpanContext {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            state,
        )
    }

    #[test]
    fn context_round_trips_through_owned_headers() {
        let span_context = remote_span(TraceState::from_key_value([("vendor", "x")]).unwrap());
        let context = Context::new().with_remote_span_context(span_context.clone());
        let mut headers = OwnedHeaders::new().insert(Header {
            key: "other",
            value: Some(b"kept"),
        });
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&context, &mut HeaderInjector(&mut headers))
        });
        let extractor = HeaderExtractor(&headers);
        assert_eq!(
            extractor.get("traceparent"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(extractor.get("other"), Some("kept"));

        let extracted = extract_context(Some(&headers));
        let remote = extracted.span().span_context().clone();
        assert_eq!(remote.trace_id(), span_context.trace_id());
        assert_eq!(remote.span_id(), span_context.span_id());
        assert_eq!(remote.trace_state().get("vendor"), Some("x"));
        assert!(remote.is_remote());
    }

    #[test]
    fn an_empty_tracestate_is_not_written() {
        let context = Context::new().with_remote_span_context(remote_span(TraceState::default()));
        let mut headers = OwnedHeaders::new();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut HeaderInjector(&mut headers))
        });
        let keys: Vec<&str> = headers.iter().map(|h| h.key).collect();
        assert_eq!(keys, ["traceparent"]);
    }
}
