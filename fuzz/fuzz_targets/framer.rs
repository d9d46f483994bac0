//! Relay framer, both directions: never panics, split points do not change the frames, and
//! the frames never claim more bytes than were fed.
#![no_main]

#[path = "../checks/mod.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::check_framer(data, &checks::cuts_for(data));
});
