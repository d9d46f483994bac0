//! Invariant checks for the pool crate's fuzz targets (`pool_response`, `pool_capabilities`),
//! shared with the corpus replay test `crates/imapproxy-pool/tests/fuzz_corpus.rs` (which
//! includes this file with `#[path]`), so the committed corpora are checked on every
//! `cargo test`, not only when fuzzing.
//!
//! The response reader is driven as the connector drives it (a greeting, then responses to
//! one tag) on a backend's byte stream cut at several points; the capability parser is compared
//! with the codec's atoms and with itself on its own output.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use imapproxy_codec::parse_capabilities;
use imapproxy_pool::{Capabilities, Error, Greeting, Response, ResponseLimits, ResponseReader};

/// The tag the fuzzed responses answer (the connector's first tag).
pub const TAG: &str = "P1";

/// The default limits and tiny ones, so that short inputs reach both bounds.
pub const LIMITS: [ResponseLimits; 2] = [
    ResponseLimits {
        max_message: ResponseLimits::DEFAULT_MAX_MESSAGE,
        max_untagged: ResponseLimits::DEFAULT_MAX_UNTAGGED,
    },
    ResponseLimits {
        max_message: 64,
        max_untagged: 4 * ResponseLimits::PER_MESSAGE + 128,
    },
];

/// What the reader reported, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// The greeting was accepted, with these capabilities (if it named any).
    Greeting(Option<Vec<String>>),
    /// A whole response to [`TAG`].
    Response(Response),
    /// The error that ended the exchange (its `Display`).
    Failed(String),
}

/// Cut points derived from the input itself (so corpus files stay plain IMAP text).
pub fn cuts_for(data: &[u8]) -> Vec<usize> {
    let len = data.len();
    if len == 0 {
        return Vec::new();
    }
    let h = data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    }) as usize;
    vec![h % (len + 1), len / 2]
}

fn allowed(e: &Error) -> bool {
    matches!(
        e,
        Error::MessageTooLarge { .. }
            | Error::UntaggedTooLarge { .. }
            | Error::Bye { .. }
            | Error::GreetingBye { .. }
            | Error::PreAuthGreeting
            | Error::UnexpectedData { .. }
    )
}

fn cost(msg: &[u8]) -> usize {
    msg.len() + ResponseLimits::PER_MESSAGE
}

/// Feeds `data` in pieces ending at `cuts` (and at its end) to a reader, reading the greeting
/// and then responses to [`TAG`] after each piece; returns the events. Checks on the way:
/// every message ends with LF and is within `max_message`; a response's other messages
/// cost at most `max_untagged`; nothing beyond `max_message` is buffered while a message is
/// incomplete; only the errors a backend can cause occur; and the messages returned are the
/// input's first bytes, in order.
pub fn drive(data: &[u8], cuts: &[usize], limits: ResponseLimits) -> Vec<Event> {
    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c <= data.len()).collect();
    bounds.push(data.len());
    bounds.sort_unstable();
    let mut reader = ResponseReader::new(limits);
    let mut events = Vec::new();
    let mut returned: Vec<u8> = Vec::new();
    let ours = format!("{TAG} ");
    let mut greeted = false;
    let mut start = 0;
    'feed: for end in bounds {
        reader.feed(&data[start..end]);
        start = end;
        loop {
            let step = if greeted {
                reader.next_response(TAG).map(|r| r.map(Ok))
            } else {
                reader.next_message().map(|m| m.map(Err))
            };
            match step {
                Ok(None) => {
                    assert!(
                        reader.buffered() <= limits.max_message,
                        "{} bytes buffered for an incomplete message",
                        reader.buffered()
                    );
                    continue 'feed;
                }
                Err(e) => {
                    assert!(allowed(&e), "{e:?}");
                    events.push(Event::Failed(e.to_string()));
                    break 'feed;
                }
                Ok(Some(Err(greeting))) => {
                    assert!(greeting.ends_with(b"\n") && greeting.len() <= limits.max_message);
                    returned.extend_from_slice(&greeting);
                    greeted = true;
                    match Greeting::parse(&greeting) {
                        Ok(g) => {
                            assert_eq!(g.capabilities, Capabilities::from_line(&greeting));
                            events.push(Event::Greeting(
                                g.capabilities
                                    .map(|c| c.iter().map(str::to_owned).collect()),
                            ));
                        }
                        Err(e) => {
                            assert!(allowed(&e), "{e:?}");
                            events.push(Event::Failed(e.to_string()));
                            break 'feed;
                        }
                    }
                }
                Ok(Some(Ok(resp))) => {
                    let tagged = &resp.tagged;
                    assert!(tagged.starts_with(ours.as_bytes()));
                    assert!(tagged.ends_with(b"\n") && tagged.len() <= limits.max_message);
                    let mut spent = 0;
                    for msg in &resp.untagged {
                        assert!(msg.ends_with(b"\n") && msg.len() <= limits.max_message);
                        assert!(!msg.starts_with(ours.as_bytes()));
                        spent += cost(msg);
                        returned.extend_from_slice(msg);
                    }
                    assert!(
                        spent <= limits.max_untagged,
                        "{spent} bytes of untagged data"
                    );
                    returned.extend_from_slice(tagged);
                    events.push(Event::Response(resp));
                }
            }
        }
    }
    assert!(returned.len() + reader.buffered() <= data.len());
    assert_eq!(
        &data[..returned.len()],
        returned.as_slice(),
        "messages out of order"
    );
    let dbg = format!("{reader:?}");
    assert!(dbg.len() < 200, "Debug grows with the data: {dbg}");
    events
}

