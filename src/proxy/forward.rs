//! The hyper service of the data plane: match the request, choose a member, forward it with
//! the forwarding headers, and map failures to the built-in pages (§3.10 steps 1–8).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue, ACCEPT, CONTENT_LENGTH, HOST};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower_http::compression::predicate::Predicate;
use tower_http::compression::{CompressionBody, CompressionLayer};

use super::body::{CountSent, Counted};
use super::breaker::Permit;
use super::live::MaintenancePage;
use super::pages::Page;
use super::pool::choose;
use super::snapshot::{BackendProtocol, Member, Pool, Upstream};
use super::table::{join_path, normalize_host};
use super::tls::{self, Alpn};
use super::Engine;
use crate::shutdown::Shutdown;
use hyper_rustls::HttpsConnector;

/// Bodies the proxy answers with: the backend's stream, or a built-in page.
pub type ProxyBody = Either<Counted, Full<Bytes>>;

/// What the proxy sends upstream: the client's body, or nothing (a retried request).
pub type UpstreamBody = Either<Counted, Empty<Bytes>>;

/// The upstream HTTP client (hyper-util's pooled client for now; PERFORMANCE.md).
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

/// Builds a pooled upstream client: `Alpn::H2` speaks HTTP/2 only (prior knowledge on
/// `http`), `Any` lets an `https` backend choose; `verify` checks certificates.
pub fn upstream_client(connect_timeout: Duration, alpn: Alpn, verify: bool) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .http2_only(alpn == Alpn::H2)
        .set_host(false)
        .build(tls::connector(connect_timeout, alpn, verify))
}

/// Marks a response whose route has the `compression` option on.
#[derive(Debug, Clone, Copy)]
struct Compressible;

/// The member whose `bytes_sent` a response counts into.
#[derive(Debug, Clone)]
struct SentBy(Arc<super::MemberLive>);

/// §3.10 step 8: compress when the route asks for it, the body is compressible text, JSON,
/// JavaScript, XML or SVG of at least 1 KiB (or of unknown length), and `no-transform` is not
/// set; responses already encoded are left alone by the layer itself.
#[derive(Debug, Clone, Copy)]
struct RouteCompression;

impl Predicate for RouteCompression {
    fn should_compress<B: http_body::Body>(&self, response: &Response<B>) -> bool {
        if response.extensions().get::<Compressible>().is_none() {
            return false;
        }
        let h = response.headers();
        let content_type = h
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let media = content_type.split(';').next().unwrap_or("").trim();
        let compressible = media.starts_with("text/")
            || media == "application/json"
            || media == "application/javascript"
            || media == "application/xml"
            || media == "image/svg+xml"
            || media.ends_with("+json")
            || media.ends_with("+xml");
        let no_transform = h
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("no-transform"));
        let large_enough = response
            .body()
            .size_hint()
            .exact()
            .is_none_or(|len| len >= 1024);
        compressible && !no_transform && large_enough
    }
}

/// Whether a request is gRPC (which needs HTTP/2 end to end).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
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
static X_MAINTENANCE_MODE: HeaderName = HeaderName::from_static("x-maintenance-mode");
static X_DRAIN_MODE: HeaderName = HeaderName::from_static("x-drain-mode");

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

/// A built-in page, with the pool's route headers when a pool was chosen.
fn page(page: Page, accept: Option<&HeaderValue>, pool: Option<&Pool>) -> Response<ProxyBody> {
    let mut resp = page.render(accept).map(Either::Right);
    if let Some(pool) = pool {
        apply_route_headers(resp.headers_mut(), pool, true);
    }
    resp
}

