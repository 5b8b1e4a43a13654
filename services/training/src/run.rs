//! One training run, start to finish, on a snapshot already fetched: every candidate the
//! spec asks for is validated (in parallel, one thread per core), the best by the primary metric faces the gate — scored,
//! like the production version, on the same holdout (the newest rows) — and a model that
//! passes is refitted on all rows and returned as an artifact (transforms, lineage,
//! metrics) for the registry to sign. Pure and blocking: the service runs it on the CPU
//! pool.

use std::collections::BTreeMap;

use mlops_ml::{Manifest, ModelArtifact, RAW_PREFIX};
use polars::prelude::DataFrame;
use serde::Serialize;

use crate::{
    snapshot,
    spec::{ModelSpec, Validation, candidates, gate},
    trainer::{Examples, Model, Trial, evaluate, fit, validate_folds},
};

/// The gate's inputs and verdict, for the experiment record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateReport {
    pub metric: String,
    /// Rows of the holdout both models were scored on.
    pub holdout_rows: usize,
    /// The candidate (fitted on the older rows) on the holdout.
    pub candidate: f64,
    /// The production version on the same holdout, when there is one it can score.
    pub production: Option<f64>,
    /// Why production was not compared, when it exists but could not be scored.
    pub production_note: Option<String>,
    pub passed: bool,
    pub reason: Option<String>,
}

/// What a run produced.
#[derive(Debug)]
pub struct RunOutcome {
    pub trials: Vec<Trial>,
    /// Index of the best trial, if any candidate could be scored.
    pub best: Option<usize>,
    pub gate: GateReport,
    /// The artifact (unsigned: the registry signs) of a candidate that passed.
    pub artifact: Option<ModelArtifact>,
}

/// Runs `spec` on the snapshot (`manifest`, `frame`) against `production`, the artifact
/// of the model's production version, if there is one.
pub fn train(
    spec: &ModelSpec,
    manifest: &Manifest,
    frame: &DataFrame,
    production: Option<&ModelArtifact>,
    now: i64,
) -> Result<RunOutcome, String> {
    let (examples, classes) = snapshot::examples(frame, &manifest.features, spec.task)?;
    if examples.len() < 4 {
        return Err(format!(
            "the snapshot has {} rows; at least 4 are needed to fit and validate",
            examples.len()
        ));
    }
    let higher = spec.higher_is_better();
    let mut trials = Vec::new();
    let mut best: Option<(usize, f64)> = None;
    let candidates = candidates(spec);
    // Each trial is a child span of the run's, also on the threads of the search.
    let run_span = tracing::Span::current();
    let scored = in_parallel(&candidates, |(algorithm, hyperparameters)| {
        let trial = tracing::info_span!(parent: &run_span, "trial",
            algorithm = ?algorithm, hyperparameters = ?hyperparameters);
        trial.in_scope(|| validate_folds(*algorithm, hyperparameters, &examples, &spec.validation))
    });
    for ((algorithm, hyperparameters), metrics) in candidates.into_iter().zip(scored) {
        let (metrics, folds) = metrics.map_err(|e| e.to_string())?;
        let value = metrics
            .get(&spec.primary_metric)
            .copied()
            .unwrap_or(f64::NAN);
        let better = value.is_finite()
            && best.is_none_or(|(_, current)| {
                if higher {
                    value > current
                } else {
                    value < current
                }
            });
        if better {
            best = Some((trials.len(), value));
        }
        trials.push(Trial {
            algorithm,
            hyperparameters,
            metrics,
            folds,
        });
    }
    let fraction = match spec.validation {
        Validation::Holdout { fraction } => fraction,
        Validation::Kfold { .. } => Validation::default_fraction(),
    };
    let cut = examples.split_index(fraction);
    let (older, holdout) = examples.time_split(fraction);
    let Some((index, _)) = best else {
        return Ok(RunOutcome {
            trials,
            best: None,
            gate: GateReport {
                metric: spec.primary_metric.clone(),
                holdout_rows: holdout.len(),
                candidate: f64::NAN,
                production: None,
                production_note: None,
                passed: false,
                reason: Some("no candidate could be scored".into()),
            },
            artifact: None,
        });
    };
    let chosen = &trials[index];
    let candidate_model =
        fit(chosen.algorithm, &chosen.hyperparameters, &older).map_err(|e| e.to_string())?;
    let candidate = primary(spec, &evaluate(&candidate_model, &holdout));
    let (production_value, production_note) = match production {
        None => (None, None),
        Some(artifact) => match score_production(artifact, &classes, frame, cut, &holdout) {
            Ok(metrics) => (Some(primary(spec, &metrics)), None),
            Err(note) => (None, Some(note)),
        },
    };
    let verdict = gate(spec, candidate, production_value);
    let report = GateReport {
        metric: spec.primary_metric.clone(),
        holdout_rows: holdout.len(),
        candidate,
        production: production_value,
        production_note,
        passed: verdict.is_ok(),
        reason: verdict.err(),
    };
    let artifact = if report.passed {
        let model =
            fit(chosen.algorithm, &chosen.hyperparameters, &examples).map_err(|e| e.to_string())?;
        let algorithm = serde_json::to_value(chosen.algorithm)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        Some(ModelArtifact {
            model_name: spec.name.clone(),
            algorithm,
            model: model.to_json(),
            task: serde_json::to_value(spec.task)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            classes,
            features: manifest.features.clone(),
            transforms: manifest
                .fitted
                .iter()
                .map(|(name, state)| (name.clone(), state.clone()))
                .collect(),
            view: manifest.view.clone(),
            view_version: manifest.view_version,
            snapshot_id: manifest.id.clone(),
            metrics: chosen
                .metrics
                .clone()
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
            created_at: now,
        })
    } else {
        None
    };
    Ok(RunOutcome {
        trials,
        best: Some(index),
        gate: report,
        artifact,
    })
}

