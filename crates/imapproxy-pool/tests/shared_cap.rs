//! A per-user cap shared by two pools (as by two proxies of a fleet), against a real Dovecot:
//! the second pool's login waits for the first pool's session to end, a cached session of
//! the waiting pool is closed to make room, and a store that cannot tell leaves the local
//! cap alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imapproxy_pool::{
    Acquire, BackendTarget, Credentials, Disposition, Error, PoolSettings, Secret, SessionPool,
    SharedUserCap,
};
use imapproxy_testkit::Dovecot;

/// Places per user in memory, shared by clones; a place is given back when its guard drops.
#[derive(Debug, Clone)]
struct Places {
    cap: usize,
    taken: Arc<Mutex<HashMap<String, usize>>>,
    /// Answer `Unknown` (the store is down).
    down: bool,
}

struct Place {
    user: String,
    taken: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Place {
    fn drop(&mut self) {
        *self.taken.lock().unwrap().get_mut(&self.user).unwrap() -= 1;
    }
}

#[async_trait::async_trait]
impl SharedUserCap for Places {
    async fn acquire(&self, user: &str) -> Acquire {
        if self.down {
            return Acquire::Unknown;
        }
        let mut taken = self.taken.lock().unwrap();
        let n = taken.entry(user.to_owned()).or_default();
        if *n >= self.cap {
            return Acquire::Full;
        }
        *n += 1;
        Acquire::Granted(Box::new(Place {
            user: user.to_owned(),
            taken: Arc::clone(&self.taken),
        }))
    }
}

fn pool(dovecot: &Dovecot, places: &Places) -> SessionPool {
    let pool = SessionPool::new(PoolSettings {
        warm: 0,
        wait_timeout: Duration::from_secs(2),
        ..PoolSettings::default()
    })
    .unwrap();
    pool.add_backend(
        "mail",
        BackendTarget::plain(dovecot.imap_addr().to_string()),
        100,
    );
    pool.set_shared_cap(Arc::new(places.clone()));
    pool
}

fn creds(dovecot: &Dovecot, i: usize) -> Credentials {
    let (user, pass) = dovecot.user(i);
    Credentials {
        username: user,
        password: Secret::new(pass.into_bytes()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_hold_one_users_sessions_under_the_shared_cap() {
    let dovecot = Dovecot::shared();
    let places = Places {
        cap: 1,
        taken: Arc::default(),
        down: false,
    };
    let (one, two) = (pool(dovecot, &places), pool(dovecot, &places));
    let who = creds(dovecot, 1);

    // One's session holds the user's only place: two's login waits, then times out.
    let held = one.checkout("mail", &who, &[]).await.unwrap();
    let started = Instant::now();
    let refused = two.checkout("mail", &who, &[]).await;
    assert!(matches!(refused, Err(Error::PoolTimeout)), "{refused:?}");
    assert!(started.elapsed() >= Duration::from_secs(2));

    // Once one's session is checked in and closed, two gets the place while waiting.
    let waiting = tokio::spawn({
        let two = two.clone();
        let who = who.clone();
        async move { two.checkout("mail", &who, &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    one.checkin(held, Disposition::Close).await;
    let session = waiting.await.unwrap().unwrap();
    // Cached by two, it still holds the place ...
    two.checkin(session, Disposition::Reuse).await;
    assert_eq!(two.status().idle_sessions, 1);
    assert_eq!(
        places.taken.lock().unwrap()[&who.username.to_lowercase()],
        1
    );
    // ... until two itself needs a place for the same user under other credentials: its
    // own cached session is closed to make room.
    let other = Credentials {
        username: who.username.clone(),
        password: Secret::new(b"wrong".to_vec()),
    };
    let r = two.checkout("mail", &other, &[]).await;
    assert!(r.is_err(), "wrong password accepted");
    assert_eq!(two.status().idle_sessions, 0);
    assert_eq!(
        places.taken.lock().unwrap()[&who.username.to_lowercase()],
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_tell_leaves_the_local_cap_alone() {
    let dovecot = Dovecot::shared();
    let places = Places {
        cap: 0,
        taken: Arc::default(),
        down: true,
    };
    let pool = pool(dovecot, &places);
    let who = creds(dovecot, 2);
    let a = pool.checkout("mail", &who, &[]).await.unwrap();
    let b = pool.checkout("mail", &who, &[]).await.unwrap();
    pool.checkin(a, Disposition::Close).await;
    pool.checkin(b, Disposition::Close).await;
}
