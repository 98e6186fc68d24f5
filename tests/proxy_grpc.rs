//! gRPC through the proxy: h2c from the client, HTTP/2 to the backend (backend_protocol
//! `auto` picks it for gRPC), status and trailers intact in both directions.

mod common;
use common::*;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[tokio::test]
async fn grpc_calls_pass_through_with_their_trailers() {
    let proxy = TestApp::start().await;
    // Any gRPC server will do as the backend: a second Switchyard's api port serves the
    // standard health service.
    let backend = TestApp::start().await;
    let mut pipe = proxy.pipe().await;
    let sid = pipe.register("grpc", "grpc-1").await;
    pipe.add_route(
        &sid,
        "127.0.0.1",
        "/",
        &format!("http://{}", backend.api_addr()),
    )
    .await;
    pipe.cmd(&format!("OPTIONS_SET|{sid}|ALL|health_check_interval|0"))
        .await;
    pipe.apply(&sid).await;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.proxy_addr()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect through the proxy");
    let mut client = HealthClient::new(channel);
    let reply = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("the call passes through");
    assert_eq!(reply.into_inner().status, ServingStatus::Serving as i32);
    let status = client
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("an error status is a trailer");
    assert_eq!(status.code(), tonic::Code::NotFound);

    let stats = pipe.cmd(&format!("STATS_GET|{sid}|r1")).await;
    let stats = payload(&stats, "STATS_OK");
    assert_eq!(stats["requests"], 2, "{stats}");
    assert_eq!(
        stats["status_codes"]["200"], 2,
        "gRPC answers 200 with a grpc-status trailer"
    );
}

#[tokio::test]
async fn backend_protocol_http1_keeps_plain_requests_on_http1() {
    let proxy = TestApp::start().await;
    let backend = Backend::start("h1").await;
    let mut pipe = proxy.pipe().await;
    let sid = pipe.register("web", "web-1").await;
    pipe.add_route(&sid, "web.example.com", "/", &backend.url())
        .await;
    for (k, v) in [
        ("health_check_interval", "0"),
        ("backend_protocol", "http1"),
    ] {
        assert_eq!(
            pipe.cmd(&format!("OPTIONS_SET|{sid}|ALL|{k}|{v}")).await,
            "OPTIONS_OK"
        );
    }
    pipe.apply(&sid).await;
    let reply = get(proxy.proxy_addr(), "web.example.com", "/x").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "h1 /x"));
}

#[tokio::test]
async fn a_grpc_server_stream_passes_through_and_h2c_reaches_the_proxy() {
    use switchyard::grpc::pb;
    use switchyard::grpc::pb::registry_client::RegistryClient;
    use tokio_stream::StreamExt;

    let proxy = TestApp::start().await;
    let backend = TestApp::start().await;
    let mut pipe = proxy.pipe().await;
    let sid = pipe.register("grpc", "grpc-1").await;
    pipe.add_route(
        &sid,
        "127.0.0.1",
        "/",
        &format!("http://{}", backend.api_addr()),
    )
    .await;
    pipe.cmd(&format!("OPTIONS_SET|{sid}|ALL|health_check_interval|0"))
        .await;
    pipe.apply(&sid).await;

    // The tonic channel speaks h2c with prior knowledge to the proxy's plaintext listener.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.proxy_addr()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect through the proxy");
    let mut client = RegistryClient::new(channel);
    let session = client
        .register(pb::RegisterRequest {
            service_name: "inner".into(),
            instance_name: "inner-1".into(),
            maintenance_port: 0,
            metadata: None,
        })
        .await
        .expect("register through the proxy")
        .into_inner()
        .session_id;
    let mut events = client
        .subscribe(pb::EventTypesRequest {
            session_id: session.clone(),
            event_types: vec!["config_applied".into()],
        })
        .await
        .expect("subscribe through the proxy")
        .into_inner();
    client
        .route_add(pb::RouteAddRequest {
            session_id: session.clone(),
            domains: vec!["inner.example.com".into()],
            path: "/".into(),
            backend_url: "http://127.0.0.1:9".into(),
            priority: 0,
        })
        .await
        .expect("route add");
    client
        .config_apply(pb::SessionRequest {
            session_id: session.clone(),
        })
        .await
        .expect("apply");
    let event = tokio::time::timeout(REPLY_WAIT, events.next())
        .await
        .expect("event in time")
        .expect("stream open")
        .expect("an event, not a status");
    assert_eq!(event.r#type, "config_applied");
    assert_eq!(event.session_id, session);

    let status = client
        .subscribe(pb::EventTypesRequest {
            session_id: "nosuch".into(),
            event_types: vec!["all".into()],
        })
        .await
        .expect_err("an unknown session is a status");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(
        status.message(),
        "session not found",
        "the message survives the proxy"
    );
}
