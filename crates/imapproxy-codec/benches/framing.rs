//! Relay framing throughput: a FETCH-heavy server stream and a client command stream.
//! `cargo bench -p imapproxy-codec --bench framing`; criterion prints bytes/s.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use imapproxy_codec::{Direction, Framer};
use std::hint::black_box;

/// 200 × `* n FETCH (UID n BODY[] {262144}` + a body of CRLF-terminated lines + `)`, then
/// a tagged OK: what a client downloading mail makes the server send.
fn server_stream() -> Vec<u8> {
    const BODY: usize = 262_144;
    let mut body = Vec::with_capacity(BODY);
    let line =
        b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n";
    while body.len() + line.len() <= BODY {
        body.extend_from_slice(line);
    }
    body.resize(BODY, b'x');
    let mut out = Vec::with_capacity(200 * (BODY + 64));
    for n in 1..=200 {
        out.extend_from_slice(format!("* {n} FETCH (UID {n} BODY[] {{{BODY}}}\r\n").as_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(b")\r\n");
    }
    out.extend_from_slice(b"A0042 OK Fetch completed (0.012 + 0.000 secs).\r\n");
    out
}

/// Webmail listing a mailbox: 5000 small FETCH responses, each a header-fields literal of
/// ~200 bytes, plus flags and sizes. Dominated by line scanning, not literal skipping: the
/// realistic worst case for the framer.
fn header_stream() -> Vec<u8> {
    let mut out = Vec::new();
    for n in 1..=5000 {
        let hdr = format!(
            "Subject: Quarterly report number {n} for the team\r\n\
             From: \"Sender {n}\" <sender{n}@example.org>\r\n\
             Date: Tue, 14 Nov 2023 22:13:{:02} +0000\r\n\r\n",
            n % 60
        );
        out.extend_from_slice(
            format!(
                "* {n} FETCH (UID {n} FLAGS (\\Seen) RFC822.SIZE {} \
                 BODY[HEADER.FIELDS (SUBJECT FROM DATE)] {{{}}}\r\n",
                1000 + n,
                hdr.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(hdr.as_bytes());
        out.extend_from_slice(b")\r\n");
    }
    out.extend_from_slice(b"A0043 OK Fetch completed (0.020 + 0.000 secs).\r\n");
    out
}

/// A webmail-like command stream: small commands, a few APPENDs with literals, IDLE/DONE.
fn client_stream() -> Vec<u8> {
    let mut out = Vec::new();
    for n in 0..2000 {
        out.extend_from_slice(
            format!("A{n:05} UID FETCH {n}:* (FLAGS INTERNALDATE RFC822.SIZE)\r\n").as_bytes(),
        );
        out.extend_from_slice(format!("B{n:05} SELECT \"INBOX/Folder {n}\"\r\n").as_bytes());
        if n % 50 == 0 {
            out.extend_from_slice(format!("C{n:05} APPEND Sent (\\Seen) {{2048+}}\r\n").as_bytes());
            out.extend(std::iter::repeat_n(b'm', 2046));
            out.extend_from_slice(b"\r\n\r\n");
            out.extend_from_slice(format!("D{n:05} IDLE\r\nDONE\r\n").as_bytes());
        }
    }
    out
}

/// Frames `data` as a relay would see it, in 64 KiB reads.
fn frame_all(dir: Direction, data: &[u8]) -> usize {
    let mut f = Framer::new(dir);
    let mut count = 0;
    for mut chunk in data.chunks(64 * 1024) {
        while let Some((n, frame)) = f.advance(chunk) {
            count += 1;
            black_box(frame);
            chunk = &chunk[n..];
        }
    }
    count
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("framer");
    for (name, dir, data, messages) in [
        (
            "server_fetch_stream",
            Direction::Server,
            server_stream(),
            201,
        ),
        (
            "server_header_stream",
            Direction::Server,
            header_stream(),
            5001,
        ),
        (
            "client_command_stream",
            Direction::Client,
            client_stream(),
            4000 + 40 * 3,
        ),
    ] {
        assert_eq!(frame_all(dir, &data), messages, "{name}");
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(name, |b| b.iter(|| frame_all(dir, black_box(&data))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
