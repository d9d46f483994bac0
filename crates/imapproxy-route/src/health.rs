//! Backend health: the [`HealthCheck`] extension point, the rise/fall state machine and the
//! [`HealthMonitor`] that runs checks on every backend at an interval.
//!
//! Hysteresis keeps one lost packet from taking a backend out and one lucky answer from
//! putting a broken one back: `fall` consecutive failures turn an [`Health::Up`] backend
//! [`Health::Down`], `rise` consecutive successes turn a down one up again. Passive reports
//! from sessions ([`HealthMonitor::report_failure`], [`HealthMonitor::report_success`]) count
//! exactly like active checks, so a backend that refuses connections is taken out before the
//! next interval. [`Health::Draining`] belongs to the operator: checks still run and are
//! recorded, but never change it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use std::time::Duration;

use tokio::task::{JoinHandle, JoinSet};

use crate::{Backend, BackendId, BackendState, Health, Registry};

/// An active check of one backend, run by [`HealthMonitor`] every interval.
///
/// Implementations connect however the backend wants to be spoken to (the pool crate's IMAP
/// check connects, reads the greeting, sends `NOOP` and `LOGOUT`). The monitor bounds every
/// call with its own timeout, so an implementation need not, and a hung check counts as a
/// failure.
#[async_trait::async_trait]
pub trait HealthCheck: Send + Sync {
    /// Checks `backend`; `Err` carries a short reason for the logs (never shown to clients).
    async fn check(&self, backend: &Backend) -> Result<(), String>;
}

/// Default for [`HealthSettings::interval`] (`[health] interval`).
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Default for [`HealthSettings::timeout`].
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Default for [`HealthSettings::rise`] and [`HealthSettings::fall`].
pub const DEFAULT_HEALTH_THRESHOLD: u32 = 2;

/// How often to check and how many results in a row change a backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSettings {
    /// Time between the starts of two rounds of checks.
    pub interval: Duration,
    /// Bound on one check; a check that takes longer failed.
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up (at least 1).
    pub rise: u32,
    /// Consecutive failures that take an up backend down (at least 1).
    pub fall: u32,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            rise: DEFAULT_HEALTH_THRESHOLD,
            fall: DEFAULT_HEALTH_THRESHOLD,
        }
    }
}

/// What the monitor knows about one backend beyond its [`Health`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckRecord {
    /// Successes in a row (active or passive); zero after any failure.
    pub successes: u32,
    /// Failures in a row (active or passive); zero after any success.
    pub failures: u32,
    /// Completed active checks.
    pub checks: u64,
    /// The reason of the most recent failure, if the most recent result was one.
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Tracked {
    backend: Backend,
    state: Arc<BackendState>,
    record: Mutex<CheckRecord>,
}

/// Runs a [`HealthCheck`] on every backend of a [`Registry`] and keeps their
/// [`BackendState`] health up to date; also takes passive reports from sessions.
///
/// It holds the registry's shared states (not the registry), so it keeps working while the
/// registry is used elsewhere; after a reload that adds or removes backends, build a new
/// monitor from the new registry (surviving backends keep their state either way).
pub struct HealthMonitor {
    settings: HealthSettings,
    check: Arc<dyn HealthCheck>,
    backends: Vec<Tracked>,
    index: HashMap<BackendId, usize>,
}

