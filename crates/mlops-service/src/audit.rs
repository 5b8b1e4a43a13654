//! The audit trail a service writes: one [`AuditRecord`] per state-changing action or
//! refused attempt, on its own partition of `audit.log`, each sealed with the hash of the
//! one before it (`mlops_events::audit`). The HTTP layer (`auth::Gate`) records what the
//! route tables mark as changing state; consumers of Kafka commands record theirs.

use std::{sync::Arc, time::Duration};

use mlops_events::{
    AuditOutcome, AuditRecord,
    audit::{AUDIT_PARTITIONS, audit_partition},
    new_id, now_millis, topics,
};
use mlops_kafka::{KafkaConfig, OwnedHeaders, Producer, TopicSpec};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

/// What happened, before it is sealed into the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub actor: String,
    pub role: Option<String>,
    pub action: String,
    pub resource: String,
    pub outcome: AuditOutcome,
    pub reason: Option<String>,
    pub source_ip: Option<String>,
}

/// One service's writer of its audit chain.
#[derive(Clone)]
pub struct Auditor {
    inner: Arc<Inner>,
    queue: mpsc::Sender<AuditEntry>,
}

/// Writes what [`Auditor::submit`] queued, in order, for as long as its service runs.
pub struct AuditWriter {
    auditor: Auditor,
    queue: mpsc::Receiver<AuditEntry>,
}

/// Entries the HTTP layer may queue before it drops (and counts) them.
const QUEUE: usize = 4096;

impl AuditWriter {
    /// Until `cancel` fires, then what is still queued.
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        loop {
            let entry = tokio::select! {
                () = cancel.cancelled() => break,
                entry = self.queue.recv() => entry,
            };
            let Some(entry) = entry else { break };
            let _ = self.auditor.record(entry).await;
        }
        self.queue.close();
        while let Ok(entry) = self.queue.try_recv() {
            let _ = self.auditor.record(entry).await;
        }
        Ok(())
    }
}

struct Inner {
    service: &'static str,
    partition: i32,
    producer: Producer,
    kafka: KafkaConfig,
    /// The chain's last hash; `None` until it was read back from the partition.
    last: Mutex<Option<Option<String>>>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("service", &self.inner.service)
            .field("partition", &self.inner.partition)
            .finish()
    }
}

/// `audit.log`: a partition per service, kept forever.
pub fn audit_topic() -> TopicSpec {
    TopicSpec::new(topics::AUDIT_LOG, AUDIT_PARTITIONS).with("retention.ms", "-1")
}

impl Auditor {
    /// The auditor of `service`, and the writer its service runs beside its other tasks.
    pub fn new(
        service: &'static str,
        kafka: &KafkaConfig,
        producer: Producer,
    ) -> (Self, AuditWriter) {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let auditor = Self {
            inner: Arc::new(Inner {
                service,
                partition: audit_partition(service),
                producer,
                kafka: kafka.clone(),
                last: Mutex::new(None),
            }),
            queue: sender,
        };
        let writer = AuditWriter {
            auditor: auditor.clone(),
            queue: receiver,
        };
        (auditor, writer)
    }

    /// Queues `entry` for the writer without waiting (the HTTP layer: a record's own
    /// schema may have to be registered first, through that very layer on the registry).
    /// A full queue drops the entry, loudly.
    pub fn submit(&self, entry: AuditEntry) {
        if let Err(e) = self.queue.try_send(entry) {
            tracing::error!(error = %e, "audit queue full or closed: a record is lost");
        }
    }

    /// Seals `entry` after the chain's last record and appends it. Records are written one
    /// at a time, so the chain has no forks. A failure is returned (and logged): the
    /// action it describes has happened, the record of it is missing.
    pub async fn record(&self, entry: AuditEntry) -> Result<AuditRecord, String> {
        let result = self.append(entry.clone()).await;
        if let Err(e) = &result {
            tracing::error!(
                action = entry.action,
                resource = entry.resource,
                error = %e,
                "audit record not written"
            );
        }
        result
    }

