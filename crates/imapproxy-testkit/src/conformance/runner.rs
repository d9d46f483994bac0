//! Playing a script against a server and recording what happened.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use super::transcript::{Event, Run, Transcript};
use super::{Action, LOGIN_TAG, LOGOUT_TAG, Script, contains, find, is_tagged, render_lines};
use crate::client::TestClient;

/// Every wait of a step gives up after this long (the run then stops with a failure event).
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the runner waits for the server to close the connection after `LOGOUT`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs `script` as `user` against `addr`: connects and logs in every connection (in order),
/// plays the steps, then logs every connection out (in order). Never panics on the server's
/// behaviour: a timeout or a closed connection ends the steps with an [`Event::Failed`] on
/// the connection concerned.
pub async fn run(script: &Script, addr: SocketAddr, user: &str, password: &str) -> Run {
    let mut out = Run {
        script: script.name.clone(),
        label: addr.to_string(),
        connections: vec![Transcript::default(); script.connections],
    };
    let mut clients = Vec::with_capacity(script.connections);
    for (transcript, pipelined) in out.connections.iter_mut().zip(&script.after_login) {
        match open(addr, user, password, pipelined, transcript).await {
            Ok(client) => clients.push(client),
            Err(why) => {
                transcript.events.push(Event::Failed(why));
                return out;
            }
        }
    }
    let mut vars = BTreeMap::new();
    // Per connection: tags whose tagged reply was read but not yet waited for (a reply can
    // arrive while the script waits for something else, e.g. a `+`).
    let mut answered = vec![BTreeSet::new(); script.connections];
    for step in &script.steps {
        let (Some(client), Some(transcript), Some(answered)) = (
            clients.get_mut(step.conn),
            out.connections.get_mut(step.conn),
            answered.get_mut(step.conn),
        ) else {
            continue;
        };
        let mut conn = Conn {
            client,
            events: &mut transcript.events,
            answered,
        };
        if let Err(why) = play(&step.action, &mut conn, &mut vars).await {
            transcript.events.push(Event::Failed(why));
            return out;
        }
    }
    for (client, transcript) in clients.iter_mut().zip(out.connections.iter_mut()) {
        let sent = client
            .send_raw(format!("{LOGOUT_TAG} LOGOUT\r\n").as_bytes())
            .await;
        if sent.is_err() {
            continue;
        }
        if let Ok(lines) = read_tagged(client, LOGOUT_TAG).await {
            transcript.logout = lines;
            transcript.closed_after_logout = client.expect_eof(CLOSE_TIMEOUT).await;
        }
    }
    out
}

/// Connects, reads the greeting and logs in, recording both.
async fn open(
    addr: SocketAddr,
    user: &str,
    password: &str,
    pipelined: &[u8],
    transcript: &mut Transcript,
) -> Result<TestClient, String> {
    let mut client = TestClient::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    client.set_timeout(STEP_TIMEOUT);
    transcript.greeting = client.greeting().as_bytes().to_vec();
    let mut login = format!(
        "{LOGIN_TAG} LOGIN {} {}\r\n",
        quoted(user),
        quoted(password)
    )
    .into_bytes();
    login.extend_from_slice(pipelined);
    if !pipelined.is_empty() {
        transcript.events.push(Event::Sent(pipelined.to_vec()));
    }
    client
        .send_raw(&login)
        .await
        .map_err(|e| format!("sending LOGIN: {e}"))?;
    transcript.login = read_tagged(&mut client, LOGIN_TAG).await?;
    if !transcript.logged_in() {
        return Err(format!(
            "login refused: {}",
            render_lines(&transcript.login)
        ));
    }
    Ok(client)
}

/// One connection while the script runs.
struct Conn<'a> {
    client: &'a mut TestClient,
    events: &'a mut Vec<Event>,
    answered: &'a mut BTreeSet<String>,
}

impl Conn<'_> {
    /// Reads responses (recording them and the tags answered) until `done` says so; `done`
    /// is also asked once before reading anything.
    async fn read_until(
        &mut self,
        mut done: impl FnMut(Option<&[u8]>, &BTreeSet<String>) -> bool,
    ) -> Result<(), String> {
        if done(None, self.answered) {
            return Ok(());
        }
        loop {
            let line = self.client.read_line().await.map_err(|e| e.to_string())?;
            if let Some(tag) = tag_of(&line) {
                self.answered.insert(tag);
            }
            let finished = done(Some(&line), self.answered);
            self.events.push(Event::Received(line));
            if finished {
                return Ok(());
            }
        }
    }
}

