//! Property test for the relay [`Framer`]: random client and server streams built from a
//! grammar (and byte soup), fed in pieces cut at random points (every byte boundary for short
//! streams), must be framed exactly as an independent, deliberately simple reference model frames
//! them: the same frames (tag, kind, length, literal bytes, literal count) at the same offsets,
//! `at_boundary()` exactly at message ends, `partial_len()`, `partial_tag()` and
//! `awaiting_continuation()` right at every stop, and after `refused()` the next message framed
//! correctly.
//!
//! Deterministic: each test runs 2,000 seeded cases. `IMAPPROXY_PROPTEST_CASES=n` runs `n`
//! instead; `IMAPPROXY_PROPTEST_SEED=s` replays the one case a failure names.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::panic::{AssertUnwindSafe, catch_unwind};

use imapproxy_codec::{
    CommandName as C, Direction, Frame, FrameKind as K, Framer, Status as S, UntaggedKind as U,
};

const DEFAULT_CASES: u64 = 2_000;

/// Streams up to this long are cut at every byte boundary (once each, and all at once).
const SHORT: usize = 160;

// ------------------------------------------------------------------------------------ PRNG

/// SplitMix64: tiny and deterministic; plenty to pick grammar branches.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num / den`.
    fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

// ------------------------------------------------------------------------------- coverage

/// What one test exercised, printed at its end (`--nocapture`) so that a green run can be
/// told from a vacuous one.
#[derive(Clone, Copy)]
enum Count {
    Cases,
    Bytes,
    Plans,
    Frames,
    Literals,
    Refusals,
    AwaitingChecked,
    ContinuationAtLiteral,
    ProbedRefused,
    Unfinished,
}

const COUNTS: [(&str, Count); 10] = [
    ("cases", Count::Cases),
    ("stream bytes", Count::Bytes),
    ("cutting plans", Count::Plans),
    ("frames compared", Count::Frames),
    ("literals in them", Count::Literals),
    ("refusals", Count::Refusals),
    ("stops awaiting a continuation", Count::AwaitingChecked),
    ("continuations there", Count::ContinuationAtLiteral),
    ("refused() probes", Count::ProbedRefused),
    ("unfinished streams", Count::Unfinished),
];

thread_local! {
    static STATS: std::cell::RefCell<[u64; 10]> = const { std::cell::RefCell::new([0; 10]) };
}

fn bump(c: Count, n: u64) {
    STATS.with(|s| s.borrow_mut()[c as usize] += n);
}

// ------------------------------------------------------------------------- reference model
//
// Written from the framer's documented rules, not from its code: a message is a first line
// plus, while the line just read ends in a literal announcement the message may carry, the
// announced bytes and the line after them. Lines end at LF; one CR before it is part of the
// line end. The model reads the whole stream at once and is quadratic in places: it only has
// to be obviously right.

/// A frame as compared (the tag as a string, so that a mismatch prints readably).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fr {
    tag: Option<String>,
    kind: K,
    len: u64,
    literal_bytes: u64,
    literals: u32,
}

impl Fr {
    fn of(f: &Frame) -> Self {
        Self {
            tag: f.tag.map(|t| t.to_string()),
            kind: f.kind,
            len: f.len,
            literal_bytes: f.literal_bytes,
            literals: f.literals,
        }
    }
}

/// One message of the stream as the model sees it.
#[derive(Clone, Debug)]
struct ModelMsg {
    start: usize,
    /// One past its last byte (the stream's end for an unfinished last message).
    end: usize,
    /// `None`: the stream ends inside this message.
    frame: Option<Fr>,
    /// Stream offsets right after the line end of a synchronizing literal announcement (client
    /// direction): where the client waits for the server's `+`.
    sync_points: Vec<usize>,
    /// The server refused the synchronizing literal announced just before `end`.
    refused: bool,
}

/// RFC 9051 §9 tag: 1 to 64 (the framer's documented limit) ASTRING-CHARs other than `+`.
fn is_tag(b: &[u8]) -> bool {
    (1..=64).contains(&b.len())
        && b.iter()
            .all(|&c| (0x21..0x7f).contains(&c) && !br#"(){%*"\+"#.contains(&c))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `line` (line end removed) ends in `{n}` or `{n+}` (`~` before it changes nothing): the size,
/// and whether the sender waits for a continuation. A size that does not fit in u64 is text.
fn announcement(line: &[u8]) -> Option<(u64, bool)> {
    let inner = line.strip_suffix(b"}")?;
    let (inner, sync) = match inner.strip_suffix(b"+") {
        Some(d) => (d, false),
        None => (inner, true),
    };
    let open = inner.iter().rposition(|b| !b.is_ascii_digit())?;
    if inner[open] != b'{' || open + 1 == inner.len() {
        return None;
    }
    let n = std::str::from_utf8(&inner[open + 1..]).ok()?.parse().ok()?;
    Some((n, sync))
}

/// The framer reads tag, command name and status from the first 80 bytes of a message's first
/// line (room for a 64-byte tag and `UID FETCH`).
const HEAD: usize = 80;

/// The first line as far as it is read: its first [`HEAD`] bytes (without the CR of its line
/// end), and whether the line went on past them.
struct Head<'a> {
    text: &'a [u8],
    cut: bool,
}

impl<'a> Head<'a> {
    /// `line`: the first line without its LF.
    fn of(line: &'a [u8]) -> Self {
        if line.len() > HEAD {
            Self {
                text: &line[..HEAD],
                cut: true,
            }
        } else {
            Self {
                text: strip_cr(line),
                cut: false,
            }
        }
    }

    /// The word at the start of `s` (`None` when it runs into the end of a cut head: it may be
    /// longer than what was read) and what follows the space after it (if there is one).
    fn word(&self, s: &'a [u8]) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
        match s.iter().position(|&b| b == b' ') {
            Some(i) => (Some(&s[..i]), Some(&s[i + 1..])),
            None if self.cut => (None, None),
            None => (Some(s), None),
        }
    }
}

const NAMES: &[(&str, C)] = &[
    ("LOGOUT", C::Logout),
    ("IDLE", C::Idle),
    ("DONE", C::Done),
    ("ENABLE", C::Enable),
    ("COMPRESS", C::Compress),
    ("SELECT", C::Select),
    ("EXAMINE", C::Examine),
    ("UNSELECT", C::Unselect),
    ("CLOSE", C::Close),
    ("AUTHENTICATE", C::Authenticate),
    ("LOGIN", C::Login),
    ("STARTTLS", C::StartTls),
    ("ID", C::Id),
    ("NOOP", C::Noop),
    ("CAPABILITY", C::Capability),
    ("APPEND", C::Append),
    ("CHECK", C::Check),
    ("EXPUNGE", C::Expunge),
    ("CREATE", C::Create),
    ("DELETE", C::Delete),
    ("RENAME", C::Rename),
    ("SUBSCRIBE", C::Subscribe),
    ("UNSUBSCRIBE", C::Unsubscribe),
    ("LIST", C::List),
    ("LSUB", C::Lsub),
    ("STATUS", C::Status),
    ("NAMESPACE", C::Namespace),
    ("FETCH", C::Fetch),
    ("STORE", C::Store),
    ("COPY", C::Copy),
    ("MOVE", C::Move),
    ("SEARCH", C::Search),
    ("SORT", C::Sort),
    ("THREAD", C::Thread),
    ("NOTIFY", C::Notify),
    ("UNAUTHENTICATE", C::Unauthenticate),
    ("LANGUAGE", C::Language),
    ("COMPARATOR", C::Comparator),
    ("GETQUOTA", C::GetQuota),
    ("GETQUOTAROOT", C::GetQuotaRoot),
    ("SETQUOTA", C::SetQuota),
    ("GETACL", C::GetAcl),
    ("SETACL", C::SetAcl),
    ("DELETEACL", C::DeleteAcl),
    ("MYRIGHTS", C::MyRights),
    ("LISTRIGHTS", C::ListRights),
    ("GETMETADATA", C::GetMetadata),
    ("SETMETADATA", C::SetMetadata),
];

const UID_NAMES: &[(&str, C)] = &[
    ("FETCH", C::UidFetch),
    ("STORE", C::UidStore),
    ("COPY", C::UidCopy),
    ("MOVE", C::UidMove),
    ("SEARCH", C::UidSearch),
    ("SORT", C::UidSort),
    ("THREAD", C::UidThread),
    ("EXPUNGE", C::UidExpunge),
];

fn lookup(table: &[(&str, C)], word: &[u8]) -> Option<C> {
    table
        .iter()
        .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(word))
        .map(|&(_, c)| c)
}

