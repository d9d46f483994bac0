//! A minimal client for the proxy's admin endpoint (`[admin]`): one HTTP/1.1 request per
//! connection (the endpoint closes after each answer), bearer token, bounded in time.
//! Used to drain a backend with migration, to see where sessions live, and to read the
//! re-homing and parking counters from `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::BenchError;
use crate::imap::bounded;
use crate::proxy::ProxyProcess;

/// Bound on one admin request (the endpoint's own I/O bound is 5 s).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Metric families worth reporting next to the re-homing and parking figures.
pub const REHOME_METRICS: &[&str] = &[
    "imapproxy_rehomes_total",
    "imapproxy_rehome_failures_total",
    "imapproxy_rehome_pause_seconds",
    "imapproxy_parks_total",
];

/// `method path` on the proxy's admin endpoint; returns the status code and the body.
pub async fn request(
    proxy: &ProxyProcess,
    method: &str,
    path: &str,
) -> Result<(u16, String), BenchError> {
    let (addr, token) = proxy
        .admin
        .as_ref()
        .ok_or_else(|| BenchError::protocol("admin", "this proxy has no admin endpoint"))?;
    send(*addr, token, method, path).await
}

async fn send(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
) -> Result<(u16, String), BenchError> {
    let what = format!("admin {method} {path}");
    bounded(&what, ADMIN_TIMEOUT, async {
        let mut tcp = TcpStream::connect(addr)
            .await
            .map_err(BenchError::io(format!("{what}: connect to {addr}")))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        tcp.write_all(head.as_bytes())
            .await
            .map_err(BenchError::io(format!("{what}: write")))?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw)
            .await
            .map_err(BenchError::io(format!("{what}: read")))?;
        let text = String::from_utf8_lossy(&raw);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| BenchError::protocol(&what, format!("no status line in {text:?}")))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    })
    .await
}

/// Like [`request`], insisting on `200` and a JSON body.
pub async fn json(
    proxy: &ProxyProcess,
    method: &str,
    path: &str,
) -> Result<serde_json::Value, BenchError> {
    let (status, body) = request(proxy, method, path).await?;
    if status != 200 {
        return Err(BenchError::protocol(
            format!("admin {method} {path}"),
            format!("HTTP {status}: {body}"),
        ));
    }
    serde_json::from_str(&body)
        .map_err(|e| BenchError::protocol(format!("admin {method} {path}"), e.to_string()))
}

/// Live sessions per backend name (`GET /sessions`).
pub async fn sessions_per_backend(
    proxy: &ProxyProcess,
) -> Result<BTreeMap<String, u64>, BenchError> {
    let v = json(proxy, "GET", "/sessions").await?;
    let mut per = BTreeMap::new();
    for s in v["sessions"].as_array().map_or(&[][..], Vec::as_slice) {
        let backend = s["backend"].as_str().unwrap_or("?").to_owned();
        *per.entry(backend).or_default() += 1;
    }
    Ok(per)
}

/// The samples of the `families` in `/metrics`, keyed by the sample as printed (name and
/// labels), e.g. `imapproxy_rehomes_total{cause="drain"}` → 150.
pub async fn metrics(
    proxy: &ProxyProcess,
    families: &[&str],
) -> Result<BTreeMap<String, f64>, BenchError> {
    let (status, body) = request(proxy, "GET", "/metrics").await?;
    if status != 200 {
        return Err(BenchError::protocol(
            "admin GET /metrics",
            format!("HTTP {status}"),
        ));
    }
    Ok(samples(&body, families))
}

/// Prometheus text → samples of `families` (a family matches its own name and its
/// `_sum`, `_count`, `_bucket` series).
pub fn samples(text: &str, families: &[&str]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = key.split('{').next().unwrap_or(key);
        let wanted = families.iter().any(|f| {
            name == *f
                || name
                    .strip_prefix(f)
                    .is_some_and(|rest| matches!(rest, "_sum" | "_count" | "_bucket"))
        });
        if let (true, Ok(v)) = (wanted, value.trim().parse::<f64>()) {
            out.insert(key.to_owned(), v);
        }
    }
    out
}

/// Sum of every sample whose key starts with `prefix` (e.g. all causes of a counter).
pub fn total(samples: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_of_the_asked_families_only() {
        let text = "# TYPE imapproxy_rehomes_total counter\n\
                    imapproxy_rehomes_total{cause=\"drain\"} 150\n\
                    imapproxy_rehomes_total{cause=\"unpark\"} 3\n\
                    imapproxy_rehome_pause_seconds{quantile=\"0.5\"} 0.25\n\
                    imapproxy_rehome_pause_seconds_sum 40.5\n\
                    imapproxy_rehome_pause_seconds_count 153\n\
                    imapproxy_rehomes_totally_else 9\n\
                    imapproxy_parks_total 7\n\
                    imapproxy_sessions_total 1000\n";
        let s = samples(text, REHOME_METRICS);
        assert_eq!(
            s.get("imapproxy_rehomes_total{cause=\"drain\"}"),
            Some(&150.0)
        );
        assert_eq!(s.get("imapproxy_rehome_pause_seconds_count"), Some(&153.0));
        assert_eq!(s.get("imapproxy_parks_total"), Some(&7.0));
        assert!(!s.contains_key("imapproxy_sessions_total"));
        assert!(!s.contains_key("imapproxy_rehomes_totally_else"));
        assert_eq!(total(&s, "imapproxy_rehomes_total"), 153.0);
    }
}
