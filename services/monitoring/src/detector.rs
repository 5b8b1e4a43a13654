//! Drift of one model version's inputs against its training snapshot's reference, window
//! by window (by count), with hysteresis: an incident opens when a window drifts and is
//! reported once; it closes after `clear_after` clean windows in a row, and a new one may
//! open only `cooldown` windows after that. Pure: the service feeds it prediction logs and
//! publishes what it reports.
//!
//! Per numeric feature: PSI on the reference's decile bins (open outer bins) and
//! Kolmogorov–Smirnov against the reference's quantile sketch. Each alarms only with both
//! a minimum effect size, so a large window does not alarm on a negligible shift, and a
//! small p-value, so a small window does not alarm on noise.
//! Per categorical feature (logged as its one-hot inputs `feature__category`): chi-square
//! of homogeneity and the Jensen–Shannon distance against the reference's frequencies.

use std::collections::{BTreeMap, HashMap};

use mlops_events::{DriftSeverity, DriftStatistic, DriftedFeature};
use mlops_ml::{ReferenceStatistics, drift};

/// When a statistic says "drifted".
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// PSI above this (0.2: the usual "significant shift")...
    pub psi: f64,
    /// ...and its p-value (the chance of so large a PSI between two samples of one
    /// distribution at the window's size) below this.
    pub psi_p: f64,
    /// KS p-value below this...
    pub ks_p: f64,
    /// ...and KS distance at least this.
    pub ks_effect: f64,
    /// Chi-square p-value below this...
    pub chi_square_p: f64,
    /// ...and Jensen–Shannon distance at least this.
    pub js: f64,
    /// A statistic this many times past its threshold makes the incident critical.
    pub critical_factor: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            psi: 0.2,
            // Every window is a test per statistic: at 0.01 a stationary stream alarms
            // about once in a hundred windows for each; at 0.001 once in a thousand, while
            // the shifts worth retraining for give p-values far below either.
            psi_p: 0.001,
            ks_p: 0.001,
            ks_effect: 0.1,
            chi_square_p: 0.001,
            js: 0.1,
            critical_factor: 2.0,
        }
    }
}

/// Data quality of one feature over a window.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Quality {
    /// Share of the window's predictions without a value for the feature.
    pub null_rate: f64,
    /// Share of the values outside the reference's [min, max] (numeric features).
    pub out_of_range_rate: f64,
}

/// What a closed window showed.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowReport {
    /// Times (epoch ms) of the window's first and last prediction, and its size.
    pub start: i64,
    pub end: i64,
    pub size: usize,
    /// Per feature.
    pub quality: BTreeMap<String, Quality>,
    /// Every feature's statistics, drifted or not.
    pub statistics: Vec<(DriftedFeature, bool)>,
    /// Set when this window opened an incident: the drifted features and the severity.
    pub opened: Option<(Vec<DriftedFeature>, DriftSeverity)>,
    /// Set when this window closed the open incident.
    pub closed: bool,
}

enum Current {
    Numeric(Vec<f64>),
    Categorical(BTreeMap<String, u64>),
}

pub struct Detector {
    reference: BTreeMap<String, ReferenceStatistics>,
    thresholds: Thresholds,
    per_feature: BTreeMap<String, Thresholds>,
    window: usize,
    seen: usize,
    first_at: i64,
    last_at: i64,
    missing: BTreeMap<String, usize>,
    current: BTreeMap<String, Current>,
    open: bool,
    clean_windows: usize,
    windows_since_close: usize,
    clear_after: usize,
    cooldown: usize,
}

impl Detector {
    /// Over `reference` (the snapshot's statistics by raw feature), windows of `window`
    /// predictions.
    pub fn new(
        reference: BTreeMap<String, ReferenceStatistics>,
        thresholds: Thresholds,
        window: usize,
    ) -> Self {
        let current = reference
            .iter()
            .map(|(name, stats)| {
                let empty = match stats {
                    ReferenceStatistics::Numeric { .. } => Current::Numeric(Vec::new()),
                    ReferenceStatistics::Categorical { .. } => {
                        Current::Categorical(BTreeMap::new())
                    }
                };
                (name.clone(), empty)
            })
            .collect();
        Self {
            reference,
            thresholds,
            per_feature: BTreeMap::new(),
            window: window.max(1),
            seen: 0,
            first_at: 0,
            last_at: 0,
            missing: BTreeMap::new(),
            current,
            open: false,
            clean_windows: 0,
            windows_since_close: usize::MAX,
            clear_after: 2,
            cooldown: 1,
        }
    }

    /// Thresholds of their own for some features.
    pub fn with_feature_thresholds(mut self, per_feature: BTreeMap<String, Thresholds>) -> Self {
        self.per_feature = per_feature;
        self
    }

