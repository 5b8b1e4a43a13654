//! The `.avsc` files are the source of truth: every typed event must encode to exactly
//! its schema's fields and come back unchanged through Avro binary.

use std::collections::{BTreeSet, HashMap};

use apache_avro::{Schema, types::Value};
use mlops_events::*;

fn round_trip<T: Event + PartialEq + std::fmt::Debug>(event: T) {
    let schema = T::schema();
    let Schema::Record(record) = &schema else {
        panic!("{} is not a record schema", T::FULL_NAME)
    };
    assert_eq!(
        record.name.fullname(None),
        T::FULL_NAME,
        "schema name differs from the type"
    );
    assert!(record.doc.is_some(), "{} has no doc", T::FULL_NAME);

    let value = apache_avro::to_value(&event).expect("serialises");
    let Value::Record(fields) = &value else {
        panic!("{} does not serialise to a record", T::FULL_NAME)
    };
    let type_fields: BTreeSet<_> = fields.iter().map(|(name, _)| name.clone()).collect();
    let schema_fields: BTreeSet<_> = record.fields.iter().map(|f| f.name.clone()).collect();
    assert_eq!(
        type_fields,
        schema_fields,
        "{}: Rust fields differ from the schema",
        T::FULL_NAME
    );
    for field in &record.fields {
        assert!(
            field.doc.is_some(),
            "{}.{} has no doc",
            T::FULL_NAME,
            field.name
        );
    }

    let resolved = value.resolve(&schema).expect("value fits its schema");
    let bytes = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .and_then(|w| w.write_value_to_vec(resolved))
        .expect("encodes");
    let decoded = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .and_then(|r| r.read_value(&mut bytes.as_slice()))
        .expect("decodes");
    let back: T = apache_avro::from_value(&decoded).expect("deserialises");
    assert_eq!(
        back,
        event,
        "{} did not survive the round trip",
        T::FULL_NAME
    );
}

fn metrics() -> HashMap<String, f64> {
    HashMap::from([("auc".to_owned(), 0.91), ("f1".to_owned(), 0.8)])
}

#[test]
fn every_schema_file_has_a_type() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("schemas dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".avsc"))
        .collect();
    files.sort();
    let known = [
        AuditRecord::SCHEMA,
        CanaryDecision::SCHEMA,
        DataEvent::SCHEMA,
        DeadLetter::SCHEMA,
        DriftEvent::SCHEMA,
        GroundTruthLabel::SCHEMA,
        ModelLifecycleEvent::SCHEMA,
        PredictionLog::SCHEMA,
        TrainingRequest::SCHEMA,
        TrainingRunResult::SCHEMA,
    ];
    assert_eq!(
        files.len(),
        known.len(),
        "a schema file has no typed event: {files:?}"
    );
    for file in files {
        let text = std::fs::read_to_string(format!("{dir}/{file}")).expect("read");
        assert!(
            known.contains(&text.as_str()),
            "{file} is not embedded by any type"
        );
    }
}

#[test]
fn data_event() {
    round_trip(DataEvent {
        event_id: new_id(),
        dataset: "payments".into(),
        entity_id: "c-1".into(),
        event_time: 1_700_000_000_000,
        ingested_at: now_millis(),
        schema_id: 7,
        payload: Bytes(vec![0, 1, 2, 255]),
        region: Some("eu".into()),
        trace_id: None,
    });
}

#[test]
fn dead_letter() {
    round_trip(DeadLetter {
        source_topic: "raw.payments".into(),
        source_partition: 2,
        source_offset: 41,
        consumer_group: Some("feature".into()),
        reason: "unknown magic byte 0x7b".into(),
        error_class: "decode".into(),
        key: None,
        value: Some(Bytes(b"{\"not\":\"avro\"}".to_vec())),
        headers: HashMap::from([("traceparent".to_owned(), Bytes(b"00-ab".to_vec()))]),
        failed_at: now_millis(),
    });
}

#[test]
fn training_request() {
    round_trip(TrainingRequest {
        request_id: new_id(),
        model_name: "fraud".into(),
        reason: TrainingReason::Drift,
        window_start: Some(1),
        window_end: None,
        triggering_event_id: Some(new_id()),
        requested_by: "monitoring".into(),
        requested_at: now_millis(),
        trace_id: None,
    });
}

#[test]
fn training_run_result() {
    round_trip(TrainingRunResult {
        run_id: new_id(),
        request_ids: vec![new_id(), new_id()],
        model_name: "fraud".into(),
        status: TrainingRunStatus::RejectedByGate,
        reason: Some("auc 0.70 below production 0.80 + margin 0.01".into()),
        algorithm: "logistic_regression".into(),
        hyperparameters: HashMap::from([("alpha".to_owned(), "0.1".to_owned())]),
        metrics: metrics(),
        snapshot_id: Some("snap-1".into()),
        feature_view: Some("txn_stats".into()),
        feature_view_version: Some(2),
        registered_version: None,
        code_version: "abc123".into(),
        started_at: 1,
        finished_at: 2,
        trace_id: None,
    });
}

