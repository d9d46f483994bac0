//! Per-command latency in `/metrics`: after a session through the binary, each command it
//! sent has its backend and proxy time histograms, labelled from the fixed list of command
//! names (anything else is `OTHER`), and the bytes relayed are counted by direction.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Binary, admin_request, loopback};
use imapproxy_testkit::{Dovecot, TestClient};

const TOKEN: &str = "t0ken-for-command-metrics";

/// The value of the sample `name` in Prometheus text, if there is one.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_show_each_commands_backend_and_proxy_time_after_a_session() {
    let dovecot = Dovecot::shared();
    let (plain, admin) = (loopback(), loopback());
    // One worker thread: `[server] threads` is read, and the session still works.
    let config = format!(
        r#"
[[listeners]]
addr = "{plain}"
tls = "none"
allow_plaintext_auth = true

[[backends]]
name = "mail1"
addr = "{backend}"

[server]
threads = 1

[admin]
addr = "{admin}"
token = "{TOKEN}"
"#,
        backend = dovecot.imap_addr()
    );
    let _proxy = Binary::start(&config, &[plain, admin]);
    let (user, pass) = dovecot.user(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = TestClient::connect(plain).await.unwrap();
        assert!(c.login(&user, &pass).await.unwrap().tagged_ok());
        for (tag, cmd) in [
            ("s1", "SELECT INBOX"),
            ("f1", "UID FETCH 1:* (FLAGS)"),
            ("n1", "NOOP"),
            ("n2", "noop"),
        ] {
            let r = c.cmd(tag, cmd).await.unwrap();
            assert!(r.tagged_ok(), "{cmd}: {}", r.text());
        }
        // Bytes are counted as they flow, not when the session ends.
        let (_, live) = admin_request(admin, "GET", "/metrics", Some(TOKEN), &[]);
        for direction in ["client_to_backend", "backend_to_client"] {
            let name = format!("imapproxy_bytes_relayed_total{{direction=\"{direction}\"}}");
            assert!(
                sample(&live, &name).is_some_and(|n| n > 0.0),
                "{name} while the session is open, in\n{live}"
            );
        }
        // Pipelined: both are timed, each with its own reply.
        c.send_raw(b"p1 NOOP\r\np2 CHECK\r\n").await.unwrap();
        assert!(c.read_until_tagged("p2").await.unwrap().tagged_ok());
        // IDLE lasts as long as the client likes: not a latency, not timed.
        c.send_raw(b"i1 IDLE\r\n").await.unwrap();
        assert!(c.read_line().await.unwrap().starts_with(b"+"));
        c.send_raw(b"DONE\r\n").await.unwrap();
        assert!(c.read_until_tagged("i1").await.unwrap().tagged_ok());
        // A command off the list is labelled OTHER, whatever its name. Last: Dovecot's BAD
        // leaves the proxy unsure of the session, so its LOGOUT then goes to Dovecot.
        let r = c.cmd("x1", "XNOSUCHCOMMAND").await.unwrap();
        assert!(!r.tagged_ok(), "{}", r.text());
        c.logout().await.unwrap();
    });

    let (code, metrics) = admin_request(admin, "GET", "/metrics", Some(TOKEN), &[]);
    assert_eq!(code, 200, "{metrics}");
    for metric in [
        "imapproxy_command_backend_seconds",
        "imapproxy_command_proxy_seconds",
    ] {
        for (command, count) in [
            ("SELECT", 1.0),
            ("UID FETCH", 1.0),
            ("NOOP", 3.0),
            ("CHECK", 1.0),
            ("OTHER", 1.0),
        ] {
            let name = format!("{metric}_count{{command=\"{command}\"}}");
            assert_eq!(sample(&metrics, &name), Some(count), "{name} in\n{metrics}");
        }
        let sum = sample(&metrics, &format!("{metric}_sum{{command=\"SELECT\"}}")).unwrap();
        assert!(sum > 0.0 && sum < 10.0, "{metric}: SELECT took {sum} s");
        assert!(
            !metrics.contains(&format!("{metric}_count{{command=\"IDLE\"}}")),
            "{metrics}"
        );
        assert!(!metrics.contains("XNOSUCHCOMMAND"), "{metrics}");
    }
    for direction in ["client_to_backend", "backend_to_client"] {
        let name = format!("imapproxy_bytes_relayed_total{{direction=\"{direction}\"}}");
        assert!(
            sample(&metrics, &name).is_some_and(|n| n > 0.0),
            "{name} in\n{metrics}"
        );
    }
}
