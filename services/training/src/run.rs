//! One training run, start to finish, on a snapshot already fetched: every candidate the
//! spec asks for is validated, the best by the primary metric faces the gate, and a model
//! that passes is refitted on all rows and sealed as a signed artifact with its
//! transforms, lineage and metrics. Pure and blocking: the service runs it on the CPU pool.

use std::collections::BTreeMap;

use mlops_ml::{Manifest, ModelArtifact, Signer};
use polars::prelude::DataFrame;

use crate::{
    snapshot,
    spec::{ModelSpec, candidates, gate},
    trainer::{Trial, fit, validate},
};

/// What a run produced.
#[derive(Debug)]
pub struct RunOutcome {
    pub trials: Vec<Trial>,
    /// Index of the best trial, if any candidate could be scored.
    pub best: Option<usize>,
    /// `Err(reason)` when the best candidate did not pass the gate.
    pub gate: Result<(), String>,
    /// The sealed artifact of a candidate that passed.
    pub artifact: Option<Vec<u8>>,
}

/// Runs `spec` on the snapshot (`manifest`, `frame`). `production` is the production
/// version's primary metric on the same validation, if there is one.
pub fn train(
    spec: &ModelSpec,
    manifest: &Manifest,
    frame: &DataFrame,
    production: Option<f64>,
    signer: &Signer,
    now: i64,
) -> Result<RunOutcome, String> {
    let examples = snapshot::examples(frame, &manifest.features)?;
    if examples.len() < 4 {
        return Err(format!(
            "the snapshot has {} rows; at least 4 are needed to fit and validate",
            examples.len()
        ));
    }
    let higher = spec.higher_is_better();
    let mut trials = Vec::new();
    let mut best: Option<(usize, f64)> = None;
    for (algorithm, hyperparameters) in candidates(spec) {
        let metrics = validate(algorithm, &hyperparameters, &examples, &spec.validation)
            .map_err(|e| e.to_string())?;
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
        });
    }
    let Some((index, value)) = best else {
        return Ok(RunOutcome {
            trials,
            best: None,
            gate: Err("no candidate could be scored".into()),
            artifact: None,
        });
    };
    let verdict = gate(spec, value, production);
    let artifact = match &verdict {
        Err(_) => None,
        Ok(()) => {
            let chosen = &trials[index];
            let model = fit(chosen.algorithm, &chosen.hyperparameters, &examples)
                .map_err(|e| e.to_string())?;
            let algorithm = serde_json::to_value(chosen.algorithm)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            Some(
                signer.seal(&ModelArtifact {
                    model_name: spec.name.clone(),
                    algorithm,
                    model: model.to_json(),
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
                }),
            )
        }
    };
    Ok(RunOutcome {
        trials,
        best: Some(index),
        gate: verdict,
        artifact,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mlops_ml::{ReferenceStatistics, TimeRange};
    use polars::prelude::*;

    use super::*;
    use crate::trainer::Model;

    fn snapshot() -> (Manifest, DataFrame) {
        let n = 120;
        let amount: Vec<f64> = (0..n).map(|i| ((i * 7) % 13) as f64 - 6.0).collect();
        let label: Vec<f64> = amount.iter().map(|a| f64::from(*a > 0.5)).collect();
        let frame = df!["amount" => amount, "label" => label].unwrap();
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
        };
        (manifest, frame)
    }

    fn spec(gate: &str) -> ModelSpec {
        ModelSpec::parse(
            &format!(
                r#"{{"name": "fraud", "view": "spend", "task": "binary_classification",
                    "primary_metric": "accuracy",
                    "algorithms": {{"logistic_regression": {{"alpha": [0.01, 1]}},
                                   "decision_tree": {{"max_depth": [1, 3]}}}},
                    "gate": {gate}}}"#
            ),
            false,
        )
        .unwrap()
    }

    #[test]
    fn a_candidate_that_passes_the_gate_is_sealed_with_its_lineage() {
        let (manifest, frame) = snapshot();
        let signer = Signer::generate().unwrap();
        let outcome = train(
            &spec(r#"{"min": 0.9}"#),
            &manifest,
            &frame,
            None,
            &signer,
            42,
        )
        .unwrap();
        assert_eq!(outcome.trials.len(), 4);
        assert_eq!(outcome.gate, Ok(()));
        let best = &outcome.trials[outcome.best.unwrap()];
        assert_eq!(best.metrics["accuracy"], 1.0, "{:?}", outcome.trials);
        let artifact =
            mlops_ml::artifact::open(&outcome.artifact.unwrap(), &signer.verifying_key()).unwrap();
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
    fn a_candidate_worse_than_production_is_not_sealed_and_says_why() {
        let (manifest, frame) = snapshot();
        let signer = Signer::generate().unwrap();
        // Both reasons: a floor no candidate reaches, and a production version scoring
        // more than any candidate can, with no loss allowed.
        let floor = train(
            &spec(r#"{"min": 1.01}"#),
            &manifest,
            &frame,
            None,
            &signer,
            42,
        )
        .unwrap();
        assert!(floor.artifact.is_none());
        assert!(
            floor
                .gate
                .unwrap_err()
                .contains("does not reach the gate's minimum")
        );
        let worse = train(
            &spec(r#"{"max_loss": 0.0}"#),
            &manifest,
            &frame,
            Some(1.5),
            &signer,
            42,
        )
        .unwrap();
        assert!(worse.artifact.is_none());
        assert!(worse.gate.unwrap_err().contains("trails production's"));
    }
}
