//! The few series of the proxy's own Prometheus text that the console charts.
//!
//! The sessions library counts logins and bytes with the `metrics` facade, and the binary's
//! `metrics-exporter-prometheus` recorder keeps them; its handle offers nothing but the rendered
//! text, so the console reads that, as Prometheus would.

use std::collections::BTreeMap;

/// `imapproxy_logins_total`, by `result`.
const LOGINS: &str = "imapproxy_logins_total";
/// `imapproxy_bytes_relayed_total`, by `direction`.
const BYTES: &str = "imapproxy_bytes_relayed_total";
/// `imapproxy_login_duration_seconds`: a summary or a histogram, as the exporter is set up.
const LATENCY: &str = "imapproxy_login_duration_seconds";
/// Login results kept at most: the proxy emits a handful; a bound keeps memory bounded
/// whatever the text says.
const MAX_RESULTS: usize = 16;

/// What one rendering of the metrics said. Counters are as rendered: totals since start.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Scrape {
    /// Logins by result (`ok`, `reused`, `failed`, ...).
    pub(super) logins: BTreeMap<String, f64>,
    /// Bytes from clients to backends.
    pub(super) bytes_in: f64,
    /// Bytes from backends to clients.
    pub(super) bytes_out: f64,
    pub(super) latency: Latency,
}

/// Login latency, in the form the exporter keeps it.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) enum Latency {
    /// Not rendered (no login yet).
    #[default]
    Absent,
    /// A summary (the exporter's default): quantiles of the logins in its sliding window, the
    /// last 40 to 60 s with its default 3 buckets of 20 s. `None` when the window is empty (the
    /// exporter writes 0 then, and no login takes 0 s).
    Window { p50: Option<f64>, p99: Option<f64> },
    /// A histogram (buckets configured): cumulative counts by upper bound, ascending.
    Buckets(Vec<(f64, f64)>),
}

impl Scrape {
    /// Reads `text` (Prometheus exposition format); anything else in it is ignored.
    pub(super) fn parse(text: &str) -> Self {
        let mut scrape = Self::default();
        for (name, labels, value) in text.lines().filter_map(sample) {
            let label = |key: &str| label(labels, key);
            match name {
                LOGINS => {
                    let room = |r: &String| {
                        scrape.logins.len() < MAX_RESULTS || scrape.logins.contains_key(r)
                    };
                    if let Some(result) = label("result").filter(room) {
                        scrape.logins.insert(result, value);
                    }
                }
                BYTES => match label("direction").as_deref() {
                    Some("client_to_backend") => scrape.bytes_in = value,
                    Some("backend_to_client") => scrape.bytes_out = value,
                    _ => {}
                },
                LATENCY => scrape
                    .latency
                    .add_quantile(label("quantile").as_deref(), value),
                _ if name.strip_suffix("_bucket") == Some(LATENCY) => {
                    if let Some(le) = label("le").and_then(|le| le.parse::<f64>().ok()) {
                        scrape.latency.add_bucket(le, value);
                    }
                }
                _ => {}
            }
        }
        scrape
    }
}

impl Latency {
    fn add_quantile(&mut self, quantile: Option<&str>, value: f64) {
        if !matches!(self, Self::Window { .. }) {
            *self = Self::Window {
                p50: None,
                p99: None,
            };
        }
        let value = (value > 0.0 && value.is_finite()).then_some(value);
        if let Self::Window { p50, p99 } = self {
            match quantile {
                Some("0.5") => *p50 = value,
                Some("0.99") => *p99 = value,
                _ => {}
            }
        }
    }

    fn add_bucket(&mut self, le: f64, count: f64) {
        match self {
            Self::Buckets(buckets) => buckets.push((le, count)),
            _ => *self = Self::Buckets(vec![(le, count)]),
        }
    }
}

/// `name{labels} value` (a timestamp after the value is ignored); `None` for comments, blank
/// and malformed lines.
fn sample(line: &str) -> Option<(&str, &str, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (series, rest) = match line.find('{') {
        Some(_) => {
            let close = line.rfind('}')?;
            (line.get(..close + 1)?, line.get(close + 1..)?)
        }
        None => line.split_at(line.find(' ')?),
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, labels)) => (name, labels.strip_suffix('}')?),
        None => (series, ""),
    };
    Some((name, labels, value))
}

/// The value of `key` in `a="1",b="x\"y"`, unescaped.
fn label(labels: &str, key: &str) -> Option<String> {
    let mut rest = labels;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"")?;
        let (value, tail) = quoted(after)?;
        if name.trim_start_matches(',').trim() == key {
            return Some(value);
        }
        rest = tail;
    }
    None
}

