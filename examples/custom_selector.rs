//! Extending routing without a fork: a `Selector` and a `Directory` written outside the
//! crates, plugged into the proxy.
//!
//! - `ByClientName` sends clients that identify as webmail (the `name` field of their `ID`
//!   command, RFC 2971) to the backends listed for it, everyone else by rendezvous hash.
//! - `DomainTable` is a user directory backed by the application's own table (here a
//!   `HashMap` of domain → backend; a database or an HTTP service works the same way, since
//!   `lookup` is async).
//!
//! ```sh
//! cargo run -p imapproxy-examples --example custom_selector -- 127.0.0.1:2143 127.0.0.1:143 127.0.0.1:10143
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use imapproxy_pool::{BackendTarget, PoolSettings};
use imapproxy_route::{
    Backend, BackendId, Directory, Error, Registry, RendezvousHash, Request, Route, Selector,
};
use imapproxy_session::{ListenerSettings, Proxy, SessionSettings, Upstreams, serve};
use imapproxy_tls::TlsMode;
use tokio_util::sync::CancellationToken;

/// Webmail clients to their own backends, everyone else by hash.
struct ByClientName {
    client_name: String,
    backends: Vec<BackendId>,
    others: RendezvousHash,
}

impl Selector for ByClientName {
    fn select(&self, registry: &Registry, req: &Request<'_>) -> Vec<BackendId> {
        let is_webmail = req.client_id.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("name") && v.as_deref() == Some(self.client_name.as_str())
        });
        let mut out: Vec<BackendId> = Vec::new();
        if is_webmail {
            // Only healthy backends may be returned.
            out.extend(
                registry
                    .up()
                    .filter(|b| self.backends.contains(&b.id))
                    .map(|b| b.id.clone()),
            );
        }
        for id in self.others.select(registry, req) {
            if !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }
}

/// user@domain → the backend that holds the domain's mailboxes.
struct DomainTable(HashMap<String, BackendId>);

#[async_trait]
impl Directory for DomainTable {
    async fn lookup(&self, user: &str) -> Result<Option<Route>, Error> {
        let domain = user.rsplit_once('@').map(|(_, d)| d);
        Ok(domain
            .and_then(|d| self.0.get(d))
            .map(|id| Route::Backend(id.clone())))
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:2143".into());
    let backends: Vec<String> = args.collect();
    let backends = if backends.is_empty() {
        vec!["127.0.0.1:143".to_owned()]
    } else {
        backends
    };

    let ids: Vec<BackendId> = (0..backends.len())
        .map(|i| BackendId::new(format!("mail{i}")))
        .collect();
    let registry = Registry::new(
        ids.iter()
            .zip(&backends)
            .map(|(id, addr)| Backend::new(id.clone(), addr.clone()))
            .collect(),
    )
    .map_err(std::io::Error::other)?;
    let targets = ids
        .iter()
        .zip(&backends)
        .map(|(id, addr)| (id.clone(), BackendTarget::plain(addr.clone())))
        .collect();
    let selector = ByClientName {
        client_name: "Roundcube".into(),
        backends: ids.iter().take(1).cloned().collect(),
        others: RendezvousHash::new(),
    };
    let directory = DomainTable(HashMap::from([(
        "example.org".to_owned(),
        ids.last().cloned().expect("at least one backend"),
    )]));
    let upstreams = Upstreams {
        registry,
        selector: Arc::new(selector),
        directory: Some(Arc::new(directory)),
        targets,
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
    let settings = Arc::new(ListenerSettings {
        tls: TlsMode::None,
        allow_plaintext_auth: true,
        server_tls: None,
    });
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!(
        "proxying {listen} over {} backends; Ctrl-C to stop",
        backends.len()
    );
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = accepted?;
                tokio::spawn(serve(proxy.clone(), settings.clone(), tcp, peer, shutdown.clone()));
            }
            _ = tokio::signal::ctrl_c() => {
                shutdown.cancel();
                return Ok(());
            }
        }
    }
}
