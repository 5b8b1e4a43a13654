//! The streaming computation of one feature view version, in polars' lazy API.
//!
//! A micro-batch of raw events arrives as a frame with the internal columns below plus the
//! source columns the view reads. The pipeline keeps a buffer of recent events per view (as
//! long as the longest window plus the allowed lateness), so that windows span batches and
//! an out-of-order event can still update the windows it falls into: the rows it changes are
//! emitted again with a higher `revision`; readers keep the highest revision of each event.

use std::collections::BTreeMap;

use polars::prelude::*;

use crate::spec::{AggFunction, FeatureViewSpec, ValueType, WindowKind, parse_duration};

/// Internal columns of input frames.
pub const ENTITY: &str = "__entity";
pub const TIME: &str = "__time";
pub const PARTITION: &str = "__partition";
pub const OFFSET: &str = "__offset";
const NEW: &str = "__new";
const TS: &str = "__ts";
const ONE: &str = "__one";
const MARK: &str = "__mark";
const ROW: &str = "__row";

/// What one micro-batch produced.
#[derive(Debug)]
pub struct BatchOutput {
    /// Feature rows: `entity_id`, `event_time`, `view_version`, the features,
    /// `source_partition`, `source_offset`, `revision`.
    pub rows: DataFrame,
    /// (partition, offset) of events later than the allowed lateness.
    pub late: Vec<(i32, i64)>,
    /// (partition, offset, reason) of events a row feature cannot be computed for (a value
    /// its cast refuses); left out of the windows and the rows.
    pub invalid: Vec<Refused>,
}

/// An event left out of a batch: its partition, its offset, the reason.
pub type Refused = (i32, i64, String);

/// State carried between micro-batches; persisted with each checkpoint.
#[derive(Debug, Clone)]
pub struct PipelineState {
    /// Recent events: the internal columns and the source columns.
    pub buffer: DataFrame,
    /// Highest event time seen, per source partition. Lateness is judged per partition (an
    /// entity's events share one), so a partition read behind another is not "late".
    pub watermarks: BTreeMap<i32, i64>,
}

pub struct ViewPipeline {
    version: i32,
    lateness: i64,
    max_window: i64,
    /// Source columns with the types the decoder produces.
    source: Vec<(String, DataType)>,
    row_features: Vec<Expr>,
    /// Per cast row feature: the reason a refused value gives, the value before the cast,
    /// the target type.
    casts: Vec<(String, Expr, DataType)>,
    aggregations: Vec<Expr>,
    feature_names: Vec<String>,
    state: PipelineState,
    /// Rows of the buffer after it was last pruned to the horizon.
    pruned_rows: usize,
}

/// The buffer is pruned to the horizon once it has grown by an eighth (or gathered
/// [`PRUNE_AT_CHUNKS`] appended chunks) since it last was: `1 / PRUNE_AT_GROWTH`.
const PRUNE_AT_GROWTH: usize = 8;
const PRUNE_AT_CHUNKS: usize = 64;

impl ViewPipeline {
    /// `source` lists every column of [`FeatureViewSpec::source_columns`] with its type.
    pub fn new(
        spec: &FeatureViewSpec,
        version: i32,
        source: Vec<(String, DataType)>,
    ) -> PolarsResult<Self> {
        let mut row_features = Vec::new();
        let mut casts = Vec::new();
        let mut feature_names = Vec::new();
        for feature in &spec.features {
            let mut expr = match (&feature.expr, &feature.column) {
                (Some(text), _) => polars::sql::sql_expr(text)?,
                (None, Some(column)) => col(column.as_str()),
                (None, None) => col(feature.name.as_str()),
            };
            if let Some(cast) = feature.cast {
                let reason = format!(
                    "features.{}: the value cannot be cast to {}",
                    feature.name,
                    format!("{cast:?}").to_lowercase()
                );
                casts.push((reason, expr.clone(), dtype_of(cast)));
                expr = expr.strict_cast(dtype_of(cast));
            }
            if let Some(fill) = &feature.fill {
                expr = expr.fill_null(mlops_ml::json_literal(fill));
            }
            row_features.push(expr.alias(feature.name.as_str()));
            feature_names.push(feature.name.clone());
        }
        let mut aggregations = Vec::new();
        for aggregation in &spec.aggregations {
            let window = parse_duration(&aggregation.window).map_err(
                |e| polars_err!(InvalidOperation: "aggregation {}: {e}", aggregation.name),
            )?;
            let values = match &aggregation.column {
                Some(column) => col(column.as_str()).cast(DataType::Float64),
                None => col(ONE),
            };
            let expr = match aggregation.kind {
                WindowKind::Sliding => sliding(aggregation.function, values, window)?,
                WindowKind::Tumbling => tumbling(aggregation.function, values, window)?,
            };
            aggregations.push(expr.alias(aggregation.name.as_str()));
            feature_names.push(aggregation.name.clone());
        }
        let mut pipeline = Self {
            version,
            lateness: spec.lateness_ms(),
            max_window: spec.max_window_ms(),
            source,
            row_features,
            casts,
            aggregations,
            feature_names,
            state: PipelineState {
                buffer: DataFrame::empty(),
                watermarks: BTreeMap::new(),
            },
            pruned_rows: 0,
        };
        pipeline.state.buffer = pipeline.empty_input();
        Ok(pipeline)
    }

