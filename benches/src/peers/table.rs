//! The comparison table: one row per scenario metric, one column per target, each cell
//! the ratio of the target's median to direct Dovecot's over the same transport, then
//! the median itself; runs disturbed by other load are marked and listed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::disturbance::Load;
use super::target::Column;
use crate::report::median;

/// Which way a metric improves (printed after its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// More is better (throughput).
    Higher,
    /// Less is better (latency, memory, failures).
    Lower,
}

/// One measured value of a cell.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Run number, from 1.
    pub run: u32,
    /// The figure (NaN when the measurement failed).
    pub value: f64,
    /// Whether other load disturbed it.
    pub disturbed: bool,
}

/// One metric of one scenario.
#[derive(Debug, Clone)]
pub struct Row {
    /// A short name, e.g. "sessions/s".
    pub key: &'static str,
    /// The metric, e.g. "sessions/s, 20 clients over 100 users".
    pub metric: String,
    /// Unit of the absolute figures.
    pub unit: &'static str,
    /// Which way is better.
    pub better: Better,
    /// Decimals of the absolute figures.
    pub decimals: usize,
    /// The samples of each column measured.
    pub cells: BTreeMap<Column, Vec<Sample>>,
}

impl Row {
    /// An empty row.
    pub fn new(
        key: &'static str,
        metric: &str,
        unit: &'static str,
        better: Better,
        decimals: usize,
    ) -> Row {
        Row {
            key,
            metric: metric.to_owned(),
            unit,
            better,
            decimals,
            cells: BTreeMap::new(),
        }
    }

    /// Adds run `run`'s figure for `column`.
    pub fn push(&mut self, column: Column, run: u32, value: f64, disturbed: bool) {
        self.cells.entry(column).or_default().push(Sample {
            run,
            value,
            disturbed,
        });
    }

    /// Median of the column's finite figures (NaN when there are none).
    pub fn median(&self, column: Column) -> f64 {
        self.cells.get(&column).map_or(f64::NAN, |s| {
            let v: Vec<f64> = s
                .iter()
                .map(|x| x.value)
                .filter(|x| x.is_finite())
                .collect();
            median(&v)
        })
    }

    /// The column's median over direct Dovecot's (same transport); NaN when either is
    /// missing or the divisor is zero.
    pub fn ratio(&self, column: Column) -> f64 {
        let base = self.median(column.baseline());
        let own = self.median(column);
        if base.is_finite() && own.is_finite() && base != 0.0 {
            own / base
        } else {
            f64::NAN
        }
    }

    /// Spread of direct Dovecot's runs over `transport`'s baseline column:
    /// (max − min) / median; NaN with fewer than two runs.
    pub fn direct_spread(&self, baseline: Column) -> f64 {
        let v: Vec<f64> = self.cells.get(&baseline).map_or_else(Vec::new, |s| {
            s.iter()
                .map(|x| x.value)
                .filter(|x| x.is_finite())
                .collect()
        });
        let m = median(&v);
        if v.len() < 2 || m == 0.0 {
            return f64::NAN;
        }
        let max = v.iter().copied().fold(f64::MIN, f64::max);
        let min = v.iter().copied().fold(f64::MAX, f64::min);
        (max - min) / m
    }

    /// The cell as printed: `0.93× (132.1)`, the baseline's as `132.1`, a `*` when a
    /// run was disturbed, `—` when not measured.
    pub fn cell(&self, column: Column) -> String {
        let Some(samples) = self.cells.get(&column) else {
            return "—".to_owned();
        };
        let m = self.median(column);
        if !m.is_finite() {
            return "failed".to_owned();
        }
        let star = if samples.iter().any(|s| s.disturbed) {
            "*"
        } else {
            ""
        };
        let abs = format!("{m:.*}", self.decimals);
        let r = self.ratio(column);
        if column == column.baseline() || !r.is_finite() {
            format!("{abs}{star}")
        } else {
            // Two decimals, three below 0.1 (memory against Dovecot's own).
            let d = if r < 0.1 { 3 } else { 2 };
            format!("{r:.d$}× ({abs}){star}")
        }
    }

    /// The row in the JSON summary: every run, median and ratio per column.
    pub fn json(&self) -> Value {
        let cells: serde_json::Map<String, Value> = self
            .cells
            .iter()
            .map(|(c, s)| {
                let runs: Vec<Value> = s
                    .iter()
                    .map(|x| json!({"run": x.run, "value": finite(x.value), "disturbed": x.disturbed}))
                    .collect();
                (
                    c.name().to_owned(),
                    json!({
                        "runs": runs,
                        "median": finite(self.median(*c)),
                        "ratio_to_direct": finite(self.ratio(*c)),
                    }),
                )
            })
            .collect();
        json!({
            "key": self.key,
            "metric": self.metric,
            "unit": self.unit,
            "better": match self.better { Better::Higher => "higher", Better::Lower => "lower" },
            "cells": cells,
        })
    }
}

/// NaN is not JSON: null instead.
fn finite(x: f64) -> Value {
    if x.is_finite() { json!(x) } else { Value::Null }
}

/// One measurement's load, for the notes.
#[derive(Debug, Clone)]
pub struct LoadRecord {
    /// Scenario name.
    pub scenario: &'static str,
    /// Run number.
    pub run: u32,
    /// The column measured, or `None` when the measurement covered every column
    /// (bulk interleaves them).
    pub column: Option<Column>,
    /// The load.
    pub load: Load,
    /// Whether it counts as disturbed.
    pub disturbed: bool,
}

