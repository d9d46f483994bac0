//! The pre-auth session state machine (the real `serve` over loopback TCP) fed arbitrary
//! client bytes against an in-process fake backend: never panics, output bounded by the
//! input, and the connection is closed within a deadline after the client's EOF.
#![no_main]

#[path = "../checks/session.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::check_session(data);
});
