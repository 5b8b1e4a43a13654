//! A producer for logs whose loss under pressure is acceptable and counted (the prediction
//! log), never for records a client was told are safe: it hands records to the client's
//! local queue and returns at once.
//!
//! Why not [`crate::Producer`]: it tracks every record to its acknowledgement (a delivery
//! future and a delivery report each), which is what an acknowledged write needs and what a
//! log of tens of thousands of records a second cannot afford — on the serving benchmark
//! the per-record reports and the broker thread woken for every few records were about a
//! third of the serving process's CPU. Here only failed deliveries are reported
//! (`delivery.report.only.error`), batches fill for `linger_ms`, and there is no polling
//! thread of its own (rdkafka's threaded producer spent a seventh of the process's CPU
//! in its poll loop): the owner calls [`LogProducer::poll`] now and then.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use rdkafka::{
    ClientContext,
    error::{KafkaError, RDKafkaErrorCode},
    message::Header,
    producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext},
};

use crate::{Error, KafkaConfig, Result};

/// Counts what the client could not deliver.
struct FailureCounter(Arc<AtomicU64>);

impl ClientContext for FailureCounter {}

impl ProducerContext for FailureCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub struct LogProducer {
    inner: BaseProducer<FailureCounter>,
    failed: Arc<AtomicU64>,
    /// The residency region stamped on every record (`mlops-region`), when set.
    region: Option<String>,
}

impl std::fmt::Debug for LogProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogProducer").finish_non_exhaustive()
    }
}

impl LogProducer {
    /// A producer whose batches wait up to `linger_ms` to fill.
    pub fn new(config: &KafkaConfig, linger_ms: u32) -> Result<Self> {
        let failed = Arc::new(AtomicU64::new(0));
        let inner = config
            .client_config("log")
            .set("acks", "all")
            // Idempotence caps requests in flight at 5; a log that outpaces the broker then
            // keeps its broker thread spinning on a full pipeline (about 40 % of a core in a
            // profile). Without it, a retried batch may be written twice: the monitor joins
            // by request id, so a repeated record changes nothing it reports.
            .set("enable.idempotence", "false")
            .set("linger.ms", linger_ms.to_string())
            .set("delivery.report.only.error", "true")
            .set("message.timeout.ms", config.delivery_timeout_ms.to_string())
            .create_with_context(FailureCounter(failed.clone()))?;
        Ok(Self {
            inner,
            failed,
            region: None,
        })
    }

    /// Stamps every record with `region` (`mlops-region`): what it logs is data of that
    /// region, which consumers of another refuse.
    pub fn in_region(mut self, region: Option<String>) -> Self {
        self.region = region;
        self
    }

    /// Hands a record to the client. `QueueFull` when its local queue has no room.
    /// `traceparent` (W3C) goes into the record's headers, so that its consumer continues
    /// the trace of the request the record logs.
    pub fn enqueue(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        traceparent: Option<&str>,
    ) -> Result<()> {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        if traceparent.is_some() || self.region.is_some() {
            let mut headers = crate::consumer::region_headers(self.region.as_deref());
            if let Some(traceparent) = traceparent {
                headers = headers.insert(Header {
                    key: "traceparent",
                    value: Some(traceparent.as_bytes()),
                });
            }
            record = record.headers(headers);
        }
        match self.inner.send(record) {
            Ok(()) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(Error::QueueFull)
            }
            Err((e, _)) => Err(Error::Kafka(e)),
        }
    }

    /// Serves the client's reports (failed deliveries) without waiting.
    pub fn poll(&self) {
        self.inner.poll(std::time::Duration::ZERO);
    }

    /// Records the client gave up on (the broker refused them or never answered in time).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` for what is queued to reach the broker (on shutdown).
    pub fn flush(&self, timeout: std::time::Duration) {
        // What is still queued after the timeout is lost, like any sampled-out record.
        let _ = self.inner.flush(timeout);
    }
}
