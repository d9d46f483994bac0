//! What is measured: direct Dovecot, imapproxy, and each installed peer, over plain TCP
//! or implicit TLS (the table's columns), and how each is started for a measurement.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::ValueEnum;
use imapproxy_testkit::Dovecot;

use super::auth_http::AuthResponder;
use super::nginx::{self, Nginx};
use super::process::PeerProcess;
use super::{haproxy, up_imapproxy};
use crate::error::BenchError;
use crate::imap::Security;
use crate::proxy::ProxyProcess;

/// A program clients talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Server {
    /// Dovecot itself.
    Direct,
    /// up-imapproxy.
    UpImapproxy,
    /// nginx's mail proxy.
    Nginx,
    /// HAProxy in TCP mode.
    Haproxy,
    /// This project's proxy.
    Imapproxy,
}

/// The peers that may be missing (`--skip` names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PeerName {
    /// HAProxy.
    Haproxy,
    /// nginx with its mail module.
    Nginx,
    /// up-imapproxy.
    UpImapproxy,
}

/// One column of the table: a server over a transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Column {
    /// Dovecot's plain port.
    DirectPlain,
    /// Dovecot's implicit-TLS port.
    DirectTls,
    /// up-imapproxy (plain only: it has no TLS towards clients).
    UpImapproxyPlain,
    /// nginx plain listener.
    NginxPlain,
    /// nginx implicit-TLS listener.
    NginxTls,
    /// HAProxy plain frontend.
    HaproxyPlain,
    /// HAProxy TLS-terminating frontend.
    HaproxyTls,
    /// imapproxy `tls = "none"` listener.
    ImapproxyPlain,
    /// imapproxy `tls = "implicit"` listener.
    ImapproxyTls,
}

impl Column {
    /// Every column, in the table's order (DESIGN.md "Performance": direct first, ours
    /// last).
    pub const ALL: [Column; 9] = [
        Column::DirectPlain,
        Column::DirectTls,
        Column::UpImapproxyPlain,
        Column::NginxPlain,
        Column::NginxTls,
        Column::HaproxyPlain,
        Column::HaproxyTls,
        Column::ImapproxyPlain,
        Column::ImapproxyTls,
    ];

    /// The header, e.g. "HAProxy TLS".
    pub fn name(self) -> &'static str {
        match self {
            Column::DirectPlain => "direct plain",
            Column::DirectTls => "direct TLS",
            Column::UpImapproxyPlain => "up-imapproxy plain",
            Column::NginxPlain => "nginx plain",
            Column::NginxTls => "nginx TLS",
            Column::HaproxyPlain => "HAProxy plain",
            Column::HaproxyTls => "HAProxy TLS",
            Column::ImapproxyPlain => "imapproxy plain",
            Column::ImapproxyTls => "imapproxy TLS",
        }
    }

    /// The server behind it.
    pub fn server(self) -> Server {
        match self {
            Column::DirectPlain | Column::DirectTls => Server::Direct,
            Column::UpImapproxyPlain => Server::UpImapproxy,
            Column::NginxPlain | Column::NginxTls => Server::Nginx,
            Column::HaproxyPlain | Column::HaproxyTls => Server::Haproxy,
            Column::ImapproxyPlain | Column::ImapproxyTls => Server::Imapproxy,
        }
    }

    /// Plain TCP or implicit TLS.
    pub fn security(self) -> Security {
        match self {
            Column::DirectTls | Column::NginxTls | Column::HaproxyTls | Column::ImapproxyTls => {
                Security::Tls
            }
            _ => Security::Plain,
        }
    }

    /// The direct-Dovecot column over the same transport: what ratios divide by.
    pub fn baseline(self) -> Column {
        match self.security() {
            Security::Plain => Column::DirectPlain,
            Security::Tls => Column::DirectTls,
        }
    }
}

/// `columns` rotated left by `run - 1`: each run starts with the next column, so that
/// no target is always measured first or last (drift, a cache warmed by the previous
/// target).
pub fn rotated<T: Clone>(columns: &[T], run: u32) -> Vec<T> {
    let mut v = columns.to_vec();
    if !v.is_empty() {
        let k = (run.saturating_sub(1) as usize) % v.len();
        v.rotate_left(k);
    }
    v
}

/// The peers found on this machine, and why the others are left out.
#[derive(Debug, Clone, Default)]
pub struct Installed {
    /// `haproxy`.
    pub haproxy: Option<PathBuf>,
    /// `nginx` with the mail module.
    pub nginx: Option<Nginx>,
    /// `imapproxyd`.
    pub up_imapproxy: Option<PathBuf>,
    /// One line per peer left out: name and reason.
    pub skipped: Vec<String>,
    /// One line per peer found: name and version.
    pub versions: Vec<String>,
}

