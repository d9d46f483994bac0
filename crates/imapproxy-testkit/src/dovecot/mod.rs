//! A sandboxed Dovecot 2.3 per test binary (or per test): generated config in a temp
//! dir, loopback high ports, passwd-file users, seeded maildirs, killed on drop.

mod cert;
mod config;
mod process;
pub(crate) mod seed;
mod sysuser;

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;

use crate::error::TestkitError;
use crate::net::free_port;
use config::ConfigParams;
pub use process::find_dovecot;
use seed::Seed;
pub use sysuser::MAIL_USER;

/// Bound on start-up: Dovecot greets in well under a second on a quiet machine.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Port races (a free port taken between probing and Dovecot binding it) are
/// retried with fresh ports this many times.
const START_ATTEMPTS: usize = 3;

/// The master user (`master = yes` passdb): log in as `user1*master` / `masterpass`.
const MASTER_USER: (&str, &str) = ("master", "masterpass");

/// Configures a [`Dovecot`] sandbox; obtained from [`Dovecot::builder`].
#[derive(Debug, Clone)]
pub struct DovecotBuilder {
    users: usize,
    extra_users: Vec<(String, String)>,
    max_userip_connections: u32,
    seed: Option<Seed>,
    extra_config: String,
    mail_dir: Option<PathBuf>,
    remove_on_exit: Vec<PathBuf>,
}

impl Default for DovecotBuilder {
    fn default() -> Self {
        DovecotBuilder {
            users: 20,
            extra_users: Vec::new(),
            max_userip_connections: 100,
            seed: None,
            extra_config: String::new(),
            mail_dir: None,
            remove_on_exit: Vec::new(),
        }
    }
}

impl DovecotBuilder {
    /// Users `user1..userN` with passwords `pass1..passN` (default 20).
    pub fn users(mut self, n: usize) -> Self {
        self.users = n;
        self
    }

    /// One more user with a chosen name and password (after `user1..userN`).
    pub fn add_user(mut self, name: &str, password: &str) -> Self {
        self.extra_users
            .push((name.to_owned(), password.to_owned()));
        self
    }

    /// `mail_max_userip_connections` (default 100; Dovecot's own default is 10).
    pub fn max_userip_connections(mut self, n: u32) -> Self {
        self.max_userip_connections = n;
        self
    }

    /// Replaces the default mailbox contents ([`crate::default_seed`]: five small
    /// messages per user, plus the 1 MiB one for `user1`). Users not listed get an
    /// empty INBOX; an empty `Seed` seeds nothing.
    pub fn seed_messages(mut self, seed: Seed) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Text appended to `dovecot.conf` (later settings override earlier ones).
    pub fn extra_config(mut self, text: &str) -> Self {
        self.extra_config.push_str(text);
        if !text.ends_with('\n') {
            self.extra_config.push('\n');
        }
        self
    }

    /// Keeps mail in `shared_root` instead of the instance's temp dir, so that two
    /// instances can serve one mail store (failover, migration). The testkit makes
    /// `shared_root` owned by [`MAIL_USER`]; its parents must be traversable by
    /// that user ([`shared_mail_dir`] makes a suitable directory). Users whose
    /// maildir already exists there are not seeded again.
    pub fn mail_dir(mut self, shared_root: &Path) -> Self {
        self.mail_dir = Some(shared_root.to_owned());
        self
    }

    /// Has the watchdog remove `path` too when the test process ends while this instance
    /// still runs, as a `static` instance does: for files it needs that would otherwise
    /// outlive the test binary (a [`shared_mail_dir`] or a config file kept in a `static`
    /// beside it). Only paths whose name starts with `imapproxy-` are removed. An instance
    /// that is dropped leaves them to their owner.
    pub fn remove_on_exit(mut self, path: &Path) -> Self {
        self.remove_on_exit.push(path.to_owned());
        self
    }

    /// Starts Dovecot and blocks until it greets on the plain port (at most 10 s per
    /// attempt; a port race is retried with new ports).
    pub fn start(self) -> io::Result<Dovecot> {
        let binary = find_dovecot().ok_or(TestkitError::DovecotNotFound)?;
        let (uid, gid) = sysuser::ensure()?;
        let dir = tempfile::Builder::new()
            .prefix("imapproxy-dovecot-")
            .tempdir()?;
        // Dovecot's unprivileged processes (dovenull, dovecot, the mail user) must be
        // able to reach their sockets and files below it.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        for sub in ["run", "state"] {
            fs::create_dir(dir.path().join(sub))?;
        }
        let home = dir.path().join("home");
        fs::create_dir(&home)?;
        chown(&home, Some(uid), Some(gid))?;

