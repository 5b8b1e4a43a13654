//! At-least-once consumption: auto-commit is off, an offset is committed only after the
//! handler's work is durable, and a record that can never be processed goes to
//! `<topic>.dlq` (Avro `DeadLetter`, reason and source coordinates also in headers) so it
//! never stalls its partition. Transient failures are retried with backoff, never skipped.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use mlops_events::{Bytes, DeadLetter, now_millis, topics};
use rdkafka::{
    ClientContext, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::KafkaResult,
    message::{Header, Headers, OwnedHeaders, OwnedMessage},
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{ConsumerMetrics, KafkaConfig, Producer, Result, TopicSpec, ensure_topics};

/// Header names on dead-lettered records.
pub mod dlq_headers {
    pub const REASON: &str = "dlq.reason";
    pub const ERROR_CLASS: &str = "dlq.error.class";
    pub const SOURCE_TOPIC: &str = "dlq.source.topic";
    pub const SOURCE_PARTITION: &str = "dlq.source.partition";
    pub const SOURCE_OFFSET: &str = "dlq.source.offset";
    pub const CONSUMER_GROUP: &str = "dlq.consumer.group";
}

/// A consumed record, owned so that handlers may hold it across awaits.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Option<OwnedHeaders>,
    pub timestamp_millis: Option<i64>,
}

impl From<OwnedMessage> for Record {
    fn from(message: OwnedMessage) -> Self {
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            timestamp_millis: message.timestamp().to_millis(),
            headers: message.headers().cloned(),
        }
    }
}

/// The headers of a record of data of `region`: its residency travels with it, so that a
/// service of another region refuses it ([`Record::foreign_region`]).
pub fn region_headers(region: Option<&str>) -> OwnedHeaders {
    match region {
        Some(region) => OwnedHeaders::new().insert(Header {
            key: mlops_events::topics::REGION_HEADER,
            value: Some(region),
        }),
        None => OwnedHeaders::new(),
    }
}

impl Record {
    /// The trace context its producer sent it in (`traceparent`), when it carries one.
    pub fn trace_context(&self) -> Option<opentelemetry::Context> {
        use opentelemetry::trace::TraceContextExt as _;
        self.header("traceparent")?;
        let context = mlops_telemetry::extract_context(self.headers.as_ref());
        context.span().span_context().is_valid().then_some(context)
    }

    /// The value of header `name`, when present.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .as_ref()?
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
    }

    /// Why a service of region `here` may not handle this record (its data's region, in
    /// `mlops-region`, is another), if it may not.
    pub fn foreign_region(&self, here: Option<&str>) -> Option<String> {
        let theirs = self
            .header(mlops_events::topics::REGION_HEADER)
            .and_then(|v| std::str::from_utf8(v).ok());
        mlops_events::topics::foreign_region(theirs, here)
    }
}

/// Why a handler could not finish a record. The variant decides what happens next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// The record can never be processed: dead-letter it and move on.
    #[error("{class}: {reason}")]
    Poison { class: String, reason: String },
    /// A dependency failed; the same record is retried with backoff.
    #[error("retry: {reason}")]
    Retry { reason: String },
}

impl HandlerError {
    pub fn poison(class: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Poison {
            class: class.into(),
            reason: reason.into(),
        }
    }

    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry {
            reason: reason.into(),
        }
    }
}

impl From<mlops_schema::Error> for HandlerError {
    fn from(e: mlops_schema::Error) -> Self {
        match e {
            mlops_schema::Error::Poison { reason } => Self::poison("decode", reason),
            e @ mlops_schema::Error::Unavailable { .. } => Self::retry(e.to_string()),
        }
    }
}

