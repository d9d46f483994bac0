//! Pre-auth parser: real client exchanges, limits, tag recovery, secrecy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use imapproxy_codec::{
    AuthData, Mechanism, PreAuthCommand as P, PreAuthEvent as E, PreAuthLimits, PreAuthParser,
    parse_sasl_plain,
};

fn parser() -> PreAuthParser {
    PreAuthParser::new(PreAuthLimits::default())
}

/// Pushes `input` and drains all events.
fn run(p: &mut PreAuthParser, input: &[u8]) -> Vec<E> {
    p.push(input);
    std::iter::from_fn(|| p.next_event()).collect()
}

fn one(input: &[u8]) -> E {
    let mut events = run(&mut parser(), input);
    assert_eq!(events.len(), 1, "{events:?}");
    events.pop().unwrap()
}

fn tag_of(e: &E) -> Option<String> {
    match e {
        E::Command { tag, .. } => Some(tag.to_string()),
        E::Bad { tag, .. } | E::TooLarge { tag, .. } => tag.map(|t| t.to_string()),
        _ => None,
    }
}

#[test]
fn simple_commands() {
    for (line, want) in [
        (&b"a1 CAPABILITY\r\n"[..], "Capability"),
        (b"a2 noop\r\n", "Noop"),
        (b"a3 LOGOUT\r\n", "Logout"),
        (b"a4 STARTTLS\r\n", "StartTls"),
    ] {
        let e = one(line);
        let got = match &e {
            E::Command {
                command: P::Capability,
                ..
            } => "Capability",
            E::Command {
                command: P::Noop, ..
            } => "Noop",
            E::Command {
                command: P::Logout, ..
            } => "Logout",
            E::Command {
                command: P::StartTls,
                ..
            } => "StartTls",
            other => panic!("{other:?}"),
        };
        assert_eq!(got, want);
        assert_eq!(tag_of(&e).unwrap(), String::from_utf8_lossy(&line[..2]));
    }
}

