//! What a client command does to the state of its connection, as a proxy that reuses or moves
//! backend connections must know it.
//!
//! The answer is an allowlist: a command leaves no connection state beyond the selected mailbox
//! only if its name is on the list *and* none of its arguments switches anything on. Everything
//! else — `ENABLE`, `NOTIFY`, `COMPRESS`, vendor commands, a command too long to inspect —
//! [taints](Effect::Taints) the connection. Arguments are read from the command's text outside
//! literals and quoted strings; a state-bearing word anywhere there (even where it is really a
//! mailbox name) taints, because a wrong "stateless" leaks state to the next user while a wrong
//! "tainted" only costs one backend login.
//!
//! ```
//! use imapproxy_codec::command::{Effect, Taint, inspect};
//! use imapproxy_codec::CommandName;
//!
//! let fetch = inspect(CommandName::UidFetch, Some(b"a UID FETCH 1:* (FLAGS)\r\n"), 0);
//! assert_eq!(fetch, Effect::Stateless);
//! // RFC 7162 §3.1: asking for MODSEQ switches CONDSTORE on for the rest of the connection.
//! let modseq = inspect(CommandName::UidFetch, Some(b"a UID FETCH 1:* (FLAGS MODSEQ)\r\n"), 0);
//! assert_eq!(modseq, Effect::Taints(Taint::Condstore));
//! assert_eq!(inspect(CommandName::Other, Some(b"a XAPPLEPUSHSERVICE\r\n"), 0), Effect::Taints(Taint::Unlisted));
//! ```

use memchr::memchr;

use crate::CommandName;

/// What one command does to its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Effect {
    /// Leaves no connection state (it may change the mailbox store, which is not the
    /// connection's).
    Stateless,
    /// `SELECT` (`read_only: false`) or `EXAMINE`, without state-bearing parameters.
    Select {
        /// `EXAMINE`.
        read_only: bool,
    },
    /// `UNSELECT` or `CLOSE`: back to the authenticated state once answered `OK`.
    Deselect,
    /// `IDLE`, until the client's `DONE`.
    Idle,
    /// `LOGOUT`.
    Logout,
    /// State the proxy cannot reset: the connection must not serve another client.
    Taints(Taint),
    /// The server will not frame this command the way the proxy did, so the proxy no longer
    /// knows where commands start: nothing may be assumed about the connection from now on.
    Desynchronises,
}

/// Why a command leaves state behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Taint {
    /// `ENABLE` (RFC 5161).
    Enable,
    /// `COMPRESS` (RFC 4978).
    Compress,
    /// `NOTIFY` (RFC 5465): event subscriptions for the rest of the connection.
    Notify,
    /// `UNAUTHENTICATE` (RFC 8437).
    Unauthenticate,
    /// `LANGUAGE` or `COMPARATOR` (RFC 5255).
    Language,
    /// An argument that switches CONDSTORE or QRESYNC on (RFC 7162 §3.1: `MODSEQ`,
    /// `CHANGEDSINCE`, `UNCHANGEDSINCE`, `HIGHESTMODSEQ`, `(CONDSTORE)`, `(QRESYNC ...)`).
    Condstore,
    /// A `SAVE` search result (RFC 5182).
    SearchResult,
    /// A search kept up to date by the server (`CONTEXT`/`UPDATE`, RFC 5267).
    SearchContext,
    /// A command that belongs before login (`LOGIN`, `AUTHENTICATE`, `STARTTLS`).
    OutOfState,
    /// Not on the allowlist (vendor or unknown command), or too long to inspect.
    Unlisted,
}

impl Taint {
    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enable => "enable",
            Self::Compress => "compress",
            Self::Notify => "notify",
            Self::Unauthenticate => "unauthenticate",
            Self::Language => "language",
            Self::Condstore => "condstore",
            Self::SearchResult => "search_result",
            Self::SearchContext => "search_context",
            Self::OutOfState => "out_of_state",
            Self::Unlisted => "unlisted",
        }
    }
}

