//! Fitting and scoring candidate models: binary and multiclass classifiers from `linfa`
//! (logistic regression, decision tree, random forest), ridge regression, hyperparameters
//! searched over a grid, each candidate fitted on the older rows and scored on the newest
//! (a time-based holdout: the data is a stream, and a model is used on what comes next).

use std::collections::BTreeMap;

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use linfa_trees::DecisionTree;
use ndarray::{Array1, Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use mlops_ml::metrics;

use crate::spec::Task;
pub use mlops_ml::model::{Forest, Linear, Model};

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
    /// Least squares with an L2 penalty `alpha` (default 1.0; 0 is ordinary least
    /// squares), intercept unpenalised: the regression algorithm.
    Ridge,
}

/// Metric values by name.
pub type Metrics = BTreeMap<String, f64>;

/// One choice of hyperparameters, by name.
pub type Hyperparameters = BTreeMap<String, f64>;

/// Rows of model inputs (already transformed) and their targets, oldest first.
#[derive(Debug, Clone)]
pub struct Examples {
    pub inputs: Array2<f64>,
    /// The binary label of every row (binary classification; empty otherwise).
    pub labels: Vec<bool>,
    /// The target of every row: 0 or 1, the class's index, or the value.
    pub targets: Vec<f64>,
    pub task: Task,
    /// How many classes there are (classification).
    pub classes: usize,
}

impl Examples {
    pub fn binary(inputs: Array2<f64>, labels: Vec<bool>) -> Self {
        Self {
            inputs,
            targets: labels.iter().map(|&l| f64::from(u8::from(l))).collect(),
            labels,
            task: Task::BinaryClassification,
            classes: 2,
        }
    }

    /// `classes[r]` is row r's class, an index below `count`.
    pub fn multiclass(inputs: Array2<f64>, classes: Vec<usize>, count: usize) -> Self {
        Self {
            inputs,
            labels: Vec::new(),
            targets: classes.iter().map(|&c| c as f64).collect(),
            task: Task::MulticlassClassification,
            classes: count,
        }
    }

