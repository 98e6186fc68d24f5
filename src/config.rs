//! Settings: flags override `SWITCHYARD_*` environment variables, which override an optional
//! TOML file (`--config`), which overrides the built-in defaults. Validated once, at start-up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::registry::model::{parse_duration, parse_size};

/// Command-line flags; every setting is also an environment variable and a TOML key.
#[derive(Debug, Parser, Default)]
#[command(
    name = "switchyard",
    version,
    about = "Service registry and reverse proxy"
)]
pub struct Cli {
    /// TOML file with the same keys as the flags, in snake_case.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the proxy listener [default: 0.0.0.0:8080].
    #[arg(long, env = "SWITCHYARD_PROXY_LISTEN")]
    pub proxy_listen: Option<String>,
    /// Address of the pipe (legacy registry) listener [default: 127.0.0.1:7000].
    #[arg(long, env = "SWITCHYARD_REGISTRY_LISTEN")]
    pub registry_listen: Option<String>,
    /// Address of the gRPC + HTTP API listener [default: 127.0.0.1:7070].
    #[arg(long, env = "SWITCHYARD_API_LISTEN")]
    pub api_listen: Option<String>,
    /// How long a disconnected session keeps its routes [default: 300s].
    #[arg(long, env = "SWITCHYARD_SESSION_GRACE")]
    pub session_grace: Option<String>,
    /// Session lease for lease-mode and gRPC/HTTP sessions [default: 30s].
    #[arg(long, env = "SWITCHYARD_SESSION_LEASE")]
    pub session_lease: Option<String>,
    /// How long staged changes live without a staging command [default: 30m].
    #[arg(long, env = "SWITCHYARD_STAGED_TTL")]
    pub staged_ttl: Option<String>,
    /// Default wait for a backend's response headers [default: 60s].
    #[arg(long, env = "SWITCHYARD_DEFAULT_TIMEOUT")]
    pub default_timeout: Option<String>,
    /// Default connect timeout to backends [default: 5s].
    #[arg(long, env = "SWITCHYARD_DEFAULT_CONNECT_TIMEOUT")]
    pub default_connect_timeout: Option<String>,
    /// Default largest request body [default: 100M].
    #[arg(long, env = "SWITCHYARD_DEFAULT_MAX_BODY_SIZE")]
    pub default_max_body_size: Option<String>,
    /// How long shutdown waits for clients and in-flight requests [default: 5s].
    #[arg(long, env = "SWITCHYARD_SHUTDOWN_WAIT")]
    pub shutdown_wait: Option<String>,
    /// Shared secret every REGISTER must carry (off when unset).
    #[arg(long, env = "SWITCHYARD_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Token for the Admin API and /metrics (the auth token when unset).
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Most live sessions [default: 1024].
    #[arg(long, env = "SWITCHYARD_MAX_SESSIONS")]
    pub max_sessions: Option<String>,
    /// Most staged routes per session [default: 256].
    #[arg(long, env = "SWITCHYARD_MAX_ROUTES_PER_SESSION")]
    pub max_routes_per_session: Option<String>,
    /// Comma-separated CIDRs of proxies whose X-Forwarded-For is believed [default: none].
    #[arg(long, env = "SWITCHYARD_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
    /// Most open pipe connections [default: 1024].
    #[arg(long, env = "SWITCHYARD_MAX_CONNECTIONS")]
    pub max_connections: Option<String>,
    /// Most open pipe connections from one client IP [default: 64].
    #[arg(long, env = "SWITCHYARD_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<String>,
    /// Most open pipe connections attached to one session [default: 64].
    #[arg(long, env = "SWITCHYARD_MAX_CONNECTIONS_PER_SESSION")]
    pub max_connections_per_session: Option<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub proxy_listen: SocketAddr,
    pub registry_listen: SocketAddr,
    pub api_listen: SocketAddr,
    pub session_grace: Duration,
    pub session_lease: Duration,
    pub staged_ttl: Duration,
    pub default_timeout: Duration,
    pub default_connect_timeout: Duration,
    pub default_max_body_size: u64,
    pub shutdown_wait: Duration,
    pub auth_token: Option<String>,
    pub admin_token: Option<String>,
    pub max_sessions: usize,
    pub max_routes_per_session: usize,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_connections_per_session: usize,
}

impl Default for Config {
    fn default() -> Self {
        let addr = |s: &str| s.parse().expect("built-in addresses parse");
        Config {
            proxy_listen: addr("0.0.0.0:8080"),
            registry_listen: addr("127.0.0.1:7000"),
            api_listen: addr("127.0.0.1:7070"),
            session_grace: Duration::from_secs(300),
            session_lease: Duration::from_secs(30),
            staged_ttl: Duration::from_secs(30 * 60),
            default_timeout: Duration::from_secs(60),
            default_connect_timeout: Duration::from_secs(5),
            default_max_body_size: 100 << 20,
            shutdown_wait: Duration::from_secs(5),
            auth_token: None,
            admin_token: None,
            max_sessions: 1024,
            max_routes_per_session: 256,
            trusted_proxies: Vec::new(),
            max_connections: 1024,
            max_connections_per_ip: 64,
            max_connections_per_session: 64,
        }
    }
}

/// A setting that could not be read or parsed; the process exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("invalid value for {key}: {value:?} ({expected})")]
    Value {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("unknown key in config file: {0}")]
    UnknownKey(String),
}

const KEYS: [&str; 18] = [
    "proxy_listen",
    "registry_listen",
    "api_listen",
    "session_grace",
    "session_lease",
    "staged_ttl",
    "default_timeout",
    "default_connect_timeout",
    "default_max_body_size",
    "shutdown_wait",
    "auth_token",
    "admin_token",
    "max_sessions",
    "max_routes_per_session",
    "trusted_proxies",
    "max_connections",
    "max_connections_per_ip",
    "max_connections_per_session",
];

