//! The one place that builds Kafka clients. Services never set librdkafka keys by hand:
//! they hold a [`KafkaConfig`] and ask this crate for a [`Producer`], an admin helper or a
//! [`consumer::ConsumerLoop`].

mod admin;
mod batch;
mod config;
pub mod consumer;
mod log_producer;
mod metrics;
mod producer;

pub use admin::{
    ReadFrom, TopicSpec, check_broker, end_offsets, ensure_topics, partition_count, read_partition,
    read_records,
};
pub use batch::{BatchConsumer, batch_span};
pub use config::{KafkaConfig, SecurityProtocol};
pub use consumer::{
    CLOSE_TIMEOUT, COMMIT_INTERVAL, ConsumerLoop, DeadLetters, Handler, HandlerError, Record,
    region_headers,
};
pub use log_producer::LogProducer;
pub use metrics::ConsumerMetrics;
pub use producer::{Delivery, Producer};

pub use rdkafka::message::{Header, Headers, OwnedHeaders};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The local produce queue is full: the caller should slow down (HTTP 429).
    #[error("producer queue full")]
    QueueFull,
    #[error("broker unreachable: {0}")]
    Unreachable(String),
    #[error("topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
    #[error(transparent)]
    Schema(#[from] mlops_schema::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
