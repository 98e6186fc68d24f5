//! One-shot `GET`s through the proxy's client: maintenance-page and backend probes and
//! `BACKEND_TEST` (PROTOCOL §4.28, §4.29, §4.32).

use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{Request, Uri};
use http_body_util::Empty;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use super::tls::{self, Alpn};

/// A client probes use (no bodies; redirects are not followed: hyper never follows them).
type ProbeClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The probe clients: TLS verified, and not (for `tls_skip_verify`).
#[derive(Clone)]
pub struct Probes {
    verified: ProbeClient,
    unverified: ProbeClient,
}

impl Probes {
    pub fn new(connect_timeout: Duration) -> Probes {
        let client = |verify| {
            Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(tls::connector(connect_timeout, Alpn::Http1, verify))
        };
        Probes {
            verified: client(true),
            unverified: client(false),
        }
    }
}

/// What to `GET`.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// `host:port` to dial.
    pub authority: String,
    /// The `Host` header.
    pub host_header: String,
    /// Path and query.
    pub path_and_query: String,
    /// Verify the backend's certificate (`https`); off for `tls_skip_verify`.
    pub verify: bool,
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    pub status: Option<u16>,
    /// Why no response arrived (`connection refused`, `timeout`, `dns error` …).
    pub error: Option<String>,
    pub elapsed: Duration,
}

impl ProbeOutcome {
    /// Reachable: an HTTP response with a status below 500.
    pub fn reachable(&self) -> bool {
        self.status.is_some_and(|s| s < 500)
    }
}

/// Classifies a client error in the words `backend_health_changed` and `BACKEND_FAIL` use.
fn describe(error: &hyper_util::client::legacy::Error) -> String {
    let mut text = format!("{error:?}").to_ascii_lowercase();
    let mut cause = String::new();
    let mut source = std::error::Error::source(error);
    while let Some(src) = source {
        cause = src.to_string();
        text.push_str(&cause.to_ascii_lowercase());
        source = src.source();
    }
    if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
        format!("tls error: {cause}")
    } else if text.contains("refused") {
        "connection refused".into()
    } else if text.contains("dns") || text.contains("resolve") || text.contains("lookup") {
        "dns error".into()
    } else if text.contains("timed out") || text.contains("timeout") {
        "connection timeout".into()
    } else if text.contains("reset") {
        "connection reset".into()
    } else {
        "connection error".into()
    }
}

/// Sends one `GET` and waits at most `timeout` for the response headers.
pub async fn get(probes: &Probes, target: &ProbeTarget, timeout: Duration) -> ProbeOutcome {
    let client = if target.verify {
        &probes.verified
    } else {
        &probes.unverified
    };
    let started = Instant::now();
    let done = |status, error| ProbeOutcome {
        status,
        error,
        elapsed: started.elapsed(),
    };
    let uri = Uri::builder()
        .scheme(target.scheme)
        .authority(target.authority.as_str())
        .path_and_query(target.path_and_query.as_str())
        .build();
    let Ok(uri) = uri else {
        return done(None, Some("invalid url".into()));
    };
    let Ok(request) = Request::get(uri)
        .header(HOST, target.host_header.as_str())
        .header("user-agent", "switchyard-probe")
        .body(Empty::new())
    else {
        return done(None, Some("invalid url".into()));
    };
    match tokio::time::timeout(timeout, client.request(request)).await {
        Ok(Ok(response)) => done(Some(response.status().as_u16()), None),
        Ok(Err(error)) => done(None, Some(describe(&error))),
        Err(_) => done(None, Some("timeout".into())),
    }
}
