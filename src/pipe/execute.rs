//! Command → one registry call → `Reply`. The only place the pipe front meets the registry.

use std::net::IpAddr;

use crate::registry::clock::rfc3339;
use crate::registry::model::{route_input_from_json, split_list, RouteInput};
use crate::registry::operate::{BackendTest, StatsReport};
use crate::registry::views::Reconnect;
use crate::registry::{BulkInput, Caller, ConnId, Error, RegisterRequest, Registry};

use super::command::{Command, Verb};
use super::reply::Reply;

/// Executes one command for the connection `conn` whose peer is `peer`.
pub async fn execute(registry: &Registry, conn: ConnId, peer: IpAddr, cmd: &Command) -> Reply {
    let caller = Caller::Pipe(conn);
    let sid = cmd.sid.as_str();
    let a = |i| cmd.arg(i);
    let done = |token| move |()| Reply::token(token);
    let result = match cmd.verb {
        Verb::Register => registry
            .register(
                caller,
                RegisterRequest {
                    service_name: a(0).into(),
                    instance_name: a(1).into(),
                    maintenance_port: a(2).into(),
                    metadata: a(3).into(),
                    peer: Some(peer),
                    token: None,
                },
            )
            .map(|id| Reply::text("ACK", id)),
        Verb::Reconnect => registry.reconnect(caller, sid).map(|r| match r {
            Reconnect::Ok => Reply::token("OK"),
            Reconnect::Reregister => Reply::token("REREGISTER"),
        }),
        Verb::Ping => registry.ping(caller, sid).map(done("PONG")),
        Verb::SessionInfo => registry
            .session_info(caller, sid)
            .map(|info| Reply::json("SESSION_OK", &info)),
        Verb::ClientShutdown => registry.client_shutdown(caller, sid).map(|o| Reply {
            close: o.close_connection,
            ..Reply::token("SHUTDOWN_OK")
        }),
        Verb::RouteAdd => registry
            .route_add(
                caller,
                sid,
                RouteInput {
                    domains: split_list(a(0)),
                    path: a(1).into(),
                    backend_url: a(2).into(),
                    priority: a(3).into(),
                },
            )
            .map(|id| Reply::text("ROUTE_OK", id.to_string())),
        Verb::RouteAddBulk => registry
            .route_add_bulk(caller, sid, parse_bulk(a(0)))
            .map(|results| Reply::json("ROUTE_BULK_OK", &results)),
        Verb::RouteUpdate => registry
            .route_update(caller, sid, a(0), a(1), a(2))
            .map(done("ROUTE_OK")),
        Verb::RouteRemove => registry
            .route_remove(caller, sid, a(0))
            .map(done("ROUTE_OK")),
        Verb::RouteList => registry
            .route_list(caller, sid)
            .map(|list| Reply::json_compressible("ROUTE_LIST_OK", &list, a(0) == "compressed")),
        Verb::HeadersSet => registry
            .headers_set(caller, sid, a(0), a(1), a(2))
            .map(done("HEADERS_OK")),
        Verb::HeadersRemove => registry
            .headers_remove(caller, sid, a(0), a(1))
            .map(done("HEADERS_OK")),
        Verb::OptionsSet => registry
            .options_set(caller, sid, a(0), a(1), a(2))
            .map(done("OPTIONS_OK")),
        Verb::OptionsRemove => registry
            .options_remove(caller, sid, a(0), a(1))
            .map(done("OPTIONS_OK")),
        Verb::HealthSet => registry
            .health_set(caller, sid, a(0), a(1), a(2), a(3))
            .map(done("HEALTH_OK")),
        Verb::RatelimitSet => registry
            .ratelimit_set(caller, sid, a(0), a(1), a(2))
            .map(done("RATELIMIT_OK")),
        Verb::CircuitBreakerSet => registry
            .circuit_breaker_set(caller, sid, a(0), a(1), a(2), a(3))
            .map(done("CIRCUIT_OK")),
        Verb::ConfigValidate => registry.config_validate(caller, sid).map(done("OK")),
        Verb::ConfigApply => registry.config_apply(caller, sid).map(done("OK")),
        Verb::ConfigRollback => registry.config_rollback(caller, sid).map(done("OK")),
        Verb::ConfigDiff => registry
            .config_diff(caller, sid)
            .map(|diff| Reply::json("DIFF_OK", &diff)),
        Verb::ConfigApplyPartial => registry
            .config_apply_partial(caller, sid, &split_list(a(0)))
            .map(done("OK")),
        Verb::CircuitBreakerStatus => registry
            .circuit_breaker_status(caller, sid, a(0))
            .map(|status| Reply::json("CIRCUIT_STATUS_OK", &status)),
        Verb::CircuitBreakerReset => registry
            .circuit_breaker_reset(caller, sid, a(0))
            .map(done("CIRCUIT_OK")),
        Verb::DrainStart => registry
            .drain_start(caller, sid, a(0))
            .map(|at| Reply::text("DRAIN_OK", rfc3339(at))),
        Verb::DrainStatus => registry
            .drain_status(caller, sid)
            .map(|status| Reply::json("DRAIN_STATUS_OK", &status)),
        Verb::DrainCancel => registry.drain_cancel(caller, sid).map(done("DRAIN_OK")),
        Verb::MaintEnter => registry
            .maint_enter(caller, sid, a(0), a(1), cmd.txn.clone())
            .map(done("ACK")),
        Verb::MaintExit => registry
            .maint_exit(caller, sid, a(0), cmd.txn.clone())
            .map(done("ACK")),
        Verb::MaintStatus => registry
            .maint_status(caller, sid)
            .map(|status| Reply::json("MAINT_STATUS_OK", &status)),
        Verb::StatsGet => {
            let (target, compressed) = match a(0) {
                "compressed" => ("", true),
                target => (target, a(1) == "compressed"),
            };
            registry
                .stats_get(caller, sid, target)
                .map(|report| match report {
                    StatsReport::All(all) => Reply::json_compressible("STATS_OK", &all, compressed),
                    StatsReport::One(one) => Reply::json_compressible("STATS_OK", &one, compressed),
                })
        }
        Verb::BackendTest => registry
            .backend_test(caller, sid, a(0))
            .await
            .map(|result| match result {
                BackendTest::Reachable { .. } => Reply::json("BACKEND_OK", &result),
                BackendTest::Unreachable { .. } => Reply::json("BACKEND_FAIL", &result),
            }),
        Verb::Subscribe => registry
            .subscribe(caller, sid, &split_list(a(0)))
            .map(done("SUBSCRIBE_OK")),
        Verb::Unsubscribe => registry
            .unsubscribe(caller, sid, &split_list(a(0)))
            .map(done("UNSUBSCRIBE_OK")),
    };
    result.unwrap_or_else(|e| Reply::error(&e))
}

/// The JSON of `ROUTE_ADD_BULK`: an array of objects, each converted on its own so that the
/// registry reports the first bad element in input order.
fn parse_bulk(json: &str) -> BulkInput {
    let invalid = || Error::invalid("invalid json");
    let value: serde_json::Value = serde_json::from_str(json).map_err(|_| invalid())?;
    let items = value.as_array().ok_or_else(invalid)?;
    if !items.iter().all(serde_json::Value::is_object) {
        return Err(invalid());
    }
    Ok(items.iter().map(route_input_from_json).collect())
}