fn status(word: &[u8]) -> Option<S> {
    [
        ("OK", S::Ok),
        ("NO", S::No),
        ("BAD", S::Bad),
        ("BYE", S::Bye),
        ("PREAUTH", S::PreAuth),
    ]
    .into_iter()
    .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(word))
    .map(|(_, s)| s)
}

/// `tag SP name ...` is a command (`UID name` read as one); a bare `DONE` ends IDLE; anything
/// else is a line.
fn classify_client(h: &Head<'_>) -> (Option<String>, K) {
    if let (Some(tag), Some(rest)) = h.word(h.text) {
        if is_tag(tag) {
            let (name, after) = h.word(rest);
            let cmd = match name {
                Some(n) if n.eq_ignore_ascii_case(b"UID") => after
                    .and_then(|a| h.word(a).0)
                    .and_then(|w| lookup(UID_NAMES, w))
                    .unwrap_or(C::UidOther),
                Some(n) => lookup(NAMES, n).unwrap_or(C::Other),
                None => C::Other,
            };
            return (Some(text(tag)), K::Command(cmd));
        }
    }
    if !h.cut && h.text.eq_ignore_ascii_case(b"DONE") {
        return (None, K::Command(C::Done));
    }
    (None, K::Line)
}

/// `+ ...` continuation, `* ...` untagged, anything else tagged (with a tag only when the
/// first word is one and something follows it).
fn classify_server(h: &Head<'_>) -> (Option<String>, K) {
    if h.text.first() == Some(&b'+') {
        return (None, K::Continuation);
    }
    let (first, rest) = h.word(h.text);
    if first == Some(b"*") {
        let Some(word) = rest.and_then(|r| h.word(r).0) else {
            return (None, K::Untagged(U::Other));
        };
        let after = rest.and_then(|r| h.word(r).1);
        let kind = if let Some(s) = status(word) {
            U::Status(s)
        } else if word.eq_ignore_ascii_case(b"CAPABILITY") {
            U::Capability
        } else if !word.is_empty() && word.iter().all(u8::is_ascii_digit) {
            // `* n EXISTS`, `* n EXPUNGE`, `* n FETCH`: n is a number, so not empty.
            match after.and_then(|a| h.word(a).0) {
                Some(k) if k.eq_ignore_ascii_case(b"EXISTS") => U::Exists,
                Some(k) if k.eq_ignore_ascii_case(b"EXPUNGE") => U::Expunge,
                Some(k) if k.eq_ignore_ascii_case(b"FETCH") => U::Fetch,
                _ => U::Other,
            }
        } else {
            U::Other
        };
        return (None, K::Untagged(kind));
    }
    match (first, rest) {
        (Some(tag), Some(rest)) if is_tag(tag) => (
            Some(text(tag)),
            K::Tagged(h.word(rest).0.and_then(status).unwrap_or(S::Other)),
        ),
        _ => (None, K::Tagged(S::Other)),
    }
}

/// Commands (and client lines) may carry literals; of the server's messages only untagged
/// data does: a `{n}` after status text or on a `+` line is text.
fn carries_literals(kind: K) -> bool {
    match kind {
        K::Command(_) | K::Line => true,
        K::Untagged(U::Status(_)) => false,
        K::Untagged(_) => true,
        _ => false,
    }
}

/// Frames the whole stream. `refuse(offset)` is asked at each synchronizing announcement of the
/// client direction whether the server refuses it there: the message then ends at `offset`.
fn reference(dir: Direction, s: &[u8], refuse: &mut dyn FnMut(usize) -> bool) -> Vec<ModelMsg> {
    let line_end = |from: usize| s[from..].iter().position(|&b| b == b'\n').map(|i| from + i);
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < s.len() {
        let start = pos;
        let mut msg = ModelMsg {
            start,
            end: s.len(),
            frame: None,
            sync_points: Vec::new(),
            refused: false,
        };
        let Some(lf) = line_end(pos) else {
            out.push(msg);
            break;
        };
        let head = Head::of(&s[pos..lf]);
        let (tag, kind) = match dir {
            Direction::Client => classify_client(&head),
            Direction::Server => classify_server(&head),
        };
        let mut line = strip_cr(&s[pos..lf]);
        pos = lf + 1;
        let (mut literals, mut literal_bytes) = (0u32, 0u64);
        let complete = loop {
            let Some((n, sync)) = announcement(line).filter(|_| carries_literals(kind)) else {
                break true;
            };
            literals += 1;
            if sync && dir == Direction::Client {
                msg.sync_points.push(pos);
                if refuse(pos) {
                    msg.refused = true;
                    break true;
                }
            }
            if n > (s.len() - pos) as u64 {
                break false;
            }
            literal_bytes += n;
            pos += n as usize;
            let Some(lf) = line_end(pos) else {
                break false;
            };
            line = strip_cr(&s[pos..lf]);
            pos = lf + 1;
        };
        if !complete {
            out.push(msg);
            break;
        }
        msg.end = pos;
        msg.frame = Some(Fr {
            tag,
            kind,
            len: (pos - start) as u64,
            literal_bytes,
            literals,
        });
        out.push(msg);
    }
    out
}

/// The tag of the message starting at `start` once `pos` bytes of the stream are in: the first
/// word of its first line, once the space after it has arrived. A tag is at most 64 bytes, so
/// only the first 65 bytes can hold a tag's end.
fn partial_tag_model(s: &[u8], start: usize, pos: usize) -> Option<String> {
    let seen = &s[start..pos.min(start + 65)];
    let line = &seen[..seen.iter().position(|&b| b == b'\n').unwrap_or(seen.len())];
    let space = line.iter().position(|&b| b == b' ')?;
    is_tag(&line[..space]).then(|| text(&line[..space]))
}

// ----------------------------------------------------------------------------------- driver

