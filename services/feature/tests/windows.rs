//! Window aggregations of the streaming pipeline against hand-computed values, across
//! micro-batches, with out-of-order events inside the allowed lateness and a late one past it.

// Tests drive the services from outside, as a user would: plain tasks and clients.
#![allow(clippy::disallowed_methods)]

use feature::{
    pipeline::{ENTITY, OFFSET, PARTITION, TIME, ViewPipeline},
    spec::FeatureViewSpec,
};
use polars::prelude::*;

const MINUTE: i64 = 60_000;

fn spec() -> FeatureViewSpec {
    FeatureViewSpec::from_toml(
        r#"
        name = "spend"
        source = "payments"
        entity_key = "user"
        event_time = "ts"
        allowed_lateness = "10m"

        [[features]]
        name = "amount_cents"
        expr = "amount * 100"
        cast = "long"

        [[aggregations]]
        name = "sum_1h"
        column = "amount"
        function = "sum"
        window = "1h"

        [[aggregations]]
        name = "count_1h"
        function = "count"
        window = "1h"

        [[aggregations]]
        name = "mean_1h"
        column = "amount"
        function = "mean"
        window = "1h"

        [[aggregations]]
        name = "max_1h"
        column = "amount"
        function = "max"
        window = "1h"

        [[aggregations]]
        name = "std_1h"
        column = "amount"
        function = "std"
        window = "1h"

        [[aggregations]]
        name = "hourly_sum"
        column = "amount"
        function = "sum"
        window = "1h"
        kind = "tumbling"
        "#,
    )
    .unwrap()
}

fn pipeline() -> ViewPipeline {
    let spec = spec();
    spec.check().unwrap();
    assert_eq!(spec.source_columns(), ["user", "ts", "amount"]);
    ViewPipeline::new(
        &spec,
        1,
        vec![
            ("user".into(), DataType::String),
            ("ts".into(), DataType::Int64),
            ("amount".into(), DataType::Float64),
        ],
    )
    .unwrap()
}

/// Events as (user, minute, amount, offset), all on partition 0.
fn batch(events: &[(&str, i64, f64, i64)]) -> DataFrame {
    batch_on(0, events)
}

fn batch_on(partition: i32, events: &[(&str, i64, f64, i64)]) -> DataFrame {
    df![
        ENTITY => events.iter().map(|e| e.0).collect::<Vec<_>>(),
        TIME => events.iter().map(|e| e.1 * MINUTE).collect::<Vec<_>>(),
        PARTITION => vec![partition; events.len()],
        OFFSET => events.iter().map(|e| e.3).collect::<Vec<_>>(),
        "user" => events.iter().map(|e| e.0).collect::<Vec<_>>(),
        "ts" => events.iter().map(|e| e.1 * MINUTE).collect::<Vec<_>>(),
        "amount" => events.iter().map(|e| e.2).collect::<Vec<_>>(),
    ]
    .unwrap()
}

/// The output row of the event at `offset`.
fn row(rows: &DataFrame, offset: i64) -> Vec<(String, AnyValue<'static>)> {
    let picked = rows
        .clone()
        .lazy()
        .filter(col("source_offset").eq(lit(offset)))
        .collect()
        .unwrap();
    assert_eq!(picked.height(), 1, "one row for offset {offset}: {rows}");
    picked
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.get(0).unwrap().into_static()))
        .collect()
}

