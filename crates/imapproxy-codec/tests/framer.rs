//! Known-answer tables for the relay framer, both directions, and split-point equivalence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use imapproxy_codec::{
    CommandName as C, Direction, Frame, FrameKind as K, Framer, Status as S, UntaggedKind as U,
};

/// Feeds `input` in pieces cut at `cuts`; returns (absolute end offset, frame) per message.
fn frames_with_cuts(dir: Direction, input: &[u8], cuts: &[usize]) -> Vec<(usize, Frame)> {
    let mut f = Framer::new(dir);
    let mut out = Vec::new();
    let mut start = 0;
    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c <= input.len()).collect();
    bounds.push(input.len());
    bounds.sort_unstable();
    for end in bounds {
        let mut chunk = &input[start..end];
        let mut base = start;
        while let Some((n, frame)) = f.advance(chunk) {
            assert!(n <= chunk.len());
            base += n;
            out.push((base, frame));
            chunk = &chunk[n..];
        }
        start = end;
    }
    out
}

fn frames(dir: Direction, input: &[u8]) -> Vec<(usize, Frame)> {
    frames_with_cuts(dir, input, &[])
}

/// (tag, kind, len, literal_bytes) per frame, for compact tables.
fn summary(dir: Direction, input: &[u8]) -> Vec<(Option<String>, K, u64, u64)> {
    frames(dir, input)
        .into_iter()
        .map(|(_, f)| (f.tag.map(|t| t.to_string()), f.kind, f.len, f.literal_bytes))
        .collect()
}

fn t(s: &str) -> Option<String> {
    Some(s.to_string())
}

/// Every way of cutting `input` once, and byte-at-a-time, gives the same frames.
fn assert_split_invariant(dir: Direction, input: &[u8]) {
    let whole = frames(dir, input);
    for k in 0..=input.len() {
        assert_eq!(frames_with_cuts(dir, input, &[k]), whole, "cut at {k}");
    }
    let every: Vec<usize> = (0..input.len()).collect();
    assert_eq!(
        frames_with_cuts(dir, input, &every),
        whole,
        "byte at a time"
    );
}

const CLIENT_STREAM: &[u8] = b"a1 CAPABILITY\r\n\
a2 select INBOX\r\n\
a3 APPEND INBOX (\\Seen) {11}\r\nhello\r\nyou!\r\n\
a4 APPEND INBOX {0}\r\n\r\n\
a5 APPEND INBOX {5+}\r\nab{3}\r\n\
a6 APPEND INBOX (CATENATE (TEXT ~{3}\r\nx\r\n URL \"/INBOX;UID=1\"))\r\n\
a7 UID FETCH 1:* (FLAGS)\r\n\
a8 IDLE\r\n\
DONE\r\n\
a9 LOGIN {4}\r\nuser {4}\r\npass\r\n\
dGVzdA==\r\n\
x] NOOP\n\
a10 logout\r\n";

#[test]
fn client_known_answers() {
    let c = Direction::Client;
    assert_eq!(
        summary(c, CLIENT_STREAM),
        vec![
            (t("a1"), K::Command(C::Capability), 15, 0),
            (t("a2"), K::Command(C::Select), 17, 0),
            (t("a3"), K::Command(C::Append), 30 + 11 + 2, 11),
            (t("a4"), K::Command(C::Append), 21 + 2, 0),
            // The literal holds `ab{3}`: literal content never announces anything.
            (t("a5"), K::Command(C::Append), 22 + 5 + 2, 5),
            (t("a6"), K::Command(C::Append), 38 + 3 + 23, 3),
            (t("a7"), K::Command(C::UidFetch), 26, 0),
            (t("a8"), K::Command(C::Idle), 9, 0),
            (None, K::Command(C::Done), 6, 0),
            (t("a9"), K::Command(C::Login), 14 + 4 + 6 + 4 + 2, 8),
            (None, K::Line, 10, 0),
            (t("x]"), K::Command(C::Noop), 8, 0),
            (t("a10"), K::Command(C::Logout), 12, 0),
        ]
    );
    let total: u64 = summary(c, CLIENT_STREAM).iter().map(|f| f.2).sum();
    assert_eq!(total as usize, CLIENT_STREAM.len());
}

#[test]
fn client_split_points_do_not_matter() {
    assert_split_invariant(Direction::Client, CLIENT_STREAM);
}

