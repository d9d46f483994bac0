//! The connector's response reader on arbitrary backend bytes, driven as the connector drives
//! it (greeting, then responses to one tag): never panics, buffers no more than its bounds,
//! fails only with errors a backend can cause, and answers the same wherever the input is cut.
#![no_main]

#[path = "../checks/pool.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::check_response(data, &checks::cuts_for(data));
});
