//! Honest accuracy: our logistic regression and decision tree against scikit-learn's, on
//! the same public dataset (scikit-learn's bundled breast-cancer data), the same split and
//! the same preprocessing, within two points of holdout accuracy.

use std::collections::BTreeMap;

use mlops_ml::metrics;
use ndarray::Array2;
use training::trainer::{Algorithm, Examples, fit};

/// Points of accuracy our models may trail (or lead) scikit-learn's by.
const TOLERANCE: f64 = 0.02;

#[test]
fn accuracy_matches_scikit_learn_on_breast_cancer() {
    let python = std::env::var("MLOPS_TEST_PYTHON").expect(
        "MLOPS_TEST_PYTHON is not set: run the suite with tests/run.sh, which installs \
         tests/python/requirements.txt (scikit-learn among them) into a virtualenv",
    );
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("breast_cancer.csv");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/python/sklearn_reference.py"
    );
    let output = std::process::Command::new(python)
        .arg(script)
        .arg(&csv)
        .output()
        .expect("run the scikit-learn reference");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reference: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    let rows: Vec<Vec<f64>> = std::fs::read_to_string(&csv)
        .unwrap()
        .lines()
        .map(|line| line.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    let columns = rows[0].len() - 1;
    let cut = reference["train_rows"].as_u64().unwrap() as usize;
    let examples = |range: std::ops::Range<usize>| {
        Examples::binary(
            Array2::from_shape_fn((range.len(), columns), |(r, c)| rows[range.start + r][c]),
            rows[range].iter().map(|r| r[columns] == 1.0).collect(),
        )
    };
    let (train, test) = (examples(0..cut), examples(cut..rows.len()));

    for (algorithm, name, hyperparameters) in [
        (
            Algorithm::LogisticRegression,
            "logistic_regression",
            BTreeMap::from([
                ("alpha".to_owned(), 1.0),
                ("max_iterations".to_owned(), 1000.0),
            ]),
        ),
        (
            Algorithm::DecisionTree,
            "decision_tree",
            BTreeMap::from([("max_depth".to_owned(), 4.0)]),
        ),
    ] {
        let model = fit(algorithm, &hyperparameters, &train).unwrap();
        let ours = metrics::binary(&test.labels, &model.scores(test.inputs.view()))["accuracy"];
        let theirs = reference[name].as_f64().unwrap();
        println!(
            "{name}: ours {ours:.4}, scikit-learn {} {theirs:.4}",
            reference["sklearn"]
        );
        assert!(
            (ours - theirs).abs() <= TOLERANCE,
            "{name}: ours {ours:.4}, scikit-learn {} {theirs:.4}",
            reference["sklearn"]
        );
    }
}
