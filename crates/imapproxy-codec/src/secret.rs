//! [`Secret`]: a value that never shows up in logs.

use core::fmt;

use zeroize::Zeroize;

/// Holds a credential (password, SASL response). `Debug` prints `Secret(..)` in every build,
/// unlike imap-codec's `Secret`, which shows its content in debug builds; the value is zeroed
/// when dropped. Compare exposed values with [`constant_time_eq`] when that matters.
///
/// ```
/// use imapproxy_codec::Secret;
/// let s = Secret::new(b"hunter2".to_vec());
/// assert_eq!(format!("{s:?}"), "Secret(..)");
/// assert_eq!(s.expose(), b"hunter2");
/// ```
#[derive(Clone, Default)]
pub struct Secret<T: Zeroize>(T);

impl<T: Zeroize> Secret<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret value. Do not log it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: Zeroize> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl<T: Zeroize> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Equality whose time depends only on the lengths, not on where the bytes differ: for
/// tokens and digests an attacker may probe byte by byte. Compare digests of equal length
/// (an HMAC of each side) when the length itself must stay hidden.
///
/// ```
/// use imapproxy_codec::constant_time_eq;
/// assert!(constant_time_eq(b"digest", b"digest"));
/// assert!(!constant_time_eq(b"digest", b"digesT"));
/// assert!(!constant_time_eq(b"digest", b"dig"));
/// ```
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .fold(0u8, |acc, (x, y)| acc | core::hint::black_box(x ^ y))
            == 0
}
