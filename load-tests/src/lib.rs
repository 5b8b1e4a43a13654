//! What the load generators share: a tally of a timed run's requests, the platform's
//! token their clients present, and the CPU time of the server under test.

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

/// User + system CPU seconds used so far by `pid` and all its live descendants (a
/// multi-worker peer's workers), from `/proc/<pid>/stat`. The fair measure when the broker,
/// the load generator and the servers share the machine's cores: what the server itself
/// spent. Processes that have exited are not counted (sample while they run).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stats: Vec<(u32, u32, u64)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let (ppid, ticks) = parent_and_ticks(&format!("/proc/{pid}/stat"))?;
            Some((pid, ppid, ticks))
        })
        .collect();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(stats.iter().filter(|s| s.1 == parent).map(|s| s.0));
        i += 1;
    }
    let ticks: u64 = stats
        .iter()
        .filter(|s| tree.contains(&s.0))
        .map(|s| s.2)
        .sum();
    ticks as f64 / TICKS_PER_SECOND
}

/// `/proc` counts in USER_HZ, which Linux fixes at 100 for user space.
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU seconds used so far by this process (all its threads): one read of
/// `/proc/self/stat`, cheap enough to take around each batch of an in-process benchmark.
pub fn own_cpu_seconds() -> f64 {
    parent_and_ticks("/proc/self/stat").map_or(0, |(_, ticks)| ticks) as f64 / TICKS_PER_SECOND
}

/// The parent pid and user + system ticks in a `/proc/<pid>/stat` file.
fn parent_and_ticks(path: &str) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name: state, ppid, ... utime (14th), stime (15th).
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((ppid, ticks))
}