    async fn append(&self, entry: AuditEntry) -> Result<AuditRecord, String> {
        let inner = &self.inner;
        let mut last = inner.last.lock().await;
        let previous = match &*last {
            Some(previous) => previous.clone(),
            None => self.tail().await?,
        };
        let record = AuditRecord {
            audit_id: new_id(),
            actor: entry.actor,
            role: entry.role,
            action: entry.action,
            resource: entry.resource,
            outcome: entry.outcome,
            reason: entry.reason,
            source_ip: entry.source_ip,
            trace_id: mlops_telemetry::current_trace_id(),
            occurred_at: now_millis(),
            prev_hash: None,
            hash: String::new(),
        }
        .sealed(previous);
        let payload = inner
            .producer
            .codec()
            .encode(topics::AUDIT_LOG, &record)
            .await
            .map_err(|e| e.to_string())?;
        let sent = inner
            .producer
            .send_bytes_to(
                topics::AUDIT_LOG,
                Some(inner.partition),
                Some(inner.service.as_bytes()),
                &payload,
                OwnedHeaders::new(),
            )
            .await;
        match sent {
            Ok(_) => {
                *last = Some(Some(record.hash.clone()));
                Ok(record)
            }
            Err(e) => {
                // Whether the broker kept it is unknown: read the tail again next time.
                *last = None;
                Err(e.to_string())
            }
        }
    }

    /// The hash of the last record of this service's partition, read back from the broker
    /// (a restarted service continues its chain).
    async fn tail(&self) -> Result<Option<String>, String> {
        let inner = &self.inner;
        mlops_kafka::ensure_topics(&inner.kafka, &[audit_topic()])
            .await
            .map_err(|e| format!("audit.log: {e}"))?;
        let partitions =
            mlops_kafka::partition_count(&inner.kafka, topics::AUDIT_LOG, Duration::from_secs(10))
                .await
                .map_err(|e| e.to_string())?;
        if partitions <= inner.partition {
            return Err(format!(
                "audit.log has {partitions} partitions; this service writes partition {} \
                 (create it with {AUDIT_PARTITIONS})",
                inner.partition
            ));
        }
        let tail = mlops_kafka::read_partition(
            &inner.kafka,
            topics::AUDIT_LOG,
            inner.partition,
            Some(1),
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| e.to_string())?;
        match tail.last() {
            None => Ok(None),
            Some(bytes) => {
                let record: AuditRecord = inner
                    .producer
                    .codec()
                    .decode(bytes)
                    .await
                    .map_err(|e| format!("the last audit record: {e}"))?;
                Ok(Some(record.hash))
            }
        }
    }
}

/// One partition's chain as read back from `audit.log`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainReport {
    pub partition: i32,
    /// Records read (all of them when the chain holds, up to the break otherwise).
    pub records: usize,
    /// The first link that does not hold.
    pub broken: Option<String>,
}

/// Reads every partition of `audit.log` from its start and checks its chain: what an
/// auditor runs (`mlops audit verify`, `GET /v1/audit/verify`) to show the trail is
/// complete and unchanged.
pub async fn verify_log(
    kafka: &KafkaConfig,
    codec: &mlops_schema::AvroCodec,
) -> Result<Vec<ChainReport>, String> {
    let timeout = Duration::from_secs(60);
    let partitions = mlops_kafka::partition_count(kafka, topics::AUDIT_LOG, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let mut reports = Vec::new();
    for partition in 0..partitions {
        let payloads =
            mlops_kafka::read_partition(kafka, topics::AUDIT_LOG, partition, None, timeout)
                .await
                .map_err(|e| e.to_string())?;
        let mut records = Vec::with_capacity(payloads.len());
        let mut undecodable = None;
        for (index, payload) in payloads.iter().enumerate() {
            match codec.decode::<AuditRecord>(payload).await {
                Ok(record) => records.push(record),
                Err(e) => {
                    undecodable = Some(format!("record {index} is not an audit record: {e}"));
                    break;
                }
            }
        }
        let checked = mlops_events::audit::verify_chain(&records);
        let (count, broken) = match checked {
            Ok(count) => (count, undecodable),
            Err(link) => (link.index, Some(link.to_string())),
        };
        reports.push(ChainReport {
            partition,
            records: count,
            broken,
        });
    }
    Ok(reports)
}
