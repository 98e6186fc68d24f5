//! Events (PROTOCOL §5.2): the eleven types, the bus (a bounded replay ring plus a broadcast
//! fan-out for streams), and each pipe connection's outbox of asynchronous lines.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{Map, Value};
use tokio::sync::{broadcast, mpsc};

use super::clock::rfc3339;
use super::error::Error;
use super::model::RouteId;

/// The event types of §5.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    BackendHealthChanged,
    CircuitBreakerStateChanged,
    ConfigApplied,
    RouteAdded,
    RouteRemoved,
    MaintenanceChanged,
    DrainCompleted,
    SessionExpired,
    StagedExpired,
    CertRenewed,
    GlobalConfigChanged,
}

impl EventType {
    pub const ALL: [EventType; 11] = [
        EventType::BackendHealthChanged,
        EventType::CircuitBreakerStateChanged,
        EventType::ConfigApplied,
        EventType::RouteAdded,
        EventType::RouteRemoved,
        EventType::MaintenanceChanged,
        EventType::DrainCompleted,
        EventType::SessionExpired,
        EventType::StagedExpired,
        EventType::CertRenewed,
        EventType::GlobalConfigChanged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::BackendHealthChanged => "backend_health_changed",
            EventType::CircuitBreakerStateChanged => "circuit_breaker_state_changed",
            EventType::ConfigApplied => "config_applied",
            EventType::RouteAdded => "route_added",
            EventType::RouteRemoved => "route_removed",
            EventType::MaintenanceChanged => "maintenance_changed",
            EventType::DrainCompleted => "drain_completed",
            EventType::SessionExpired => "session_expired",
            EventType::StagedExpired => "staged_expired",
            EventType::CertRenewed => "cert_renewed",
            EventType::GlobalConfigChanged => "global_config_changed",
        }
    }

    pub fn parse(text: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == text)
    }

    /// Parses a `SUBSCRIBE`/`UNSUBSCRIBE` list: `all` stands for every type; an empty list is
    /// `invalid format`, an unknown item `unknown event type: <item>`.
    pub fn parse_list(items: &[String]) -> Result<Vec<EventType>, Error> {
        if items.is_empty() {
            return Err(Error::InvalidFormat);
        }
        let mut out = Vec::new();
        for item in items {
            if item == "all" {
                out.extend(EventType::ALL);
            } else {
                out.push(
                    EventType::parse(item)
                        .ok_or_else(|| Error::invalid_value("unknown event type", item))?,
                );
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// Which sessions an event is for (§5.2, "sent to").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// The session the event concerns.
    Owner,
    /// Every session of this service (`session_expired`).
    Service(String),
    /// Every session (`global_config_changed`).
    Everyone,
}

/// One event as the bus carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub seq: u64,
    pub time: SystemTime,
    pub kind: EventType,
    /// The session the event concerns.
    pub session_id: String,
    pub route_id: Option<RouteId>,
    /// The type's own keys, in PROTOCOL's order.
    pub data: Map<String, Value>,
    /// The whole payload as the pipe writes it: compact JSON, `|` escaped (§1.5).
    pub pipe_json: String,
    pub audience: Audience,
}

impl Event {
    /// Whether the event is for the session `id` of `service`.
    pub fn reaches(&self, id: &str, service: &str) -> bool {
        match &self.audience {
            Audience::Owner => self.session_id == id,
            Audience::Service(s) => s == service,
            Audience::Everyone => true,
        }
    }

    /// The flat payload: `seq`, `time`, `session_id`, `route_id`, then the type's own keys.
    pub fn payload(&self) -> Map<String, Value> {
        let mut map = Map::with_capacity(self.data.len() + 4);
        map.insert("seq".into(), self.seq.into());
        map.insert("time".into(), rfc3339(self.time).into());
        map.insert("session_id".into(), self.session_id.clone().into());
        map.insert(
            "route_id".into(),
            self.route_id.map_or(Value::Null, |r| r.to_string().into()),
        );
        for (k, v) in &self.data {
            map.insert(k.clone(), v.clone());
        }
        map
    }
}

/// The registry-wide bus: sequence numbers, the replay ring and the broadcast to streams.
pub struct EventBus {
    seq: AtomicU64,
    ring: Mutex<VecDeque<Arc<Event>>>,
    capacity: usize,
    tx: broadcast::Sender<Arc<Event>>,
}

impl EventBus {
    /// A bus that retains the last `capacity` events.
    pub fn new(capacity: usize) -> EventBus {
        let (tx, _) = broadcast::channel(capacity.max(16));
        EventBus {
            seq: AtomicU64::new(1),
            ring: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
            tx,
        }
    }

    /// Numbers an event, retains it and fans it out to stream subscribers.
    pub fn publish(
        &self,
        kind: EventType,
        session_id: &str,
        route_id: Option<RouteId>,
        data: Map<String, Value>,
        audience: Audience,
        time: SystemTime,
    ) -> Arc<Event> {
        let mut event = Event {
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            time,
            kind,
            session_id: session_id.to_string(),
            route_id,
            data,
            pipe_json: String::new(),
            audience,
        };
        // Serialising a map of JSON values cannot fail.
        let json = serde_json::to_string(&event.payload()).unwrap_or_default();
        event.pipe_json = json.replace('|', "\\u007c");
        let event = Arc::new(event);
        {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            if ring.len() == self.capacity {
                ring.pop_front();
            }
            ring.push_back(event.clone());
        }
        // No receiver is not an error: streams come and go.
        let _ = self.tx.send(event.clone());
        tracing::debug!(kind = kind.as_str(), seq = event.seq, "event");
        event
    }

    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Retained events with a sequence number above `seq` (all retained for an older one).
    pub fn replay_after(&self, seq: u64) -> Vec<Arc<Event>> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().filter(|e| e.seq > seq).cloned().collect()
    }
}

