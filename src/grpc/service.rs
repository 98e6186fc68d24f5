//! The tonic services: each RPC converts its request, calls the registry, converts the reply.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::convert::{self, duration_text, route_input};
use super::pb;
use super::status::status;
use super::stream::event_stream;
use crate::registry::operate::StatsReport;
use crate::registry::views::Reconnect;
use crate::registry::{Caller, RegisterRequest, Registry};

/// A stream of events for `Subscribe` and `WatchEvents`.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send + 'static>>;

type Reply<T> = Result<Response<T>, Status>;

const FRONT: Caller = Caller::Front;

fn ok<T>(value: T) -> Reply<T> {
    Ok(Response::new(value))
}

fn empty(result: crate::registry::Result<()>) -> Reply<pb::Empty> {
    result.map_err(status)?;
    ok(pb::Empty {})
}

/// The `switchyard.v2.Registry` service.
#[derive(Clone)]
pub struct RegistryService {
    pub registry: Registry,
}

/// The `switchyard.v2.Admin` service.
#[derive(Clone)]
pub struct AdminService {
    pub registry: Registry,
}

/// The bearer token of a call, if any (the auth interceptor has already checked it).
fn bearer<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
}

#[tonic::async_trait]
impl pb::registry_server::Registry for RegistryService {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Reply<pb::RegisterReply> {
        let token = bearer(&request);
        let peer = request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0.ip());
        let r = request.into_inner();
        let mut metadata = r
            .metadata
            .as_ref()
            .map(convert::from_struct)
            .unwrap_or_default();
        metadata.remove("auth_token");
        let session_id = self
            .registry
            .register(
                FRONT,
                RegisterRequest {
                    service_name: r.service_name,
                    instance_name: r.instance_name,
                    maintenance_port: r.maintenance_port.to_string(),
                    metadata: serde_json::Value::Object(metadata).to_string(),
                    peer,
                    token,
                },
            )
            .map_err(status)?;
        ok(pb::RegisterReply { session_id })
    }

    async fn reconnect(&self, request: Request<pb::SessionRequest>) -> Reply<pb::ReconnectReply> {
        let r = request.into_inner();
        let outcome = self
            .registry
            .reconnect(FRONT, &r.session_id)
            .map_err(status)?;
        ok(pb::ReconnectReply {
            reregister: outcome == Reconnect::Reregister,
        })
    }

    async fn ping(&self, request: Request<pb::SessionRequest>) -> Reply<pb::Empty> {
        empty(self.registry.ping(FRONT, &request.into_inner().session_id))
    }

    async fn session_info(
        &self,
        request: Request<pb::SessionRequest>,
    ) -> Reply<pb::SessionInfoReply> {
        let r = request.into_inner();
        let info = self
            .registry
            .session_info(FRONT, &r.session_id)
            .map_err(status)?;
        ok(info.into())
    }

    async fn client_shutdown(&self, request: Request<pb::SessionRequest>) -> Reply<pb::Empty> {
        let r = request.into_inner();
        self.registry
            .client_shutdown(FRONT, &r.session_id)
            .map_err(status)?;
        ok(pb::Empty {})
    }

    async fn route_add(&self, request: Request<pb::RouteAddRequest>) -> Reply<pb::RouteAddReply> {
        let r = request.into_inner();
        let input = route_input(r.domains, r.path, r.backend_url, r.priority);
        let id = self
            .registry
            .route_add(FRONT, &r.session_id, input)
            .map_err(status)?;
        ok(pb::RouteAddReply {
            route_id: id.to_string(),
        })
    }

    async fn route_add_bulk(
        &self,
        request: Request<pb::RouteAddBulkRequest>,
    ) -> Reply<pb::RouteAddBulkReply> {
        let r = request.into_inner();
        let items = r
            .routes
            .into_iter()
            .map(|s| Ok(route_input(s.domains, s.path, s.backend_url, s.priority)))
            .collect();
        let results = self
            .registry
            .route_add_bulk(FRONT, &r.session_id, Ok(items))
            .map_err(status)?;
        ok(pb::RouteAddBulkReply {
            results: results
                .into_iter()
                .map(|b| pb::BulkResult {
                    route_id: b.route_id,
                    status: b.status.to_string(),
                })
                .collect(),
        })
    }

    async fn route_update(&self, request: Request<pb::RouteUpdateRequest>) -> Reply<pb::Empty> {
        let r = request.into_inner();
        empty(
            self.registry
                .route_update(FRONT, &r.session_id, &r.route_id, &r.field, &r.value),
        )
    }

    async fn route_remove(&self, request: Request<pb::RouteRequest>) -> Reply<pb::Empty> {
        let r = request.into_inner();
        empty(
            self.registry
                .route_remove(FRONT, &r.session_id, &r.route_id),
        )
    }

    async fn route_list(&self, request: Request<pb::SessionRequest>) -> Reply<pb::RouteListReply> {
        let r = request.into_inner();
        let routes = self
            .registry
            .route_list(FRONT, &r.session_id)
            .map_err(status)?;
        ok(pb::RouteListReply {
            routes: routes.into_iter().map(Into::into).collect(),
        })
    }

    async fn headers_set(&self, request: Request<pb::HeadersSetRequest>) -> Reply<pb::Empty> {
        let r = request.into_inner();
        empty(self.registry.headers_set(
            FRONT,
            &r.session_id,
            &r.target,
            &r.header_name,
            &r.header_value,
        ))
    }

    async fn headers_remove(&self, request: Request<pb::HeadersRemoveRequest>) -> Reply<pb::Empty> {
        let r = request.into_inner();
        empty(
            self.registry
                .headers_remove(FRONT, &r.session_id, &r.target, &r.header_name),
        )
    }

    async fn options_set(&self, request: Request<pb::OptionsSetRequest>) -> Reply<pb::Empty> {
        let r = request.into_inner();
        empty(
            self.registry
                .options_set(FRONT, &r.session_id, &r.target, &r.key, &r.value),
        )
    }

    async fn options_remove(&self, request: Request<pb::OptionsRemoveRequest>) -> Reply<pb::Empty> {
        let r = request.into_inner();
        empty(
            self.registry
                .options_remove(FRONT, &r.session_id, &r.target, &r.key),
        )
    }

    async fn health_set(&self, request: Request<pb::HealthSetRequest>) -> Reply<pb::Empty> {
        let r = request.into_inner();
        empty(self.registry.health_set(
            FRONT,
            &r.session_id,
            &r.target,
            &r.path,
            &duration_text(r.interval.as_ref()),
            &duration_text(r.timeout.as_ref()),
        ))
    }

    async fn rate_limit_set(&self, request: Request<pb::RateLimitSetRequest>) -> Reply<pb::Empty> {
        let r = request.into_inner();
        empty(self.registry.ratelimit_set(
            FRONT,
            &r.session_id,
            &r.target,
            &r.requests.to_string(),
            &duration_text(r.window.as_ref()),
        ))
    }

    async fn circuit_breaker_set(
        &self,
        request: Request<pb::CircuitBreakerSetRequest>,
    ) -> Reply<pb::Empty> {
        let r = request.into_inner();
        empty(self.registry.circuit_breaker_set(
            FRONT,
            &r.session_id,
            &r.target,
            &r.threshold.to_string(),
            &duration_text(r.timeout.as_ref()),
            &r.half_open_requests.to_string(),
        ))
    }

    async fn circuit_breaker_status(
        &self,
        request: Request<pb::CircuitBreakerStatusRequest>,
    ) -> Reply<pb::CircuitBreakerStatusReply> {
        let r = request.into_inner();
        let report = self
            .registry
            .circuit_breaker_status(FRONT, &r.session_id, &r.route_id)
            .map_err(status)?;
        ok(report.into())
    }

    async fn circuit_breaker_reset(&self, request: Request<pb::TargetRequest>) -> Reply<pb::Empty> {
        let r = request.into_inner();
        empty(
            self.registry
                .circuit_breaker_reset(FRONT, &r.session_id, &r.target),
        )
    }

    async fn config_validate(&self, request: Request<pb::SessionRequest>) -> Reply<pb::Empty> {
        empty(
            self.registry
                .config_validate(FRONT, &request.into_inner().session_id),
        )
    }

    async fn config_apply(&self, request: Request<pb::SessionRequest>) -> Reply<pb::Empty> {
        empty(
            self.registry
                .config_apply(FRONT, &request.into_inner().session_id),
        )
    }

    async fn config_rollback(&self, request: Request<pb::SessionRequest>) -> Reply<pb::Empty> {
        empty(
            self.registry
                .config_rollback(FRONT, &request.into_inner().session_id),
        )
    }

    async fn config_diff(
        &self,
        request: Request<pb::SessionRequest>,
    ) -> Reply<pb::ConfigDiffReply> {
        let r = request.into_inner();
        let diff = self
            .registry
            .config_diff(FRONT, &r.session_id)
            .map_err(status)?;
        ok(diff.into())
    }

    async fn config_apply_partial(
        &self,
        request: Request<pb::ConfigApplyPartialRequest>,
    ) -> Reply<pb::Empty> {
        let r = request.into_inner();
        let scopes: Vec<String> = r
            .scopes
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        empty(
            self.registry
                .config_apply_partial(FRONT, &r.session_id, &scopes),
        )
    }

    async fn drain_start(
        &self,
        request: Request<pb::DrainStartRequest>,
    ) -> Reply<pb::DrainStartReply> {
        let r = request.into_inner();
        let at = self
            .registry
            .drain_start(FRONT, &r.session_id, &duration_text(r.duration.as_ref()))
            .map_err(status)?;
        ok(pb::DrainStartReply {
            completes_at: Some(convert::timestamp(at)),
        })
    }

    async fn drain_status(
        &self,
        request: Request<pb::SessionRequest>,
    ) -> Reply<pb::DrainStatusReply> {
        let r = request.into_inner();
        let s = self
            .registry
            .drain_status(FRONT, &r.session_id)
            .map_err(status)?;
        ok(s.into())
    }

    async fn drain_cancel(&self, request: Request<pb::SessionRequest>) -> Reply<pb::Empty> {
        empty(
            self.registry
                .drain_cancel(FRONT, &request.into_inner().session_id),
        )
    }

    async fn maint_enter(&self, request: Request<pb::MaintEnterRequest>) -> Reply<pb::Empty> {
        let r = request.into_inner();
        empty(self.registry.maint_enter(
            FRONT,
            &r.session_id,
            r.target.trim(),
            r.page_url.trim(),
            None,
        ))
    }

    async fn maint_exit(&self, request: Request<pb::TargetRequest>) -> Reply<pb::Empty> {
        let r = request.into_inner();
        empty(
            self.registry
                .maint_exit(FRONT, &r.session_id, r.target.trim(), None),
        )
    }

    async fn maint_status(
        &self,
        request: Request<pb::SessionRequest>,
    ) -> Reply<pb::MaintStatusReply> {
        let r = request.into_inner();
        let s = self
            .registry
            .maint_status(FRONT, &r.session_id)
            .map_err(status)?;
        ok(s.into())
    }

    async fn stats_get(&self, request: Request<pb::StatsGetRequest>) -> Reply<pb::StatsReply> {
        let r = request.into_inner();
        let report = self
            .registry
            .stats_get(FRONT, &r.session_id, r.target.trim())
            .map_err(status)?;
        let stats = match report {
            StatsReport::All(all) => all.into_iter().map(Into::into).collect(),
            StatsReport::One(one) => vec![one.into()],
        };
        ok(pb::StatsReply { stats })
    }

    async fn backend_test(
        &self,
        request: Request<pb::BackendTestRequest>,
    ) -> Reply<pb::BackendTestReply> {
        let r = request.into_inner();
        let sid = r.session_id.unwrap_or_default();
        let result = self
            .registry
            .backend_test(FRONT, &sid, r.backend_url.trim())
            .await
            .map_err(status)?;
        ok(result.into())
    }

    type SubscribeStream = EventStream;

    async fn subscribe(&self, request: Request<pb::EventTypesRequest>) -> Reply<EventStream> {
        let r = request.into_inner();
        let types = clean(&r.event_types);
        self.registry
            .subscribe(FRONT, &r.session_id, &types)
            .map_err(status)?;
        let asked = crate::registry::events::EventType::parse_list(&types)
            .map_err(status)?
            .into_iter()
            .collect();
        ok(event_stream(
            &self.registry,
            Some(r.session_id),
            Some(asked),
        ))
    }

    async fn unsubscribe(&self, request: Request<pb::EventTypesRequest>) -> Reply<pb::Empty> {
        let r = request.into_inner();
        empty(
            self.registry
                .unsubscribe(FRONT, &r.session_id, &clean(&r.event_types)),
        )
    }
}

