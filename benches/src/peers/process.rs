//! A peer proxy (HAProxy, nginx, up-imapproxy) as a child process: generated
//! configuration in its own temp dir, free loopback ports, ready when its plain listener
//! greets, stopped by its PID on drop.
//!
//! Each peer runs in the foreground in a process group of its own, so that workers it
//! forks (nginx) can be found and stopped with it: SIGTERM to the PID we started (the
//! peer's own orderly shutdown), then SIGKILL to it and, should any worker have
//! outlived it, to the group it leads.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imapproxy_testkit::free_port;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::procfs;
use crate::error::BenchError;

/// Bound on a peer's start-up (each listens within a fraction of a second).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Fresh ports this often when a peer exits during start-up (most likely a port race).
const START_ATTEMPTS: usize = 3;
/// How long SIGTERM may take before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The loopback ports a peer is to listen on.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Plain IMAP listener.
    pub plain: SocketAddr,
    /// Implicit-TLS listener, for peers that terminate TLS.
    pub tls: Option<SocketAddr>,
}

/// A running peer.
pub struct PeerProcess {
    name: &'static str,
    child: Child,
    /// Where it listens.
    pub ports: Ports,
    log_path: PathBuf,
    // Last: removed after the process is gone.
    _dir: tempfile::TempDir,
}

impl PeerProcess {
    /// Makes a temp dir and free ports, lets `launch` write the configuration into the
    /// dir and return the command (without stdio, which goes to a log file here),
    /// starts it and waits for the `* OK` greeting on the plain listener and a TCP
    /// accept on the TLS one. Retries with new ports when the peer exits early.
    pub async fn start(
        name: &'static str,
        with_tls: bool,
        launch: impl Fn(&Path, Ports) -> Result<Command, BenchError>,
    ) -> Result<PeerProcess, BenchError> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(name, with_tls, &launch).await {
                Ok(p) => return Ok(p),
                Err(e @ BenchError::ProxyExited { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| BenchError::protocol(name, "did not start")))
    }

    async fn start_once(
        name: &'static str,
        with_tls: bool,
        launch: &impl Fn(&Path, Ports) -> Result<Command, BenchError>,
    ) -> Result<PeerProcess, BenchError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("imapproxy-bench-{}-", name.replace(' ', "-")))
            .tempdir()
            .map_err(BenchError::io(format!("{name}: temp dir")))?;
        // Peers that drop privileges (nginx's workers, up-imapproxy) still read and
        // write below it.
        set_mode(dir.path(), 0o755)?;
        let ports = Ports {
            plain: SocketAddr::from(([127, 0, 0, 1], free_port())),
            tls: with_tls.then(|| SocketAddr::from(([127, 0, 0, 1], free_port()))),
        };
        let mut cmd = launch(dir.path(), ports)?;
        let log_path = dir.path().join("output.log");
        let log = File::create(&log_path).map_err(BenchError::io(format!("{name}: log")))?;
        let err = log
            .try_clone()
            .map_err(BenchError::io(format!("{name}: log")))?;
        let child = cmd
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(BenchError::io(format!(
                "{name}: start {}",
                cmd.get_program().to_string_lossy()
            )))?;
        let mut peer = PeerProcess {
            name,
            child,
            ports,
            log_path,
            _dir: dir,
        };
        peer.wait_ready(ports.plain, true).await?;
        if let Some(tls) = ports.tls {
            peer.wait_ready(tls, false).await?;
        }
        Ok(peer)
    }

    /// Polls until `addr` accepts (and, with `greets`, sends a line starting `* OK`),
    /// the process exits, or [`START_TIMEOUT`] passes.
    async fn wait_ready(&mut self, addr: SocketAddr, greets: bool) -> Result<(), BenchError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if probe(addr, greets).await {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(BenchError::ProxyExited {
                    status: format!("{}: {status}", self.name),
                    log: self.log(),
                });
            }
            if Instant::now() > deadline {
                return Err(BenchError::ProxyStartTimeout {
                    addr,
                    secs: START_TIMEOUT.as_secs(),
                    log: format!("{}:\n{}", self.name, self.log()),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// PID of the process started (the master, for nginx).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The peer's stdout and stderr so far (and the files it was told to log to).
    pub fn log(&self) -> String {
        let mut text = fs::read_to_string(&self.log_path).unwrap_or_default();
        if let Some(dir) = self.log_path.parent() {
            for extra in ["error.log"] {
                if let Ok(t) = fs::read_to_string(dir.join(extra)) {
                    text.push_str(&t);
                }
            }
        }
        text
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let pid = self.child.id();
        if matches!(self.child.try_wait(), Ok(None)) {
            signal("TERM", &pid.to_string());
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
            // SIGKILL to this child's PID only; wait reaps it.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A worker that outlived its master is still in the group the master led (a
        // group id cannot be reused while a member lives).
        if procfs::all().iter().any(|p| p.pgrp == pid && p.pid != pid) {
            signal("KILL", &format!("-{pid}"));
        }
    }
}

/// `kill -<sig> -- <target>` through `sh` (the bench has no `unsafe` for `kill(2)`);
/// `target` is a PID we started or, negated, the group it leads.
fn signal(sig: &str, target: &str) {
    let _ = Command::new("sh")
        .args([
            "-c",
            "kill -s \"$1\" -- \"$2\" 2>/dev/null",
            "sh",
            sig,
            target,
        ])
        .stdin(Stdio::null())
        .status();
}

/// One connection attempt; with `greets`, reads until a full first line.
async fn probe(addr: SocketAddr, greets: bool) -> bool {
    let attempt = async {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            return false;
        };
        if !greets {
            return true;
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        while !buf.contains(&b'\n') && buf.len() < 4096 {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or(&[])),
            }
        }
        buf.starts_with(b"* OK")
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .unwrap_or(false)
}

/// `chmod mode path`.
pub fn set_mode(path: &Path, mode: u32) -> Result<(), BenchError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(BenchError::io(format!("chmod {}", path.display())))
}

/// Writes a configuration file below a peer's temp dir.
pub fn write_config(path: &Path, text: &str) -> Result<(), BenchError> {
    fs::write(path, text).map_err(|source| BenchError::File {
        path: path.to_owned(),
        source,
    })
}

/// The first of `names` found on `PATH` or in the sbin directories (root's `PATH` has
/// them, a user's may not).
pub fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .collect();
    names
        .iter()
        .find_map(|n| dirs.iter().map(|d| d.join(n)).find(|p| p.is_file()))
}
