//! Model quality, computed the way scikit-learn defines it, so numbers can be compared.

use std::collections::BTreeMap;

/// Scores of a binary classifier: `scores` are probabilities of the positive class.
/// Accuracy, precision, recall and F1 at the 0.5 threshold; ROC AUC from the ranking
/// (ties share their rank); log loss with probabilities clipped to [1e-15, 1 - 1e-15].
pub fn binary(truth: &[bool], scores: &[f64]) -> BTreeMap<String, f64> {
    let n = truth.len().min(scores.len());
    let (mut tp, mut fp, mut tn, mut fal) = (0.0, 0.0, 0.0, 0.0);
    let mut log_loss = 0.0;
    for (&t, &s) in truth.iter().zip(scores).take(n) {
        match (t, s >= 0.5) {
            (true, true) => tp += 1.0,
            (false, true) => fp += 1.0,
            (false, false) => tn += 1.0,
            (true, false) => fal += 1.0,
        }
        let p = s.clamp(1e-15, 1.0 - 1e-15);
        log_loss -= if t { p.ln() } else { (1.0 - p).ln() };
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fal);
    BTreeMap::from([
        ("accuracy".to_owned(), ratio(tp + tn, n as f64)),
        ("precision".to_owned(), precision),
        ("recall".to_owned(), recall),
        (
            "f1".to_owned(),
            ratio(2.0 * precision * recall, precision + recall),
        ),
        ("roc_auc".to_owned(), roc_auc(&truth[..n], &scores[..n])),
        ("log_loss".to_owned(), ratio(log_loss, n as f64)),
    ])
}

pub use crate::model::most_likely;

/// Scores of a multiclass classifier: `probabilities` has a row per example and a column
/// per class. The predicted class is the most probable; precision, recall and F1 are
/// macro averages over the classes that occur in the truth or the predictions (a class
/// never predicted has precision 0); ROC AUC is the macro average of one-vs-rest AUCs over
/// the classes in the truth; log loss clips probabilities to [1e-15, 1 - 1e-15].
pub fn multiclass(truth: &[usize], probabilities: &ndarray::Array2<f64>) -> BTreeMap<String, f64> {
    let n = truth.len().min(probabilities.nrows());
    let classes = probabilities
        .ncols()
        .max(truth.iter().max().map_or(0, |m| m + 1));
    let predicted: Vec<usize> = most_likely(probabilities).into_iter().take(n).collect();
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let correct = truth.iter().zip(&predicted).filter(|(t, p)| t == p).count();
    let (mut precision, mut recall, mut f1, mut counted) = (0.0, 0.0, 0.0, 0.0);
    let (mut auc, mut auc_classes) = (0.0, 0.0);
    for class in 0..classes {
        let tp = (0..n)
            .filter(|&i| truth[i] == class && predicted[i] == class)
            .count() as f64;
        let actual = truth[..n].iter().filter(|&&t| t == class).count() as f64;
        let guessed = predicted.iter().filter(|&&p| p == class).count() as f64;
        if actual + guessed == 0.0 {
            continue;
        }
        let (p, r) = (ratio(tp, guessed), ratio(tp, actual));
        precision += p;
        recall += r;
        f1 += ratio(2.0 * p * r, p + r);
        counted += 1.0;
        if actual > 0.0 && class < probabilities.ncols() {
            let is_class: Vec<bool> = truth[..n].iter().map(|&t| t == class).collect();
            let scores: Vec<f64> = probabilities
                .column(class)
                .iter()
                .take(n)
                .copied()
                .collect();
            auc += roc_auc(&is_class, &scores);
            auc_classes += 1.0;
        }
    }
    let mut log_loss = 0.0;
    for (i, &t) in truth.iter().enumerate().take(n) {
        let row = probabilities.row(i);
        let clipped: Vec<f64> = row.iter().map(|p| p.clamp(1e-15, 1.0 - 1e-15)).collect();
        let total: f64 = clipped.iter().sum();
        let p = clipped.get(t).copied().unwrap_or(1e-15) / total;
        log_loss -= p.ln();
    }
    BTreeMap::from([
        ("accuracy".to_owned(), ratio(correct as f64, n as f64)),
        ("precision".to_owned(), ratio(precision, counted)),
        ("recall".to_owned(), ratio(recall, counted)),
        ("f1".to_owned(), ratio(f1, counted)),
        ("roc_auc".to_owned(), ratio(auc, auc_classes)),
        ("log_loss".to_owned(), ratio(log_loss, n as f64)),
    ])
}

