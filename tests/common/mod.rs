//! Shared harness for the black-box tests: the whole app on port 0, a pipe client over real
//! TCP, a recording HTTP backend, and a small HTTP client for requests through the proxy.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use switchyard::app::{self, AppHandle};
use switchyard::config::Config;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// How long a test waits for any single reply before failing.
pub const REPLY_WAIT: Duration = Duration::from_secs(10);

/// The whole application, started in-process with every listener on 127.0.0.1:0.
pub struct TestApp {
    pub handle: AppHandle,
}

impl TestApp {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts the app after `adjust` has changed the test configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::for_tests();
        adjust(&mut config);
        let handle = app::start(config).await.expect("app starts");
        TestApp { handle }
    }

    pub fn pipe_addr(&self) -> SocketAddr {
        self.handle.pipe_addr()
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.handle.proxy_addr()
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.handle.api_addr()
    }

    /// A new pipe connection.
    pub async fn pipe(&self) -> Pipe {
        Pipe::connect(self.pipe_addr()).await
    }

    /// Sends one command on a fresh connection and returns its reply (one connection per
    /// command, as some production clients do).
    pub async fn oneshot(&self, line: &str) -> String {
        let mut pipe = self.pipe().await;
        pipe.cmd(line).await
    }
}

/// A pipe protocol client over one real TCP connection.
pub struct Pipe {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Pipe {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect to pipe");
        stream.set_nodelay(true).ok();
        let (r, w) = stream.into_split();
        Pipe {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    /// Writes `line` followed by LF.
    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes()).await;
    }

    /// Writes raw bytes exactly as given.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write to pipe");
        self.writer.flush().await.expect("flush pipe");
    }

    /// Half-closes the writing side (end of stream for the server).
    pub async fn shutdown_write(&mut self) {
        self.writer.shutdown().await.expect("shutdown write");
    }

    /// Reads the next line (without its LF); panics after [`REPLY_WAIT`].
    pub async fn recv(&mut self) -> String {
        match self.try_recv(REPLY_WAIT).await {
            Some(line) => line,
            None => panic!("no line from the pipe within {REPLY_WAIT:?}"),
        }
    }

    /// Reads the next line within `wait`; `None` on timeout or end of stream.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<String> {
        let mut buf = Vec::new();
        match tokio::time::timeout(wait, self.reader.read_until(b'\n', &mut buf)).await {
            Ok(Ok(0)) => None,
            Ok(Ok(_)) => {
                assert_eq!(buf.last(), Some(&b'\n'), "every line ends with LF");
                buf.pop();
                Some(String::from_utf8(buf).expect("replies are UTF-8"))
            }
            Ok(Err(e)) => panic!("read error: {e}"),
            Err(_) => None,
        }
    }

    /// True when the server closed the connection (EOF) within `wait`.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut buf = Vec::new();
        matches!(
            tokio::time::timeout(wait, self.reader.read_until(b'\n', &mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// Sends a command and returns its one reply line.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(line).await;
        self.recv().await
    }

    /// REGISTERs `service`/`instance` and returns the session id.
    pub async fn register(&mut self, service: &str, instance: &str) -> String {
        let reply = self
            .cmd(&format!("REGISTER|{service}|{instance}|0|{{}}"))
            .await;
        reply
            .strip_prefix("ACK|")
            .unwrap_or_else(|| panic!("REGISTER failed: {reply}"))
            .to_string()
    }

    /// Stages one route and returns its id.
    pub async fn add_route(
        &mut self,
        sid: &str,
        domains: &str,
        path: &str,
        backend: &str,
    ) -> String {
        let reply = self
            .cmd(&format!("ROUTE_ADD|{sid}|{domains}|{path}|{backend}|0"))
            .await;
        reply
            .strip_prefix("ROUTE_OK|")
            .unwrap_or_else(|| panic!("ROUTE_ADD failed: {reply}"))
            .to_string()
    }

    /// CONFIG_APPLY that must succeed.
    pub async fn apply(&mut self, sid: &str) {
        let reply = self.cmd(&format!("CONFIG_APPLY|{sid}")).await;
        assert_eq!(reply, "OK", "CONFIG_APPLY");
    }
}

/// Sends `line` and asserts its one reply.
pub async fn expect(pipe: &mut Pipe, line: &str, want: &str) {
    assert_eq!(pipe.cmd(line).await, want, "reply to {line}");
}

/// REGISTERs and turns the default health check off, so backends see only proxied requests.
pub async fn register_quiet(pipe: &mut Pipe, service: &str, instance: &str) -> String {
    let sid = pipe.register(service, instance).await;
    expect(
        pipe,
        &format!("OPTIONS_SET|{sid}|ALL|health_check_interval|0"),
        "OPTIONS_OK",
    )
    .await;
    sid
}

/// Parses the JSON payload after the first `|` of a reply whose token is `token`.
pub fn payload(reply: &str, token: &str) -> serde_json::Value {
    let json = reply
        .strip_prefix(token)
        .and_then(|r| r.strip_prefix('|'))
        .unwrap_or_else(|| panic!("expected {token}|…, got {reply}"));
    serde_json::from_str(json).unwrap_or_else(|e| panic!("bad JSON in {reply}: {e}"))
}

/// What a [`Backend`] saw of one request.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    /// Path and query exactly as received.
    pub uri: String,
    pub headers: HashMap<String, String>,
    pub body: Bytes,
}

