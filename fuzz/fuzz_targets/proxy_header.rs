//! PROXY protocol v1/v2 header parsing on arbitrary bytes: never panics, never reads past a
//! valid header, and headers built from random addresses round-trip.
#![no_main]

#[path = "../checks/session.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::check_proxy_header(data);
});
