//! The crate's single error type.

/// Everything that can go wrong in this crate.
///
/// Framing and pre-auth parsing never fail with an `Error`: malformed network input becomes a
/// frame or an event (e.g. [`PreAuthEvent::Bad`](crate::preauth::PreAuthEvent::Bad)). Errors are
/// for values a caller constructs or asks to be validated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tag was empty, too long for the inline [`Tag`](crate::Tag), or contained a byte that
    /// RFC 9051 §9 forbids in a tag (anything that is not an ASTRING-CHAR, or `+`).
    #[error("invalid IMAP tag: {0}")]
    InvalidTag(&'static str),
    /// A SASL PLAIN message (RFC 4616 §2) did not have the shape
    /// `[authzid] NUL authcid NUL passwd` with UTF-8 identities and a non-empty password.
    #[error("malformed SASL PLAIN message: {0}")]
    SaslPlain(&'static str),
}