/// Where the driver stands: `pos` bytes fed, `idx` the model message they are inside (or the
/// one starting at `pos`), and whether `continuation_seen()` was called since `pos` was reached.
struct At {
    pos: usize,
    idx: usize,
    continued: bool,
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// What the framer must say between two calls.
fn check(f: &Framer, s: &[u8], model: &[ModelMsg], at: &At) -> Result<(), String> {
    let pos = at.pos;
    let (start, end, sync) = match model.get(at.idx) {
        Some(m) => (m.start, m.end, m.sync_points.contains(&pos)),
        None => (s.len(), s.len(), false),
    };
    ensure!(
        (start..=end).contains(&pos),
        "at {pos}: past the end ({end}) of message {} that started at {start}, without a frame",
        at.idx
    );
    ensure!(
        f.at_boundary() == (pos == start),
        "at {pos}: at_boundary() = {}, message {} starts at {start}",
        f.at_boundary(),
        at.idx
    );
    ensure!(
        f.partial_len() == (pos - start) as u64,
        "at {pos}: partial_len() = {}, want {}",
        f.partial_len(),
        pos - start
    );
    let want = partial_tag_model(s, start, pos);
    let got = f.partial_tag().map(|t| t.to_string());
    ensure!(
        got == want,
        "at {pos}: partial_tag() = {got:?}, want {want:?}"
    );
    let want = sync && !at.continued;
    ensure!(
        f.awaiting_continuation() == want,
        "at {pos}: awaiting_continuation() = {}, want {want}",
        !want
    );
    Ok(())
}

/// Feeds `s` to a fresh framer, stopping at each of `cuts` and at each refusal; checks every
/// frame and every stop against the model, and probes `refused()` and `continuation_seen()`
/// where they must change nothing.
fn drive(
    dir: Direction,
    s: &[u8],
    model: &[ModelMsg],
    cuts: &[usize],
    probe_seed: u64,
) -> Result<(), String> {
    let mut stops: Vec<usize> = cuts
        .iter()
        .copied()
        .chain(model.iter().filter(|m| m.refused).map(|m| m.end))
        .chain([s.len()])
        .filter(|&c| c <= s.len())
        .collect();
    stops.sort_unstable();
    stops.dedup();
    let mut rng = Rng::new(probe_seed);
    let mut f = Framer::new(dir);
    if f.direction() != dir {
        return Err("direction() is not the one given".into());
    }
    let mut at = At {
        pos: 0,
        idx: 0,
        continued: false,
    };
    check(&f, s, model, &at)?;
    for stop in stops {
        let mut chunk = &s[at.pos..stop];
        while let Some((n, frame)) = f.advance(chunk) {
            ensure!(
                n > 0 && n <= chunk.len(),
                "at {}: advance returned n = {n} for a chunk of {}",
                at.pos,
                chunk.len()
            );
            let end = at.pos + n;
            let got = Fr::of(&frame);
            let Some(m) = model.get(at.idx) else {
                return Err(format!(
                    "frame ending at {end} after the model's last message: {got:?}"
                ));
            };
            ensure!(
                m.end == end && !m.refused && m.frame.as_ref() == Some(&got),
                "message {} ({}..{}): framer gave {got:?} ending at {end}, model {:?}{}",
                at.idx,
                m.start,
                m.end,
                m.frame,
                if m.refused { " (refused)" } else { "" }
            );
            bump(Count::Frames, 1);
            bump(Count::Literals, u64::from(got.literals));
            at = At {
                pos: end,
                idx: at.idx + 1,
                continued: false,
            };
            chunk = &chunk[n..];
            check(&f, s, model, &at)?;
        }
        if at.pos != stop {
            at.pos = stop;
            at.continued = false;
        }
        check(&f, s, model, &at)?;
        if let Some(m) = model.get(at.idx).filter(|m| m.refused && m.end == stop) {
            // The server answered the command before asking for its literal.
            let got = f.refused().map(|fr| Fr::of(&fr));
            ensure!(
                got == m.frame,
                "at {stop}: refused() = {got:?}, want {:?}",
                m.frame
            );
            bump(Count::Refusals, 1);
            at.idx += 1;
            at.continued = false;
            check(&f, s, model, &at)?;
            ensure!(
                f.refused().is_none(),
                "at {stop}: a second refused() gave a frame"
            );
            continue;
        }
        let awaiting = f.awaiting_continuation();
        bump(Count::AwaitingChecked, u64::from(awaiting));
        if !awaiting && rng.chance(1, 3) {
            bump(Count::ProbedRefused, 1);
            // A tagged reply that ends nothing: refused() must change nothing.
            ensure!(
                f.refused().is_none(),
                "at {stop}: refused() gave a frame while nothing awaited a continuation"
            );
            check(&f, s, model, &at)?;
        }
        if rng.chance(1, if awaiting { 2 } else { 6 }) {
            // The server's `+` (or one answering no literal: IDLE, SASL).
            f.continuation_seen();
            bump(Count::ContinuationAtLiteral, u64::from(awaiting));
            at.continued = true;
            check(&f, s, model, &at)?;
        }
    }
    let finished = model.len() - usize::from(model.last().is_some_and(|m| m.frame.is_none()));
    ensure!(
        at.idx == finished,
        "stream fed, {} of {} complete messages framed",
        at.idx,
        finished
    );
    Ok(())
}

/// How to cut a stream: (name, cut offsets).
fn plans(len: usize, rng: &mut Rng) -> Vec<(String, Vec<usize>)> {
    let mut plans = vec![("whole".to_string(), Vec::new())];
    if len <= SHORT {
        plans.push(("every byte".to_string(), (1..len).collect()));
        plans.extend((1..len).map(|k| (format!("cut at {k}"), vec![k])));
    }
    let maxima: &[usize] = if len <= SHORT {
        &[4]
    } else if len <= 20_000 {
        &[3, 17, 300]
    } else {
        &[16, 700, 9000]
    };
    for &max in maxima {
        let mut cuts = Vec::new();
        let mut at = 0;
        loop {
            at += rng.range(1, max);
            if at >= len {
                break;
            }
            cuts.push(at);
        }
        plans.push((format!("random chunks of 1..={max}"), cuts));
    }
    plans
}

// -------------------------------------------------------------------------------- generator

/// How big a case gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Size {
    Short,
    Normal,
    Large,
}

#[derive(Clone, Copy)]
enum Lit {
    /// `{n}`: the client waits for `+`.
    Sync,
    /// `{n+}` (RFC 7888).
    NonSync,
    /// `~{n}` (RFC 3516).
    Binary,
    /// `~{n+}`.
    BinaryNonSync,
}

/// One generated message and what the generator knows about it.
struct Msg {
    bytes: Vec<u8>,
    /// The frame's tag and kind, or `None` to leave them to the model's classifier (garbage).
    tag_kind: Option<(Option<String>, K)>,
    /// Each literal: (offset just after its announcement's line end, size, synchronizing).
    lits: Vec<(usize, u64, bool)>,
    /// The server refused the literal with this index: the message stops before it.
    refused_at: Option<usize>,
}

impl Msg {
    fn new(tag_kind: Option<(Option<String>, K)>) -> Self {
        Self {
            bytes: Vec::new(),
            tag_kind,
            lits: Vec::new(),
            refused_at: None,
        }
    }

    fn put(&mut self, b: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(b);
        self
    }

    fn eol(&mut self, rng: &mut Rng) {
        self.put(if rng.chance(1, 8) { b"\n" } else { b"\r\n" });
    }

    fn literal(&mut self, rng: &mut Rng, kind: Lit, body: &[u8]) {
        let n = body.len();
        let z = if rng.chance(1, 12) { "00" } else { "" };
        let ann = match kind {
            Lit::Sync => format!("{{{z}{n}}}"),
            Lit::NonSync => format!("{{{z}{n}+}}"),
            Lit::Binary => format!("~{{{z}{n}}}"),
            Lit::BinaryNonSync => format!("~{{{z}{n}+}}"),
        };
        self.put(ann.as_bytes());
        self.eol(rng);
        let sync = matches!(kind, Lit::Sync | Lit::Binary);
        self.lits.push((self.bytes.len(), n as u64, sync));
        self.put(body);
    }

