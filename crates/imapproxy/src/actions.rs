//! What an operator's action does to this proxy's sessions, whether it was asked for on this
//! proxy's admin endpoint or announced by another proxy of the fleet.

use imapproxy_route::{Error, Health};
use imapproxy_session::Proxy;

/// `user` now lives elsewhere (its override is already set): drops the user's cached backend
/// sessions, then moves the live ones under their clients (with `kick`, ends them instead, so
/// that the clients reconnect). Returns (kicked, moving, cached sessions closed).
pub fn move_sessions(proxy: &Proxy, user: &str, kick: bool) -> (usize, usize, usize) {
    // Forget first: no cached session of the old backend may greet a reconnect or a moving
    // session.
    let forgotten = proxy.pool().forget_user(user);
    if kick {
        (proxy.sessions().kick_user(user), 0, forgotten)
    } else {
        (0, proxy.sessions().migrate_user(user), forgotten)
    }
}

/// Drains `backend` (with `migrate`, its sessions move to others at their next command
/// boundary, at once when in IDLE; without, they run on) or puts it back up. Returns its
/// previous health and the number of sessions moving.
pub fn set_drain(
    proxy: &Proxy,
    backend: &str,
    draining: bool,
    migrate: bool,
) -> Result<(Health, usize), Error> {
    let health = if draining {
        Health::Draining
    } else {
        Health::Up
    };
    let previous = proxy.upstreams().registry.set_health(backend, health)?;
    let migrating = if draining && migrate {
        proxy.sessions().migrate_backend(backend)
    } else {
        0
    };
    Ok((previous, migrating))
}
