//! SIGHUP reloads backends and routing while sessions run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Binary, loopback};
use imapproxy_testkit::{Dovecot, TestClient, shared_mail_dir};

fn config(listen: SocketAddr, backends: &[(&str, SocketAddr)]) -> String {
    let mut c = format!(
        "[[listeners]]\naddr = \"{listen}\"\ntls = \"none\"\nallow_plaintext_auth = true\n\n\
         [routing]\nstrategy = \"round-robin\"\n\n[pool]\nreuse = false\nwarm = 0\n"
    );
    for (name, addr) in backends {
        c.push_str(&format!(
            "\n[[backends]]\nname = \"{name}\"\naddr = \"{addr}\"\n"
        ));
    }
    c
}

#[test]
fn sighup_adds_a_backend_while_sessions_run() {
    let store = shared_mail_dir().unwrap();
    let a = Dovecot::builder()
        .users(4)
        .mail_dir(store.path())
        .start()
        .unwrap();
    let b = Dovecot::builder()
        .users(4)
        .mail_dir(store.path())
        .start()
        .unwrap();
    let listen = loopback();
    let mut proxy = Binary::start(&config(listen, &[("mail-a", a.imap_addr())]), &[listen]);
    let path = proxy.config.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (user, pass) = a.user(1);
    let mut running = rt.block_on(async {
        let mut c = TestClient::connect(listen).await.unwrap();
        assert!(c.login(&user, &pass).await.unwrap().tagged_ok());
        assert!(c.cmd("s", "SELECT INBOX").await.unwrap().tagged_ok());
        c
    });

    std::fs::write(
        &path,
        config(
            listen,
            &[("mail-a", a.imap_addr()), ("mail-b", b.imap_addr())],
        ),
    )
    .unwrap();
    proxy.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "SIGHUP ended the proxy"
    );

    rt.block_on(async {
        // The running session is untouched...
        let r = running.cmd("f", "FETCH 1 (FLAGS)").await.unwrap();
        assert!(r.tagged_ok(), "{}", r.text());
        // ...and new logins now use both backends.
        let (user2, pass2) = a.user(2);
        for _ in 0..4 {
            let mut c = TestClient::connect(listen).await.unwrap();
            assert!(c.login(&user2, &pass2).await.unwrap().tagged_ok());
            c.logout().await.unwrap();
        }
    });
    let on_b = b.wait_for_log(
        &format!("imap-login: Info: Login: user=<{}>,", a.user(2).0),
        2,
        Duration::from_secs(3),
    );
    assert!(
        on_b >= 2,
        "the added backend got {on_b} of 4 round-robin logins"
    );

    // A broken, an empty and a truncated file are refused (the last two would otherwise
    // parse into the built-in defaults, one backend on 127.0.0.1:143, and every login would
    // fail); the running configuration stays.
    for broken in ["[[backends]]\nname = 1\n", "", "[pool]\nreuse = true\n"] {
        std::fs::write(&path, broken).unwrap();
        proxy.signal("HUP");
        std::thread::sleep(Duration::from_millis(300));
        assert!(proxy.child.try_wait().unwrap().is_none());
        rt.block_on(async {
            let mut c = TestClient::connect(listen).await.unwrap();
            let (user3, pass3) = a.user(3);
            let r = c.login(&user3, &pass3).await.unwrap();
            assert!(r.tagged_ok(), "after {broken:?}: {}", r.text());
        });
    }

    // Limits are reloaded too: loopback no longer trusted, two connections per address.
    let mut limited = config(
        listen,
        &[("mail-a", a.imap_addr()), ("mail-b", b.imap_addr())],
    );
    limited.push_str("\n[limits]\ntrusted_networks = []\nmax_connections_per_ip = 2\n");
    std::fs::write(&path, limited).unwrap();
    proxy.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    rt.block_on(async {
        // `running` was admitted while loopback was trusted, so it holds no per-address slot:
        // two new connections fit, the third is refused.
        let first = TestClient::connect(listen).await.unwrap();
        let second = TestClient::connect(listen).await.unwrap();
        let mut third = TestClient::connect_without_greeting(listen).await.unwrap();
        let line = String::from_utf8_lossy(&third.read_line().await.unwrap()).into_owned();
        assert!(line.starts_with("* BYE [LIMIT]"), "{line}");
        drop((first, second));
    });
}
