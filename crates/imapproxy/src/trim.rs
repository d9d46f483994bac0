//! Giving the system back the heap pages the allocator keeps after a burst (glibc only).
//!
//! glibc returns freed memory to the system only from the top of an arena. What a burst
//! freed below memory that stays in use (a flood of connections that went away, the relay's
//! read buffers, each login's state) stays resident for good, and a proxy that once saw a
//! login storm keeps that size. So once a second this looks at the process's resident size;
//! when it held still since the previous look (no burst under way), it asks glibc how much it
//! holds free, and when the resident size grew, or the free memory did, since the last trim,
//! it calls `malloc_trim(0)`: each arena's free pages go back with `madvise(MADV_DONTNEED)`,
//! live allocations untouched. Waiting for a still moment keeps the trim (a walk of the arenas
//! holding their locks: 14 to 120 µs at 10,000 sessions, measured) out of busy moments
//! and off memory about to be reused; [`MIN_INTERVAL`] bounds how often it runs, and a trim
//! that gave back little doubles the growth the next one waits for. HAProxy calls
//! `malloc_trim` too, when it releases its pools; `[server] heap_trim = false` turns this off,
//! as `no-memory-trimming` does there.
//!
//! Two glibc calls that take no pointers: with `heap.rs`'s `getauxval`, the binary's only
//! `unsafe`.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use tracing::{debug, warn};

/// How often the resident size is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Growth of the allocator's free memory since the last trim worth a trim (memory freed:
/// sessions that ended, a burst that passed), and of the resident size at first. The latter
/// doubles, up to [`GROWTH_MAX`], after each trim that gave back less than a quarter of it
/// (sessions added slowly grow the resident size with nothing to give back), and halves again
/// every [`DECAY_LOOKS`] looks without a trim.
const GROWTH_MIN: u64 = 64 * 1024;
const GROWTH_MAX: u64 = 8 * 1024 * 1024;
const DECAY_LOOKS: u32 = 300;
/// A change of the resident size between two looks below which the process is still, or a
/// thousandth of the resident size if more.
const STILL_MIN: u64 = 16 * 1024;
/// Free memory held by the allocator below which a trim is not worth its walk of the arenas.
const FREE_MIN: u64 = 128 * 1024;
/// Looks between two trims at least.
const MIN_INTERVAL: u32 = 5;

/// When to trim, from the resident size and the allocator's free memory.
#[derive(Debug)]
struct Watch {
    /// The resident size after the last trim, or the smallest seen since.
    rss_base: u64,
    /// The allocator's free memory at the last trim, or the least seen since (before the
    /// first trim: since the first look at it).
    free_base: u64,
    /// Growth of the resident size that makes a trim due.
    growth: u64,
    previous: u64,
    /// Looks since the last trim.
    since_trim: u32,
}

impl Watch {
    fn new(resident: u64) -> Self {
        Self {
            rss_base: resident,
            free_base: u64::MAX,
            growth: GROWTH_MIN,
            previous: resident,
            since_trim: MIN_INTERVAL,
        }
    }

    /// One look at the resident size: true when it held still since the previous look and
    /// the last trim is [`MIN_INTERVAL`] looks old (then ask [`Watch::due`]).
    fn still(&mut self, now: u64) -> bool {
        let still = now.abs_diff(self.previous) < STILL_MIN.max(now / 1000);
        self.previous = now;
        self.since_trim = self.since_trim.saturating_add(1);
        if self.since_trim % DECAY_LOOKS == 0 {
            self.growth = (self.growth / 2).max(GROWTH_MIN);
        }
        still && self.since_trim >= MIN_INTERVAL
    }

    /// Whether to trim, the allocator holding `free` bytes free: the free memory grew by
    /// [`GROWTH_MIN`], or the resident size by `growth`, since the last trim (or since their
    /// lowest since).
    fn due(&mut self, now: u64, free: u64) -> bool {
        self.rss_base = self.rss_base.min(now);
        self.free_base = self.free_base.min(free);
        free >= FREE_MIN
            && (free.saturating_sub(self.free_base) >= GROWTH_MIN
                || now.saturating_sub(self.rss_base) >= self.growth)
    }

    /// A trim took the resident size from `before` to `after`: growth counts from here, and
    /// the next trim waits for twice the resident growth if this one gave back little.
    fn trimmed(&mut self, before: u64, after: u64, free: u64) {
        self.growth = if before.saturating_sub(after) < self.growth / 4 {
            self.growth.saturating_mul(2).min(GROWTH_MAX)
        } else {
            GROWTH_MIN
        };
        self.rss_base = after;
        self.free_base = free;
        self.previous = after;
        self.since_trim = 0;
    }
}

