//! A global allocator that counts live heap bytes, in all and per allocation size, for the
//! heap-budget tests. Included with `#[path]` by those test binaries only (a binary has one
//! global allocator, and every test in it is counted together).
//!
//! `unsafe` is allowed here only: a `GlobalAlloc` cannot be written without it, and it only
//! forwards to the system allocator.
#![allow(unsafe_code, dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

/// Sizes counted one by one up to this; larger allocations share the last slot.
pub const SIZES: usize = 65_536;
/// Live heap bytes.
pub static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Live allocations per size.
pub static BY_SIZE: [AtomicIsize; SIZES] = [const { AtomicIsize::new(0) }; SIZES];

pub struct Counting;

fn count(size: usize, delta: isize) {
    LIVE.fetch_add(delta * size as isize, Ordering::Relaxed);
    BY_SIZE[size.min(SIZES - 1)].fetch_add(delta, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(layout.size(), -1);
        // SAFETY: `ptr` came from `System` with this layout (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(layout.size(), -1);
        count(new_size, 1);
        // SAFETY: as for `dealloc`; the new size is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Live heap bytes now.
pub fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Live allocations per size now.
pub fn sizes() -> Vec<isize> {
    BY_SIZE.iter().map(|a| a.load(Ordering::Relaxed)).collect()
}

/// The sizes whose count grew by at least `n / 2` since `before`, as `"size B x per-n"`.
pub fn grown(before: &[isize], n: usize) -> Vec<String> {
    BY_SIZE
        .iter()
        .zip(before)
        .enumerate()
        .filter_map(|(size, (now, then))| {
            let d = now.load(Ordering::Relaxed) - then;
            (d >= n as isize / 2).then(|| format!("{size} B x {:.1}", d as f64 / n as f64))
        })
        .collect()
}