        let mail_root = match &self.mail_dir {
            Some(shared) => {
                fs::create_dir_all(shared)?;
                shared.clone()
            }
            None => dir.path().join("mail"),
        };
        fs::create_dir_all(&mail_root)?;
        fs::set_permissions(&mail_root, fs::Permissions::from_mode(0o755))?;
        chown(&mail_root, Some(uid), Some(gid))?;

        let mut users: Vec<(String, String)> = (1..=self.users)
            .map(|i| (format!("user{i}"), format!("pass{i}")))
            .collect();
        users.extend(self.extra_users.iter().cloned());
        let seed = match &self.seed {
            Some(s) => s.clone(),
            None => seed::default_seed(&users.iter().map(|u| &u.0).collect::<Vec<_>>()),
        };
        seed::write(&mail_root, &seed, uid, gid)?;

        let pki = cert::generate()?;
        // The dir name is unique, so pgrep -f <name> finds every process of this
        // instance (children carry the instance name in their titles).
        let dir_name = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut params = ConfigParams {
            instance_name: dir_name,
            dir: dir.path().to_owned(),
            mail_root: mail_root.clone(),
            imap_port: 0,
            imaps_port: 0,
            haproxy_port: 0,
            max_userip_connections: self.max_userip_connections,
            extra: self.extra_config.clone(),
        };
        write_secret(&params.cert_path(), &pki.chain_pem)?;
        write_secret(&params.key_path(), &pki.key_pem)?;
        write_secret(&dir.path().join("ca.pem"), &pki.ca_pem)?;
        // Dovecot's auth process reads these as the unprivileged `dovecot` user, so
        // they are world-readable: test passwords in a throwaway directory.
        let passwd: String = users.iter().map(|(u, p)| format!("{u}:{p}\n")).collect();
        fs::write(params.passwd_path(), passwd)?;
        fs::write(
            params.masters_path(),
            format!("{}:{}\n", MASTER_USER.0, MASTER_USER.1),
        )?;

        let config_path = dir.path().join("dovecot.conf");
        let output_path = dir.path().join("dovecot.out");
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            params.imap_port = free_port();
            params.imaps_port = free_port();
            params.haproxy_port = free_port();
            fs::write(&config_path, params.render())?;
            let imap_addr = SocketAddr::from(([127, 0, 0, 1], params.imap_port));
            let mut child = process::spawn(&binary, &config_path, &output_path)?;
            match process::wait_ready(&mut child, imap_addr, START_TIMEOUT) {
                process::Ready::Yes => {
                    let watchdog =
                        match process::spawn_watchdog(child.id(), dir.path(), &self.remove_on_exit)
                        {
                            Ok(w) => w,
                            Err(e) => {
                                process::kill(&mut child);
                                return Err(e);
                            }
                        };
                    return Ok(Dovecot {
                        child: Some(child),
                        watchdog: Some(watchdog),
                        imap: imap_addr,
                        imaps: SocketAddr::from(([127, 0, 0, 1], params.imaps_port)),
                        haproxy: SocketAddr::from(([127, 0, 0, 1], params.haproxy_port)),
                        ca_pem: pki.ca_pem,
                        users,
                        log_path: params.log_path(),
                        mail_root,
                        dir,
                    });
                }
                process::Ready::Exited(status) => {
                    last_err = Some(TestkitError::DovecotExited {
                        status: status.to_string(),
                        config: config_path.clone(),
                        output: diagnostics(&output_path, &params.log_path()),
                    });
                }
                process::Ready::TimedOut => {
                    process::kill(&mut child);
                    return Err(TestkitError::StartTimeout {
                        addr: imap_addr,
                        secs: START_TIMEOUT.as_secs(),
                        output: diagnostics(&output_path, &params.log_path()),
                    }
                    .into());
                }
            }
        }
        Err(last_err.unwrap_or(TestkitError::DovecotNotFound).into())
    }
}

/// Writes a file readable by root only (Dovecot's config process reads the key as root).
fn write_secret(path: &Path, text: &str) -> io::Result<()> {
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
}

/// Dovecot's own output and the end of its log, for error messages.
fn diagnostics(output: &Path, log: &Path) -> String {
    let out = fs::read_to_string(output).unwrap_or_default();
    let log = fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!(
        "--- output ---\n{out}--- log (tail) ---\n{}",
        tail.join("\n")
    )
}

/// A running sandboxed Dovecot 2.3. Stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct Dovecot {
    child: Option<Child>,
    watchdog: Option<Child>,
    imap: SocketAddr,
    imaps: SocketAddr,
    haproxy: SocketAddr,
    ca_pem: String,
    users: Vec<(String, String)>,
    log_path: PathBuf,
    mail_root: PathBuf,
    // Last, so the directory is removed after Drop has stopped Dovecot.
    dir: TempDir,
}

