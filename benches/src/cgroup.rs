//! A CPU quota for one process: a cgroup of its own with a CFS bandwidth limit, so that a
//! scenario can give the proxy a fixed share of a core per worker thread and keep the
//! rest of the machine for the load generator and Dovecot.
//!
//! Both cgroup layouts are handled: the unified hierarchy (v2, `cpu.max`, the `cpu`
//! controller enabled for the root's children) and the v1 `cpu` controller
//! (`cpu.cfs_period_us` / `cpu.cfs_quota_us`). The group is made under the cgroup root,
//! which needs root; on v2 this enables the `cpu` controller for the root's children
//! (systemd has it on already) and leaves it on. Without either, the scenario says so and
//! runs without the quota.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The kernel's smallest CFS period and quota.
const MIN_US: u64 = 1_000;
/// The kernel's largest CFS period.
const MAX_PERIOD_US: u64 = 1_000_000;

/// Where the quota is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `/sys/fs/cgroup/<group>/cpu.max`.
    Unified,
    /// `/sys/fs/cgroup/cpu/<group>/cpu.cfs_quota_us`.
    V1,
}

/// A cgroup made for one process; removed when dropped (after the process has gone).
#[derive(Debug)]
pub struct CpuQuota {
    dir: PathBuf,
    layout: Layout,
    limit: Limit,
}

/// A quota the kernel takes: `quota_us` of CPU time in every `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    quota_us: u64,
    period_us: u64,
}

/// How often the group's processes were held back, between two readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Throttling {
    /// CFS periods in which the group ran.
    pub periods: u64,
    /// Of those, the periods in which it used up its quota and waited.
    pub throttled: u64,
}

impl Throttling {
    /// The share of periods in which the quota ran out (0 to 1), when any period passed.
    pub fn share(self) -> Option<f64> {
        (self.periods > 0).then(|| self.throttled as f64 / self.periods as f64)
    }

    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: Throttling) -> Throttling {
        Throttling {
            periods: self.periods.saturating_sub(earlier.periods),
            throttled: self.throttled.saturating_sub(earlier.throttled),
        }
    }
}

impl CpuQuota {
    /// A new cgroup limited to `cores` cores' worth of CPU time (over all its threads) in
    /// every CFS period of `period`.
    pub fn create(cores: f64, period: Duration) -> Result<CpuQuota, String> {
        let limit = Self::check(cores, period)?;
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "loadbench-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let (dir, layout) = locate(&name)?;
        fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let quota = CpuQuota { dir, layout, limit };
        quota.set_limit()?;
        Ok(quota)
    }

    /// Whether the kernel takes `cores` cores per `period`; the limit in µs when it does.
    pub fn check(cores: f64, period: Duration) -> Result<Limit, String> {
        if !(cores.is_finite() && cores > 0.0) {
            return Err(format!("a CPU quota of {cores} cores"));
        }
        let period_us = u64::try_from(period.as_micros()).unwrap_or(u64::MAX);
        if !(MIN_US..=MAX_PERIOD_US).contains(&period_us) {
            return Err(format!("a CFS period of {period:?} (1 ms to 1 s)"));
        }
        Ok(Limit {
            quota_us: quota_us(cores, period_us)?,
            period_us,
        })
    }

    fn set_limit(&self) -> Result<(), String> {
        let Limit {
            quota_us,
            period_us,
        } = self.limit;
        match self.layout {
            Layout::Unified => write(
                &self.dir.join("cpu.max"),
                &format!("{quota_us} {period_us}"),
            ),
            Layout::V1 => {
                write(&self.dir.join("cpu.cfs_period_us"), &period_us.to_string())?;
                write(&self.dir.join("cpu.cfs_quota_us"), &quota_us.to_string())
            }
        }
    }

    /// Moves process `pid` (all its threads) into the group.
    pub fn add(&self, pid: u32) -> Result<(), String> {
        write(&self.dir.join("cgroup.procs"), &pid.to_string())
    }