const SERVER_STREAM: &[u8] = b"* OK [CAPABILITY IMAP4rev1] Dovecot ready. {5}\r\n\
* CAPABILITY IMAP4rev1 IDLE\r\n\
* 3 FETCH (UID 7 BODY[] {13}\r\nab\r\n{5}\r\nxy\r\n FLAGS (\\Seen))\r\n\
* 4 FETCH (BINARY[] ~{3}\r\n\r\n\r)\r\n\
* 5 FETCH (BODY[] {0}\r\n)\r\n\
* LIST (\\HasNoChildren) \"/\" {5}\r\na\"b c\r\n\
* ID (\"name\" \"Dovecot\")\r\n\
* 23 EXISTS\r\n\
* 2 EXPUNGE\r\n\
* NO [ALERT] mailbox {5}\r\n\
* BAD huh {5}\r\n\
* BYE see you {5}\r\n\
+ {5}\r\n\
+ idling\r\n\
a1 NO [NONEXISTENT] Mailbox doesn't exist: x{5}\r\n\
a2 OK done {5+}\n\
a3 BAD {1}\r\n\
garbage\r\n\
* PREAUTH hi {5}\r\n";

#[test]
fn server_known_answers() {
    let s = Direction::Server;
    let got = summary(s, SERVER_STREAM);
    let kinds: Vec<_> = got.iter().map(|f| (f.0.clone(), f.1, f.3)).collect();
    assert_eq!(
        kinds,
        vec![
            // `{5}` after status text is text, not a literal (DESIGN.md).
            (None, K::Untagged(U::Status(S::Ok)), 0),
            (None, K::Untagged(U::Capability), 0),
            // The literal's own CRLFs and `{5}` inside it are data.
            (None, K::Untagged(U::Fetch), 13),
            (None, K::Untagged(U::Fetch), 3),
            (None, K::Untagged(U::Fetch), 0),
            (None, K::Untagged(U::Other), 5),
            (None, K::Untagged(U::Other), 0),
            (None, K::Untagged(U::Exists), 0),
            (None, K::Untagged(U::Expunge), 0),
            (None, K::Untagged(U::Status(S::No)), 0),
            (None, K::Untagged(U::Status(S::Bad)), 0),
            (None, K::Untagged(U::Status(S::Bye)), 0),
            (None, K::Continuation, 0),
            (None, K::Continuation, 0),
            (t("a1"), K::Tagged(S::No), 0),
            (t("a2"), K::Tagged(S::Ok), 0),
            (t("a3"), K::Tagged(S::Bad), 0),
            (None, K::Tagged(S::Other), 0),
            (None, K::Untagged(U::Status(S::PreAuth)), 0),
        ]
    );
    let total: u64 = got.iter().map(|f| f.2).sum();
    assert_eq!(total as usize, SERVER_STREAM.len());
}

#[test]
fn server_split_points_do_not_matter() {
    assert_split_invariant(Direction::Server, SERVER_STREAM);
}

#[test]
fn status_literal_as_text_keeps_the_next_response_visible() {
    // A client names a mailbox `x{5}`; the server echoes it in a NO. Were `{5}` taken as a
    // literal, the next tagged OK would be swallowed and the proxy desynchronised.
    let s = b"a1 NO Mailbox doesn't exist: x{5}\r\na2 OK LOGOUT done\r\n";
    let got = summary(Direction::Server, s);
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].0, t("a2"));
}

#[test]
fn bare_lf_ends_lines_and_literals() {
    let got = summary(
        Direction::Client,
        b"a1 NOOP\na2 APPEND x {2}\nab\na3 IDLE\nDONE\n",
    );
    assert_eq!(
        got,
        vec![
            (t("a1"), K::Command(C::Noop), 8, 0),
            (t("a2"), K::Command(C::Append), 16 + 2 + 1, 2),
            (t("a3"), K::Command(C::Idle), 8, 0),
            (None, K::Command(C::Done), 5, 0),
        ]
    );
}

