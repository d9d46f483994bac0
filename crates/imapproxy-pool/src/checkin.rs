//! What a returned session goes through before it may be cached: the caller's verdict
//! ([`Disposition`]) and the pool's own reset (`UNSELECT`), judged from the server's answer.

use std::time::Duration;

use imapproxy_codec::Status;

use crate::{BackendConn, Response};

/// The caller's verdict on a session it gives back with
/// [`SessionPool::checkin`](crate::SessionPool::checkin).
///
/// `Reuse` is a permission, not an order: the pool still resets the session with `UNSELECT`
/// and checks that it is quiet, and closes it when anything is off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The session is in a state the next client may inherit (no `ENABLE`, no `COMPRESS`, no
    /// error, no half-sent command): the pool may cache it.
    Reuse,
    /// Close the session.
    Close,
}

/// Why a session was not cached after its reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResetFailure {
    pub(crate) reason: &'static str,
    /// The connection is still in step with the server: say `LOGOUT` before closing.
    pub(crate) polite: bool,
}

/// Leaves any selected mailbox, whatever the caller believes was selected: the relay's view
/// can be wrong (a `SELECT` that failed still deselects, RFC 9051 §6.3.2), and the next
/// client must start in the authenticated state either way.
///
/// RFC 3691: `UNSELECT` closes the mailbox without expunging (`CLOSE` would expunge messages
/// the previous client only flagged `\Deleted`). A healthy server answers in well under a
/// millisecond; one that does not answer within `limit` (the pool's `liveness_timeout`) is
/// not worth keeping.
pub(crate) async fn reset(conn: &mut BackendConn, limit: Duration) -> Result<(), ResetFailure> {
    match tokio::time::timeout(limit, conn.command("UNSELECT")).await {
        Ok(Ok(resp)) => judge_unselect(&resp),
        Ok(Err(_)) => Err(ResetFailure {
            reason: "UNSELECT failed (I/O error or BYE)",
            polite: false,
        }),
        Err(_) => Err(ResetFailure {
            reason: "UNSELECT timed out",
            polite: false,
        }),
    }
}

/// Whether the answer to `UNSELECT` leaves a session fit for another client.
///
/// `OK`: a mailbox was closed. `BAD`: none was selected (RFC 3691 §2), which is fine too.
/// `NO` is not an answer RFC 3691 defines: something is wrong with the session. The only
/// untagged data expected is `* OK [CLOSED]` (RFC 7162 §3.2.11, sent when QRESYNC or
/// CONDSTORE is on); anything else — `EXISTS`, `EXPUNGE`, `FETCH`, an alert — means the
/// session was not quiet, and what it was saying belongs to a client that has gone.
pub(crate) fn judge_unselect(resp: &Response) -> Result<(), ResetFailure> {
    match resp.status() {
        Some(Status::Ok | Status::Bad) => {}
        Some(Status::No) => {
            return Err(ResetFailure {
                reason: "UNSELECT answered NO",
                polite: true,
            });
        }
        _ => {
            return Err(ResetFailure {
                reason: "UNSELECT answered without OK or BAD",
                polite: false,
            });
        }
    }
    if resp.untagged.iter().all(|line| is_ok_closed(line)) {
        Ok(())
    } else {
        Err(ResetFailure {
            reason: "unsolicited data in the answer to UNSELECT",
            polite: true,
        })
    }
}

/// `* OK [CLOSED]` with any text after the code.
fn is_ok_closed(line: &[u8]) -> bool {
    const PREFIX: &[u8] = b"* OK [CLOSED]";
    line.len() >= PREFIX.len() && line[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(untagged: &[&str], tagged: &str) -> Response {
        Response {
            untagged: untagged.iter().map(|l| l.as_bytes().to_vec()).collect(),
            tagged: tagged.as_bytes().to_vec(),
        }
    }

    #[test]
    fn ok_and_bad_without_untagged_data_are_clean() {
        assert_eq!(
            judge_unselect(&resp(&[], "P3 OK Unselect completed.\r\n")),
            Ok(())
        );
        assert_eq!(
            judge_unselect(&resp(&[], "P3 BAD No mailbox selected.\r\n")),
            Ok(())
        );
        assert_eq!(
            judge_unselect(&resp(
                &["* OK [CLOSED] Previous mailbox closed.\r\n"],
                "P3 OK Unselect completed.\r\n"
            )),
            Ok(())
        );
        assert_eq!(
            judge_unselect(&resp(&["* ok [closed]\r\n"], "P3 ok done\r\n")),
            Ok(())
        );
    }

    #[test]
    fn no_closes_the_session() {
        let r = judge_unselect(&resp(&[], "P3 NO Something is wrong.\r\n")).unwrap_err();
        assert!(r.polite);
    }

    #[test]
    fn a_tagged_line_without_a_status_closes_the_session() {
        let r = judge_unselect(&resp(&[], "P3 WHATEVER\r\n")).unwrap_err();
        assert!(!r.polite);
        assert!(judge_unselect(&resp(&[], "P3 BYE\r\n")).is_err());
    }

    #[test]
    fn any_other_untagged_data_closes_the_session() {
        for line in [
            "* 3 EXISTS\r\n",
            "* 1 EXPUNGE\r\n",
            "* 2 FETCH (FLAGS (\\Seen))\r\n",
            "* OK [ALERT] Maintenance at noon\r\n",
            "* OK [CLOSEDX] not the code\r\n",
            "* OK Still here\r\n",
        ] {
            let r = judge_unselect(&resp(
                &["* OK [CLOSED] Previous mailbox closed.\r\n", line],
                "P3 OK Unselect completed.\r\n",
            ));
            assert!(r.is_err(), "{line:?} was accepted");
        }
    }
}