/// What the allocator reports, in bytes.
#[derive(Debug, Clone, Copy)]
struct HeapUse {
    /// Allocated and in use.
    in_use: u64,
    /// Held free by the allocator, resident or not.
    free: u64,
}

fn heap_use() -> HeapUse {
    // SAFETY: `mallinfo2` (glibc 2.33) takes no arguments and returns a plain struct by
    // value; glibc documents it MT-Safe (it locks each arena in turn while it sums them).
    let info = unsafe { libc::mallinfo2() };
    HeapUse {
        in_use: info.uordblks as u64,
        free: info.fordblks as u64,
    }
}

/// `malloc_trim(0)`, timed.
fn trim() -> Duration {
    let started = std::time::Instant::now();
    // SAFETY: `malloc_trim` takes no pointers and is documented MT-Safe: it locks each arena
    // in turn and gives back only pages of free chunks, which no allocation uses. Its result
    // (whether it called `madvise` at all) says nothing of what the resident size did.
    let _ = unsafe { libc::malloc_trim(0) };
    started.elapsed()
}

/// `/proc/self/statm`, opened once (a flood that exhausts descriptors must not stop it) and
/// read again from the start at each look.
struct Statm {
    file: File,
    page: u64,
    text: String,
}

impl Statm {
    fn open() -> std::io::Result<Self> {
        Ok(Self {
            file: File::open("/proc/self/statm")?,
            page: rustix::param::page_size() as u64,
            text: String::with_capacity(64),
        })
    }

    /// The process's resident size in bytes.
    fn resident(&mut self) -> Option<u64> {
        self.text.clear();
        self.file.seek(SeekFrom::Start(0)).ok()?;
        self.file.read_to_string(&mut self.text).ok()?;
        let pages: u64 = self.text.split_whitespace().nth(1)?.parse().ok()?;
        pages.checked_mul(self.page)
    }
}

/// The trimming thread's stack: it formats a debug line at most, and glibc's walk of the
/// arenas needs little.
const STACK: usize = 128 * 1024;

/// Starts the thread that trims the heap when [`Watch`] says so, until the process ends. A
/// thread of its own, started with the process: the look and the trim walk the arenas
/// holding their locks, which no runtime worker should wait for, and a blocking thread
/// started on demand would pay its stack (and tokio's pool its threads) in the middle of
/// the burst that is being measured.
pub(crate) fn start() {
    let spawned = std::thread::Builder::new()
        .name("heap-trim".into())
        .stack_size(STACK)
        .spawn(run);
    if let Err(e) = spawned {
        warn!(error = %e, "heap trimming off: cannot start its thread");
    }
}

