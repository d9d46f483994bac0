//! The proxy under test: the release `imapproxy` binary started as a separate process with
//! a generated configuration, stopped by its PID (through its `Child` handle) on drop.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use imapproxy_testkit::free_port;
use tokio::net::TcpStream;

use crate::error::BenchError;

/// Bound on the proxy's start-up (it listens within milliseconds on a quiet machine).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// A port taken between probing and binding is retried with fresh ports this often.
const START_ATTEMPTS: usize = 3;

/// `loadbench --threads`: the `[server] threads` of every proxy this process starts. A
/// setting of the whole command line, like `--proxy`, so that no scenario has to pass it on.
static WORKER_THREADS: OnceLock<u32> = OnceLock::new();

/// Sets the worker threads of every proxy started from now on (the first call wins).
pub fn set_worker_threads(threads: u32) {
    let _ = WORKER_THREADS.set(threads);
}

/// The worker threads of the proxies started from now on, when set.
pub fn worker_threads() -> Option<u32> {
    WORKER_THREADS.get().copied()
}

/// The workspace root (this package lives one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_owned()
}

/// `$CARGO_TARGET_DIR` when set (relative to the workspace root), else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => workspace_root().join(d),
        None => workspace_root().join("target"),
    }
}

/// The proxy binary: `explicit`, or `<target>/release/imapproxy`. Warns (does not fail)
/// when a source file of the workspace is newer than the binary, which usually means
/// `cargo build --release -p imapproxy` was forgotten.
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf, BenchError> {
    let path = explicit.map_or_else(
        || target_dir().join("release").join("imapproxy"),
        Path::to_owned,
    );
    let meta = fs::metadata(&path).map_err(|_| BenchError::ProxyBinaryMissing(path.clone()))?;
    if !meta.is_file() {
        return Err(BenchError::ProxyBinaryMissing(path));
    }
    if let Ok(built) = meta.modified() {
        if let Some(newer) = newest_source(&workspace_root().join("crates"))
            .filter(|(t, _)| *t > built)
            .map(|(_, p)| p)
        {
            eprintln!(
                "loadbench: warning: {} is newer than {}; run `cargo build --release -p imapproxy`",
                newer.display(),
                path.display()
            );
        }
    }
    Ok(path)
}

/// The most recently modified `.rs`/`Cargo.toml` below `dir`.
fn newest_source(dir: &Path) -> Option<(SystemTime, PathBuf)> {
    let mut best: Option<(SystemTime, PathBuf)> = None;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                if p.file_name()
                    .is_some_and(|n| n != "target" && n != "tests" && n != "benches")
                {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "rs") || p.ends_with("Cargo.toml") {
                if let Ok(t) = meta.modified() {
                    if best.as_ref().is_none_or(|(b, _)| t > *b) {
                        best = Some((t, p));
                    }
                }
            }
        }
    }
    best
}

/// A running proxy with a plain listener (`tls = "none"`, plaintext login allowed) and an
/// implicit-TLS listener, both in front of one plain backend.
pub struct ProxyProcess {
    child: Child,
    /// The plain listener.
    pub plain: SocketAddr,
    /// The implicit-TLS listener.
    pub implicit: SocketAddr,
    /// The admin endpoint and its bearer token, when asked for ([`ProxyProcess::start_multi`]).
    pub admin: Option<(SocketAddr, String)>,
    log_path: PathBuf,
    // Last: removed after the process is gone.
    _dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Starts `binary` in front of `backend`, with the certificate and key (PEM files) for
    /// the TLS listener, and waits until both listeners accept connections.
    pub async fn start(
        binary: &Path,
        backend: SocketAddr,
        cert: &Path,
        key: &Path,
    ) -> Result<ProxyProcess, BenchError> {
        Self::start_with(binary, backend, cert, key, "").await
    }

    /// Like [`ProxyProcess::start`], with `extra` TOML appended to the generated
    /// configuration (e.g. a `[pool]` section, so that a scenario states the pool settings
    /// it measures instead of inheriting whatever the defaults are).
    pub async fn start_with(
        binary: &Path,
        backend: SocketAddr,
        cert: &Path,
        key: &Path,
        extra: &str,
    ) -> Result<ProxyProcess, BenchError> {
        Self::start_multi(binary, &[("bench", backend)], cert, key, extra, None).await
    }

