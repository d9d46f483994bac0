//! Keyed digests of credentials: the reuse key of an authenticated session.
//!
//! The pool never keeps a password to recognise a returning user; it keeps an HMAC-SHA256 of
//! the user name and password under a key drawn at start, and compares digests in constant
//! time. Nothing outside the process can compute or use it.

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::Error;

/// The per-process key.
pub(crate) struct DigestKey(hmac::Key);

/// A credential digest (HMAC-SHA256); comparable only through [`Digest::matches`]. The 32
/// bytes themselves, not ring's `Tag` (72 bytes, room for any algorithm): every pooled
/// session, and so every logged-in client, carries one.
#[derive(Clone, Copy)]
pub(crate) struct Digest([u8; DIGEST_LEN]);

const DIGEST_LEN: usize = 32;

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Digest(..)")
    }
}

impl DigestKey {
    pub(crate) fn random() -> Result<Self, Error> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| Error::NoRandomness)?;
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
    }

    pub(crate) fn digest(&self, user: &str, password: &[u8]) -> Digest {
        let mut ctx = hmac::Context::with_key(&self.0);
        // Length-prefix the user so that ("ab", "c") and ("a", "bc") differ.
        ctx.update(&(user.len() as u64).to_be_bytes());
        ctx.update(user.as_bytes());
        ctx.update(password);
        let tag = ctx.sign();
        let mut bytes = [0u8; DIGEST_LEN];
        // HMAC-SHA256 gives exactly 32 bytes.
        bytes.copy_from_slice(tag.as_ref());
        Digest(bytes)
    }
}

impl DigestKey {
    /// A digest no other checkout produces: for sessions without a password (SASL relayed
    /// to the backend), which must never be matched for reuse.
    pub(crate) fn unmatchable(&self, user: &str) -> Result<Digest, Error> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| Error::NoRandomness)?;
        Ok(self.digest(user, &bytes))
    }
}

impl Digest {
    /// Constant-time equality: the time taken does not depend on where the digests differ.
    pub(crate) fn matches(&self, other: &Digest) -> bool {
        imapproxy_codec::constant_time_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_credentials_match_and_others_do_not() {
        let key = DigestKey::random().unwrap();
        let a = key.digest("alice", b"secret");
        assert!(a.matches(&key.digest("alice", b"secret")));
        assert!(!a.matches(&key.digest("alice", b"secret2")));
        assert!(!a.matches(&key.digest("alicesecret", b"")));
        let other_key = DigestKey::random().unwrap();
        assert!(!a.matches(&other_key.digest("alice", b"secret")));
        assert_eq!(format!("{a:?}"), "Digest(..)");
    }
}