/// Sets the pool's effective headers, replacing same-named ones; on the proxy's own pages its
/// caching, retry, mode and type headers are kept (§3.10 step 8).
fn apply_route_headers(headers: &mut HeaderMap, pool: &Pool, own_page: bool) {
    for (name, value) in &pool.settings.headers {
        let kept = name == header::CACHE_CONTROL
            || name == header::RETRY_AFTER
            || name == header::CONTENT_TYPE
            || name == X_MAINTENANCE_MODE
            || name == X_DRAIN_MODE;
        if own_page && kept && headers.contains_key(name) {
            continue;
        }
        headers.insert(name.clone(), value.clone());
    }
}

/// What the request told us before it was consumed.
struct RequestInfo {
    peer: SocketAddr,
    host_raw: String,
    accept: Option<HeaderValue>,
}

impl Engine {
    /// Serves one proxied request end to end.
    pub async fn handle(&self, peer: SocketAddr, req: Request<Incoming>) -> Response<ProxyBody> {
        let accept = req.headers().get(ACCEPT).cloned();
        let host_raw = req
            .headers()
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        let Some((host_raw, host)) =
            host_raw.and_then(|raw| normalize_host(raw).map(|h| (raw.to_string(), h)))
        else {
            return page(Page::InvalidHost, accept.as_ref(), None);
        };
        let snapshot = self.snapshot();
        let Some(pool) = snapshot.table.lookup(&host, req.uri().path()) else {
            return page(Page::NoRoute, accept.as_ref(), None);
        };
        if let Err(wait) = pool.live.admit(self.client_ip(peer.ip(), req.headers())) {
            pool.live.rate_limited.fetch_add(1, Ordering::Relaxed);
            let mut resp = page(Page::RateLimited, accept.as_ref(), Some(pool));
            let secs = (wait.as_secs_f64().ceil() as u64).max(1);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return resp;
        }
        let info = RequestInfo {
            peer,
            host_raw,
            accept,
        };
        let Some(member) = choose(&pool.members) else {
            return self.unavailable(&info, pool, req).await;
        };
        if req.headers().contains_key(header::UPGRADE) && !pool.settings.websocket {
            return page(Page::WebsocketRefused, info.accept.as_ref(), Some(pool));
        }
        if body_too_large(req.headers(), pool.settings.max_body_size) {
            return page(Page::BodyTooLarge, info.accept.as_ref(), Some(pool));
        }
        match member.live.breaker.acquire() {
            Some(permit) => self.forward(&info, pool, member, permit, req).await,
            None => self.unavailable(&info, pool, req).await,
        }
    }