impl std::fmt::Debug for HealthMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthMonitor")
            .field("settings", &self.settings)
            .field("backends", &self.index.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl HealthMonitor {
    /// A monitor of every backend of `registry`. `rise` and `fall` below 1 count as 1.
    pub fn new(registry: &Registry, check: Arc<dyn HealthCheck>, settings: HealthSettings) -> Self {
        let settings = HealthSettings {
            rise: settings.rise.max(1),
            fall: settings.fall.max(1),
            ..settings
        };
        let mut backends = Vec::with_capacity(registry.len());
        let mut index = HashMap::with_capacity(registry.len());
        for (backend, state) in registry.iter() {
            index.insert(backend.id.clone(), backends.len());
            backends.push(Tracked {
                backend: backend.clone(),
                state: Arc::clone(state),
                record: Mutex::new(CheckRecord::default()),
            });
        }
        Self {
            settings,
            check,
            backends,
            index,
        }
    }

    /// The settings in use (with `rise` and `fall` at least 1).
    #[must_use]
    pub fn settings(&self) -> HealthSettings {
        self.settings
    }

    /// Counters and last error of a backend, for the admin API.
    #[must_use]
    pub fn record(&self, id: &str) -> Option<CheckRecord> {
        let tracked = self.backends.get(*self.index.get(id)?)?;
        Some(lock(&tracked.record).clone())
    }

    /// A session could not connect to (or log in infrastructure-wise on) `id`: counts toward
    /// `fall` like a failed check. Unknown ids are ignored.
    pub fn report_failure(&self, id: &str, reason: &str) {
        if let Some(&i) = self.index.get(id) {
            self.record_result(i, Err(reason), false);
        }
    }

    /// A session connected to `id`: counts toward `rise` like a passed check.
    pub fn report_success(&self, id: &str) {
        if let Some(&i) = self.index.get(id) {
            self.record_result(i, Ok(()), false);
        }
    }

    /// Runs one round: checks every backend concurrently, each bounded by the timeout, and
    /// records the results. Returns when every check has finished or timed out.
    pub async fn check_all(self: &Arc<Self>) {
        let mut set = JoinSet::new();
        for i in 0..self.backends.len() {
            let monitor = Arc::clone(self);
            set.spawn(async move {
                let Some(tracked) = monitor.backends.get(i) else {
                    return;
                };
                let result = match tokio::time::timeout(
                    monitor.settings.timeout,
                    monitor.check.check(&tracked.backend),
                )
                .await
                {
                    Ok(result) => result,
                    Err(_) => Err(format!(
                        "check timed out after {:?}",
                        monitor.settings.timeout
                    )),
                };
                monitor.record_result(i, result.as_ref().map_err(String::as_str).copied(), true);
            });
        }
        while set.join_next().await.is_some() {}
    }

    /// Checks every backend every interval, forever; the first round starts at once.
    /// Cancel by dropping the future (or use [`HealthMonitor::spawn`]).
    pub async fn run(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.settings.interval);
        // A slow round should not be followed by a burst of catch-up rounds.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.check_all().await;
        }
    }

    /// Runs [`HealthMonitor::run`] on the current tokio runtime until the returned handle is
    /// dropped or stopped.
    #[must_use = "the monitor stops when the handle is dropped"]
    pub fn spawn(self: &Arc<Self>) -> MonitorHandle {
        MonitorHandle {
            task: tokio::spawn(Arc::clone(self).run()),
        }
    }

    fn record_result(&self, i: usize, result: Result<(), &str>, active: bool) {
        let Some(tracked) = self.backends.get(i) else {
            return;
        };
        let id = &tracked.backend.id;
        let mut record = lock(&tracked.record);
        if active {
            record.checks = record.checks.saturating_add(1);
        }
        match result {
            Ok(()) => {
                record.failures = 0;
                record.successes = record.successes.saturating_add(1);
                record.last_error = None;
                if record.successes >= self.settings.rise
                    && tracked
                        .state
                        .compare_and_set_health(Health::Down, Health::Up)
                {
                    tracing::info!(backend = %id, successes = record.successes, "backend is up");
                }
            }
            Err(reason) => {
                record.successes = 0;
                record.failures = record.failures.saturating_add(1);
                record.last_error = Some(reason.to_owned());
                if record.failures >= self.settings.fall
                    && tracked
                        .state
                        .compare_and_set_health(Health::Up, Health::Down)
                {
                    tracing::warn!(
                        backend = %id,
                        failures = record.failures,
                        passive = !active,
                        error = reason,
                        "backend is down"
                    );
                } else {
                    tracing::debug!(backend = %id, passive = !active, error = reason, "backend check failed");
                }
            }
        }
    }
}

/// A running [`HealthMonitor`]; dropping it (or [`MonitorHandle::stop`]) stops the checks.
#[derive(Debug)]
pub struct MonitorHandle {
    task: JoinHandle<()>,
}

impl MonitorHandle {
    /// Stops the checks now.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for MonitorHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    /// Healthy unless the backend's name is in `failing`; `hang` makes every check sleep.
    #[derive(Default)]
    struct Fake {
        failing: Mutex<Vec<String>>,
        hang: AtomicBool,
        calls: AtomicU32,
    }

    impl Fake {
        fn fail(&self, id: &str, on: bool) {
            let mut failing = self.failing.lock().unwrap();
            failing.retain(|f| f != id);
            if on {
                failing.push(id.to_owned());
            }
        }
    }

