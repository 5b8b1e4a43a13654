//! Fitting and scoring candidate models: binary classifiers from `linfa` (logistic
//! regression, decision tree), hyperparameters searched over a grid, each candidate fitted
//! on the older rows and scored on the newest (a time-based holdout: the data is a stream,
//! and a model is used on what comes next).

use std::collections::BTreeMap;

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use linfa_trees::DecisionTree;
use ndarray::{Array1, Array2, ArrayView2};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// L2-regularised; `alpha` (penalty, default 1.0) and `max_iterations` (100).
    LogisticRegression,
    /// Gini splits; `max_depth` (unbounded) and `min_weight_split` (2).
    DecisionTree,
    /// Bagged decision trees (`linfa-trees`), each on a bootstrap sample of the rows and
    /// a random subset of the inputs: `n_trees` (100), `max_depth` (unbounded),
    /// `feature_fraction` (0.7), `bootstrap_fraction` (1.0), `seed` (42). Scores are the
    /// share of trees voting positive.
    RandomForest,
}

/// Metric values by name.
pub type Metrics = BTreeMap<String, f64>;

/// One choice of hyperparameters, by name.
pub type Hyperparameters = BTreeMap<String, f64>;

/// Rows of model inputs (already transformed) and their binary labels, oldest first.
#[derive(Debug, Clone)]
pub struct Examples {
    pub inputs: Array2<f64>,
    pub labels: Vec<bool>,
}

impl Examples {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The oldest rows for fitting, the newest `holdout` fraction for scoring.
    pub fn time_split(&self, holdout: f64) -> (Examples, Examples) {
        let cut = self.split_index(holdout);
        (self.rows(0..cut), self.rows(cut..self.len()))
    }

    /// Where [`Self::time_split`] cuts: the first row of the holdout.
    pub fn split_index(&self, holdout: f64) -> usize {
        let test = ((self.len() as f64) * holdout).round() as usize;
        self.len() - test.clamp(1, self.len().saturating_sub(1).max(1))
    }

    fn rows(&self, range: std::ops::Range<usize>) -> Examples {
        Examples {
            // `select`, not `slice`: ndarray's `s!` expands to code `unsafe_code = "forbid"` refuses.
            inputs: self
                .inputs
                .select(ndarray::Axis(0), &range.clone().collect::<Vec<_>>()),
            labels: self.labels[range].to_vec(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{algorithm:?} with {hyperparameters:?}: {reason}")]
    Fit {
        algorithm: Algorithm,
        hyperparameters: Hyperparameters,
        reason: String,
    },
    #[error("hyperparameter {name} = {value} is not valid for {algorithm:?}: {reason}")]
    Hyperparameter {
        algorithm: Algorithm,
        name: String,
        value: f64,
        reason: String,
    },
}

/// A fitted model, able to score rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Model {
    LogisticRegression(linfa_logistic::FittedLogisticRegression<f64, bool>),
    DecisionTree(linfa_trees::DecisionTree<f64, bool>),
    RandomForest(Forest),
}

/// A fitted random forest: its trees and the inputs each one was grown on (kept here
/// because `linfa-ensemble`'s learner has no serde form of its own).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forest {
    pub trees: Vec<linfa_trees::DecisionTree<f64, bool>>,
    pub features: Vec<Vec<usize>>,
}

impl Model {
    /// Probability of the positive class for each row (a tree scores 0 or 1).
    pub fn scores(&self, inputs: ArrayView2<'_, f64>) -> Vec<f64> {
        match self {
            Self::LogisticRegression(model) => model.predict_probabilities(&inputs).to_vec(),
            Self::DecisionTree(tree) => tree
                .predict(&inputs)
                .iter()
                .map(|&positive| if positive { 1.0 } else { 0.0 })
                .collect(),
            Self::RandomForest(forest) => {
                let mut votes = vec![0.0; inputs.nrows()];
                for (tree, columns) in forest.trees.iter().zip(&forest.features) {
                    let subset = inputs.select(ndarray::Axis(1), columns);
                    for (vote, positive) in votes.iter_mut().zip(tree.predict(&subset)) {
                        if positive {
                            *vote += 1.0;
                        }
                    }
                }
                let trees = forest.trees.len().max(1) as f64;
                votes.into_iter().map(|v| v / trees).collect()
            }
        }
    }

