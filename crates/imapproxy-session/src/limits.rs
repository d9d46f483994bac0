//! Connection limits: concurrent connections per client address, new connections per second
//! per address (a token bucket holding one second's worth), and a global maximum.
//!
//! [`ConnectionLimits::try_acquire`] is asked once per accepted connection, after a PROXY
//! header (so the real client address is counted) and before any TLS work; the returned
//! [`ConnectionPermit`] is held for the connection's life and gives its slot back on drop.
//! Addresses in [`ConnectionLimitSettings::trusted`] are exempt from the per-address limits,
//! not from the global one. The per-address table is bounded by
//! [`ConnectionLimitSettings::max_tracked`]; entries with no open connection and a full
//! bucket carry no information and are dropped first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::proxy_protocol::TrustedNetworks;

/// Everything under `[limits]` apart from the PROXY protocol's use of `trusted_networks`.
#[derive(Clone, Debug, Default)]
pub struct LimitSettings {
    /// Failed-login throttling.
    pub throttle: crate::throttle::ThrottleSettings,
    /// Connection limits.
    pub connections: ConnectionLimitSettings,
}

/// Limits on client connections; `0` turns the respective limit off.
#[derive(Clone, Debug)]
pub struct ConnectionLimitSettings {
    /// Open connections in total.
    pub max_connections: usize,
    /// Open connections per client address.
    pub max_connections_per_ip: u32,
    /// New connections per second per client address (also the burst).
    pub max_new_connections_per_ip_per_sec: u32,
    /// Addresses exempt from the per-address limits.
    pub trusted: TrustedNetworks,
    /// Cap on addresses tracked.
    pub max_tracked: usize,
}

impl Default for ConnectionLimitSettings {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            // Generous (the binary's defaults, reasons in its config): one address is often an
            // office behind NAT, whose mail programs start and reconnect together.
            max_connections_per_ip: 1000,
            max_new_connections_per_ip_per_sec: 100,
            trusted: TrustedNetworks::parse(&["127.0.0.0/8", "::1/128"]).unwrap_or_default(),
            max_tracked: 65_536,
        }
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The proxy holds `max_connections` already.
    Global,
    /// The address holds `max_connections_per_ip` already.
    PerIp,
    /// The address opened connections faster than allowed.
    Rate,
}

impl Refusal {
    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::PerIp => "per-ip",
            Self::Rate => "rate",
        }
    }
}

#[derive(Debug)]
struct IpState {
    open: u32,
    tokens: f64,
    refilled: Instant,
}

/// Connection counters of one proxy.
#[derive(Debug)]
pub struct ConnectionLimits {
    /// Swapped on reload (SIGHUP); the counters stay.
    settings: arc_swap::ArcSwap<ConnectionLimitSettings>,
    open: AtomicUsize,
    table: Mutex<HashMap<IpAddr, IpState>>,
}

/// One admitted connection; gives its slot back when dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    /// The address counted per address, `None` when exempt.
    ip: Option<IpAddr>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut table = self.limits.table();
            if let Some(state) = table.get_mut(&ip) {
                state.open = state.open.saturating_sub(1);
            }
        }
    }
}

impl ConnectionLimits {
    /// Counters with these settings.
    pub fn new(settings: ConnectionLimitSettings) -> Self {
        Self {
            settings: arc_swap::ArcSwap::from_pointee(settings),
            open: AtomicUsize::new(0),
            table: Mutex::new(HashMap::new()),
        }
    }

    /// The settings.
    pub fn settings(&self) -> std::sync::Arc<ConnectionLimitSettings> {
        self.settings.load_full()
    }

