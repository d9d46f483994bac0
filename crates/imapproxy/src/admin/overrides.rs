//! User moves: the override table, its file, and moving a user's live sessions.

use std::path::{Path, PathBuf};

use imapproxy_route::BackendId;
use imapproxy_session::Overrides;
use tracing::info;

use super::AdminState;
use super::http::Response;

/// Moves `user` to `backend`: records the override (saved when a file is configured), drops
/// the user's cached backend sessions so that no login is handed the old backend, and moves
/// the user's live sessions there under their clients (with `kick`, ends them instead, so
/// that the clients reconnect).
pub(super) async fn move_user(
    state: &AdminState,
    user: &str,
    backend: &str,
    kick: bool,
) -> Response {
    let registry = &state.proxy.upstreams().registry;
    let Some((b, _)) = registry.get(backend) else {
        return Response::error("404 Not Found", "no such backend");
    };
    let id: BackendId = b.id.clone();
    let previous = state.proxy.overrides().set(user, id.clone());
    if let Err(e) = save(state) {
        // Not kept in memory either: what the file says is what a restart will do.
        match previous {
            Some(p) => state.proxy.overrides().set(user, p),
            None => state.proxy.overrides().remove(user),
        };
        return Response::error("500 Internal Server Error", &e);
    }
    let (kicked, migrating, forgotten) = crate::actions::move_sessions(&state.proxy, user, kick);
    info!(%user, backend = %id, kicked, migrating, forgotten, "user moved by admin");
    let mut answer = serde_json::json!({
        "user": user.to_lowercase(),
        "backend": id.as_str(),
        "previous": previous.map(|p| p.to_string()),
        "kicked": kicked,
        "migrating": migrating,
        "cached_sessions_closed": forgotten,
    });
    // Every other proxy does the same with its own sessions.
    if let Some(fleet) = &state.fleet {
        let change = crate::fleet::Change::Move {
            user: user.to_lowercase(),
            backend: id.to_string(),
            kick,
        };
        answer["fleet"] = fleet.change(change).await.json();
    }
    Response::json("200 OK", answer)
}

/// Writes the overrides to `[admin].overrides_file`, if configured: a temporary file renamed
/// over the old one, so a crash leaves either version, never half of one.
pub(super) fn save(state: &AdminState) -> Result<(), String> {
    match &state.overrides_file {
        Some(path) => save_overrides(path, state.proxy.overrides()),
        None => Ok(()),
    }
}

/// Writes `overrides` to `path` (a temporary file renamed over the old one).
pub fn save_overrides(path: &Path, overrides: &Overrides) -> Result<(), String> {
    let users: serde_json::Map<String, serde_json::Value> = overrides
        .all()
        .into_iter()
        .map(|(u, b)| (u, serde_json::Value::String(b.to_string())))
        .collect();
    let text = format!("{}\n", serde_json::json!({ "users": users }));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot save the overrides to {}: {e}", path.display()))
}

/// Reads the overrides saved in `path` into `overrides`; a missing file is an empty set.
/// Returns how many were read.
pub fn load_overrides(path: &Path, overrides: &Overrides) -> Result<usize, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("invalid overrides file {}: {e}", path.display()))?;
    let users = value
        .get("users")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| {
            format!(
                "invalid overrides file {}: no \"users\" object",
                path.display()
            )
        })?;
    let mut entries = Vec::with_capacity(users.len());
    for (user, backend) in users {
        let backend = backend.as_str().ok_or_else(|| {
            format!(
                "invalid overrides file {}: {user:?} is not mapped to a backend name",
                path.display()
            )
        })?;
        entries.push((user.clone(), BackendId::new(backend)));
    }
    let n = entries.len();
    overrides.replace_all(entries);
    Ok(n)
}