    /// Sometimes the server refuses one of the synchronizing literals: the client sends
    /// neither it nor anything after it.
    fn maybe_refuse(&mut self, rng: &mut Rng) {
        let sync: Vec<usize> = (0..self.lits.len()).filter(|&i| self.lits[i].2).collect();
        if sync.is_empty() || !rng.chance(1, 4) {
            return;
        }
        let i = rng.pick(&sync);
        self.bytes.truncate(self.lits[i].0);
        self.refused_at = Some(i);
    }

    /// (literals, literal bytes) of the frame.
    fn literal_totals(&self) -> (u32, u64) {
        let sent = &self.lits[..self.refused_at.unwrap_or(self.lits.len())];
        let count = self.refused_at.map_or(self.lits.len(), |i| i + 1);
        (count as u32, sent.iter().map(|l| l.1).sum())
    }
}

const TAG_CHARS: &[u8] =
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_]}[!#$&',/:;<=>?@^`|~";
const BAD_TAG_CHARS: &[u8] = b"+*(){%\"\\\x7f\x01\xc3\r";

const BODY_TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"{",
    b"}",
    b"{5}\r\n",
    b"{3+}\r\n",
    b"~{2}\r\n",
    b"{0}\r\n",
    b"a1 NOOP\r\n",
    b"a2 LOGOUT\r\n",
    b"A1 OK done\r\n",
    b"DONE\r\n",
    b"* OK hi\r\n",
    b"* 1 FETCH (BODY[] {3}\r\n",
    b"+ go\r\n",
    b"\0",
    b"hello ",
];

const TEXT_TOKENS: &[&[u8]] = &[
    b"1:*",
    b"(FLAGS)",
    b"\"q {5}\"",
    b"{",
    b"}",
    b"{5}",
    b"{3+} x",
    b"x{",
    b"]",
    b"[",
    b"\r",
    b"~",
    b"+",
    b"*",
    b" ",
    b"\"",
    b"\\",
    b"DONE",
    b"a1 NOOP",
    b"\0",
    b"\xff",
    b"{99}x",
    b"{18446744073709551616}x",
];

/// Deliberately invalid announcements: all text.
const BAD_ANNOUNCEMENTS: &[&[u8]] = &[
    b"{5",
    b"{+}",
    b"{}",
    b"{99999999999999999999999}",
    b"{18446744073709551616}",
    b"{5 }",
    b"{-5}",
    b"{5}x",
    b"{5++}",
    b"{ 5}",
    b"~{+5}",
    b"{0x5}",
    b"{5}}",
    b"5}",
    b"{5+",
    b"{5}\r",
    b"{5}{",
    b"}{5",
    b"{5}\t",
    b"+{5}x",
];

/// Text without LF that does not end in an announcement (its last byte, a final CR aside, is
/// never `}`).
fn safe_text(rng: &mut Rng, max_tokens: usize) -> Vec<u8> {
    let mut t = Vec::new();
    for _ in 0..rng.range(1, max_tokens) {
        if rng.chance(1, 3) {
            let b = rng.range(0, 255) as u8;
            t.push(if b == b'\n' { b'n' } else { b });
        } else {
            t.extend_from_slice(rng.pick(TEXT_TOKENS));
        }
    }
    if strip_cr(&t).last() == Some(&b'}') {
        t.push(b'x');
    }
    t
}

/// `n` bytes of literal data full of line ends, braces and lines that look like messages.
fn body(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 32);
    while out.len() < n {
        if rng.chance(1, 3) {
            out.push(rng.next_u64() as u8);
        } else {
            out.extend_from_slice(rng.pick(BODY_TOKENS));
        }
    }
    out.truncate(n);
    if n >= 4 && rng.chance(1, 3) {
        // The body itself ends like an announcement; the framer must not read it as one.
        let end: &[u8] = rng.pick(&[&b"{3}"[..], b"{3}\r", b"{1+}", b"~{2}", b"{0}"]);
        out.truncate(n - end.len().min(n));
        out.extend_from_slice(end);
        out.truncate(n);
    }
    out
}

/// Long filler for overlong lines (no LF, not ending in `}`).
fn filler(rng: &mut Rng, n: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"xyz{}0123456789 +~()[]\"\r";
    let mut t: Vec<u8> = (0..n).map(|_| rng.pick(ALPHABET)).collect();
    if strip_cr(&t).last() == Some(&b'}') {
        t.push(b'x');
    }
    t
}

struct Gen<'r> {
    rng: &'r mut Rng,
    size: Size,
    /// Recently used valid tags, for reuse.
    recent: Vec<Vec<u8>>,
}