#[test]
fn model_lifecycle_event() {
    round_trip(ModelLifecycleEvent {
        event_id: new_id(),
        sequence: 12,
        model_name: "fraud".into(),
        version: 2,
        stage: ModelStage::Canary,
        previous_stage: Some(ModelStage::Candidate),
        canary_percent: Some(10.0),
        artifact_uri: "file:///artifacts/ab12".into(),
        artifact_sha256: "ab12".into(),
        signature: Some("sig".into()),
        metrics: metrics(),
        lineage: Lineage {
            training_run_id: Some("run-1".into()),
            snapshot_id: None,
            feature_view: Some("txn_stats".into()),
            feature_view_version: Some(1),
            schema_ids: vec![1, 4],
            code_version: None,
        },
        reason: "validation gate passed".into(),
        actor: "training".into(),
        triggering_event_id: None,
        occurred_at: now_millis(),
        trace_id: None,
    });
}

#[test]
fn prediction_log() {
    round_trip(PredictionLog {
        request_id: new_id(),
        entity_id: Some("c-1".into()),
        model_name: "fraud".into(),
        model_version: 1,
        role: ServingRole::Canary,
        features: HashMap::from([("amount".to_owned(), 3.5)]),
        output: 0.93,
        predicted_label: Some("fraud".into()),
        latency_us: 180,
        predicted_at: now_millis(),
        trace_id: None,
        error: None,
    });
}

/// The generic encoder's bytes for `event`.
fn generic_bytes<T: Event>(event: &T) -> Vec<u8> {
    let schema = T::schema();
    let value = apache_avro::to_value(event)
        .and_then(|v| v.resolve(&schema))
        .expect("fits its schema");
    apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .and_then(|w| w.write_value_to_vec(value))
        .expect("encodes")
}

#[test]
fn prediction_log_written_directly_is_the_schemas_encoding() {
    let schema = PredictionLog::schema();
    let one = PredictionLog {
        request_id: "r-ü-1".into(),
        entity_id: Some("c-1".into()),
        model_name: "fraud".into(),
        model_version: 70_000,
        role: ServingRole::Shadow,
        features: HashMap::from([("amount".to_owned(), -3.5e300)]),
        output: f64::NAN,
        predicted_label: None,
        latency_us: -1,
        predicted_at: now_millis(),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        error: Some("row 0: amount has no value".into()),
    };
    let many = PredictionLog {
        entity_id: None,
        role: ServingRole::Production,
        features: (0..200)
            .map(|i| (format!("f{i}"), i as f64 / 7.0))
            .collect(),
        output: 0.25,
        predicted_label: Some("1".into()),
        latency_us: i64::MAX,
        trace_id: None,
        error: None,
        ..one.clone()
    };
    let empty = PredictionLog {
        features: HashMap::new(),
        role: ServingRole::Canary,
        ..many.clone()
    };
    for event in [&one, &many, &empty] {
        let mut direct = Vec::new();
        event.write_avro(&mut direct);
        let decoded = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
            .build()
            .and_then(|r| r.read_value(&mut direct.as_slice()))
            .expect("decodes with the schema");
        let back: PredictionLog = apache_avro::from_value(&decoded).expect("deserialises");
        // NaN is not equal to itself: compare its bits.
        assert_eq!(back.output.to_bits(), event.output.to_bits());
        assert_eq!(
            PredictionLog {
                output: 0.0,
                ..back
            },
            PredictionLog {
                output: 0.0,
                ..event.clone()
            }
        );
        // A map's entries may come in any order; with one or none the bytes are fixed.
        if event.features.len() <= 1 {
            assert_eq!(
                direct,
                generic_bytes(event),
                "same bytes as the generic encoder"
            );
        } else {
            assert_eq!(direct.len(), generic_bytes(event).len());
        }
    }
}

#[test]
fn ground_truth_label_numeric_and_class() {
    for label in [LabelValue::Number(1.0), LabelValue::Class("fraud".into())] {
        round_trip(GroundTruthLabel {
            label_id: new_id(),
            dataset: "payments".into(),
            entity_id: "c-1".into(),
            request_id: None,
            label,
            event_time: 5,
            received_at: 6,
            trace_id: None,
        });
    }
}

#[test]
fn drift_event() {
    round_trip(DriftEvent {
        event_id: new_id(),
        model_name: "fraud".into(),
        model_version: 1,
        window_start: 1,
        window_end: 2,
        window_size: 500,
        features: vec![DriftedFeature {
            feature: "amount".into(),
            statistic: DriftStatistic::Ks,
            value: 0.31,
            threshold: 0.01,
            p_value: Some(1e-9),
        }],
        severity: DriftSeverity::Critical,
        detected_at: now_millis(),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
    });
}

#[test]
fn canary_decision() {
    round_trip(CanaryDecision {
        decision_id: new_id(),
        model_name: "fraud".into(),
        canary_version: 2,
        production_version: Some(1),
        decision: CanaryVerdict::Widen,
        new_percent: Some(50.0),
        evidence: metrics(),
        reason: "canary error rate within bounds".into(),
        decided_at: now_millis(),
        trace_id: None,
    });
}

#[test]
fn audit_record() {
    round_trip(AuditRecord {
        audit_id: new_id(),
        actor: "alice".into(),
        role: Some("approver".into()),
        action: "model.transition".into(),
        resource: "models/fraud/versions/2".into(),
        outcome: AuditOutcome::Denied,
        reason: Some("missing role approver".into()),
        source_ip: Some("127.0.0.1".into()),
        trace_id: None,
        occurred_at: now_millis(),
        prev_hash: None,
        hash: "00".into(),
    });
}
