//! Wiring: builds the registry and the engine, binds the three listeners, runs the fronts, and
//! shuts everything down in order. The only module that knows every other one.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use tower::ServiceExt;

use crate::config::Config;
use crate::pipe::{self, PipeSettings};
use crate::proxy::{self, Engine, EngineSettings};
use crate::registry::apply::ProxyDefaults;
use crate::registry::clock::SystemClock;
use crate::registry::{Registry, RegistrySettings};
use crate::shutdown::Shutdown;
use crate::{gateway, grpc};

/// A running Switchyard: its bound addresses and the means to stop it.
pub struct AppHandle {
    proxy_addr: SocketAddr,
    pipe_addr: SocketAddr,
    api_addr: SocketAddr,
    registry: Registry,
    engine: Arc<Engine>,
    shutdown: Shutdown,
    tasks: Vec<JoinHandle<()>>,
}

impl AppHandle {
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    pub fn pipe_addr(&self) -> SocketAddr {
        self.pipe_addr
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The registry every front drives.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The proxy engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn trigger_shutdown(&self) {
        self.shutdown.trigger();
    }

    /// Shuts down gracefully and waits until every listener has finished.
    pub async fn shutdown(self) {
        self.shutdown.trigger();
        self.wait().await;
    }

    /// Waits until every listener has finished (after a shutdown was triggered).
    pub async fn wait(self) {
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "listener task failed");
            }
        }
    }
}

async fn bind(name: &str, addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot bind the {name} listener to {addr}: {e}"),
        )
    })?;
    Ok(listener)
}

/// Binds every listener and starts serving; returns once all of them accept connections.
pub async fn start(config: Config) -> std::io::Result<AppHandle> {
    let shutdown = Shutdown::new();
    let engine = Engine::new(EngineSettings {
        connect_timeout: config.default_connect_timeout,
        trusted_proxies: config.trusted_proxies.clone(),
    });
    let registry = Registry::new(
        engine.clone(),
        Arc::new(SystemClock),
        RegistrySettings {
            max_sessions: config.max_sessions,
            max_routes_per_session: config.max_routes_per_session,
            max_connections_per_session: config.max_connections_per_session,
            staged_ttl: config.staged_ttl,
            session_grace: config.session_grace,
            session_lease: config.session_lease,
            auth_token: config.auth_token.clone(),
            proxy: ProxyDefaults {
                timeout: config.default_timeout,
                connect_timeout: config.default_connect_timeout,
                max_body_size: config.default_max_body_size,
            },
            ..RegistrySettings::default()
        },
        shutdown.clone(),
    );
    let proxy_listener = bind("proxy", config.proxy_listen).await?;
    let pipe_listener = bind("pipe", config.registry_listen).await?;
    let api_listener = bind("api", config.api_listen).await?;
    let proxy_addr = proxy_listener.local_addr()?;
    let pipe_addr = pipe_listener.local_addr()?;
    let api_addr = api_listener.local_addr()?;
    for (name, addr) in [("api", config.api_listen), ("pipe", config.registry_listen)] {
        if !addr.ip().is_loopback() && config.auth_token.is_none() {
            tracing::warn!("the {name} listener is bound to {addr} without an auth token");
        }
    }

    let mut tasks = registry.spawn_background(shutdown.clone());
    tasks.push(tokio::spawn(engine.clone().housekeeping(shutdown.clone())));
    tasks.push(tokio::spawn(proxy::serve(
        engine.clone(),
        proxy_listener,
        shutdown.clone(),
        config.shutdown_wait,
    )));
    tracing::info!("proxy listening on {proxy_addr}");
    tasks.push(tokio::spawn(pipe::serve(
        registry.clone(),
        pipe_listener,
        shutdown.clone(),
        PipeSettings {
            shutdown_wait: config.shutdown_wait,
            max_connections: config.max_connections,
            max_connections_per_ip: config.max_connections_per_ip,
            ..PipeSettings::default()
        },
    )));
    tracing::info!("pipe listening on {pipe_addr}");
    let api = api_service(
        registry.clone(),
        config.auth_token.clone(),
        config.admin_token.clone(),
    )
    .await;
    tasks.push(tokio::spawn(serve_api(api_listener, api, shutdown.clone())));
    tracing::info!("api listening on {api_addr}");

    Ok(AppHandle {
        proxy_addr,
        pipe_addr,
        api_addr,
        registry,
        engine,
        shutdown,
        tasks,
    })
}

/// The api listener's service: gRPC for `application/grpc…` content types, the HTTP gateway
/// for everything else (API.md).
async fn api_service(
    registry: Registry,
    token: Option<String>,
    admin_token: Option<String>,
) -> axum::Router {
    let grpc = grpc::router(
        registry.clone(),
        grpc::Auth {
            token: token.clone(),
            admin_token: admin_token.clone(),
        },
    )
    .await;
    let http = gateway::router(registry, gateway::Auth { token, admin_token });
    let dispatch = tower::service_fn(move |req: axum::extract::Request| {
        let (grpc, http) = (grpc.clone(), http.clone());
        async move {
            let is_grpc = req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/grpc"));
            if is_grpc {
                grpc.oneshot(req).await
            } else {
                http.oneshot(req).await
            }
        }
    });
    axum::Router::new().fallback_service(dispatch)
}

async fn serve_api(listener: TcpListener, router: axum::Router, shutdown: Shutdown) {
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(listener, service)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "api listener failed");
    }
}

/// Runs until `stop` resolves (a signal), then shuts down gracefully. A second `stop`-like
/// signal during the shutdown is the caller's business (main exits at once).
pub async fn run(config: Config, stop: impl Future<Output = ()>) -> std::io::Result<()> {
    let app = start(config).await?;
    stop.await;
    tracing::info!("shutting down");
    app.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
