//! The compiled matcher of §3.10 steps 1–2: exact host, then one-label wildcard; within a
//! host, the highest priority, then the longest segment-aware path prefix.

use std::collections::HashMap;
use std::sync::Arc;

use super::snapshot::Pool;

/// Pools indexed by host, each list sorted best first.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<Box<str>, Vec<Arc<Pool>>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<Box<str>, Vec<Arc<Pool>>>,
    len: usize,
}

impl RouteTable {
    /// Indexes `pools` by domain and sorts each host's list for first-match lookup.
    pub fn build(pools: Vec<Pool>) -> RouteTable {
        let mut table = RouteTable {
            len: pools.len(),
            ..RouteTable::default()
        };
        for pool in pools {
            let map = match pool.domain.strip_prefix("*.") {
                Some(base) => table.wildcard.entry(base.into()),
                None => table.exact.entry(pool.domain.as_str().into()),
            };
            map.or_default().push(Arc::new(pool));
        }
        for list in table.exact.values_mut().chain(table.wildcard.values_mut()) {
            list.sort_by(|a, b| {
                b.priority
                    .cmp(&a.priority)
                    .then(b.path.len().cmp(&a.path.len()))
            });
        }
        table
    }

    /// Number of pools.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pool that serves `host` (normalised) and `path` (as received, query excluded).
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<Pool>> {
        first_match(self.exact.get(host), path).or_else(|| {
            let (label, base) = host.split_once('.')?;
            if label.is_empty() {
                return None;
            }
            first_match(self.wildcard.get(base), path)
        })
    }

    /// Every pool, in no particular order.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.exact.values().chain(self.wildcard.values()).flatten()
    }
}

fn first_match<'a>(list: Option<&'a Vec<Arc<Pool>>>, path: &str) -> Option<&'a Arc<Pool>> {
    list?.iter().find(|p| path_matches(&p.path, path))
}

/// P matches Q when P is `/`, Q equals P, or Q starts with P followed by `/`.
pub fn path_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The host of a request (§3.10 step 1): port removed, lower-cased, trailing dot removed.
/// `None` when it cannot be parsed.
pub fn normalize_host(raw: &str) -> Option<String> {
    let host = if let Some(inner) = raw.strip_prefix('[') {
        let end = inner.find(']')?;
        let rest = &inner[end + 1..];
        if !(rest.is_empty() || port_ok(rest.strip_prefix(':')?)) {
            return None;
        }
        &raw[..end + 2]
    } else {
        match raw.rsplit_once(':') {
            Some((h, p)) if port_ok(p) => h,
            Some(_) => return None,
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b));
    ok.then(|| host.to_ascii_lowercase())
}

fn port_ok(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// §3.10 step 6: the backend's base path, then the request path (after `strip_prefix` of the
/// pool path), then the query. Bytes are passed through unchanged.
pub fn join_path(
    base: &str,
    pool_path: &str,
    strip: bool,
    path: &str,
    query: Option<&str>,
) -> String {
    let mut rest = path;
    if strip && pool_path != "/" {
        rest = path.strip_prefix(pool_path).unwrap_or(path);
    }
    if rest.is_empty() {
        rest = "/";
    }
    let mut out = String::with_capacity(base.len() + rest.len() + query.map_or(0, |q| q.len() + 1));
    out.push_str(base);
    out.push_str(rest);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::snapshot::PoolSettings;

    fn pool(domain: &str, path: &str, priority: i32) -> Pool {
        Pool {
            domain: domain.into(),
            path: path.into(),
            priority,
            settings: PoolSettings::default(),
            members: Vec::new(),
            live: Default::default(),
        }
    }

    fn hit(t: &RouteTable, host: &str, path: &str) -> Option<(String, String)> {
        t.lookup(host, path)
            .map(|p| (p.domain.clone(), p.path.clone()))
    }

    #[test]
    fn longest_prefix_is_segment_aware() {
        let t = RouteTable::build(vec![pool("a.com", "/", 0), pool("a.com", "/api", 0)]);
        let api = Some(("a.com".to_string(), "/api".to_string()));
        let root = Some(("a.com".to_string(), "/".to_string()));
        assert_eq!(hit(&t, "a.com", "/api"), api);
        assert_eq!(hit(&t, "a.com", "/api/"), api);
        assert_eq!(hit(&t, "a.com", "/api/x"), api);
        assert_eq!(hit(&t, "a.com", "/apix"), root);
        assert_eq!(hit(&t, "a.com", "/"), root);
        assert_eq!(hit(&t, "b.com", "/"), None);
    }

    #[test]
    fn priority_beats_length() {
        let t = RouteTable::build(vec![pool("a.com", "/", 10), pool("a.com", "/api", 0)]);
        assert_eq!(hit(&t, "a.com", "/api/x").map(|h| h.1), Some("/".into()));
    }

    #[test]
    fn no_fall_through_once_exact_host_matches_but_wildcard_when_path_misses() {
        let t = RouteTable::build(vec![pool("*.a.com", "/", 0), pool("x.a.com", "/only", 0)]);
        assert_eq!(
            hit(&t, "x.a.com", "/only").map(|h| h.0),
            Some("x.a.com".into())
        );
        assert_eq!(
            hit(&t, "x.a.com", "/other").map(|h| h.0),
            Some("*.a.com".into())
        );
        assert_eq!(hit(&t, "y.a.com", "/").map(|h| h.0), Some("*.a.com".into()));
        assert_eq!(hit(&t, "a.com", "/"), None);
        assert_eq!(hit(&t, "y.x.a.com", "/"), None);
    }

    #[test]
    fn hosts_normalise() {
        assert_eq!(
            normalize_host("Shop.Example.com.:8080"),
            Some("shop.example.com".into())
        );
        assert_eq!(normalize_host("a.com"), Some("a.com".into()));
        assert_eq!(normalize_host("[::1]:80"), Some("[::1]".into()));
        assert_eq!(normalize_host(""), None);
        assert_eq!(normalize_host("a.com:x"), None);
        assert_eq!(normalize_host("a b"), None);
    }

    #[test]
    fn joins_paths_exactly() {
        assert_eq!(
            join_path("/v1", "/api", true, "/api", Some("x=1")),
            "/v1/?x=1"
        );
        assert_eq!(join_path("/v1", "/api", true, "/api/u", None), "/v1/u");
        assert_eq!(join_path("/v1", "/api", false, "/api/u", None), "/v1/api/u");
        assert_eq!(
            join_path("", "/", true, "/a%2Fb", Some("q=%2F")),
            "/a%2Fb?q=%2F"
        );
        assert_eq!(join_path("", "/", true, "/", None), "/");
    }
}