static SHARED: OnceLock<Dovecot> = OnceLock::new();

impl Dovecot {
    /// A builder with the defaults: 20 users, 100 connections per user and IP,
    /// default mailbox contents.
    pub fn builder() -> DovecotBuilder {
        DovecotBuilder::default()
    }

    /// One default instance per test binary, started on first use and stopped by
    /// its watchdog when the test process exits.
    ///
    /// # Panics
    ///
    /// When Dovecot is not installed ("Dovecot not found: run `cargo xtask test`,
    /// which installs it") or does not start; tests never pass by skipping.
    pub fn shared() -> &'static Dovecot {
        SHARED.get_or_init(|| {
            if find_dovecot().is_none() {
                panic!("{}", TestkitError::DovecotNotFound);
            }
            match Dovecot::builder().start() {
                Ok(d) => d,
                Err(e) => panic!("cannot start the shared test Dovecot: {e}"),
            }
        })
    }

    /// Plain IMAP port (STARTTLS available).
    pub fn imap_addr(&self) -> SocketAddr {
        self.imap
    }

    /// Implicit-TLS IMAP port.
    pub fn imaps_addr(&self) -> SocketAddr {
        self.imaps
    }

    /// Plain IMAP port that expects a PROXY v1/v2 header first (`haproxy = yes`).
    pub fn haproxy_addr(&self) -> SocketAddr {
        self.haproxy
    }

    /// PEM of the CA that signed the server certificate (SAN `localhost`, `127.0.0.1`).
    pub fn ca_cert_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// Path of the CA certificate PEM.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Paths of the server certificate chain and key PEM files (root-readable),
    /// reusable as the proxy's own test certificate.
    pub fn server_cert_paths(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("cert.pem"),
            self.dir.path().join("key.pem"),
        )
    }

    /// The whole log file so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits (blocking, polling every 20 ms) until at least `at_least` log lines
    /// contain `needle` or `within` passes; returns the final count. Dovecot's log
    /// process writes asynchronously, so a line may appear shortly after the event.
    pub fn wait_for_log(&self, needle: &str, at_least: usize, within: Duration) -> usize {
        let deadline = std::time::Instant::now() + within;
        loop {
            let n = self.log_count(needle);
            if n >= at_least || std::time::Instant::now() >= deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Successful IMAP logins of `user` so far (imap-login `Login:` lines).
    pub fn logins(&self, user: &str) -> usize {
        self.log_count(&format!("imap-login: Info: Login: user=<{user}>,"))
    }

    /// Name and password of user `i` (from 1): `("user1", "pass1")`. Beyond the
    /// generated users, indexes continue into [`DovecotBuilder::add_user`] users.
    ///
    /// # Panics
    ///
    /// When there is no such user.
    pub fn user(&self, i: usize) -> (String, String) {
        match i.checked_sub(1).and_then(|k| self.users.get(k)) {
            Some(u) => u.clone(),
            None => panic!(
                "no test user {i}: this Dovecot has {} users",
                self.users.len()
            ),
        }
    }

    /// All users with their passwords.
    pub fn users(&self) -> &[(String, String)] {
        &self.users
    }

    /// The master user: log in as `"<user>*master"` with this password.
    pub fn master_user(&self) -> (String, String) {
        (MASTER_USER.0.to_owned(), MASTER_USER.1.to_owned())
    }

    /// Root of the mail store (`<root>/<user>` is each user's maildir).
    pub fn mail_root(&self) -> &Path {
        &self.mail_root
    }

    /// PID of the Dovecot master, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the master and all its processes with SIGKILL, no shutdown: a crashed
    /// backend for failover tests. Open connections are cut.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            process::kill(&mut c);
        }
        if let Some(mut w) = self.watchdog.take() {
            process::end_watchdog(&mut w);
        }
    }

    /// Stops Dovecot gracefully now (what drop does).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            process::stop(&mut c);
        }
        if let Some(mut w) = self.watchdog.take() {
            process::end_watchdog(&mut w);
        }
    }

    /// The instance's temp dir (config, log, sockets, default mail store).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh directory suitable for [`DovecotBuilder::mail_dir`]: world-traversable
/// and owned by [`MAIL_USER`]; removed when the returned value is dropped.
pub fn shared_mail_dir() -> io::Result<TempDir> {
    let (uid, gid) = sysuser::ensure()?;
    let dir = tempfile::Builder::new()
        .prefix("imapproxy-mail-")
        .tempdir()?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
    chown(dir.path(), Some(uid), Some(gid))?;
    Ok(dir)
}
