//! How a listener or a backend speaks TLS.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// TLS mode of a listener or a backend connection.
///
/// Parsed from the configuration strings `"none"`, `"starttls"` and `"implicit"`
/// (case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TlsMode {
    /// Plain TCP; no TLS at all.
    None,
    /// Plain TCP first, upgraded by the IMAP `STARTTLS` command (RFC 9051 §6.2.1).
    #[default]
    StartTls,
    /// TLS from the first byte (RFC 8314 §3.3, port 993).
    Implicit,
}

impl TlsMode {
    /// The configuration spelling of this mode.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::StartTls => "starttls",
            Self::Implicit => "implicit",
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TlsMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "starttls" => Ok(Self::StartTls),
            "implicit" => Ok(Self::Implicit),
            _ => Err(Error::UnknownTlsMode(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_every_mode() {
        for mode in [TlsMode::None, TlsMode::StartTls, TlsMode::Implicit] {
            assert_eq!(mode.to_string().parse::<TlsMode>().ok(), Some(mode));
        }
        assert_eq!("STARTTLS".parse::<TlsMode>().ok(), Some(TlsMode::StartTls));
        assert_eq!(
            " Implicit ".parse::<TlsMode>().ok(),
            Some(TlsMode::Implicit)
        );
    }

    #[test]
    fn rejects_unknown_modes() {
        assert!("tls".parse::<TlsMode>().is_err());
        assert!("".parse::<TlsMode>().is_err());
    }
}
