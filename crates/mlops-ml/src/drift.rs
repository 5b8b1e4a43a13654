//! The statistics drift is measured with, shared by the monitor and its tests: live values
//! binned on a reference's edges with **open outer bins** (a value below the reference's
//! minimum counts in the first bin, one above its maximum in the last, so a shift out of
//! the reference's range is counted, not lost), the population stability index over those
//! bins, and the two-sample Kolmogorov–Smirnov statistic with its asymptotic p-value.

/// The bin of `value` among `edges` (bin i holds (edge[i], edge[i+1]], the first bin its
/// lower edge too): open at both ends, so every value has a bin.
pub fn bin_of(edges: &[f64], value: f64) -> usize {
    if edges.len() < 3 {
        return 0;
    }
    // The number of inner edges below the value is its bin: past the last inner edge it is
    // the last bin, before the first the first.
    edges[1..edges.len() - 1].partition_point(|edge| *edge < value)
}

/// Counts of `values` in the bins of `edges` (open outer bins; NaN is skipped).
pub fn histogram(edges: &[f64], values: impl IntoIterator<Item = f64>) -> Vec<u64> {
    let mut counts = vec![0u64; edges.len().saturating_sub(1).max(1)];
    for value in values.into_iter().filter(|v| !v.is_nan()) {
        counts[bin_of(edges, value)] += 1;
    }
    counts
}

/// Smallest share a bin is given in the PSI, so that an empty bin on one side gives a large
/// but finite term (the usual convention; the result is stated with it).
pub const PSI_FLOOR: f64 = 1e-4;