impl Gen<'_> {
    /// A tag and whether it is valid: short ones, reused ones, 60..=64 bytes, and invalid ones
    /// (empty, too long, a forbidden byte that is never the first).
    fn tag(&mut self) -> (Vec<u8>, bool) {
        let r = self.rng.below(100);
        if r < 15 && !self.recent.is_empty() {
            let i = self.rng.below(self.recent.len());
            return (self.recent[i].clone(), true);
        }
        let valid_len = match r {
            0..=79 => self.rng.range(1, 8),
            80..=87 => self.rng.range(60, 64),
            _ => 0,
        };
        if valid_len > 0 {
            let t: Vec<u8> = (0..valid_len).map(|_| self.rng.pick(TAG_CHARS)).collect();
            self.recent.push(t.clone());
            if self.recent.len() > 8 {
                self.recent.remove(0);
            }
            return (t, true);
        }
        let t = match self.rng.below(3) {
            0 => Vec::new(),
            1 => {
                let n = if self.rng.chance(1, 4) {
                    200
                } else {
                    self.rng.range(65, 90)
                };
                (0..n).map(|_| self.rng.pick(TAG_CHARS)).collect()
            }
            _ => {
                let mut t: Vec<u8> = (0..self.rng.range(1, 6))
                    .map(|_| self.rng.pick(TAG_CHARS))
                    .collect();
                let at = self.rng.range(1, t.len());
                t.insert(at, self.rng.pick(BAD_TAG_CHARS));
                t
            }
        };
        (t, false)
    }

    /// Random ASCII case (names are case-insensitive).
    fn case(&mut self, s: &[u8]) -> Vec<u8> {
        if !self.rng.chance(1, 4) {
            return s.to_vec();
        }
        s.iter()
            .map(|&b| {
                if self.rng.chance(1, 2) {
                    b.to_ascii_lowercase()
                } else {
                    b.to_ascii_uppercase()
                }
            })
            .collect()
    }

    fn lit_size(&mut self) -> usize {
        let r = &mut *self.rng;
        match self.size {
            Size::Short => {
                if r.chance(1, 4) {
                    0
                } else {
                    r.range(1, 12)
                }
            }
            Size::Normal => match r.below(6) {
                0 => 0,
                1..=3 => r.range(1, 16),
                _ => r.range(17, 400),
            },
            Size::Large => match r.below(6) {
                0 => 0,
                1 | 2 => r.range(1, 16),
                3 | 4 => r.range(17, 2000),
                _ => r.range(2001, 40_000),
            },
        }
    }

    fn lit(&mut self, m: &mut Msg, kinds: &[(Lit, usize)]) {
        let total: usize = kinds.iter().map(|k| k.1).sum();
        let mut r = self.rng.below(total);
        let mut kind = kinds[0].0;
        for &(k, w) in kinds {
            if r < w {
                kind = k;
                break;
            }
            r -= w;
        }
        let n = self.lit_size();
        let b = body(self.rng, n);
        m.literal(self.rng, kind, &b);
    }

    fn client_lit(&mut self, m: &mut Msg) {
        self.lit(
            m,
            &[
                (Lit::Sync, 40),
                (Lit::NonSync, 30),
                (Lit::Binary, 15),
                (Lit::BinaryNonSync, 15),
            ],
        );
    }

    fn server_lit(&mut self, m: &mut Msg) {
        self.lit(m, &[(Lit::Sync, 70), (Lit::Binary, 20), (Lit::NonSync, 10)]);
    }

    /// Starts `tag SP` of a command named `name`.
    fn command(&mut self, name: C) -> Msg {
        let (tag, valid) = self.tag();
        let expect = if valid {
            (Some(text(&tag)), K::Command(name))
        } else {
            (None, K::Line)
        };
        let mut m = Msg::new(Some(expect));
        m.put(&tag).put(b" ");
        m
    }

    // ------------------------------------------------------------------ client grammar

    fn client(&mut self) -> Vec<Msg> {
        let mut msgs = match self.rng.below(100) {
            0..=24 => vec![self.simple()],
            25..=44 => vec![self.append()],
            45..=54 => vec![self.literal_args()],
            55..=62 => self.idle(),
            63..=70 => self.bad_announcement(),
            71..=84 => vec![self.bad_line()],
            85..=94 => vec![self.literal_on_anything()],
            _ if self.size == Size::Large => vec![self.overlong(Direction::Client)],
            _ => vec![self.simple()],
        };
        for m in &mut msgs {
            m.maybe_refuse(self.rng);
        }
        msgs
    }

    fn simple(&mut self) -> Msg {
        // (text, command, whether arguments may follow without changing the command)
        const COMMANDS: &[(&str, C, bool)] = &[
            ("NOOP", C::Noop, true),
            ("CAPABILITY", C::Capability, true),
            ("LOGOUT", C::Logout, true),
            ("SELECT INBOX", C::Select, true),
            ("EXAMINE \"a b\"", C::Examine, true),
            ("FETCH 1:* (FLAGS)", C::Fetch, true),
            ("UID FETCH 1:* (BODY.PEEK[])", C::UidFetch, true),
            ("UID STORE 1 +FLAGS (\\Seen)", C::UidStore, true),
            ("UID EXPUNGE 1:3", C::UidExpunge, true),
            ("UID MOVE 1 Trash", C::UidMove, true),
            ("UID THREAD REFS UTF-8 ALL", C::UidThread, true),
            ("UID", C::UidOther, false),
            ("UID XFOO", C::UidOther, true),
            ("UID  FETCH 1", C::UidOther, true),
            ("UID LOGOUT", C::UidOther, true),
            ("ENABLE CONDSTORE", C::Enable, true),
            ("XAPPLEPUSHSERVICE aps-version 2", C::Other, true),
            ("LIST \"\" *", C::List, true),
            ("STATUS INBOX (MESSAGES)", C::Status, true),
            ("GETQUOTAROOT INBOX", C::GetQuotaRoot, true),
            ("UNAUTHENTICATE", C::Unauthenticate, true),
            ("COMPRESS DEFLATE", C::Compress, true),
            ("ID NIL", C::Id, true),
            ("DONE", C::Done, true),
            ("IDLE", C::Idle, true),
            ("NAMESPACE", C::Namespace, true),
            (
                "SETMETADATA INBOX (/private/comment NIL)",
                C::SetMetadata,
                true,
            ),
            ("", C::Other, true),
            ("STARTTLS", C::StartTls, true),
            ("AUTHENTICATE PLAIN", C::Authenticate, true),
            ("LOGIN a b", C::Login, true),
            ("SORT (DATE) UTF-8 ALL", C::Sort, true),
            ("MYRIGHTS INBOX", C::MyRights, true),
            ("CHECK", C::Check, true),
            ("EXPUNGE", C::Expunge, true),
            ("UNSELECT", C::Unselect, true),
            ("CLOSE", C::Close, true),
        ];
        let (cmd, name, args) = self.rng.pick(COMMANDS);
        let mut m = self.command(name);
        let cmd = self.case(cmd.as_bytes());
        m.put(&cmd);
        if args && self.rng.chance(1, 3) {
            let t = safe_text(self.rng, 8);
            m.put(b" ").put(&t);
        }
        m.eol(self.rng);
        m
    }

    fn append(&mut self) -> Msg {
        const MAILBOXES: &[&[u8]] = &[b"INBOX", b"\"Sent Items\"", b"x{5}", b"{", b"Archive/24"];
        let mut m = self.command(C::Append);
        let name = self.case(b"APPEND");
        m.put(&name).put(b" ");
        if self.rng.chance(1, 6) {
            self.client_lit(&mut m);
        } else {
            m.put(self.rng.pick(MAILBOXES));
        }
        let count = if self.rng.chance(1, 3) {
            self.rng.range(2, 4) // MULTIAPPEND
        } else {
            1
        };
        for _ in 0..count {
            if self.rng.chance(1, 2) {
                m.put(b" (\\Seen $Forwarded)");
            }
            if self.rng.chance(1, 4) {
                m.put(b" \"01-Jan-2024 10:00:00 +0000\"");
            }
            if self.rng.chance(1, 4) {
                m.put(b" CATENATE (");
                for j in 0..self.rng.range(1, 4) {
                    if j > 0 {
                        m.put(b" ");
                    }
                    if self.rng.chance(1, 3) {
                        m.put(b"URL \"/INBOX;UID=5/;SECTION=1\"");
                    } else {
                        m.put(b"TEXT ");
                        self.client_lit(&mut m);
                    }
                }
                m.put(b")");
            } else {
                m.put(b" ");
                self.client_lit(&mut m);
            }
        }
        m.eol(self.rng);
        m
    }

    /// Commands whose arguments are literals.
    fn literal_args(&mut self) -> Msg {
        let (name, words, count): (C, &[u8], usize) = match self.rng.below(4) {
            0 => (C::Login, b"LOGIN", 2),
            1 => (C::UidSearch, b"UID SEARCH CHARSET UTF-8 TEXT", 1),
            2 => (C::Search, b"SEARCH TEXT", 2),
            _ => (C::Rename, b"RENAME", 2),
        };
        let mut m = self.command(name);
        let words = self.case(words);
        m.put(&words);
        for i in 0..count {
            m.put(if name == C::Search && i > 0 {
                b" SUBJECT "
            } else {
                b" "
            });
            self.client_lit(&mut m);
        }
        m.eol(self.rng);
        m
    }

    fn idle(&mut self) -> Vec<Msg> {
        let mut idle = self.command(C::Idle);
        let name = self.case(b"IDLE");
        idle.put(&name);
        idle.eol(self.rng);
        let mut done = Msg::new(Some((None, K::Command(C::Done))));
        done.put(self.rng.pick(&[&b"DONE"[..], b"done", b"Done"]));
        done.eol(self.rng);
        vec![idle, done]
    }

    /// An announcement that is not one, then a command where its "literal" would be.
    fn bad_announcement(&mut self) -> Vec<Msg> {
        let mut m = self.command(C::Append);
        let name = self.case(b"APPEND INBOX ");
        m.put(&name).put(self.rng.pick(BAD_ANNOUNCEMENTS));
        m.put(b"\r\n"); // a bare LF would make `{5}\r` an announcement
        vec![m, self.simple()]
    }

    fn bad_line(&mut self) -> Msg {
        let line = (None, K::Line);
        let mut m = match self.rng.below(6) {
            0 => Msg::new(Some(line)),
            1 => {
                let mut m = Msg::new(Some(line));
                m.put(
                    self.rng
                        .pick(&[&b" NOOP"[..], b"NOOP", b"*", b"+ x", b"+", b"\""]),
                );
                m
            }
            2 | 3 => {
                let mut m = Msg::new(None);
                let t = safe_text(self.rng, 12);
                m.put(&t);
                m
            }
            4 => {
                let mut m = Msg::new(None);
                m.put(self.rng.pick(&[
                    &b"DONE "[..],
                    b" DONE",
                    b"DONE x",
                    b"DONEX",
                    b"DONE\r",
                    b"DON",
                ]));
                m.put(b"\r\n");
                return m;
            }
            _ => {
                // A line without a tag still carries literals.
                let mut m = Msg::new(None);
                let lead = self.rng.pick(&[&b""[..], b"hello ", b" ", b"* "]);
                m.put(lead);
                self.client_lit(&mut m);
                m
            }
        };
        m.eol(self.rng);
        m
    }

    /// Literals after any command (`NOOP {5+}`, `DONE {3}`, `UID {0}`...).
    fn literal_on_anything(&mut self) -> Msg {
        let mut m = self.simple();
        // Replace the line end with literals and a new one.
        while m.bytes.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
            m.bytes.pop();
        }
        if strip_cr(&m.bytes).last() == Some(&b'}') {
            m.put(b"x");
        }
        for _ in 0..self.rng.range(1, 3) {
            m.put(b" ");
            self.client_lit(&mut m);
        }
        m.eol(self.rng);
        m
    }

    /// A line far longer than the framer keeps, possibly ending in an announcement.
    fn overlong(&mut self, dir: Direction) -> Msg {
        let n = self.rng.range(1000, 60_000);
        let mut m = match dir {
            Direction::Client => {
                let mut m = self.command(C::Fetch);
                m.put(b"FETCH 1 (BODY[]) ");
                m
            }
            Direction::Server => {
                let mut m = Msg::new(Some((None, K::Untagged(U::Fetch))));
                m.put(b"* 1 FETCH (X ");
                m
            }
        };
        let f = filler(self.rng, n);
        m.put(&f);
        if self.rng.chance(1, 2) {
            m.put(b" ");
            match dir {
                Direction::Client => self.client_lit(&mut m),
                Direction::Server => self.server_lit(&mut m),
            }
            m.put(b")");
        }
        m.eol(self.rng);
        m
    }

    // ------------------------------------------------------------------ server grammar

    fn server(&mut self) -> Vec<Msg> {
        let m = match self.rng.below(100) {
            0..=24 => self.fetch(),
            25..=34 => self.other_data(),
            35..=49 => self.untagged_status(),
            50..=59 => self.continuation(),
            60..=84 => self.tagged_reply(),
            85..=91 => {
                let mut m = Msg::new(None);
                let t = safe_text(self.rng, 12);
                m.put(&t);
                m.eol(self.rng);
                m
            }
            92..=95 => {
                let (line, kind): (&[u8], K) = self.rng.pick(&[
                    (&b"*"[..], K::Untagged(U::Other)),
                    (b"* ", K::Untagged(U::Other)),
                    (b"*foo {3}", K::Tagged(S::Other)),
                    (b"* 7", K::Untagged(U::Other)),
                    (b"* 7 FETCH", K::Untagged(U::Fetch)),
                    // No message number: not message data.
                    (b"*  FETCH (FLAGS ())", K::Untagged(U::Other)),
                    (b"*  EXPUNGE", K::Untagged(U::Other)),
                    (b"", K::Tagged(S::Other)),
                    (b"ok", K::Tagged(S::Other)),
                ]);
                let mut m = Msg::new(Some((None, kind)));
                m.put(line);
                m.eol(self.rng);
                m
            }
            _ if self.size == Size::Large => self.overlong(Direction::Server),
            _ => self.fetch(),
        };
        vec![m]
    }

    /// A message number, now and then far too long to be one (the model then decides the
    /// kind: the framer reads only the first 80 bytes of the line).
    fn number(&mut self, m: &mut Msg) -> Vec<u8> {
        if self.rng.chance(1, 20) {
            m.tag_kind = None;
            let n = self.rng.range(21, 100);
            return (0..n).map(|_| b'0' + self.rng.below(10) as u8).collect();
        }
        self.rng.range(1, 99_999).to_string().into_bytes()
    }

    fn fetch(&mut self) -> Msg {
        let mut m = Msg::new(Some((None, K::Untagged(U::Fetch))));
        let n = self.number(&mut m);
        let name = self.case(b"FETCH");
        m.put(b"* ").put(&n).put(b" ").put(&name).put(b" (");
        for i in 0..self.rng.range(1, 4) {
            if i > 0 {
                m.put(b" ");
            }
            match self.rng.below(7) {
                0 => {
                    m.put(b"UID 7");
                }
                1 => {
                    m.put(b"FLAGS (\\Seen)");
                }
                2 => {
                    m.put(b"BODY[HEADER] NIL");
                }
                3 => {
                    m.put(b"BINARY[] ");
                    self.lit(&mut m, &[(Lit::Binary, 1)]);
                }
                4 => {
                    m.put(b"BODY[]<0> ");
                    self.server_lit(&mut m);
                }
                _ => {
                    m.put(b"BODY[] ");
                    self.server_lit(&mut m);
                }
            }
        }
        m.put(b")");
        m.eol(self.rng);
        m
    }

    fn other_data(&mut self) -> Msg {
        let other = Some((None, K::Untagged(U::Other)));
        let mut m = match self.rng.below(8) {
            0 => {
                let mut m = Msg::new(other);
                m.put(b"* LIST (\\HasNoChildren) \"/\" ");
                self.server_lit(&mut m);
                m
            }
            1 => {
                let mut m = Msg::new(other);
                m.put(b"* STATUS ");
                self.server_lit(&mut m);
                m.put(b" (MESSAGES 3)");
                m
            }
            2 => {
                let mut m = Msg::new(other);
                m.put(b"* ID (\"name\" ");
                self.server_lit(&mut m);
                m.put(b")");
                m
            }
            3 => {
                let mut m = Msg::new(other);
                m.put(self.rng.pick(&[
                    &b"* SEARCH 1 2 3"[..],
                    b"* ENABLED CONDSTORE",
                    b"* VANISHED (EARLIER) 1:3",
                    b"* FLAGS (\\Seen \\Answered)",
                    b"* 4 RECENT",
                    b"* ESEARCH (TAG \"a\") UID ALL 1:3",
                ]));
                m
            }
            4 => {
                let mut m = Msg::new(Some((None, K::Untagged(U::Capability))));
                let name = self.case(b"CAPABILITY");
                m.put(b"* ").put(&name).put(b" IMAP4rev1 IDLE");
                m
            }
            5 | 6 => {
                let (word, kind) = self
                    .rng
                    .pick(&[(&b"EXISTS"[..], U::Exists), (b"EXPUNGE", U::Expunge)]);
                let mut m = Msg::new(Some((None, K::Untagged(kind))));
                let n = self.number(&mut m);
                let word = self.case(word);
                m.put(b"* ").put(&n).put(b" ").put(&word);
                m
            }
            _ => {
                // Any untagged data may carry a literal, even where none belongs.
                let mut m = Msg::new(Some((None, K::Untagged(U::Exists))));
                m.put(b"* 3 EXISTS ");
                self.server_lit(&mut m);
                m
            }
        };
        m.eol(self.rng);
        m
    }

    /// Text that ends like an announcement but, after status text, is not one.
    fn status_tail(&mut self, m: &mut Msg) {
        if self.rng.chance(1, 2) {
            let t = safe_text(self.rng, 6);
            m.put(b" ").put(&t);
        }
        let suffix: &[u8] = self.rng.pick(&[
            &b" {5}"[..],
            b" {5+}",
            b" ~{5}",
            b" {0}",
            b" x{5}",
            b" {18446744073709551615}",
            b"",
        ]);
        m.put(suffix);
    }

    fn untagged_status(&mut self) -> Msg {
        let (word, s) = self.rng.pick(&[
            (&b"OK"[..], S::Ok),
            (b"NO", S::No),
            (b"BAD", S::Bad),
            (b"BYE", S::Bye),
            (b"PREAUTH", S::PreAuth),
        ]);
        let mut m = Msg::new(Some((None, K::Untagged(U::Status(s)))));
        let word = self.case(word);
        m.put(b"* ").put(&word);
        if self.rng.chance(1, 2) {
            m.put(self.rng.pick(&[
                &b" [ALERT]"[..],
                b" [CAPABILITY IMAP4rev1 {5}]",
                b" [UIDNEXT 4]",
            ]));
        }
        self.status_tail(&mut m);
        m.eol(self.rng);
        m
    }

    fn continuation(&mut self) -> Msg {
        let mut m = Msg::new(Some((None, K::Continuation)));
        m.put(b"+");
        m.put(self.rng.pick(&[
            &b" {5}"[..],
            b" idling",
            b"",
            b"{5}",
            b" dGVzdA==",
            b" Ready {0}",
            b"{5+}",
            b" ~{3}",
        ]));
        m.eol(self.rng);
        m
    }

    fn tagged_reply(&mut self) -> Msg {
        let (tag, valid) = self.tag();
        let (word, s) = self.rng.pick(&[
            (&b"OK"[..], S::Ok),
            (b"NO", S::No),
            (b"BAD", S::Bad),
            (b"BYE", S::Bye),
            (b"PREAUTH", S::PreAuth),
            (b"XYZ", S::Other),
            (b"", S::Other),
        ]);
        let expect = if valid {
            (Some(text(&tag)), K::Tagged(s))
        } else {
            (None, K::Tagged(S::Other))
        };
        let mut m = Msg::new(Some(expect));
        let word = self.case(word);
        m.put(&tag).put(b" ").put(&word);
        if self.rng.chance(1, 3) {
            m.put(b" [TRYCREATE]");
        }
        self.status_tail(&mut m);
        m.eol(self.rng);
        m
    }
}