    /// The model in its own serde form, for the artifact.
    pub fn to_json(&self) -> Json {
        serde_json::to_value(self).unwrap_or(Json::Null)
    }
}

/// Fits `algorithm` with `hyperparameters` on `train`.
pub fn fit(
    algorithm: Algorithm,
    hyperparameters: &Hyperparameters,
    train: &Examples,
) -> Result<Model, TrainError> {
    let get = |name: &str, default: f64| hyperparameters.get(name).copied().unwrap_or(default);
    let invalid = |name: &str, reason: &str| TrainError::Hyperparameter {
        algorithm,
        name: name.to_owned(),
        value: get(name, f64::NAN),
        reason: reason.to_owned(),
    };
    let failed = |reason: String| TrainError::Fit {
        algorithm,
        hyperparameters: hyperparameters.clone(),
        reason,
    };
    let dataset = Dataset::new(train.inputs.clone(), Array1::from(train.labels.clone()));
    match algorithm {
        Algorithm::LogisticRegression => {
            let alpha = get("alpha", 1.0);
            if !(alpha >= 0.0 && alpha.is_finite()) {
                return Err(invalid("alpha", "must be a finite number ≥ 0"));
            }
            let iterations = get("max_iterations", 100.0);
            if !(iterations >= 1.0 && iterations.fract() == 0.0) {
                return Err(invalid("max_iterations", "must be a whole number ≥ 1"));
            }
            LogisticRegression::default()
                .alpha(alpha)
                .max_iterations(iterations as u64)
                .fit(&dataset)
                .map(Model::LogisticRegression)
                .map_err(|e| failed(e.to_string()))
        }
        Algorithm::DecisionTree => {
            let depth = hyperparameters.get("max_depth").copied();
            if depth.is_some_and(|d| !(d >= 1.0 && d.fract() == 0.0)) {
                return Err(invalid("max_depth", "must be a whole number ≥ 1"));
            }
            let split = get("min_weight_split", 2.0);
            if !(split >= 1.0 && split.is_finite()) {
                return Err(invalid("min_weight_split", "must be a number ≥ 1"));
            }
            DecisionTree::params()
                .max_depth(depth.map(|d| d as usize))
                .min_weight_split(split as f32)
                .fit(&dataset)
                .map(Model::DecisionTree)
                .map_err(|e| failed(e.to_string()))
        }
        Algorithm::RandomForest => {
            let whole = |name: &str, default: f64, min: f64| {
                let value = get(name, default);
                if value >= min && value.fract() == 0.0 && value.is_finite() {
                    Ok(value)
                } else {
                    Err(invalid(name, &format!("must be a whole number ≥ {min}")))
                }
            };
            let fraction = |name: &str, default: f64| {
                let value = get(name, default);
                if value > 0.0 && value <= 1.0 {
                    Ok(value)
                } else {
                    Err(invalid(name, "must be in (0, 1]"))
                }
            };
            let trees = whole("n_trees", 100.0, 1.0)?;
            let depth = match hyperparameters.get("max_depth") {
                None => None,
                Some(_) => Some(whole("max_depth", 0.0, 1.0)? as usize),
            };
            let features = fraction("feature_fraction", 0.7)?;
            let rows = fraction("bootstrap_fraction", 1.0)?;
            let seed = whole("seed", 42.0, 0.0)?;
            if train.labels.iter().all(|&l| l) || train.labels.iter().all(|&l| !l) {
                return Err(failed("the training rows hold one class only".into()));
            }
            let grown = grow_forest(train, trees as usize, depth, (rows, features), seed as u64)
                .map_err(failed)?;
            Ok(Model::RandomForest(grown))
        }
    }
}

/// Bagging, by our own seeded draws so that a seed always grows the same forest: each
/// tree sees `fractions.0` of the rows drawn with replacement and `fractions.1` of the
/// inputs drawn without.
fn grow_forest(
    train: &Examples,
    trees: usize,
    depth: Option<usize>,
    fractions: (f64, f64),
    seed: u64,
) -> Result<Forest, String> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (rows, columns) = (train.inputs.nrows(), train.inputs.ncols());
    let sample = ((rows as f64) * fractions.0).ceil().max(1.0) as usize;
    let chosen = ((columns as f64) * fractions.1)
        .ceil()
        .clamp(1.0, columns as f64) as usize;
    let mut forest = Forest {
        trees: Vec::with_capacity(trees),
        features: Vec::with_capacity(trees),
    };
    for _ in 0..trees {
        let picked: Vec<usize> = (0..sample).map(|_| rng.gen_range(0..rows)).collect();
        let mut all: Vec<usize> = (0..columns).collect();
        for i in 0..chosen {
            let j = rng.gen_range(i..columns);
            all.swap(i, j);
        }
        let mut inputs = all[..chosen].to_vec();
        inputs.sort_unstable();
        let records = train
            .inputs
            .select(ndarray::Axis(0), &picked)
            .select(ndarray::Axis(1), &inputs);
        let targets: Array1<bool> = picked.iter().map(|&r| train.labels[r]).collect();
        let tree = DecisionTree::params()
            .max_depth(depth)
            .fit(&Dataset::new(records, targets))
            .map_err(|e| e.to_string())?;
        forest.trees.push(tree);
        forest.features.push(inputs);
    }
    Ok(forest)
}

