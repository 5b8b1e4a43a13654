//! A model spec: what to train and how to judge it. Declared by API or in files, as JSON
//! or TOML; every problem is reported at once, each naming its field.
//!
//! ```toml
//! name = "fraud"
//! view = "spend"                 # feature view; `view_version` pins one
//! label_dataset = "payments"     # defaults to the view's source dataset
//! task = "binary_classification"
//! primary_metric = "roc_auc"
//! [algorithms.logistic_regression]
//! alpha = [0.1, 1.0, 10.0]
//! [algorithms.decision_tree]
//! max_depth = [3, 5, 8]
//! [search]                       # default: grid
//! kind = "random"
//! trials = 10
//! seed = 7
//! [validation]                   # default: the newest 20 % as holdout
//! kind = "holdout"
//! fraction = 0.2
//! [gate]
//! min = 0.8                      # absolute floor of the primary metric
//! max_loss = 0.01                # may trail production by at most this much
//! ```

use std::collections::BTreeMap;

use mlops_schema::json::FieldError;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::trainer::Algorithm;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    pub view: String,
    #[serde(default)]
    pub view_version: Option<i32>,
    #[serde(default)]
    pub label_dataset: Option<String>,
    pub task: Task,
    /// Each algorithm to try and the values of each hyperparameter to search.
    pub algorithms: BTreeMap<Algorithm, BTreeMap<String, Vec<f64>>>,
    #[serde(default)]
    pub search: Search,
    #[serde(default)]
    pub validation: Validation,
    pub primary_metric: String,
    #[serde(default)]
    pub gate: Gate,
    /// Retrain on a schedule as well as on events: every this long (`"6h"`, `"1d"`).
    #[serde(default)]
    pub schedule: Option<String>,
    /// Share of traffic a new version of this model gets in canary, in percent (the
    /// registry's default when unset).
    #[serde(default)]
    pub canary_percent: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    BinaryClassification,
    MulticlassClassification,
    Regression,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Search {
    /// Every combination. (A struct variant, so that unknown keys are refused.)
    Grid {},
    /// `trials` combinations drawn with `seed`: the same seed, the same trials.
    Random { trials: usize, seed: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Validation {
    /// Fit on the older rows, score on the newest `fraction`.
    Holdout { fraction: f64 },
    /// `folds` folds, each scored once.
    Kfold { folds: usize },
}

impl Default for Search {
    fn default() -> Self {
        Self::Grid {}
    }
}

impl Default for Validation {
    fn default() -> Self {
        Self::Holdout {
            fraction: Self::default_fraction(),
        }
    }
}

impl Validation {
    /// The newest share of rows held out by default, and for the gate under k-fold.
    pub fn default_fraction() -> f64 {
        0.2
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// The candidate's primary metric must reach this.
    #[serde(default)]
    pub min: Option<f64>,
    /// ...and may trail the production version's, on the same holdout, by at most this.
    #[serde(default)]
    pub max_loss: f64,
}

/// Metrics a task can be judged by, and whether higher is better.
fn metrics_of(task: Task) -> &'static [(&'static str, bool)] {
    match task {
        Task::BinaryClassification | Task::MulticlassClassification => &[
            ("accuracy", true),
            ("precision", true),
            ("recall", true),
            ("f1", true),
            ("roc_auc", true),
            ("log_loss", false),
        ],
        Task::Regression => &[("rmse", false), ("mae", false), ("r2", true)],
    }
}

/// Hyperparameters each algorithm takes.
fn hyperparameters_of(algorithm: Algorithm) -> &'static [&'static str] {
    match algorithm {
        Algorithm::LogisticRegression => &["alpha", "max_iterations"],
        Algorithm::DecisionTree => &["max_depth", "min_weight_split"],
        Algorithm::Ridge => &["alpha"],
        Algorithm::RandomForest => &[
            "n_trees",
            "max_depth",
            "feature_fraction",
            "bootstrap_fraction",
            "seed",
        ],
    }
}

impl ModelSpec {
    /// A spec from JSON or TOML text (`toml` says which).
    pub fn parse(text: &str, toml: bool) -> Result<Self, Vec<FieldError>> {
        let tree: Json = if toml {
            ::toml::from_str(text).map_err(|e| {
                vec![FieldError {
                    field: String::new(),
                    reason: format!("not valid TOML: {}", e.message()),
                }]
            })?
        } else {
            serde_json::from_str(text).map_err(|e| {
                vec![FieldError {
                    field: String::new(),
                    reason: format!("not valid JSON: {e}"),
                }]
            })?
        };
        Self::from_json(tree)
    }

    pub fn from_json(tree: Json) -> Result<Self, Vec<FieldError>> {
        let spec: Self = serde_path_to_error::deserialize(tree).map_err(|e| {
            let field = e.path().to_string();
            vec![FieldError {
                field: if field == "." { String::new() } else { field },
                reason: e.into_inner().to_string(),
            }]
        })?;
        spec.check()?;
        Ok(spec)
    }