// ------------------------------------------------------------------------------------ cases

struct Case {
    dir: Direction,
    msgs: Vec<Msg>,
    /// An unfinished message at the end of the stream.
    tail: Vec<u8>,
}

fn grammar_case(dir: Direction, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let size = match rng.below(100) {
        0..=54 => Size::Short,
        55..=96 => Size::Normal,
        _ => Size::Large,
    };
    let count = match size {
        Size::Short => rng.range(1, 3),
        Size::Normal => rng.range(1, 8),
        Size::Large => rng.range(1, 4),
    };
    let mut g = Gen {
        rng: &mut rng,
        size,
        recent: Vec::new(),
    };
    let mut msgs = Vec::new();
    while msgs.len() < count {
        let more = match dir {
            Direction::Client => g.client(),
            Direction::Server => g.server(),
        };
        msgs.extend(more);
    }
    let mut tail = Vec::new();
    if g.rng.chance(1, 5) {
        if g.rng.chance(1, 4) {
            // A literal no stream will ever finish.
            tail.extend_from_slice(b"t1 APPEND x {18446744073709551615}\r\n");
            if dir == Direction::Server {
                tail = b"* 1 FETCH (BODY[] {18446744073709551615}\r\n".to_vec();
            }
            let extra = g.rng.range(0, 40);
            tail.extend(body(g.rng, extra));
        } else {
            let m = match dir {
                Direction::Client => g.client().remove(0),
                Direction::Server => g.server().remove(0),
            };
            if m.bytes.len() >= 2 {
                let cut = g.rng.range(1, m.bytes.len() - 1);
                tail = m.bytes[..cut].to_vec();
            }
        }
    }
    Case { dir, msgs, tail }
}

