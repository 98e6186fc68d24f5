//! The data plane: an immutable snapshot behind one `ArcSwap`, per-member live state, and the
//! hyper service that forwards requests. Knows nothing of sessions, commands or fronts.

pub mod forward;
pub mod live;
pub mod pages;
pub mod pool;
pub mod snapshot;
pub mod table;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

pub use forward::serve;
pub use live::MemberLive;
pub use snapshot::{Member, Pool, PoolSettings, Snapshot, Upstream};

/// Settings of the engine itself.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Default connect timeout to backends.
    pub connect_timeout: Duration,
}

/// The proxy engine: the published snapshot and the upstream client.
pub struct Engine {
    snapshot: ArcSwap<Snapshot>,
    client: forward::UpstreamClient,
}

impl Engine {
    pub fn new(settings: EngineSettings) -> Arc<Engine> {
        Arc::new(Engine {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            client: forward::upstream_client(settings.connect_timeout),
        })
    }

    /// Publishes a new snapshot in one atomic step: each request is routed entirely by the old
    /// one or entirely by this one.
    pub fn publish(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }

    /// The snapshot in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }
}
