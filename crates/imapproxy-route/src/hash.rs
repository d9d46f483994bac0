//! A fixed, documented hash for routing decisions that must agree across builds, hosts and
//! Rust releases: every proxy of a fleet must send a user to the same backend.
//!
//! `std`'s `DefaultHasher` is explicitly allowed to change algorithm between releases, so it
//! is never used here. FNV-1a 64 is tiny and fully specified but mixes its last bytes poorly;
//! its output therefore goes through the SplitMix64 finalizer, which spreads every input bit
//! over the whole word. Both are pinned by known-answer tests below.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bits.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME)
    })
}

/// The SplitMix64 finalizer: a bijection with full avalanche.
pub(crate) const fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The rendezvous (highest-random-weight) score of `backend` for `user`.
///
/// Hashing the two names separately and combining them, rather than hashing `user + backend`,
/// avoids ambiguity between ("ab", "c") and ("a", "bc").
pub(crate) fn rendezvous_score(user: &str, backend: &str) -> u64 {
    mix64(fnv1a64(user.as_bytes()) ^ mix64(fnv1a64(backend.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_known_answers() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn mix64_known_answers() {
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
    }

    #[test]
    fn rendezvous_scores_are_pinned() {
        // If this changes, every user of every fleet moves: never change it casually.
        assert_eq!(rendezvous_score("alice", "mail1"), PINNED_ALICE_MAIL1);
    }

    const PINNED_ALICE_MAIL1: u64 = 0xb4e6_2072_f51b_11c9;
}
