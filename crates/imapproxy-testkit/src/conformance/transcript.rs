//! What one run of a script recorded, connection by connection.

use super::{
    LOGIN_TAG, LOGOUT_TAG, contains_ci, dropped_capability, find_ci, is_tagged_status,
    render_lines, starts_with_ci,
};

/// One thing that happened on a connection, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Bytes the script wrote (before `${var}` substitution).
    Sent(Vec<u8>),
    /// One complete response (a line, with any literals inlined, CRLF included).
    Received(Vec<u8>),
    /// The run stopped here: a timeout, a closed connection, a missing capture.
    Failed(String),
}

/// Everything one connection saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transcript {
    /// The greeting line.
    pub greeting: Vec<u8>,
    /// The responses to the runner's `LOGIN` (tagged reply last).
    pub login: Vec<Vec<u8>>,
    /// The script's part, from after the login reply to before `LOGOUT`.
    pub events: Vec<Event>,
    /// The responses to the runner's `LOGOUT` (empty when the run failed before it).
    pub logout: Vec<Vec<u8>>,
    /// Whether the server closed the connection after answering `LOGOUT`.
    pub closed_after_logout: bool,
}

impl Transcript {
    /// Whether the tagged reply to `LOGIN` was `OK`.
    pub fn logged_in(&self) -> bool {
        self.login
            .last()
            .is_some_and(|l| is_tagged_status(l, LOGIN_TAG, b"OK"))
    }

    /// The capabilities in the `[CAPABILITY …]` code of the tagged login reply, without those
    /// the proxy may hide ([`dropped_capability`]), in the order sent; `None` without a code.
    pub fn login_capabilities(&self) -> Option<Vec<String>> {
        let line = self.login.last()?;
        let start = find_ci(line, b"[CAPABILITY ")? + b"[CAPABILITY ".len();
        let rest = line.get(start..)?;
        let list = rest.get(..rest.iter().position(|&b| b == b']')?)?;
        Some(
            list.split(|&b| b == b' ')
                .filter(|c| !c.is_empty() && !dropped_capability(c))
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect(),
        )
    }

    /// Whether the login reply announced a reused backend session (`[XPROXYREUSE]`).
    pub fn reused(&self) -> bool {
        self.login.iter().any(|l| contains_ci(l, b"[XPROXYREUSE]"))
    }

    /// Why `LOGOUT` did not work as RFC 9051 §6.1.3 says (`* BYE`, tagged `OK`, then the
    /// server closes), or `None` when it did.
    pub fn logout_problem(&self) -> Option<String> {
        if self.logout.is_empty() {
            return Some("LOGOUT was not answered".into());
        }
        if !self.logout.iter().any(|l| starts_with_ci(l, b"* BYE")) {
            return Some(format!("no * BYE in {}", render_lines(&self.logout)));
        }
        if !self
            .logout
            .last()
            .is_some_and(|l| is_tagged_status(l, LOGOUT_TAG, b"OK"))
        {
            return Some(format!(
                "LOGOUT not answered OK: {}",
                render_lines(&self.logout)
            ));
        }
        (!self.closed_after_logout).then(|| "the connection stayed open after LOGOUT".to_owned())
    }

    /// The first failure event, if the script did not run to its end.
    pub fn failure(&self) -> Option<&str> {
        self.events.iter().find_map(|e| match e {
            Event::Failed(why) => Some(why.as_str()),
            _ => None,
        })
    }
}

/// One run of a script: a transcript per connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Run {
    /// The script's name.
    pub script: String,
    /// Where it ran (for reports).
    pub label: String,
    /// One transcript per connection, in connection order.
    pub connections: Vec<Transcript>,
}

impl Run {
    /// The first failure of any connection, with the connection's index.
    pub fn failure(&self) -> Option<(usize, &str)> {
        self.connections
            .iter()
            .enumerate()
            .find_map(|(i, t)| t.failure().map(|f| (i, f)))
    }

    /// How many connections' logins announced a reused backend session.
    pub fn reused(&self) -> usize {
        self.connections.iter().filter(|t| t.reused()).count()
    }

    /// Every connection whose `LOGOUT` did not work, with the reason. Empty when the run
    /// failed before it logged out (that failure is the problem to report).
    pub fn logout_problems(&self) -> Vec<String> {
        if self.failure().is_some() {
            return Vec::new();
        }
        self.connections
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                t.logout_problem()
                    .map(|p| format!("{} ({}) connection {i}: {p}", self.script, self.label))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logout_needs_bye_tagged_ok_and_close_and_login_capabilities_are_filtered() {
        assert!(is_tagged_status(b"L0 OK Logged in\r\n", "L0", b"OK"));
        assert!(!is_tagged_status(b"L0 OKAY\r\n", "L0", b"OK"));
        let mut t = Transcript {
            logout: vec![b"* BYE bye\r\n".to_vec(), b"Z0 OK done\r\n".to_vec()],
            closed_after_logout: true,
            ..Transcript::default()
        };
        assert_eq!(t.logout_problem(), None);
        t.closed_after_logout = false;
        assert!(t.logout_problem().is_some());
        t.logout.remove(0);
        t.closed_after_logout = true;
        assert!(t.logout_problem().unwrap().contains("BYE"));
        t.login = vec![
            b"* OK [XPROXYREUSE] Reusing a cached session.\r\n".to_vec(),
            b"L0 OK [CAPABILITY IMAP4rev1 SASL-IR IDLE AUTH=PLAIN] Logged in\r\n".to_vec(),
        ];
        assert!(t.logged_in() && t.reused());
        assert_eq!(
            t.login_capabilities(),
            Some(vec!["IMAP4rev1".to_owned(), "IDLE".to_owned()])
        );
    }
}