/// How the allowlist treats a command's arguments.
enum Args {
    /// None are defined; Dovecot skips whatever follows the name up to the line end, so a
    /// literal there is read by the server as the next command.
    None,
    /// Read them for state-bearing words.
    Inspect,
    /// They cannot switch state on (`APPEND`'s mailbox, flags, date and message).
    Ignore,
}

/// The allowlist: the commands known to leave no connection state, with how to treat their
/// arguments, and what the rest do.
fn listed(name: CommandName) -> Result<(Effect, Args), Taint> {
    use CommandName as C;
    Ok(match name {
        C::Noop | C::Capability | C::Check | C::Expunge | C::Namespace => {
            (Effect::Stateless, Args::None)
        }
        C::Unselect | C::Close => (Effect::Deselect, Args::None),
        C::Idle => (Effect::Idle, Args::None),
        C::Logout => (Effect::Logout, Args::None),
        C::Select => (Effect::Select { read_only: false }, Args::Inspect),
        C::Examine => (Effect::Select { read_only: true }, Args::Inspect),
        C::Append => (Effect::Stateless, Args::Ignore),
        C::Create
        | C::Delete
        | C::Rename
        | C::Subscribe
        | C::Unsubscribe
        | C::List
        | C::Lsub
        | C::Status
        | C::Fetch
        | C::Store
        | C::Copy
        | C::Move
        | C::Search
        | C::Sort
        | C::Thread
        | C::UidFetch
        | C::UidStore
        | C::UidCopy
        | C::UidMove
        | C::UidSearch
        | C::UidSort
        | C::UidThread
        | C::UidExpunge
        | C::Id
        | C::GetQuota
        | C::GetQuotaRoot
        | C::SetQuota
        | C::GetAcl
        | C::SetAcl
        | C::DeleteAcl
        | C::MyRights
        | C::ListRights
        | C::GetMetadata
        | C::SetMetadata => (Effect::Stateless, Args::Inspect),
        C::Enable => return Err(Taint::Enable),
        C::Compress => return Err(Taint::Compress),
        C::Notify => return Err(Taint::Notify),
        C::Unauthenticate => return Err(Taint::Unauthenticate),
        C::Language | C::Comparator => return Err(Taint::Language),
        C::Login | C::Authenticate | C::StartTls => return Err(Taint::OutOfState),
        // `DONE` is not a command; the relay handles it. Anything else is off the list.
        _ => return Err(Taint::Unlisted),
    })
}

/// Words that switch connection state on wherever they appear in a command's arguments.
const STATE_WORDS: [(&[u8], Taint); 10] = [
    (b"MODSEQ", Taint::Condstore),
    (b"HIGHESTMODSEQ", Taint::Condstore),
    (b"CHANGEDSINCE", Taint::Condstore),
    (b"UNCHANGEDSINCE", Taint::Condstore),
    (b"CONDSTORE", Taint::Condstore),
    (b"QRESYNC", Taint::Condstore),
    (b"VANISHED", Taint::Condstore),
    (b"SAVE", Taint::SearchResult),
    (b"UPDATE", Taint::SearchContext),
    (b"CONTEXT", Taint::SearchContext),
];

/// What command `name` does, given its whole message (`None` when the proxy could not see it
/// whole, e.g. a long line forwarded in pieces) and how many literals it carried.
pub fn inspect(name: CommandName, message: Option<&[u8]>, literals: u32) -> Effect {
    let (effect, args) = match listed(name) {
        Ok(listed) => listed,
        Err(taint) => return Effect::Taints(taint),
    };
    match args {
        Args::None if literals > 0 => Effect::Desynchronises,
        Args::None | Args::Ignore => effect,
        Args::Inspect => match message {
            None => Effect::Taints(Taint::Unlisted),
            Some(message) => match state_word(message) {
                Some(taint) => Effect::Taints(taint),
                None => effect,
            },
        },
    }
}

/// The first state-bearing word in the text of `message`, outside literals and quoted strings.
/// The tag and command name are included in the scan, which only makes it more careful.
fn state_word(message: &[u8]) -> Option<Taint> {
    let mut found = None;
    for_each_word(message, |word| {
        found = STATE_WORDS
            .iter()
            .find(|(w, _)| w.eq_ignore_ascii_case(word))
            .map(|&(_, t)| t);
        found.is_none()
    });
    found
}

