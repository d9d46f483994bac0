//! Fleet mode end to end: two `imapproxy` processes sharing one real `redis-server`, in front
//! of two Dovecots over one mail store. A move, a drain or a kick made through one proxy
//! reaches the sessions of the other; a password spray spread over both meets one limit; and
//! `kill -9` of Redis leaves logins working, with the state converging once it is back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Binary, loopback, runtime, shared_backends, wait_until};
use imapproxy_testkit::{RedisServer, TestClient};

/// One proxy of the fleet: its plain listener and admin endpoint.
struct Node {
    name: &'static str,
    _binary: Binary,
    plain: SocketAddr,
    admin: SocketAddr,
}

/// Starts proxy `name` on the fleet of `redis` (`None`: a proxy on its own). `limits` is the
/// body of its `[limits]` section.
fn node(name: &'static str, redis: Option<&RedisServer>, limits: &str) -> Node {
    let fleet = redis
        .map(|r| {
            format!(
                "[fleet]\nredis_url = \"{}\"\nproxy_id = \"{name}\"\npublish_interval = \"200ms\"\n",
                r.url()
            )
        })
        .unwrap_or_default();
    node_with(name, &fleet, limits, "")
}

/// Starts proxy `name` with this `[fleet]` section (and `[limits]` and `[pool]` bodies).
fn node_with(name: &'static str, fleet: &str, limits: &str, pool: &str) -> Node {
    let b = shared_backends();
    let [plain, admin] = [(); 2].map(|()| loopback());
    let config = format!(
        r#"
[[listeners]]
addr = "{plain}"
tls = "none"
allow_plaintext_auth = true

[[backends]]
name = "mail1"
addr = "{a}"

[[backends]]
name = "mail2"
addr = "{b}"

[pool]
reuse = false
{pool}

[limits]
{limits}

[admin]
addr = "{admin}"

{fleet}"#,
        a = b.mail1.imap_addr(),
        b = b.mail2.imap_addr(),
    );
    Node {
        name,
        _binary: Binary::start(&config, &[plain, admin]),
        plain,
        admin,
    }
}

impl Node {
    fn admin(&self, method: &str, path: &str, form: Option<&str>) -> (u16, serde_json::Value) {
        let form: Vec<&str> = form.map(|f| vec!["-d", f]).unwrap_or_default();
        let (code, body) = common::admin_request(self.admin, method, path, None, &form);
        let value = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
        (code, value)
    }

    fn get(&self, path: &str) -> serde_json::Value {
        let (code, v) = self.admin("GET", path, None);
        assert_eq!(code, 200, "{}: {path}: {v}", self.name);
        v
    }

    fn metrics(&self) -> String {
        common::admin_request(self.admin, "GET", "/metrics", None, &[]).1
    }

    fn fleet_connected(&self) -> bool {
        self.metrics()
            .lines()
            .any(|l| l.trim() == "imapproxy_fleet_connected 1")
    }