/// The work done for each record. It must be durable when `Ok` is returned: the offset is
/// committed right after.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, record: &Record) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A member of `group` subscribed to `topics`, committing by hand, reading from the earliest
/// offset when the group has none. A topic that starts with `^` is a pattern (librdkafka
/// regex subscription): new matching topics are picked up at the next metadata refresh,
/// kept short then.
pub(crate) fn group_consumer(
    config: &KafkaConfig,
    group: &str,
    topics: &[String],
    metrics: ConsumerMetrics,
) -> Result<StreamConsumer<GroupContext>> {
    let patterns = topics.iter().any(|t| t.starts_with('^'));
    let consumer: StreamConsumer<GroupContext> = config
        .client_config(&format!("consumer-{group}"))
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000")
        .set(
            "topic.metadata.refresh.interval.ms",
            if patterns { "5000" } else { "300000" },
        )
        .set("session.timeout.ms", config.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (config.session_timeout_ms / 3).max(100).to_string(),
        )
        .set(
            "max.poll.interval.ms",
            config.max_poll_interval_ms.to_string(),
        )
        .create_with_context(GroupContext {
            state: Arc::new(GroupState {
                group: group.to_owned(),
                positions: Mutex::default(),
                recommit: AtomicBool::new(false),
                unsent: AtomicBool::new(false),
                committed_at: Mutex::new(tokio::time::Instant::now()),
                metrics,
                lagging: Arc::default(),
            }),
        })?;
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    Ok(consumer)
}

/// A group member's consumer, which is never destroyed on an async runtime's thread.
///
/// Destroying a consumer leaves its group, and leaving revokes its partitions inside
/// librdkafka's close, which waits for the group coordinator without limit. A task aborted
/// while it owns a consumer (a handler slower than the shutdown grace) would otherwise
/// block the runtime thread that drops it — and the abort, and whoever awaits the task —
/// forever when the coordinator does not answer. [`close`] is the orderly way out; this
/// guard is the other one: nothing more is committed (what was processed since the last
/// commit is redelivered) and the consumer goes away on a thread of its own.
pub(crate) struct Member(Option<StreamConsumer<GroupContext>>);

impl Member {
    pub(crate) fn new(consumer: StreamConsumer<GroupContext>) -> Self {
        Self(Some(consumer))
    }

    /// The consumer, for [`close`].
    pub(crate) fn into_inner(mut self) -> StreamConsumer<GroupContext> {
        self.0
            .take()
            .expect("a member holds its consumer until it is closed")
    }
}

impl std::ops::Deref for Member {
    type Target = StreamConsumer<GroupContext>;

    fn deref(&self) -> &Self::Target {
        self.0
            .as_ref()
            .expect("a member holds its consumer until it is closed")
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let Some(consumer) = self.0.take() else {
            return;
        };
        consumer
            .context()
            .state
            .positions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let _ = std::thread::Builder::new()
            .name("kafka-drop".to_owned())
            .spawn(move || drop(consumer));
    }
}

/// How long a leaving member waits for its final commit and its goodbye to the group.
/// Half a service's shutdown grace, so that a service whose broker is gone still stops
/// within it.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Commits `positions` (the next offset per topic and partition) synchronously and leaves
/// the group, on a thread of its own and for at most [`CLOSE_TIMEOUT`]: librdkafka waits
/// without limit for a coordinator that has gone away, and a service must still stop when
/// its broker is down (records after the last durable commit are then redelivered, as
/// at-least-once allows).
pub(crate) async fn close(
    consumer: StreamConsumer<GroupContext>,
    group: &str,
    positions: impl IntoIterator<Item = ((String, i32), i64)>,
) -> Result<()> {
    // Only partitions this member still owns: another member may be past these positions.
    let mut last = TopicPartitionList::new();
    {
        // The assignment list holds references to the client's partitions: it must be
        // gone before the client is destroyed, which otherwise waits for it.
        let owned = if consumer.assignment_lost() {
            TopicPartitionList::new()
        } else {
            consumer.assignment().unwrap_or_default()
        };
        for ((topic, partition), next) in positions {
            if owned.find_partition(&topic, partition).is_some() {
                last.add_partition_offset(&topic, partition, Offset::Offset(next))?;
            }
        }
    }
    let (done, closed) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("kafka-close".to_owned())
        .spawn(move || {
            let committed = if last.count() == 0 {
                Ok(())
            } else {
                consumer.commit(&last, CommitMode::Sync)
            };
            // Leaving revokes every partition: with nothing left to commit, the revoke
            // handler does not commit them a second time.
            consumer
                .context()
                .state
                .positions
                .lock()
                .expect("positions")
                .clear();
            drop(consumer);
            let _ = done.send(committed);
        });
    if let Err(e) = spawned {
        warn!(%group, error = %e, "could not start the closing thread; leaving without a final commit");
        return Ok(());
    }
    match tokio::time::timeout(CLOSE_TIMEOUT, closed).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => {
            warn!(%group, error = %e, "final commit failed; records after the last commit will be redelivered");
        }
        Ok(Err(_)) => warn!(%group, "the closing thread panicked"),
        Err(_) => warn!(
            %group,
            timeout_s = CLOSE_TIMEOUT.as_secs(),
            "the broker did not answer the final commit in time; records after the last commit will be redelivered"
        ),
    }
    Ok(())
}

