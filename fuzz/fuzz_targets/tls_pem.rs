//! PEM loading of certificates and private keys on arbitrary bytes: never panics, garbage
//! never yields a key, certificates and keys come only from their own sections and write
//! back to the same DER.
#![no_main]

#[path = "../checks/tls.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::check_pem(data);
});