    /// The group's throttling counters so far (`cpu.stat`).
    pub fn throttling(&self) -> Option<Throttling> {
        let text = fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
        let field = |key: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        };
        Some(Throttling {
            periods: field("nr_periods")?,
            throttled: field("nr_throttled")?,
        })
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        // The process was killed and reaped before this drops; its threads may take a
        // moment to leave the group.
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "loadbench: could not remove the cgroup {}",
            self.dir.display()
        );
    }
}

/// Removes the groups that earlier loadbench processes made and left behind (killed before
/// their quotas dropped): `loadbench-<pid>-<n>` under either layout's root whose process is
/// gone. The kernel refuses to remove a group that still holds a process. Returns how many
/// went.
pub fn remove_stale() -> usize {
    let mut removed = 0;
    for parent in [Path::new("/sys/fs/cgroup"), Path::new("/sys/fs/cgroup/cpu")] {
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(owner) else {
                continue;
            };
            let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
            if !alive && fs::remove_dir(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// The loadbench process a group called `name` was made by (`loadbench-<pid>-<n>`).
fn owner(name: &str) -> Option<u32> {
    let (pid, n) = name.strip_prefix("loadbench-")?.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// The quota for `cores` cores in a period of `period_us`, in µs. Refused under the
/// kernel's smallest quota: rounding up would give more CPU than asked for.
fn quota_us(cores: f64, period_us: u64) -> Result<u64, String> {
    let quota = (cores * period_us as f64).round();
    if quota < MIN_US as f64 {
        return Err(format!(
            "{cores} cores of a {period_us} µs period is under the kernel's smallest quota \
             ({MIN_US} µs): use a longer period"
        ));
    }
    Ok(quota as u64)
}

/// The directory for a new group called `name`, in whichever layout has the `cpu`
/// controller.
fn locate(name: &str) -> Result<(PathBuf, Layout), String> {
    let root = Path::new("/sys/fs/cgroup");
    let controllers = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "cpu") {
        // Enable the controller for the root's children (already on under systemd).
        let subtree = root.join("cgroup.subtree_control");
        let enabled = fs::read_to_string(&subtree).unwrap_or_default();
        if !enabled.split_whitespace().any(|c| c == "cpu") {
            write(&subtree, "+cpu")?;
        }
        return Ok((root.join(name), Layout::Unified));
    }
    let v1 = root.join("cpu");
    if v1.join("cpu.cfs_quota_us").exists() {
        return Ok((v1.join(name), Layout::V1));
    }
    Err("no cgroup with the cpu controller under /sys/fs/cgroup".to_owned())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("write {text:?} to {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loadbench_groups_have_an_owner() {
        assert_eq!(owner("loadbench-4242-0"), Some(4242));
        assert_eq!(owner("loadbench-4242-17"), Some(4242));
        for other in [
            "loadbench-4242",
            "loadbench-x-0",
            "loadbench-4242-x",
            "system.slice",
            "user-4242-0",
        ] {
            assert_eq!(owner(other), None, "{other}");
        }
    }

    #[test]
    fn throttling_share_and_difference() {
        let a = Throttling {
            periods: 100,
            throttled: 40,
        };
        let b = Throttling {
            periods: 300,
            throttled: 220,
        };
        assert_eq!(
            b.since(a),
            Throttling {
                periods: 200,
                throttled: 180
            }
        );
        assert_eq!(b.since(a).share(), Some(0.9));
        assert_eq!(Throttling::default().share(), None);
    }

    #[test]
    fn a_quota_needs_a_positive_number_of_cores_and_a_period_the_kernel_takes() {
        let period = Duration::from_millis(20);
        for cores in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(CpuQuota::create(cores, period).is_err(), "{cores}");
        }
        for period in [Duration::from_micros(999), Duration::from_secs(2)] {
            assert!(CpuQuota::create(0.5, period).is_err(), "{period:?}");
        }
        // 0.15 cores of 5 ms would be 750 µs: refused, not rounded up to 0.2 cores.
        assert!(CpuQuota::create(0.15, Duration::from_millis(5)).is_err());
        assert_eq!(quota_us(0.15, 5_000).ok(), None);
        assert_eq!(quota_us(0.2, 5_000), Ok(1_000));
        assert_eq!(quota_us(0.15, 100_000), Ok(15_000));
        assert_eq!(quota_us(2.0, 100_000), Ok(200_000));
    }
}