/// Area under the ROC curve by the Mann-Whitney statistic; 0.5 when a class is absent.
pub fn roc_auc(truth: &[bool], scores: &[f64]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks (1-based) over ties.
    let mut ranks = vec![0.0; scores.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[order[k]] = rank;
        }
        i = j + 1;
    }
    let positives = truth.iter().filter(|t| **t).count() as f64;
    let negatives = truth.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return 0.5;
    }
    let rank_sum: f64 = truth
        .iter()
        .zip(&ranks)
        .filter(|(t, _)| **t)
        .map(|(_, r)| r)
        .sum();
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// Scores of a regressor: RMSE, MAE and R².
pub fn regression(truth: &[f64], predicted: &[f64]) -> BTreeMap<String, f64> {
    let n = truth.len().min(predicted.len()) as f64;
    let mean = truth.iter().sum::<f64>() / n;
    let (mut squared, mut absolute, mut total) = (0.0, 0.0, 0.0);
    for (t, p) in truth.iter().zip(predicted) {
        squared += (t - p).powi(2);
        absolute += (t - p).abs();
        total += (t - mean).powi(2);
    }
    BTreeMap::from([
        ("rmse".to_owned(), (squared / n).sqrt()),
        ("mae".to_owned(), absolute / n),
        (
            "r2".to_owned(),
            if total > 0.0 {
                1.0 - squared / total
            } else {
                0.0
            },
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_metrics_match_their_definitions() {
        let truth = [true, true, false, false, true];
        let scores = [0.9, 0.4, 0.6, 0.1, 0.8];
        let m = binary(&truth, &scores);
        // Predicted positive: 0, 2, 4 → tp 2, fp 1; negatives predicted: 1 (fn), 3 (tn).
        assert_eq!(m["accuracy"], 3.0 / 5.0);
        assert_eq!(m["precision"], 2.0 / 3.0);
        assert_eq!(m["recall"], 2.0 / 3.0);
        assert!((m["f1"] - 2.0 / 3.0).abs() < 1e-12);
        // Positive/negative pairs ranked right: (0.9 > 0.6, 0.1), (0.4 > 0.1), (0.8 > 0.6, 0.1).
        assert!((m["roc_auc"] - 5.0 / 6.0).abs() < 1e-12);
        let expected_loss =
            -(0.9f64.ln() + 0.4f64.ln() + 0.4f64.ln() + 0.9f64.ln() + 0.8f64.ln()) / 5.0;
        assert!((m["log_loss"] - expected_loss).abs() < 1e-12);
    }

    #[test]
    fn ties_share_their_rank_in_the_auc() {
        assert_eq!(roc_auc(&[true, false], &[0.5, 0.5]), 0.5);
        assert_eq!(roc_auc(&[true, true], &[0.1, 0.9]), 0.5, "one class only");
    }

    #[test]
    fn regression_metrics_match_their_definitions() {
        let m = regression(&[1.0, 2.0, 3.0], &[1.0, 2.0, 5.0]);
        assert!((m["rmse"] - (4.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((m["mae"] - 2.0 / 3.0).abs() < 1e-12);
        assert!((m["r2"] - (1.0 - 4.0 / 2.0)).abs() < 1e-12);
    }

    #[test]
    fn multiclass_metrics_match_their_definitions() {
        // Three classes; the model is right on 4 of 6 rows.
        let truth = [0, 0, 1, 1, 2, 2];
        let probabilities = ndarray::array![
            [0.8, 0.1, 0.1],
            [0.2, 0.7, 0.1],
            [0.1, 0.8, 0.1],
            [0.1, 0.6, 0.3],
            [0.1, 0.1, 0.8],
            [0.5, 0.2, 0.3],
        ];
        let m = multiclass(&truth, &probabilities);
        assert!((m["accuracy"] - 4.0 / 6.0).abs() < 1e-12);
        // Precision per class: 1/2, 2/3, 1/1; recall: 1/2, 2/2, 1/2.
        let precision = (0.5 + 2.0 / 3.0 + 1.0) / 3.0;
        let recall = (0.5 + 1.0 + 0.5) / 3.0;
        assert!((m["precision"] - precision).abs() < 1e-12, "{m:?}");
        assert!((m["recall"] - recall).abs() < 1e-12, "{m:?}");
        let f1 = |p: f64, r: f64| 2.0 * p * r / (p + r);
        let expected_f1 = (f1(0.5, 0.5) + f1(2.0 / 3.0, 1.0) + f1(1.0, 0.5)) / 3.0;
        assert!((m["f1"] - expected_f1).abs() < 1e-12, "{m:?}");
        let expected_loss =
            -(0.8f64.ln() + 0.2f64.ln() + 0.8f64.ln() + 0.6f64.ln() + 0.8f64.ln() + 0.3f64.ln())
                / 6.0;
        assert!((m["log_loss"] - expected_loss).abs() < 1e-12, "{m:?}");
        assert!(m["roc_auc"] > 0.5 && m["roc_auc"] <= 1.0, "{m:?}");
    }
}