/// Every combination of the values in `space` (a grid), in a stable order.
pub fn grid(space: &BTreeMap<String, Vec<f64>>) -> Vec<Hyperparameters> {
    let mut combinations = vec![Hyperparameters::new()];
    for (name, values) in space {
        combinations = combinations
            .into_iter()
            .flat_map(|base| {
                values.iter().map(move |value| {
                    let mut next = base.clone();
                    next.insert(name.clone(), *value);
                    next
                })
            })
            .collect();
    }
    combinations
}

/// One candidate's result.
#[derive(Debug, Clone)]
pub struct Trial {
    pub algorithm: Algorithm,
    pub hyperparameters: Hyperparameters,
    /// Aggregate metrics (the mean over folds).
    pub metrics: BTreeMap<String, f64>,
    /// Each fold's metrics (one fold for a holdout).
    pub folds: Vec<BTreeMap<String, f64>>,
}

/// What a search found: every trial, and the best one's index and model.
#[derive(Debug)]
pub struct Searched {
    pub trials: Vec<Trial>,
    pub best: Option<(usize, Model)>,
}

/// Fits every candidate on `train`, scores it on `test`, and returns the trials and the
/// best model by `primary` (higher is better, except for `log_loss`).
pub fn search(
    candidates: &[(Algorithm, Hyperparameters)],
    train: &Examples,
    test: &Examples,
    primary: &str,
) -> Result<Searched, TrainError> {
    let lower_is_better = primary == "log_loss";
    let mut trials = Vec::new();
    let mut best: Option<(usize, Model, f64)> = None;
    for (algorithm, hyperparameters) in candidates {
        let model = fit(*algorithm, hyperparameters, train)?;
        let scores = model.scores(test.inputs.view());
        let metrics = metrics::binary(&test.labels, &scores);
        let value = metrics.get(primary).copied().unwrap_or(f64::NAN);
        let better = match &best {
            None => value.is_finite(),
            Some((_, _, current)) if lower_is_better => value < *current,
            Some((_, _, current)) => value > *current,
        };
        if better {
            best = Some((trials.len(), model, value));
        }
        trials.push(Trial {
            algorithm: *algorithm,
            hyperparameters: hyperparameters.clone(),
            folds: vec![metrics.clone()],
            metrics,
        });
    }
    Ok(Searched {
        trials,
        best: best.map(|(index, model, _)| (index, model)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two separable clusters, in time order.
    fn examples() -> Examples {
        let rows: Vec<(f64, f64, bool)> = (0..200)
            .map(|i| {
                let positive = i % 2 == 0;
                let noise = ((i * 37) % 11) as f64 / 10.0;
                let x = if positive { 3.0 + noise } else { -3.0 - noise };
                (x, noise, positive)
            })
            .collect();
        Examples {
            inputs: Array2::from_shape_fn((rows.len(), 2), |(r, c)| {
                if c == 0 { rows[r].0 } else { rows[r].1 }
            }),
            labels: rows.iter().map(|r| r.2).collect(),
        }
    }

    #[test]
    fn a_grid_search_fits_every_candidate_and_keeps_the_best() {
        let data = examples();
        let (train, test) = data.time_split(0.25);
        assert_eq!((train.len(), test.len()), (150, 50));
        let space = BTreeMap::from([("alpha".to_owned(), vec![0.1, 1.0, 10.0])]);
        let mut candidates: Vec<(Algorithm, Hyperparameters)> = grid(&space)
            .into_iter()
            .map(|h| (Algorithm::LogisticRegression, h))
            .collect();
        candidates.push((
            Algorithm::DecisionTree,
            BTreeMap::from([("max_depth".to_owned(), 3.0)]),
        ));
        let Searched { trials, best } = search(&candidates, &train, &test, "accuracy").unwrap();
        assert_eq!(trials.len(), 4);
        let (index, model) = best.expect("a best model");
        assert_eq!(trials[index].metrics["accuracy"], 1.0, "{trials:?}");
        let round_trip: Model = serde_json::from_value(model.to_json()).unwrap();
        assert_eq!(
            round_trip.scores(test.inputs.view()),
            model.scores(test.inputs.view())
        );
    }

    #[test]
    fn a_random_forest_votes_and_the_same_seed_grows_the_same_forest() {
        let data = examples();
        let (train, test) = data.time_split(0.25);
        let params = BTreeMap::from([
            ("n_trees".to_owned(), 25.0),
            ("max_depth".to_owned(), 3.0),
            ("seed".to_owned(), 7.0),
        ]);
        let forest = fit(Algorithm::RandomForest, &params, &train).unwrap();
        let scores = forest.scores(test.inputs.view());
        assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)), "{scores:?}");
        let metrics = crate::metrics::binary(&test.labels, &scores);
        assert!(metrics["roc_auc"] > 0.95, "{metrics:?}");
        let again = fit(Algorithm::RandomForest, &params, &train).unwrap();
        assert_eq!(again.scores(test.inputs.view()), scores);
        let round_trip: Model = serde_json::from_value(forest.to_json()).unwrap();
        assert_eq!(round_trip.scores(test.inputs.view()), scores);
        let Model::RandomForest(grown) = &forest else {
            panic!("a forest");
        };
        assert_eq!(grown.trees.len(), 25);
        let bad = BTreeMap::from([("feature_fraction".to_owned(), 1.5)]);
        let error = fit(Algorithm::RandomForest, &bad, &train).unwrap_err();
        assert!(error.to_string().contains("feature_fraction"), "{error}");
    }

    #[test]
    fn a_bad_hyperparameter_is_named() {
        let data = examples();
        let bad = BTreeMap::from([("max_depth".to_owned(), 0.5)]);
        let error = fit(Algorithm::DecisionTree, &bad, &data).unwrap_err();
        assert!(error.to_string().contains("max_depth = 0.5"), "{error}");
    }
}