fn escape(s: &[u8]) -> String {
    let shown = &s[..s.len().min(4000)];
    let more = if s.len() > shown.len() {
        format!(" ... ({} bytes)", s.len())
    } else {
        String::new()
    };
    format!("b\"{}\"{more}", shown.escape_ascii())
}

/// Runs every cutting plan over `stream` against `model`.
fn run_plans(dir: Direction, stream: &[u8], model: &[ModelMsg], seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed ^ 0x5eed_5eed);
    bump(Count::Cases, 1);
    bump(Count::Bytes, stream.len() as u64);
    bump(
        Count::Unfinished,
        u64::from(model.last().is_some_and(|m| m.frame.is_none())),
    );
    for (i, (name, cuts)) in plans(stream.len(), &mut rng).iter().enumerate() {
        bump(Count::Plans, 1);
        drive(dir, stream, model, cuts, seed.wrapping_add(i as u64)).map_err(|e| {
            let cuts = if cuts.len() > 40 {
                String::new()
            } else {
                format!(" {cuts:?}")
            };
            format!("{name}{cuts}: {e}")
        })?;
    }
    Ok(())
}

fn run_grammar_case(dir: Direction, seed: u64) -> Result<(), String> {
    let case = grammar_case(dir, seed);
    let mut stream = Vec::new();
    let mut refusals = Vec::new();
    for m in &case.msgs {
        stream.extend_from_slice(&m.bytes);
        if m.refused_at.is_some() {
            refusals.push(stream.len());
        }
    }
    stream.extend_from_slice(&case.tail);
    let model = reference(case.dir, &stream, &mut |p| refusals.contains(&p));
    let context = || format!("stream {}\nrefusals at {refusals:?}", escape(&stream));

    // The generator knows each message's extent and literals, and the tag and kind of all but
    // garbage: the model must agree, or the test itself is wrong.
    let mut start = 0;
    for (i, m) in case.msgs.iter().enumerate() {
        let end = start + m.bytes.len();
        let (literals, literal_bytes) = m.literal_totals();
        let agree = model.get(i).is_some_and(|r| {
            r.start == start
                && r.end == end
                && r.refused == m.refused_at.is_some()
                && r.frame.as_ref().is_some_and(|f| {
                    f.len == m.bytes.len() as u64
                        && f.literals == literals
                        && f.literal_bytes == literal_bytes
                        && m.tag_kind
                            .as_ref()
                            .is_none_or(|(tag, kind)| f.tag == *tag && f.kind == *kind)
                })
        });
        if !agree {
            return Err(format!(
                "TEST BUG: generator and model disagree on message {i} ({start}..{end}, \
                 literals {literals}, bytes {literal_bytes}, {:?}): model {:?}\n{}",
                m.tag_kind,
                model.get(i),
                context()
            ));
        }
        start = end;
    }
    let tail_ok = if case.tail.is_empty() {
        model.len() == case.msgs.len()
    } else {
        model.len() == case.msgs.len() + 1
            && model
                .last()
                .is_some_and(|t| t.start == start && t.frame.is_none())
    };
    if !tail_ok {
        return Err(format!(
            "TEST BUG: generator and model disagree on the unfinished tail: {:?}\n{}",
            model.get(case.msgs.len()),
            context()
        ));
    }
    run_plans(case.dir, &stream, &model, seed).map_err(|e| format!("{e}\n{}", context()))
}

