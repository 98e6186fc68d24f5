//! The data plane: an immutable snapshot behind one `ArcSwap`, per-member live state, and the
//! hyper service that forwards requests. Knows nothing of sessions, commands or fronts.

pub mod body;
pub mod breaker;
pub mod forward;
pub mod health;
pub mod live;
pub mod pages;
pub mod pool;
pub mod probe;
pub mod snapshot;
pub mod stats;
pub mod table;
pub mod tls;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

pub use breaker::Transition;
pub use forward::serve;
pub use live::{MemberLive, PoolLive};
pub use snapshot::{Member, Pool, PoolSettings, Snapshot, Upstream};

/// Settings of the engine itself.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Default connect timeout to backends.
    pub connect_timeout: Duration,
    /// Peers whose `X-Forwarded-For` is believed for the client address (§4.16).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            connect_timeout: Duration::from_secs(5),
            trusted_proxies: Vec::new(),
        }
    }
}

/// Something that changed in a member's live state on its own, for the registry to report.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    Breaker {
        member: u64,
        transition: Transition,
    },
    Health {
        member: u64,
        healthy: bool,
        reason: &'static str,
        status: Option<u16>,
    },
}

/// The proxy engine: the published snapshot, the upstream clients and the live-event channel.
pub struct Engine {
    snapshot: ArcSwap<Snapshot>,
    client: forward::UpstreamClient,
    default_connect_timeout: Duration,
    /// Pooled clients for members whose `connect_timeout` is not the default, or that speak
    /// HTTP/2 to their backends.
    clients: Mutex<std::collections::HashMap<(Duration, tls::Alpn, bool), forward::UpstreamClient>>,
    trusted_proxies: Vec<ipnet::IpNet>,
    probes: probe::Probes,
    health: health::HealthChecker,
    live_tx: mpsc::UnboundedSender<LiveEvent>,
    live_rx: Mutex<Option<mpsc::UnboundedReceiver<LiveEvent>>>,
}

impl Engine {
    pub fn new(settings: EngineSettings) -> Arc<Engine> {
        let (live_tx, live_rx) = mpsc::unbounded_channel();
        let probes = probe::Probes::new(settings.connect_timeout);
        Arc::new(Engine {
            health: health::HealthChecker::new(probes.clone(), live_tx.clone()),
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            client: forward::upstream_client(settings.connect_timeout, tls::Alpn::Any, true),
            default_connect_timeout: settings.connect_timeout,
            clients: Mutex::new(std::collections::HashMap::new()),
            trusted_proxies: settings.trusted_proxies,
            probes,
            live_tx,
            live_rx: Mutex::new(Some(live_rx)),
        })
    }

    /// Publishes a new snapshot in one atomic step: each request is routed entirely by the old
    /// one or entirely by this one.
    pub fn publish(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }

    /// The pooled client that connects within `connect_timeout`.
    pub(crate) fn client_for(
        &self,
        connect_timeout: Duration,
        alpn: tls::Alpn,
        verify: bool,
    ) -> forward::UpstreamClient {
        if connect_timeout == self.default_connect_timeout && alpn == tls::Alpn::Any && verify {
            return self.client.clone();
        }
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((connect_timeout, alpn, verify))
            .or_insert_with(|| forward::upstream_client(connect_timeout, alpn, verify))
            .clone()
    }

    /// The client address of a request (§4.16): the peer, or — when the peer is a trusted
    /// proxy — the last `X-Forwarded-For` address that is not one.
    pub fn client_ip(&self, peer: std::net::IpAddr, headers: &http::HeaderMap) -> std::net::IpAddr {
        let trusted = |ip: &std::net::IpAddr| self.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(&peer) {
            return peer;
        }
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
            .rev()
            .find(|ip| !trusted(ip))
            .unwrap_or(peer)
    }

    /// The snapshot in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Runs exactly these health checks (shared per distinct target). Outside a Tokio
    /// runtime (pure unit tests) nothing is started.
    pub fn sync_health(&self, checked: Vec<health::Checked>) {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.health.sync(checked);
        }
    }

    /// How many distinct health-check targets are probed now.
    pub fn health_checks(&self) -> usize {
        self.health.running()
    }

    /// The receiver of live events; there is one, for the registry.
    pub fn take_live_events(&self) -> Option<mpsc::UnboundedReceiver<LiveEvent>> {
        self.live_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Reports a breaker transition; an opening also schedules the move to half-open at
    /// `next_attempt`, whether or not a request arrives (§4.17).
    pub fn report_breaker(&self, member: u64, live: &Arc<MemberLive>, transition: Transition) {
        if let Some(at) = transition.reopen_at {
            let live = live.clone();
            let tx = self.live_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                if let Some(t) = live.breaker.reopen_due(tokio::time::Instant::now()) {
                    let _ = tx.send(LiveEvent::Breaker {
                        member,
                        transition: t,
                    });
                }
            });
        }
        let _ = self.live_tx.send(LiveEvent::Breaker { member, transition });
    }

    /// Periodic upkeep until shutdown: forgets idle rate-limit buckets.
    pub async fn housekeeping(self: Arc<Engine>, shutdown: crate::shutdown::Shutdown) {
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
            for pool in self.snapshot().table.pools() {
                pool.live.reclaim_idle();
            }
        }
    }

    /// One `GET` of `url` with `timeout` through the proxy's own client (maintenance probes,
    /// `BACKEND_TEST`).
    pub async fn probe(
        &self,
        target: &probe::ProbeTarget,
        timeout: Duration,
    ) -> probe::ProbeOutcome {
        probe::get(&self.probes, target, timeout).await
    }
}