/// Calls `f` with each atom-like word of the message's text (split at SP, parentheses,
/// brackets, CR, LF and `<`), skipping quoted strings and literal bodies, until `f` returns
/// false.
fn for_each_word(message: &[u8], mut f: impl FnMut(&[u8]) -> bool) {
    let mut i = 0;
    let mut start: Option<usize> = None;
    while let Some(&b) = message.get(i) {
        match b {
            b'"' => {
                if let Some(s) = start.take() {
                    if !f(message.get(s..i).unwrap_or(&[])) {
                        return;
                    }
                }
                i = skip_quoted(message, i + 1);
                continue;
            }
            b'\n' => {
                if let Some(s) = start.take() {
                    if !f(message.get(s..i).unwrap_or(&[])) {
                        return;
                    }
                }
                // A line ending in `{n}`/`{n+}`/`~{n}` is followed by n bytes of literal.
                if let Some(n) = literal_before(message.get(..i).unwrap_or(&[])) {
                    i = i.saturating_add(1).saturating_add(n);
                    continue;
                }
            }
            b' ' | b'(' | b')' | b'[' | b']' | b'\r' | b'<' | b'{' | b'}' => {
                if let Some(s) = start.take() {
                    if !f(message.get(s..i).unwrap_or(&[])) {
                        return;
                    }
                }
            }
            _ => {
                start.get_or_insert(i);
            }
        }
        i += 1;
    }
    if let Some(s) = start {
        f(message.get(s..).unwrap_or(&[]));
    }
}

/// The index after the closing quote of a quoted string whose body starts at `i`.
fn skip_quoted(message: &[u8], mut i: usize) -> usize {
    while let Some(&b) = message.get(i) {
        match b {
            b'\\' => i += 2,
            b'"' => return i + 1,
            // Quoted strings do not span lines; the line end is text again.
            b'\n' => return i,
            _ => i += 1,
        }
    }
    i
}

/// The size announced by a literal at the end of `line` (which excludes its LF).
fn literal_before(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let open = memchr::memrchr(b'{', inner)?;
    let digits = inner.get(open + 1..)?;
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    core::str::from_utf8(digits).ok()?.parse().ok()
}

