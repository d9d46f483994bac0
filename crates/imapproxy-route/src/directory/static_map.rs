//! [`StaticMap`]: a user → backend table read from a text file.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use crate::directory::{Directory, Route};
use crate::{BackendId, Error, Registry};

/// A user → backend table, one entry a line:
///
/// ```text
/// # comments start with '#', anywhere on a line after whitespace
/// alice@example.org   mail2          # this user
/// @example.net        mail3          # every user of this domain
/// bob@example.org     mail1 mail2    # candidates, preferred first
/// *                   mail1          # everyone else (without it: the selector decides)
/// ```
///
/// An exact user wins over its domain, which wins over `*`. Keys compare case-insensitively
/// (they are lower-cased on load; the caller lower-cases logins). A key given twice is an
/// error, so a typo cannot silently shadow an entry.
///
/// Immutable once built; to reload, build a new one with [`StaticMap::from_path`] and swap it
/// in (e.g. behind an `ArcSwap`); a file that fails to parse leaves the old map in place.
/// Backend names are not checked on load; [`StaticMap::validate`] checks them against a
/// registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticMap {
    users: HashMap<String, Route>,
    domains: HashMap<String, Route>,
    default: Option<Route>,
}

impl StaticMap {
    /// Reads and parses a map file.
    ///
    /// Synchronous (a local file, read at start and on reload); call it from
    /// `spawn_blocking` if a reload must not stall a runtime thread.
    ///
    /// # Errors
    /// [`Error::MapFile`] when the file cannot be read, [`Error::InvalidMap`] when a line is
    /// malformed.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::MapFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        text.parse()
    }

    /// The route for `user`: its own entry, else its domain's (the part after the last `@`),
    /// else the default.
    #[must_use]
    pub fn get(&self, user: &str) -> Option<&Route> {
        if let Some(route) = self.users.get(user) {
            return Some(route);
        }
        let domain_route = user
            .rsplit_once('@')
            .and_then(|(_, domain)| self.domains.get(domain));
        domain_route.or(self.default.as_ref())
    }

    /// Number of entries (users, domains and the default).
    #[must_use]
    pub fn len(&self) -> usize {
        self.users.len() + self.domains.len() + usize::from(self.default.is_some())
    }

    /// Whether the map has no entry at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every backend id the map names (with repeats).
    pub fn backends(&self) -> impl Iterator<Item = &BackendId> + '_ {
        self.users
            .values()
            .chain(self.domains.values())
            .chain(self.default.iter())
            .flat_map(Route::ids)
    }

    /// Checks that every backend the map names exists in `registry`.
    ///
    /// # Errors
    /// [`Error::UnknownBackend`] for the first name that does not.
    pub fn validate(&self, registry: &Registry) -> Result<(), Error> {
        match self.backends().find(|id| registry.get(*id).is_none()) {
            Some(id) => Err(Error::UnknownBackend(id.to_string())),
            None => Ok(()),
        }
    }
}

impl FromStr for StaticMap {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let mut map = Self::default();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let mut fields = raw
                .split_whitespace()
                .take_while(|field| !field.starts_with('#'));
            let Some(key) = fields.next() else {
                continue;
            };
            let ids: Vec<BackendId> = fields.map(BackendId::from).collect();
            let route = match ids.len() {
                0 => {
                    return Err(Error::InvalidMap {
                        line,
                        reason: format!("{key:?} has no backend"),
                    });
                }
                1 => ids.into_iter().next().map(Route::Backend),
                _ => Some(Route::Candidates(ids)),
            };
            let Some(route) = route else { continue };
            let key = key.to_lowercase();
            let duplicate = if key == "*" {
                map.default.replace(route).is_some()
            } else if let Some(domain) = key.strip_prefix('@') {
                if domain.is_empty() || domain.contains('@') {
                    return Err(Error::InvalidMap {
                        line,
                        reason: format!("{key:?} is not a domain"),
                    });
                }
                map.domains.insert(domain.to_owned(), route).is_some()
            } else {
                map.users.insert(key.clone(), route).is_some()
            };
            if duplicate {
                return Err(Error::InvalidMap {
                    line,
                    reason: format!("{key:?} is listed twice"),
                });
            }
        }
        Ok(map)
    }
}

#[async_trait::async_trait]
impl Directory for StaticMap {
    async fn lookup(&self, user: &str) -> Result<Option<Route>, Error> {
        Ok(self.get(user).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::testing::registry;

    const MAP: &str = "\
# the fleet's exceptions
alice@example.org   mail2
@example.net        mail3   # a whole domain
Bob@Example.org     mail1 mail2
  \t
*                   mail1
carol@example.net   mail1
";

    fn route(ids: &[&str]) -> Route {
        if let [one] = ids {
            Route::Backend(BackendId::from(*one))
        } else {
            Route::Candidates(ids.iter().map(|s| BackendId::from(*s)).collect())
        }
    }

    #[test]
    fn user_beats_domain_beats_default() {
        let map: StaticMap = MAP.parse().unwrap();
        assert_eq!(map.len(), 5);
        assert_eq!(map.get("alice@example.org"), Some(&route(&["mail2"])));
        assert_eq!(map.get("carol@example.net"), Some(&route(&["mail1"])));
        assert_eq!(map.get("dave@example.net"), Some(&route(&["mail3"])));
        assert_eq!(map.get("erin@example.com"), Some(&route(&["mail1"])));
        assert_eq!(map.get("no-domain"), Some(&route(&["mail1"])));
        assert_eq!(
            map.get("bob@example.org"),
            Some(&route(&["mail1", "mail2"]))
        );
    }

    #[test]
    fn without_default_unknown_users_have_no_route() {
        let map: StaticMap = "alice mail1\n".parse().unwrap();
        assert_eq!(map.get("bob"), None);
        assert!(StaticMap::default().is_empty());
    }

    #[test]
    fn malformed_lines_are_reported_with_their_number() {
        let err = "alice mail1\nbob\n".parse::<StaticMap>().unwrap_err();
        assert!(matches!(err, Error::InvalidMap { line: 2, .. }), "{err}");
        let err = "alice mail1\nALICE mail2\n"
            .parse::<StaticMap>()
            .unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        let err = "* a\n* b\n".parse::<StaticMap>().unwrap_err();
        assert!(matches!(err, Error::InvalidMap { line: 2, .. }));
        assert!("@ a\n".parse::<StaticMap>().is_err());
        assert!("@a@b x\n".parse::<StaticMap>().is_err());
    }

    #[test]
    fn validate_checks_backend_names() {
        let map: StaticMap = MAP.parse().unwrap();
        assert!(
            map.validate(&registry(&["mail1", "mail2", "mail3"]))
                .is_ok()
        );
        assert_eq!(
            map.validate(&registry(&["mail1", "mail2"])),
            Err(Error::UnknownBackend("mail3".into()))
        );
    }

    #[test]
    fn loads_from_a_file_and_reports_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.map");
        std::fs::write(&path, MAP).unwrap();
        assert_eq!(
            StaticMap::from_path(&path).unwrap(),
            MAP.parse::<StaticMap>().unwrap()
        );
        let err = StaticMap::from_path(dir.path().join("missing.map")).unwrap_err();
        assert!(matches!(err, Error::MapFile { .. }), "{err}");
    }

    #[tokio::test]
    async fn works_as_a_directory() {
        let map: StaticMap = MAP.parse().unwrap();
        let directory: std::sync::Arc<dyn Directory> = std::sync::Arc::new(map);
        assert_eq!(
            directory.lookup("alice@example.org").await,
            Ok(Some(route(&["mail2"])))
        );
    }
}
