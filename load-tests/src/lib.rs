//! What the load generators share: a tally of a timed run's requests, and the platform's
//! token their clients present.

use std::time::Instant;

/// `Authorization: Bearer $MLOPS_TOKEN` (the scripts read it from `mlops up`'s
/// `admin.token`), or nothing when it is unset.
pub fn auth_headers() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(token) = std::env::var("MLOPS_TOKEN")
        && let Ok(value) = format!("Bearer {}", token.trim()).parse()
    {
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    headers
}

use hdrhistogram::Histogram;

/// Latencies of the requests made after the warm-up, and how many units (events, requests)
/// succeeded or failed.
pub struct Tally {
    pub latencies_us: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
}

impl Tally {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latencies_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            ok: 0,
            errors: 0,
        })
    }

    /// One request that started at `started`: `Some(units)` it delivered, or `None` when it
    /// failed.
    pub fn record(&mut self, started: Instant, delivered: Option<u64>) -> anyhow::Result<()> {
        self.latencies_us
            .record(started.elapsed().as_micros().max(1) as u64)?;
        match delivered {
            Some(units) => self.ok += units,
            None => self.errors += 1,
        }
        Ok(())
    }

    /// The workers' tallies as one.
    pub fn merge(tallies: Vec<anyhow::Result<Tally>>) -> anyhow::Result<Self> {
        let mut all = Self::new()?;
        for tally in tallies {
            let tally = tally?;
            all.latencies_us.add(&tally.latencies_us)?;
            all.ok += tally.ok;
            all.errors += tally.errors;
        }
        Ok(all)
    }

    /// Requests timed.
    pub fn requests(&self) -> u64 {
        self.latencies_us.len()
    }

    /// The `q` latency quantile, in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.latencies_us.value_at_quantile(q) as f64 / 1000.0
    }
}