/// Whether `message` (one client command) names a mailbox that the proxy can replay: the
/// argument of `SELECT`/`EXAMINE` as sent, when it is an atom or a quoted string on the
/// command line. Returns the argument's bytes.
pub fn mailbox_argument(message: &[u8]) -> Option<&[u8]> {
    let line_end = memchr(b'\n', message)?;
    let line = message.get(..line_end)?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // tag SP name SP mailbox [SP params]
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (_tag, _name, rest) = (parts.next()?, parts.next()?, parts.next()?);
    if rest.first() == Some(&b'"') {
        let end = skip_quoted(rest, 1);
        return rest
            .get(..end)
            .filter(|q| q.len() >= 2 && q.ends_with(b"\""));
    }
    let end = memchr(b' ', rest).unwrap_or(rest.len());
    let atom = rest.get(..end)?;
    (!atom.is_empty() && !atom.ends_with(b"}")).then_some(atom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use CommandName as C;

    fn effect(name: CommandName, msg: &[u8]) -> Effect {
        inspect(name, Some(msg), 0)
    }

    #[test]
    fn plain_commands_are_stateless() {
        for (name, msg) in [
            (
                C::Fetch,
                &b"a FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n"[..],
            ),
            (C::UidSearch, b"a UID SEARCH UNSEEN SINCE 1-Jan-2020\r\n"),
            (C::Status, b"a STATUS INBOX (MESSAGES UIDNEXT UNSEEN)\r\n"),
            (C::List, b"a LIST \"\" * RETURN (SUBSCRIBED CHILDREN)\r\n"),
            (C::UidStore, b"a UID STORE 1:3 +FLAGS.SILENT (\\Seen)\r\n"),
            (C::Search, b"a SEARCH SUBJECT \"MODSEQ UPDATE\"\r\n"),
            (C::Search, b"a SEARCH TEXT {6}\r\nMODSEQ\r\n"),
            (C::Noop, b"a NOOP\r\n"),
        ] {
            assert_eq!(effect(name, msg), Effect::Stateless, "{msg:?}");
        }
        assert_eq!(
            effect(C::Examine, b"a EXAMINE INBOX\r\n"),
            Effect::Select { read_only: true }
        );
    }

    #[test]
    fn state_bearing_arguments_taint() {
        for (name, msg, taint) in [
            (
                C::Select,
                &b"a SELECT INBOX (CONDSTORE)\r\n"[..],
                Taint::Condstore,
            ),
            (
                C::Select,
                b"a select INBOX (qresync (1 2))\r\n",
                Taint::Condstore,
            ),
            (
                C::Status,
                b"a STATUS INBOX (HIGHESTMODSEQ)\r\n",
                Taint::Condstore,
            ),
            (
                C::Fetch,
                b"a FETCH 1 (FLAGS) (CHANGEDSINCE 4)\r\n",
                Taint::Condstore,
            ),
            (C::Fetch, b"a FETCH 1 (modseq)\r\n", Taint::Condstore),
            (
                C::Store,
                b"a STORE 1 (UNCHANGEDSINCE 3) +FLAGS (x)\r\n",
                Taint::Condstore,
            ),
            (C::Search, b"a SEARCH MODSEQ 5\r\n", Taint::Condstore),
            (
                C::Search,
                b"a SEARCH RETURN (SAVE) UNSEEN\r\n",
                Taint::SearchResult,
            ),
            (
                C::Search,
                b"a SEARCH RETURN (UPDATE COUNT) ALL\r\n",
                Taint::SearchContext,
            ),
            (
                C::List,
                b"a LIST \"\" * RETURN (STATUS (HIGHESTMODSEQ))\r\n",
                Taint::Condstore,
            ),
        ] {
            assert_eq!(effect(name, msg), Effect::Taints(taint), "{msg:?}");
        }
    }

    #[test]
    fn unlisted_and_uninspectable_commands_taint() {
        assert_eq!(
            effect(C::Enable, b"a ENABLE CONDSTORE\r\n"),
            Effect::Taints(Taint::Enable)
        );
        assert_eq!(
            effect(C::Notify, b"a NOTIFY NONE\r\n"),
            Effect::Taints(Taint::Notify)
        );
        assert_eq!(
            effect(C::Other, b"a XLIST \"\" *\r\n"),
            Effect::Taints(Taint::Unlisted)
        );
        assert_eq!(
            effect(C::UidOther, b"a UID XFOO\r\n"),
            Effect::Taints(Taint::Unlisted)
        );
        assert_eq!(inspect(C::Fetch, None, 0), Effect::Taints(Taint::Unlisted));
        // APPEND's arguments cannot switch state on: its message need not be seen.
        assert_eq!(inspect(C::Append, None, 1), Effect::Stateless);
    }

    #[test]
    fn a_literal_on_an_argumentless_command_desynchronises() {
        // Dovecot skips to the line end and reads the "literal" as the next command.
        assert_eq!(
            inspect(C::Noop, Some(b"a NOOP {20+}\r\nb ENABLE CONDSTORE\r\n"), 1),
            Effect::Desynchronises
        );
        assert_eq!(inspect(C::Check, None, 1), Effect::Desynchronises);
    }

    #[test]
    fn mailbox_arguments() {
        assert_eq!(mailbox_argument(b"a SELECT INBOX\r\n"), Some(&b"INBOX"[..]));
        assert_eq!(
            mailbox_argument(b"a SELECT \"a \\\"b\" (CONDSTORE)\r\n"),
            Some(&b"\"a \\\"b\""[..])
        );
        assert_eq!(mailbox_argument(b"a SELECT {5}\r\nINBOX\r\n"), None);
        assert_eq!(mailbox_argument(b"a SELECT\r\n"), None);
    }

    #[test]
    fn literal_announcements() {
        assert_eq!(literal_before(b"a {5}\r"), Some(5));
        assert_eq!(literal_before(b"a {5+}"), Some(5));
        assert_eq!(literal_before(b"a {}"), None);
        assert_eq!(literal_before(b"a {x}"), None);
    }
}
