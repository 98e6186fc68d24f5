//! The immutable configuration the registry publishes: pools of members per (domain, path),
//! with every setting already resolved, so the hot path only reads.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::live::{MemberLive, PoolLive, RateLimit};
use super::table::RouteTable;

/// What the proxy serves: one routing table, swapped whole on every apply.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub table: RouteTable,
}

impl Snapshot {
    /// Builds the snapshot of the given pools; each pool's live state takes its rate limit.
    pub fn new(pools: Vec<Pool>) -> Snapshot {
        for pool in &pools {
            pool.live.set_rate_limit(pool.settings.rate_limit);
        }
        Snapshot {
            table: RouteTable::build(pools),
        }
    }
}

/// Members that share one (domain, path) pair, with the pool-level settings (§3.10).
#[derive(Debug)]
pub struct Pool {
    /// Lower-cased; `*.example.com` for a wildcard pair.
    pub domain: String,
    pub path: String,
    pub priority: i32,
    pub settings: PoolSettings,
    pub members: Vec<Member>,
    /// Pool-wide counters that survive applies.
    pub live: Arc<PoolLive>,
}

/// Settings taken from the member whose session applied most recently.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Effective response headers, set on every response of the pool.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub websocket: bool,
    pub compression: bool,
    /// 0 = unlimited.
    pub max_body_size: u64,
    pub strip_prefix: bool,
    pub preserve_host: bool,
    pub rate_limit: Option<RateLimit>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            headers: Vec::new(),
            websocket: false,
            compression: false,
            max_body_size: 100 << 20,
            strip_prefix: false,
            preserve_host: true,
            rate_limit: None,
        }
    }
}

/// One route of one session inside a pool.
#[derive(Debug, Clone)]
pub struct Member {
    /// The route id's number: members are keyed by route (ids are registry-wide).
    pub id: u64,
    pub upstream: Upstream,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub protocol: BackendProtocol,
    /// Do not verify the backend's certificate (`tls_skip_verify`).
    pub tls_skip_verify: bool,
    pub live: Arc<MemberLive>,
}

/// The protocol a member's backend is spoken to in (option `backend_protocol`, §4.13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendProtocol {
    /// HTTP/2 for gRPC requests, HTTP/1.1 otherwise.
    #[default]
    Auto,
    Http1,
    /// Always HTTP/2 (prior knowledge on `http`).
    H2,
}

/// Where a member's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `http` or `https` (`ws`/`wss` backends are dialled over HTTP).
    pub scheme: &'static str,
    /// `host:port` to dial.
    pub authority: String,
    /// The host as written in the URL, with its port if one was written (`Host` when
    /// `preserve_host` is off).
    pub host_header: String,
    /// The URL's path without one trailing `/`.
    pub base_path: String,
}
