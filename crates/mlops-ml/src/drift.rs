//! The statistics drift is measured with, shared by the monitor and its tests: live values
//! binned on a reference's edges with **open outer bins** (a value below the reference's
//! minimum counts in the first bin, one above its maximum in the last, so a shift out of
//! the reference's range is counted, not lost), the population stability index over those
//! bins, the two-sample Kolmogorov–Smirnov statistic with its p-value (the finite-n
//! distribution, `crate::kolmogorov`), and for categories the chi-square test of
//! homogeneity and the Jensen–Shannon distance.

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

/// How likely a PSI at least this large is between two samples of the same distribution,
/// of `expected_rows` and `actual_rows` rows over `bins` bins: without a shift, PSI ≈
/// (1/n + 1/m)·χ²(bins − 1) (PSI is the symmetrised chi-square divergence; Yurdakul, 2018,
/// "Statistical properties of population stability index"). A fixed PSI threshold means a
/// different thing at every window size — at 100 rows over deciles PSI passes 0.2 by chance
/// in about one window in fifteen — so the monitor asks for this p-value too.
pub fn psi_p_value(psi: f64, bins: usize, expected_rows: u64, actual_rows: u64) -> f64 {
    if bins < 2 || expected_rows == 0 || actual_rows == 0 {
        return 1.0;
    }
    let scale = 1.0 / expected_rows as f64 + 1.0 / actual_rows as f64;
    chi_square_sf(psi / scale, (bins - 1) as f64)
}

/// The PSI of `actual` against `expected` (see [`psi`]) and its p-value at the two
/// samples' sizes (see [`psi_p_value`]).
pub fn psi_test(expected: &[u64], actual: &[u64]) -> (f64, f64) {
    let value = psi(expected, actual);
    let rows = |counts: &[u64]| counts.iter().sum();
    let p = psi_p_value(value, expected.len(), rows(expected), rows(actual));
    (value, p)
}

/// Two-sample Kolmogorov–Smirnov: the largest distance between the samples' empirical
/// distribution functions, and its p-value from the finite-n Kolmogorov distribution at
/// n = round(n·m/(n+m)) — scipy's `ks_2samp(a, b, method="asymp")`, which is also its default
/// once either sample exceeds 10,000 rows. Sorts both samples.
pub fn ks_two_sample(a: &mut [f64], b: &mut [f64]) -> (f64, f64) {
    let d = ks_statistic(a, b);
    if a.is_empty() || b.is_empty() {
        return (d, 1.0);
    }
    (d, ks_p_value(a.len(), b.len(), d))
}

