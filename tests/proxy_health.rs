//! Health checks through the real network path: probes per distinct target, down after three
//! failures and up after two passes, no traffic to a down member, events on every flip.

mod common;
use common::*;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

/// A backend whose `/health` answers with the status in `health`, everything else 200.
async fn backend_with_health(name: &str, health: Arc<AtomicU16>) -> Backend {
    Backend::start_with(name, move |req| {
        req.uri.starts_with("/health").then(|| {
            let status = health.load(Ordering::SeqCst);
            (status, Vec::new(), "health".to_string())
        })
    })
    .await
}

fn health_probes(backend: &Backend) -> usize {
    backend
        .seen()
        .iter()
        .filter(|r| r.uri.starts_with("/health"))
        .count()
}

#[tokio::test]
async fn a_failing_check_takes_the_member_down_and_passes_bring_it_back() {
    let app = TestApp::start().await;
    let status = Arc::new(AtomicU16::new(200));
    let backend = backend_with_health("b", status.clone()).await;
    let mut pipe = app.pipe().await;
    let sid = pipe.register("shop", "shop-1").await;
    assert_eq!(
        pipe.cmd(&format!("SUBSCRIBE|{sid}|backend_health_changed"))
            .await,
        "SUBSCRIBE_OK"
    );
    let rid = pipe
        .add_route(&sid, "shop.example.com", "/", &backend.url())
        .await;
    assert_eq!(
        pipe.cmd(&format!("HEALTH_SET|{sid}|{rid}|/health|100ms|50ms"))
            .await,
        "HEALTH_OK"
    );
    pipe.apply(&sid).await;
    assert_eq!(
        get(app.proxy_addr(), "shop.example.com", "/").await.status,
        200
    );

    status.store(503, Ordering::SeqCst);
    let event = pipe.recv().await;
    let data = payload(&event, "EVENT|backend_health_changed");
    assert_eq!(data["route_id"], rid.as_str());
    assert_eq!(data["healthy"], false);
    assert_eq!(data["reason"], "bad_status");
    assert_eq!(data["status_code"], 503);
    assert_eq!(data["backend"], backend.url());
    assert!(health_probes(&backend) >= 3, "three failures before down");
    let served_before = backend.count();
    let reply = http_request(
        app.proxy_addr(),
        "GET",
        Some("shop.example.com"),
        "/x",
        &[("accept", "application/json")],
        "",
    )
    .await;
    assert_eq!(reply.status, 503, "a down member gets no traffic");
    assert_eq!(
        reply.body,
        r#"{"code":"unavailable","message":"no backend available"}"#
    );
    assert!(
        backend.seen()[served_before..]
            .iter()
            .all(|r| r.uri != "/x"),
        "the request never reached the backend"
    );
    let list = pipe.cmd(&format!("ROUTE_LIST|{sid}")).await;
    assert!(list.contains(r#""healthy":false"#), "{list}");

    status.store(200, Ordering::SeqCst);
    let event = pipe.recv().await;
    let data = payload(&event, "EVENT|backend_health_changed");
    assert_eq!(
        (data["healthy"].clone(), data["reason"].clone()),
        (true.into(), "ok".into())
    );
    assert_eq!(
        get(app.proxy_addr(), "shop.example.com", "/").await.status,
        200
    );
}

#[tokio::test]
async fn probes_are_shared_per_distinct_target_and_follow_the_configuration() {
    let app = TestApp::start().await;
    let status = Arc::new(AtomicU16::new(200));
    let backend = backend_with_health("b", status).await;
    let mut pipe = app.pipe().await;
    let sid = pipe.register("shop", "shop-1").await;
    let engine = app.handle.engine().clone();
    pipe.add_route(&sid, "a.example.com", "/", &backend.url())
        .await;
    pipe.add_route(&sid, "b.example.com", "/", &backend.url())
        .await;
    assert_eq!(
        pipe.cmd(&format!("HEALTH_SET|{sid}|ALL|/health|1h|1s"))
            .await,
        "HEALTH_OK"
    );
    pipe.apply(&sid).await;
    assert_eq!(
        engine.health_checks(),
        1,
        "two routes, one target, one probe loop"
    );

    let r3 = pipe
        .add_route(&sid, "c.example.com", "/", &backend.url())
        .await;
    assert_eq!(
        pipe.cmd(&format!("HEALTH_SET|{sid}|{r3}|/health/deep|1h|1s"))
            .await,
        "HEALTH_OK"
    );
    pipe.apply(&sid).await;
    assert_eq!(
        engine.health_checks(),
        2,
        "a different path is a different target"
    );

    assert_eq!(
        pipe.cmd(&format!("HEALTH_SET|{sid}|ALL||0|")).await,
        "HEALTH_OK",
        "dropping ALL's check falls back to the default check"
    );
    pipe.apply(&sid).await;
    assert_eq!(
        engine.health_checks(),
        2,
        "the default check of / and r3's own"
    );

    assert_eq!(
        pipe.cmd(&format!("OPTIONS_SET|{sid}|ALL|health_check_interval|0"))
            .await,
        "OPTIONS_OK"
    );
    pipe.apply(&sid).await;
    assert_eq!(
        engine.health_checks(),
        1,
        "interval 0 turns the default check off"
    );

    assert_eq!(
        pipe.cmd(&format!("CLIENT_SHUTDOWN|{sid}")).await,
        "SHUTDOWN_OK"
    );
    wait_until(|| {
        let engine = engine.clone();
        async move { engine.health_checks() == 0 }
    })
    .await;
}

#[tokio::test]
async fn the_default_check_passes_below_500_and_pauses_while_disconnected() {
    let app = TestApp::start().await;
    let status = Arc::new(AtomicU16::new(404));
    let backend = backend_with_health("b", status.clone()).await;
    let mut pipe = app.pipe().await;
    let sid = pipe.register("shop", "shop-1").await;
    pipe.add_route(&sid, "shop.example.com", "/", &backend.url())
        .await;
    for (key, value) in [
        ("health_check_interval", "100ms"),
        ("health_check_timeout", "50ms"),
        ("health_check_path", "/health"),
    ] {
        assert_eq!(
            pipe.cmd(&format!("OPTIONS_SET|{sid}|ALL|{key}|{value}"))
                .await,
            "OPTIONS_OK"
        );
    }
    pipe.apply(&sid).await;
    wait_until(|| {
        let n = health_probes(&backend);
        async move { n >= 4 }
    })
    .await;
    let list = pipe.cmd(&format!("ROUTE_LIST|{sid}")).await;
    assert!(
        list.contains(r#""healthy":true"#),
        "404 passes the default check: {list}"
    );

    drop(pipe);
    // Disconnected: the probe loop stops probing (it checks its members each tick).
    wait_until(|| {
        let before = health_probes(&backend);
        let backend = &backend;
        async move {
            tokio::time::sleep(std::time::Duration::from_millis(350)).await;
            health_probes(backend) == before
        }
    })
    .await;
}