fn value(row: &[(String, AnyValue<'static>)], name: &str) -> f64 {
    let (_, v) = row.iter().find(|(n, _)| n == name).unwrap();
    v.extract::<f64>().unwrap_or(f64::NAN)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn sliding_and_tumbling_windows_match_hand_computed_values_across_batches() {
    let mut pipeline = pipeline();

    let first = pipeline
        .process(
            batch(&[("u1", 0, 10.0, 0), ("u2", 10, 5.0, 1), ("u1", 30, 20.0, 2)]),
            1,
        )
        .unwrap();
    assert!(first.late.is_empty());
    assert_eq!(first.rows.height(), 3);
    let r = row(&first.rows, 2);
    assert_eq!(value(&r, "sum_1h"), 30.0);
    assert_eq!(value(&r, "count_1h"), 2.0);
    assert_eq!(value(&r, "mean_1h"), 15.0);
    assert_eq!(value(&r, "max_1h"), 20.0);
    assert!(close(value(&r, "std_1h"), 50f64.sqrt()), "{r:?}");
    assert_eq!(value(&r, "amount_cents"), 2000.0);
    assert_eq!(value(&r, "hourly_sum"), 30.0);
    // Windows are per entity.
    assert_eq!(value(&row(&first.rows, 1), "sum_1h"), 5.0);

    // Out of order: minute 38 arrives after minute 45 (7 minutes behind, allowed: 10);
    // minute 20 arrives 25 minutes behind the newest and is late.
    let second = pipeline
        .process(
            batch(&[("u1", 45, 1.0, 3), ("u1", 38, 2.0, 4), ("u1", 20, 100.0, 5)]),
            2,
        )
        .unwrap();
    assert_eq!(second.late, vec![(0, 5)]);
    let at45 = row(&second.rows, 3);
    assert_eq!(
        value(&at45, "sum_1h"),
        33.0,
        "10 + 20 + 2 + 1, never the late 100"
    );
    assert_eq!(value(&at45, "count_1h"), 4.0);
    assert_eq!(value(&at45, "mean_1h"), 8.25);
    assert_eq!(value(&at45, "hourly_sum"), 33.0);
    let at38 = row(&second.rows, 4);
    assert_eq!(
        value(&at38, "sum_1h"),
        32.0,
        "the window ending at 38 excludes 45"
    );
    assert_eq!(value(&at38, "hourly_sum"), 32.0);
    assert_eq!(second.rows.height(), 2);

    // Minute 100: the sliding hour (40, 100] holds 45 and 100; the tumbling hour [60, 120)
    // only 100.
    let third = pipeline.process(batch(&[("u1", 100, 7.0, 6)]), 3).unwrap();
    let at100 = row(&third.rows, 6);
    assert_eq!(value(&at100, "sum_1h"), 8.0);
    assert_eq!(value(&at100, "count_1h"), 2.0);
    assert_eq!(value(&at100, "hourly_sum"), 7.0);

    // Minute 95 arrives after 100 (inside the lateness): its own row, and the row of 100
    // emitted again with the new value under a higher revision.
    let fourth = pipeline.process(batch(&[("u1", 95, 3.0, 7)]), 4).unwrap();
    assert!(fourth.late.is_empty());
    assert_eq!(value(&row(&fourth.rows, 7), "sum_1h"), 6.0, "38 + 45 + 95");
    let again = row(&fourth.rows, 6);
    assert_eq!(value(&again, "sum_1h"), 11.0, "45 + 95 + 100");
    assert_eq!(value(&again, "hourly_sum"), 10.0, "95 + 100");
    assert_eq!(value(&again, "revision"), 4.0);
}

#[test]
fn the_window_state_survives_a_restore() {
    let mut before = pipeline();
    before
        .process(batch(&[("u1", 0, 10.0, 0), ("u1", 30, 20.0, 1)]), 1)
        .unwrap();
    let mut resumed = pipeline();
    resumed.restore(before.state().clone());
    let out = resumed.process(batch(&[("u1", 50, 1.0, 2)]), 2).unwrap();
    assert_eq!(value(&row(&out.rows, 2), "sum_1h"), 31.0);
    // Lateness is judged against the restored watermark too.
    let late = resumed.process(batch(&[("u1", 5, 1.0, 3)]), 3).unwrap();
    assert_eq!(late.late, vec![(0, 3)]);
}

#[test]
fn lateness_is_judged_per_partition() {
    let mut pipeline = pipeline();
    // Partition 1 is read behind partition 0: its events are not late for that.
    let mut both = batch_on(0, &[("u1", 100, 1.0, 0)]);
    both.vstack_mut(&batch_on(1, &[("u2", 20, 2.0, 0)]))
        .unwrap();
    let out = pipeline.process(both, 1).unwrap();
    assert!(out.late.is_empty(), "{:?}", out.late);
    assert_eq!(out.rows.height(), 2);
    // Behind its own partition's newest event by more than the lateness, it is.
    let out = pipeline
        .process(batch_on(1, &[("u2", 5, 3.0, 1), ("u2", 15, 4.0, 2)]), 2)
        .unwrap();
    assert_eq!(out.late, vec![(1, 1)]);
    let rows = out.rows;
    assert_eq!(
        value(&row(&rows, 2), "sum_1h"),
        4.0,
        "(-45, 15] holds only itself"
    );
    // Minute 20, computed before 15 arrived, is emitted again: (-40, 20] now holds both.
    assert_eq!(value(&row(&rows, 0), "sum_1h"), 6.0);
    assert_eq!(rows.height(), 2);
}

#[test]
fn an_event_whose_value_a_cast_refuses_is_left_out_with_the_reason() {
    let spec = FeatureViewSpec::from_toml(
        r#"
        name = "codes"
        source = "payments"
        entity_key = "user"
        event_time = "ts"

        [[features]]
        name = "code"
        column = "code"
        cast = "long"

        [[aggregations]]
        name = "count_1h"
        function = "count"
        window = "1h"
        "#,
    )
    .unwrap();
    spec.check().unwrap();
    let mut pipeline = ViewPipeline::new(
        &spec,
        1,
        vec![
            ("user".into(), DataType::String),
            ("ts".into(), DataType::Int64),
            ("code".into(), DataType::String),
        ],
    )
    .unwrap();
    let times = [MINUTE, 2 * MINUTE, 3 * MINUTE];
    let frame = df![
        ENTITY => ["a", "a", "a"],
        TIME => times,
        PARTITION => [0, 0, 0],
        OFFSET => [0i64, 1, 2],
        "user" => ["a", "a", "a"],
        "ts" => times,
        "code" => [Some("12"), Some("x1"), None],
    ]
    .unwrap();
    let output = pipeline.process(frame, 1).unwrap();
    assert_eq!(
        output.invalid,
        [(
            0,
            1,
            "features.code: the value cannot be cast to long".to_owned()
        )]
    );
    // The other events go on; the refused one counts in no window.
    assert_eq!(output.rows.height(), 2, "{}", output.rows);
    let first = row(&output.rows, 0);
    assert!(
        first.contains(&("code".into(), AnyValue::Int64(12))),
        "{first:?}"
    );
    assert!(
        first.contains(&("count_1h".into(), AnyValue::Int64(1))),
        "{first:?}"
    );
    let last = row(&output.rows, 2);
    assert!(last.contains(&("code".into(), AnyValue::Null)), "{last:?}");
    assert!(
        last.contains(&("count_1h".into(), AnyValue::Int64(2))),
        "{last:?}"
    );
}