fn login(e: E) -> (String, Vec<u8>) {
    match e {
        E::Command {
            command: P::Login { username, password },
            ..
        } => (username, password.expose().clone()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn login_atom_quoted_and_literals() {
    assert_eq!(
        login(one(b"a LOGIN alice s3cret\r\n")),
        ("alice".into(), b"s3cret".to_vec())
    );
    assert_eq!(
        login(one(b"a LOGIN \"al ice\" \"p\\\"w\\\\d\"\r\n")),
        ("al ice".into(), b"p\"w\\d".to_vec())
    );
    // LITERAL- non-synchronizing literal: no continuation.
    assert_eq!(
        login(one(b"a LOGIN {5+}\r\nalice {4+}\r\np w\"\r\n")),
        ("alice".into(), b"p w\"".to_vec())
    );
    // Synchronizing literals, each needs a `+` from the session.
    let mut p = parser();
    assert!(matches!(
        run(&mut p, b"a LOGIN {5}\r\n")[..],
        [E::ContinuationNeeded]
    ));
    assert!(matches!(
        run(&mut p, b"alice {3}\r\n")[..],
        [E::ContinuationNeeded]
    ));
    let mut events = run(&mut p, b"\x01\x02\xff\r\n");
    assert_eq!(
        login(events.pop().unwrap()),
        ("alice".into(), vec![1, 2, 255])
    );
    assert!(events.is_empty());
    assert_eq!(p.buffered(), 0);
}

#[test]
fn login_byte_at_a_time() {
    let mut p = parser();
    let mut events = Vec::new();
    for &b in b"a LOGIN {5+}\r\nalice pw\r\nb NOOP\r\n" {
        events.extend(run(&mut p, &[b]));
    }
    assert_eq!(events.len(), 2);
    assert_eq!(login(events.remove(0)), ("alice".into(), b"pw".to_vec()));
}

#[test]
fn id_with_literal_values_as_outlook_sends_it() {
    let mut p = parser();
    let mut events = run(
        &mut p,
        b"a1 ID (\"name\" {17+}\r\nMicrosoft Outlook \"version\" \"16.0\" \"os\" NIL)\r\n",
    );
    let Some(E::Command {
        command: P::Id(Some(fields)),
        ..
    }) = events.pop()
    else {
        panic!()
    };
    assert_eq!(
        fields,
        vec![
            ("name".into(), Some("Microsoft Outlook".into())),
            ("version".into(), Some("16.0".into())),
            ("os".into(), None),
        ]
    );
    assert!(matches!(
        one(b"a2 ID NIL\r\n"),
        E::Command {
            command: P::Id(None),
            ..
        }
    ));
}

#[test]
fn authenticate_plain_with_and_without_sasl_ir() {
    // "\0alice\0pw"
    match one(b"a AUTHENTICATE PLAIN AGFsaWNlAHB3\r\n") {
        E::Command {
            command:
                P::Authenticate {
                    mechanism: Mechanism::Plain,
                    initial_response: Some(ir),
                },
            ..
        } => {
            let (authz, user, pw) = parse_sasl_plain(ir.expose()).unwrap();
            assert_eq!(
                (authz, user.as_str(), pw.expose().as_slice()),
                (None, "alice", &b"pw"[..])
            );
        }
        other => panic!("{other:?}"),
    }
    // `=` is an empty initial response (RFC 4959 §3).
    match one(b"a AUTHENTICATE PLAIN =\r\n") {
        E::Command {
            command:
                P::Authenticate {
                    initial_response: Some(ir),
                    ..
                },
            ..
        } => {
            assert!(ir.expose().is_empty());
        }
        other => panic!("{other:?}"),
    }
    let mut p = parser();
    match run(&mut p, b"a AUTHENTICATE plain\r\n").pop().unwrap() {
        E::Command {
            command:
                P::Authenticate {
                    mechanism: Mechanism::Plain,
                    initial_response: None,
                },
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    p.expect_auth_data(true);
    match run(&mut p, b"AGFsaWNlAHB3\r\n").pop().unwrap() {
        E::AuthData(AuthData::Data(d)) => assert_eq!(d.expose(), b"\0alice\0pw"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        run(&mut p, b"*\r\n")[..],
        [E::AuthData(AuthData::Cancel)]
    ));
    assert!(matches!(
        run(&mut p, b"not base64!\r\n")[..],
        [E::Bad { tag: None, .. }]
    ));
    p.expect_auth_data(false);
    assert!(matches!(
        run(&mut p, b"b NOOP\r\n")[..],
        [E::Command {
            command: P::Noop,
            ..
        }]
    ));
}

#[test]
fn authenticate_login_data_lines_and_other_mechanisms() {
    let mut p = parser();
    match run(&mut p, b"a AUTHENTICATE LOGIN\r\n").pop().unwrap() {
        E::Command {
            command:
                P::Authenticate {
                    mechanism: Mechanism::Login,
                    ..
                },
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    p.expect_auth_data(true);
    // base64("alice"), base64("pw") pipelined
    let events = run(&mut p, b"YWxpY2U=\r\ncHc=\r\n");
    let data: Vec<Vec<u8>> = events
        .into_iter()
        .map(|e| match e {
            E::AuthData(AuthData::Data(d)) => d.expose().clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(data, [b"alice".to_vec(), b"pw".to_vec()]);

    match one(b"a AUTHENTICATE xoauth2 dXNlcj1hAWF1dGg9QmVhcmVyIHQBAQ==\r\n") {
        E::Command {
            command: P::Authenticate { mechanism, .. },
            ..
        } => {
            assert_eq!(mechanism, Mechanism::Other("XOAUTH2".into()));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn post_login_commands_are_other_and_garbage_is_bad_with_tag() {
    match one(b"a1 SELECT INBOX\r\n") {
        E::Command {
            command: P::Other { name },
            ..
        } => assert_eq!(name, "SELECT"),
        other => panic!("{other:?}"),
    }
    for (line, tag) in [
        (&b"a2 XVENDOR foo\r\n"[..], Some("a2")),
        (b"a3 LOGIN\r\n", Some("a3")),
        (b"a4 LOGIN a b c\r\n", Some("a4")),
        (b"\x00\xff\xfe garbage\r\n", None),
        (b"\r\n", None),
        (b"+tag NOOP\r\n", None),
        (b"a5 NOOP\n", Some("a5")), // bare LF is rejected before login
    ] {
        match one(line) {
            E::Bad { tag: got, reason } => {
                assert_eq!(got.map(|t| t.to_string()).as_deref(), tag, "{line:?}");
                assert!(!reason.is_empty());
            }
            other => panic!("{line:?}: {other:?}"),
        }
    }
}

#[test]
fn one_mib_line_is_too_large_without_buffering_it() {
    let limits = PreAuthLimits::default();
    let mut p = PreAuthParser::new(limits);
    let mut events = run(&mut p, b"big LOGIN ");
    let chunk = vec![b'x'; 16 * 1024];
    for _ in 0..64 {
        let n = p.wanted().min(chunk.len());
        assert!(n > 0);
        events.extend(run(&mut p, &chunk[..n]));
        assert!(p.buffered() < limits.max_message());
    }
    events.extend(run(&mut p, b"x\r\nz NOOP\r\n"));
    assert!(
        matches!(&events[..], [E::TooLarge { tag: Some(t), fatal: false, id: false }, E::Command { command: P::Noop, .. }] if *t == *b"big".as_slice()),
        "{events:?}"
    );
}

#[test]
fn oversized_literals() {
    // 4 GiB synchronizing literal: refused (no `+`), stream stays usable.
    let mut p = parser();
    let events = run(&mut p, b"a LOGIN alice {4294967296}\r\nb NOOP\r\n");
    assert!(
        matches!(
            &events[..],
            [
                E::TooLarge {
                    fatal: false,
                    tag: Some(_),
                    ..
                },
                E::Command { .. }
            ]
        ),
        "{events:?}"
    );
    // Just over the LITERAL- bound, synchronizing: refused, not fatal.
    let events = run(&mut parser(), b"a LOGIN alice {4097}\r\n");
    assert!(matches!(&events[..], [E::TooLarge { fatal: false, .. }]));
    // Non-synchronizing over the bound: the client sends it anyway, cannot resync (RFC 7888 §4).
    let mut p = parser();
    let events = run(&mut p, b"a LOGIN alice {4294967296+}\r\nxxxx");
    assert!(matches!(&events[..], [E::TooLarge { fatal: true, .. }]));
    assert_eq!((p.buffered(), p.wanted()), (0, 0));
    assert!(run(&mut p, b"b NOOP\r\n").is_empty());
    // Exactly at the bound is fine.
    let mut input = b"a LOGIN alice {4096+}\r\n".to_vec();
    input.extend(vec![b'p'; 4096]);
    input.extend(b"\r\n");
    assert_eq!(login(one(&input)).1.len(), 4096);
}

#[test]
fn clear_discards_what_was_pipelined_behind_starttls() {
    let mut p = parser();
    p.push(b"a STARTTLS\r\nb LOGIN alice pw\r\n");
    assert!(matches!(
        p.next_event(),
        Some(E::Command {
            command: P::StartTls,
            ..
        })
    ));
    p.clear();
    assert_eq!(p.buffered(), 0);
    assert!(p.next_event().is_none());
}

#[test]
fn debug_output_never_contains_the_password() {
    let inputs: [&[u8]; 4] = [
        b"a LOGIN alice Hunter2Secret\r\n",
        b"a LOGIN alice {13+}\r\nHunter2Secret\r\n",
        b"a AUTHENTICATE PLAIN AGFsaWNlAEh1bnRlcjJTZWNyZXQ=\r\n",
        b"SHVudGVyMlNlY3JldA==\r\n",
    ];
    for (i, input) in inputs.iter().enumerate() {
        let mut p = parser();
        p.expect_auth_data(i == 3);
        let events = run(&mut p, input);
        assert_eq!(events.len(), 1);
        let dbg = format!("{events:?} {events:#?} {p:?}");
        assert!(!dbg.contains("Hunter2Secret"), "{dbg}");
        assert!(!dbg.contains("SHVudGVyMlNlY3JldA"), "{dbg}");
        assert!(dbg.contains("Secret(..)"), "{dbg}");
    }
}

#[test]
fn sasl_plain_shapes() {
    let (z, c, p) = parse_sasl_plain(b"admin\0alice\0pw").unwrap();
    assert_eq!(
        (z.as_deref(), c.as_str(), p.expose().as_slice()),
        (Some("admin"), "alice", &b"pw"[..])
    );
    for bad in [
        &b"alice\0pw"[..],
        b"\0\0pw",
        b"\0alice\0",
        b"\0a\0p\0x",
        b"\0\xff\0pw",
        b"",
    ] {
        assert!(parse_sasl_plain(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn take_remaining_returns_what_was_pipelined_behind_login() {
    let mut p = parser();
    p.push(b"a LOGIN alice pw\r\nb SELECT INBOX\r\nc FETCH 1 (FLAGS {3}\r\n");
    assert!(matches!(
        p.next_event(),
        Some(E::Command {
            command: P::Login { .. },
            ..
        })
    ));
    assert_eq!(
        p.take_remaining(),
        b"b SELECT INBOX\r\nc FETCH 1 (FLAGS {3}\r\n".to_vec()
    );
    assert_eq!(p.buffered(), 0);
    assert!(p.next_event().is_none());
}

#[test]
fn an_oversized_id_is_reported_as_id() {
    let mut p = parser();
    let long = format!("a ID (\"k\" \"{}\")\r\nb NOOP\r\n", "v".repeat(20_000));
    let events = run(&mut p, long.as_bytes());
    assert!(
        matches!(
            &events[..],
            [
                E::TooLarge {
                    tag: Some(_),
                    fatal: false,
                    id: true
                },
                E::Command {
                    command: P::Noop,
                    ..
                }
            ]
        ),
        "{events:?}"
    );
}

#[test]
fn debug_never_shows_buffered_credentials() {
    let mut p = parser();
    // A whole LOGIN still buffered, and half of a pipelined second one.
    p.push(b"a1 LOGIN alice hunter2-secret\r\na2 LOGIN bob sw0rdf1sh");
    let shown = format!("{p:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("sw0rdf1sh"), "{shown}");
    assert!(shown.contains("buffered"), "{shown}");
    let event = p.next_event().expect("the first LOGIN");
    let shown = format!("{event:?} {p:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("sw0rdf1sh"), "{shown}");
}