fn run() {
    let (mut statm, start) = match Statm::open() {
        Ok(mut statm) => match statm.resident() {
            Some(start) => (statm, start),
            None => {
                warn!("heap trimming off: /proc/self/statm unreadable");
                return;
            }
        },
        Err(e) => {
            warn!(error = %e, "heap trimming off: cannot open /proc/self/statm");
            return;
        }
    };
    let mut watch = Watch::new(start);
    loop {
        std::thread::sleep(CHECK_EVERY);
        // An unreadable look (should it happen) is skipped.
        let Some(now) = statm.resident() else {
            continue;
        };
        if !watch.still(now) {
            continue;
        }
        let heap = heap_use();
        if !watch.due(now, heap.free) {
            continue;
        }
        let took = trim();
        let after = statm.resident().unwrap_or(now);
        debug!(
            resident_before = now,
            released = now.saturating_sub(after),
            in_use = heap.in_use,
            free = heap.free,
            took_us = took.as_micros() as u64,
            "heap trimmed"
        );
        watch.trimmed(now, after, heap.free);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1024;

    /// Looks until the interval since the last trim is over, the resident size at `rss`.
    fn wait_out(w: &mut Watch, rss: u64) {
        for _ in 0..MIN_INTERVAL {
            w.still(rss);
        }
    }

    #[test]
    fn trims_once_a_burst_is_over() {
        let mut w = Watch::new(8000 * K);
        // A burst: growing at every look, nothing asked of the allocator.
        assert!(!w.still(8100 * K));
        assert!(!w.still(8300 * K));
        // Over: still, 300 KiB above the start, 200 KiB free.
        assert!(w.still(8304 * K));
        assert!(w.due(8304 * K, 200 * K));
        w.trimmed(8304 * K, 8150 * K, 200 * K);
        // Steady afterwards: nothing, however long.
        let mut asked = 0;
        for _ in 0..20 {
            if w.still(8150 * K) {
                asked += 1;
                assert!(!w.due(8150 * K, 200 * K));
            }
        }
        assert!(asked > 10, "asked {asked} times");
    }

    #[test]
    fn free_memory_at_start_alone_does_not_trim() {
        let mut w = Watch::new(8000 * K);
        wait_out(&mut w, 8000 * K);
        assert!(w.still(8000 * K));
        assert!(
            !w.due(8000 * K, 500 * K),
            "free since start, not freed since"
        );
        assert!(w.still(8000 * K));
        assert!(!w.due(8000 * K, 520 * K));
    }

    #[test]
    fn trims_when_sessions_end_without_growth() {
        // A flood held still and trimmed (nothing given back: its memory is in use), then
        // gone: the resident size does not move, the allocator's free memory does.
        let mut w = Watch::new(8000 * K);
        w.still(12000 * K);
        assert!(w.still(12000 * K));
        assert!(w.due(12000 * K, 200 * K));
        w.trimmed(12000 * K, 12000 * K, 200 * K);
        wait_out(&mut w, 12000 * K);
        assert!(w.still(12000 * K));
        assert!(
            !w.due(12000 * K, 240 * K),
            "40 KiB freed is under GROWTH_MIN"
        );
        assert!(w.still(12000 * K));
        assert!(w.due(12000 * K, 4000 * K), "4 MB freed");
        // However slow growth had made the resident trigger.
        w.growth = GROWTH_MAX;
        w.trimmed(12000 * K, 8000 * K, 4000 * K);
        w.growth = GROWTH_MAX;
        wait_out(&mut w, 8000 * K);
        assert!(w.still(8000 * K));
        assert!(w.due(8000 * K, 4100 * K), "100 KiB freed");
    }

    #[test]
    fn the_resident_trigger_decays_back() {
        let mut w = Watch::new(8000 * K);
        w.growth = GROWTH_MAX;
        w.trimmed(8000 * K, 8000 * K, 200 * K);
        assert_eq!(
            w.growth, GROWTH_MAX,
            "gave back nothing: doubled, at most the cap"
        );
        for _ in 0..(DECAY_LOOKS * 7) {
            w.still(8000 * K);
        }
        assert_eq!(w.growth, GROWTH_MIN);
    }

    #[test]
    fn small_changes_and_busy_moments_do_not_trim() {
        let mut w = Watch::new(8000 * K);
        w.trimmed(8100 * K, 8000 * K, 300 * K);
        wait_out(&mut w, 8040 * K);
        assert!(
            !w.due(8040 * K, 340 * K),
            "40 KiB more of either is under GROWTH_MIN"
        );
        // Shrinks, then grows 70 KiB from the low point: counted from there.
        assert!(!w.still(7900 * K), "moving: not still");
        assert!(w.still(7900 * K));
        assert!(!w.due(7900 * K, 300 * K));
        assert!(!w.still(7970 * K), "moving: not still");
        assert!(w.still(7972 * K));
        assert!(w.due(7972 * K, 300 * K));
        w.trimmed(7972 * K, 7900 * K, 300 * K);
        // Right after a trim, a still moment is not asked about for MIN_INTERVAL looks.
        assert!(!w.still(8200 * K));
        assert!(!w.still(8200 * K));
        wait_out(&mut w, 8200 * K);
        assert!(w.still(8200 * K));
        assert!(w.due(8200 * K, 300 * K));
    }

    #[test]
    fn slow_growth_backs_off() {
        // Sessions added slowly (9 KiB a second: every look is still) with free memory that
        // trims cannot give back: the trims thin out instead of coming every few seconds.
        let mut w = Watch::new(8000 * K);
        let mut rss = 8000 * K;
        let mut trims = 0;
        for _ in 0..600 {
            rss += 9 * K;
            if w.still(rss) && w.due(rss, 300 * K) {
                trims += 1;
                w.trimmed(rss, rss, 300 * K);
            }
        }
        assert!(trims <= 8, "{trims} trims in 600 looks");
        // One that gives back a lot resets the growth it waits for.
        w.trimmed(rss, rss - 4000 * K, 300 * K);
        assert_eq!(w.growth, GROWTH_MIN);
    }
}
