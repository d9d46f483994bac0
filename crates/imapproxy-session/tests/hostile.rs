//! Hostile and broken input before login: clear IMAP answers, bounded work, no panic, and
//! everyone else keeps being served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{start_proxy, start_proxy_with};
use imapproxy_session::SessionSettings;
use imapproxy_testkit::{Dovecot, TestClient};

fn dovecot() -> &'static Dovecot {
    Dovecot::shared()
}

/// A normal client still logs in and works.
async fn others_still_served(addr: std::net::SocketAddr) {
    let (user, pass) = dovecot().user(7);
    let mut c = TestClient::connect(addr).await.unwrap();
    assert!(c.login(&user, &pass).await.unwrap().tagged_ok());
    assert!(c.cmd("s", "SELECT INBOX").await.unwrap().tagged_ok());
}

/// Reads whatever arrives until EOF or 400 ms of quiet; returns it as text.
async fn drain(c: &mut TestClient) -> String {
    let mut out = Vec::new();
    while let Ok(Ok(line)) = tokio::time::timeout(Duration::from_millis(400), c.read_line()).await {
        out.extend_from_slice(&line);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_get_bad_or_bye() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..20 {
        let mut c = TestClient::connect(proxy.plain).await.unwrap();
        let mut junk = Vec::with_capacity(600);
        for _ in 0..500 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            junk.push((seed & 0xff) as u8);
        }
        junk.extend_from_slice(b"\r\n");
        // The proxy may close on us mid-write once it has seen enough; that is fine.
        let _ = c.send_raw(&junk).await;
        let text = drain(&mut c).await;
        assert!(
            text.contains(" BAD ") || text.contains("* BYE") || text.starts_with('+'),
            "round {round}: no BAD/BYE in {text:?}"
        );
    }
    others_still_served(proxy.plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mebibyte_line_is_refused() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    let mut line = b"a1 LOGIN ".to_vec();
    line.resize(1 << 20, b'x');
    line.extend_from_slice(b"\r\n");
    let _ = c.send_raw(&line).await;
    let text = drain(&mut c).await;
    assert!(text.contains("BAD") || text.contains("* BYE"), "{text:?}");
    others_still_served(proxy.plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_literal_announcing_four_gibibytes_is_refused() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    c.send_raw(b"a1 LOGIN {4294967296}\r\n").await.unwrap();
    let line = String::from_utf8_lossy(&c.read_line().await.unwrap()).into_owned();
    assert!(
        line.starts_with("a1 BAD") || line.starts_with("* BYE"),
        "{line}"
    );
    // Non-synchronizing too: no continuation is owed, the bytes must not be buffered.
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    c.send_raw(b"a2 LOGIN {4294967296+}\r\n").await.unwrap();
    let _ = c.send_raw(&[b'y'; 64 * 1024]).await;
    let text = drain(&mut c).await;
    assert!(text.contains("BAD") || text.contains("* BYE"), "{text:?}");
    others_still_served(proxy.plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unterminated_literal_times_out_with_bye() {
    let settings = SessionSettings {
        preauth_timeout: Duration::from_secs(2),
        ..SessionSettings::default()
    };
    let proxy = start_proxy_with(&[dovecot().imap_addr()], settings).await;
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    c.send_raw(b"a1 LOGIN {20}\r\n").await.unwrap();
    assert!(c.read_line().await.unwrap().starts_with(b"+"));
    c.send_raw(b"only-part").await.unwrap();
    let line = String::from_utf8_lossy(&c.read_line().await.unwrap()).into_owned();
    assert!(line.starts_with("* BYE"), "{line}");
    assert!(c.expect_eof(Duration::from_secs(3)).await);
    others_still_served(proxy.plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_bad_commands_end_the_connection() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    let mut bye = false;
    for i in 0..30 {
        if c.send_raw(format!("t{i} FROBNICATE\r\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
        match c.read_line().await {
            Ok(l) if l.starts_with(b"* BYE") => {
                bye = true;
                break;
            }
            Ok(l) => assert!(l.starts_with(format!("t{i} BAD").as_bytes()), "{l:?}"),
            Err(_) => break,
        }
    }
    assert!(bye, "no BYE after 30 invalid commands");
    assert!(c.expect_eof(Duration::from_secs(3)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed() {
    let settings = SessionSettings {
        preauth_timeout: Duration::from_secs(1),
        ..SessionSettings::default()
    };
    let proxy = start_proxy_with(&[dovecot().imap_addr()], settings).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.plain).await.unwrap();
    // Flood NOOPs and never read: the answers pile up until the proxy's writes block.
    let flood = b"a NOOP\r\n".repeat(4096);
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncWriteExt;
        loop {
            if tcp.write_all(&flood).await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the proxy kept a non-reading client for 20 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_bytes_does_not_extend_the_command_deadline() {
    let settings = SessionSettings {
        preauth_timeout: Duration::from_secs(1),
        ..SessionSettings::default()
    };
    let proxy = start_proxy_with(&[dovecot().imap_addr()], settings).await;
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    for b in b"a LOGIN user1 pass1 and a very slow line that never ends".iter() {
        if c.send_raw(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if started.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    assert!(
        closed || c.expect_eof(Duration::from_secs(1)).await,
        "still open after trickling for {:?}",
        started.elapsed()
    );
}

/// The authenticated idle timeout (`auth_timeout`): a logged-in client silent for that long,
/// in `IDLE` or between commands, is told `* BYE` and closed, not before; one that keeps
/// talking is not. The proxy watches every session's deadline from one sweep a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_logged_in_client_is_logged_out_after_the_idle_timeout() {
    let timeout = Duration::from_secs(2);
    let settings = SessionSettings {
        auth_timeout: timeout,
        ..SessionSettings::default()
    };
    let proxy = start_proxy_with(&[dovecot().imap_addr()], settings).await;
    let (user, pass) = dovecot().user(9);
    let mut talking = TestClient::connect(proxy.plain).await.unwrap();
    assert!(talking.login(&user, &pass).await.unwrap().tagged_ok());
    let mut idling = TestClient::connect(proxy.plain).await.unwrap();
    assert!(idling.login(&user, &pass).await.unwrap().tagged_ok());
    assert!(idling.cmd("s", "SELECT INBOX").await.unwrap().tagged_ok());
    // Each clock starts before the session's last word: its deadline comes after it.
    let idle_from = std::time::Instant::now();
    idling.send_raw(b"i IDLE\r\n").await.unwrap();
    assert!(idling.read_line().await.unwrap().starts_with(b"+"));
    let mut silent = TestClient::connect(proxy.plain).await.unwrap();
    let silent_from = std::time::Instant::now();
    assert!(silent.login(&user, &pass).await.unwrap().tagged_ok());

    // Talking past twice the timeout keeps a session, meanwhile.
    let talker = tokio::spawn(async move {
        for i in 0..8 {
            tokio::time::sleep(timeout / 4).await;
            let r = talking.cmd(&format!("n{i}"), "NOOP").await.unwrap();
            assert!(r.tagged_ok(), "{}", r.text());
        }
        talking
    });
    // The IDLE session's deadline comes first: read first, each against its own clock.
    for (c, from) in [(&mut idling, idle_from), (&mut silent, silent_from)] {
        c.set_timeout(Duration::from_secs(10));
        let bye = String::from_utf8_lossy(&c.read_line().await.unwrap()).into_owned();
        // After its deadline, not before; within the sweep's second and scheduling slack.
        let waited = from.elapsed();
        assert!(bye.starts_with("* BYE"), "{bye}");
        assert!(waited >= timeout, "BYE after {waited:?}");
        assert!(
            waited < timeout * 2 + Duration::from_secs(1),
            "BYE after {waited:?}"
        );
        assert!(c.expect_eof(Duration::from_secs(3)).await);
    }
    let mut talking = talker.await.unwrap();
    let r = talking.cmd("last", "NOOP").await.unwrap();
    assert!(r.tagged_ok(), "{}", r.text());
}