#[test]
fn huge_and_overflowing_literal_sizes() {
    let mut f = Framer::new(Direction::Server);
    // u64::MAX is a valid (if absurd) size: everything after is literal data.
    let head = b"* 1 FETCH (BODY[] {18446744073709551615}\r\n";
    assert_eq!(f.advance(head), None);
    assert_eq!(f.advance(&[0u8; 4096]), None);
    assert!(!f.at_boundary());
    assert_eq!(f.partial_len(), head.len() as u64 + 4096);

    // One more digit overflows u64: text, so the line ends the message.
    let line = b"* 1 FETCH (BODY[] {18446744073709551616}\r\n";
    let got = summary(Direction::Server, line);
    assert_eq!(
        got,
        vec![(None, K::Untagged(U::Fetch), line.len() as u64, 0)]
    );
    // Leading zeros do not overflow and still announce the literal the peer will send.
    let line = b"a APPEND x {000000000000000000000000003}\r\nabc\r\n";
    assert_eq!(summary(Direction::Client, line)[0].3, 3);
}

#[test]
fn malformed_announcements_are_text() {
    for l in [
        &b"a1 APPEND x {}\r\n"[..],
        b"a1 APPEND x {+}\r\n",
        b"a1 APPEND x {5 }\r\n",
        b"a1 APPEND x {5}x\r\n",
        b"a1 APPEND x {-5}\r\n",
        b"a1 APPEND x {5}\r\r\n",
        b"a1 APPEND x {5++}\r\n",
    ] {
        let got = summary(Direction::Client, l);
        assert_eq!(got.len(), 1, "{l:?}");
        assert_eq!(got[0].2 as usize, l.len());
    }
}

#[test]
fn long_tags_and_long_lines() {
    // The longest tag (64 bytes) and its command name fit the recorded head (80 bytes).
    let tag = "t".repeat(64);
    let line = format!("{tag} NOOP\r\n");
    let got = summary(Direction::Client, line.as_bytes());
    assert_eq!(
        got,
        vec![(Some(tag.clone()), K::Command(C::Noop), line.len() as u64, 0)]
    );
    // A word running past the head cannot be read: framed, but reported without a tag.
    let tag = "t".repeat(80);
    let line = format!("{tag} NOOP\r\n");
    let got = summary(Direction::Client, line.as_bytes());
    assert_eq!(got, vec![(None, K::Line, line.len() as u64, 0)]);

    let tag = "t".repeat(40);
    let line = format!("{tag} FETCH 1 (BODY[]) {}\r\n", "x".repeat(100_000));
    let got = summary(Direction::Client, line.as_bytes());
    assert_eq!(got[0].0.as_deref(), Some(tag.as_str()));
    assert_eq!(got[0].2 as usize, line.len());

    let line = format!("* 1 FETCH (X {}) {{3}}\r\nabc)\r\n", "y".repeat(10_000));
    assert_split_invariant(Direction::Server, line.as_bytes());
}

#[test]
fn at_boundary_tracks_partial_messages() {
    let mut f = Framer::new(Direction::Client);
    assert!(f.at_boundary());
    assert_eq!(f.advance(b""), None);
    assert!(f.at_boundary());
    assert_eq!(f.advance(b"a1 APPEND x {3}\r\n"), None);
    assert!(!f.at_boundary());
    assert_eq!(f.advance(b"abc"), None);
    assert!(!f.at_boundary());
    let (n, frame) = f.advance(b"\r\na2").unwrap();
    assert_eq!((n, frame.literal_bytes), (2, 3));
    assert!(f.at_boundary());
    assert_eq!(f.advance(b"a2"), None);
    assert!(!f.at_boundary());
}

#[test]
fn pseudo_random_garbage_never_panics_and_is_split_invariant() {
    // Small deterministic generator: bytes biased towards the characters that matter.
    let alphabet = b"{}+~0123456789\r\n *aAOKNOBD";
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for round in 0..200 {
        let len = (round % 60) + 1;
        let input: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                alphabet[(state % alphabet.len() as u64) as usize]
            })
            .collect();
        for dir in [Direction::Client, Direction::Server] {
            let whole = frames(dir, &input);
            let sum: u64 = whole.iter().map(|(_, f)| f.len).sum();
            assert!(sum <= input.len() as u64);
            assert_split_invariant(dir, &input);
        }
    }
}

#[test]
fn partial_tag_names_the_unfinished_command() {
    use imapproxy_codec::{Direction, Framer};
    let mut f = Framer::new(Direction::Client);
    assert!(f.partial_tag().is_none());
    assert!(f.advance(b"b APPEND NoSuchBox {5}\r\n").is_none());
    assert_eq!(f.partial_tag().unwrap().to_string(), "b");
    let mut f = Framer::new(Direction::Client);
    assert!(f.advance(b"abc").is_none());
    assert!(f.partial_tag().is_none(), "the first word may be cut short");
}