/// Scores one candidate by `validation`: on the newest fraction after fitting on the rest
/// (holdout), or averaged over folds of consecutive rows (k-fold, each fold scored once by
/// a model fitted on the others).
pub fn validate(
    algorithm: Algorithm,
    hyperparameters: &Hyperparameters,
    examples: &Examples,
    validation: &crate::spec::Validation,
) -> Result<BTreeMap<String, f64>, TrainError> {
    validate_folds(algorithm, hyperparameters, examples, validation).map(|(mean, _)| mean)
}

/// [`validate`], with each fold's metrics besides their mean.
pub fn validate_folds(
    algorithm: Algorithm,
    hyperparameters: &Hyperparameters,
    examples: &Examples,
    validation: &crate::spec::Validation,
) -> Result<(Metrics, Vec<Metrics>), TrainError> {
    let splits: Vec<(Vec<usize>, Vec<usize>)> = match *validation {
        crate::spec::Validation::Holdout { fraction } => {
            let cut = examples.split_index(fraction);
            vec![((0..cut).collect(), (cut..examples.len()).collect())]
        }
        crate::spec::Validation::Kfold { folds } => {
            let n = examples.len();
            let folds = folds.clamp(2, n.max(2));
            (0..folds)
                .map(|fold| {
                    let (start, end) = (fold * n / folds, (fold + 1) * n / folds);
                    ((0..start).chain(end..n).collect(), (start..end).collect())
                })
                .collect()
        }
    };
    let mut folds = Vec::with_capacity(splits.len());
    let mut mean: BTreeMap<String, f64> = BTreeMap::new();
    for (train, test) in &splits {
        let model = fit(algorithm, hyperparameters, &examples.pick(train))?;
        let test = examples.pick(test);
        let scored = metrics::binary(&test.labels, &model.scores(test.inputs.view()));
        for (name, value) in &scored {
            *mean.entry(name.clone()).or_default() += value / splits.len() as f64;
        }
        folds.push(scored);
    }
    Ok((mean, folds))
}

impl Examples {
    /// The rows at `indices`, in that order.
    pub fn pick(&self, indices: &[usize]) -> Examples {
        Examples {
            inputs: self.inputs.select(ndarray::Axis(0), indices),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }
}

#[cfg(test)]
mod validation_tests {
    use super::*;
    use crate::spec::Validation;

    #[test]
    fn k_fold_scores_every_row_once_and_averages() {
        // A label that flips with the first input: every fold can learn it.
        let n = 60;
        let examples = Examples {
            inputs: Array2::from_shape_fn((n, 1), |(r, _)| if r % 3 == 0 { 2.0 } else { -2.0 }),
            labels: (0..n).map(|r| r % 3 == 0).collect(),
        };
        let params = BTreeMap::from([("max_depth".to_owned(), 2.0)]);
        let folded = validate(
            Algorithm::DecisionTree,
            &params,
            &examples,
            &Validation::Kfold { folds: 5 },
        )
        .unwrap();
        assert_eq!(folded["accuracy"], 1.0);
        let (mean, folds) = validate_folds(
            Algorithm::DecisionTree,
            &params,
            &examples,
            &Validation::Kfold { folds: 5 },
        )
        .unwrap();
        assert_eq!(folds.len(), 5);
        assert_eq!(mean, folded);
        let held = validate(
            Algorithm::DecisionTree,
            &params,
            &examples,
            &Validation::Holdout { fraction: 0.25 },
        )
        .unwrap();
        assert_eq!(held["accuracy"], 1.0);
    }
}
