//! A throwaway `redis-server` for tests: a free loopback port, no persistence, killed (by its
//! PID) on drop. It can be killed with `SIGKILL` mid-test and started again on the same port.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or deliberately killed) `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// Its working directory: a replica writes the master's snapshot there.
    dir: tempfile::TempDir,
    /// Extra arguments (replication), or a Sentinel configuration file.
    role: Role,
}

#[derive(Debug)]
enum Role {
    Master,
    Replica {
        of: u16,
    },
    /// Sentinel rewrites its configuration file, so it lives in a directory of its own.
    Sentinel {
        dir: tempfile::TempDir,
        master: u16,
    },
}

impl RedisServer {
    /// Starts one on a free loopback port and waits until it answers `PING`.
    ///
    /// # Panics
    /// When `redis-server` is not installed (`cargo xtask test` installs it) or does not
    /// come up within 10 s.
    pub fn start() -> Self {
        Self::start_as(Role::Master)
    }

    /// A replica of `master`, which Sentinel can promote.
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    pub fn start_replica_of(master: &RedisServer) -> Self {
        Self::start_as(Role::Replica { of: master.port })
    }

    /// A Sentinel watching `master` as `mymaster`, quorum 1, declaring it down after 500 ms
    /// of silence (tests want failovers in seconds, not the default 30 s).
    ///
    /// # Panics
    /// As [`RedisServer::start`], or when the temporary directory cannot be made.
    pub fn start_sentinel(master: &RedisServer) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("sentinel directory: {e}"));
        Self::start_as(Role::Sentinel {
            dir,
            master: master.port,
        })
    }

    fn start_as(role: Role) -> Self {
        let port = crate::free_port();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("redis directory: {e}"));
        let mut server = Self {
            child: None,
            port,
            dir,
            role,
        };
        server.restart();
        server
    }

    fn command_line(&self) -> Command {
        let mut cmd = Command::new("redis-server");
        cmd.current_dir(self.dir.path());
        match &self.role {
            Role::Sentinel { dir, master } => {
                let path = dir.path().join("sentinel.conf");
                let conf = format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor mymaster 127.0.0.1 {master} 1\n\
                     sentinel down-after-milliseconds mymaster 500\n\
                     sentinel failover-timeout mymaster 5000\n",
                    port = self.port,
                    dir = dir.path().display(),
                );
                std::fs::write(&path, conf)
                    .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
                cmd.arg(path).arg("--sentinel");
            }
            Role::Master | Role::Replica { .. } => {
                cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no"])
                    .arg("--dir")
                    .arg(self.dir.path());
                if let Role::Replica { of } = self.role {
                    cmd.args(["--replicaof", "127.0.0.1", &of.to_string()]);
                }
            }
        }
        cmd
    }

    /// Starts it again on the same port after [`RedisServer::kill`] (empty: nothing is
    /// persisted).
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let child = self
            .command_line()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}); install it (`cargo xtask test` does, or \
                     `apt-get install redis-server`)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command("PING") != "+PONG\r\n" {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `SIGKILL`, as `kill -9` would: no goodbye to its clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused server would not die of SIGKILL any sooner, but make sure.
            crate::signal::process(child.id(), libc::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `SIGSTOP`: the server keeps its connections open but answers nothing, the way an
    /// overloaded or partitioned Redis looks to its clients. [`RedisServer::resume`] ends it.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            crate::signal::process(child.id(), libc::SIGSTOP);
        }
    }

    /// `SIGCONT` after [`RedisServer::pause`].
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            crate::signal::process(child.id(), libc::SIGCONT);
        }
    }

    /// One inline command (`HGETALL key`); the raw reply, or "" when the server is not
    /// there.
    pub fn command(&self, line: &str) -> String {
        let Ok(mut sock) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
        if sock.write_all(format!("{line}\r\n").as_bytes()).is_err() {
            return String::new();
        }
        let mut buf = vec![0u8; 64 * 1024];
        let n = sock.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// `redis://127.0.0.1:port/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