    /// Like [`ProxyProcess::start_with`], in front of several named backends (in this
    /// order), and with the admin endpoint on a free loopback port when `admin_token` is
    /// given (every request but `/healthz` then needs it as a bearer token). `extra` must
    /// not have an `[admin]` section then.
    pub async fn start_multi(
        binary: &Path,
        backends: &[(&str, SocketAddr)],
        cert: &Path,
        key: &Path,
        extra: &str,
        admin_token: Option<&str>,
    ) -> Result<ProxyProcess, BenchError> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(binary, backends, cert, key, extra, admin_token).await {
                Ok(p) => return Ok(p),
                // Most likely a port race: try again with new ports.
                Err(e @ BenchError::ProxyExited { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| BenchError::ProxyBinaryMissing(binary.to_owned())))
    }

    async fn start_once(
        binary: &Path,
        backends: &[(&str, SocketAddr)],
        cert: &Path,
        key: &Path,
        extra: &str,
        admin_token: Option<&str>,
    ) -> Result<ProxyProcess, BenchError> {
        let dir = tempfile::Builder::new()
            .prefix("imapproxy-bench-")
            .tempdir()
            .map_err(BenchError::io("proxy temp dir"))?;
        let plain = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let implicit = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = admin_token.map(|t| {
            (
                SocketAddr::from(([127, 0, 0, 1], free_port())),
                t.to_owned(),
            )
        });
        // max_connections is raised above the idle-memory scenario's session count (the
        // default is 500).
        let backends_toml: String = backends
            .iter()
            .map(|(name, addr)| {
                format!(
                    "[[backends]]\nname = \"{name}\"\naddr = \"{addr}\"\ntls = \"none\"\n\
                     max_connections = 20000\n\n"
                )
            })
            .collect();
        let admin_toml = admin.as_ref().map_or_else(String::new, |(addr, token)| {
            format!("[admin]\naddr = \"{addr}\"\ntoken = \"{token}\"\n\n")
        });
        let server_toml = WORKER_THREADS
            .get()
            .map_or_else(String::new, |n| format!("[server]\nthreads = {n}\n\n"));
        // DESIGN.md "Configuration" keys.
        let config = format!(
            r#"# Generated by loadbench.
[[listeners]]
addr = "{plain}"
tls = "none"
allow_plaintext_auth = true

[[listeners]]
addr = "{implicit}"
tls = "implicit"

[tls]
cert = "{cert}"
key = "{key}"

{backends_toml}[log]
level = "warn"

{server_toml}{admin_toml}{extra}"#,
            cert = cert.display(),
            key = key.display(),
        );
        let config_path = dir.path().join("imapproxy.toml");
        fs::write(&config_path, config).map_err(BenchError::io("write proxy config"))?;
        let log_path = dir.path().join("imapproxy.log");
        let log = File::create(&log_path).map_err(BenchError::io("create proxy log"))?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(BenchError::io(format!("start {}", binary.display())))?;
        let mut proxy = ProxyProcess {
            child,
            plain,
            implicit,
            admin: admin.clone(),
            log_path,
            _dir: dir,
        };
        for addr in [plain, implicit]
            .into_iter()
            .chain(admin.as_ref().map(|(a, _)| *a))
        {
            proxy.wait_listening(addr).await?;
        }
        Ok(proxy)
    }

    async fn wait_listening(&mut self, addr: SocketAddr) -> Result<(), BenchError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(BenchError::ProxyExited {
                    status: status.to_string(),
                    log: self.log(),
                });
            }
            if Instant::now() > deadline {
                return Err(BenchError::ProxyStartTimeout {
                    addr,
                    secs: START_TIMEOUT.as_secs(),
                    log: self.log(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the process has used so far, all threads, in nanoseconds
    /// ([`procfs::process_cpu_ns`](crate::peers::procfs::process_cpu_ns)).
    pub fn cpu_ns(&self) -> Option<u64> {
        crate::peers::procfs::process_cpu_ns(self.pid())
    }

    /// Resident set size (`VmRSS` of `/proc/<pid>/status`), in KiB (the kernel's "kB").
    pub fn rss_kib(&self) -> Result<u64, BenchError> {
        let path = PathBuf::from(format!("/proc/{}/status", self.pid()));
        let status = fs::read_to_string(&path).map_err(|source| BenchError::File {
            path: path.clone(),
            source,
        })?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| BenchError::protocol(path.display().to_string(), "no VmRSS line"))
    }

    /// The proxy's stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        // SIGKILL to this child's PID only; wait reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
