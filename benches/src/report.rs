//! Medians, the printed table and the JSON summary in `target/loadbench/<scenario>.json`.

use std::fs;
use std::path::PathBuf;

use serde::Serialize;

use crate::error::BenchError;
use crate::proxy::target_dir;

/// One measured configuration: a figure per run.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// What was measured, e.g. "proxy plain".
    pub name: String,
    /// Unit of the figures, e.g. "MB/s".
    pub unit: &'static str,
    /// One figure per run, in run order.
    pub runs: Vec<f64>,
    /// Median of `runs`.
    pub median: f64,
}

impl Series {
    /// An empty series.
    pub fn new(name: &str, unit: &'static str) -> Series {
        Series {
            name: name.to_owned(),
            unit,
            runs: Vec::new(),
            median: f64::NAN,
        }
    }

    /// Adds a run's figure and updates the median.
    pub fn push(&mut self, x: f64) {
        self.runs.push(x);
        self.median = median(&self.runs);
    }
}

/// Median (mean of the middle two for an even count); NaN when empty.
pub fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    // For an odd count both indexes are the middle one.
    match (v.get(n.saturating_sub(1) / 2), v.get(n / 2)) {
        (Some(a), Some(b)) if n > 0 => (a + b) / 2.0,
        _ => f64::NAN,
    }
}

/// The `p`-th percentile (0..=100) of `xs` by nearest rank; NaN when empty. Sorts `xs`.
pub fn percentile(xs: &mut [f64], p: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    if xs.is_empty() {
        return f64::NAN;
    }
    // Nearest rank: the smallest value with at least p% of the samples at or below it.
    let rank = ((p / 100.0) * xs.len() as f64).ceil() as usize;
    xs.get(rank.clamp(1, xs.len()) - 1)
        .copied()
        .unwrap_or(f64::NAN)
}

/// Prints `series` as a table: one column per run, then the median.
pub fn print_table(title: &str, series: &[Series], decimals: usize) {
    let runs = series.iter().map(|s| s.runs.len()).max().unwrap_or(0);
    let name_w = series
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0)
        .max(13);
    println!();
    println!("{title}");
    let mut header = format!("{:<name_w$}", "configuration");
    for r in 1..=runs {
        header.push_str(&format!(" {:>10}", format!("run {r}")));
    }
    header.push_str(&format!(" {:>10}   unit", "MEDIAN"));
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for s in series {
        let mut line = format!("{:<name_w$}", s.name);
        for x in &s.runs {
            line.push_str(&format!(" {x:>10.decimals$}"));
        }
        for _ in s.runs.len()..runs {
            line.push_str(&format!(" {:>10}", "-"));
        }
        line.push_str(&format!(" {:>10.decimals$}   {}", s.median, s.unit));
        println!("{line}");
    }
}

/// Writes `summary` as pretty JSON to `target/loadbench/<scenario>.json`; returns the path.
pub fn write_json(scenario: &str, summary: &serde_json::Value) -> Result<PathBuf, BenchError> {
    let dir = target_dir().join("loadbench");
    fs::create_dir_all(&dir).map_err(|source| BenchError::File {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join(format!("{scenario}.json"));
    let text = serde_json::to_string_pretty(summary).map_err(|e| BenchError::File {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    fs::write(&path, text + "\n").map_err(|source| BenchError::File {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Seconds since the Unix epoch, for the summary.
pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut xs: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut xs, 50.0), 50.0);
        assert_eq!(percentile(&mut xs, 99.0), 99.0);
        assert_eq!(percentile(&mut xs, 100.0), 100.0);
        assert_eq!(percentile(&mut xs, 0.0), 1.0);
        assert_eq!(percentile(&mut [7.0], 99.0), 7.0);
        assert!(percentile(&mut [], 50.0).is_nan());
    }
}