impl Config {
    /// Every listener on 127.0.0.1:0 and otherwise the defaults: what tests start.
    pub fn for_tests() -> Config {
        let local = "127.0.0.1:0".parse().expect("loopback parses");
        Config {
            proxy_listen: local,
            registry_listen: local,
            api_listen: local,
            shutdown_wait: Duration::from_secs(2),
            ..Config::default()
        }
    }

    /// Reads flags, environment and the optional file.
    pub fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => BTreeMap::new(),
        };
        let flags: [(&'static str, Option<String>); 18] = [
            ("proxy_listen", cli.proxy_listen),
            ("registry_listen", cli.registry_listen),
            ("api_listen", cli.api_listen),
            ("session_grace", cli.session_grace),
            ("session_lease", cli.session_lease),
            ("staged_ttl", cli.staged_ttl),
            ("default_timeout", cli.default_timeout),
            ("default_connect_timeout", cli.default_connect_timeout),
            ("default_max_body_size", cli.default_max_body_size),
            ("shutdown_wait", cli.shutdown_wait),
            ("auth_token", cli.auth_token),
            ("admin_token", cli.admin_token),
            ("max_sessions", cli.max_sessions),
            ("max_routes_per_session", cli.max_routes_per_session),
            ("trusted_proxies", cli.trusted_proxies),
            ("max_connections", cli.max_connections),
            ("max_connections_per_ip", cli.max_connections_per_ip),
            (
                "max_connections_per_session",
                cli.max_connections_per_session,
            ),
        ];
        let mut config = Config::default();
        for (key, flag) in flags {
            if let Some(value) = flag.or_else(|| file.get(key).cloned()) {
                config.set(key, value)?;
            }
        }
        Ok(config)
    }

    fn set(&mut self, key: &'static str, value: String) -> Result<(), ConfigError> {
        let bad = |expected| ConfigError::Value {
            key,
            value: value.clone(),
            expected,
        };
        let addr = || value.parse::<SocketAddr>().map_err(|_| bad("ip:port"));
        let duration = || parse_duration(&value).ok_or_else(|| bad("a duration such as 30s"));
        let count = || {
            value
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad("a positive integer"))
        };
        match key {
            "proxy_listen" => self.proxy_listen = addr()?,
            "registry_listen" => self.registry_listen = addr()?,
            "api_listen" => self.api_listen = addr()?,
            "session_grace" => self.session_grace = duration()?,
            "session_lease" => self.session_lease = duration()?,
            "staged_ttl" => self.staged_ttl = duration()?,
            "default_timeout" => self.default_timeout = duration()?,
            "default_connect_timeout" => self.default_connect_timeout = duration()?,
            "default_max_body_size" => {
                self.default_max_body_size =
                    parse_size(&value).ok_or_else(|| bad("a size such as 100M"))?
            }
            "shutdown_wait" => self.shutdown_wait = duration()?,
            "auth_token" => self.auth_token = Some(value).filter(|t| !t.is_empty()),
            "admin_token" => self.admin_token = Some(value).filter(|t| !t.is_empty()),
            "max_sessions" => self.max_sessions = count()?,
            "max_routes_per_session" => self.max_routes_per_session = count()?,
            "trusted_proxies" => {
                self.trusted_proxies = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        s.parse::<ipnet::IpNet>()
                            .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    })
                    .collect::<Result<_, _>>()
                    .map_err(|_| bad("comma-separated CIDRs such as 10.0.0.0/8"))?
            }
            "max_connections" => self.max_connections = count()?,
            "max_connections_per_ip" => self.max_connections_per_ip = count()?,
            "max_connections_per_session" => self.max_connections_per_session = count()?,
            _ => return Err(ConfigError::UnknownKey(key.to_string())),
        }
        Ok(())
    }
}

/// The file's keys as text (strings verbatim, numbers and booleans in TOML form).
fn read_file(path: &PathBuf) -> Result<BTreeMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
        path: path.clone(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Toml {
            path: path.clone(),
            message: e.message().to_string(),
        })?;
    let mut out = BTreeMap::new();
    for (key, value) in table {
        if !KEYS.contains(&key.as_str()) {
            return Err(ConfigError::UnknownKey(key));
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => {
                return Err(ConfigError::Value {
                    key: "config file",
                    value: key,
                    expected: "a string or a number",
                })
            }
        };
        out.insert(key, text);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_and_defaults_fill_the_rest() {
        let dir = std::env::temp_dir().join(format!("switchyard-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "session_grace = \"10s\"\nmax_sessions = 7\napi_listen = \"127.0.0.1:1\"\n",
        )
        .expect("write");
        let cli = Cli::try_parse_from([
            "switchyard",
            "--config",
            path.to_str().expect("utf-8 path"),
            "--api-listen",
            "127.0.0.1:2",
        ])
        .expect("flags parse");
        let c = Config::from_cli(cli).expect("valid");
        assert_eq!(c.session_grace, Duration::from_secs(10));
        assert_eq!(c.max_sessions, 7);
        assert_eq!(c.api_listen.port(), 2);
        assert_eq!(c.proxy_listen.port(), 8080);
        std::fs::write(&path, "bogus = 1\n").expect("write");
        let cli = Cli {
            config: Some(path.clone()),
            ..Cli::default()
        };
        assert!(matches!(
            Config::from_cli(cli),
            Err(ConfigError::UnknownKey(_))
        ));
        let cli = Cli {
            staged_ttl: Some("30S".into()),
            ..Cli::default()
        };
        assert!(matches!(
            Config::from_cli(cli),
            Err(ConfigError::Value { .. })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