/// The two-sample KS statistic D alone (0 when a sample is empty). Sorts both samples.
fn ks_statistic(a: &mut [f64], b: &mut [f64]) -> f64 {
    a.sort_unstable_by(f64::total_cmp);
    b.sort_unstable_by(f64::total_cmp);
    let (n, m) = (a.len(), b.len());
    if n == 0 || m == 0 {
        return 0.0;
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
    d
}

/// The two-sample p-value of D for samples of n and m rows (see `ks_two_sample`).
pub fn ks_p_value(n: usize, m: usize, d: f64) -> f64 {
    let (n, m) = (n.max(1) as f64, m.max(1) as f64);
    let effective = (n * m / (n + m)).round().max(1.0) as u64;
    crate::kolmogorov::sf(effective, d)
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
    // The sketch's own p-value would be computed for nothing: the true sizes decide it.
    let d = ks_statistic(&mut reference, values);
    (d, ks_p_value(reference_count, values.len(), d))
}

/// Chi-square test of homogeneity of two count vectors over the same categories (no
/// continuity correction): the statistic and its p-value with (categories − 1) degrees of
/// freedom, categories empty on both sides left out (scipy's `chi2_contingency`).
pub fn chi_square(expected: &[u64], actual: &[u64]) -> (f64, f64) {
    let pairs: Vec<(f64, f64)> = expected
        .iter()
        .zip(actual)
        .filter(|(e, a)| **e + **a > 0)
        .map(|(e, a)| (*e as f64, *a as f64))
        .collect();
    let (te, ta) = pairs
        .iter()
        .fold((0.0, 0.0), |(x, y), (e, a)| (x + e, y + a));
    let total = te + ta;
    if pairs.len() < 2 || te == 0.0 || ta == 0.0 {
        return (0.0, 1.0);
    }
    let statistic: f64 = pairs
        .iter()
        .map(|(e, a)| {
            let column = e + a;
            let (ee, ea) = (te * column / total, ta * column / total);
            (e - ee).powi(2) / ee + (a - ea).powi(2) / ea
        })
        .sum();
    (
        statistic,
        chi_square_sf(statistic, (pairs.len() - 1) as f64),
    )
}

/// P(χ²ₖ > x): the regularised upper incomplete gamma Q(k/2, x/2).
pub fn chi_square_sf(x: f64, k: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    upper_gamma_regularised(k / 2.0, x / 2.0)
}

/// Q(a, x), by its series below a + 1 and its continued fraction above.
fn upper_gamma_regularised(a: f64, x: f64) -> f64 {
    let log_prefix = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        let (mut term, mut sum, mut n) = (1.0 / a, 1.0 / a, a);
        for _ in 0..500 {
            n += 1.0;
            term *= x / n;
            sum += term;
            if term.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        (1.0 - sum * log_prefix.exp()).clamp(0.0, 1.0)
    } else {
        // Lentz's method for the continued fraction of Γ(a, x).
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..500 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (log_prefix.exp() * h).clamp(0.0, 1.0)
    }
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms).
pub(crate) fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = G[0];
    for (i, g) in G.iter().enumerate().skip(1) {
        sum += g / (x + i as f64);
    }
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// Jensen–Shannon distance (natural logarithm; the square root of the divergence) between
/// two count vectors over the same categories, as scipy's `jensenshannon` computes it.
pub fn jensen_shannon(expected: &[u64], actual: &[u64]) -> f64 {
    let total = |c: &[u64]| c.iter().sum::<u64>().max(1) as f64;
    let (te, ta) = (total(expected), total(actual));
    let kl = |p: f64, m: f64| if p > 0.0 { p * (p / m).ln() } else { 0.0 };
    let divergence: f64 = expected
        .iter()
        .zip(actual)
        .map(|(&e, &a)| {
            let (p, q) = (e as f64 / te, a as f64 / ta);
            let m = (p + q) / 2.0;
            (kl(p, m) + kl(q, m)) / 2.0
        })
        .sum();
    divergence.max(0.0).sqrt()
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

    /// Seeded uniform draws in [0, 1) (splitmix64), for the tests' stationary samples.
    fn uniform(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as f64 / (u64::MAX as f64 + 1.0)
    }

    #[test]
    fn the_psi_p_value_holds_its_false_alarm_rate_on_small_windows() {
        // 4,000 windows of 100 rows against a 400-row reference, all from one distribution:
        // PSI alone passes 0.2 in several percent of them, while the p-value stays uniform
        // (about 5% below 0.05, about 1% below 0.01) and so controls the false alarms.
        // The bins are the reference's own deciles, as the monitor's are.
        let mut seed = 7;
        let reference: Vec<f64> = (0..400).map(|_| uniform(&mut seed)).collect();
        let column = polars::prelude::Column::new("x".into(), reference);
        let crate::ReferenceStatistics::Numeric {
            bin_edges: edges,
            bin_counts: expected,
            ..
        } = crate::reference_statistics(&column).unwrap()
        else {
            panic!("numeric");
        };
        assert_eq!(expected.len(), 10);
        let (mut above_threshold, mut below_5, mut below_1) = (0, 0, 0);
        let windows = 4_000;
        for _ in 0..windows {
            let live = histogram(&edges, (0..100).map(|_| uniform(&mut seed)));
            let (value, p) = psi_test(&expected, &live);
            above_threshold += usize::from(value > 0.2);
            below_5 += usize::from(p < 0.05);
            below_1 += usize::from(p < 0.01);
        }
        let rate = |count: usize| count as f64 / windows as f64;
        assert!(rate(above_threshold) > 0.03, "{}", rate(above_threshold));
        assert!((0.03..0.075).contains(&rate(below_5)), "{}", rate(below_5));
        assert!((0.003..0.02).contains(&rate(below_1)), "{}", rate(below_1));
        // A real shift (a quarter of the mass moved to the top decile) is past both the
        // threshold and the monitor's default significance (0.001).
        let shifted = histogram(
            &edges,
            (0..100).map(|i| if i < 25 { 0.95 } else { uniform(&mut seed) }),
        );
        let (value, p) = psi_test(&expected, &shifted);
        assert!(value > 0.2 && p < 1e-3, "{value} {p}");
    }

    #[test]
    fn ks_matches_scipy() {
        // scipy 1.17.1: ks_2samp(a, b, method="asymp") gives statistic 0.26 and
        // p-value 0.0843665889403119 for these samples (kstwo.sf(0.26, round(50·40/90))).
        let mut a: Vec<f64> = (0..50).map(|i| 0.1 * i as f64).collect();
        let mut b: Vec<f64> = (0..40).map(|i| 0.1 * i as f64 + 1.3).collect();
        let (d, p) = ks_two_sample(&mut a, &mut b);
        assert!((d - 0.26).abs() < 1e-12, "{d}");
        assert!((p - 0.084_366_588_940_311_9).abs() < 1e-12, "{p}");
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

    #[test]
    fn categorical_statistics_match_scipy() {
        // scipy 1.17.1: chi2_contingency([[50, 30, 20], [30, 30, 40]], correction=False)
        // = (11.666666666666668, p 0.0029282996948181853, dof 2); jensenshannon of the two
        // rows = 0.17211473103812178.
        let (statistic, p) = chi_square(&[50, 30, 20], &[30, 30, 40]);
        assert!(
            (statistic - 11.666_666_666_666_668).abs() < 1e-9,
            "{statistic}"
        );
        assert!((p - 0.002_928_299_694_818_185_3).abs() < 1e-12, "{p}");
        let js = jensen_shannon(&[50, 30, 20], &[30, 30, 40]);
        assert!((js - 0.172_114_731_038_121_78).abs() < 1e-12, "{js}");
        // chi2.sf at (3, 2), (10, 5), (0.5, 1) (scipy 1.17.1).
        for (x, k, expected) in [
            (3.0, 2.0, 0.223_130_160_148_429_82),
            (10.0, 5.0, 0.075_235_246_146_512_17),
            (0.5, 1.0, 0.479_500_122_186_953_37),
        ] {
            let p = chi_square_sf(x, k);
            assert!(
                (p - expected).abs() < 1e-10,
                "χ²({k}) at {x}: {p} vs {expected}"
            );
        }
        assert_eq!(chi_square(&[10, 20], &[10, 20]).0, 0.0);
        assert_eq!(jensen_shannon(&[10, 20], &[20, 40]), 0.0);
    }
}