impl Installed {
    /// Looks for each peer unless `skip` names it.
    pub fn detect(skip: &[PeerName]) -> Installed {
        let mut out = Installed::default();
        let skipped = |p: PeerName| skip.contains(&p);
        let mut note = |name: &str, r: Result<(), String>| {
            if let Err(why) = r {
                out_skip(&mut out.skipped, name, &why);
            }
        };
        if skipped(PeerName::Haproxy) {
            note("HAProxy", Err("--skip haproxy".into()));
        } else {
            match super::process::find_program(&["haproxy"]) {
                Some(p) => {
                    out.versions
                        .push(format!("HAProxy {}", version_of(&p, "-v", 2)));
                    out.haproxy = Some(p);
                }
                None => note("HAProxy", Err("haproxy is not installed".into())),
            }
        }
        if skipped(PeerName::Nginx) {
            note("nginx", Err("--skip nginx".into()));
        } else {
            match nginx::find() {
                Ok(n) => {
                    out.versions.push(n.version.clone());
                    out.nginx = Some(n);
                }
                Err(why) => note("nginx", Err(why)),
            }
        }
        if skipped(PeerName::UpImapproxy) {
            note("up-imapproxy", Err("--skip up-imapproxy".into()));
        } else {
            match up_imapproxy::find() {
                Ok(p) => {
                    out.versions
                        .push(format!("up-imapproxy {}", debian_version("imapproxy")));
                    out.up_imapproxy = Some(p);
                }
                Err(why) => note("up-imapproxy", Err(why)),
            }
        }
        out
    }

    /// Whether `server` can be started here.
    pub fn has(&self, server: Server) -> bool {
        match server {
            Server::Direct | Server::Imapproxy => true,
            Server::Haproxy => self.haproxy.is_some(),
            Server::Nginx => self.nginx.is_some(),
            Server::UpImapproxy => self.up_imapproxy.is_some(),
        }
    }

    /// The columns that can be measured here, of those over `transports`.
    pub fn columns(&self, transports: &[Security]) -> Vec<Column> {
        Column::ALL
            .into_iter()
            .filter(|c| self.has(c.server()) && transports.contains(&c.security()))
            .collect()
    }
}

fn out_skip(skipped: &mut Vec<String>, name: &str, why: &str) {
    skipped.push(format!(
        "{name}: skipped ({why}; `IMAPPROXY_BENCH_INSTALL_PEERS=1 cargo xtask bench` installs it)"
    ));
}

/// `<program> <flag>`'s first line, its `n`-th word on (e.g. HAProxy's version).
fn version_of(program: &Path, flag: &str, n: usize) -> String {
    Command::new(program)
        .arg(flag)
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(n))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "(version unknown)".to_owned())
}

/// The installed version of a Debian package, or "(version unknown)".
pub fn debian_version(package: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", package])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "(version unknown)".to_owned())
}

/// Everything needed to start any server in front of one Dovecot.
pub struct Stack<'a> {
    dovecot: &'a Dovecot,
    cert: PathBuf,
    key: PathBuf,
    proxy_bin: &'a Path,
    imapproxy_extra: String,
    installed: &'a Installed,
    auth: Option<AuthResponder>,
}

