//! Canary analysis: the canary and production compared on the same stretch of time, and
//! a verdict once the bake criteria are met.
//!
//! The primary comparison is a one-sided test on the per-prediction loss of the labelled
//! predictions (0/1 error for classification, squared error for regression): the canary is
//! rolled back when its loss is higher than production's with p < `alpha`. The verdict is
//! looked at on every tick as labels arrive, and a fixed-sample test looked at that often
//! crosses `alpha` by chance more often than `alpha` (11 % of equal canaries in the tests'
//! simulation, looked at after each of 170 labels); so the p-value is an always-valid one,
//! from a mixture sequential probability ratio test on the Welch difference of mean losses
//! ([`always_valid_p`]), whose chance of ever crossing `alpha` for a canary no worse than
//! production is at most `alpha`, however often it is looked at. It is
//! also rolled back when it fails more often than production — requests it could not answer
//! where production could (serving logs those against it), or answers that are not finite
//! numbers — by the same kind of sequential test on the failure rates at `alpha` and by at
//! least one point, or
//! when its tail latency is `latency_factor` times production's at the same quantile (and
//! above a floor, so that microsecond noise does not decide): p99 once the canary has served
//! a thousand requests, a lower quantile before — one with at least [`TAIL_SAMPLES`] of the
//! canary's requests above it, so that a single slow request never decides. Otherwise, once
//! it has served `min_requests`, has `min_labels` labelled predictions and `min_seconds` have passed, it is widened to the
//! next of `widen_steps` above its share, or promoted. The output distributions (KS) are
//! part of the evidence, not of the verdict: a retrained model is expected to answer
//! differently.

use std::collections::{HashMap, VecDeque};

use mlops_events::CanaryVerdict;
use serde::{Deserialize, Serialize};

/// Bake criteria and decision rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CanarySettings {
    pub min_requests: u64,
    pub min_labels: u64,
    pub min_seconds: u64,
    /// Shares (percent) the canary is widened to, in order, before it is promoted.
    pub widen_steps: Vec<f64>,
    /// Significance of the loss comparison: the chance, over the whole canary, of rolling
    /// back one whose loss is no higher than production's.
    pub alpha: f64,
    /// The difference, in standard deviations of the per-prediction loss (or of a
    /// request's failure), the sequential tests are tuned to find soonest (the spread of
    /// their mixing prior): larger differences are still found, smaller ones need more.
    pub loss_effect: f64,
    pub latency_factor: f64,
    /// Latency below this (ms) never decides a rollback.
    pub latency_floor_ms: f64,
}

impl Default for CanarySettings {
    fn default() -> Self {
        Self {
            min_requests: 100,
            min_labels: 50,
            min_seconds: 10,
            widen_steps: Vec::new(),
            alpha: 0.05,
            loss_effect: 0.3,
            latency_factor: 3.0,
            latency_floor_ms: 10.0,
        }
    }
}

/// Bound on the samples kept per arm (latencies, outputs).
const SAMPLES: usize = 10_000;

/// Fewest of the canary's requests above the latency quantile compared: the p99 of 55
/// requests is their slowest, one request that met a busy core; the 0.82 quantile has ten
/// above it.
pub const TAIL_SAMPLES: usize = 10;

/// The latency quantile compared for a canary of `samples` requests: 0.99, or lower while
/// fewer than [`TAIL_SAMPLES`] would lie above it.
pub fn latency_quantile(samples: usize) -> f64 {
    (1.0 - TAIL_SAMPLES as f64 / samples.max(1) as f64).clamp(0.0, 0.99)
}

/// What one side of the comparison has shown since the canary started.
#[derive(Debug, Clone, Default)]
pub struct Arm {
    pub requests: u64,
    /// Requests it failed: no answer (serving's logged failure) or a non-finite one.
    pub errors: u64,
    latencies_ms: VecDeque<f64>,
    outputs: VecDeque<f64>,
    /// Labelled predictions: count, sum and sum of squares of the loss.
    pub labels: u64,
    loss_sum: f64,
    loss_squares: f64,
}

