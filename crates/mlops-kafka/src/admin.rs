use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    error::RDKafkaErrorCode,
};

use crate::{Error, KafkaConfig, Result};

/// A topic the platform needs, with its partition count and topic-level settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub config: Vec<(String, String)>,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            config: Vec::new(),
        }
    }

    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.config.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// Creates the topics that do not exist yet (existing ones are left as they are) and
/// waits until the broker's metadata lists every one of them. Neither Tansu nor our
/// production brokers auto-create topics, so every topic goes through here.
pub async fn ensure_topics(config: &KafkaConfig, specs: &[TopicSpec]) -> Result<()> {
    if specs.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = config.client_config("admin").create()?;
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|spec| {
            let mut topic = NewTopic::new(
                &spec.name,
                spec.partitions,
                TopicReplication::Fixed(config.replication_factor),
            );
            for (key, value) in &spec.config {
                topic = topic.set(key, value);
            }
            topic
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::Topic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let config = config.clone();
    tokio::task::spawn_blocking(move || wait_for_topics(&config, &names, Duration::from_secs(30)))
        .await
        .map_err(|e| Error::Unreachable(e.to_string()))?
}

fn wait_for_topics(config: &KafkaConfig, names: &[String], limit: Duration) -> Result<()> {
    let consumer: BaseConsumer = config.client_config("admin-metadata").create()?;
    let deadline = Instant::now() + limit;
    loop {
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(5))?;
        let missing: Vec<&String> = names
            .iter()
            .filter(|name| {
                !metadata.topics().iter().any(|t| {
                    t.name() == name.as_str() && t.error().is_none() && !t.partitions().is_empty()
                })
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Topic {
                topic: missing[0].clone(),
                reason: format!("not in broker metadata after {limit:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks that a broker answers a metadata request; used by readiness probes.
pub async fn check_broker(config: &KafkaConfig, timeout: Duration) -> Result<()> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.client_config("probe").create()?;
        consumer
            .fetch_metadata(None, timeout)
            .map(|_| ())
            .map_err(|e| Error::Unreachable(e.to_string()))
    })
    .await
    .map_err(|e| Error::Unreachable(e.to_string()))?
}

/// Where [`read_records`] starts in a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// The first record still kept.
    Start,
    /// This many records before the end.
    Tail(i64),
    /// This offset, or the first kept after it; and no record older than `not_before`
    /// (epoch milliseconds), found by the broker's time index.
    Offset { offset: i64, not_before: i64 },
}

/// The payloads of `partition` of `topic` from `from_end` records before its end (every
/// record when `None`) up to the end it had when asked, in offset order. For reading a
/// log back whole or its tail (an audit chain's last hash), not for consuming.
pub async fn read_partition(
    config: &KafkaConfig,
    topic: &str,
    partition: i32,
    from_end: Option<i64>,
    timeout: Duration,
) -> Result<Vec<Vec<u8>>> {
    let from = from_end.map_or(ReadFrom::Start, ReadFrom::Tail);
    let records = read_records(config, topic, partition, from, timeout).await?;
    Ok(records
        .into_iter()
        .map(|r| r.payload.unwrap_or_default())
        .collect())
}

/// The records of `partition` of `topic` from `from` up to the end it had when asked, in
/// offset order, headers included. Reads back, without a consumer group. The end is the
/// later of the partition's listed end offset and where a fetch first reports the end of
/// the partition: some brokers (Tansu 0.6) list an end behind records they already serve.
pub async fn read_records(
    config: &KafkaConfig,
    topic: &str,
    partition: i32,
    from: ReadFrom,
    timeout: Duration,
) -> Result<Vec<crate::Record>> {
    let (config, topic) = (config.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        use rdkafka::{Offset, TopicPartitionList};
        let consumer: BaseConsumer = config
            .client_config("reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("group.id", "mlops-reader")
            .create()?;
        let (low, high) = consumer
            .fetch_watermarks(&topic, partition, timeout)
            .map_err(|e| Error::Unreachable(e.to_string()))?;
        let start = match from {
            ReadFrom::Start => low,
            ReadFrom::Tail(n) => (high - n).max(low),
            ReadFrom::Offset { offset, not_before } => {
                let mut times = TopicPartitionList::new();
                times.add_partition_offset(&topic, partition, Offset::Offset(not_before))?;
                let by_time = consumer
                    .offsets_for_times(times, timeout)
                    .map_err(|e| Error::Unreachable(e.to_string()))?
                    .find_partition(&topic, partition)
                    .and_then(|p| match p.offset() {
                        Offset::Offset(o) => Some(o),
                        // No record that recent: nothing to read.
                        Offset::End => Some(high),
                        _ => None,
                    })
                    .unwrap_or(low);
                offset.max(by_time).max(low)
            }
        };
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, partition, Offset::Offset(start))?;
        consumer.assign(&assignment)?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut next = start;
        let mut at_end = false;
        while next < high || !at_end {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Unreachable(format!(
                    "{topic}[{partition}]: read up to offset {next} of {high} within {timeout:?}"
                )));
            }
            match consumer.poll(remaining.min(Duration::from_millis(500))) {
                None => {}
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => at_end = true,
                Some(Err(e)) => return Err(Error::Kafka(e)),
                Some(Ok(message)) => {
                    let record = crate::Record::from(message.detach());
                    next = record.offset + 1;
                    at_end = false;
                    out.push(record);
                }
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| Error::Unreachable(e.to_string()))?
}

/// How many partitions `topic` has (an error when it does not exist).
pub async fn partition_count(config: &KafkaConfig, topic: &str, timeout: Duration) -> Result<i32> {
    let (config, topic) = (config.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.client_config("admin-metadata").create()?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), timeout)
            .map_err(|e| Error::Unreachable(e.to_string()))?;
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .filter(|n| *n > 0)
            .ok_or_else(|| Error::Unreachable(format!("topic {topic} does not exist")))
    })
    .await
    .map_err(|e| Error::Unreachable(e.to_string()))?
}

/// The end (next offset to be written) of every partition of `topic`: what a consumer has
/// to reach to have read everything the topic held when asked.
pub async fn end_offsets(
    config: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>> {
    let partitions = partition_count(config, topic, timeout).await?;
    let (config, topic) = (config.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.client_config("admin-offsets").create()?;
        (0..partitions)
            .map(|partition| {
                consumer
                    .fetch_watermarks(&topic, partition, timeout)
                    .map(|(_, high)| (partition, high))
                    .map_err(|e| Error::Unreachable(format!("{topic}[{partition}]: {e}")))
            })
            .collect()
    })
    .await
    .map_err(|e| Error::Unreachable(e.to_string()))?
}
