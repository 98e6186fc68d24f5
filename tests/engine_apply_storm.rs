//! An apply storm: a client sends requests continuously while 50 applies add and remove other
//! routes and change this route's headers; not one request may fail (PROTOCOL §3.5).

mod common;
use common::*;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_routes_are_applied() {
    let app = TestApp::start().await;
    let backend = Backend::start("steady").await;
    let other = Backend::start("other").await;
    let mut pipe = app.pipe().await;
    let sid = pipe.register("shop", "shop-1").await;
    pipe.cmd(&format!("OPTIONS_SET|{sid}|ALL|health_check_interval|0"))
        .await;
    let rid = pipe
        .add_route(&sid, "shop.example.com", "/", &backend.url())
        .await;
    pipe.apply(&sid).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let proxy = app.proxy_addr();
    let mut clients = Vec::new();
    for c in 0..4 {
        let (stop, ok) = (stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let reply = get(proxy, "shop.example.com", &format!("/c{c}/{i}")).await;
                if reply.status == 200 && reply.body.starts_with("steady ") {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.push(format!("{} {}", reply.status, reply.body));
                }
                i += 1;
            }
            failures
        }));
    }

    let mut extra: Vec<String> = Vec::new();
    for round in 0..50 {
        let value = format!("round-{round}");
        assert_eq!(
            pipe.cmd(&format!("HEADERS_SET|{sid}|{rid}|X-Round|{value}"))
                .await,
            "HEADERS_OK"
        );
        if round % 2 == 0 {
            let id = pipe
                .add_route(&sid, &format!("r{round}.example.com"), "/", &other.url())
                .await;
            extra.push(id);
        } else if let Some(id) = extra.pop() {
            assert_eq!(
                pipe.cmd(&format!("ROUTE_REMOVE|{sid}|{id}")).await,
                "ROUTE_OK"
            );
        }
        pipe.apply(&sid).await;
        let reply = get(proxy, "shop.example.com", "/check").await;
        assert_eq!(
            reply.header("x-round"),
            Some(value.as_str()),
            "the apply is in force"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for client in clients {
        failures.extend(client.await.expect("client task"));
    }
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        ok.load(Ordering::Relaxed) >= 50,
        "requests flowed throughout"
    );
}
