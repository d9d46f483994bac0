//! How the pool behaves: plain settings the binary fills from `[pool]`.

use std::time::Duration;

/// Pool behaviour. The binary fills it from `[pool]`.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// Keep authenticated sessions after the client logs out, for the next login of the same
    /// user with the same password.
    pub reuse: bool,
    /// Warm (connected, greeted, not logged in) connections kept per backend, in the room
    /// its `max_connections` leaves beside the sessions lent out and cached.
    pub warm: usize,
    /// Replace warm connections older than this (servers drop idle unauthenticated ones).
    pub warm_max_age: Duration,
    /// Close cached sessions idle for longer than this.
    pub idle_timeout: Duration,
    /// Backend sessions per user, active and cached together. More clients wait in a queue.
    pub max_per_user: usize,
    /// How long a client waits in that queue.
    pub wait_timeout: Duration,
    /// A cached session idle for at least this long is checked with a `NOOP` round trip
    /// (bounded by `liveness_timeout`) before it is lent; a younger one only by looking at its
    /// socket (EOF, reset or unsolicited data are seen at once, a frozen server is not).
    ///
    /// Default 2 s: a client that logs in per request (webmail, a worker loop) is usually
    /// back within a second and skips the round trip, while anything idle longer pays one
    /// `NOOP`, well under a millisecond on a LAN, instead of being handed a session on a
    /// server that may have stopped answering since. This bounds the window in which a frozen
    /// backend's session is lent unchecked to 2 s after its last use.
    pub noop_after: Duration,
    /// Bound on the round trips the pool makes on its own to judge a session: the `NOOP`
    /// before lending a cached one (see `noop_after`) and the `UNSELECT` at check-in. A healthy
    /// server answers both in well under a millisecond; one that does not answer within this
    /// is frozen or overloaded. Its session is closed, and a checkout falls through to a fresh
    /// login (bounded by the target's `greeting_timeout` and `login_timeout`) instead of
    /// failing the client. Default 2 s.
    pub liveness_timeout: Duration,
    /// The longest a backend session is served from the cache, counted from its backend
    /// login, however busy it is: older sessions are closed at check-in, at checkout (a fresh
    /// login takes their place) and by [`SessionPool::expire`](crate::SessionPool::expire). A
    /// backend checks the password only at login, so this bounds how long a changed password
    /// or a disabled account keeps working through the cache; a fresh login costs the backend
    /// a few milliseconds.
    pub max_age: Duration,
}

impl PoolSettings {
    /// Default [`PoolSettings::noop_after`].
    pub const DEFAULT_NOOP_AFTER: Duration = Duration::from_secs(2);
    /// Default [`PoolSettings::liveness_timeout`].
    pub const DEFAULT_LIVENESS_TIMEOUT: Duration = Duration::from_secs(2);
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            reuse: true,
            warm: 2,
            warm_max_age: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_per_user: 50,
            wait_timeout: Duration::from_secs(10),
            noop_after: Self::DEFAULT_NOOP_AFTER,
            liveness_timeout: Self::DEFAULT_LIVENESS_TIMEOUT,
            max_age: Duration::from_secs(300),
        }
    }
}
