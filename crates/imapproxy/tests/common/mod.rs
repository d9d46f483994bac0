//! Starting the `imapproxy` binary for a test: a generated config in a temp dir, the process
//! waited for on its ports, and killed (by its PID) when the test is done.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use std::sync::OnceLock;

use imapproxy_testkit::{Dovecot, free_port, shared_mail_dir};

/// A running `imapproxy`, killed on drop.
pub struct Binary {
    /// The process.
    pub child: Child,
    /// Its configuration file (rewrite it, then [`Binary::signal`] `HUP`, to reload).
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Binary {
    /// Writes `config`, starts the binary on it and waits until every address of `wait_for`
    /// accepts connections.
    pub fn start(config: &str, wait_for: &[SocketAddr]) -> Self {
        Self::start_with_env(config, wait_for, &[])
    }

    /// [`Binary::start`] with these variables added to its environment (and glibc's
    /// allocator settings of the test's own environment left out).
    pub fn start_with_env(config: &str, wait_for: &[SocketAddr], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imapproxy.toml");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_imapproxy"))
            .env_remove("GLIBC_TUNABLES")
            .env_remove("IMAPPROXY_HEAP_COMPACTED")
            .envs(env.iter().copied())
            .arg("--config")
            .arg(&path)
            .env(
                "RUST_LOG",
                std::env::var("TEST_PROXY_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("TEST_PROXY_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap();
        // A proxy kept in a `static` is never dropped: a watchdog ends it (by its PID) when
        // this test process is gone, so no run leaves a proxy behind.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(
                "while kill -0 \"$1\" 2>/dev/null && kill -0 \"$2\" 2>/dev/null; do sleep 0.2; done; \
                 kill -TERM \"$2\" 2>/dev/null",
            )
            .arg("imapproxy-test-watchdog")
            .arg(std::process::id().to_string())
            .arg(child.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let binary = Self {
            child,
            config: path,
            _dir: dir,
        };
        for addr in wait_for {
            wait_for_port(*addr);
        }
        binary
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`TERM`, `HUP`, ...) to this process only.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// The process's resident set size, from `/proc`.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

/// A free loopback address.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Waits (at most 20 s) until `addr` accepts connections.
pub fn wait_for_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "proxy did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An admin request with curl: (HTTP status, body). `token` goes in `Authorization: Bearer`;
/// `extra` are more curl arguments (`-H ...`, `-d ...`).
pub fn admin_request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &[&str],
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    if let Some(token) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    cmd.args(extra);
    let out = cmd
        .arg(format!("http://{admin}{path}"))
        .output()
        .expect("curl is installed");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_owned())
}

/// Two Dovecots over one mail store, so that a user can be served by either.
pub struct Backends {
    pub mail1: Dovecot,
    pub mail2: Dovecot,
    _store: tempfile::TempDir,
}

impl Backends {
    /// `mail1` or `mail2`.
    pub fn get(&self, name: &str) -> &Dovecot {
        match name {
            "mail1" => &self.mail1,
            "mail2" => &self.mail2,
            other => panic!("no backend {other}"),
        }
    }
}

/// The pair of this test binary, started by the first test that asks (its tests use distinct
/// users).
pub fn shared_backends() -> &'static Backends {
    static B: OnceLock<Backends> = OnceLock::new();
    B.get_or_init(|| {
        let store = shared_mail_dir().unwrap();
        // Held in a static, never dropped: the watchdogs remove the store at exit.
        let start = || {
            Dovecot::builder()
                .mail_dir(store.path())
                .remove_on_exit(store.path())
                .start()
                .unwrap()
        };
        let (mail1, mail2) = (start(), start());
        Backends {
            mail1,
            mail2,
            _store: store,
        }
    })
}

/// Polls `check` every 50 ms for at most `within`; whether it became true.
pub fn wait_until(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A two-thread runtime for driving clients from a synchronous test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `cmd`, killing it (by its PID) if it outlives `limit`.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: std::fs::read(out).unwrap(),
        stderr: std::fs::read(err).unwrap(),
    }
}

/// The admin page's DOM in headless Chromium, after its script ran for `budget` of virtual
/// time (flags for root on a closed network: no sandbox, nothing fetched in the background).
pub fn dump_dom(admin: SocketAddr, budget: Duration) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = run_bounded(
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--timeout=15000",
            ])
            .arg(format!("--virtual-time-budget={}", budget.as_millis()))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--dump-dom")
            .arg(format!("http://{admin}/")),
        Duration::from_secs(25),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