/// A real HTTP/1.1 backend on 127.0.0.1:0 that records every request and answers 200 with
/// the body `<name> <path-and-query>` and the header `x-backend: <name>`.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, |_req| None).await
    }

    /// Like [`Backend::start`], but `answer` may replace the response (status, extra headers,
    /// body) for a request.
    pub async fn start_with(
        name: &str,
        answer: impl Fn(&SeenRequest) -> Option<(u16, Vec<(String, String)>, String)>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let seen: Arc<Mutex<Vec<SeenRequest>>> = Arc::default();
        let answer = Arc::new(answer);
        let name_owned = name.to_string();
        let seen_task = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let seen = seen_task.clone();
                let answer = answer.clone();
                let name = name_owned.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        let answer = answer.clone();
                        let name = name.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let uri = parts
                                .uri
                                .path_and_query()
                                .map(|p| p.as_str().to_string())
                                .unwrap_or_default();
                            let mut headers = HashMap::new();
                            for (k, v) in parts.headers.iter() {
                                let v = String::from_utf8_lossy(v.as_bytes()).to_string();
                                headers
                                    .entry(k.as_str().to_string())
                                    .and_modify(|old: &mut String| {
                                        old.push_str(", ");
                                        old.push_str(&v)
                                    })
                                    .or_insert(v);
                            }
                            let seen_req = SeenRequest {
                                method: parts.method.to_string(),
                                uri: uri.clone(),
                                headers,
                                body,
                            };
                            let custom = answer(&seen_req);
                            seen.lock().unwrap().push(seen_req);
                            let mut resp = Response::builder().header("x-backend", name.as_str());
                            let (status, body) = match custom {
                                Some((status, extra, body)) => {
                                    for (k, v) in extra {
                                        resp = resp.header(k, v);
                                    }
                                    (status, body)
                                }
                                None => (200, format!("{name} {uri}")),
                            };
                            Ok::<_, std::convert::Infallible>(
                                resp.status(status)
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend {
            addr,
            name: name.to_string(),
            seen,
            task,
        }
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response read through the proxy.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one HTTP/1.1 request over a new connection to `addr` and reads the whole response.
/// `host` = None sends no Host header at all.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    host: Option<&str>,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("connect to proxy");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path);
    if let Some(host) = host {
        req = req.header("host", host);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let resp = tokio::time::timeout(REPLY_WAIT, sender.send_request(req))
        .await
        .expect("response in time")
        .expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).to_string(),
    }
}

/// `GET path` with `Host: host` through the proxy.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    http_request(addr, "GET", Some(host), path, &[], "").await
}

/// Polls `check` until it returns true, at most [`REPLY_WAIT`].
pub async fn wait_until<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + REPLY_WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