impl<'a> Stack<'a> {
    /// A stack over `dovecot`; imapproxy gets `imapproxy_extra` appended to its
    /// generated configuration (the scenario's `[pool]` settings). Starts the auth
    /// responder when nginx is installed.
    pub fn new(
        dovecot: &'a Dovecot,
        proxy_bin: &'a Path,
        imapproxy_extra: &str,
        installed: &'a Installed,
    ) -> Result<Stack<'a>, BenchError> {
        let (cert, key) = dovecot.server_cert_paths();
        let auth = match installed.nginx {
            Some(_) => Some(AuthResponder::start(dovecot.imap_addr())?),
            None => None,
        };
        Ok(Stack {
            dovecot,
            cert,
            key,
            proxy_bin,
            imapproxy_extra: imapproxy_extra.to_owned(),
            installed,
            auth,
        })
    }

    /// Starts `server` (nothing for direct Dovecot) and waits until it listens.
    pub async fn start(&self, server: Server) -> Result<Running, BenchError> {
        let backend = self.dovecot.imap_addr();
        let (cert, key) = (self.cert.as_path(), self.key.as_path());
        let missing = |what: &str| BenchError::protocol(what, "not installed");
        Ok(match server {
            Server::Direct => Running::Direct {
                plain: backend,
                tls: self.dovecot.imaps_addr(),
                pid: self.dovecot.pid(),
            },
            Server::Imapproxy => Running::Imapproxy(
                ProxyProcess::start_with(self.proxy_bin, backend, cert, key, &self.imapproxy_extra)
                    .await?,
            ),
            Server::Haproxy => {
                let bin = self.installed.haproxy.as_ref().ok_or(missing("haproxy"))?;
                Running::Peer(
                    PeerProcess::start("haproxy", true, |dir, ports| {
                        haproxy::launch(bin, dir, ports, backend, cert, key)
                    })
                    .await?,
                )
            }
            Server::Nginx => {
                let nginx = self.installed.nginx.as_ref().ok_or(missing("nginx"))?;
                let auth = self.auth.as_ref().ok_or(missing("auth_http responder"))?;
                let auth = auth.addr();
                Running::Peer(
                    PeerProcess::start("nginx", true, |dir, ports| {
                        nginx::launch(nginx, dir, ports, auth, cert, key)
                    })
                    .await?,
                )
            }
            Server::UpImapproxy => {
                let bin = self
                    .installed
                    .up_imapproxy
                    .as_ref()
                    .ok_or(missing("up-imapproxy"))?;
                Running::Peer(
                    PeerProcess::start("up-imapproxy", false, |dir, ports| {
                        up_imapproxy::launch(bin, dir, ports, backend)
                    })
                    .await?,
                )
            }
        })
    }
}

/// A started server; the process (if any) stops when this drops.
pub enum Running {
    /// Dovecot's own ports; `pid` is its master's.
    Direct {
        /// Plain port.
        plain: SocketAddr,
        /// Implicit-TLS port.
        tls: SocketAddr,
        /// Dovecot master.
        pid: Option<u32>,
    },
    /// The imapproxy binary.
    Imapproxy(ProxyProcess),
    /// A peer.
    Peer(PeerProcess),
}

impl Running {
    /// The address for `security`, when the server has such a listener.
    pub fn addr(&self, security: Security) -> Option<SocketAddr> {
        match (self, security) {
            (Running::Direct { plain, .. }, Security::Plain) => Some(*plain),
            (Running::Direct { tls, .. }, Security::Tls) => Some(*tls),
            (Running::Imapproxy(p), Security::Plain) => Some(p.plain),
            (Running::Imapproxy(p), Security::Tls) => Some(p.implicit),
            (Running::Peer(p), Security::Plain) => Some(p.ports.plain),
            (Running::Peer(p), Security::Tls) => p.ports.tls,
        }
    }

    /// The process whose tree holds the server's memory.
    pub fn memory_root(&self) -> Option<u32> {
        match self {
            Running::Direct { pid, .. } => *pid,
            Running::Imapproxy(p) => Some(p.pid()),
            Running::Peer(p) => Some(p.pid()),
        }
    }

    /// Output of the started process (empty for Dovecot), for error reports.
    pub fn log(&self) -> String {
        match self {
            Running::Direct { .. } => String::new(),
            Running::Imapproxy(p) => p.log(),
            Running::Peer(p) => p.log(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_is_divided_by_direct_over_its_transport() {
        for c in Column::ALL {
            assert_eq!(c.baseline().server(), Server::Direct);
            assert_eq!(c.baseline().security(), c.security());
        }
        assert_eq!(Column::UpImapproxyPlain.security(), Security::Plain);
    }

    #[test]
    fn rotation_moves_the_first_column_each_run() {
        let cols = [
            Column::DirectPlain,
            Column::NginxPlain,
            Column::ImapproxyPlain,
        ];
        assert_eq!(rotated(&cols, 1), cols);
        assert_eq!(
            rotated(&cols, 2),
            [
                Column::NginxPlain,
                Column::ImapproxyPlain,
                Column::DirectPlain
            ]
        );
        assert_eq!(rotated(&cols, 4), cols);
        assert!(rotated::<Column>(&[], 3).is_empty());
    }

    #[test]
    fn skipped_peers_leave_direct_and_imapproxy() {
        let i = Installed::detect(&[PeerName::Haproxy, PeerName::Nginx, PeerName::UpImapproxy]);
        assert_eq!(i.skipped.len(), 3);
        assert_eq!(
            i.columns(&[Security::Plain, Security::Tls]),
            [
                Column::DirectPlain,
                Column::DirectTls,
                Column::ImapproxyPlain,
                Column::ImapproxyTls
            ]
        );
        assert_eq!(
            i.columns(&[Security::Plain]),
            [Column::DirectPlain, Column::ImapproxyPlain]
        );
    }
}