/// The response reader under both limits: the events do not depend on where the input is
/// cut, and [`drive`]'s checks hold for every cut.
pub fn check_response(data: &[u8], cuts: &[usize]) {
    for limits in LIMITS {
        let whole = drive(data, &[], limits);
        for &cut in cuts {
            assert_eq!(
                drive(data, &[cut], limits),
                whole,
                "cut at {cut} changed the events"
            );
        }
        assert_eq!(
            drive(data, cuts, limits),
            whole,
            "cuts {cuts:?} changed the events"
        );
    }
}

/// Capability lists: the same atoms as the codec reads (split at any ASCII whitespace), each
/// non-empty and found by `contains` in any case; `AUTH=` mechanisms are exactly the atoms
/// with that prefix; the list written back as `* CAPABILITY` reads the same; a greeting's list
/// is the line's.
pub fn check_capabilities(data: &[u8]) {
    let caps = Capabilities::from_line(data);
    let atoms = parse_capabilities(data);
    assert_eq!(caps.is_some(), atoms.is_some());
    let (Some(caps), Some(atoms)) = (caps, atoms) else {
        return;
    };
    let items: Vec<&str> = caps.iter().collect();
    let model: Vec<&str> = atoms
        .iter()
        .flat_map(|a| a.split_ascii_whitespace())
        .collect();
    assert_eq!(items, model);
    assert_eq!(caps.is_empty(), items.is_empty());
    for item in &items {
        assert!(!item.is_empty() && !item.bytes().any(|b| b.is_ascii_whitespace()));
        assert!(caps.contains(item));
        assert!(caps.contains(&item.to_ascii_lowercase()));
        assert!(caps.contains(&item.to_ascii_uppercase()));
    }
    let mechanisms: Vec<String> = items
        .iter()
        .filter(|i| i.len() > 5 && i.as_bytes()[..5].eq_ignore_ascii_case(b"AUTH="))
        .map(|i| i[5..].to_ascii_uppercase())
        .collect();
    assert_eq!(caps.auth_mechanisms().collect::<Vec<_>>(), mechanisms);
    let line = if items.is_empty() {
        "* CAPABILITY\r\n".to_owned()
    } else {
        format!("* CAPABILITY {}\r\n", items.join(" "))
    };
    assert_eq!(
        Capabilities::from_line(line.as_bytes()).as_ref(),
        Some(&caps)
    );
    assert_eq!(format!("{caps:?}"), format!("{items:?}"));
    if let Ok(g) = Greeting::parse(data) {
        assert_eq!(g.capabilities.as_ref(), Some(&caps));
    }
}
