//! JSON bodies of the gateway's requests. Every field is optional here so that a missing
//! field reaches the registry as an empty value and gets the pipe's error text; a field of the
//! wrong JSON type fails the body as a whole (`invalid format`).

use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// A scalar given as a string, number or boolean; the registry reads its text form.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    /// The value as the pipe would have sent it.
    pub fn text(&self) -> String {
        match self {
            Scalar::Text(s) => s.clone(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct RegisterBody {
    pub service_name: Option<String>,
    pub instance_name: Option<String>,
    pub maintenance_port: Option<u32>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct BulkBody {
    #[schema(value_type = Option<Vec<RouteBody>>)]
    pub routes: Option<Vec<Value>>,
}

/// A route as `RouteAdd` and `RouteAddBulk` take it (`domains` may also be one
/// comma-separated string; `backend` is an alias of `backend_url`).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct RouteBody {
    pub domains: Option<Vec<String>>,
    pub path: Option<String>,
    pub backend_url: Option<String>,
    pub priority: Option<i32>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct UpdateBody {
    pub field: Option<String>,
    pub value: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ValueBody {
    pub value: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct HealthBody {
    pub path: Option<String>,
    pub interval: Option<Scalar>,
    pub timeout: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct RateLimitBody {
    pub requests: Option<Scalar>,
    pub window: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct BreakerBody {
    pub threshold: Option<Scalar>,
    pub timeout: Option<Scalar>,
    pub half_open_requests: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ScopesBody {
    pub scopes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct DrainBody {
    pub duration: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct MaintBody {
    pub target: Option<String>,
    pub page_url: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct StatsQuery {
    pub target: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct BackendTestBody {
    pub backend_url: Option<String>,
    pub session_id: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct EventsQuery {
    pub types: Option<String>,
}