/// An asynchronous line for one pipe connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// `EVENT|type|json`.
    Event(Arc<Event>),
    /// The completion of a `MAINT_ENTER`/`MAINT_EXIT`: `MAINT_OK|<target>` or `ERROR|…`.
    Completion {
        txn: Option<String>,
        outcome: Result<String, Error>,
    },
}

/// The sending side of a connection's queue of asynchronous lines. Events are bounded by
/// bytes (§8.4) and dropped when they do not fit; completions are never dropped.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Outgoing>,
    queued_bytes: Arc<AtomicUsize>,
    pending_completions: Arc<AtomicUsize>,
    limit: usize,
}

/// The connection's receiving side.
pub struct OutboxReceiver {
    rx: mpsc::UnboundedReceiver<Outgoing>,
    queued_bytes: Arc<AtomicUsize>,
    pending_completions: Arc<AtomicUsize>,
}

/// A new outbox whose events may hold `limit` bytes at most.
pub fn outbox(limit: usize) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let pending_completions = Arc::new(AtomicUsize::new(0));
    (
        Outbox {
            tx,
            queued_bytes: queued_bytes.clone(),
            pending_completions: pending_completions.clone(),
            limit,
        },
        OutboxReceiver {
            rx,
            queued_bytes,
            pending_completions,
        },
    )
}

/// The size an event takes in the queue: its line's length.
fn event_cost(event: &Event) -> usize {
    "EVENT||\n".len() + event.kind.as_str().len() + event.pipe_json.len()
}

impl Outbox {
    /// Queues an event; false when it did not fit (the caller counts it as dropped).
    pub fn push_event(&self, event: Arc<Event>) -> bool {
        let cost = event_cost(&event);
        let before = self.queued_bytes.fetch_add(cost, Ordering::AcqRel);
        if before + cost > self.limit {
            self.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
            return false;
        }
        if self.tx.send(Outgoing::Event(event)).is_err() {
            self.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Announces a completion that will be pushed later (so the connection waits for it at EOF).
    pub fn expect_completion(&self) {
        self.pending_completions.fetch_add(1, Ordering::AcqRel);
    }

    /// Withdraws an announced completion that will never come (its session ended).
    pub fn cancel_completion(&self) {
        let _ = self
            .pending_completions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Queues a completion announced with [`Outbox::expect_completion`].
    pub fn push_completion(&self, txn: Option<String>, outcome: Result<String, Error>) {
        let _ = self.tx.send(Outgoing::Completion { txn, outcome });
    }
}

impl OutboxReceiver {
    /// The next line to write.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        let item = self.rx.recv().await?;
        match &item {
            Outgoing::Event(e) => {
                self.queued_bytes.fetch_sub(event_cost(e), Ordering::AcqRel);
            }
            Outgoing::Completion { .. } => {
                self.pending_completions.fetch_sub(1, Ordering::AcqRel);
            }
        }
        Some(item)
    }

    /// Completions announced and not yet received.
    pub fn pending_completions(&self) -> usize {
        self.pending_completions.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_with_all_and_unknown_types() {
        let p = |v: &[&str]| {
            EventType::parse_list(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .map_err(|e| e.to_string())
        };
        assert_eq!(p(&[]), Err("invalid format".into()));
        assert_eq!(p(&["all"]).map(|v| v.len()), Ok(11));
        assert_eq!(
            p(&["route_added", "nope"]),
            Err("unknown event type: nope".into())
        );
        assert_eq!(
            p(&["route_added", "route_added"]),
            Ok(vec![EventType::RouteAdded])
        );
    }

    #[test]
    fn payload_keys_come_first_in_order() {
        let bus = EventBus::new(4);
        let mut data = Map::new();
        data.insert("scopes".into(), serde_json::json!(["all"]));
        let e = bus.publish(
            EventType::ConfigApplied,
            "s",
            None,
            data,
            Audience::Owner,
            SystemTime::UNIX_EPOCH,
        );
        let json = serde_json::to_string(&e.payload()).expect("json");
        assert_eq!(
            json,
            r#"{"seq":1,"time":"1970-01-01T00:00:00Z","session_id":"s","route_id":null,"scopes":["all"]}"#
        );
    }

    #[test]
    fn the_ring_keeps_the_newest() {
        let bus = EventBus::new(3);
        for _ in 0..5 {
            bus.publish(
                EventType::RouteAdded,
                "s",
                None,
                Map::new(),
                Audience::Owner,
                SystemTime::UNIX_EPOCH,
            );
        }
        let seqs: Vec<u64> = bus.replay_after(0).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        assert_eq!(bus.replay_after(4).len(), 1);
    }

    #[tokio::test]
    async fn events_beyond_the_byte_limit_are_refused() {
        let bus = EventBus::new(8);
        let (out, mut rx) = outbox(200);
        let e = bus.publish(
            EventType::RouteAdded,
            "s",
            None,
            Map::new(),
            Audience::Owner,
            SystemTime::UNIX_EPOCH,
        );
        assert!(out.push_event(e.clone()));
        assert!(out.push_event(e.clone()));
        assert!(!out.push_event(e.clone()), "the third does not fit");
        assert!(rx.recv().await.is_some());
        assert!(out.push_event(e), "room again after a read");
        out.expect_completion();
        assert_eq!(rx.pending_completions(), 1);
        out.push_completion(None, Ok("ALL".into()));
        rx.recv().await;
        rx.recv().await;
        assert!(matches!(rx.recv().await, Some(Outgoing::Completion { .. })));
        assert_eq!(rx.pending_completions(), 0);
    }
}