    /// Clean windows that close an incident, and windows after that before a new one.
    pub fn with_hysteresis(mut self, clear_after: usize, cooldown: usize) -> Self {
        self.clear_after = clear_after.max(1);
        self.cooldown = cooldown;
        self
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// How many predictions the open window holds, and when its first came (epoch ms).
    pub fn pending(&self) -> (usize, i64) {
        (self.seen, self.first_at)
    }

    /// One prediction's logged features, made at `at` (epoch ms); a report when it closed
    /// a window.
    pub fn observe(&mut self, features: &HashMap<String, f64>, at: i64) -> Option<WindowReport> {
        for (name, current) in &mut self.current {
            let present = match current {
                Current::Numeric(values) => features
                    .get(name)
                    .filter(|v| v.is_finite())
                    .map(|v| values.push(*v))
                    .is_some(),
                Current::Categorical(counts) => {
                    let prefix = format!("{name}__");
                    features
                        .iter()
                        .find(|(k, v)| k.starts_with(&prefix) && **v >= 0.5)
                        .map(|(key, _)| {
                            *counts.entry(key[prefix.len()..].to_owned()).or_default() += 1;
                        })
                        .is_some()
                }
            };
            if !present {
                *self.missing.entry(name.clone()).or_default() += 1;
            }
        }
        if self.seen == 0 {
            self.first_at = at;
        }
        self.last_at = self.last_at.max(at);
        self.seen += 1;
        if self.seen < self.window {
            return None;
        }
        Some(self.close_window())
    }

    /// Closes the open window early (a time window that is due), if it holds at least
    /// `min_size` predictions.
    pub fn close(&mut self, min_size: usize) -> Option<WindowReport> {
        (self.seen > 0 && self.seen >= min_size).then(|| self.close_window())
    }

    fn close_window(&mut self) -> WindowReport {
        let t = self.thresholds;
        let size = std::mem::take(&mut self.seen);
        let mut missing = std::mem::take(&mut self.missing);
        let mut statistics = Vec::new();
        let mut quality = BTreeMap::new();
        for (name, current) in &mut self.current {
            let Some(reference) = self.reference.get(name) else {
                continue;
            };
            let t = self.per_feature.get(name).copied().unwrap_or(t);
            let mut q = Quality {
                null_rate: missing.remove(name).unwrap_or(0) as f64 / size as f64,
                out_of_range_rate: 0.0,
            };
            if let (ReferenceStatistics::Numeric { min, max, .. }, Current::Numeric(values)) =
                (reference, &*current)
                && let (Some(min), Some(max)) = (min, max)
                && !values.is_empty()
            {
                let outside = values.iter().filter(|v| *v < min || *v > max).count();
                q.out_of_range_rate = outside as f64 / values.len() as f64;
            }
            quality.insert(name.clone(), q);
            match (reference, current) {
                (
                    ReferenceStatistics::Numeric {
                        bin_edges,
                        bin_counts,
                        sketch,
                        count,
                        ..
                    },
                    Current::Numeric(values),
                ) => {
                    if values.is_empty() {
                        continue;
                    }
                    let live = drift::histogram(bin_edges, values.iter().copied());
                    let (psi, p) = drift::psi_test(bin_counts, &live);
                    statistics.push((
                        feature(name, DriftStatistic::Psi, psi, t.psi, Some(p)),
                        psi > t.psi && p < t.psi_p,
                    ));
                    if !sketch.is_empty() {
                        let (d, p) = drift::ks_against_reference(sketch, *count, values);
                        statistics.push((
                            feature(name, DriftStatistic::Ks, d, t.ks_effect, Some(p)),
                            p < t.ks_p && d >= t.ks_effect,
                        ));
                    }
                    values.clear();
                }
                (
                    ReferenceStatistics::Categorical { frequencies, .. },
                    Current::Categorical(counts),
                ) => {
                    if counts.is_empty() {
                        continue;
                    }
                    let mut categories: Vec<&String> =
                        frequencies.keys().chain(counts.keys()).collect();
                    categories.sort();
                    categories.dedup();
                    let expected: Vec<u64> = categories
                        .iter()
                        .map(|c| frequencies.get(*c).copied().unwrap_or(0))
                        .collect();
                    let actual: Vec<u64> = categories
                        .iter()
                        .map(|c| counts.get(*c).copied().unwrap_or(0))
                        .collect();
                    let (chi, p) = drift::chi_square(&expected, &actual);
                    let js = drift::jensen_shannon(&expected, &actual);
                    let drifted = p < t.chi_square_p && js >= t.js;
                    statistics.push((
                        feature(name, DriftStatistic::ChiSquare, chi, 0.0, Some(p)),
                        drifted,
                    ));
                    statistics.push((
                        feature(name, DriftStatistic::JensenShannon, js, t.js, None),
                        drifted,
                    ));
                    counts.clear();
                }
                _ => {}
            }
        }
        let drifted: Vec<DriftedFeature> = statistics
            .iter()
            .filter(|(_, d)| *d)
            .map(|(f, _)| f.clone())
            .collect();
        let mut report = WindowReport {
            start: self.first_at,
            end: self.last_at,
            size,
            quality,
            statistics,
            opened: None,
            closed: false,
        };
        if drifted.is_empty() {
            self.clean_windows += 1;
            if self.open && self.clean_windows >= self.clear_after {
                self.open = false;
                self.windows_since_close = 0;
                report.closed = true;
            } else if !self.open {
                self.windows_since_close = self.windows_since_close.saturating_add(1);
            }
            return report;
        }
        self.clean_windows = 0;
        if !self.open && self.windows_since_close >= self.cooldown {
            self.open = true;
            let critical = drifted
                .iter()
                .any(|f| f.threshold > 0.0 && f.value >= f.threshold * t.critical_factor);
            let severity = if critical {
                DriftSeverity::Critical
            } else {
                DriftSeverity::Warning
            };
            report.opened = Some((drifted, severity));
        }
        report
    }
}

fn feature(
    name: &str,
    statistic: DriftStatistic,
    value: f64,
    threshold: f64,
    p_value: Option<f64>,
) -> DriftedFeature {
    DriftedFeature {
        feature: name.to_owned(),
        statistic,
        value,
        threshold,
        p_value,
    }
}

#[cfg(test)]
mod tests {
    use polars::prelude::*;