    #[async_trait::async_trait]
    impl HealthCheck for Fake {
        async fn check(&self, backend: &Backend) -> Result<(), String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.hang.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            if self
                .failing
                .lock()
                .unwrap()
                .iter()
                .any(|f| *f == *backend.id)
            {
                Err("connection refused".into())
            } else {
                Ok(())
            }
        }
    }

    fn setup(rise: u32, fall: u32) -> (Registry, Arc<Fake>, Arc<HealthMonitor>) {
        let registry = Registry::new(vec![
            Backend::new("a", "127.0.0.1:1"),
            Backend::new("b", "127.0.0.1:2"),
        ])
        .unwrap();
        let fake = Arc::new(Fake::default());
        let settings = HealthSettings {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise,
            fall,
        };
        let monitor = Arc::new(HealthMonitor::new(&registry, fake.clone(), settings));
        (registry, fake, monitor)
    }

    fn health(registry: &Registry, id: &str) -> Health {
        registry.state(id).unwrap().health()
    }

    #[tokio::test(start_paused = true)]
    async fn fall_and_rise_need_consecutive_results() {
        let (registry, fake, monitor) = setup(2, 3);
        fake.fail("a", true);
        monitor.check_all().await;
        monitor.check_all().await;
        assert_eq!(health(&registry, "a"), Health::Up, "two failures < fall 3");
        assert_eq!(monitor.record("a").unwrap().failures, 2);
        fake.fail("a", false);
        monitor.check_all().await; // a success resets the failure count
        fake.fail("a", true);
        monitor.check_all().await;
        monitor.check_all().await;
        assert_eq!(health(&registry, "a"), Health::Up);
        monitor.check_all().await;
        assert_eq!(health(&registry, "a"), Health::Down);
        assert_eq!(health(&registry, "b"), Health::Up);
        let record = monitor.record("a").unwrap();
        assert_eq!(record.last_error.as_deref(), Some("connection refused"));
        assert_eq!(record.checks, 6);

        fake.fail("a", false);
        monitor.check_all().await;
        assert_eq!(health(&registry, "a"), Health::Down, "one success < rise 2");
        monitor.check_all().await;
        assert_eq!(health(&registry, "a"), Health::Up);
        assert_eq!(monitor.record("a").unwrap().last_error, None);
    }

    #[tokio::test(start_paused = true)]
    async fn draining_is_never_changed_by_checks_but_checks_are_recorded() {
        let (registry, fake, monitor) = setup(1, 1);
        registry.set_health("a", Health::Draining).unwrap();
        fake.fail("a", true);
        monitor.check_all().await;
        assert_eq!(health(&registry, "a"), Health::Draining);
        assert_eq!(monitor.record("a").unwrap().failures, 1);
        monitor.report_failure("a", "refused");
        fake.fail("a", false);
        monitor.check_all().await;
        assert_eq!(health(&registry, "a"), Health::Draining);
        assert_eq!(monitor.record("a").unwrap().successes, 1);
        // Undrained by the operator, the backend is checked as usual again.
        registry.set_health("a", Health::Up).unwrap();
        fake.fail("a", true);
        monitor.check_all().await;
        assert_eq!(health(&registry, "a"), Health::Down);
    }

    #[tokio::test(start_paused = true)]
    async fn passive_reports_count_like_checks() {
        let (registry, _fake, monitor) = setup(2, 2);
        monitor.report_failure("b", "connect refused");
        assert_eq!(health(&registry, "b"), Health::Up);
        monitor.report_failure("b", "connect refused");
        assert_eq!(health(&registry, "b"), Health::Down);
        assert_eq!(
            monitor.record("b").unwrap().checks,
            0,
            "passive reports are no checks"
        );
        // One passive success plus one passing check bring it back.
        monitor.report_success("b");
        assert_eq!(health(&registry, "b"), Health::Down);
        monitor.check_all().await;
        assert_eq!(health(&registry, "b"), Health::Up);
        // Unknown ids are ignored.
        monitor.report_failure("zz", "x");
        monitor.report_success("zz");
        assert!(monitor.record("zz").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_check_fails_after_the_timeout() {
        let (registry, fake, monitor) = setup(1, 1);
        fake.hang.store(true, Ordering::SeqCst);
        let started = tokio::time::Instant::now();
        monitor.check_all().await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(health(&registry, "a"), Health::Down);
        assert_eq!(health(&registry, "b"), Health::Down);
        let error = monitor.record("a").unwrap().last_error.unwrap();
        assert!(error.contains("timed out"), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn spawned_monitor_checks_every_interval_and_stops_when_dropped() {
        let (registry, fake, monitor) = setup(1, 1);
        let handle = monitor.spawn();
        // The first round runs at once.
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
        fake.fail("b", true);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(fake.calls.load(Ordering::SeqCst), 4);
        assert_eq!(health(&registry, "b"), Health::Down);
        fake.fail("b", false);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(health(&registry, "b"), Health::Up);
        assert_eq!(fake.calls.load(Ordering::SeqCst), 6);
        handle.stop();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(fake.calls.load(Ordering::SeqCst), 6, "no checks after stop");
    }

    #[test]
    fn thresholds_below_one_count_as_one() {
        let registry = Registry::new(vec![Backend::new("a", "127.0.0.1:1")]).unwrap();
        let settings = HealthSettings {
            rise: 0,
            fall: 0,
            ..HealthSettings::default()
        };
        let monitor = HealthMonitor::new(&registry, Arc::new(Fake::default()), settings);
        assert_eq!(monitor.settings().rise, 1);
        assert_eq!(monitor.settings().fall, 1);
        monitor.report_failure("a", "x");
        assert_eq!(registry.state("a").unwrap().health(), Health::Down);
    }
}
