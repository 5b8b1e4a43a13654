//! JSON log lines that name the trace and span they were written in (`trace_id`,
//! `span_id`), so a log line found in a log store leads to its trace in Jaeger and back.

use std::{
    fmt,
    sync::{Arc, OnceLock},
};

use opentelemetry::trace::TraceContextExt;
use tracing::{Event, Subscriber, dispatcher::WeakDispatch};
use tracing_subscriber::{
    Layer,
    filter::filter_fn,
    fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter, format::Writer},
    registry::LookupSpan,
};

/// The JSON log layer: one object per event, with the ids of the trace and span it was
/// written in. It sees events only: spans are the OpenTelemetry layer's, and a log layer
/// that saw them would format every span's fields into a string of its own (and parse and
/// rewrite that string on every `record`) for lines that never print them.
pub(crate) fn json_lines<S, W>(
    subscriber: Arc<OnceLock<WeakDispatch>>,
    writer: W,
) -> impl Layer<S> + Send + Sync + 'static
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(false)
        .with_span_list(false)
        .map_event_format(|inner| WithTraceIds { inner, subscriber })
        .with_writer(writer)
        .with_filter(filter_fn(|metadata| metadata.is_event()))
}

/// Wraps a JSON event format and adds the current span's ids to each object.
///
/// The ids are read through the subscriber this format belongs to, handed over in
/// `subscriber` once it exists: inside a subscriber's callback the thread's default
/// dispatcher is deliberately unavailable (no re-entry), so it cannot be asked.
pub(crate) struct WithTraceIds<F> {
    pub(crate) inner: F,
    pub(crate) subscriber: Arc<OnceLock<WeakDispatch>>,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        // The event's span, asked of the subscriber itself (not of the format's context, which shows this
        // layer only the spans its filter lets through — none, see `json_lines` — nor of
        // `Span::current()`, which a formatter may be called outside of).
        let context = self
            .subscriber
            .get()
            .and_then(WeakDispatch::upgrade)
            .and_then(|dispatch| {
                let current = dispatch.current_span();
                tracing_opentelemetry::get_otel_context(current.id()?, &dispatch)
            })
            .unwrap_or_default();
        let span = context.span();
        let ids = span.span_context();
        let body = line.trim_end();
        match body.strip_suffix('}') {
            Some(open) if ids.is_valid() => writeln!(
                writer,
                "{open},\"trace_id\":\"{}\",\"span_id\":\"{}\"}}",
                ids.trace_id(),
                ids.span_id()
            ),
            _ => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;

    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn a_log_line_in_a_span_names_its_trace_and_span() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let lines = Lines::default();
        let handle = Arc::new(OnceLock::new());
        let subscriber = tracing_subscriber::registry()
            .with(crate::otel_layer(provider.tracer("test")))
            .with(json_lines(handle.clone(), lines.clone()));
        let dispatch = tracing::Dispatch::new(subscriber);
        handle.set(dispatch.downgrade()).unwrap();
        let expected = tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!("before any span");
            let span = tracing::info_span!("work");
            let _entered = span.enter();
            tracing::info!(answer = 42, "inside");
            let context = span.context();
            let ids = context.span().span_context().clone();
            (ids.trace_id().to_string(), ids.span_id().to_string())
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let logged: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        assert_eq!(logged.len(), 2, "{text}");
        assert!(logged[0].get("trace_id").is_none(), "{text}");
        assert_eq!(logged[1]["trace_id"], expected.0.as_str(), "{text}");
        assert_eq!(logged[1]["span_id"], expected.1.as_str(), "{text}");
        assert_eq!(
            logged[1]["fields"]["answer"], 42,
            "the event's own fields stay"
        );
    }
}