/// Population stability index of `actual` against `expected` (bin counts over the same
/// bins): Σ (aᵢ − eᵢ) · ln(aᵢ / eᵢ) over the bins' shares, each floored at [`PSI_FLOOR`].
/// Common reading: < 0.1 stable, 0.1–0.2 moderate, > 0.2 significant shift.
pub fn psi(expected: &[u64], actual: &[u64]) -> f64 {
    let total = |c: &[u64]| c.iter().sum::<u64>().max(1) as f64;
    let (te, ta) = (total(expected), total(actual));
    expected
        .iter()
        .zip(actual)
        .map(|(&e, &a)| {
            let e = (e as f64 / te).max(PSI_FLOOR);
            let a = (a as f64 / ta).max(PSI_FLOOR);
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// Two-sample Kolmogorov–Smirnov: the largest distance between the samples' empirical
/// distribution functions, and its p-value from the asymptotic Kolmogorov distribution at
/// √(n·m/(n+m))·D (scipy's `kstwobign.sf`). Sorts both samples.
pub fn ks_two_sample(a: &mut [f64], b: &mut [f64]) -> (f64, f64) {
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (n, m) = (a.len(), b.len());
    if n == 0 || m == 0 {
        return (0.0, 1.0);
    }
    let (mut i, mut j, mut d) = (0, 0, 0.0f64);
    while i < n && j < m {
        let x = a[i].min(b[j]);
        while i < n && a[i] <= x {
            i += 1;
        }
        while j < m && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n as f64 - j as f64 / m as f64).abs());
    }
    let en = (n * m) as f64 / (n + m) as f64;
    (d, kolmogorov_sf(en.sqrt() * d))
}

/// Kolmogorov–Smirnov of live `values` against a reference known by its quantile sketch
/// (see `ReferenceStatistics::Numeric::sketch`) and its true row count: D from the sketch's
/// distribution function (exact to 1/sketch size), the p-value with the true sizes.
pub fn ks_against_reference(
    sketch: &[f64],
    reference_count: usize,
    values: &mut [f64],
) -> (f64, f64) {
    let mut reference = sketch.to_vec();
    let (d, _) = ks_two_sample(&mut reference, values);
    let (n, m) = (reference_count.max(1) as f64, values.len().max(1) as f64);
    (d, kolmogorov_sf((n * m / (n + m)).sqrt() * d))
}

/// Survival function of the Kolmogorov distribution: P(K > x) = 2 Σₖ (−1)^(k−1) e^(−2k²x²).
pub fn kolmogorov_sf(x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    if x < 0.2 {
        // The series converges slowly here; the complementary (theta) form is exact enough:
        // P(K ≤ x) = √(2π)/x Σₖ e^(−(2k−1)²π²/(8x²)), which is ~0 below 0.2.
        let cdf: f64 = (1..=5)
            .map(|k| {
                let odd = (2 * k - 1) as f64;
                (-(odd * odd) * std::f64::consts::PI.powi(2) / (8.0 * x * x)).exp()
            })
            .sum::<f64>()
            * (2.0 * std::f64::consts::PI).sqrt()
            / x;
        return (1.0 - cdf).clamp(0.0, 1.0);
    }
    let mut sum = 0.0;
    for k in 1..=100 {
        let term = (-2.0 * (k * k) as f64 * x * x).exp();
        sum += if k % 2 == 1 { term } else { -term };
        if term < 1e-16 {
            break;
        }
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_beyond_the_reference_fall_in_the_outer_bins() {
        let edges = [0.0, 10.0, 20.0, 30.0];
        assert_eq!(bin_of(&edges, -1e9), 0, "below the minimum");
        assert_eq!(bin_of(&edges, 0.0), 0);
        assert_eq!(bin_of(&edges, 10.0), 0, "(0, 10] with its lower edge");
        assert_eq!(bin_of(&edges, 10.5), 1);
        assert_eq!(bin_of(&edges, 30.0), 2);
        assert_eq!(bin_of(&edges, 1e9), 2, "above the maximum");
        assert_eq!(
            histogram(&edges, [-5.0, 5.0, 15.0, 25.0, 99.0, f64::NAN]),
            [2, 1, 2]
        );
        // A constant reference has one bin, which holds everything.
        assert_eq!(histogram(&[4.0], [1.0, 4.0, 9.0]), [3]);
    }

    #[test]
    fn psi_by_hand() {
        // Shares 0.5/0.5 against 0.25/0.75:
        // (0.25 − 0.5)·ln(0.25/0.5) + (0.75 − 0.5)·ln(0.75/0.5) = 0.25·ln 2 + 0.25·ln 1.5.
        let expected = 0.25 * 2f64.ln() + 0.25 * 1.5f64.ln();
        assert!((psi(&[50, 50], &[25, 75]) - expected).abs() < 1e-12);
        assert_eq!(psi(&[10, 20, 30], &[20, 40, 60]), 0.0, "same shares");
        // An empty bin is floored, not infinite: a shift entirely out of range still counts.
        let shifted = psi(&[100, 0], &[0, 100]);
        assert!(shifted.is_finite() && shifted > 10.0, "{shifted}");
    }

    #[test]
    fn ks_matches_scipy() {
        // scipy 1.17.1: ks_2samp(a, b).statistic = 0.26 and
        // kstwobign.sf(sqrt(n·m/(n+m)) · 0.26) = 0.09912049511919403 for these samples.
        let mut a: Vec<f64> = (0..50).map(|i| 0.1 * i as f64).collect();
        let mut b: Vec<f64> = (0..40).map(|i| 0.1 * i as f64 + 1.3).collect();
        let (d, p) = ks_two_sample(&mut a, &mut b);
        assert!((d - 0.26).abs() < 1e-12, "{d}");
        assert!((p - 0.099_120_495_119_194_03).abs() < 1e-9, "{p}");
        // kstwobign.sf at 0.5, 1.0 and 1.36 (scipy 1.17.1).
        for (x, expected) in [
            (0.5, 0.963_945_243_664_875_1),
            (1.0, 0.269_999_671_677_354_56),
            (1.36, 0.049_485_876_755_377_876),
        ] {
            let p = kolmogorov_sf(x);
            assert!((p - expected).abs() < 1e-9, "{x}: {p} vs {expected}");
        }
        let (same, p) = ks_two_sample(&mut a.clone(), &mut a.clone());
        assert_eq!((same, p), (0.0, 1.0));
    }

    #[test]
    fn a_sketched_reference_gives_the_full_samples_statistic() {
        use polars::prelude::*;
        let reference: Vec<f64> = (0..20_000)
            .map(|i| ((i * 7919) % 20_000) as f64 / 100.0)
            .collect();
        let column = Column::new("x".into(), reference.clone());
        let crate::ReferenceStatistics::Numeric { sketch, count, .. } =
            crate::reference_statistics(&column).unwrap()
        else {
            panic!("numeric");
        };
        assert_eq!((sketch.len(), count), (crate::statistics::SKETCH, 20_000));
        let live: Vec<f64> = (0..5_000).map(|i| 30.0 + i as f64 / 40.0).collect();
        let (full, p_full) = ks_two_sample(&mut reference.clone(), &mut live.clone());
        let (sketched, p_sketched) = ks_against_reference(&sketch, count, &mut live.clone());
        assert!(
            (full - sketched).abs() <= 1.0 / 1000.0 + 1e-12,
            "{full} vs {sketched}"
        );
        assert!(p_full < 1e-6 && p_sketched < 1e-6);
    }
}
