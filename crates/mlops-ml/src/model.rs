//! A trained model as serving and training use it: its fitted form (serde, the artifact's
//! `model` field) and how it scores rows. Fitting lives with training.

use linfa::prelude::*;
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// A fitted model, able to score rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Model {
    LogisticRegression(linfa_logistic::FittedLogisticRegression<f64, bool>),
    DecisionTree(linfa_trees::DecisionTree<f64, bool>),
    RandomForest(Forest<bool>),
    MulticlassLogisticRegression(linfa_logistic::MultiFittedLogisticRegression<f64, usize>),
    MulticlassDecisionTree(linfa_trees::DecisionTree<f64, usize>),
    MulticlassRandomForest(Forest<usize>),
    Ridge(Linear),
}

/// A fitted random forest: its trees and the inputs each one was grown on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forest<L: linfa::Label> {
    pub trees: Vec<linfa_trees::DecisionTree<f64, L>>,
    pub features: Vec<Vec<usize>>,
}

/// A fitted linear model: `inputs · weights + intercept`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Linear {
    pub weights: Vec<f64>,
    pub intercept: f64,
}

impl Model {
    /// For a binary classifier, the probability of the positive class for each row (a
    /// tree scores 0 or 1, a forest the share of its trees voting positive); for a
    /// multiclass one, the most likely class's index; for a regressor, the value.
    pub fn scores(&self, inputs: ArrayView2<'_, f64>) -> Vec<f64> {
        match self {
            // linfa's "positive" class is the one that was more frequent in training, which
            // may be `false`: turn its probability into the probability of `true`.
            Self::LogisticRegression(model) => {
                let probabilities = model.predict_probabilities(&inputs);
                if model.labels().pos.class {
                    probabilities.to_vec()
                } else {
                    probabilities.iter().map(|p| 1.0 - p).collect()
                }
            }
            Self::DecisionTree(tree) => tree
                .predict(&inputs)
                .iter()
                .map(|&positive| if positive { 1.0 } else { 0.0 })
                .collect(),
            Self::RandomForest(forest) => forest.votes(inputs, 2, usize::from).column(1).to_vec(),
            Self::Ridge(linear) => linear.predict(inputs),
            Self::MulticlassLogisticRegression(_)
            | Self::MulticlassDecisionTree(_)
            | Self::MulticlassRandomForest(_) => most_likely(&self.probabilities(inputs, 0))
                .into_iter()
                .map(|c| c as f64)
                .collect(),
        }
    }

    /// A multiclass model's probability of each of `classes` classes (at least the ones
    /// it saw) for each row.
    pub fn probabilities(&self, inputs: ArrayView2<'_, f64>, classes: usize) -> Array2<f64> {
        match self {
            Self::MulticlassLogisticRegression(model) => {
                let seen = model.classes();
                let columns = classes.max(seen.iter().max().map_or(0, |m| m + 1));
                let mut out = Array2::zeros((inputs.nrows(), columns));
                let probabilities = model.predict_probabilities(&inputs);
                for (c, &class) in seen.iter().enumerate() {
                    out.column_mut(class).assign(&probabilities.column(c));
                }
                out
            }
            Self::MulticlassDecisionTree(tree) => {
                let predicted = tree.predict(&inputs);
                let columns = classes.max(predicted.iter().max().map_or(0, |m| m + 1));
                let mut out = Array2::zeros((inputs.nrows(), columns));
                for (r, &class) in predicted.iter().enumerate() {
                    out[[r, class]] = 1.0;
                }
                out
            }
            Self::MulticlassRandomForest(forest) => forest.votes(inputs, classes, |c| c),
            _ => Array2::zeros((inputs.nrows(), classes)),
        }
    }

    /// The model in its own serde form, for the artifact.
    pub fn to_json(&self) -> Json {
        serde_json::to_value(self).unwrap_or(Json::Null)
    }
}

impl<L: linfa::Label + Copy> Forest<L> {
    /// Each row's share of trees voting for each of `classes` classes (`index` maps a
    /// tree's label to its class).
    fn votes(
        &self,
        inputs: ArrayView2<'_, f64>,
        classes: usize,
        index: impl Fn(L) -> usize,
    ) -> Array2<f64> {
        let mut votes = Array2::<f64>::zeros((inputs.nrows(), classes.max(1)));
        for (tree, columns) in self.trees.iter().zip(&self.features) {
            let subset = inputs.select(ndarray::Axis(1), columns);
            for (r, label) in tree.predict(&subset).iter().enumerate() {
                let class = index(*label);
                if class >= votes.ncols() {
                    let mut wider = Array2::zeros((votes.nrows(), class + 1));
                    wider
                        .slice_each_axis_mut(|axis| {
                            ndarray::Slice::from(0..votes.len_of(axis.axis))
                        })
                        .assign(&votes);
                    votes = wider;
                }
                votes[[r, class]] += 1.0;
            }
        }
        votes / self.trees.len().max(1) as f64
    }
}

impl Linear {
    pub fn predict(&self, inputs: ArrayView2<'_, f64>) -> Vec<f64> {
        inputs
            .rows()
            .into_iter()
            .map(|row| {
                row.iter()
                    .zip(&self.weights)
                    .map(|(x, w)| x * w)
                    .sum::<f64>()
                    + self.intercept
            })
            .collect()
    }
}

/// The most probable class of each row (the first of equals).
pub fn most_likely(probabilities: &Array2<f64>) -> Vec<usize> {
    probabilities
        .rows()
        .into_iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .fold(
                    (0, f64::MIN),
                    |best, (c, &p)| if p > best.1 { (c, p) } else { best },
                )
                .0
        })
        .collect()
}
