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
}
