//! Each installed peer starts in front of a testkit Dovecot, relays a session over each
//! of its listeners, and leaves no process behind when dropped.
//!
//! Ignored by default: the peers are optional (the bench skips the missing ones, a test
//! must not). Run with `cargo test -p imapproxy-bench -- --ignored` after
//! `IMAPPROXY_BENCH_INSTALL_PEERS=1 cargo xtask bench` or installing them by hand.

use imapproxy_testkit::Dovecot;

use super::procfs;
use super::target::{Column, Installed, Server, Stack};
use crate::imap::{ImapConn, SMALL_READ_BUF, insecure_connector, login_select};

#[tokio::test(flavor = "current_thread")]
#[ignore = "needs haproxy, nginx with libnginx-mod-mail and imapproxyd installed"]
async fn every_peer_relays_a_session_and_is_stopped_with_its_workers() {
    let installed = Installed::detect(&[]);
    assert!(installed.skipped.is_empty(), "{:?}", installed.skipped);
    let dovecot = Dovecot::builder().users(2).start().unwrap();
    let proxy_bin = crate::proxy::target_dir().join("release/imapproxy");
    let stack = Stack::new(&dovecot, &proxy_bin, "", &installed).unwrap();
    let tls = insecure_connector().unwrap();
    let (user, pass) = dovecot.user(1);
    for server in [Server::Haproxy, Server::Nginx, Server::UpImapproxy] {
        let running = stack.start(server).await.unwrap();
        let pid = running.memory_root().unwrap();
        for col in Column::ALL.into_iter().filter(|c| c.server() == server) {
            let addr = running.addr(col.security()).unwrap();
            let mut conn =
                ImapConn::connect(addr, col.security(), &tls, col.name(), SMALL_READ_BUF)
                    .await
                    .unwrap();
            let select = login_select(&mut conn, &user, &pass).await.unwrap();
            assert!(
                select.untagged.iter().any(|l| l.ends_with(" EXISTS")),
                "{}: {:?}",
                col.name(),
                select.untagged
            );
            conn.logout().await.unwrap();
        }
        assert!(procfs::tree_pss_kib(pid).is_some_and(|k| k > 0));
        drop(running);
        let left: Vec<u32> = procfs::all()
            .iter()
            .filter(|p| p.pid == pid || p.pgrp == pid)
            .map(|p| p.pid)
            .collect();
        assert!(left.is_empty(), "{server:?} left {left:?} running");
    }
}