    /// Source columns read, with their types.
    pub fn source(&self) -> &[(String, DataType)] {
        &self.source
    }

    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    pub fn state(&self) -> &PipelineState {
        &self.state
    }

    /// Resumes from a checkpoint's state.
    pub fn restore(&mut self, state: PipelineState) {
        self.pruned_rows = state.buffer.height();
        self.state = state;
    }

    /// Schema of the input frames: internal columns, then the source columns.
    pub fn input_schema(&self) -> Schema {
        let mut schema = Schema::default();
        schema.insert(ENTITY.into(), DataType::String);
        schema.insert(TIME.into(), DataType::Int64);
        schema.insert(PARTITION.into(), DataType::Int32);
        schema.insert(OFFSET.into(), DataType::Int64);
        for (name, dtype) in &self.source {
            schema.insert(name.as_str().into(), dtype.clone());
        }
        schema
    }

    pub fn empty_input(&self) -> DataFrame {
        DataFrame::empty_with_schema(&self.input_schema())
    }

    /// Types of the feature columns, in order (computed on an empty batch).
    pub fn output_schema(&self) -> PolarsResult<Vec<(String, DataType)>> {
        let empty = self.compute(self.empty_input().lazy())?.collect()?;
        Ok(self
            .feature_names
            .iter()
            .map(|name| {
                let dtype = empty
                    .column(name)
                    .map(|c| c.dtype().clone())
                    .unwrap_or(DataType::Null);
                (name.clone(), dtype)
            })
            .collect())
    }

    /// Events whose value a cast refuses (present before the cast, null after a lenient
    /// one), with the first feature at fault; and the batch without them.
    fn split_invalid(&self, batch: DataFrame) -> PolarsResult<(DataFrame, Vec<Refused>)> {
        if self.casts.is_empty() {
            return Ok((batch, Vec::new()));
        }
        let refused = |value: &Expr, dtype: &DataType| {
            value
                .clone()
                .is_not_null()
                .and(value.clone().cast(dtype.clone()).is_null())
        };
        let mut fault = lit(NULL).cast(DataType::String);
        for (reason, value, dtype) in self.casts.iter().rev() {
            fault = when(refused(value, dtype))
                .then(lit(reason.clone()))
                .otherwise(fault);
        }
        let checked = batch.lazy().with_column(fault.alias("__fault")).collect()?;
        let faulty = checked
            .clone()
            .lazy()
            .filter(col("__fault").is_not_null())
            .select([col(PARTITION), col(OFFSET), col("__fault")])
            .collect()?;
        if faulty.height() == 0 {
            return Ok((checked.drop("__fault")?, Vec::new()));
        }
        let partitions = faulty.column(PARTITION)?.i32()?;
        let offsets = faulty.column(OFFSET)?.i64()?;
        let reasons = faulty.column("__fault")?.str()?;
        let invalid = (0..faulty.height())
            .filter_map(|i| {
                Some((
                    partitions.get(i)?,
                    offsets.get(i)?,
                    reasons.get(i)?.to_owned(),
                ))
            })
            .collect();
        let valid = checked
            .lazy()
            .filter(col("__fault").is_null())
            .drop(cols(["__fault"]))
            .collect()?;
        Ok((valid, invalid))
    }

