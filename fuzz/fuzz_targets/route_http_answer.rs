//! The nginx auth-service answer parser (`HttpAuthDirectory::parse_response`) on arbitrary
//! bytes: never panics, answers only with a complete head, an HTTP/1.x 2xx status and an
//! `Auth-Status`, routes only to a configured backend that `Auth-Server` names, and ignores
//! the body.
#![no_main]

#[path = "../checks/route.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::check_http_answer(data);
});
