//! Invariant checks shared by the fuzz targets and by the corpus replay test in
//! `crates/imapproxy-codec/tests/fuzz_corpus.rs` (which includes this file with `#[path]`), so
//! a committed corpus is checked on every `cargo test`, not only when fuzzing.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use imapproxy_codec::{
    AuthData, Direction, Frame, Framer, PreAuthCommand, PreAuthEvent, PreAuthLimits, PreAuthParser,
};

/// Two cut points derived from the input itself (so corpus files stay plain IMAP text).
pub fn cuts_for(data: &[u8]) -> Vec<usize> {
    let len = data.len();
    if len == 0 {
        return Vec::new();
    }
    let h = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    vec![(h as usize) % (len + 1), len / 2]
}

/// Feeds `data` to a framer in pieces ending at each of `cuts`; returns (end offset, frame).
pub fn frames(dir: Direction, data: &[u8], cuts: &[usize]) -> Vec<(usize, Frame)> {
    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c <= data.len()).collect();
    bounds.push(data.len());
    bounds.sort_unstable();
    let mut f = Framer::new(dir);
    let mut out = Vec::new();
    let mut start = 0;
    for end in bounds {
        let mut chunk = &data[start..end];
        let mut at = start;
        while let Some((n, frame)) = f.advance(chunk) {
            assert!(
                n > 0 && n <= chunk.len(),
                "offset {n} outside chunk of {}",
                chunk.len()
            );
            at += n;
            out.push((at, frame));
            chunk = &chunk[n..];
        }
        start = end;
    }
    // Whatever did not end a message is the framer's partial message.
    let framed = out.last().map_or(0, |&(end, _)| end);
    assert_eq!(f.partial_len(), (data.len() - framed) as u64);
    assert_eq!(f.at_boundary(), framed == data.len());
    out
}

/// Like [`frames`] uncut, but the first half of every literal run a piece meets is reported
/// with `skip_literal` rather than shown, as a relay moving it with `splice(2)` does.
pub fn frames_skipping(dir: Direction, data: &[u8]) -> Vec<(usize, Frame)> {
    let mut f = Framer::new(dir);
    let mut out = Vec::new();
    let mut chunk = data;
    let mut at = 0;
    loop {
        if let Some(r) = f
            .literal_remaining()
            .filter(|&r| r > 0 && !chunk.is_empty())
        {
            let k = (r.min(chunk.len() as u64) as usize).div_ceil(2);
            assert!(!f.skip_literal(r + 1), "skipped past the literal");
            assert!(f.skip_literal(k as u64));
            at += k;
            chunk = &chunk[k..];
            continue;
        }
        match f.advance(chunk) {
            Some((n, frame)) => {
                at += n;
                out.push((at, frame));
                chunk = &chunk[n..];
            }
            None => break,
        }
    }
    let framed = out.last().map_or(0, |&(end, _)| end);
    assert_eq!(f.partial_len(), (data.len() - framed) as u64);
    out
}

/// Framer invariants for both directions: frames do not depend on where the input is cut,
/// nor on literal bytes being skipped rather than shown,
/// each frame's `len` is exactly the bytes it ended, their sum is at most the input length,
/// and literal bytes are part of the length.
pub fn check_framer(data: &[u8], cuts: &[usize]) {
    for dir in [Direction::Client, Direction::Server] {
        let whole = frames(dir, data, &[]);
        let mut prev = 0usize;
        for &(end, frame) in &whole {
            assert_eq!(
                frame.len,
                (end - prev) as u64,
                "frame len != bytes consumed"
            );
            assert!(frame.literal_bytes < frame.len);
            prev = end;
        }
        let sum: u64 = whole.iter().map(|(_, f)| f.len).sum();
        assert!(sum <= data.len() as u64);
        for &cut in cuts {
            assert_eq!(
                frames(dir, data, &[cut]),
                whole,
                "{dir:?}: cut at {cut} changed frames"
            );
        }
        assert_eq!(
            frames_skipping(dir, data),
            whole,
            "{dir:?}: skipping literal bytes changed frames"
        );
    }
}

/// Pre-auth invariants under the default limits and tiny ones: after each push the buffer is
/// within the bound plus that read; after draining events it is below the bound; Debug output
/// of events is redacted. The parser is driven like the session drives it: SASL data mode after
/// `AUTHENTICATE` without an initial response, `clear()` after `STARTTLS`.
pub fn check_preauth(data: &[u8]) {
    for limits in [
        PreAuthLimits::default(),
        PreAuthLimits {
            max_line: 48,
            max_literal: 16,
        },
    ] {
        let mut p = PreAuthParser::new(limits);
        let bound = limits.max_message();
        let mut rest = data;
        let mut step = 0usize;
        while !rest.is_empty() {
            // Read sizes vary from 1 to 97 bytes, capped like a session caps them.
            let want = (step * 31 % 97) + 1;
            step += 1;
            let n = want.min(rest.len()).min(p.wanted().max(1));
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            p.push(chunk);
            assert!(
                p.buffered() <= bound + chunk.len(),
                "buffered {} > bound",
                p.buffered()
            );
            while let Some(event) = p.next_event() {
                let dbg = format!("{event:?}");
                match event {
                    PreAuthEvent::Command {
                        tag,
                        command: PreAuthCommand::Login { username, password },
                    } => {
                        // The exact shape: tag, user name, and a redacted password.
                        let _ = password.expose();
                        assert_eq!(
                            dbg,
                            format!(
                                "Command {{ tag: {tag:?}, command: Login {{ username: {username:?}, password: Secret(..) }} }}"
                            )
                        );
                    }
                    PreAuthEvent::Command {
                        command:
                            PreAuthCommand::Authenticate {
                                initial_response: None,
                                ..
                            },
                        ..
                    } => p.expect_auth_data(true),
                    PreAuthEvent::Command {
                        command: PreAuthCommand::StartTls,
                        ..
                    } => p.clear(),
                    PreAuthEvent::AuthData(AuthData::Cancel) => p.expect_auth_data(false),
                    PreAuthEvent::AuthData(AuthData::Data(_)) => p.expect_auth_data(false),
                    _ => {}
                }
            }
            assert!(
                p.buffered() < bound.max(1),
                "buffered {} after draining",
                p.buffered()
            );
        }
    }
}
