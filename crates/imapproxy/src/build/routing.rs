//! `[routing]`: the selector named by `strategy` and the user directory.

use std::sync::Arc;

use imapproxy_route::{
    BackendId, CachedDirectory, Directory, HttpAuthDirectory, LeastConnections, PowerOfTwoChoices,
    RedisDirectory, Registry, RendezvousHash, RoundRobin, Selector, StaticMap, WeightedRoundRobin,
};

/// The `[routing] directory` names, as accepted in the file.
pub(super) const DIRECTORIES: [&str; 3] = ["static", "http", "redis"];

/// Builds the user directory named by `[routing] directory` (checking URLs and the map),
/// remote ones wrapped in a [`CachedDirectory`] with `directory_ttl` and `directory_timeout`.
pub(super) fn directory_for(
    routing: &crate::config::RoutingConfig,
    registry: &Registry,
) -> Result<Option<Arc<dyn Directory>>, String> {
    let kind = match routing.directory.as_deref() {
        Some(kind) => kind,
        None if routing.map.is_some() => "static",
        None => return Ok(None),
    };
    let cached = |inner: Arc<dyn Directory>| {
        CachedDirectory::new(inner, routing.directory_ttl, routing.directory_timeout)
    };
    match kind {
        "static" => {
            let path = routing
                .map
                .as_ref()
                .ok_or("[routing] directory = \"static\" needs map = \"<file>\"")?;
            let map = StaticMap::from_path(path)
                .map_err(|e| format!("[routing] map {}: {e}", path.display()))?;
            map.validate(registry).map_err(|e| {
                format!(
                    "[routing] map {}: {e} (not among [[backends]])",
                    path.display()
                )
            })?;
            // In memory: the TTL cache and timeout matter for remote directories, not here.
            Ok(Some(Arc::new(map)))
        }
        "http" => {
            let url = routing
                .http_url
                .as_deref()
                .ok_or("[routing] directory = \"http\" needs http_url = \"http://...\"")?;
            let http = HttpAuthDirectory::new(url)
                .map_err(|e| format!("[routing] http_url: {e}"))?
                .with_backends(registry.iter().map(|(b, _)| b));
            // The service authenticates: cache per user and password, so that a wrong
            // password always gets the service's own refusal.
            Ok(Some(Arc::new(cached(Arc::new(http)).keyed_by_password())))
        }
        "redis" => {
            let url = routing
                .redis_url
                .as_ref()
                .map(|url| url.expose())
                .ok_or("[routing] directory = \"redis\" needs redis_url = \"redis://...\"")?;
            let redis = RedisDirectory::new(url, routing.redis_hash.clone())
                .map_err(|e| format!("[routing] redis_url/redis_hash: {e}"))?
                .with_timeout(routing.directory_timeout);
            Ok(Some(Arc::new(cached(Arc::new(redis)))))
        }
        other => Err(format!(
            "[routing] directory {other:?} is unknown; use one of {}",
            DIRECTORIES.map(|d| format!("{d:?}")).join(", ")
        )),
    }
}

/// The `[routing] strategy` names, as accepted in the file.
pub(super) const STRATEGIES: [&str; 6] = [
    "round-robin",
    "least-connections",
    "weighted",
    "p2c",
    "hash",
    "static",
];

/// `strategy = "static"`: only the directory decides (a mailbox lives on the server the map
/// names, and nowhere else); a user it does not know, or whose server is down, gets
/// `NO [UNAVAILABLE]` instead of landing on a server without the mailbox.
struct DirectoryOnly;

impl Selector for DirectoryOnly {
    fn select(&self, _registry: &Registry, _req: &imapproxy_route::Request<'_>) -> Vec<BackendId> {
        Vec::new()
    }
}

/// Builds the selector named by `[routing] strategy`.
pub(super) fn selector_for(strategy: &str) -> Result<Arc<dyn Selector>, String> {
    Ok(match strategy {
        "round-robin" => Arc::new(RoundRobin::new()),
        "least-connections" => Arc::new(LeastConnections::new()),
        "weighted" => Arc::new(WeightedRoundRobin::new()),
        "p2c" => Arc::new(PowerOfTwoChoices::new()),
        "hash" => Arc::new(RendezvousHash::new()),
        "static" => Arc::new(DirectoryOnly),
        other => {
            let names: Vec<String> = STRATEGIES.iter().map(|s| format!("{s:?}")).collect();
            return Err(format!(
                "[routing] strategy {other:?} is unknown; use one of {}",
                names.join(", ")
            ));
        }
    })
}
