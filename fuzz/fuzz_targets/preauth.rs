//! Pre-auth parser on arbitrary bytes: never panics, never buffers more than its bound plus
//! one read, never prints a secret.
#![no_main]

#[path = "../checks/mod.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::check_preauth(data);
});