/// List items as the pipe would see them: trimmed, empties dropped.
fn clean(items: &[String]) -> Vec<String> {
    items
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn list_sessions(&self, _: Request<pb::Empty>) -> Reply<pb::ListSessionsReply> {
        let sessions = self.registry.list_sessions();
        ok(pb::ListSessionsReply {
            sessions: sessions.into_iter().map(Into::into).collect(),
        })
    }

    async fn get_route_table(&self, _: Request<pb::Empty>) -> Reply<pb::GetRouteTableReply> {
        let routes = self
            .registry
            .route_table()
            .into_iter()
            .map(|r| pb::TableRoute {
                session_id: r.session_id,
                service_name: r.service_name,
                route_id: r.route_id,
                domains: r.domains,
                path: r.path,
                backend_url: r.backend_url,
                priority: r.priority,
                status: r.status.to_string(),
            })
            .collect();
        ok(pb::GetRouteTableReply { routes })
    }

    async fn get_stats(&self, _: Request<pb::Empty>) -> Reply<pb::GetStatsReply> {
        let stats = self
            .registry
            .all_stats()
            .into_iter()
            .map(|(session_id, service_name, stats)| pb::SessionStats {
                session_id,
                service_name,
                stats: Some(stats.into()),
            })
            .collect();
        ok(pb::GetStatsReply { stats })
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(&self, request: Request<pb::WatchEventsRequest>) -> Reply<EventStream> {
        let types = clean(&request.into_inner().event_types);
        let filter = if types.is_empty() {
            None
        } else {
            Some(
                crate::registry::events::EventType::parse_list(&types)
                    .map_err(status)?
                    .into_iter()
                    .collect(),
            )
        };
        ok(event_stream(&self.registry, None, filter))
    }
}