    async fn forward(
        &self,
        info: &RequestInfo,
        pool: &Pool,
        member: &Member,
        permit: Permit,
        mut req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        // A WebSocket (or other) upgrade: the client side is taken over once the backend agrees.
        let upgrade = upgrade_protocol(req.headers()).map(|protocol| {
            let client = hyper::upgrade::on(&mut req);
            (protocol, client)
        });
        let retry = (upgrade.is_none() && retryable(&req)).then(|| RetryHead {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        });
        let (parts, body) = req.into_parts();
        let too_large = Arc::new(AtomicBool::new(false));
        let body = Either::Left(Counted::new(
            body,
            member.live.clone(),
            pool.settings.max_body_size,
            too_large.clone(),
        ));
        let Some(mut upstream) = upstream_request(info, pool, &member.upstream, None, parts, body)
        else {
            return page(Page::InvalidHost, info.accept.as_ref(), Some(pool));
        };
        if let Some((protocol, _)) = &upgrade {
            let h = upstream.headers_mut();
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, protocol.clone());
        }
        let client_upgrade = upgrade.map(|(_, client)| client);
        let (resp, connect_failed) = self
            .attempt(
                info,
                pool,
                member,
                permit,
                upstream,
                Extras {
                    upgrade: client_upgrade,
                    too_large: &too_large,
                },
            )
            .await;
        if !connect_failed {
            return resp;
        }
        // §3.10 step 4: an idempotent request whose connect failed is retried once on
        // another available member.
        let Some(head) = retry else {
            return resp;
        };
        let others: Vec<Member> = pool
            .members
            .iter()
            .filter(|m| m.id != member.id)
            .cloned()
            .collect();
        let Some((other, permit)) =
            choose(&others).and_then(|m| Some((m, m.live.breaker.acquire()?)))
        else {
            return resp;
        };
        let Ok(again) = head.request() else {
            return resp;
        };
        let (parts, _) = again.into_parts();
        let Some(upstream) = upstream_request(
            info,
            pool,
            &other.upstream,
            None,
            parts,
            Either::Right(Empty::new()),
        ) else {
            return resp;
        };
        let unlimited = AtomicBool::new(false);
        let extras = Extras {
            upgrade: None,
            too_large: &unlimited,
        };
        self.attempt(info, pool, other, permit, upstream, extras)
            .await
            .0
    }

    /// Sends one request to one member and records the outcome in its statistics and
    /// breaker; also says whether the connection could not be made.
    async fn attempt(
        &self,
        info: &RequestInfo,
        pool: &Pool,
        member: &Member,
        permit: Permit,
        upstream: Request<UpstreamBody>,
        extras: Extras<'_>,
    ) -> (Response<ProxyBody>, bool) {
        let Extras {
            upgrade: client_upgrade,
            too_large,
        } = extras;
        let live = &member.live;
        let started = Instant::now();
        let _in_flight = live.begin();
        let alpn = match member.protocol {
            BackendProtocol::H2 => Alpn::H2,
            BackendProtocol::Http1 => Alpn::Http1,
            BackendProtocol::Auto if is_grpc(upstream.headers()) => Alpn::H2,
            BackendProtocol::Auto => Alpn::Any,
        };
        let h2 = alpn == Alpn::H2;
        let mut upstream = upstream;
        if h2 {
            *upstream.version_mut() = Version::HTTP_2;
            // HTTP/2 carries the authority in the URI; a Host header is not sent.
            upstream.headers_mut().remove(HOST);
        }
        let client = self.client_for(member.connect_timeout, alpn, !member.tls_skip_verify);
        let outcome = tokio::time::timeout(member.timeout, client.request(upstream)).await;
        let mut connect_failed = false;
        let (status, resp) = match outcome {
            Ok(Ok(mut resp)) => {
                let status = resp.status().as_u16();
                let switched = match client_upgrade {
                    Some(client) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                        let backend = hyper::upgrade::on(&mut resp);
                        tokio::spawn(tunnel(client, backend, live.clone()));
                        resp.headers().get(header::UPGRADE).cloned()
                    }
                    _ => None,
                };
                let mut resp = resp.map(|b| Either::Left(Counted::uncounted(b)));
                resp.extensions_mut().insert(SentBy(live.clone()));
                if pool.settings.compression {
                    resp.extensions_mut().insert(Compressible);
                }
                strip_hop_by_hop(resp.headers_mut());
                if let Some(protocol) = switched {
                    let h = resp.headers_mut();
                    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    h.insert(header::UPGRADE, protocol);
                }
                apply_route_headers(resp.headers_mut(), pool, false);
                (status, resp)
            }
            Ok(Err(_)) if too_large.load(Ordering::Acquire) => {
                // The body outgrew max_body_size while streaming: the client's fault, not the
                // backend's.
                (
                    413,
                    page(Page::BodyTooLarge, info.accept.as_ref(), Some(pool)),
                )
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, member = member.id, "upstream transport error");
                connect_failed = error.is_connect();
                (
                    502,
                    page(Page::BadGateway, info.accept.as_ref(), Some(pool)),
                )
            }
            Err(_) => (
                504,
                page(Page::GatewayTimeout, info.accept.as_ref(), Some(pool)),
            ),
        };
        live.stats.record(status, started.elapsed());
        if let Some(t) = live.breaker.record(permit, status < 500) {
            self.report_breaker(member.id, live, t);
        }
        (resp, connect_failed)
    }

    /// No member is available (§3.10 step 4): the maintenance response of the most recent
    /// member in maintenance, else the built-in 503.
    async fn unavailable(
        &self,
        info: &RequestInfo,
        pool: &Pool,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        pool.live.unavailable.fetch_add(1, Ordering::Relaxed);
        let in_maintenance = pool
            .members
            .iter()
            .filter(|m| m.live.connected())
            .filter_map(|m| m.live.maintenance().map(|mark| (mark, m)))
            .max_by_key(|(mark, _)| mark.order);
        if let Some((mark, member)) = in_maintenance {
            if let Some(page_url) = &mark.page {
                if let Some(resp) = self
                    .maintenance_page(info, pool, member, page_url, req)
                    .await
                {
                    return resp;
                }
            }
            let mut resp = page(Page::Maintenance, info.accept.as_ref(), Some(pool));
            let h = resp.headers_mut();
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("300"));
            h.insert(X_MAINTENANCE_MODE.clone(), HeaderValue::from_static("true"));
            return resp;
        }
        let mut resp = page(Page::NoBackend, info.accept.as_ref(), Some(pool));
        let h = resp.headers_mut();
        h.insert(header::RETRY_AFTER, retry_after(pool));
        if drain_is_the_only_reason(pool) {
            h.insert(X_DRAIN_MODE.clone(), HeaderValue::from_static("true"));
        }
        resp
    }

    /// Forwards the request to a maintenance page URL; `None` when that fails.
    async fn maintenance_page(
        &self,
        info: &RequestInfo,
        pool: &Pool,
        member: &Member,
        page_url: &MaintenancePage,
        req: Request<Incoming>,
    ) -> Option<Response<ProxyBody>> {
        let (parts, body) = req.into_parts();
        let body = Either::Left(Counted::uncounted(body));
        let upstream = upstream_request(
            info,
            pool,
            &page_url.upstream,
            page_url.query.as_deref(),
            parts,
            body,
        )?;
        let client = self.client_for(member.connect_timeout, Alpn::Http1, true);
        let resp = tokio::time::timeout(member.timeout, client.request(upstream))
            .await
            .ok()?
            .ok()?;
        if resp.status().is_server_error() {
            return None;
        }
        let mut resp = resp.map(|b| Either::Left(Counted::uncounted(b)));
        strip_hop_by_hop(resp.headers_mut());
        apply_route_headers(resp.headers_mut(), pool, true);
        resp.headers_mut()
            .insert(X_MAINTENANCE_MODE.clone(), HeaderValue::from_static("true"));
        Some(resp)
    }
}

