//! What the registry reports: reply payloads with their keys in PROTOCOL's order.

use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::clock::ser;

/// `SESSION_OK` (§4.4).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionInfo {
    pub session_id: String,
    pub service_name: String,
    pub instance_name: String,
    pub maintenance_port: u16,
    #[serde(serialize_with = "ser::time")]
    #[schema(value_type = String, format = DateTime)]
    pub connected_at: SystemTime,
    pub uptime_seconds: u64,
    #[serde(serialize_with = "ser::time")]
    #[schema(value_type = String, format = DateTime)]
    pub last_activity: SystemTime,
    #[serde(serialize_with = "ser::opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_apply: Option<SystemTime>,
    pub routes_active: u64,
    pub routes_staged: u64,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub subscriptions: Vec<String>,
    pub liveness: &'static str,
    pub connections: u64,
    pub draining: bool,
    pub in_maintenance: bool,
    #[serde(serialize_with = "ser::opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub staged_expires_at: Option<SystemTime>,
    pub ignored_options: Vec<String>,
    pub events_dropped: u64,
}

/// The live values of a modified route.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActiveValues {
    pub domains: Vec<String>,
    pub path: String,
    pub backend: String,
    pub priority: i32,
}

/// One `ROUTE_LIST_OK` element (§4.10).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RouteEntry {
    pub route_id: String,
    pub id: String,
    pub domains: Vec<String>,
    pub path: String,
    pub backend: String,
    pub backend_url: String,
    pub priority: i32,
    pub status: &'static str,
    pub in_maintenance: bool,
    pub healthy: Option<bool>,
    pub active: Option<ActiveValues>,
}

/// One `ROUTE_BULK_OK` element.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BulkResult {
    pub route_id: String,
    pub status: &'static str,
}

/// What `CLIENT_SHUTDOWN` leaves for the front to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownOutcome {
    /// The carrying connection is attached to no other live session and should close.
    pub close_connection: bool,
}

/// One route of the live table across sessions (Admin `GetRouteTable`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TableRoute {
    pub session_id: String,
    pub service_name: String,
    pub route_id: String,
    pub domains: Vec<String>,
    pub path: String,
    pub backend_url: String,
    pub priority: i32,
    pub status: &'static str,
}

/// `RECONNECT`'s two successful answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    Ok,
    Reregister,
}
