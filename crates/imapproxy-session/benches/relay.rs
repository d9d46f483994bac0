//! The relay's cost per chunk read, without sockets: framing, session state, response
//! rewrites, command metrics and buffer upkeep, i.e. everything the proxy adds to the two
//! system calls (read, write) a chunk costs anyway.
//! `cargo bench -p imapproxy-session --bench relay`.
//!
//! Groups: `relay` with metrics off (no recorder, so the bytes counters are no-ops, and the
//! per-command histograms switched off), then `relay_metrics` with them on (the Prometheus
//! recorder the binary installs, and the histograms recording), on the cases that record
//! per-command latency: the difference is what the relay's metrics cost.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use imapproxy_session::ChunkBench;

/// A literal longer than any bench runs through: the framer stays inside it.
const ENDLESS: u64 = 1 << 50;

/// `n` pipelined `UID FETCH` commands, and the server's answer to them (a FETCH response and
/// the tagged `OK` each): what a client syncing flags sends and gets.
fn pipelined(n: usize) -> (Vec<u8>, Vec<u8>) {
    let mut up = Vec::new();
    let mut down = Vec::new();
    for i in 1..=n {
        up.extend_from_slice(format!("A{i:04} UID FETCH {i} (FLAGS)\r\n").as_bytes());
        down.extend_from_slice(
            format!("* {i} FETCH (UID {i} FLAGS (\\Seen))\r\nA{i:04} OK Fetch completed.\r\n")
                .as_bytes(),
        );
    }
    (up, down)
}

/// Whole FETCH responses with a ~200-byte header literal each, about `size` bytes: a
/// webmail listing a mailbox.
fn header_responses(size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut n = 1;
    while out.len() < size {
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
        n += 1;
    }
    out
}

/// Four whole FETCH responses with a 16 KiB body literal each: small messages downloaded.
fn body_responses() -> Vec<u8> {
    let mut out = Vec::new();
    for n in 1..=4 {
        out.extend_from_slice(format!("* {n} FETCH (UID {n} BODY[] {{16384}}\r\n").as_bytes());
        out.extend(std::iter::repeat_n(b'm', 16384));
        out.extend_from_slice(b")\r\n");
    }
    out
}

/// The cases that time commands: one command and its answer, and 100 pipelined.
fn command_cases(c: &mut Criterion, group: &str) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    let (up, down) = (
        b"A1 UID FETCH 1:5 (FLAGS)\r\n".as_slice(),
        b"* 1 FETCH (UID 1 FLAGS ())\r\nA1 OK Fetch completed.\r\n".as_slice(),
    );
    let mut relay = ChunkBench::new();
    g.bench_function("command_and_reply", |b| {
        b.iter(|| {
            relay.client(black_box(up));
            relay.server(black_box(down))
        })
    });
    assert!(relay.outstanding() == 0 && relay.clean());

    let (up, down) = pipelined(100);
    g.throughput(Throughput::Elements(100));
    let mut relay = ChunkBench::new();
    g.bench_function("pipelined_100_commands_and_replies", |b| {
        b.iter(|| {
            relay.client(black_box(&up));
            relay.server(black_box(&down))
        })
    });
    assert!(relay.outstanding() == 0 && relay.clean());
    g.finish();
}

/// The cases that only move bytes: literal chunks both ways, whole responses.
fn stream_cases(c: &mut Criterion) {
    let mut g = c.benchmark_group("relay");
    let chunk = vec![b'x'; 16 * 1024];
    let mut relay = ChunkBench::new();
    relay.client(format!("A1 APPEND INBOX {{{ENDLESS}+}}\r\n").as_bytes());
    g.throughput(Throughput::Bytes(chunk.len() as u64));
    g.bench_function("client_literal_16k_chunk", |b| {
        b.iter(|| relay.client(black_box(&chunk)))
    });

    let chunk = vec![b'x'; 64 * 1024];
    let mut relay = ChunkBench::new();
    relay.server(format!("* 1 FETCH (UID 1 BODY[] {{{ENDLESS}}}\r\n").as_bytes());
    g.throughput(Throughput::Bytes(chunk.len() as u64));
    g.bench_function("server_literal_64k_chunk", |b| {
        b.iter(|| relay.server(black_box(&chunk)))
    });

    for (name, chunk) in [
        (
            "server_header_fetches_16k_chunk",
            header_responses(16 * 1024),
        ),
        ("server_body_fetches_64k_chunk", body_responses()),
    ] {
        let mut relay = ChunkBench::new();
        assert_eq!(relay.server(&chunk), chunk.len(), "{name}: whole responses");
        g.throughput(Throughput::Bytes(chunk.len() as u64));
        g.bench_function(name, |b| b.iter(|| relay.server(black_box(&chunk))));
    }
    g.finish();
}

fn without_recorder(c: &mut Criterion) {
    imapproxy_session::set_command_histograms(false);
    command_cases(c, "relay");
    stream_cases(c);
}

/// The binary's recorder, drained the way its scrapes and upkeep drain it (the exporter's own
/// histograms would pile up undrained samples), and the per-command histograms on.
fn with_recorder(c: &mut Criterion) {
    imapproxy_session::set_command_histograms(true);
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("no other recorder in this process");
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(200));
            handle.run_upkeep();
        }
    });
    command_cases(c, "relay_metrics");
}

criterion_group!(benches, without_recorder, with_recorder);
criterion_main!(benches);