    use super::*;

    /// A deterministic, well-spread stream: x_i = frac(i · φ) scaled to [0, 100).
    fn stream(start: usize, n: usize, shift: f64) -> impl Iterator<Item = f64> {
        (start..start + n).map(move |i| (i as f64 * 0.618_033_988_749_895).fract() * 100.0 + shift)
    }

    fn reference() -> BTreeMap<String, ReferenceStatistics> {
        let amount: Vec<f64> = stream(0, 20_000, 0.0).collect();
        let currency: Vec<&str> = (0..20_000)
            .map(|i| if i % 4 == 0 { "USD" } else { "EUR" })
            .collect();
        BTreeMap::from([
            (
                "amount".to_owned(),
                mlops_ml::reference_statistics(&Column::new("amount".into(), amount)).unwrap(),
            ),
            (
                "currency".to_owned(),
                mlops_ml::reference_statistics(&Column::new("currency".into(), currency)).unwrap(),
            ),
        ])
    }

    fn row(amount: f64, usd: bool) -> HashMap<String, f64> {
        HashMap::from([
            ("amount".to_owned(), amount),
            ("currency__USD".to_owned(), f64::from(u8::from(usd))),
            ("currency__EUR".to_owned(), f64::from(u8::from(!usd))),
        ])
    }

    #[test]
    fn a_stationary_stream_raises_no_alarm() {
        let mut detector = Detector::new(reference(), Thresholds::default(), 1_000);
        let mut windows = 0;
        for (i, amount) in stream(50_000, 20_000, 0.0).enumerate() {
            if let Some(report) = detector.observe(&row(amount, i % 4 == 0), 0) {
                windows += 1;
                assert!(report.opened.is_none(), "window {windows}: {report:?}");
            }
        }
        assert_eq!(windows, 20);
    }

    #[test]
    fn a_shift_opens_one_incident_within_a_window_and_it_closes_when_drift_ends() {
        let mut detector = Detector::new(reference(), Thresholds::default(), 500);
        let mut opened = Vec::new();
        let mut closed = Vec::new();
        // 5 windows as trained, 6 windows shifted by +30 (partly out of range), 5 as trained.
        let phases = [(0.0, 2_500), (30.0, 3_000), (0.0, 2_500)];
        let mut window = 0;
        let mut offset = 100_000;
        for (shift, n) in phases {
            for (i, amount) in stream(offset, n, shift).enumerate() {
                if let Some(report) = detector.observe(&row(amount, i % 4 == 0), 0) {
                    window += 1;
                    if let Some((features, _)) = report.opened {
                        opened.push((window, features));
                    }
                    if report.closed {
                        closed.push(window);
                    }
                }
            }
            offset += n;
        }
        assert_eq!(opened.len(), 1, "one incident: {opened:?}");
        assert_eq!(opened[0].0, 6, "the first shifted window");
        assert!(
            opened[0].1.iter().any(|f| f.feature == "amount"
                && f.statistic == DriftStatistic::Psi
                && f.value > 0.2)
        );
        assert!(
            opened[0].1.iter().all(|f| f.feature == "amount"),
            "currency did not move"
        );
        assert_eq!(closed, [13], "closed after two clean windows");
    }

    #[test]
    fn values_out_of_the_references_range_and_a_category_shift_are_both_caught() {
        let mut detector = Detector::new(reference(), Thresholds::default(), 1_000);
        let report = (0..1_000)
            .find_map(|i| detector.observe(&row(500.0 + i as f64, true), i))
            .unwrap();
        let (features, severity) = report.opened.expect("an incident");
        let psi = features
            .iter()
            .find(|f| f.statistic == DriftStatistic::Psi)
            .unwrap();
        assert!(psi.value > 5.0, "all in the outer bin: {psi:?}");
        assert_eq!(severity, DriftSeverity::Critical);
        assert!(
            features
                .iter()
                .any(|f| f.feature == "currency" && f.statistic == DriftStatistic::JensenShannon)
        );
    }
}