    /// Everything serde cannot see, all at once.
    fn check(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut fail = |field: String, reason: String| errors.push(FieldError { field, reason });
        if let Err(reason) = mlops_events::topics::check_dataset_name(&self.name) {
            fail("name".into(), reason);
        }
        if self.view.trim().is_empty() {
            fail("view".into(), "must name a feature view".into());
        }
        for algorithm in self.algorithms.keys() {
            let key = serde_json::to_value(algorithm)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let regressor = *algorithm == Algorithm::Ridge;
            if regressor != (self.task == Task::Regression) {
                fail(
                    format!("algorithms.{key}"),
                    if regressor {
                        "ridge is a regression algorithm; classifiers are logistic_regression, decision_tree, random_forest".into()
                    } else {
                        format!("{key} classifies; the regression algorithm is ridge")
                    },
                );
            }
        }
        let metrics = metrics_of(self.task);
        if !metrics.iter().any(|(m, _)| *m == self.primary_metric) {
            let names: Vec<&str> = metrics.iter().map(|(m, _)| *m).collect();
            fail(
                "primary_metric".into(),
                format!("must be one of {}", names.join(", ")),
            );
        }
        if self.algorithms.is_empty() {
            fail("algorithms".into(), "name at least one algorithm".into());
        }
        for (algorithm, space) in &self.algorithms {
            let key = serde_json::to_value(algorithm)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let known = hyperparameters_of(*algorithm);
            for (name, values) in space {
                let field = format!("algorithms.{key}.{name}");
                if !known.contains(&name.as_str()) {
                    fail(
                        field,
                        format!("unknown hyperparameter; {key} takes {}", known.join(", ")),
                    );
                } else if values.is_empty() {
                    fail(field, "list at least one value".into());
                } else if values.iter().any(|v| !v.is_finite()) {
                    fail(field, "values must be finite numbers".into());
                }
            }
        }
        match self.search {
            Search::Random { trials: 0, .. } => {
                fail("search.trials".into(), "must be at least 1".into())
            }
            Search::Random { .. } | Search::Grid {} => {}
        }
        match self.validation {
            Validation::Holdout { fraction } if !(fraction > 0.0 && fraction < 1.0) => fail(
                "validation.fraction".into(),
                "must be between 0 and 1 (exclusive)".into(),
            ),
            Validation::Kfold { folds } if folds < 2 => {
                fail("validation.folds".into(), "must be at least 2".into())
            }
            _ => {}
        }
        if self.gate.max_loss < 0.0 || !self.gate.max_loss.is_finite() {
            fail("gate.max_loss".into(), "must be a finite number ≥ 0".into());
        }
        if let Some(schedule) = &self.schedule {
            match mlops_service::parse_duration(schedule) {
                Ok(ms) if ms < 60_000 => {
                    fail("schedule".into(), "must be at least 1m".into());
                }
                Ok(_) => {}
                Err(reason) => fail("schedule".into(), reason),
            }
        }
        if self.canary_percent.is_some_and(|p| !(p > 0.0 && p < 100.0)) {
            fail(
                "canary_percent".into(),
                "must be between 0 and 100 (exclusive)".into(),
            );
        }
        if self.gate.min.is_some_and(|m| !m.is_finite()) {
            fail("gate.min".into(), "must be a finite number".into());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The schedule's period in milliseconds, when the spec has one.
    pub fn schedule_ms(&self) -> Option<i64> {
        self.schedule
            .as_deref()
            .and_then(|s| mlops_service::parse_duration(s).ok())
    }

    /// Whether a higher value of the primary metric is better.
    pub fn higher_is_better(&self) -> bool {
        metrics_of(self.task)
            .iter()
            .find(|(m, _)| *m == self.primary_metric)
            .is_none_or(|(_, higher)| *higher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
name = "fraud"
view = "spend"
task = "binary_classification"
primary_metric = "roc_auc"
[algorithms.logistic_regression]
alpha = [0.1, 1.0]
[algorithms.decision_tree]
max_depth = [3, 5]
[search]
kind = "random"
trials = 3
seed = 7
[gate]
min = 0.8
max_loss = 0.01
"#;

    #[test]
    fn a_toml_spec_is_read_with_its_defaults() {
        let spec = ModelSpec::parse(TOML, true).unwrap();
        assert_eq!(spec.algorithms.len(), 2);
        assert_eq!(spec.search, Search::Random { trials: 3, seed: 7 });
        assert_eq!(spec.validation, Validation::Holdout { fraction: 0.2 });
        assert_eq!(spec.gate.min, Some(0.8));
        assert!(spec.higher_is_better());
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let spec = serde_json::json!({
            "name": "Fraud Model", "view": "", "task": "regression",
            "primary_metric": "accuracy",
            "algorithms": {"decision_tree": {"depth": [3], "max_depth": []}},
            "validation": {"kind": "kfold", "folds": 1},
            "gate": {"max_loss": -1}
        });
        let errors = ModelSpec::from_json(spec).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "name",
                "view",
                "algorithms.decision_tree",
                "primary_metric",
                "algorithms.decision_tree.depth",
                "algorithms.decision_tree.max_depth",
                "validation.folds",
                "gate.max_loss"
            ],
            "{errors:?}"
        );
    }

    #[test]
    fn an_unknown_key_is_refused_by_its_path() {
        let spec = serde_json::json!({
            "name": "fraud", "view": "spend", "task": "binary_classification",
            "primary_metric": "f1", "algorithms": {"logistic_regression": {}},
            "search": {"kind": "grid", "trials": 3}
        });
        let errors = ModelSpec::from_json(spec).unwrap_err();
        assert_eq!(errors[0].field, "search", "{errors:?}");
        assert!(errors[0].reason.contains("trials"), "{errors:?}");
    }
}

/// The candidates a spec asks for: every combination of each algorithm's space (grid), or
/// `trials` of them drawn without replacement by a generator seeded with `seed` (random),
/// the same seed drawing the same candidates.
pub fn candidates(spec: &ModelSpec) -> Vec<(Algorithm, crate::trainer::Hyperparameters)> {
    let all: Vec<(Algorithm, crate::trainer::Hyperparameters)> = spec
        .algorithms
        .iter()
        .flat_map(|(algorithm, space)| {
            crate::trainer::grid(space)
                .into_iter()
                .map(move |h| (*algorithm, h))
        })
        .collect();
    match spec.search {
        Search::Grid {} => all,
        Search::Random { trials, seed } => {
            let mut pool = all;
            let mut state = seed;
            let mut drawn = Vec::new();
            while drawn.len() < trials && !pool.is_empty() {
                let index = (splitmix64(&mut state) % pool.len() as u64) as usize;
                drawn.push(pool.swap_remove(index));
            }
            drawn
        }
    }
}

/// SplitMix64: a small, well-mixed generator, enough to draw trials reproducibly.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The validation gate: `Ok` when the candidate's primary metric reaches the spec's floor
/// and trails production's (scored on the same holdout) by no more than `max_loss`;
/// otherwise the reason, in words for the run's result.
pub fn gate(spec: &ModelSpec, candidate: f64, production: Option<f64>) -> Result<(), String> {
    let metric = &spec.primary_metric;
    let higher = spec.higher_is_better();
    if let Some(min) = spec.gate.min {
        let fails = if higher {
            candidate < min
        } else {
            candidate > min
        };
        if fails {
            return Err(format!(
                "{metric} {candidate:.4} does not reach the gate's {} {min}",
                if higher { "minimum" } else { "maximum" }
            ));
        }
    }
    if let Some(production) = production {
        let loss = if higher {
            production - candidate
        } else {
            candidate - production
        };
        if loss > spec.gate.max_loss {
            return Err(format!(
                "{metric} {candidate:.4} trails production's {production:.4} by {loss:.4}, more than the allowed {}",
                spec.gate.max_loss
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod search_tests {
    use super::*;

    fn spec(search: Search) -> ModelSpec {
        let mut spec = ModelSpec::parse(
            r#"{"name": "fraud", "view": "spend", "task": "binary_classification",
                "primary_metric": "roc_auc",
                "algorithms": {"logistic_regression": {"alpha": [0.01, 0.1, 1, 10]},
                               "decision_tree": {"max_depth": [2, 4, 8]}},
                "gate": {"min": 0.7, "max_loss": 0.01}}"#,
            false,
        )
        .unwrap();
        spec.search = search;
        spec
    }

    #[test]
    fn a_grid_is_every_combination_and_a_seeded_draw_is_reproducible() {
        assert_eq!(candidates(&spec(Search::Grid {})).len(), 7);
        let first = candidates(&spec(Search::Random { trials: 3, seed: 7 }));
        let again = candidates(&spec(Search::Random { trials: 3, seed: 7 }));
        let other = candidates(&spec(Search::Random { trials: 3, seed: 8 }));
        assert_eq!(first.len(), 3);
        assert_eq!(first, again);
        assert_ne!(first, other);
        let everything = candidates(&spec(Search::Random {
            trials: 50,
            seed: 1,
        }));
        assert_eq!(everything.len(), 7, "no candidate drawn twice");
    }

    #[test]
    fn the_gate_needs_the_floor_and_at_most_the_allowed_loss() {
        let spec = spec(Search::Grid {});
        assert_eq!(gate(&spec, 0.9, None), Ok(()));
        assert_eq!(gate(&spec, 0.9, Some(0.905)), Ok(()));
        let floor = gate(&spec, 0.6, None).unwrap_err();
        assert!(
            floor.contains("does not reach the gate's minimum 0.7"),
            "{floor}"
        );
        let worse = gate(&spec, 0.85, Some(0.9)).unwrap_err();
        assert!(
            worse.contains("trails production's 0.9000 by 0.0500"),
            "{worse}"
        );
    }

    proptest::proptest! {
        /// Any text posted as a model spec, TOML or JSON: a spec, or errors with reasons.
        #[test]
        fn any_text_is_a_spec_or_an_explained_refusal(text in "\\PC{0,200}", toml in proptest::prelude::any::<bool>()) {
            if let Err(errors) = ModelSpec::parse(&text, toml) {
                proptest::prop_assert!(!errors.is_empty());
                proptest::prop_assert!(errors.iter().all(|e| !e.reason.is_empty()));
            }
        }
    }
}
