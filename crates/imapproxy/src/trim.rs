//! Giving the system back the heap pages the allocator keeps after a burst (glibc only).
//!
//! glibc returns freed memory to the system only from the top of an arena. What a burst
//! freed below memory that stays in use (the relay's read buffers, each login's state, a few
//! KB more than the idle session it becomes) stays resident for good, and a proxy that once
//! saw a login storm keeps that size. So once a second this looks at the process's resident
//! size; when it grew since the last trim and then held still (the burst is over), and the
//! allocator holds free memory, it calls `malloc_trim(0)`: each arena's free pages go back
//! with `madvise(MADV_DONTNEED)`, live allocations untouched. HAProxy does the same when it
//! releases its pools. Waiting for the burst to end keeps the trim (a walk of the arenas
//! holding their locks, a few hundred µs) out of busy moments and off memory about to be
//! reused; in a steady state all it does is read `/proc/self/statm`.
//!
//! The binary's one `unsafe`: three libc calls that take no pointers.
#![allow(unsafe_code)]

use std::time::Duration;

use tracing::debug;

/// How often the resident size is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Growth of the resident size since the last trim worth a look at the allocator.
const GROWTH_MIN: u64 = 64 * 1024;
/// A change of the resident size between two looks below which the process is quiet.
const QUIET_MAX: u64 = 16 * 1024;
/// Free memory held by the allocator below which a trim is not worth its walk of the arenas
/// (glibc's own threshold for trimming an arena's top).
const FREE_MIN: u64 = 128 * 1024;

/// When to trim, from the resident sizes seen once per [`CHECK_EVERY`].
#[derive(Debug)]
struct Watch {
    /// The resident size after the last trim (or the smallest since).
    base: u64,
    previous: u64,
}

impl Watch {
    fn new(resident: u64) -> Self {
        Self {
            base: resident,
            previous: resident,
        }
    }

    /// True when the resident size grew by [`GROWTH_MIN`] since the last trim and held still
    /// since the previous look.
    fn look(&mut self, now: u64) -> bool {
        let quiet = now.abs_diff(self.previous) < QUIET_MAX;
        self.previous = now;
        // Shrunk (sessions ended, the kernel reclaimed): growth counts from here.
        self.base = self.base.min(now);
        quiet && now >= self.base + GROWTH_MIN
    }

    /// A trim was done, or not needed (the growth is memory in use): growth counts from `now`.
    fn settled(&mut self, now: u64) {
        self.base = now;
        self.previous = now;
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
    // SAFETY: `mallinfo2` takes no arguments and returns a plain struct by value; glibc takes
    // each arena's lock while it sums them.
    let info = unsafe { libc::mallinfo2() };
    HeapUse {
        in_use: info.uordblks as u64,
        free: info.fordblks as u64,
    }
}

fn trim() -> bool {
    // SAFETY: `malloc_trim` takes no pointers; glibc serialises it with every other allocator
    // call through the arenas' locks, and it only returns pages no allocation uses.
    unsafe { libc::malloc_trim(0) == 1 }
}

fn page_size() -> u64 {
    // SAFETY: `sysconf` takes a constant and reads a system setting.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// The process's resident size in bytes, from `/proc/self/statm` (in pages).
fn resident(page: u64) -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page)
}

/// Runs until aborted (or until `/proc/self/statm` cannot be read): trims the heap once the
/// resident size grew and held still, when the allocator holds [`FREE_MIN`] free.
pub(crate) async fn run() {
    let page = page_size();
    let Some(start) = resident(page) else { return };
    let mut watch = Watch::new(start);
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(now) = resident(page) else { return };
        if !watch.look(now) {
            continue;
        }
        let started = std::time::Instant::now();
        // Both walk the arenas holding their locks: on a blocking thread, not a worker.
        let Ok((heap, trimmed)) = tokio::task::spawn_blocking(|| {
            let heap = heap_use();
            (heap, heap.free >= FREE_MIN && trim())
        })
        .await
        else {
            return;
        };
        let after = resident(page).unwrap_or(now);
        debug!(
            resident_before = now,
            resident_after = after,
            in_use = heap.in_use,
            free = heap.free,
            trimmed,
            took_us = started.elapsed().as_micros() as u64,
            "heap trim"
        );
        watch.settled(after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1024;

    #[test]
    fn trims_once_growth_holds_still() {
        let mut w = Watch::new(8000 * K);
        // A burst: growing at every look.
        assert!(!w.look(8100 * K));
        assert!(!w.look(8300 * K));
        // Over: still, and 300 KiB above the start.
        assert!(w.look(8304 * K));
        w.settled(8150 * K);
        // Steady afterwards: nothing.
        assert!(!w.look(8150 * K));
        assert!(!w.look(8152 * K));
    }

    #[test]
    fn small_growth_and_shrinking_do_not_trim() {
        let mut w = Watch::new(8000 * K);
        assert!(!w.look(8040 * K));
        assert!(!w.look(8040 * K), "40 KiB is under GROWTH_MIN");
        // Shrinks, then grows 70 KiB from the low point: measured from there.
        assert!(!w.look(7900 * K));
        assert!(!w.look(7970 * K));
        assert!(w.look(7972 * K));
    }
}
