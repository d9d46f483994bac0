//! The proxy inside your own program: your accept loop, your backends, the session crate's
//! `serve` for each client. Plain listener on 127.0.0.1:2143 in front of 127.0.0.1:143.
//!
//! ```sh
//! cargo run -p imapproxy-examples --example embed_proxy -- 127.0.0.1:2143 127.0.0.1:143
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use imapproxy_pool::{BackendTarget, PoolSettings};
use imapproxy_route::{Backend, BackendId, Registry, RoundRobin};
use imapproxy_session::{ListenerSettings, Proxy, SessionSettings, Upstreams, serve};
use imapproxy_tls::TlsMode;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:2143".into());
    let backend = args.next().unwrap_or_else(|| "127.0.0.1:143".into());

    let id = BackendId::new("backend");
    let registry = Registry::new(vec![Backend::new(id.clone(), backend.clone())])
        .map_err(std::io::Error::other)?;
    let upstreams = Upstreams {
        registry,
        selector: Arc::new(RoundRobin::default()),
        directory: None,
        targets: HashMap::from([(id, BackendTarget::plain(backend))]),
        health: None,
    };
    let proxy = Arc::new(
        Proxy::new(
            SessionSettings::default(),
            upstreams,
            PoolSettings::default(),
        )
        .map_err(std::io::Error::other)?,
    );
    tokio::spawn(proxy.pool().clone().maintain());
    let listener_settings = Arc::new(ListenerSettings {
        tls: TlsMode::None,
        allow_plaintext_auth: true,
        server_tls: None,
    });
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("proxying {listen} -> backend; Ctrl-C to stop");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = accepted?;
                tokio::spawn(serve(proxy.clone(), listener_settings.clone(), tcp, peer, shutdown.clone()));
            }
            _ = tokio::signal::ctrl_c() => {
                shutdown.cancel();
                return Ok(());
            }
        }
    }
}
