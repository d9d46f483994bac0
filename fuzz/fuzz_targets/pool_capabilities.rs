//! Capability lists (`* CAPABILITY`, `[CAPABILITY ...]` codes) on arbitrary lines: the same
//! atoms as the codec reads, each found by `contains`, mechanisms exactly the `AUTH=` atoms,
//! and the list written back reads the same.
#![no_main]

#[path = "../checks/pool.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::check_capabilities(data);
});
