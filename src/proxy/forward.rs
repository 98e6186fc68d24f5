//! The hyper service of the data plane: match the request, choose a member, forward it with
//! the forwarding headers, and map failures to the built-in pages (§3.10 steps 1–8).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue, CONTENT_LENGTH, HOST};
use http::{HeaderMap, Request, Response, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::pages::Page;
use super::pool::choose;
use super::snapshot::{Member, Pool};
use super::table::{join_path, normalize_host};
use super::Engine;
use crate::shutdown::Shutdown;

/// Bodies the proxy answers with: the backend's stream, or a built-in page.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// The upstream HTTP client (hyper-util's pooled client for now; PERFORMANCE.md).
pub type UpstreamClient = Client<HttpConnector, Incoming>;

/// Builds the pooled upstream client.
pub fn upstream_client(connect_timeout: Duration) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .set_host(false)
        .build(connector)
}

/// Hop-by-hop headers, never forwarded in either direction.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Removes hop-by-hop headers, those named in `Connection` included.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// A built-in page with the pool's route headers when a pool was chosen.
fn page(page: Page, request: &HeaderMap, pool: Option<&Pool>) -> Response<ProxyBody> {
    let mut resp = page.render(request).map(Either::Right);
    if let Some(pool) = pool {
        apply_route_headers(resp.headers_mut(), pool, true);
    }
    resp
}

/// Sets the pool's effective headers, replacing same-named ones; on the proxy's own pages its
/// framing and status headers are kept (§3.10 step 8).
fn apply_route_headers(headers: &mut HeaderMap, pool: &Pool, own_page: bool) {
    for (name, value) in &pool.settings.headers {
        if own_page
            && (name == header::CACHE_CONTROL
                || name == header::RETRY_AFTER
                || name == header::CONTENT_TYPE
                || name.as_str() == "x-maintenance-mode"
                || name.as_str() == "x-drain-mode")
        {
            continue;
        }
        headers.insert(name.clone(), value.clone());
    }
}

fn ip_value(ip: IpAddr) -> HeaderValue {
    // An IP address in text form is always a valid header value.
    HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

impl Engine {
    /// Serves one proxied request end to end.
    pub async fn handle(&self, peer: SocketAddr, req: Request<Incoming>) -> Response<ProxyBody> {
        let host_raw = req
            .headers()
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()));
        let Some((host_raw, host)) =
            host_raw.and_then(|raw| normalize_host(&raw).map(|h| (raw, h)))
        else {
            return page(Page::InvalidHost, req.headers(), None);
        };
        let snapshot = self.snapshot();
        let Some(pool) = snapshot.table.lookup(&host, req.uri().path()) else {
            return page(Page::NoRoute, req.headers(), None);
        };
        if is_upgrade(req.headers()) && !pool.settings.websocket {
            return page(Page::WebsocketRefused, req.headers(), Some(pool));
        }
        if body_too_large(req.headers(), pool.settings.max_body_size) {
            return page(Page::BodyTooLarge, req.headers(), Some(pool));
        }
        let Some(member) = choose(&pool.members) else {
            let mut resp = page(Page::NoBackend, req.headers(), Some(pool));
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
            return resp;
        };
        self.forward(peer, &host_raw, pool, member, req).await
    }

    async fn forward(
        &self,
        peer: SocketAddr,
        host_raw: &str,
        pool: &Pool,
        member: &Member,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let request_headers = req.headers().clone();
        let upstream = match build_upstream_request(peer, host_raw, pool, member, req) {
            Some(r) => r,
            None => return page(Page::InvalidHost, &request_headers, Some(pool)),
        };
        let live = &member.live;
        let _in_flight = live.begin();
        live.stats
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outcome = tokio::time::timeout(member.timeout, self.client.request(upstream)).await;
        let mut resp = match outcome {
            Ok(Ok(resp)) => {
                if resp.status().is_server_error() {
                    live.stats
                        .errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let mut resp = resp.map(Either::Left);
                strip_hop_by_hop(resp.headers_mut());
                apply_route_headers(resp.headers_mut(), pool, false);
                return resp;
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, member = member.id, "upstream transport error");
                page(Page::BadGateway, &request_headers, Some(pool))
            }
            Err(_) => page(Page::GatewayTimeout, &request_headers, Some(pool)),
        };
        live.stats
            .errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        apply_route_headers(resp.headers_mut(), pool, true);
        resp
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
}

fn body_too_large(headers: &HeaderMap, max: u64) -> bool {
    max > 0
        && headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|len| len > max)
}

/// The request to send upstream: target URL of §3.10 step 6 and the forwarding headers.
fn build_upstream_request(
    peer: SocketAddr,
    host_raw: &str,
    pool: &Pool,
    member: &Member,
    req: Request<Incoming>,
) -> Option<Request<Incoming>> {
    let (mut parts, body) = req.into_parts();
    let target = join_path(
        &member.upstream.base_path,
        &pool.path,
        pool.settings.strip_prefix,
        parts.uri.path(),
        parts.uri.query(),
    );
    parts.uri = Uri::builder()
        .scheme(member.upstream.scheme)
        .authority(member.upstream.authority.as_str())
        .path_and_query(target)
        .build()
        .ok()?;
    parts.version = Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    let host_value = if pool.settings.preserve_host {
        HeaderValue::from_str(host_raw).ok()?
    } else {
        HeaderValue::from_str(&member.upstream.host_header).ok()?
    };
    headers.insert(HOST, host_value);
    let ip = ip_value(peer.ip());
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => {
            HeaderValue::from_str(&format!("{prior}, {}", peer.ip())).ok()?
        }
        _ => ip.clone(),
    };
    headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    headers.insert(
        X_FORWARDED_HOST.clone(),
        HeaderValue::from_str(host_raw).ok()?,
    );
    headers.insert(X_REAL_IP.clone(), ip);
    Some(Request::from_parts(parts, body))
}

/// Accepts proxy connections (HTTP/1.1 and h2c) until shutdown, then lets in-flight requests
/// finish for at most `drain_wait`.
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    shutdown: Shutdown,
    drain_wait: Duration,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let engine = engine.clone();
        let service = hyper::service::service_fn(move |req| {
            let engine = engine.clone();
            async move { Ok::<_, Infallible>(engine.handle(peer, req).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "proxy connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain_wait, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("proxy connections still open after {drain_wait:?}; closing them");
    }
}