/// Whether every member is held back by nothing but its breaker.
fn breakers_are_the_only_reason(pool: &Pool) -> bool {
    pool.members.iter().all(|m| {
        let l = &m.live;
        l.connected()
            && l.healthy()
            && !l.in_maintenance()
            && l.weight() > 0.0
            && !l.breaker.admits()
    })
}

/// Whether, for every member, a completed drain is the only reason.
fn drain_is_the_only_reason(pool: &Pool) -> bool {
    !pool.members.is_empty()
        && pool.members.iter().all(|m| {
            let l = &m.live;
            l.connected()
                && l.healthy()
                && !l.in_maintenance()
                && l.breaker.admits()
                && l.drain().is_some()
                && l.weight() <= 0.0
        })
}

/// `Retry-After` of the built-in 503: 30, or the seconds until the earliest breaker attempt.
fn retry_after(pool: &Pool) -> HeaderValue {
    if pool.members.is_empty() || !breakers_are_the_only_reason(pool) {
        return HeaderValue::from_static("30");
    }
    let now = Instant::now();
    let secs = pool
        .members
        .iter()
        .filter_map(|m| m.live.breaker.reopen_at())
        .map(|at| at.saturating_duration_since(now).as_secs_f64().ceil() as u64)
        .min()
        .unwrap_or(1)
        .max(1);
    HeaderValue::from(secs)
}