    /// Replaces the settings (SIGHUP); counters, blocks and open connections are kept.
    pub fn set_settings(&self, settings: ConnectionLimitSettings) {
        self.settings.store(std::sync::Arc::new(settings));
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, IpState>> {
        crate::sync::lock(&self.table)
    }

    /// Admits a connection from `ip`, or says why not.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let ip = ip.to_canonical();
        let s = self.settings.load();
        let max = if s.max_connections == 0 {
            usize::MAX
        } else {
            s.max_connections
        };
        // Reserve the global slot first; the permit (or the failure below) releases it.
        if self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Refusal::Global);
        }
        let per_ip = s.max_connections_per_ip > 0 || s.max_new_connections_per_ip_per_sec > 0;
        if !per_ip || s.trusted.contains(ip) {
            return Ok(ConnectionPermit {
                limits: Arc::clone(self),
                ip: None,
            });
        }
        // Counted by /64 for IPv6 (see `counted_addr`).
        let ip = crate::throttle::counted_addr(ip);
        match self.admit_ip(ip) {
            Ok(()) => Ok(ConnectionPermit {
                limits: Arc::clone(self),
                ip: Some(ip),
            }),
            Err(r) => {
                self.open.fetch_sub(1, Ordering::AcqRel);
                Err(r)
            }
        }
    }

    fn admit_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        let s = self.settings.load();
        let rate = f64::from(s.max_new_connections_per_ip_per_sec);
        let now = Instant::now();
        let mut table = self.table();
        if !table.contains_key(&ip) && table.len() >= s.max_tracked {
            make_room(&mut table, rate, now, s.max_tracked);
        }
        let state = table.entry(ip).or_insert(IpState {
            open: 0,
            tokens: rate,
            refilled: now,
        });
        if s.max_connections_per_ip > 0 && state.open >= s.max_connections_per_ip {
            return Err(Refusal::PerIp);
        }
        if rate > 0.0 {
            let elapsed = now.duration_since(state.refilled).as_secs_f64();
            state.tokens = (state.tokens + elapsed * rate).min(rate);
            state.refilled = now;
            if state.tokens < 1.0 {
                return Err(Refusal::Rate);
            }
            state.tokens -= 1.0;
        }
        state.open += 1;
        Ok(())
    }

    /// Addresses tracked now (for metrics and tests).
    pub fn tracked(&self) -> usize {
        self.table().len()
    }
}

/// Drops idle addresses whose bucket has refilled; if still full, every idle address (which
/// forgives their rate, never their open count).
fn make_room(table: &mut HashMap<IpAddr, IpState>, rate: f64, now: Instant, cap: usize) {
    table.retain(|_, st| {
        let refilled =
            rate <= 0.0 || st.tokens + now.duration_since(st.refilled).as_secs_f64() * rate >= rate;
        st.open > 0 || !refilled
    });
    if table.len() >= cap {
        table.retain(|_, st| st.open > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(global: usize, per_ip: u32, rate: u32) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits::new(ConnectionLimitSettings {
            max_connections: global,
            max_connections_per_ip: per_ip,
            max_new_connections_per_ip_per_sec: rate,
            trusted: TrustedNetworks::parse(&["10.0.0.0/8"]).unwrap(),
            max_tracked: 4,
        }))
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[tokio::test(start_paused = true)]
    async fn per_ip_concurrency_is_capped_and_released_on_drop() {
        let l = limits(100, 2, 0);
        let p1 = l.try_acquire(A).unwrap();
        let _p2 = l.try_acquire(A).unwrap();
        assert_eq!(l.try_acquire(A).unwrap_err(), Refusal::PerIp);
        let _b = l.try_acquire(B).unwrap();
        drop(p1);
        let _p3 = l.try_acquire(A).unwrap();
        assert_eq!(l.open(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn new_connection_rate_refills_over_time() {
        let l = limits(100, 0, 3);
        let held: Vec<_> = (0..3).map(|_| l.try_acquire(A).unwrap()).collect();
        assert_eq!(l.try_acquire(A).unwrap_err(), Refusal::Rate);
        drop(held);
        assert_eq!(l.try_acquire(A).unwrap_err(), Refusal::Rate);
        tokio::time::advance(Duration::from_millis(400)).await;
        let _one = l.try_acquire(A).unwrap();
        assert_eq!(l.try_acquire(A).unwrap_err(), Refusal::Rate);
    }

    #[tokio::test(start_paused = true)]
    async fn global_cap_applies_to_trusted_too() {
        let l = limits(2, 1, 1);
        let t: IpAddr = "10.0.0.1".parse().unwrap();
        let _a = l.try_acquire(t).unwrap();
        let _b = l.try_acquire(t).unwrap();
        assert_eq!(l.try_acquire(t).unwrap_err(), Refusal::Global);
        assert_eq!(l.try_acquire(A).unwrap_err(), Refusal::Global);
        assert_eq!(l.open(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn table_is_bounded() {
        let l = limits(1000, 5, 1);
        for i in 0..50u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0xC000_0200 + i));
            drop(l.try_acquire(ip).unwrap());
        }
        assert!(l.tracked() <= 4, "{}", l.tracked());
        assert_eq!(l.open(), 0);
    }
}