/// Plays one action on `conn`.
async fn play(
    action: &Action,
    conn: &mut Conn<'_>,
    vars: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), String> {
    match action {
        Action::Send(bytes) => {
            let wire = substitute(bytes, vars)?;
            conn.events.push(Event::Sent(bytes.clone()));
            conn.client
                .send_raw(&wire)
                .await
                .map_err(|e| format!("write failed: {e}"))
        }
        Action::Tagged(tags) => {
            conn.read_until(|_, answered| tags.iter().all(|t| answered.contains(t)))
                .await
                .map_err(|e| format!("waiting for tagged {tags:?}: {e}"))?;
            for t in tags {
                conn.answered.remove(t);
            }
            Ok(())
        }
        Action::Continuation(tag) => conn
            .read_until(|line, answered| {
                answered.contains(tag) || line.is_some_and(|l| l.starts_with(b"+"))
            })
            .await
            .map_err(|e| format!("waiting for + (tag {tag}): {e}")),
        Action::Until(needle) => conn
            .read_until(|line, _| line.is_some_and(|l| contains(l, needle)))
            .await
            .map_err(|e| format!("waiting for {:?}: {e}", String::from_utf8_lossy(needle))),
        Action::Drain(within) => {
            let deadline = tokio::time::Instant::now() + *within;
            while let Ok(line) = tokio::time::timeout_at(deadline, conn.client.read_line()).await {
                let line = line.map_err(|e| format!("while draining: {e}"))?;
                if let Some(tag) = tag_of(&line) {
                    conn.answered.insert(tag);
                }
                conn.events.push(Event::Received(line));
            }
            Ok(())
        }
        Action::Sleep(pause) => {
            tokio::time::sleep(*pause).await;
            Ok(())
        }
        Action::Capture { var, after } => {
            let value = conn
                .events
                .iter()
                .rev()
                .filter_map(|e| match e {
                    Event::Received(r) => number_after(r, after),
                    _ => None,
                })
                .next()
                .ok_or_else(|| {
                    format!(
                        "nothing to capture as ${{{var}}}: no {:?} followed by a number",
                        String::from_utf8_lossy(after)
                    )
                })?;
            vars.insert(var.clone(), value);
            Ok(())
        }
    }
}

/// Reads responses until the tagged reply of `tag` (the runner's own LOGIN and LOGOUT);
/// returns them all.
async fn read_tagged(client: &mut TestClient, tag: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut lines = Vec::new();
    loop {
        let line = client.read_line().await.map_err(|e| e.to_string())?;
        let done = is_tagged(&line, tag);
        lines.push(line);
        if done {
            return Ok(lines);
        }
    }
}

/// The tag of a tagged reply (not `*` untagged, not a `+` continuation).
fn tag_of(line: &[u8]) -> Option<String> {
    if line.starts_with(b"*") || line.starts_with(b"+") {
        return None;
    }
    let end = line.iter().position(|&b| b == b' ')?;
    Some(String::from_utf8_lossy(line.get(..end)?).into_owned())
}

/// Replaces every `${name}` in `bytes` by its captured value.
fn substitute(bytes: &[u8], vars: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(start) = find(rest, b"${") {
        out.extend_from_slice(rest.get(..start).unwrap_or_default());
        let after = rest.get(start + 2..).unwrap_or_default();
        let end = after
            .iter()
            .position(|&b| b == b'}')
            .ok_or("unterminated ${ in a send")?;
        let name = String::from_utf8_lossy(after.get(..end).unwrap_or_default()).into_owned();
        let value = vars
            .get(&name)
            .ok_or_else(|| format!("${{{name}}} was never captured"))?;
        out.extend_from_slice(value);
        rest = after.get(end + 1..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
    Ok(out)
}

/// The digits right after the last occurrence of `after` in `text`.
fn number_after(text: &[u8], after: &[u8]) -> Option<Vec<u8>> {
    let mut found = None;
    let mut from = 0;
    while let Some(i) = text.get(from..).and_then(|t| find(t, after)) {
        let start = from + i + after.len();
        let digits: Vec<u8> = text
            .get(start..)
            .unwrap_or_default()
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .copied()
            .collect();
        if !digits.is_empty() {
            found = Some(digits);
        }
        from = start;
    }
    found
}

/// An IMAP quoted string (RFC 9051 §4.3).
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_of_tagged_replies_only() {
        assert_eq!(tag_of(b"a1 OK done\r\n"), Some("a1".to_owned()));
        assert_eq!(tag_of(b"* 1 EXISTS\r\n"), None);
        assert_eq!(tag_of(b"+ OK\r\n"), None);
    }

    #[test]
    fn captures_substitute_and_unknown_names_fail() {
        let mut vars = BTreeMap::new();
        vars.insert("uv".to_owned(), b"123".to_vec());
        assert_eq!(
            substitute(b"s SELECT INBOX (QRESYNC (${uv} 5))\r\n", &vars).unwrap(),
            b"s SELECT INBOX (QRESYNC (123 5))\r\n".to_vec()
        );
        assert!(substitute(b"${nope}", &vars).is_err());
        assert_eq!(
            substitute(b"FETCH $ (FLAGS)", &vars).unwrap(),
            b"FETCH $ (FLAGS)".to_vec()
        );
        assert_eq!(
            number_after(
                b"* OK [UIDVALIDITY 1] x [UIDVALIDITY 42] y",
                b"[UIDVALIDITY "
            ),
            Some(b"42".to_vec())
        );
        assert_eq!(
            number_after(b"* OK [UIDVALIDITY x]", b"[UIDVALIDITY "),
            None
        );
    }
}
