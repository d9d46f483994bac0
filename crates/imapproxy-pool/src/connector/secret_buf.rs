//! A byte buffer for commands that carry a password or SASL data.

use base64::Engine as _;
use zeroize::Zeroizing;

/// Bytes that include a secret (a `LOGIN` command, SASL `PLAIN` data and its base64): zeroed
/// when dropped, and never left behind by a reallocation — when it must grow, the contents
/// move to a new allocation and the old one is zeroed, which `Vec` alone would not do.
pub(super) struct SecretBuf(Zeroizing<Vec<u8>>);

impl SecretBuf {
    /// An empty buffer with room for `capacity` bytes; size it for the whole command so that
    /// it never has to grow.
    pub(super) fn with_capacity(capacity: usize) -> Self {
        Self(Zeroizing::new(Vec::with_capacity(capacity)))
    }

    /// Makes room for `more` bytes without leaving a copy behind.
    fn reserve(&mut self, more: usize) {
        let need = self.0.len() + more;
        if need > self.0.capacity() {
            let mut grown = Zeroizing::new(Vec::with_capacity(need.max(2 * self.0.capacity())));
            grown.extend_from_slice(&self.0);
            // The old allocation is zeroed as it drops.
            self.0 = grown;
        }
    }

    pub(super) fn push(&mut self, b: u8) {
        self.extend(&[b]);
    }

    pub(super) fn extend(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        self.0.extend_from_slice(bytes);
    }

    /// Appends the base64 of `data` (RFC 4648 §4, padded), encoded in place: no intermediate
    /// `String` holds the encoded secret.
    pub(super) fn extend_base64(&mut self, data: &[u8]) {
        let engine = &base64::engine::general_purpose::STANDARD;
        let Some(n) = base64::encoded_len(data.len(), true) else {
            // Past usize::MAX / 4 * 3: no such secret fits in memory.
            return;
        };
        self.reserve(n);
        let at = self.0.len();
        self.0.resize(at + n, 0);
        // The room is exactly what the encoding needs, so this cannot fail.
        let written = engine.encode_slice(data, &mut self.0[at..]).unwrap_or(0);
        self.0.truncate(at + written);
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        &self.0
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_in_place_matches_the_engine() {
        for data in [&b""[..], b"a", b"ab", b"abc", b"\0user\0pass word"] {
            let mut b = SecretBuf::with_capacity(0);
            b.extend(b"x ");
            b.extend_base64(data);
            let want = format!(
                "x {}",
                base64::engine::general_purpose::STANDARD.encode(data)
            );
            assert_eq!(b.as_slice(), want.as_bytes());
        }
    }

    #[test]
    fn growing_keeps_the_contents() {
        let mut b = SecretBuf::with_capacity(2);
        for i in 0..100u8 {
            b.push(i);
        }
        assert_eq!(b.as_slice(), (0..100).collect::<Vec<u8>>());
        assert!(b.capacity() >= 100);
    }
}