/// What an attempt needs beyond the request: the client's pending upgrade, and the flag its
/// body raises when it outgrows `max_body_size`.
struct Extras<'a> {
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    too_large: &'a AtomicBool,
}

/// What a retry needs of the original request.
struct RetryHead {
    method: http::Method,
    uri: Uri,
    headers: HeaderMap,
}

impl RetryHead {
    /// The original request again, without a body.
    fn request(self) -> Result<Request<()>, http::Error> {
        let mut req = Request::builder()
            .method(self.method)
            .uri(self.uri)
            .body(())?;
        *req.headers_mut() = self.headers;
        Ok(req)
    }
}

/// Idempotent and without a body: safe to send again after a failed connect.
fn retryable<B>(req: &Request<B>) -> bool {
    use http::Method;
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    let h = req.headers();
    let bodyless = !h.contains_key(header::TRANSFER_ENCODING)
        && h.get(CONTENT_LENGTH)
            .is_none_or(|v| v.to_str().is_ok_and(|v| v.trim() == "0"));
    idempotent && bodyless
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` + `Upgrade`).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Copies bytes both ways between an upgraded client and backend until either side closes;
/// the bytes count into the member's statistics. Applies and drains never cut it.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    live: Arc<super::MemberLive>,
) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(%error, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut backend = TokioIo::new(backend);
    match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        Ok((to_backend, to_client)) => {
            live.stats
                .bytes_received
                .fetch_add(to_backend, Ordering::Relaxed);
            live.stats
                .bytes_sent
                .fetch_add(to_client, Ordering::Relaxed);
        }
        Err(error) => tracing::debug!(%error, "tunnel closed with an error"),
    }
}

fn body_too_large(headers: &HeaderMap, max: u64) -> bool {
    max > 0
        && headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|len| len > max)
}

/// The request to send to `upstream`: the target URL of §3.10 step 6 (with `fallback_query`
/// when the request has none) and the forwarding headers.
fn upstream_request(
    info: &RequestInfo,
    pool: &Pool,
    upstream: &Upstream,
    fallback_query: Option<&str>,
    mut parts: http::request::Parts,
    body: UpstreamBody,
) -> Option<Request<UpstreamBody>> {
    let target = join_path(
        &upstream.base_path,
        &pool.path,
        pool.settings.strip_prefix,
        parts.uri.path(),
        parts.uri.query().or(fallback_query),
    );
    parts.uri = Uri::builder()
        .scheme(upstream.scheme)
        .authority(upstream.authority.as_str())
        .path_and_query(target)
        .build()
        .ok()?;
    parts.version = Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    let host_value = if pool.settings.preserve_host {
        HeaderValue::from_str(&info.host_raw).ok()?
    } else {
        HeaderValue::from_str(&upstream.host_header).ok()?
    };
    headers.insert(HOST, host_value);
    let ip = info.peer.ip().to_string();
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
        _ => ip.clone(),
    };
    headers.insert(
        X_FORWARDED_FOR.clone(),
        HeaderValue::from_str(&forwarded_for).ok()?,
    );
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    headers.insert(
        X_FORWARDED_HOST.clone(),
        HeaderValue::from_str(&info.host_raw).ok()?,
    );
    headers.insert(X_REAL_IP.clone(), HeaderValue::from_str(&ip).ok()?);
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
        let proxy = tower::service_fn(move |req| {
            let engine = engine.clone();
            async move { Ok::<_, Infallible>(engine.handle(peer, req).await) }
        });
        let service = tower::ServiceBuilder::new()
            .map_response(|resp: Response<CompressionBody<ProxyBody>>| {
                let live = resp.extensions().get::<SentBy>().map(|s| s.0.clone());
                resp.map(|body| CountSent::new(body, live))
            })
            .layer(
                CompressionLayer::new()
                    .br(true)
                    .gzip(true)
                    .no_deflate()
                    .no_zstd()
                    .compress_when(RouteCompression),
            )
            .service(proxy);
        let service = TowerToHyperService::new(service);
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