    /// Computes one micro-batch. `revision` must grow from batch to batch.
    pub fn process(&mut self, batch: DataFrame, revision: i64) -> PolarsResult<BatchOutput> {
        let (batch, invalid) = self.split_invalid(batch)?;
        // An event is late when it is older than the newest event time seen before it in
        // its partition (in arrival order) minus the allowed lateness.
        let marks = self.marks()?;
        let newest_before = polars::lazy::dsl::max_horizontal([
            col(TIME)
                .cum_max(false)
                .shift(lit(1))
                .over([col(PARTITION)])?,
            col(MARK),
        ])?;
        let is_late = col(TIME)
            .lt(newest_before - lit(self.lateness))
            .fill_null(lit(false));
        let flagged = batch
            .lazy()
            .with_row_index(ROW, None)
            .join(
                marks.clone(),
                [col(PARTITION)],
                [col(PARTITION)],
                JoinArgs::new(JoinType::Left),
            )
            .sort([ROW], SortMultipleOptions::default())
            .with_column(is_late.alias("__late"))
            .drop(cols([ROW, MARK]))
            .collect()?;
        let late_rows = flagged
            .clone()
            .lazy()
            .filter(col("__late"))
            .select([col(PARTITION), col(OFFSET)])
            .collect()?;
        let late = late_rows
            .column(PARTITION)?
            .i32()?
            .into_no_null_iter()
            .zip(late_rows.column(OFFSET)?.i64()?.into_no_null_iter())
            .collect();
        let columns: Vec<Expr> = self
            .input_schema()
            .iter_names()
            .map(|n| col(n.clone()))
            .collect();
        let on_time = flagged
            .lazy()
            .filter(col("__late").not())
            .select(columns.clone())
            .with_column(lit(true).alias(NEW));
        let on_time = on_time.collect()?;
        // Windows are per entity: only the buffered events of entities with new events take
        // part in this batch, gathered from the buffer; the buffer itself is not rebuilt.
        let touched_entities = on_time.column(ENTITY)?.as_materialized_series().unique()?;
        let is_touched = col(ENTITY).is_in(lit(touched_entities).implode(false), false);
        let buffered = self
            .state
            .buffer
            .clone()
            .lazy()
            .filter(is_touched)
            .with_column(lit(false).alias(NEW));
        let combined = concat([buffered, on_time.clone().lazy()], UnionArgs::default())?
            .sort(
                [ENTITY, TIME, PARTITION, OFFSET],
                SortMultipleOptions::default().with_maintain_order(true),
            )
            .collect()?;

        // Buffered events are all older than the watermarks already: the new events alone
        // move them.
        let newest = on_time
            .clone()
            .lazy()
            .group_by([col(PARTITION)])
            .agg([col(TIME).max()])
            .collect()?;
        let mut watermarks = self.state.watermarks.clone();
        let partitions = newest.column(PARTITION)?.i32()?;
        let times = newest.column(TIME)?.i64()?;
        for i in 0..newest.height() {
            if let (Some(partition), Some(time)) = (partitions.get(i), times.get(i)) {
                let mark = watermarks.entry(partition).or_insert(time);
                *mark = (*mark).max(time);
            }
        }

        // Rows to emit: every new event, and buffered events of the same entity that an
        // out-of-order event changed (inside its window after it).
        let first_new = col(TIME).filter(col(NEW)).min().over([col(ENTITY)])?;
        let emit = col(NEW).or(col(TIME)
            .gt_eq(first_new.clone())
            .and(col(TIME).lt(first_new + lit(self.max_window)))
            .fill_null(lit(false)));
        // The order of the registered `features.<view>` schema.
        let mut output = vec![
            col(ENTITY).alias("entity_id"),
            col(TIME).alias("event_time"),
            lit(self.version).alias("view_version"),
        ];
        output.extend(self.feature_names.iter().map(|n| col(n.as_str())));
        output.extend([
            col(PARTITION).alias("source_partition"),
            col(OFFSET).alias("source_offset"),
            lit(revision).alias("revision"),
        ]);
        let rows = self
            .compute(combined.clone().lazy())?
            .filter(emit)
            .select(output)
            .collect()?;

        let horizon = self.lateness.saturating_add(self.max_window);
        let buffer = if self.max_window == 0 {
            self.empty_input()
        } else {
            // Kept: what a later on-time event of the same partition can still see. The
            // batch's on-time events are appended as a chunk of their own, and what fell
            // behind the horizon is dropped only once the buffer has grown by an eighth
            // (or gathered many chunks) since the last pruning: an event older than the
            // horizon is outside every window a later on-time event computes and is never
            // emitted again, so keeping it a while changes no row, and a batch does not
            // copy the whole buffer (its strings above all) every time.
            let mut buffer = self.state.buffer.clone();
            buffer.vstack_mut(&on_time.drop(NEW)?)?;
            if buffer.height() > self.pruned_rows + self.pruned_rows / PRUNE_AT_GROWTH
                || buffer.first_col_n_chunks() > PRUNE_AT_CHUNKS
            {
                buffer = buffer
                    .lazy()
                    .join(
                        marks_frame(&watermarks)?.lazy(),
                        [col(PARTITION)],
                        [col(PARTITION)],
                        JoinArgs::new(JoinType::Left),
                    )
                    .filter(col(TIME).gt(col(MARK) - lit(horizon)))
                    .select(columns)
                    .collect()?;
                self.pruned_rows = buffer.height();
            }
            buffer
        };
        self.state = PipelineState { buffer, watermarks };
        Ok(BatchOutput {
            rows,
            late,
            invalid,
        })
    }