/// Reads a label value up to its closing quote: the value (with `\\`, `\"`, `\n` undone) and
/// what follows the quote.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, s.get(i + 1..)?)),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exporter's text with its default summary (`PrometheusBuilder::new()`).
    const SUMMARY: &str = "\
# TYPE imapproxy_logins_total counter
imapproxy_logins_total{result=\"ok\"} 7
imapproxy_logins_total{result=\"failed\"} 2

# TYPE imapproxy_bytes_relayed_total counter
imapproxy_bytes_relayed_total{direction=\"client_to_backend\"} 1200
imapproxy_bytes_relayed_total{direction=\"backend_to_client\"} 56000

# TYPE imapproxy_sessions_active gauge
imapproxy_sessions_active 3

# TYPE imapproxy_login_duration_seconds summary
imapproxy_login_duration_seconds{quantile=\"0\"} 0.001
imapproxy_login_duration_seconds{quantile=\"0.5\"} 0.0042
imapproxy_login_duration_seconds{quantile=\"0.99\"} 0.031
imapproxy_login_duration_seconds{quantile=\"1\"} 0.04
imapproxy_login_duration_seconds_sum 0.1
imapproxy_login_duration_seconds_count 9
";

    #[test]
    fn counters_and_summary_quantiles_are_read() {
        let s = Scrape::parse(SUMMARY);
        assert_eq!(s.logins.get("ok"), Some(&7.0));
        assert_eq!(s.logins.get("failed"), Some(&2.0));
        assert_eq!((s.bytes_in, s.bytes_out), (1200.0, 56000.0));
        assert_eq!(
            s.latency,
            Latency::Window {
                p50: Some(0.0042),
                p99: Some(0.031)
            }
        );
    }

    #[test]
    fn an_empty_summary_window_has_no_quantiles() {
        let s = Scrape::parse(
            "imapproxy_login_duration_seconds{quantile=\"0.5\"} 0\n\
             imapproxy_login_duration_seconds{quantile=\"0.99\"} 0\n",
        );
        assert_eq!(
            s.latency,
            Latency::Window {
                p50: None,
                p99: None
            }
        );
    }

    #[test]
    fn histogram_buckets_are_read_in_order() {
        let s = Scrape::parse(
            "imapproxy_login_duration_seconds_bucket{le=\"0.005\"} 4\n\
             imapproxy_login_duration_seconds_bucket{le=\"0.05\"} 9\n\
             imapproxy_login_duration_seconds_bucket{le=\"+Inf\"} 10\n\
             imapproxy_login_duration_seconds_sum 0.3\n\
             imapproxy_login_duration_seconds_count 10\n",
        );
        assert_eq!(
            s.latency,
            Latency::Buckets(vec![(0.005, 4.0), (0.05, 9.0), (f64::INFINITY, 10.0)])
        );
    }

    #[test]
    fn labels_are_unescaped_and_other_labels_and_series_ignored() {
        let s = Scrape::parse(
            "imapproxy_logins_total{node=\"a,b=\\\"c\\\"\",result=\"ok\"} 5 1700000000\n\
             imapproxy_logins_total_other{result=\"ok\"} 99\n\
             imapproxy_logins_total{result=\"ok\"\n\
             imapproxy_logins_total{result=\"x\"} not-a-number\n",
        );
        assert_eq!(s.logins.len(), 1);
        assert_eq!(s.logins.get("ok"), Some(&5.0));
        assert_eq!(label("a=\"x\\\\y\\n\"", "a").as_deref(), Some("x\\y\n"));
    }

    /// Renders what the sessions library records through a real exporter built by `builder`.
    fn rendered(builder: metrics_exporter_prometheus::PrometheusBuilder) -> Scrape {
        let recorder = builder.build_recorder();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!(LOGINS, "result" => "ok").increment(3);
            metrics::counter!(BYTES, "direction" => "backend_to_client").increment(4096);
            // Fewer than 64, the exporter's block of pending samples: its summary drops samples
            // drained out of order when it has no bucket for them yet.
            for ms in 1..=50 {
                metrics::histogram!(LATENCY).record(f64::from(ms) / 1000.0);
            }
        });
        Scrape::parse(&recorder.handle().render())
    }

    #[test]
    fn the_exporters_own_text_is_read_as_a_summary_and_as_a_histogram() {
        let summary = rendered(metrics_exporter_prometheus::PrometheusBuilder::new());
        assert_eq!(summary.logins.get("ok"), Some(&3.0));
        assert_eq!(summary.bytes_out, 4096.0);
        let Latency::Window {
            p50: Some(p50),
            p99: Some(p99),
        } = summary.latency
        else {
            panic!("{:?}", summary.latency);
        };
        // The exporter's quantile sketch is approximate.
        assert!((0.023..0.027).contains(&p50), "{p50}");
        assert!((0.047..0.051).contains(&p99), "{p99}");

        let histogram = rendered(
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(LATENCY.into()),
                    &[0.005, 0.05],
                )
                .unwrap(),
        );
        assert_eq!(
            histogram.latency,
            Latency::Buckets(vec![(0.005, 5.0), (0.05, 50.0), (f64::INFINITY, 50.0)])
        );
    }

    #[test]
    fn login_results_are_bounded() {
        let text: String = (0..100)
            .map(|i| format!("imapproxy_logins_total{{result=\"r{i}\"}} 1\n"))
            .collect();
        assert_eq!(Scrape::parse(&text).logins.len(), MAX_RESULTS);
    }
}
