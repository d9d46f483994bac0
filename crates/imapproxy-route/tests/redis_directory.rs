//! `RedisDirectory` against a real `redis-server` started by the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imapproxy_route::{CachedDirectory, Directory, Error, RedisDirectory, Route};

/// A `redis-server` on a free loopback port, killed (by its PID) on drop.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}); install it (`cargo xtask test` does, or \
                     `apt-get install redis-server`)"
                )
            });
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.command("PING\r\n") != "+PONG\r\n" {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// One inline command; the raw reply, or "" when the server is not there.
    fn command(&self, line: &str) -> String {
        let Ok(mut sock) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        sock.write_all(line.as_bytes()).unwrap();
        let mut buf = [0u8; 512];
        let n = sock.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_looked_up_in_the_hash() {
    let server = RedisServer::start();
    assert_eq!(
        server.command("HSET imapproxy:users alice@example.org mail2\r\n"),
        ":1\r\n"
    );
    server.command("HSET imapproxy:users bob mail1,mail3\r\n");
    let dir = RedisDirectory::new(&server.url(), "imapproxy:users").unwrap();
    assert_eq!(
        dir.lookup("alice@example.org").await,
        Ok(Some(Route::Backend("mail2".into())))
    );
    assert_eq!(
        dir.lookup("bob").await,
        Ok(Some(Route::Candidates(vec![
            "mail1".into(),
            "mail3".into()
        ])))
    );
    assert_eq!(dir.lookup("nobody").await, Ok(None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_unavailable_never_a_hang() {
    let server = RedisServer::start();
    server.command("HSET imapproxy:users alice mail1\r\n");
    let dir = CachedDirectory::new(
        RedisDirectory::new(&server.url(), "imapproxy:users").unwrap(),
        Duration::from_millis(1),
        Duration::from_secs(2),
    );
    assert!(dir.lookup("alice").await.unwrap().is_some());
    drop(server);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    let got = dir.lookup("alice").await;
    assert!(
        matches!(got, Err(Error::DirectoryUnavailable(_))),
        "{got:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}