/// `work` on every item, on as many threads as there are cores (each thread takes every
/// n-th item), results in the items' order: the same results whatever the core count.
fn in_parallel<T: Sync, R: Send>(items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = mlops_runtime::cpu::cores().clamp(1, items.len().max(1));
    let mut slots: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let work = &work;
                scope.spawn(move || {
                    items
                        .iter()
                        .enumerate()
                        .skip(t)
                        .step_by(threads)
                        .map(|(i, item)| (i, work(item)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            for (i, result) in handle.join().expect("a trial thread panicked") {
                slots[i] = Some(result);
            }
        }
    });
    slots
        .into_iter()
        .map(|r| r.expect("every item is scored"))
        .collect()
}

fn primary(spec: &ModelSpec, metrics: &crate::trainer::Metrics) -> f64 {
    metrics
        .get(&spec.primary_metric)
        .copied()
        .unwrap_or(f64::NAN)
}

/// The production model's metrics on the holdout rows (`cut..`): each row's raw values go
/// through production's own fitted transforms, as serving would send them.
fn score_production(
    artifact: &ModelArtifact,
    classes: &[String],
    frame: &DataFrame,
    cut: usize,
    holdout: &Examples,
) -> Result<crate::trainer::Metrics, String> {
    if artifact.classes != classes {
        return Err(format!(
            "the production version knows the classes {:?}, this snapshot {classes:?}",
            artifact.classes
        ));
    }
    let model: Model = serde_json::from_value(artifact.model.clone())
        .map_err(|e| format!("the production model cannot be read: {e}"))?;
    let mut columns = BTreeMap::new();
    for (name, _) in &artifact.transforms {
        let column = frame.column(&format!("{RAW_PREFIX}{name}")).map_err(|_| {
            format!("the snapshot has no raw {name:?}, which the production version takes")
        })?;
        columns.insert(name.as_str(), column);
    }
    let mut inputs = ndarray::Array2::<f64>::zeros((holdout.len(), artifact.features.len()));
    for (r, row) in (cut..frame.height()).enumerate() {
        let values = artifact.inputs(|name| {
            columns
                .get(name)
                .and_then(|c| c.get(row).ok())
                .map(|v| mlops_ml::json_of(&v))
        })?;
        for (c, value) in values.into_iter().enumerate() {
            inputs[[r, c]] = value;
        }
    }
    Ok(evaluate(
        &model,
        &Examples {
            inputs,
            ..holdout.clone()
        },
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mlops_ml::{ReferenceStatistics, TimeRange};
    use polars::prelude::*;

    use super::*;

    fn snapshot() -> (Manifest, DataFrame) {
        let n = 120;
        let amount: Vec<f64> = (0..n).map(|i| ((i * 7) % 13) as f64 - 6.0).collect();
        let label: Vec<f64> = amount.iter().map(|a| f64::from(*a > 0.5)).collect();
        let frame = df![
            "amount" => amount.clone(),
            "raw.amount" => amount,
            "label" => label
        ]
        .unwrap();
        let stats = ReferenceStatistics::Categorical {
            count: 0,
            null_rate: 0.0,
            frequencies: BTreeMap::new(),
        };
        let manifest = Manifest {
            id: "snap-1".into(),
            view: "spend".into(),
            view_version: 1,
            label_dataset: "payments".into(),
            rows: n,
            time_range: TimeRange {
                start: None,
                end: None,
            },
            features: vec!["amount".into()],
            statistics: BTreeMap::new(),
            fitted: BTreeMap::from([("amount".into(), Default::default())]),
            label: stats,
            data: "snapshots/snap-1/data.parquet".into(),
            created_at: 0,
            region: None,
        };
        (manifest, frame)
    }

    fn spec(algorithms: &str, gate: &str) -> ModelSpec {
        ModelSpec::parse(
            &format!(
                r#"{{"name": "fraud", "view": "spend", "task": "binary_classification",
                    "primary_metric": "accuracy", "algorithms": {algorithms}, "gate": {gate}}}"#
            ),
            false,
        )
        .unwrap()
    }

    const GOOD: &str =
        r#"{"logistic_regression": {"alpha": [0.01, 1]}, "decision_tree": {"max_depth": [1, 3]}}"#;
    /// A penalty so heavy the model cannot separate the classes.
    const WEAK: &str = r#"{"logistic_regression": {"alpha": [1000000]}}"#;

    #[test]
    fn a_candidate_that_passes_the_gate_becomes_an_artifact_with_its_lineage() {
        let (manifest, frame) = snapshot();
        let outcome = train(&spec(GOOD, r#"{"min": 0.9}"#), &manifest, &frame, None, 42).unwrap();
        assert_eq!(outcome.trials.len(), 4);
        assert!(outcome.gate.passed, "{:?}", outcome.gate);
        assert_eq!(outcome.gate.candidate, 1.0);
        let best = &outcome.trials[outcome.best.unwrap()];
        assert_eq!(best.metrics["accuracy"], 1.0, "{:?}", outcome.trials);
        let artifact = outcome.artifact.unwrap();
        assert_eq!(
            (
                artifact.snapshot_id.as_str(),
                artifact.view.as_str(),
                artifact.view_version
            ),
            ("snap-1", "spend", 1)
        );
        assert_eq!(artifact.features, ["amount"]);
        let model: Model = serde_json::from_value(artifact.model).unwrap();
        let inputs = ndarray::array![[5.0], [-5.0]];
        let scores = model.scores(inputs.view());
        assert!(scores[0] > 0.5 && scores[1] < 0.5, "{scores:?}");
    }

    #[test]
    fn a_candidate_worse_than_production_on_the_same_holdout_is_refused() {
        let (manifest, frame) = snapshot();
        let production = train(&spec(GOOD, "{}"), &manifest, &frame, None, 1)
            .unwrap()
            .artifact
            .unwrap();
        let floor = train(&spec(GOOD, r#"{"min": 1.01}"#), &manifest, &frame, None, 42).unwrap();
        assert!(floor.artifact.is_none());
        assert!(
            floor
                .gate
                .reason
                .unwrap()
                .contains("does not reach the gate's minimum")
        );
        let worse = train(
            &spec(WEAK, r#"{"max_loss": 0.01}"#),
            &manifest,
            &frame,
            Some(&production),
            42,
        )
        .unwrap();
        assert!(worse.artifact.is_none());
        assert_eq!(worse.gate.production, Some(1.0), "{:?}", worse.gate);
        assert!(worse.gate.candidate < 0.9, "{:?}", worse.gate);
        assert!(
            worse
                .gate
                .reason
                .as_deref()
                .unwrap()
                .contains("trails production's"),
            "{:?}",
            worse.gate
        );
        // The same candidate passes where there is no production version to lose to.
        let alone = train(
            &spec(WEAK, r#"{"max_loss": 0.01}"#),
            &manifest,
            &frame,
            None,
            42,
        )
        .unwrap();
        assert!(alone.gate.passed);
    }

    #[test]
    fn a_production_version_that_cannot_be_scored_is_noted_not_compared() {
        let (manifest, frame) = snapshot();
        let mut production = train(&spec(GOOD, "{}"), &manifest, &frame, None, 1)
            .unwrap()
            .artifact
            .unwrap();
        production.transforms[0].0 = "balance".into();
        let outcome = train(&spec(GOOD, "{}"), &manifest, &frame, Some(&production), 2).unwrap();
        assert!(outcome.gate.passed);
        assert_eq!(outcome.gate.production, None);
        assert!(
            outcome
                .gate
                .production_note
                .as_deref()
                .unwrap()
                .contains("no raw \"balance\""),
            "{:?}",
            outcome.gate
        );
    }

    #[test]
    fn a_multiclass_model_is_gated_against_production_through_its_own_classes() {
        let n = 150;
        let amount: Vec<f64> = (0..n).map(|i| ((i * 7) % 30) as f64).collect();
        let label: Vec<&str> = amount
            .iter()
            .map(|a| match *a as i64 / 10 {
                0 => "low",
                1 => "mid",
                _ => "high",
            })
            .collect();
        let frame = df![
            "amount" => amount.clone(),
            "raw.amount" => amount,
            "label" => label
        ]
        .unwrap();
        let (manifest, _) = snapshot();
        let spec = ModelSpec::parse(
            r#"{"name": "tier", "view": "spend", "task": "multiclass_classification",
                "primary_metric": "accuracy",
                "algorithms": {"decision_tree": {"max_depth": [3]}},
                "gate": {"min": 0.9, "max_loss": 0.0}}"#,
            false,
        )
        .unwrap();
        let first = train(&spec, &manifest, &frame, None, 1).unwrap();
        assert!(first.gate.passed, "{:?}", first.gate);
        let artifact = first.artifact.unwrap();
        assert_eq!(artifact.task, "multiclass_classification");
        assert_eq!(artifact.classes, ["high", "low", "mid"]);
        // Against itself in production: compared on the same rows, equal, so it passes.
        let second = train(&spec, &manifest, &frame, Some(&artifact), 2).unwrap();
        assert_eq!(
            second.gate.production,
            Some(second.gate.candidate),
            "{:?}",
            second.gate
        );
        assert!(second.gate.passed);
        // A production version that knew other classes is not compared.
        let mut other = artifact.clone();
        other.classes = vec!["a".into(), "b".into()];
        let third = train(&spec, &manifest, &frame, Some(&other), 3).unwrap();
        assert!(third.gate.production_note.unwrap().contains("classes"));
    }

    #[test]
    fn a_regression_model_is_gated_on_rmse() {
        let n = 100;
        let amount: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let label: Vec<f64> = amount.iter().map(|a| 2.0 * a + 1.0).collect();
        let frame =
            df!["amount" => amount.clone(), "raw.amount" => amount, "label" => label].unwrap();
        let (manifest, _) = snapshot();
        let spec = ModelSpec::parse(
            r#"{"name": "spend", "view": "spend", "task": "regression",
                "primary_metric": "rmse", "algorithms": {"ridge": {"alpha": [0, 10]}},
                "gate": {"min": 0.5}}"#,
            false,
        )
        .unwrap();
        let outcome = train(&spec, &manifest, &frame, None, 1).unwrap();
        assert!(outcome.gate.passed, "{:?}", outcome.gate);
        assert!(outcome.gate.candidate < 1e-6, "{:?}", outcome.gate);
        let best = &outcome.trials[outcome.best.unwrap()];
        assert_eq!(best.hyperparameters["alpha"], 0.0);
        assert_eq!(outcome.artifact.unwrap().task, "regression");
    }
}