    /// `user`'s sessions as this proxy lists them: (proxy, backend) pairs.
    fn sessions_of(&self, user: &str) -> Vec<(String, String)> {
        let mut list: Vec<(String, String)> = self.get("/sessions")["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["user"] == user)
            .map(|s| {
                (
                    s["proxy"].as_str().unwrap_or("").to_owned(),
                    s["backend"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        list.sort();
        list
    }

    fn health_of(&self, backend: &str) -> String {
        self.get("/backends")["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == backend)
            .map(|b| b["health"].as_str().unwrap().to_owned())
            .unwrap()
    }
}

async fn logged_in(node: &Node, user: &str, pass: &str) -> TestClient {
    let mut c = TestClient::connect(node.plain).await.unwrap();
    let r = c.login(user, pass).await.unwrap();
    assert!(r.tagged_ok(), "{}: {}", node.name, r.text());
    c
}

fn other(backend: &str) -> &'static str {
    if backend == "mail1" { "mail2" } else { "mail1" }
}

#[test]
fn moves_drains_kicks_and_sessions_reach_every_proxy() {
    let redis = RedisServer::start();
    let a = node("proxy-a", Some(&redis), "");
    let b = node("proxy-b", Some(&redis), "");
    assert!(a.fleet_connected() && b.fleet_connected());
    let rt = runtime();
    let (user, pass) = shared_backends().mail1.user(2);

    // A session on B, listed by A with B's name on it.
    let mut on_b = rt.block_on(logged_in(&b, &user, &pass));
    let from = b.sessions_of(&user)[0].1.clone();
    let to = other(&from);
    assert!(
        wait_until(Duration::from_secs(3), || a.sessions_of(&user)
            == vec![("proxy-b".into(), from.clone())]),
        "A lists {:?}",
        a.sessions_of(&user)
    );

    // A move made through A: B moves its live session under the client, and B's next
    // login of the user lands on the new backend.
    let target = shared_backends().get(to);
    let before = target.logins(&user);
    let (code, v) = a.admin(
        "POST",
        &format!("/users/{user}/move"),
        Some(&format!("backend={to}")),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["fleet"]["shared"], true, "{v}");
    assert_eq!(v["fleet"]["proxies"], 2, "{v}");
    assert!(
        wait_until(Duration::from_secs(5), || b.sessions_of(&user)
            == vec![("proxy-b".into(), to.to_owned())]),
        "B still has {:?}",
        b.sessions_of(&user)
    );
    rt.block_on(async {
        let r = on_b.cmd("n1", "NOOP").await.unwrap();
        assert!(r.tagged_ok(), "{}", r.text());
    });
    assert_eq!(b.get("/sessions")["overrides"][&user], to);
    let mut second = rt.block_on(logged_in(&b, &user, &pass));
    assert_eq!(
        b.sessions_of(&user),
        vec![("proxy-b".into(), to.to_owned()); 2]
    );
    assert!(
        target.wait_for_log(
            &format!("imap-login: Info: Login: user=<{user}>,"),
            before + 2,
            Duration::from_secs(5)
        ) >= before + 2,
        "the moved session and the new login both logged in on {to}"
    );

    // A kick through A ends the user's sessions on B.
    let (code, v) = a.admin("POST", &format!("/users/{user}/kick"), None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["kicked"], 0, "none on A itself: {v}");
    rt.block_on(async {
        for c in [&mut on_b, &mut second] {
            let line = String::from_utf8(c.read_line().await.unwrap()).unwrap();
            assert!(line.starts_with("* BYE [UNAVAILABLE]"), "{line:?}");
            assert!(c.expect_eof(Duration::from_secs(5)).await);
        }
    });

    // Removing the override through B reaches A.
    let (code, v) = b.admin("DELETE", &format!("/users/{user}/move"), None);
    assert_eq!(code, 200, "{v}");
    assert!(wait_until(Duration::from_secs(3), || {
        a.get("/sessions")["overrides"].get(&user).is_none()
    }));

    // A drain through A reaches B, and so does the undrain.
    let (code, v) = a.admin("POST", "/backends/mail2/drain", None);
    assert_eq!(code, 200, "{v}");
    assert!(
        wait_until(Duration::from_secs(3), || b.health_of("mail2")
            == "draining"),
        "B: mail2 is {}",
        b.health_of("mail2")
    );
    // A proxy that joins later finds the drain in Redis.
    let c = node("proxy-c", Some(&redis), "");
    assert!(
        wait_until(Duration::from_secs(3), || c.health_of("mail2")
            == "draining"),
        "C: mail2 is {}",
        c.health_of("mail2")
    );
    let (code, v) = a.admin("POST", "/backends/mail2/undrain", None);
    assert_eq!(code, 200, "{v}");
    for n in [&b, &c] {
        assert!(
            wait_until(Duration::from_secs(3), || n.health_of("mail2") == "up"),
            "{}: mail2 is {}",
            n.name,
            n.health_of("mail2")
        );
    }
}

/// Sends one LOGIN to `node`; whether the proxy answered it as a failed login (`NO`), or the
/// address is blocked (`BYE [LIMIT]`).
async fn guess(node: &Node, user: &str) -> &'static str {
    let mut c = TestClient::connect(node.plain).await.unwrap();
    c.set_timeout(Duration::from_secs(15));
    let r = c.login(user, "Spring2026!").await;
    match r {
        Ok(r) if r.text().contains("* BYE [LIMIT]") => "blocked",
        Ok(r) if r.status_line().contains(" NO ") => "refused",
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => "blocked",
        other => panic!("{}: unexpected answer to a guess: {other:?}", node.name),
    }
}

/// The guesses of this spray that reached a Dovecot (its log names every unknown user).
fn reached(prefix: &str) -> usize {
    let b = shared_backends();
    [&b.mail1, &b.mail2]
        .iter()
        .map(|d| {
            d.log()
                .lines()
                .filter(|l| l.contains(prefix) && l.contains("unknown user"))
                .count()
        })
        .sum()
}

#[test]
fn a_password_spray_over_both_proxies_meets_one_limit() {
    let redis = RedisServer::start();
    // Loopback is not trusted here, so it is counted; short delays keep the test quick.
    let limits = "trusted_networks = []\nmax_failures_per_ip = 20\n\
                  failure_delay = \"5ms\"\nmax_failure_delay = \"10ms\"";
    let a = node("spray-a", Some(&redis), limits);
    let b = node("spray-b", Some(&redis), limits);
    let rt = runtime();
    // 200 users, one password, alternating between the proxies, two at a time on each.
    let answers: Vec<&str> = rt.block_on(async {
        let mut answers = Vec::new();
        for round in 0..50 {
            let [u0, u1, u2, u3] = [0, 1, 2, 3].map(|i| format!("sprayuser{}", round * 4 + i));
            let (w, x, y, z) = tokio::join!(
                guess(&a, &u0),
                guess(&b, &u1),
                guess(&a, &u2),
                guess(&b, &u3),
            );
            answers.extend([w, x, y, z]);
        }
        answers
    });
    let refused = answers.iter().filter(|a| **a == "refused").count();
    let seen = wait_until(Duration::from_secs(3), || reached("sprayuser") >= refused);
    let reached = reached("sprayuser");
    println!(
        "spray of 200 users over two proxies: {refused} answered as failures, {reached} reached \
         Dovecot, {} blocked",
        answers.len() - refused
    );
    assert!(seen, "{refused} refused but {reached} in Dovecot's logs");
    // One proxy alone lets 20 through; two without a shared count would let about 40.
    assert!(
        (20..=24).contains(&reached),
        "{reached} guesses reached Dovecot"
    );
    // Both proxies now refuse the address at once.
    rt.block_on(async {
        assert_eq!(guess(&a, "sprayuser-late-a").await, "blocked");
        assert_eq!(guess(&b, "sprayuser-late-b").await, "blocked");
    });
}

#[test]
fn with_redis_killed_logins_go_on_and_the_state_converges_after_its_restart() {
    let mut redis = RedisServer::start();
    let a = node("outage-a", Some(&redis), "");
    let b = node("outage-b", Some(&redis), "");
    let rt = runtime();
    let (user, pass) = shared_backends().mail1.user(3);
    let (moved, moved_pass) = shared_backends().mail1.user(4);
    // A move shared before the outage: Redis, restarted without persistence, comes back
    // empty, and the proxies write it back.
    let (earlier, _) = shared_backends().mail1.user(9);
    let (code, v) = b.admin(
        "POST",
        &format!("/users/{earlier}/move"),
        Some("backend=mail2"),
    );
    assert_eq!((code, &v["fleet"]["shared"]), (200, &true.into()), "{v}");
    assert!(wait_until(
        Duration::from_secs(3),
        || a.get("/sessions")["overrides"][&earlier] == "mail2"
    ));

    redis.kill();
    assert!(
        wait_until(Duration::from_secs(5), || !a.fleet_connected()
            && !b.fleet_connected()),
        "imapproxy_fleet_connected stays 1 with Redis gone"
    );
    // Logins keep succeeding on both, promptly (none waits on Redis).
    let mut slowest = Duration::ZERO;
    rt.block_on(async {
        for node in [&a, &b, &a, &b, &a, &b] {
            let started = Instant::now();
            let mut c = logged_in(node, &user, &pass).await;
            slowest = slowest.max(started.elapsed());
            assert!(c.logout().await.unwrap().tagged_ok());
        }
    });
    println!("slowest login with Redis down: {slowest:?}");
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");

    // A move made through A while Redis is down applies on A at once and is kept.
    let from = {
        let mut c = rt.block_on(logged_in(&b, &moved, &moved_pass));
        let from = b.sessions_of(&moved)[0].1.clone();
        rt.block_on(async { assert!(c.logout().await.unwrap().tagged_ok()) });
        from
    };
    let to = other(&from);
    let (code, v) = a.admin(
        "POST",
        &format!("/users/{moved}/move"),
        Some(&format!("backend={to}")),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["fleet"]["pending"], true, "{v}");
    assert_eq!(a.get("/sessions")["overrides"][&moved], to);
    // A kick is of the moment: not kept for later.
    let (code, v) = a.admin("POST", &format!("/users/{user}/kick"), None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (&v["fleet"]["shared"], &v["fleet"]["pending"]),
        (&false.into(), &false.into()),
        "{v}"
    );
    assert!(b.get("/sessions")["overrides"].get(&moved).is_none());

    // Redis returns, empty: A writes its move again, B reads it, both report the link.
    redis.restart();
    assert!(
        wait_until(Duration::from_secs(10), || a.fleet_connected()
            && b.fleet_connected()),
        "not reconnected"
    );
    assert!(
        wait_until(Duration::from_secs(5), || b.get("/sessions")["overrides"]
            [&moved]
            == to),
        "B never learnt the move: {}",
        b.get("/sessions")["overrides"]
    );
    assert!(
        redis
            .command(&format!("HGET imapproxy:overrides {moved}"))
            .contains(to)
    );
    let mut c = rt.block_on(logged_in(&b, &moved, &moved_pass));
    assert_eq!(
        b.sessions_of(&moved),
        vec![("outage-b".into(), to.to_owned())]
    );
    rt.block_on(async { assert!(c.logout().await.unwrap().tagged_ok()) });
    // The move made before the outage survived Redis's loss of its data.
    assert!(
        redis
            .command(&format!("HGET imapproxy:overrides {earlier}"))
            .contains("mail2")
    );
    for n in [&a, &b] {
        assert_eq!(
            n.get("/sessions")["overrides"][&earlier],
            "mail2",
            "{}",
            n.name
        );
    }
    // The registry is back too: A lists B's sessions again.
    let mut d = rt.block_on(logged_in(&b, &user, &pass));
    assert!(
        wait_until(Duration::from_secs(3), || a
            .sessions_of(&user)
            .iter()
            .any(|(p, _)| p == "outage-b")),
        "A does not list B's session"
    );
    rt.block_on(async { assert!(d.logout().await.unwrap().tagged_ok()) });
}

#[test]
fn with_redis_hanging_no_login_waits_longer_than_the_fleet_timeout() {
    let redis = RedisServer::start();
    // Loopback counted, so that every login asks Redis for the fleet's failure counts.
    let limits = "trusted_networks = []";
    let a = node("hang-a", Some(&redis), limits);
    let b = node("hang-b", Some(&redis), limits);
    let rt = runtime();
    let (user, pass) = shared_backends().mail1.user(5);
    let (moved, _) = shared_backends().mail1.user(6);

    // Stopped, not gone: connections stay open and nothing answers.
    redis.pause();
    let mut slowest = Duration::ZERO;
    rt.block_on(async {
        for node in [&a, &b, &a, &b, &a, &b, &a, &b] {
            let started = Instant::now();
            let mut c = logged_in(node, &user, &pass).await;
            slowest = slowest.max(started.elapsed());
            assert!(c.logout().await.unwrap().tagged_ok());
        }
        // A wrong password is answered too (the failure is counted locally).
        let mut c = TestClient::connect(a.plain).await.unwrap();
        let r = c.login(&user, "wrong").await.unwrap();
        assert!(r.status_line().contains(" NO "), "{}", r.text());
    });
    println!("slowest login with Redis hanging: {slowest:?}");
    // [fleet] timeout is 250 ms: a login waits for it once at most, then the link is known
    // to be down and nothing waits.
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    assert!(
        wait_until(Duration::from_secs(5), || !a.fleet_connected()
            && !b.fleet_connected()),
        "the hanging link is not reported"
    );
    // The admin API does not hang either; the move is kept for later.
    let started = Instant::now();
    let (code, v) = a.admin(
        "POST",
        &format!("/users/{moved}/move"),
        Some("backend=mail2"),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["fleet"]["pending"], true, "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    redis.resume();
    assert!(
        wait_until(Duration::from_secs(10), || b.get("/sessions")["overrides"]
            [&moved]
            == "mail2"),
        "B never learnt the move made while Redis hung"
    );
    assert!(a.fleet_connected() && b.fleet_connected());
}

/// Waits until `server` answers `command` with a reply containing `needle`.
fn redis_says(server: &RedisServer, command: &str, needle: &str, within: Duration) -> bool {
    wait_until(within, || server.command(command).contains(needle))
}

#[test]
fn through_sentinel_the_fleet_follows_a_failover() {
    let mut master = RedisServer::start();
    let replica = RedisServer::start_replica_of(&master);
    assert!(
        redis_says(
            &replica,
            "INFO replication",
            "master_link_status:up",
            Duration::from_secs(10)
        ),
        "the replica never synchronised"
    );
    let sentinel = RedisServer::start_sentinel(&master);
    assert!(
        redis_says(
            &sentinel,
            "SENTINEL replicas mymaster",
            &replica.port().to_string(),
            Duration::from_secs(15)
        ),
        "the sentinel never saw the replica"
    );
    let fleet = |name: &str| {
        format!(
            "[fleet]\nsentinels = [\"redis://127.0.0.1:{}/\"]\nsentinel_master = \"mymaster\"\n\
             proxy_id = \"{name}\"\n",
            sentinel.port()
        )
    };
    let a = node_with("sentinel-a", &fleet("sentinel-a"), "", "");
    let b = node_with("sentinel-b", &fleet("sentinel-b"), "", "");
    assert!(a.fleet_connected() && b.fleet_connected());
    let (user, _) = shared_backends().mail1.user(7);
    let (code, v) = a.admin(
        "POST",
        &format!("/users/{user}/move"),
        Some("backend=mail1"),
    );
    assert_eq!((code, &v["fleet"]["shared"]), (200, &true.into()), "{v}");
    assert!(wait_until(
        Duration::from_secs(3),
        || b.get("/sessions")["overrides"][&user] == "mail1"
    ));

    // The master dies; the sentinel promotes the replica; both proxies find it.
    master.kill();
    assert!(
        redis_says(
            &sentinel,
            "SENTINEL get-master-addr-by-name mymaster",
            &replica.port().to_string(),
            Duration::from_secs(20)
        ),
        "no failover"
    );
    assert!(
        wait_until(Duration::from_secs(15), || a.fleet_connected()
            && b.fleet_connected()),
        "the proxies did not follow the failover"
    );
    // The replica had the override; a change made now reaches the other proxy.
    assert!(
        replica
            .command(&format!("HGET imapproxy:overrides {user}"))
            .contains("mail1")
    );
    let (code, v) = a.admin(
        "POST",
        &format!("/users/{user}/move"),
        Some("backend=mail2"),
    );
    assert_eq!(code, 200, "{v}");
    assert!(
        wait_until(Duration::from_secs(5), || b.get("/sessions")["overrides"]
            [&user]
            == "mail2"),
        "B: {}",
        b.get("/sessions")["overrides"]
    );
}

#[test]
fn a_users_backend_sessions_are_capped_across_the_fleet() {
    let redis = RedisServer::start();
    let fleet = |name: &str| {
        format!(
            "[fleet]\nredis_url = \"{}\"\nproxy_id = \"{name}\"\n",
            redis.url()
        )
    };
    let pool = "max_per_user_fleet = 2\nwait_timeout = \"1s\"";
    let a = node_with("cap-a", &fleet("cap-a"), "", pool);
    let b = node_with("cap-b", &fleet("cap-b"), "", pool);
    let rt = runtime();
    let (user, pass) = shared_backends().mail1.user(8);
    let places = format!("ZCARD imapproxy:places:{user}");

    let (mut first, mut second) = rt.block_on(async {
        (
            logged_in(&a, &user, &pass).await,
            logged_in(&a, &user, &pass).await,
        )
    });
    assert_eq!(redis.command(&places), ":2\r\n");
    // The fleet's two places are taken: a third login, on B, waits and is refused.
    rt.block_on(async {
        let mut c = TestClient::connect(b.plain).await.unwrap();
        let r = c.login(&user, &pass).await.unwrap();
        assert!(!r.tagged_ok(), "{}", r.text());
        assert!(r.status_line().contains(" NO "), "{}", r.text());
    });
    // One of A's sessions ends: B's login gets its place, even while waiting.
    let third = rt.block_on(async {
        let waiting = async {
            let mut c = TestClient::connect(b.plain).await.unwrap();
            let r = c.login(&user, &pass).await.unwrap();
            (c, r)
        };
        let ending = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(first.logout().await.unwrap().tagged_ok());
        };
        let ((c, r), ()) = tokio::join!(waiting, ending);
        assert!(r.tagged_ok(), "{}", r.text());
        c
    });
    assert_eq!(b.sessions_of(&user).len(), 1);
    assert_eq!(redis.command(&places), ":2\r\n");
    rt.block_on(async {
        assert!(second.logout().await.unwrap().tagged_ok());
        let mut third = third;
        assert!(third.logout().await.unwrap().tagged_ok());
    });
    assert!(wait_until(Duration::from_secs(3), || redis
        .command(&places)
        == ":0\r\n"));
}