/// What one member knows about its own progress, shared between the code that processes
/// records and the callbacks librdkafka runs on rebalances and commit results.
pub(crate) struct GroupState {
    group: String,
    /// The next position of every partition this member owns and has processed.
    positions: Mutex<BTreeMap<(String, i32), i64>>,
    /// Set when a commit failed: the next commit carries every owned position again.
    recommit: AtomicBool,
    /// Set when a position was recorded that no commit has carried yet.
    unsent: AtomicBool,
    /// When [`Self::commit_unsent`] last committed: the clock a [`ConsumerLoop`] commits on.
    committed_at: Mutex<tokio::time::Instant>,
    metrics: ConsumerMetrics,
    /// The partitions whose lag was last reported.
    lagging: Arc<Mutex<std::collections::BTreeSet<(String, i32)>>>,
}

impl GroupState {
    /// Records `next` positions as processed and commits them without waiting. A commit
    /// that fails is logged, counted and carried by the next one: the member keeps
    /// consuming (at-least-once allows the redelivery a lost commit can cause).
    pub(crate) fn commit<C: Consumer<GroupContext>>(
        &self,
        consumer: &C,
        next: impl IntoIterator<Item = ((String, i32), i64)>,
    ) {
        // Expelled (for instance past `max.poll.interval.ms`): the partitions may already
        // be another member's, and not every broker refuses a stale member's commit.
        if consumer.assignment_lost() {
            self.commit_failed("this member lost its partitions; its commit is dropped");
            return;
        }
        let mut positions = self.positions.lock().expect("positions");
        let mut list = TopicPartitionList::new();
        let everything = self.recommit.swap(false, Ordering::Relaxed);
        for ((topic, partition), offset) in next {
            if !everything {
                let _ = list.add_partition_offset(&topic, partition, Offset::Offset(offset));
            }
            positions.insert((topic, partition), offset);
        }
        if everything {
            for ((topic, partition), offset) in positions.iter() {
                let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*offset));
            }
        }
        drop(positions);
        if list.count() == 0 {
            return;
        }
        if let Err(e) = consumer.commit(&list, CommitMode::Async) {
            self.commit_failed(&e.to_string());
        }
    }

    /// Records `next` positions as processed; [`Self::commit_unsent`] commits them.
    pub(crate) fn record(&self, next: impl IntoIterator<Item = ((String, i32), i64)>) {
        self.positions.lock().expect("positions").extend(next);
        self.unsent.store(true, Ordering::Relaxed);
    }

    /// When the recorded positions are due for a commit ([`COMMIT_INTERVAL`] after the
    /// last one); `None` while every position is committed.
    pub(crate) fn commit_due(&self) -> Option<tokio::time::Instant> {
        let committed_at = *self.committed_at.lock().expect("committed_at");
        self.unsent
            .load(Ordering::Relaxed)
            .then_some(committed_at + COMMIT_INTERVAL)
    }

    /// Commits every owned position without waiting, if one was recorded since the last
    /// commit, and starts the commit clock again.
    pub(crate) fn commit_unsent<C: Consumer<GroupContext>>(&self, consumer: &C) {
        *self.committed_at.lock().expect("committed_at") = tokio::time::Instant::now();
        let owned = !self.positions.lock().expect("positions").is_empty();
        if self.unsent.swap(false, Ordering::Relaxed) && owned {
            self.recommit.store(true, Ordering::Relaxed);
            self.commit(consumer, []);
        }
    }

    fn commit_failed(&self, error: &str) {
        self.recommit.store(true, Ordering::Relaxed);
        // A member that commits on a clock tries again on its next tick.
        self.unsent.store(true, Ordering::Relaxed);
        self.metrics.commit_failed(&self.group);
        warn!(group = %self.group, error, "offset commit failed; the next commit retries it");
    }

    /// Every owned partition's next position, for the final commit.
    pub(crate) fn positions(&self) -> BTreeMap<(String, i32), i64> {
        self.positions.lock().expect("positions").clone()
    }
}