impl Arm {
    /// A request served: its output, or none when the version failed it.
    pub fn prediction(&mut self, output: Option<f64>, latency_ms: f64) {
        self.requests += 1;
        match output.filter(|o| o.is_finite()) {
            Some(output) => push_bounded(&mut self.outputs, output, SAMPLES),
            None => self.errors += 1,
        }
        push_bounded(&mut self.latencies_ms, latency_ms, SAMPLES);
    }

    pub fn loss(&mut self, loss: f64) {
        self.labels += 1;
        self.loss_sum += loss;
        self.loss_squares += loss * loss;
    }

    fn mean_loss(&self) -> f64 {
        if self.labels == 0 {
            0.0
        } else {
            self.loss_sum / self.labels as f64
        }
    }

    fn loss_variance(&self) -> f64 {
        sample_variance(self.labels, self.loss_sum, self.loss_squares)
    }

    #[cfg(test)]
    fn p99_latency(&self) -> f64 {
        let [p99] = self.latencies([0.99]);
        p99
    }

    /// The quantiles `qs` of its latencies (each the smallest sample with a share `q` at or
    /// below it; 0 when it has none), from one sort.
    fn latencies<const N: usize>(&self, qs: [f64; N]) -> [f64; N] {
        let mut sorted: Vec<f64> = self.latencies_ms.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        qs.map(|q| {
            sorted
                .get(((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(0.0)
        })
    }

    fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// The sample variance of `n` values from their sum and sum of squares (0 below two).
fn sample_variance(n: u64, sum: f64, squares: f64) -> f64 {
    if n < 2 {
        return 0.0;
    }
    let (n, mean) = (n as f64, sum / n as f64);
    ((squares - n * mean * mean) / (n - 1.0)).max(0.0)
}

/// Appends `value`, dropping the oldest entries beyond `bound`.
pub(crate) fn push_bounded<T>(entries: &mut VecDeque<T>, value: T, bound: usize) {
    while entries.len() >= bound.max(1) {
        entries.pop_front();
    }
    entries.push_back(value);
}

/// Whether `worse` has a higher mean loss than `better`: the Welch z of the difference,
/// and an always-valid one-sided p-value for it ([`always_valid_p`], the prior's spread
/// `effect` standard deviations of the per-prediction loss, both sides pooled).
pub fn loss_test(worse: &Arm, better: &Arm, effect: f64) -> (f64, f64) {
    let difference = worse.mean_loss() - better.mean_loss();
    let variance = worse.loss_variance() / worse.labels.max(1) as f64
        + better.loss_variance() / better.labels.max(1) as f64;
    let (z, _) = one_sided(difference, variance.sqrt());
    let pooled_variance = sample_variance(
        worse.labels + better.labels,
        worse.loss_sum + better.loss_sum,
        worse.loss_squares + better.loss_squares,
    );
    let p = always_valid_p(difference, variance, effect * effect * pooled_variance);
    (z, p)
}

/// Whether `worse` fails more often than `better`: the pooled two-proportion z, and an
/// always-valid one-sided p-value for the difference of failure rates (unpooled variance,
/// the prior's spread `effect` standard deviations of a request's failure, both sides
/// pooled). With no requests on `better` to compare with, any failure counts.
pub fn error_test(worse: &Arm, better: &Arm, effect: f64) -> (f64, f64) {
    let (n1, n2) = (worse.requests as f64, better.requests as f64);
    if n1 == 0.0 || n2 == 0.0 {
        return if worse.errors > 0 {
            (f64::INFINITY, 0.0)
        } else {
            (0.0, 1.0)
        };
    }
    let (r1, r2) = (worse.error_rate(), better.error_rate());
    let pooled = (worse.errors + better.errors) as f64 / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    let (z, _) = one_sided(r1 - r2, se);
    let variance = r1 * (1.0 - r1) / n1 + r2 * (1.0 - r2) / n2;
    let p = always_valid_p(r1 - r2, variance, effect * effect * pooled * (1.0 - pooled));
    (z, p)
}

/// An always-valid one-sided p-value that a difference is above zero, for a difference
/// estimated as `difference` with variance `variance` at this look.
///
/// The estimate D is about normal with variance V. Against "no higher" (zero), every
/// positive true difference is weighed by a half-normal prior of variance τ²
/// (`prior_variance`); the likelihood ratio, integrated over it, is
/// Λ = 2 √(V / (V + τ²)) · exp(D² τ² / (2 V (V + τ²))) · Φ(D τ / √(V (V + τ²))).
/// Λ is a martingale when there is no difference (a supermartingale when it is negative),
/// so by Ville's inequality it ever reaches 1/α with chance at most α, however many looks:
/// the p-value is min(1, 1/Λ). (The mixture sequential probability ratio test of Johari,
/// Pekelis and Walsh, "Always valid inference", 2017, made one-sided.)
pub fn always_valid_p(difference: f64, variance: f64, prior_variance: f64) -> f64 {
    if !(variance > 0.0 && variance.is_finite()) {
        // No spread: a positive difference is certain, anything else is no evidence.
        return if difference > 0.0 { 0.0 } else { 1.0 };
    }
    if !(prior_variance > 0.0 && prior_variance.is_finite()) {
        return 1.0;
    }
    let spread = variance + prior_variance;
    let log_ratio = std::f64::consts::LN_2
        + 0.5 * (variance / spread).ln()
        + difference * difference * prior_variance / (2.0 * variance * spread)
        + normal_sf(-difference * prior_variance.sqrt() / (variance * spread).sqrt()).ln();
    (-log_ratio).exp().min(1.0)
}

/// z = difference / standard error and its one-sided p-value; a difference with no
/// spread at all is certain (z infinite) when positive.
fn one_sided(difference: f64, se: f64) -> (f64, f64) {
    let z = if se > 0.0 {
        difference / se
    } else if difference > 0.0 {
        f64::INFINITY
    } else {
        0.0
    };
    (z, normal_sf(z))
}

/// P(Z > z) for a standard normal Z, through the chi-square survival function with one
/// degree of freedom (P(Z² > z²) = 2 P(Z > |z|)).
pub fn normal_sf(z: f64) -> f64 {
    if z.is_infinite() {
        return if z > 0.0 { 0.0 } else { 1.0 };
    }
    let tail = 0.5 * mlops_ml::drift::chi_square_sf(z * z, 1.0);
    if z >= 0.0 { tail } else { 1.0 - tail }
}

/// A verdict, its new share for a widening, its evidence and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub decision: CanaryVerdict,
    pub new_percent: Option<f64>,
    pub evidence: HashMap<String, f64>,
    pub reason: String,
}

/// The verdict on `canary` against `production` after `elapsed_ms` at `percent`, or none
/// while the evidence is not in.
pub fn judge(
    settings: &CanarySettings,
    canary: &Arm,
    production: Option<&Arm>,
    percent: f64,
    elapsed_ms: i64,
) -> Option<Verdict> {
    let empty = Arm::default();
    let baseline = production.unwrap_or(&empty);
    // Both sides at the same quantile, one the canary's count of requests can measure.
    let quantile = latency_quantile(canary.latencies_ms.len());
    let [canary_p99, canary_latency] = canary.latencies([0.99, quantile]);
    let [baseline_p99, baseline_latency] = baseline.latencies([0.99, quantile]);
    let mut evidence = HashMap::from([
        ("canary_requests".to_owned(), canary.requests as f64),
        ("production_requests".to_owned(), baseline.requests as f64),
        ("canary_labels".to_owned(), canary.labels as f64),
        ("production_labels".to_owned(), baseline.labels as f64),
        ("canary_loss".to_owned(), canary.mean_loss()),
        ("production_loss".to_owned(), baseline.mean_loss()),
        ("canary_error_rate".to_owned(), canary.error_rate()),
        ("production_error_rate".to_owned(), baseline.error_rate()),
        ("canary_p99_latency_ms".to_owned(), canary_p99),
        ("production_p99_latency_ms".to_owned(), baseline_p99),
        ("latency_quantile".to_owned(), quantile),
        ("canary_latency_ms".to_owned(), canary_latency),
        ("production_latency_ms".to_owned(), baseline_latency),
        ("elapsed_seconds".to_owned(), elapsed_ms as f64 / 1000.0),
        ("percent".to_owned(), percent),
    ]);
    if !canary.outputs.is_empty() && !baseline.outputs.is_empty() {
        let mut a: Vec<f64> = canary.outputs.iter().copied().collect();
        let mut b: Vec<f64> = baseline.outputs.iter().copied().collect();
        let (d, p) = mlops_ml::drift::ks_two_sample(&mut a, &mut b);
        evidence.insert("output_ks".to_owned(), d);
        evidence.insert("output_ks_p_value".to_owned(), p);
    }
    let compared = production.is_some() && canary.labels >= settings.min_labels.max(1);
    let compared = compared && baseline.labels >= settings.min_labels.max(1);
    let mut rollback = None;
    if compared {
        let (z, p) = loss_test(canary, baseline, settings.loss_effect);
        evidence.insert("loss_z".to_owned(), z);
        evidence.insert("loss_p_value".to_owned(), p);
        if p < settings.alpha {
            rollback = Some(format!(
                "the canary's loss {:.4} is higher than production's {:.4} (one-sided sequential test on the Welch difference, z = {z:.2}, always-valid p = {p:.2e} < {})",
                canary.mean_loss(),
                baseline.mean_loss(),
                settings.alpha
            ));
        }
    }
    if rollback.is_none() && canary.errors > 0 {
        let (z, p) = error_test(canary, baseline, settings.loss_effect);
        evidence.insert("error_z".to_owned(), z);
        evidence.insert("error_p_value".to_owned(), p);
        if p < settings.alpha && canary.error_rate() > baseline.error_rate() + 0.01 {
            rollback = Some(format!(
                "the canary failed {:.1}% of its requests against production's {:.1}% (one-sided sequential test on the difference of failure rates, z = {z:.2}, always-valid p = {p:.2e} < {})",
                canary.error_rate() * 100.0,
                baseline.error_rate() * 100.0,
                settings.alpha
            ));
        }
    }
    if rollback.is_none()
        && production.is_some()
        && canary.requests >= settings.min_requests
        && canary_latency > settings.latency_floor_ms
        && canary_latency > settings.latency_factor * baseline_latency
    {
        rollback = Some(format!(
            "the canary's latency at quantile {quantile:.2} (of its {} requests) {canary_latency:.1} ms is more than {} times production's {baseline_latency:.1} ms",
            canary.latencies_ms.len(),
            settings.latency_factor,
        ));
    }
    if let Some(reason) = rollback {
        return Some(Verdict {
            decision: CanaryVerdict::Rollback,
            new_percent: None,
            evidence,
            reason,
        });
    }
    let baked = canary.requests >= settings.min_requests
        && canary.labels >= settings.min_labels
        && elapsed_ms >= settings.min_seconds as i64 * 1000;
    if !baked {
        return None;
    }
    let comparison = if compared {
        format!(
            "loss {:.4} vs production's {:.4}, not worse (p = {:.3})",
            canary.mean_loss(),
            baseline.mean_loss(),
            evidence["loss_p_value"]
        )
    } else {
        "no production version to compare with".to_owned()
    };
    let bake = format!(
        "{} requests, {} labels, {:.0} s at {percent}%",
        canary.requests,
        canary.labels,
        elapsed_ms as f64 / 1000.0
    );
    if let Some(next) = settings.widen_steps.iter().find(|s| **s > percent) {
        return Some(Verdict {
            decision: CanaryVerdict::Widen,
            new_percent: Some(*next),
            evidence,
            reason: format!("baked ({bake}); {comparison}: widen to {next}%"),
        });
    }
    Some(Verdict {
        decision: CanaryVerdict::Promote,
        new_percent: None,
        evidence,
        reason: format!("baked ({bake}); {comparison}: promote"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(requests: u64, errors: u64, labels: u64) -> Arm {
        let mut arm = Arm::default();
        for i in 0..requests {
            arm.prediction(Some(0.5), 1.0);
            if i < labels {
                arm.loss(if i < errors { 1.0 } else { 0.0 });
            }
        }
        arm
    }

    fn settings() -> CanarySettings {
        CanarySettings {
            min_requests: 100,
            min_labels: 50,
            min_seconds: 10,
            ..CanarySettings::default()
        }
    }

    #[test]
    fn the_normal_tail_matches_known_values() {
        // scipy.stats.norm.sf(1.6448536269514722) = 0.05, norm.sf(0) = 0.5, norm.sf(-1.96) = 0.9750021048517795
        assert!((normal_sf(1.644_853_626_951_472_2) - 0.05).abs() < 1e-9);
        assert!((normal_sf(0.0) - 0.5).abs() < 1e-12);
        assert!((normal_sf(-1.96) - 0.975_002_104_851_779_5).abs() < 1e-9);
    }

    #[test]
    fn a_worse_canary_is_rolled_back_as_soon_as_its_labels_say_so() {
        // 30% errors against production's 5%, before the bake time is over.
        let verdict = judge(
            &settings(),
            &arm(100, 30, 100),
            Some(&arm(900, 45, 900)),
            10.0,
            1_000,
        )
        .expect("a verdict");
        assert_eq!(verdict.decision, CanaryVerdict::Rollback, "{verdict:?}");
        assert!(verdict.evidence["loss_p_value"] < 1e-3, "{verdict:?}");
        assert!(verdict.reason.contains("Welch"), "{}", verdict.reason);
    }

    #[test]
    fn an_equal_canary_waits_for_the_bake_then_is_promoted_or_widened() {
        let canary = arm(120, 6, 60);
        let production = arm(1_000, 50, 500);
        assert_eq!(
            judge(&settings(), &canary, Some(&production), 10.0, 5_000),
            None,
            "the bake time is not over"
        );
        assert_eq!(
            judge(
                &settings(),
                &arm(120, 0, 20),
                Some(&production),
                10.0,
                60_000
            ),
            None,
            "too few labels"
        );
        let verdict = judge(&settings(), &canary, Some(&production), 10.0, 10_000).unwrap();
        assert_eq!(verdict.decision, CanaryVerdict::Promote, "{verdict:?}");
        let widening = CanarySettings {
            widen_steps: vec![50.0, 100.0],
            ..settings()
        };
        let verdict = judge(&widening, &canary, Some(&production), 10.0, 10_000).unwrap();
        assert_eq!(
            (verdict.decision, verdict.new_percent),
            (CanaryVerdict::Widen, Some(50.0))
        );
        let verdict = judge(&widening, &canary, Some(&production), 100.0, 10_000).unwrap();
        assert_eq!(verdict.decision, CanaryVerdict::Promote);
    }

    /// A canary of 10% traffic looked at after every label, from `min_labels` on, as the
    /// monitor's clock does: whether the always-valid and the fixed-sample p-value ever
    /// fall below 0.05 when canary and production err at `canary_rate` and `production_rate`.
    fn ever_below_alpha(seed: u64, canary_rate: f64, production_rate: f64) -> (bool, bool) {
        let mut state = seed;
        let mut draw = move || {
            // splitmix64: a fixed sequence per seed, so the test always sees the same data.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as f64 / u64::MAX as f64
        };
        let (mut canary, mut production) = (Arm::default(), Arm::default());
        let (mut sequential, mut fixed) = (false, false);
        while canary.labels < 200 {
            canary.loss(f64::from(u8::from(draw() < canary_rate)));
            for _ in 0..9 {
                production.loss(f64::from(u8::from(draw() < production_rate)));
            }
            if canary.labels >= 30 {
                let (z, p) = loss_test(&canary, &production, 0.3);
                sequential |= p < 0.05;
                fixed |= normal_sf(z) < 0.05;
            }
        }
        (sequential, fixed)
    }

    #[test]
    fn looked_at_on_every_label_an_equal_canary_is_rarely_rolled_back() {
        let runs = 500;
        let (mut sequential, mut fixed) = (0, 0);
        for seed in 0..runs {
            let (s, f) = ever_below_alpha(seed, 0.1, 0.1);
            sequential += usize::from(s);
            fixed += usize::from(f);
        }
        // At most 5% of equal canaries in expectation (25 of 500; 35 allows for chance).
        // The fixed-sample test, looked at as often, crosses 0.05 in more than that (54
        // of these 500 runs: 11%, twice the rate it promises).
        assert!(sequential <= 35, "{sequential} of {runs} rolled back");
        assert!(
            fixed > 35 && fixed > 3 * sequential,
            "fixed-sample: {fixed} of {runs}, sequential {sequential}"
        );
    }

    #[test]
    fn looked_at_on_every_label_a_worse_canary_is_still_rolled_back() {
        // 30% errors against production's 10%: found within the first 200 labels nearly
        // always.
        let found = (0..200)
            .filter(|seed| ever_below_alpha(10_000 + seed, 0.3, 0.1).0)
            .count();
        assert!(found >= 190, "{found} of 200");
    }

    #[test]
    fn a_slightly_worse_canary_within_noise_is_not_rolled_back() {
        // 6% vs 5% errors on 60 labels is well within chance.
        let verdict = judge(
            &settings(),
            &arm(120, 4, 60),
            Some(&arm(1_000, 25, 500)),
            10.0,
            10_000,
        )
        .unwrap();
        assert_eq!(verdict.decision, CanaryVerdict::Promote, "{verdict:?}");
        assert!(verdict.evidence["loss_p_value"] > 0.05);
    }

    #[test]
    fn a_canary_that_fails_requests_is_rolled_back_and_a_rare_failure_is_not() {
        let with_failures = |failed: u64| {
            let mut canary = Arm::default();
            for i in 0..200 {
                canary.prediction((i >= failed).then_some(0.5), 1.0);
            }
            canary
        };
        // 10 of 200 failed (one as a NaN answer would count the same) against none of 2,000.
        let verdict = judge(
            &settings(),
            &with_failures(10),
            Some(&arm(2_000, 0, 0)),
            10.0,
            1_000,
        )
        .unwrap();
        assert_eq!(verdict.decision, CanaryVerdict::Rollback, "{verdict:?}");
        assert!(verdict.reason.contains("failed 5.0%"), "{}", verdict.reason);
        assert!(verdict.evidence["error_p_value"] < 0.05);
        // 1 of 200 against production's 10 of 2,000: the same rate, nothing to decide.
        let mut production = arm(2_000, 0, 0);
        production.errors = 10;
        assert!(
            judge(
                &settings(),
                &with_failures(1),
                Some(&production),
                10.0,
                1_000
            )
            .is_none()
        );
    }

    #[test]
    fn a_few_slow_requests_of_a_young_canary_do_not_decide() {
        // 55 requests, three of them met a busy core: their p99 is 13 ms against
        // production's 3.8 ms, but the quantile compared has ten requests above it.
        let mut canary = Arm::default();
        let mut production = Arm::default();
        for i in 0..55 {
            canary.prediction(Some(0.5), if i % 20 == 7 { 13.0 } else { 3.0 });
        }
        for i in 0..500 {
            production.prediction(Some(0.5), if i % 100 == 3 { 3.8 } else { 3.0 });
        }
        let settings = CanarySettings {
            min_requests: 50,
            ..settings()
        };
        assert_eq!(canary.p99_latency(), 13.0);
        assert!((latency_quantile(55) - 0.818).abs() < 1e-3);
        let verdict = judge(&settings, &canary, Some(&production), 10.0, 1_000);
        assert!(
            verdict
                .as_ref()
                .is_none_or(|v| v.decision != CanaryVerdict::Rollback),
            "{verdict:?}"
        );
        // Ten slow ones are a tail, not an accident: rolled back.
        for _ in 0..10 {
            canary.prediction(Some(0.5), 13.0);
        }
        let verdict = judge(&settings, &canary, Some(&production), 10.0, 1_000).unwrap();
        assert_eq!(verdict.decision, CanaryVerdict::Rollback, "{verdict:?}");
        assert!(
            verdict.reason.contains("latency at quantile"),
            "{}",
            verdict.reason
        );
        // With a thousand requests and more it is the p99.
        assert_eq!(latency_quantile(1_000), 0.99);
        assert_eq!(latency_quantile(100_000), 0.99);
    }

    #[test]
    fn a_slow_canary_is_rolled_back() {
        let mut canary = Arm::default();
        for _ in 0..100 {
            canary.prediction(Some(0.5), 40.0);
        }
        let verdict = judge(&settings(), &canary, Some(&arm(500, 0, 0)), 10.0, 1_000).unwrap();
        assert_eq!(verdict.decision, CanaryVerdict::Rollback);
        assert!(verdict.reason.contains("latency"), "{}", verdict.reason);
    }
}