    fn marks(&self) -> PolarsResult<LazyFrame> {
        Ok(marks_frame(&self.state.watermarks)?.lazy())
    }

    /// Row features and aggregations over events sorted by entity and time.
    fn compute(&self, events: LazyFrame) -> PolarsResult<LazyFrame> {
        let mut frame = events.with_columns([
            col(TIME)
                .cast(DataType::Datetime(TimeUnit::Milliseconds, None))
                .alias(TS),
            lit(1.0f64).alias(ONE),
        ]);
        if !self.row_features.is_empty() {
            frame = frame.with_columns(self.row_features.clone());
        }
        if !self.aggregations.is_empty() {
            frame = frame.with_columns(self.aggregations.clone());
        }
        Ok(frame)
    }
}

/// Watermarks as a frame to join on the partition.
fn marks_frame(watermarks: &BTreeMap<i32, i64>) -> PolarsResult<DataFrame> {
    DataFrame::new_infer_height(vec![
        Column::new(
            PARTITION.into(),
            watermarks.keys().copied().collect::<Vec<i32>>(),
        ),
        Column::new(
            MARK.into(),
            watermarks.values().copied().collect::<Vec<i64>>(),
        ),
    ])
}

fn dtype_of(value: ValueType) -> DataType {
    match value {
        ValueType::Long => DataType::Int64,
        ValueType::Double => DataType::Float64,
        ValueType::String => DataType::String,
        ValueType::Boolean => DataType::Boolean,
    }
}

/// The aggregate over `(t - window, t]` for each event of the entity.
fn sliding(function: AggFunction, values: Expr, window: i64) -> PolarsResult<Expr> {
    let options = RollingOptionsDynamicWindow {
        window_size: Duration::parse(&format!("{window}ms")),
        min_periods: 1,
        closed_window: ClosedWindow::Right,
        fn_params: None,
    };
    let by = col(TS);
    let expr = match function {
        AggFunction::Count => values
            .is_not_null()
            .cast(DataType::Float64)
            .rolling_sum_by(by, options)
            .cast(DataType::Int64),
        AggFunction::Sum => values.rolling_sum_by(by, options),
        AggFunction::Mean => values.rolling_mean_by(by, options),
        AggFunction::Min => values.rolling_min_by(by, options),
        AggFunction::Max => values.rolling_max_by(by, options),
        AggFunction::Std => values.rolling_std_by(by, options),
    };
    expr.over([col(ENTITY)])
}

/// The aggregate over the fixed window holding each event, from the window's start up to
/// and including the event.
fn tumbling(function: AggFunction, values: Expr, window: i64) -> PolarsResult<Expr> {
    let group = [col(ENTITY), col(TIME) - col(TIME) % lit(window)];
    let present = values.clone().is_not_null().cast(DataType::Float64);
    let n = present.cum_sum(false);
    let sum = values.clone().fill_null(lit(0.0)).cum_sum(false);
    let expr = match function {
        AggFunction::Count => n.cast(DataType::Int64),
        AggFunction::Sum => sum,
        AggFunction::Mean => when(n.clone().gt(lit(0.0)))
            .then(sum / n)
            .otherwise(lit(NULL)),
        AggFunction::Min => values
            .fill_null(lit(f64::INFINITY))
            .cum_min(false)
            .replace_strict_inf(),
        AggFunction::Max => values
            .fill_null(lit(f64::NEG_INFINITY))
            .cum_max(false)
            .replace_strict_inf(),
        AggFunction::Std => {
            let squares = values.clone().pow(2).fill_null(lit(0.0)).cum_sum(false);
            let variance = (squares - sum.clone() * sum / n.clone()) / (n.clone() - lit(1.0));
            when(n.gt(lit(1.0)))
                .then(variance.clip_min(lit(0.0)).sqrt())
                .otherwise(lit(NULL))
        }
    };
    expr.over(group)
}

/// Turns the ±infinity placeholders of empty running minimums/maximums back into nulls.
trait InfinityAsNull {
    fn replace_strict_inf(self) -> Expr;
}

impl InfinityAsNull for Expr {
    fn replace_strict_inf(self) -> Expr {
        when(self.clone().is_infinite())
            .then(lit(NULL).cast(DataType::Float64))
            .otherwise(self)
    }
}