/// Acts on rebalances and commit results for one member (see [`GroupState`]).
pub(crate) struct GroupContext {
    pub(crate) state: Arc<GroupState>,
}

impl ClientContext for GroupContext {
    /// The client's statistics (every 5 s): the lag of each partition this member owns.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let state = &self.state;
        let mut now = Vec::new();
        for (topic, stats) in statistics.topics {
            for (partition, p) in stats.partitions {
                // -1 is the client's bucket of unassigned messages; a lag of -1 is unknown
                // (nothing consumed yet); "none" is a partition this member does not fetch.
                if partition >= 0 && p.consumer_lag >= 0 && p.fetch_state != "none" {
                    now.push((topic.clone(), partition, p.consumer_lag));
                }
            }
        }
        state.metrics.lagging(&state.group, now, &state.lagging);
    }
}

impl ConsumerContext for GroupContext {
    /// Before partitions go to another member, what was processed on them is committed
    /// (when they are revoked, not lost: a member that was already expelled can no longer
    /// commit) and forgotten, so that this member's final commit cannot rewind the next
    /// owner's progress.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let state = &self.state;
        tracing::info!(group = %state.group, ?rebalance, "partitions rebalancing");
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let mut last = TopicPartitionList::new();
        {
            let mut positions = state.positions.lock().expect("positions");
            for element in revoked.elements() {
                let key = (element.topic().to_owned(), element.partition());
                if let Some(next) = positions.remove(&key) {
                    let _ = last.add_partition_offset(&key.0, key.1, Offset::Offset(next));
                }
            }
        }
        if last.count() == 0 || consumer.assignment_lost() {
            return;
        }
        // Synchronous, so that a refused commit (an expelled member) is known and counted
        // here. It runs inside a poll, on an async runtime's thread: never during a
        // consumer's destruction, whose positions `Member` and `close` clear first (that
        // revocation waits for a coordinator that may be gone).
        if let Err(e) = consumer.commit(&last, CommitMode::Sync) {
            state.metrics.commit_failed(&state.group);
            warn!(group = %state.group, error = %e, "commit of revoked partitions failed; their next owner may see records again");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            self.state.commit_failed(&e.to_string());
        }
    }
}

/// How often a [`ConsumerLoop`] commits its positions while records flow (or while a
/// handler is busy with a slow one). Not after each record: every commit is a write at
/// the group coordinator, and a member committing thousands of times a second outran
/// Tansu's, whose queue then held the member's heartbeats past its session timeout — the
/// member was expelled, and waited for its queued commits before it could rejoin. A crash
/// redelivers at most this much more, as at-least-once allows; a rebalance and a clean
/// stop commit at once.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// A consumer group member that feeds records to a [`Handler`] one at a time.
#[derive(Clone)]
pub struct ConsumerLoop {
    config: KafkaConfig,
    group: String,
    topics: Vec<String>,
    dead_letters: DeadLetters,
    metrics: ConsumerMetrics,
}

enum Outcome {
    Processed,
    DeadLettered,
    Cancelled,
}