/// Random byte soup rich in the bytes that matter; the model frames it however it falls, and
/// the server refuses a synchronizing literal now and then.
fn run_soup_case(seed: u64) -> Result<(), String> {
    const SOUP: &[&[u8]] = &[
        b"{", b"}", b"+", b"~", b"0", b"3", b"12", b"\r", b"\n", b"\r\n", b" ", b"*", b"a1",
        b"a1 ", b"DONE", b"UID ", b"FETCH", b"OK", b"NO ", b"APPEND", b"{3}", b"{0}", b"{2+}",
        b"~{1}", b"{99}", b"x", b"\0", b"\xff", b"(", b")", b"[", b"]", b"\"", b"+ ", b"* ",
        b"{3}\r\n", b"{1}\n", b"*  ",
    ];
    let mut rng = Rng::new(seed);
    let dir = if rng.chance(1, 2) {
        Direction::Client
    } else {
        Direction::Server
    };
    let mut stream = Vec::new();
    for _ in 0..rng.range(1, 70) {
        stream.extend_from_slice(rng.pick(SOUP));
    }
    let mut refusals = Vec::new();
    let model = reference(dir, &stream, &mut |p| {
        let refuse = rng.chance(1, 3);
        if refuse {
            refusals.push(p);
        }
        refuse
    });
    run_plans(dir, &stream, &model, seed).map_err(|e| {
        format!(
            "{dir:?} {e}\nstream {}\nrefusals at {refusals:?}",
            escape(&stream)
        )
    })
}

fn cases() -> u64 {
    std::env::var("IMAPPROXY_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// Runs `case(seed)` for `cases()` seeds from `base` (or the one `IMAPPROXY_PROPTEST_SEED`
/// names). Fails with the first failure in full and the seeds of all the others, so that one
/// bug cannot hide another.
fn for_cases(test: &str, base: u64, case: impl Fn(u64) -> Result<(), String>) {
    let seeds: Vec<u64> = match std::env::var("IMAPPROXY_PROPTEST_SEED") {
        Ok(s) => {
            let s = s.trim();
            let seed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            vec![seed.expect("IMAPPROXY_PROPTEST_SEED: a number")]
        }
        Err(_) => (0..cases()).map(|i| base.wrapping_add(i)).collect(),
    };
    let mut failures = Vec::new();
    for &seed in &seeds {
        let failure = match catch_unwind(AssertUnwindSafe(|| case(seed))) {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                format!("panicked: {msg}")
            }
        };
        failures.push((seed, failure));
    }
    let stats = STATS.with(|s| *s.borrow());
    let summary: Vec<String> = COUNTS
        .iter()
        .map(|&(name, c)| format!("{} {name}", stats[c as usize]))
        .collect();
    eprintln!("{test}: {}", summary.join(", "));
    let Some((seed, first)) = failures.first() else {
        return;
    };
    let others: Vec<String> = failures
        .iter()
        .skip(1)
        .take(20)
        .map(|(seed, e)| format!("  {seed:#x}: {}", e.lines().next().unwrap_or("")))
        .collect();
    panic!(
        "{test}: {} of {} cases failed. First, case {seed:#x} (replay: \
         IMAPPROXY_PROPTEST_SEED={seed:#x} cargo test -p imapproxy-codec --test framer_model \
         {test}):\n{first}\nOthers:\n{}",
        failures.len(),
        seeds.len(),
        others.join("\n")
    );
}

#[test]
fn client_streams_frame_like_the_model() {
    for_cases("client_streams_frame_like_the_model", 0xc1_0000, |seed| {
        run_grammar_case(Direction::Client, seed)
    });
}

#[test]
fn server_streams_frame_like_the_model() {
    for_cases("server_streams_frame_like_the_model", 0x5e_0000, |seed| {
        run_grammar_case(Direction::Server, seed)
    });
}

#[test]
fn byte_soup_frames_like_the_model() {
    for_cases("byte_soup_frames_like_the_model", 0x50_0000, run_soup_case);
}

/// Found by this property (reported, not fixed here): the framer takes an empty word for the
/// message number of `* n FETCH|EXPUNGE|EXISTS`, so `*  EXPUNGE` (two spaces) is an expunge.
/// Framing (length, literals) is unaffected; the kind is wrong.
#[test]
fn an_untagged_line_without_a_message_number_is_not_message_data() {
    for line in [
        &b"*  FETCH (FLAGS ())\r\n"[..],
        b"*  EXPUNGE\r\n",
        b"*  EXISTS\r\n",
    ] {
        let (n, frame) = Framer::new(Direction::Server).advance(line).unwrap();
        assert_eq!(n, line.len());
        assert_eq!(frame.kind, K::Untagged(U::Other), "{}", escape(line));
    }
}

/// The model itself, on the framer's documented examples.
#[test]
fn the_model_agrees_with_known_answers() {
    let frames = |dir, s: &[u8]| -> Vec<Fr> {
        reference(dir, s, &mut |_| false)
            .into_iter()
            .map(|m| m.frame.unwrap())
            .collect()
    };
    let client = frames(
        Direction::Client,
        b"a1 APPEND x {3}\r\nab}\r\nDONE\r\nx{ NOOP\r\n a UID fetch 1\r\nb uid fetch 1\r\n",
    );
    assert_eq!(
        client
            .iter()
            .map(|f| (f.tag.as_deref(), f.kind, f.len, f.literal_bytes, f.literals))
            .collect::<Vec<_>>(),
        [
            (Some("a1"), K::Command(C::Append), 22, 3, 1),
            (None, K::Command(C::Done), 6, 0, 0),
            (None, K::Line, 9, 0, 0),
            (None, K::Line, 16, 0, 0),
            (Some("b"), K::Command(C::UidFetch), 15, 0, 0),
        ]
    );
    let server = frames(
        Direction::Server,
        b"* 1 FETCH (BODY[] {5}\r\nab\r\nc)\r\nA1 OK done {5}\r\n+ {2}\r\n* NO x {1}\r\n",
    );
    assert_eq!(
        server
            .iter()
            .map(|f| (f.tag.as_deref(), f.kind, f.literal_bytes))
            .collect::<Vec<_>>(),
        [
            (None, K::Untagged(U::Fetch), 5),
            (Some("A1"), K::Tagged(S::Ok), 0),
            (None, K::Continuation, 0),
            (None, K::Untagged(U::Status(S::No)), 0),
        ]
    );
    assert_eq!(announcement(b"x {007+}"), Some((7, false)));
    assert_eq!(
        announcement(b"~{18446744073709551615}"),
        Some((u64::MAX, true))
    );
    for bad in BAD_ANNOUNCEMENTS {
        // Each is followed by CRLF: `{5}\r` leaves a CR in the line.
        assert_eq!(announcement(bad), None, "{}", escape(bad));
    }
}