    pub fn regression(inputs: Array2<f64>, values: Vec<f64>) -> Self {
        Self {
            inputs,
            labels: Vec::new(),
            targets: values,
            task: Task::Regression,
            classes: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
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
        self.pick(&range.collect::<Vec<_>>())
    }

    /// The rows at `indices`, in that order.
    pub fn pick(&self, indices: &[usize]) -> Examples {
        Examples {
            // `select`, not `slice`: ndarray's `s!` expands to code `unsafe_code = "forbid"` refuses.
            inputs: self.inputs.select(ndarray::Axis(0), indices),
            labels: if self.labels.is_empty() {
                Vec::new()
            } else {
                indices.iter().map(|&i| self.labels[i]).collect()
            },
            targets: indices.iter().map(|&i| self.targets[i]).collect(),
            task: self.task,
            classes: self.classes,
        }
    }

    fn class_indices(&self) -> Vec<usize> {
        self.targets.iter().map(|&t| t as usize).collect()
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

/// A model's metrics on `examples`, by the task's definitions.
pub fn evaluate(model: &Model, examples: &Examples) -> Metrics {
    let inputs = examples.inputs.view();
    match examples.task {
        Task::BinaryClassification => metrics::binary(&examples.labels, &model.scores(inputs)),
        Task::MulticlassClassification => metrics::multiclass(
            &examples.class_indices(),
            &model.probabilities(inputs, examples.classes),
        ),
        Task::Regression => metrics::regression(&examples.targets, &model.scores(inputs)),
    }
}

/// Ridge regression: centre inputs and targets (so the intercept is not penalised),
/// then solve `(XᵀX + αI) w = Xᵀy` by Cholesky.
fn fit_ridge(inputs: ArrayView2<'_, f64>, targets: &[f64], alpha: f64) -> Result<Linear, String> {
    let (rows, columns) = inputs.dim();
    if rows == 0 {
        return Err("no rows to fit".into());
    }
    let means: Vec<f64> = (0..columns)
        .map(|c| inputs.column(c).sum() / rows as f64)
        .collect();
    let target_mean = targets.iter().sum::<f64>() / rows as f64;
    let mut gram = vec![vec![0.0; columns]; columns];
    let mut moment = vec![0.0; columns];
    for (row, &y) in inputs.rows().into_iter().zip(targets) {
        let centred: Vec<f64> = row.iter().zip(&means).map(|(x, m)| x - m).collect();
        for a in 0..columns {
            moment[a] += centred[a] * (y - target_mean);
            for b in 0..=a {
                gram[a][b] += centred[a] * centred[b];
            }
        }
    }
    for (a, row) in gram.iter_mut().enumerate() {
        // A tiny ridge keeps ordinary least squares solvable on collinear inputs.
        row[a] += alpha.max(1e-9);
    }
    // Cholesky: gram = L Lᵀ (lower triangle only was filled).
    let mut lower = vec![vec![0.0; columns]; columns];
    for a in 0..columns {
        for b in 0..=a {
            let sum: f64 = (0..b).map(|k| lower[a][k] * lower[b][k]).sum();
            if a == b {
                let d = gram[a][a] - sum;
                if d <= 0.0 {
                    return Err("the inputs are degenerate; raise alpha".into());
                }
                lower[a][a] = d.sqrt();
            } else {
                lower[a][b] = (gram[a][b] - sum) / lower[b][b];
            }
        }
    }
    let mut z = vec![0.0; columns];
    for a in 0..columns {
        let sum: f64 = (0..a).map(|k| lower[a][k] * z[k]).sum();
        z[a] = (moment[a] - sum) / lower[a][a];
    }
    let mut weights = vec![0.0; columns];
    for a in (0..columns).rev() {
        let sum: f64 = (a + 1..columns).map(|k| lower[k][a] * weights[k]).sum();
        weights[a] = (z[a] - sum) / lower[a][a];
    }
    let intercept = target_mean - weights.iter().zip(&means).map(|(w, m)| w * m).sum::<f64>();
    Ok(Linear { weights, intercept })
}

/// Fits `algorithm` with `hyperparameters` on `train`, for `train`'s task.
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
    let alpha = || {
        let alpha = get("alpha", 1.0);
        if alpha >= 0.0 && alpha.is_finite() {
            Ok(alpha)
        } else {
            Err(invalid("alpha", "must be a finite number ≥ 0"))
        }
    };
    let depth = || match hyperparameters.get("max_depth") {
        None => Ok(None),
        Some(_) => whole("max_depth", 0.0, 1.0).map(|d| Some(d as usize)),
    };
    let classes = train.class_indices();
    match (train.task, algorithm) {
        (Task::Regression, Algorithm::Ridge) => {
            fit_ridge(train.inputs.view(), &train.targets, alpha()?)
                .map(Model::Ridge)
                .map_err(failed)
        }
        (Task::Regression, _) | (_, Algorithm::Ridge) => Err(failed(format!(
            "{algorithm:?} is not an algorithm for {:?}",
            train.task
        ))),
        (task, Algorithm::LogisticRegression) => {
            let alpha = alpha()?;
            let iterations = whole("max_iterations", 100.0, 1.0)? as u64;
            if task == Task::BinaryClassification {
                let dataset =
                    Dataset::new(train.inputs.clone(), Array1::from(train.labels.clone()));
                LogisticRegression::default()
                    .alpha(alpha)
                    .max_iterations(iterations)
                    .fit(&dataset)
                    .map(Model::LogisticRegression)
                    .map_err(|e| failed(e.to_string()))
            } else {
                let dataset = Dataset::new(train.inputs.clone(), Array1::from(classes));
                linfa_logistic::MultiLogisticRegression::default()
                    .alpha(alpha)
                    .max_iterations(iterations)
                    .fit(&dataset)
                    .map(Model::MulticlassLogisticRegression)
                    .map_err(|e| failed(e.to_string()))
            }
        }
        (task, Algorithm::DecisionTree) => {
            let split = get("min_weight_split", 2.0);
            if !(split >= 1.0 && split.is_finite()) {
                return Err(invalid("min_weight_split", "must be a number ≥ 1"));
            }
            let depth = depth()?;
            if task == Task::BinaryClassification {
                let dataset =
                    Dataset::new(train.inputs.clone(), Array1::from(train.labels.clone()));
                DecisionTree::params()
                    .max_depth(depth)
                    .min_weight_split(split as f32)
                    .fit(&dataset)
                    .map(Model::DecisionTree)
                    .map_err(|e| failed(e.to_string()))
            } else {
                let dataset = Dataset::new(train.inputs.clone(), Array1::from(classes));
                DecisionTree::params()
                    .max_depth(depth)
                    .min_weight_split(split as f32)
                    .fit(&dataset)
                    .map(Model::MulticlassDecisionTree)
                    .map_err(|e| failed(e.to_string()))
            }
        }
        (task, Algorithm::RandomForest) => {
            let settings = ForestSettings {
                trees: whole("n_trees", 100.0, 1.0)? as usize,
                depth: depth()?,
                rows: fraction("bootstrap_fraction", 1.0)?,
                features: fraction("feature_fraction", 0.7)?,
                seed: whole("seed", 42.0, 0.0)? as u64,
            };
            if task == Task::BinaryClassification {
                if train.labels.iter().all(|&l| l) || train.labels.iter().all(|&l| !l) {
                    return Err(failed("the training rows hold one class only".into()));
                }
                grow_forest(&train.inputs, &train.labels, &settings)
                    .map(Model::RandomForest)
                    .map_err(failed)
            } else {
                grow_forest(&train.inputs, &classes, &settings)
                    .map(Model::MulticlassRandomForest)
                    .map_err(failed)
            }
        }
    }
}

struct ForestSettings {
    trees: usize,
    depth: Option<usize>,
    /// Shares of the rows (drawn with replacement) and of the inputs (without) per tree.
    rows: f64,
    features: f64,
    seed: u64,
}

/// Bagging, by our own seeded draws so that a seed always grows the same forest.
fn grow_forest<L>(
    inputs: &Array2<f64>,
    labels: &[L],
    settings: &ForestSettings,
) -> Result<Forest<L>, String>
where
    L: linfa::Label + Copy + std::fmt::Debug,
{
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(settings.seed);
    let (rows, columns) = inputs.dim();
    let sample = ((rows as f64) * settings.rows).ceil().max(1.0) as usize;
    let chosen = ((columns as f64) * settings.features)
        .ceil()
        .clamp(1.0, columns.max(1) as f64) as usize;
    let mut forest = Forest {
        trees: Vec::with_capacity(settings.trees),
        features: Vec::with_capacity(settings.trees),
        flat: Default::default(),
    };
    for _ in 0..settings.trees {
        let picked: Vec<usize> = (0..sample).map(|_| rng.gen_range(0..rows)).collect();
        let mut all: Vec<usize> = (0..columns).collect();
        for i in 0..chosen {
            let j = rng.gen_range(i..columns);
            all.swap(i, j);
        }
        let mut kept = all[..chosen].to_vec();
        kept.sort_unstable();
        let records = inputs
            .select(ndarray::Axis(0), &picked)
            .select(ndarray::Axis(1), &kept);
        let targets: Array1<L> = picked.iter().map(|&r| labels[r]).collect();
        let tree = DecisionTree::params()
            .max_depth(settings.depth)
            .fit(&Dataset::new(records, targets))
            .map_err(|e| e.to_string())?;
        forest.trees.push(tree);
        forest.features.push(kept);
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
    let lower_is_better = matches!(primary, "log_loss" | "rmse" | "mae");
    let mut trials = Vec::new();
    let mut best: Option<(usize, Model, f64)> = None;
    for (algorithm, hyperparameters) in candidates {
        let model = fit(*algorithm, hyperparameters, train)?;
        let metrics = evaluate(&model, test);
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
        Examples::binary(
            Array2::from_shape_fn(
                (rows.len(), 2),
                |(r, c)| {
                    if c == 0 { rows[r].0 } else { rows[r].1 }
                },
            ),
            rows.iter().map(|r| r.2).collect(),
        )
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
        let metrics = mlops_ml::metrics::binary(&test.labels, &scores);
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
    fn three_classes_are_told_apart_by_every_classifier() {
        // Class = which third of the line x falls in; a second input is noise.
        let n = 240;
        let inputs = Array2::from_shape_fn((n, 2), |(r, c)| {
            if c == 0 {
                ((r * 7) % 30) as f64
            } else {
                ((r * 13) % 7) as f64
            }
        });
        let classes: Vec<usize> = (0..n).map(|r| ((r * 7) % 30) / 10).collect();
        let data = Examples::multiclass(inputs, classes, 3);
        let (train, test) = data.time_split(0.25);
        for (algorithm, params) in [
            (Algorithm::DecisionTree, vec![("max_depth", 3.0)]),
            (
                Algorithm::RandomForest,
                vec![("n_trees", 15.0), ("feature_fraction", 1.0)],
            ),
            (
                Algorithm::LogisticRegression,
                vec![("alpha", 0.01), ("max_iterations", 500.0)],
            ),
        ] {
            let params: Hyperparameters =
                params.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            let model = fit(algorithm, &params, &train).unwrap();
            let metrics = evaluate(&model, &test);
            assert!(metrics["accuracy"] >= 0.9, "{algorithm:?}: {metrics:?}");
            let round_trip: Model = serde_json::from_value(model.to_json()).unwrap();
            assert_eq!(evaluate(&round_trip, &test), metrics, "{algorithm:?}");
        }
        let ridge = fit(Algorithm::Ridge, &BTreeMap::new(), &train).unwrap_err();
        assert!(
            ridge.to_string().contains("not an algorithm for"),
            "{ridge}"
        );
    }

    #[test]
    fn ridge_regression_recovers_a_linear_relation() {
        // y = 3·x0 − 2·x1 + 5, exactly: ordinary least squares (alpha 0) finds it.
        let n = 100;
        let inputs = Array2::from_shape_fn((n, 2), |(r, c)| {
            if c == 0 {
                r as f64 / 10.0
            } else {
                ((r * 7) % 11) as f64
            }
        });
        let values: Vec<f64> = inputs
            .rows()
            .into_iter()
            .map(|row| 3.0 * row[0] - 2.0 * row[1] + 5.0)
            .collect();
        let data = Examples::regression(inputs, values);
        let (train, test) = data.time_split(0.2);
        let ols = BTreeMap::from([("alpha".to_owned(), 0.0)]);
        let model = fit(Algorithm::Ridge, &ols, &train).unwrap();
        let Model::Ridge(linear) = &model else {
            panic!("a linear model");
        };
        assert!((linear.weights[0] - 3.0).abs() < 1e-6, "{linear:?}");
        assert!((linear.weights[1] + 2.0).abs() < 1e-6, "{linear:?}");
        assert!((linear.intercept - 5.0).abs() < 1e-5, "{linear:?}");
        let metrics = evaluate(&model, &test);
        assert!(
            metrics["rmse"] < 1e-5 && metrics["r2"] > 0.999_999,
            "{metrics:?}"
        );
        // A penalty shrinks the weights.
        let heavy = BTreeMap::from([("alpha".to_owned(), 1e6)]);
        let Model::Ridge(shrunk) = fit(Algorithm::Ridge, &heavy, &train).unwrap() else {
            panic!("a linear model");
        };
        assert!(shrunk.weights[0].abs() < 0.5, "{shrunk:?}");
        let tree = fit(Algorithm::DecisionTree, &BTreeMap::new(), &train).unwrap_err();
        assert!(tree.to_string().contains("not an algorithm for"), "{tree}");
    }

    #[test]
    fn a_logistic_regression_scores_the_probability_of_true_whichever_class_is_larger() {
        // Positives are the smaller class here (linfa then calls `false` its positive).
        for positives in [30, 170] {
            let n = 200;
            let inputs = Array2::from_shape_fn((n, 1), |(r, _)| r as f64 / 20.0 - 5.0);
            let labels: Vec<bool> = (0..n).map(|r| r >= n - positives).collect();
            let data = Examples::binary(inputs, labels);
            let params = BTreeMap::from([("alpha".to_owned(), 0.01)]);
            let model = fit(Algorithm::LogisticRegression, &params, &data).unwrap();
            let scores = model.scores(ndarray::array![[5.0], [-5.0]].view());
            assert!(
                scores[0] > 0.5 && scores[1] < 0.5,
                "{positives}: {scores:?}"
            );
            assert!(evaluate(&model, &data)["accuracy"] > 0.95);
        }
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
        let scored = evaluate(&model, &test);
        for (name, value) in &scored {
            *mean.entry(name.clone()).or_default() += value / splits.len() as f64;
        }
        folds.push(scored);
    }
    Ok((mean, folds))
}

#[cfg(test)]
mod validation_tests {
    use super::*;
    use crate::spec::Validation;

    #[test]
    fn k_fold_scores_every_row_once_and_averages() {
        // A label that flips with the first input: every fold can learn it.
        let n = 60;
        let examples = Examples::binary(
            Array2::from_shape_fn((n, 1), |(r, _)| if r % 3 == 0 { 2.0 } else { -2.0 }),
            (0..n).map(|r| r % 3 == 0).collect(),
        );
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
