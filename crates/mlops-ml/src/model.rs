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
    /// The trees laid out flat for scoring, made on first use (not part of the artifact).
    #[serde(skip)]
    pub flat: std::sync::OnceLock<Vec<FlatTree<L>>>,
}

/// A decision tree as one array of nodes, children by index, splits on the forest's input
/// columns: scoring a row walks an array instead of boxed nodes, and needs no copy of the
/// columns the tree was grown on.
#[derive(Debug, Clone)]
pub struct FlatTree<L> {
    nodes: Vec<FlatNode<L>>,
}

#[derive(Debug, Clone)]
enum FlatNode<L> {
    Leaf(L),
    /// Left when `input[column] < threshold` (linfa's rule; NaN goes right).
    Split {
        column: usize,
        threshold: f64,
        left: usize,
        right: usize,
    },
}

impl<L: linfa::Label + Copy + Default> FlatTree<L> {
    /// `tree`, whose split indices count among `columns` of the forest's inputs.
    fn of(tree: &linfa_trees::DecisionTree<f64, L>, columns: &[usize]) -> Self {
        let mut flat = Self { nodes: Vec::new() };
        flat.push(tree.root_node(), columns);
        flat
    }

    /// Appends `node` and what is under it; returns its index.
    fn push(&mut self, node: &linfa_trees::TreeNode<f64, L>, columns: &[usize]) -> usize {
        let at = self.nodes.len();
        if let Some(label) = node.prediction() {
            self.nodes.push(FlatNode::Leaf(label));
            return at;
        }
        let (feature, threshold, _) = node.split();
        self.nodes.push(FlatNode::Leaf(L::default()));
        let children = node.children();
        let child = |i: usize| children.get(i).and_then(|c| c.as_deref());
        let (Some(left_node), Some(right_node)) = (child(0), child(1)) else {
            // A split without both children does not occur in a fitted tree.
            return at;
        };
        let left = self.push(left_node, columns);
        let right = self.push(right_node, columns);
        self.nodes[at] = FlatNode::Split {
            column: columns.get(feature).copied().unwrap_or(feature),
            threshold,
            left,
            right,
        };
        at
    }

    fn predict(&self, row: ndarray::ArrayView1<'_, f64>) -> L {
        let mut at = 0;
        loop {
            match &self.nodes[at] {
                FlatNode::Leaf(label) => return *label,
                FlatNode::Split {
                    column,
                    threshold,
                    left,
                    right,
                } => {
                    at = if row[*column] < *threshold {
                        *left
                    } else {
                        *right
                    }
                }
            }
        }
    }
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

impl<L: linfa::Label + Copy + Default> Forest<L> {
    /// Each row's share of trees voting for each of `classes` classes (`index` maps a
    /// tree's label to its class).
    fn votes(
        &self,
        inputs: ArrayView2<'_, f64>,
        classes: usize,
        index: impl Fn(L) -> usize,
    ) -> Array2<f64> {
        let mut votes = Array2::<f64>::zeros((inputs.nrows(), classes.max(1)));
        let flat = self.flat.get_or_init(|| {
            self.trees
                .iter()
                .zip(&self.features)
                .map(|(tree, columns)| FlatTree::of(tree, columns))
                .collect()
        });
        for tree in flat {
            for (r, row) in inputs.rows().into_iter().enumerate() {
                let class = index(tree.predict(row));
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

#[cfg(test)]
mod tests {
    use linfa_trees::DecisionTree;
    use ndarray::{Array1, Array2};

    use super::*;

    /// Rows of four inputs spread over a few values each, some missing (NaN) if `missing`.
    fn inputs(rows: usize, salt: u64, missing: bool) -> Array2<f64> {
        Array2::from_shape_fn((rows, 4), |(r, c)| {
            let x = ((r as u64 * 7919 + c as u64 * 104_729 + salt) % 97) as f64 / 9.7;
            if missing && (r + c) % 23 == 0 {
                f64::NAN
            } else {
                x
            }
        })
    }

    /// A forest's votes, laid out flat, are those of linfa's own trees on the columns each
    /// tree was grown on (missing values included).
    #[test]
    fn flat_trees_vote_as_linfa_trees_do() {
        let train = inputs(400, 1, false);
        let columns_of = [vec![0, 1, 3], vec![2], vec![0, 1, 2, 3], vec![1, 3]];
        let mut forest = Forest::<usize> {
            trees: Vec::new(),
            features: Vec::new(),
            flat: Default::default(),
        };
        for columns in &columns_of {
            let x = train.select(ndarray::Axis(1), columns);
            let y: Array1<usize> = train
                .rows()
                .into_iter()
                .map(|r| (r[0] + r[2]) as usize % 3)
                .collect();
            let tree = DecisionTree::params()
                .max_depth(Some(6))
                .fit(&linfa::Dataset::new(x, y))
                .unwrap();
            forest.trees.push(tree);
            forest.features.push(columns.clone());
        }
        let scored = inputs(300, 5, true);
        let mut expected = Array2::<f64>::zeros((scored.nrows(), 3));
        for (tree, columns) in forest.trees.iter().zip(&forest.features) {
            let subset = scored.select(ndarray::Axis(1), columns);
            for (r, class) in tree.predict(&subset).iter().enumerate() {
                expected[[r, *class]] += 1.0;
            }
        }
        expected /= forest.trees.len() as f64;
        let votes = forest.votes(scored.view(), 3, |c| c);
        assert_eq!(votes, expected);
        assert!(
            votes.iter().any(|v| *v > 0.0 && *v < 1.0),
            "trees disagree somewhere"
        );
    }
}
