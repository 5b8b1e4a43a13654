use std::{sync::Arc, time::Duration};

use mlops_events::Event;
use mlops_schema::AvroCodec;
use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    message::OwnedHeaders,
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};

use tracing::{Instrument, info_span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{Error, KafkaConfig, Result};

/// A producer span of OpenTelemetry's messaging conventions for one record to `topic`.
fn send_span(topic: &str) -> tracing::Span {
    info_span!(
        "send",
        otel.name = %format_args!("send {topic}"),
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.destination.name = %topic,
        messaging.destination.partition.id = tracing::field::Empty,
        messaging.kafka.offset = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

/// Where the broker stored an acknowledged record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: i32,
    pub offset: i64,
}

/// An idempotent producer with `acks=all`: `send` returns only once every in-sync replica
/// has the record, so a caller may acknowledge its own client afterwards.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
    codec: Arc<AvroCodec>,
    /// How long a send waits for room in the local queue before reporting backpressure.
    queue_wait: Duration,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

impl Producer {
    pub fn new(config: &KafkaConfig, codec: Arc<AvroCodec>) -> Result<Self> {
        let inner = config
            .client_config("producer")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", config.linger_ms.to_string())
            .set("message.timeout.ms", config.delivery_timeout_ms.to_string())
            .create()?;
        Ok(Self {
            inner,
            codec,
            queue_wait: Duration::from_secs(2),
        })
    }

    pub fn codec(&self) -> &Arc<AvroCodec> {
        &self.codec
    }

    /// Produces raw bytes with the current trace context added to `headers`, and waits for
    /// the broker's acknowledgement.
    pub async fn send_bytes(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<Delivery> {
        self.send_bytes_to(topic, None, key, payload, headers).await
    }

    /// [`Self::send_bytes`] to a chosen `partition` (the partitioner's choice when `None`).
    pub async fn send_bytes_to(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<Delivery> {
        let span = send_span(topic);
        self.send_in(span, topic, partition, key, Some(payload), headers)
            .await
    }

    /// [`Self::send_bytes`] with the `send` span a child of `parent` rather than of the
    /// current span: a record made on behalf of another (a feature row of a raw event, in a
    /// batch of many) continues that one's trace.
    pub async fn send_bytes_under(
        &self,
        parent: Option<opentelemetry::Context>,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<Delivery> {
        let span = send_span(topic);
        if let Some(parent) = parent {
            let _ = span.set_parent(parent);
        }
        self.send_in(span, topic, None, key, Some(payload), headers)
            .await
    }

    /// Produces a tombstone (a record without a value) for `key`: what compaction and the
    /// platform's consumers read as "forget this key".
    pub async fn send_tombstone(&self, topic: &str, key: &[u8]) -> Result<Delivery> {
        let span = send_span(topic);
        self.send_in(span, topic, None, Some(key), None, OwnedHeaders::new())
            .await
    }

    /// Sends in `span` (OpenTelemetry's messaging conventions, a producer span), whose
    /// context the record's `traceparent` header carries.
    async fn send_in(
        &self,
        span: tracing::Span,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
    ) -> Result<Delivery> {
        let headers = {
            let _entered = span.enter();
            mlops_telemetry::inject_current_context(headers)
        };
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        let delivered = self.deliver(record).instrument(span.clone()).await;
        match &delivered {
            Ok(delivery) => {
                span.record("messaging.destination.partition.id", delivery.partition);
                span.record("messaging.kafka.offset", delivery.offset);
            }
            Err(e) => {
                span.record("error.type", tracing::field::display(e));
            }
        }
        delivered
    }

    /// Sends `record` and waits for the broker's acknowledgement.
    async fn deliver(&self, record: FutureRecord<'_, [u8], [u8]>) -> Result<Delivery> {
        match self
            .inner
            .send(record, Timeout::After(self.queue_wait))
            .await
        {
            Ok(delivery) => Ok(Delivery {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(Error::QueueFull)
            }
            Err((e, _)) => Err(Error::Kafka(e)),
        }
    }

    /// Encodes `event` (Confluent-framed Avro, schema registered under `<topic>-value`) and
    /// produces it.
    pub async fn send_event<E: Event>(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        event: &E,
        headers: OwnedHeaders,
    ) -> Result<Delivery> {
        let payload = self.codec.encode(topic, event).await?;
        self.send_bytes(topic, key, &payload, headers).await
    }
}