/// The markdown document: title, table, notes.
pub fn markdown(
    rows: &[Row],
    columns: &[Column],
    header_lines: &[String],
    notes: &[String],
) -> String {
    let mut out = String::new();
    out.push_str("## imapproxy and its peers against direct Dovecot\n\n");
    for l in header_lines {
        let _ = writeln!(out, "{l}  ");
    }
    out.push('\n');
    let _ = write!(out, "| metric |");
    for c in columns {
        let _ = write!(out, " {} |", c.name());
    }
    out.push('\n');
    let _ = write!(out, "|---|");
    for _ in columns {
        out.push_str("---|");
    }
    out.push('\n');
    for r in rows {
        let arrow = match r.better {
            Better::Higher => "↑",
            Better::Lower => "↓",
        };
        let _ = write!(out, "| {} ({}, {arrow}) |", r.metric, r.unit);
        for c in columns {
            let _ = write!(out, " {} |", r.cell(*c));
        }
        out.push('\n');
    }
    out.push('\n');
    for n in notes {
        let _ = writeln!(out, "- {n}");
    }
    out
}

/// Notes about disturbed measurements: the rule, then one line per disturbed run.
pub fn load_notes(loads: &[LoadRecord], limit: f64, cpus: usize) -> Vec<String> {
    let mut notes = vec![format!(
        "`*`: at least one run of the cell was disturbed, i.e. processes outside the \
         bench's own tree (loadbench, its Dovecot, the target) plus hypervisor steal used \
         ≥ {limit:.2} of the {cpus} cores on average while it was measured."
    )];
    let disturbed: Vec<&LoadRecord> = loads.iter().filter(|l| l.disturbed).collect();
    if disturbed.is_empty() {
        notes.push(format!(
            "No measurement was disturbed ({} measurements; the most foreign CPU seen was \
             {:.2} cores).",
            loads.len(),
            loads
                .iter()
                .map(|l| l.load.foreign_cores + l.load.steal_cores)
                .fold(0.0, f64::max)
        ));
        return notes;
    }
    // Grouped by scenario run, in the order they ran.
    let mut by_run: Vec<((&str, u32), Vec<&LoadRecord>)> = Vec::new();
    for l in &disturbed {
        let key = (l.scenario, l.run);
        match by_run.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(l),
            None => by_run.push((key, vec![l])),
        }
    }
    notes.push(format!(
        "Disturbed: {} of {} measurements, in {} scenario runs:",
        disturbed.len(),
        loads.len(),
        by_run.len()
    ));
    for ((scenario, run), ls) in by_run {
        let parts: Vec<String> = ls
            .iter()
            .map(|l| {
                format!(
                    "{} {:.2} cores{} (load {:.1} → {:.1})",
                    l.column.map_or("all targets", Column::name),
                    l.load.foreign_cores,
                    if l.load.steal_cores >= 0.01 {
                        format!(" + steal {:.2}", l.load.steal_cores)
                    } else {
                        String::new()
                    },
                    l.load.load1_before,
                    l.load.load1_after
                )
            })
            .collect();
        notes.push(format!("{scenario} run {run}: {}", parts.join("; ")));
    }
    notes
}

/// `YYYY-MM-DD HH:MM UTC` for seconds since the Unix epoch (civil-from-days, proleptic
/// Gregorian; H. Hinnant's algorithm).
pub fn utc_text(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs / 3600,
        (secs % 3600) / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        let mut r = Row::new("s", "sessions/s", "1/s", Better::Higher, 1);
        for (run, d, h, p) in [
            (1, 100.0, 110.0, 50.0),
            (2, 120.0, 100.0, 60.0),
            (3, 90.0, 130.0, f64::NAN),
        ] {
            r.push(Column::DirectPlain, run, d, false);
            r.push(Column::HaproxyPlain, run, h, run == 2);
            r.push(Column::NginxPlain, run, p, false);
        }
        r
    }

    #[test]
    fn cells_show_ratio_median_and_disturbance() {
        let r = row();
        assert_eq!(r.median(Column::DirectPlain), 100.0);
        assert_eq!(r.cell(Column::DirectPlain), "100.0");
        assert_eq!(r.cell(Column::HaproxyPlain), "1.10× (110.0)*");
        // A failed run is left out of the median.
        assert_eq!(r.cell(Column::NginxPlain), "0.55× (55.0)");
        assert_eq!(r.cell(Column::HaproxyTls), "—");
        assert!((r.direct_spread(Column::DirectPlain) - 0.3).abs() < 1e-9);
    }

    #[test]
    fn a_missing_baseline_leaves_the_absolute_figure() {
        let mut r = Row::new("x", "x", "ms", Better::Lower, 0);
        r.push(Column::NginxTls, 1, 5.0, false);
        assert_eq!(r.cell(Column::NginxTls), "5");
        // Small ratios keep three decimals.
        r.push(Column::DirectTls, 1, 400.0, false);
        assert_eq!(r.cell(Column::NginxTls), "0.013× (5)");
    }

    #[test]
    fn markdown_has_a_header_a_rule_and_a_line_per_row() {
        let md = markdown(
            &[row()],
            &[Column::DirectPlain, Column::HaproxyPlain],
            &["line".to_owned()],
            &["note".to_owned()],
        );
        assert!(md.contains("| metric | direct plain | HAProxy plain |\n|---|---|---|\n"));
        assert!(md.contains("| sessions/s (1/s, ↑) | 100.0 | 1.10× (110.0)* |\n"));
        assert!(md.contains("- note\n"));
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_text(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_text(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_text(1_700_000_000), "2023-11-14 22:13 UTC");
    }
}
