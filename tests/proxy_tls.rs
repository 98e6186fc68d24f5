//! TLS to `https` backends: certificates verified by default, `tls_skip_verify` honoured, and
//! `BACKEND_TEST` telling reachability apart from certificate validity.

mod common;
use common::*;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio_rustls::rustls;

/// An HTTPS backend on 127.0.0.1:0 with a self-signed certificate; answers `secure <path>`.
async fn https_backend() -> std::net::SocketAddr {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("certificate");
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = format!("secure {}", req.uri().path());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn certificates_are_verified_unless_the_route_skips_it() {
    let app = TestApp::start().await;
    let backend = https_backend().await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "secure", "secure-1").await;
    let rid = pipe
        .add_route(
            &sid,
            "secure.example.com",
            "/",
            &format!("https://{backend}"),
        )
        .await;
    pipe.apply(&sid).await;
    let reply = get(app.proxy_addr(), "secure.example.com", "/x").await;
    assert_eq!(
        reply.status, 502,
        "a self-signed certificate does not verify"
    );

    expect(
        &mut pipe,
        &format!("OPTIONS_SET|{sid}|{rid}|tls_skip_verify|true"),
        "OPTIONS_OK",
    )
    .await;
    pipe.apply(&sid).await;
    let reply = get(app.proxy_addr(), "secure.example.com", "/x").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "secure /x"));
}

#[tokio::test]
async fn backend_test_reports_reachable_but_not_valid() {
    let app = TestApp::start().await;
    let backend = https_backend().await;
    let mut pipe = app.pipe().await;
    let sid = pipe.register("secure", "secure-1").await;
    let url = format!("https://{backend}");
    let reply = pipe.cmd(&format!("BACKEND_TEST|{sid}|{url}")).await;
    let result = payload(&reply, "BACKEND_OK");
    assert_eq!(result["url"], url.as_str());
    assert_eq!(result["reachable"], true);
    assert_eq!(result["status_code"], 200);
    assert_eq!(result["tls_valid"], false);
    assert!(
        result["tls_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{reply}"
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let closed = listener.local_addr().expect("addr");
    drop(listener);
    let reply = pipe
        .cmd(&format!("BACKEND_TEST|{sid}|https://{closed}"))
        .await;
    let result = payload(&reply, "BACKEND_FAIL");
    assert_eq!(result["reachable"], false);
    assert_eq!(result["error"], "connection refused");
}
