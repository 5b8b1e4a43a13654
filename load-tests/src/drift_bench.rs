//! `drift-bench`: the monitor's drift statistics over a wide table, timed in this process,
//! for the side-by-side comparison in `drift.sh`: per numeric feature, the reference's
//! decile bins (as a snapshot records them: `mlops_ml::reference_statistics`), the current
//! window's counts in those bins (open outer bins), PSI, and the exact two-sample
//! Kolmogorov–Smirnov statistic with scipy's p-value — features spread over the
//! cores. Writes the two tables as Parquet for the peers and one JSON line with the timings
//! and every feature's statistics.

use std::{path::PathBuf, time::Instant};

use anyhow::Context;
use clap::Parser;
use mlops_ml::{ReferenceStatistics, drift, reference_statistics};
use polars::prelude::*;
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 100)]
    features: usize,
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Where the reference and current tables go (`reference.parquet`, `current.parquet`).
    #[arg(long)]
    write_dir: Option<PathBuf>,
    /// Threads the features are spread over.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// A fixed, well-spread stream of uniforms (splitmix64).
struct Uniforms(u64);

impl Uniforms {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u = self.next().max(f64::MIN_POSITIVE);
        let v = self.next();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// Feature f of the current table is shifted by 0.02 · (f mod 10) standard deviations:
/// a tenth of the features do not move, the others from barely to clearly.
fn table(features: usize, rows: usize, seed: u64, shifted: bool) -> PolarsResult<DataFrame> {
    let columns: Vec<Column> = (0..features)
        .map(|f| {
            let mut u = Uniforms(seed ^ (f as u64) << 20);
            let shift = if shifted { 0.02 * (f % 10) as f64 } else { 0.0 };
            let values: Vec<f64> = (0..rows).map(|_| u.normal() + shift).collect();
            Column::new(format!("f{f}").into(), values)
        })
        .collect();
    DataFrame::new_infer_height(columns)
}

/// Process CPU seconds (user + system) so far, from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name: state is field 0, utime 11, stime 12; 100 ticks a second.
    (ticks(11) + ticks(12)) / 100.0
}

/// One feature's statistics: (feature, PSI, KS D, KS p, PSI p).
type Statistics = (String, f64, f64, f64, f64);

/// The statistics of one feature.
fn statistics(name: &str, reference: &Column, current: &Column) -> anyhow::Result<Statistics> {
    let ReferenceStatistics::Numeric {
        bin_edges,
        bin_counts,
        ..
    } = reference_statistics(reference)?
    else {
        anyhow::bail!("{name} is not numeric");
    };
    let mut live: Vec<f64> = current.f64()?.into_no_null_iter().collect();
    let counts = drift::histogram(&bin_edges, live.iter().copied());
    let (psi, psi_p) = drift::psi_test(&bin_counts, &counts);
    let mut reference: Vec<f64> = reference.f64()?.into_no_null_iter().collect();
    let (d, p) = drift::ks_two_sample(&mut reference, &mut live);
    Ok((name.to_owned(), psi, d, p, psi_p))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut reference = table(args.features, args.rows, 1, false)?;
    let mut current = table(args.features, args.rows, 2, true)?;
    if let Some(dir) = &args.write_dir {
        for (name, frame) in [("reference", &mut reference), ("current", &mut current)] {
            let path = dir.join(format!("{name}.parquet"));
            let file =
                std::fs::File::create(&path).with_context(|| format!("{}", path.display()))?;
            ParquetWriter::new(file).finish(frame)?;
        }
    }
    let names: Vec<String> = (0..args.features).map(|f| format!("f{f}")).collect();

    let (cpu, wall) = (cpu_seconds(), Instant::now());
    let threads = args.threads.max(1);
    let mut results = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (names, reference, current) = (&names, &reference, &current);
                scope.spawn(move || {
                    names
                        .iter()
                        .skip(t)
                        .step_by(threads)
                        .map(|name| {
                            statistics(name, reference.column(name)?, current.column(name)?)
                        })
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a statistics thread panicked"))
            .collect::<anyhow::Result<Vec<Vec<_>>>>()
    })?
    .into_iter()
    .flatten()
    .collect::<Vec<_>>();
    let seconds = wall.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    results.sort_by_key(|(name, ..)| name[1..].parse::<usize>().unwrap_or(0));
    let drifted = results
        .iter()
        // The monitor's default rule: PSI > 0.2 and significant, or KS significant with
        // D ≥ 0.1, each at p < 0.001.
        .filter(|r| (r.1 > 0.2 && r.4 < 0.001) || (r.3 < 0.001 && r.2 >= 0.1))
        .count();
    println!(
        "{}",
        json!({
            "part": "platform",
            "features": args.features,
            "rows": args.rows,
            "seconds": seconds,
            "cpu_seconds": cpu,
            "drifted": drifted,
            "statistics": results.iter().map(|(n, psi, d, p, psi_p)| json!({"feature": n, "psi": psi, "psi_p": psi_p, "ks": d, "ks_p": p})).collect::<Vec<_>>(),
        })
    );
    Ok(())
}
