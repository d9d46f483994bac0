//! Static map files (`user backend`, `@domain backend`, `* backend`) on arbitrary bytes:
//! never panics, accepts and rejects exactly what a model of the format does, and every line
//! of a map that parses is found by the lookups.
#![no_main]

#[path = "../checks/route.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::check_static_map(data);
});