impl ConsumerLoop {
    /// `dead_letters` produces to `<topic>.dlq`; its codec registers the DeadLetter schema.
    pub fn new(
        config: &KafkaConfig,
        group: impl Into<String>,
        topics: Vec<String>,
        dead_letters: Producer,
    ) -> Self {
        let group = group.into();
        Self {
            config: config.clone(),
            dead_letters: DeadLetters::new(config, &group, dead_letters),
            group,
            topics,
            metrics: ConsumerMetrics::unregistered(),
        }
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// Reports into `metrics` (see [`ConsumerMetrics::register`]).
    pub fn with_metrics(mut self, metrics: ConsumerMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Consumes until `cancel` fires. The record in flight is finished and committed first.
    pub async fn run<H: Handler>(self, handler: H, cancel: CancellationToken) -> Result<()> {
        let consumer = Member::new(group_consumer(
            &self.config,
            &self.group,
            &self.topics,
            self.metrics.clone(),
        )?);
        let state = consumer.context().state.clone();
        let handler = Arc::new(handler);
        self.metrics.started(&self.topics, &self.group);

        loop {
            let message = tokio::select! {
                () = cancel.cancelled() => break,
                () = sleep_until(state.commit_due()) => {
                    state.commit_unsent(&*consumer);
                    continue;
                }
                message = consumer.recv() => message,
            };
            let record = match message {
                Ok(message) => Record::from(message.detach()),
                Err(e) => {
                    warn!(group = %self.group, error = %e, "consume failed, retrying");
                    tokio::time::sleep(RETRY_MIN).await;
                    continue;
                }
            };
            let span = info_span!(
                "process",
                otel.name = %format_args!("process {}", record.topic),
                otel.kind = "consumer",
                messaging.system = "kafka",
                messaging.operation.type = "process",
                messaging.operation.name = "process",
                messaging.destination.name = %record.topic,
                messaging.destination.partition.id = record.partition,
                messaging.kafka.offset = record.offset,
                messaging.consumer.group.name = %self.group,
            );
            let _ = span.set_parent(mlops_telemetry::extract_context(record.headers.as_ref()));
            let started = std::time::Instant::now();
            let processing = self
                .process(handler.as_ref(), &record, &cancel)
                .instrument(span);
            tokio::pin!(processing);
            // A slow handler does not hold back the commit of the records before it.
            let outcome = loop {
                tokio::select! {
                    outcome = &mut processing => break outcome,
                    () = sleep_until(state.commit_due()) => state.commit_unsent(&*consumer),
                }
            };
            let outcome = match outcome {
                Outcome::Cancelled => break,
                Outcome::Processed => "processed",
                Outcome::DeadLettered => "dead_lettered",
            };
            state.record([((record.topic.clone(), record.partition), record.offset + 1)]);
            if state
                .commit_due()
                .is_some_and(|due| due <= tokio::time::Instant::now())
            {
                state.commit_unsent(&*consumer);
            }
            self.metrics.finished(
                &record.topic,
                &self.group,
                outcome,
                started.elapsed().as_secs_f64(),
            );
        }

        // Asynchronous commits may still be queued: make the last positions durable.
        let positions = state.positions();
        close(consumer.into_inner(), &self.group, positions).await
    }

    async fn process<H: Handler>(
        &self,
        handler: &H,
        record: &Record,
        cancel: &CancellationToken,
    ) -> Outcome {
        let mut backoff = RETRY_MIN;
        loop {
            let failure = match handler.handle(record).await {
                Ok(()) => return Outcome::Processed,
                Err(HandlerError::Poison { class, reason }) => {
                    match self.dead_letters.send(record, &class, &reason).await {
                        Ok(()) => {
                            self.metrics.dead_lettered(&record.topic, &class);
                            return Outcome::DeadLettered;
                        }
                        Err(e) => format!("dead-lettering failed: {e}"),
                    }
                }
                Err(HandlerError::Retry { reason }) => reason,
            };
            self.metrics.retried(&record.topic, &self.group);
            warn!(
                topic = %record.topic,
                partition = record.partition,
                offset = record.offset,
                reason = %failure,
                retry_in_ms = backoff.as_millis() as u64,
                "record not processed, retrying"
            );
            tokio::select! {
                () = cancel.cancelled() => return Outcome::Cancelled,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }
}

/// Sleeps until `due`, or for ever when there is nothing due.
async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

impl ConsumerLoop {
    /// Consumes `topic` (created first with `partitions`, so a subscription by name sees
    /// it at once; a `^pattern` subscribes to every matching topic) until `cancel` fires, starting the loop again after a failure (a broker
    /// that went away): a service's consumer never stops for good while the service runs.
    /// Runs until `cancel` fires, starting the loop again (after creating its topic with
    /// `partitions` if missing) whenever it stops on an error: a service's consumers
    /// outlive a broker that goes away.
    pub async fn run_until_cancelled<H: Handler + Clone>(
        self,
        partitions: i32,
        handler: H,
        cancel: CancellationToken,
    ) {
        let (config, group) = (self.config.clone(), self.group.clone());
        let topic = self.topics.first().cloned().unwrap_or_default();
        // A pattern (`^...`) names no topic to create: it follows those that appear.
        let spec: Vec<TopicSpec> = if topic.starts_with('^') {
            Vec::new()
        } else {
            vec![TopicSpec::new(&topic, partitions)]
        };
        while !cancel.is_cancelled() {
            let ensured = tokio::select! {
                () = cancel.cancelled() => return,
                ensured = ensure_topics(&config, &spec) => ensured,
            };
            let outcome = match ensured {
                Ok(()) => self.clone().run(handler.clone(), cancel.clone()).await,
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                warn!(%group, %topic, error = %e, "consumer stopped; starting it again");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(RETRY_MAX) => {}
                }
            }
        }
    }
}

/// Writes records that can never be processed to `<topic>.dlq`: the one way dead letters
/// are made, by consumers (records they read) and by ingestion (requests it refused).
#[derive(Clone)]
pub struct DeadLetters {
    config: KafkaConfig,
    /// The consumer group named in the letters; `None` for records refused before they
    /// reached a topic.
    group: Option<String>,
    producer: Producer,
    topics: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl DeadLetters {
    /// `producer`'s codec registers the DeadLetter schema; `group` is named in the letters.
    pub fn new(config: &KafkaConfig, group: impl Into<String>, producer: Producer) -> Self {
        Self {
            group: Some(group.into()),
            ..Self::without_group(config, producer)
        }
    }

    /// For records refused before they reached their topic (an API's validation).
    pub fn without_group(config: &KafkaConfig, producer: Producer) -> Self {
        Self {
            config: config.clone(),
            group: None,
            producer,
            topics: Default::default(),
        }
    }

    /// Sends `record` to `<its topic>.dlq` with the reason, and returns once acknowledged.
    pub async fn send(&self, record: &Record, class: &str, reason: &str) -> Result<()> {
        let original_headers = record
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .map(|h| {
                (
                    h.key.to_owned(),
                    Bytes(h.value.unwrap_or_default().to_vec()),
                )
            })
            .collect();
        self.deliver(DeadLetter {
            source_topic: record.topic.clone(),
            source_partition: record.partition,
            source_offset: record.offset,
            consumer_group: self.group.clone(),
            reason: reason.to_owned(),
            error_class: class.to_owned(),
            key: record.key.clone().map(Bytes),
            value: record.payload.clone().map(Bytes),
            headers: original_headers,
            failed_at: now_millis(),
        })
        .await
    }

    /// Sends `value`, refused on its way to `topic` (so it has no partition or offset,
    /// both -1 in the letter), to `<topic>.dlq` with the reason.
    pub async fn send_refused(
        &self,
        topic: &str,
        key: Option<Vec<u8>>,
        value: Vec<u8>,
        class: &str,
        reason: &str,
    ) -> Result<()> {
        self.deliver(DeadLetter {
            source_topic: topic.to_owned(),
            source_partition: -1,
            source_offset: -1,
            consumer_group: self.group.clone(),
            reason: reason.to_owned(),
            error_class: class.to_owned(),
            key: key.map(Bytes),
            value: Some(Bytes(value)),
            headers: Default::default(),
            failed_at: now_millis(),
        })
        .await
    }

    /// Produces `letter` to its dead-letter topic (created on first use: pattern
    /// subscriptions do not know their topics up front), with the reason and source in
    /// headers too, so tools can filter without decoding.
    async fn deliver(&self, letter: DeadLetter) -> Result<()> {
        let topic = topics::dead_letter(&letter.source_topic);
        let known = self.topics.lock().expect("dlq set").contains(&topic);
        if !known {
            ensure_topics(&self.config, &[TopicSpec::new(&topic, 1)]).await?;
            self.topics.lock().expect("dlq set").insert(topic.clone());
        }
        let partition = letter.source_partition.to_string();
        let offset = letter.source_offset.to_string();
        let mut fields = vec![
            (dlq_headers::REASON, letter.reason.as_str()),
            (dlq_headers::ERROR_CLASS, letter.error_class.as_str()),
            (dlq_headers::SOURCE_TOPIC, letter.source_topic.as_str()),
            (dlq_headers::SOURCE_PARTITION, partition.as_str()),
            (dlq_headers::SOURCE_OFFSET, offset.as_str()),
        ];
        if let Some(group) = &letter.consumer_group {
            fields.push((dlq_headers::CONSUMER_GROUP, group.as_str()));
        }
        let headers = fields
            .into_iter()
            .fold(OwnedHeaders::new(), |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            });
        let key = letter.key.as_ref().map(|k| k.0.clone());
        self.producer
            .send_event(&topic, key.as_deref(), &letter, headers)
            .await?;
        warn!(
            topic = %letter.source_topic,
            partition = letter.source_partition,
            offset = letter.source_offset,
            class = %letter.error_class,
            reason = %letter.reason,
            "dead-lettered record"
        );
        Ok(())
    }
}
