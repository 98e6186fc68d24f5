//! The registry's value types and their validated constructors (PROTOCOL §1.4, §4.1, §4.6–§4.17).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::error::{echo, Error, Result};

/// Limits of the field rules that PROTOCOL fixes (the configurable limits live in `Limits`).
pub const MAX_DOMAINS: usize = 32;
pub const MAX_PATH_BYTES: usize = 1024;
pub const MAX_URL_BYTES: usize = 2048;
pub const MAX_HEADER_NAME_BYTES: usize = 128;
pub const MAX_HEADER_VALUE_BYTES: usize = 4096;
pub const MAX_OPTION_KEY_BYTES: usize = 128;
pub const MAX_METADATA_BYTES: usize = 8192;

/// A route id: `r` + decimal digits, allocated from one registry-wide counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(pub u64);

impl RouteId {
    /// Parses the canonical form only: `r01` names no route (ids compare as exact strings).
    pub fn parse(text: &str) -> Option<RouteId> {
        let digits = text.strip_prefix('r')?;
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || (digits.len() > 1 && digits.starts_with('0'))
        {
            return None;
        }
        digits.parse().ok().map(RouteId)
    }

    /// Whether `text` has the shape `r[0-9]+` (a route-id item in maintenance targets, §6).
    pub fn looks_like(text: &str) -> bool {
        text.strip_prefix('r')
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    }
}

impl fmt::Display for RouteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// The target of a setting: the session-wide default or one route. `All` sorts first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    All,
    Route(RouteId),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::All => f.write_str("ALL"),
            Target::Route(id) => id.fmt(f),
        }
    }
}

/// PROTOCOL §1.4 durations: bare seconds (`30`, `1.5`) or `<number><unit>` groups.
pub fn parse_duration(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    if let Some(nanos) = decimal_scaled(text, 1_000_000_000) {
        return nanos_to_duration(nanos);
    }
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        total = total.checked_add(decimal_scaled(number, scale)?)?;
        rest = after;
    }
    nanos_to_duration(total)
}

/// `DIGITS[.DIGITS]` or `.DIGITS` times `scale`, truncated to an integer.
fn decimal_scaled(number: &str, scale: u128) -> Option<u128> {
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (number, None),
    };
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !digits_ok(int) || int.len() > 20 {
        return None;
    }
    match frac {
        None if int.is_empty() => return None,
        Some(f) if f.is_empty() || !digits_ok(f) => return None,
        _ => {}
    }
    let whole: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut value = whole.checked_mul(scale)?;
    if let Some(f) = frac {
        let mut place = scale;
        for d in f.bytes() {
            place /= 10;
            if place == 0 {
                break;
            }
            value = value.checked_add(u128::from(d - b'0') * place)?;
        }
    }
    Some(value)
}

fn nanos_to_duration(nanos: u128) -> Option<Duration> {
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// A duration within `[min, max]`, else `None`.
pub fn duration_in(text: &str, min: Duration, max: Duration) -> Option<Duration> {
    parse_duration(text).filter(|d| *d >= min && *d <= max)
}

/// PROTOCOL §1.4 booleans, case-insensitive; anything else is an error.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// PROTOCOL §1.4 integers: `-?[0-9]+` within `[min, max]`.
pub fn parse_int(text: &str, min: i64, max: i64) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<i64>().ok().filter(|v| *v >= min && *v <= max)
}

/// PROTOCOL §1.4 sizes: integer bytes with an optional `K`/`M`/`G` and an optional `B`.
pub fn parse_size(text: &str) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let s = lower.strip_suffix('b').unwrap_or(&lower);
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' => (&s[..s.len() - 1], 10),
        b'm' => (&s[..s.len() - 1], 20),
        b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// Splits a comma-separated list: items trimmed, empty ones dropped (§1.3).
pub fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(|s| s.trim_matches([' ', '\t']))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// `service_name`: 1–64 of `[A-Za-z0-9._-]`, the first alphanumeric.
pub fn validate_service_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    ok.then_some(())
        .ok_or_else(|| Error::invalid("invalid service name"))
}

/// `instance_name`: 0–128 of `[A-Za-z0-9._:@-]`.
pub fn validate_instance_name(name: &str) -> Result<()> {
    let ok = name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b));
    ok.then_some(())
        .ok_or_else(|| Error::invalid("invalid instance name"))
}

fn is_ldh_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn is_host_name(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_ldh_label)
}

/// Normalises one domain item of §4.6 (lower case, no trailing dot), or `None` when invalid.
pub fn normalize_domain(item: &str) -> Option<String> {
    let lower = item.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.is_empty() || !name.is_ascii() {
        return None;
    }
    if let Some(base) = name.strip_prefix("*.") {
        return (base.contains('.') && is_host_name(base)).then(|| name.to_string());
    }
    (name.parse::<Ipv4Addr>().is_ok() || is_host_name(name)).then(|| name.to_string())
}

/// The domains field of §4.6: items checked in order, then their number.
pub fn parse_domains(items: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let item = item.trim_matches([' ', '\t']);
        if item.is_empty() {
            continue;
        }
        let domain =
            normalize_domain(item).ok_or_else(|| Error::invalid_value("invalid domain", item))?;
        if !out.contains(&domain) {
            out.push(domain);
        }
    }
    if out.is_empty() {
        return Err(Error::invalid("no domains specified"));
    }
    if out.len() > MAX_DOMAINS {
        return Err(Error::invalid("too many domains"));
    }
    Ok(out)
}

fn is_unreserved_or_sub_delim(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b)
}

/// Bytes of `s` are path characters (pchar or `/`, extra allowed) with well-formed escapes.
fn path_chars_ok(s: &str, extra: &[u8]) -> bool {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |j: usize| bytes.get(j).is_some_and(|h| h.is_ascii_hexdigit());
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
            continue;
        }
        if !(b == b'/' || is_unreserved_or_sub_delim(b) || extra.contains(&b)) {
            return false;
        }
        i += 1;
    }
    true
}

fn segments_ok(path: &str) -> bool {
    path[1..]
        .split('/')
        .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// Normalises a route path (§4.6): the trailing `/` removed unless the path is `/`.
pub fn parse_route_path(path: &str) -> Result<String> {
    if path.is_empty() {
        return Err(Error::invalid("path cannot be empty"));
    }
    let bad = || Error::invalid_value("invalid path", path);
    if !path.starts_with('/')
        || path.len() > MAX_PATH_BYTES
        || path.contains("//")
        || !path_chars_ok(path, b"")
    {
        return Err(bad());
    }
    let trimmed = if path.len() > 1 {
        path.strip_suffix('/').unwrap_or(path)
    } else {
        path
    };
    if trimmed != "/" && !segments_ok(trimmed) {
        return Err(bad());
    }
    Ok(trimmed.to_string())
}

/// A health-check path (§4.15, option `health_check_path`): route path rules, a query allowed,
/// a trailing `/` kept. `None` when invalid.
pub fn parse_check_path(path: &str) -> Option<String> {
    let (p, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    if !p.starts_with('/') || p.len() > MAX_PATH_BYTES || !path_chars_ok(p, b"") {
        return None;
    }
    let inner = p.strip_suffix('/').unwrap_or(p);
    if !inner.is_empty() && !segments_ok(inner) {
        return None;
    }
    if let Some(q) = query {
        if !path_chars_ok(q, b"?") {
            return None;
        }
    }
    Some(path.to_string())
}

/// URL schemes a backend may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
    Ws,
    Wss,
}

impl Scheme {
    /// Whether the backend is reached over TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Https | Scheme::Wss)
    }

    /// The HTTP scheme the proxy dials (`ws` → `http`, `wss` → `https`).
    pub fn http(self) -> &'static str {
        if self.is_tls() {
            "https"
        } else {
            "http"
        }
    }
}

/// A backend URL (§4.6), kept exactly as sent and parsed into what the proxy dials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    /// As sent, after trimming: what every reply and event reports.
    pub raw: String,
    pub scheme: Scheme,
    /// Host as written, IPv6 in brackets.
    pub host: String,
    /// The explicit port, if any.
    pub port: Option<u16>,
    /// The base path (possibly empty).
    pub path: String,
}

impl BackendUrl {
    /// Parses a backend URL, `None` when it breaks §4.6.
    pub fn parse(raw: &str) -> Option<BackendUrl> {
        Self::parse_with(raw, &["http", "https", "ws", "wss"])
    }

    /// Parses a URL restricted to the given schemes (maintenance pages: `http`/`https`).
    pub fn parse_with(raw: &str, schemes: &[&str]) -> Option<BackendUrl> {
        if raw.len() > MAX_URL_BYTES || !raw.is_ascii() {
            return None;
        }
        let (scheme_text, rest) = raw.split_once("://")?;
        let lower = scheme_text.to_ascii_lowercase();
        if !schemes.contains(&lower.as_str()) {
            return None;
        }
        let scheme = match lower.as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "ws" => Scheme::Ws,
            _ => Scheme::Wss,
        };
        if rest.contains(['?', '#', '@']) {
            return None;
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (host, port) = split_host_port(authority)?;
        if !path.is_empty() && !path_chars_ok(path, b"") {
            return None;
        }
        Some(BackendUrl {
            raw: raw.to_string(),
            scheme,
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// `host:port` to dial, the scheme's default port when none is written.
    pub fn authority(&self) -> String {
        let port = self
            .port
            .unwrap_or(if self.scheme.is_tls() { 443 } else { 80 });
        format!("{}:{}", self.host, port)
    }

    /// The host as written, without IPv6 brackets (what the allow-list and messages name).
    pub fn host_name(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The base path without one trailing `/` (the prefix of §3.10 step 6's join).
    pub fn base_path(&self) -> &str {
        self.path.strip_suffix('/').unwrap_or(&self.path)
    }
}

fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port_text) = if let Some(inner) = authority.strip_prefix('[') {
        let end = inner.find(']')?;
        inner[..end].parse::<Ipv6Addr>().ok()?;
        let after = &inner[end + 1..];
        let host = &authority[..end + 2];
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    if !host.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return None;
    }
    let port = match port_text {
        None => None,
        Some(p) => {
            let v = parse_int(p, 1, 65535).filter(|_| !p.starts_with('-'))?;
            Some(v as u16)
        }
    };
    Some((host, port))
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Response headers a route may not set (§4.11).
const FORBIDDEN_HEADERS: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "content-encoding",
];

/// A header name for `HEADERS_SET`/`HEADERS_REMOVE`: a token of ≤ 128 bytes.
pub fn validate_header_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_HEADER_NAME_BYTES || !name.bytes().all(is_tchar) {
        return Err(Error::invalid("invalid header name"));
    }
    Ok(())
}

/// A header name that may be set (not hop-by-hop or framing).
pub fn validate_settable_header(name: &str) -> Result<()> {
    validate_header_name(name)?;
    if FORBIDDEN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(Error::invalid_value("header not allowed", name));
    }
    Ok(())
}

/// A header value: ≤ 4,096 bytes of visible ASCII, space and tab.
pub fn validate_header_value(value: &str) -> Result<()> {
    let ok = value.len() <= MAX_HEADER_VALUE_BYTES
        && value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) || b == b'\t');
    ok.then_some(())
        .ok_or_else(|| Error::invalid("invalid header value"))
}

/// `backend_protocol` values (§4.13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendProtocol {
    #[default]
    Auto,
    Http1,
    H2,
}

/// Checks the value of a known option key; unknown keys are accepted as they are (§4.13).
pub fn validate_option(key: &str, value: &str) -> Result<()> {
    let ms = Duration::from_millis;
    let ok = match key {
        "timeout" => duration_in(value, ms(100), Duration::from_secs(3600)).is_some(),
        "connect_timeout" => duration_in(value, ms(100), Duration::from_secs(60)).is_some(),
        "health_check_interval" => {
            parse_duration(value).is_some_and(|d| d.is_zero())
                || duration_in(value, ms(100), Duration::from_secs(3600)).is_some()
        }
        "health_check_timeout" => duration_in(value, ms(10), Duration::from_secs(60)).is_some(),
        "health_check_path" => parse_check_path(value).is_some(),
        "max_body_size" => parse_size(value).is_some_and(|s| s <= 1 << 30),
        "backend_protocol" => matches!(value, "auto" | "http1" | "h2"),
        "websocket" | "compression" | "http2" | "http3" | "strip_prefix" | "preserve_host"
        | "tls_skip_verify" => parse_bool(value).is_some(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid value for {}: {}",
            echo(key),
            echo(value)
        )))
    }
}

/// Whether `key` is one of the option keys of §4.13.
pub fn is_known_option(key: &str) -> bool {
    matches!(
        key,
        "timeout"
            | "connect_timeout"
            | "websocket"
            | "compression"
            | "http2"
            | "backend_protocol"
            | "http3"
            | "health_check_interval"
            | "health_check_timeout"
            | "health_check_path"
            | "max_body_size"
            | "strip_prefix"
            | "preserve_host"
            | "tls_skip_verify"
    )
}

/// A health check of §4.15.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// A rate limit of §4.16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSpec {
    pub requests: u32,
    pub window: Duration,
}

/// A circuit breaker of §4.17.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSpec {
    pub threshold: u32,
    pub timeout: Duration,
    pub half_open_requests: u32,
}

/// `HEALTH_SET` fields: `None` drops the target's check (interval `0`).
pub fn parse_health(path: &str, interval: &str, timeout: &str) -> Result<Option<HealthSpec>> {
    let zero = parse_duration(interval).is_some_and(|d| d.is_zero());
    let path_ok = if zero && path.is_empty() {
        None
    } else {
        Some(parse_check_path(path).ok_or_else(|| Error::invalid("invalid health path"))?)
    };
    if zero {
        return Ok(None);
    }
    let interval = duration_in(
        interval,
        Duration::from_millis(100),
        Duration::from_secs(3600),
    )
    .ok_or_else(|| Error::invalid("invalid interval"))?;
    let timeout = duration_in(timeout, Duration::from_millis(10), Duration::from_secs(60))
        .filter(|t| *t <= interval)
        .ok_or_else(|| Error::invalid("invalid timeout"))?;
    Ok(Some(HealthSpec {
        path: path_ok.unwrap_or_default(),
        interval,
        timeout,
    }))
}

/// `RATELIMIT_SET` fields: `None` drops the target's limit (requests `0`).
pub fn parse_ratelimit(requests: &str, window: &str) -> Result<Option<RateLimitSpec>> {
    let requests =
        parse_int(requests, 0, 1_000_000).ok_or_else(|| Error::invalid("invalid requests"))?;
    if requests == 0 {
        return Ok(None);
    }
    let window = duration_in(
        window,
        Duration::from_millis(100),
        Duration::from_secs(86_400),
    )
    .ok_or_else(|| Error::invalid("invalid window"))?;
    Ok(Some(RateLimitSpec {
        requests: requests as u32,
        window,
    }))
}

/// `CIRCUIT_BREAKER_SET` fields: `None` drops the target's breaker (threshold `0`).
pub fn parse_breaker(
    threshold: &str,
    timeout: &str,
    half_open: &str,
) -> Result<Option<BreakerSpec>> {
    let threshold =
        parse_int(threshold, 0, 10_000).ok_or_else(|| Error::invalid("invalid threshold"))?;
    if threshold == 0 {
        return Ok(None);
    }
    let timeout = duration_in(
        timeout,
        Duration::from_millis(100),
        Duration::from_secs(3600),
    )
    .ok_or_else(|| Error::invalid("invalid timeout"))?;
    let half_open = parse_int(half_open, 1, 1000)
        .ok_or_else(|| Error::invalid("invalid half_open_requests"))?;
    Ok(Some(BreakerSpec {
        threshold: threshold as u32,
        timeout,
        half_open_requests: half_open as u32,
    }))
}

/// The route fields of §4.6, validated and normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Normalised, duplicates removed, in the order given.
    pub domains: Vec<String>,
    /// Normalised (§4.6).
    pub path: String,
    pub backend: BackendUrl,
    pub priority: i32,
}

impl RouteSpec {
    /// Route fields compare as stored, domains as a set (§3.8).
    pub fn same_fields(&self, other: &RouteSpec) -> bool {
        self.path == other.path
            && self.backend.raw == other.backend.raw
            && self.priority == other.priority
            && self.domains.len() == other.domains.len()
            && self.domains.iter().all(|d| other.domains.contains(d))
    }

    /// The (domain, path) pairs of the route.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.domains
            .iter()
            .map(|d| (d.as_str(), self.path.as_str()))
    }
}

/// Unvalidated route fields as a front received them.
#[derive(Debug, Clone, Default)]
pub struct RouteInput {
    /// Items (a pipe front splits its comma list; empty items are dropped here).
    pub domains: Vec<String>,
    pub path: String,
    pub backend_url: String,
    /// Empty = 0.
    pub priority: String,
}

/// Parses a backend URL field (§4.6).
pub fn parse_backend(text: &str) -> Result<BackendUrl> {
    BackendUrl::parse(text).ok_or_else(|| Error::invalid("invalid backend url format"))
}

/// Parses a priority field (§4.6): empty = 0.
pub fn parse_priority(text: &str) -> Result<i32> {
    if text.is_empty() {
        return Ok(0);
    }
    parse_int(text, -10_000, 10_000)
        .map(|p| p as i32)
        .ok_or_else(|| Error::invalid("invalid priority"))
}

impl RouteInput {
    /// Validates the fields in the order of §4.6.
    pub fn validate(&self) -> Result<RouteSpec> {
        let domains = parse_domains(&self.domains)?;
        let path = parse_route_path(self.path.trim_matches([' ', '\t']))?;
        let backend = parse_backend(self.backend_url.trim_matches([' ', '\t']))?;
        let priority = parse_priority(self.priority.trim_matches([' ', '\t']))?;
        Ok(RouteSpec {
            domains,
            path,
            backend,
            priority,
        })
    }
}

/// One element of a JSON route list (`ROUTE_ADD_BULK`, §4.7): a missing or `null` key is an
/// empty value; a key of another JSON type → `invalid json` (the caller adds `route <i>: `).
pub fn route_input_from_json(item: &serde_json::Value) -> Result<RouteInput> {
    use serde_json::Value;
    let bad = || Error::invalid("invalid json");
    let obj = item.as_object().ok_or_else(bad)?;
    let text = |key: &str| -> Result<Option<String>> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad()),
        }
    };
    let domains = match obj.get("domains") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => split_list(s),
        Some(Value::Array(items)) => items
            .iter()
            .map(|d| d.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<_>>()?,
        Some(_) => return Err(bad()),
    };
    let path = text("path")?.unwrap_or_default();
    let backend_url = match text("backend_url")? {
        Some(url) => url,
        None => text("backend")?.unwrap_or_default(),
    };
    let priority = match obj.get("priority") {
        None | Some(Value::Null) => String::new(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(bad()),
    };
    Ok(RouteInput {
        domains,
        path,
        backend_url,
        priority,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_ids_are_exact() {
        assert_eq!(RouteId::parse("r1"), Some(RouteId(1)));
        assert_eq!(RouteId::parse("r42"), Some(RouteId(42)));
        assert_eq!(RouteId::parse("r01"), None);
        assert_eq!(RouteId::parse("r"), None);
        assert_eq!(RouteId::parse("R1"), None);
        assert_eq!(RouteId::parse("r1x"), None);
        assert!(RouteId::looks_like("r01"));
        assert!(RouteId(2) < RouteId(10));
        assert!(Target::All < Target::Route(RouteId(1)));
    }

    #[test]
    fn durations_follow_the_grammar() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let cases: &[(&str, Option<Duration>)] = &[
            ("30", Some(s(30))),
            ("1.5", Some(ms(1500))),
            (".5", Some(ms(500))),
            ("0", Some(s(0))),
            ("300ms", Some(ms(300))),
            ("30s", Some(s(30))),
            ("1m", Some(s(60))),
            ("1h30m", Some(s(5400))),
            ("2h45m30.5s", Some(ms(9_930_500))),
            ("10us", Some(Duration::from_micros(10))),
            ("10µs", Some(Duration::from_micros(10))),
            ("7ns", Some(Duration::from_nanos(7))),
            ("30S", None),
            ("-1", None),
            ("1d", None),
            ("", None),
            (" 1", None),
            ("1 s", None),
            ("1.", None),
            (".", None),
            ("s", None),
            ("1.5.2", None),
            ("+1", None),
            ("1e3", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), *want, "{text:?}");
        }
    }

    #[test]
    fn booleans_ints_sizes() {
        assert_eq!(parse_bool("YES"), Some(true));
        assert_eq!(parse_bool("Off"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
        assert_eq!(parse_bool(""), None);
        assert_eq!(parse_int("-5", -10, 10), Some(-5));
        assert_eq!(parse_int("+5", -10, 10), None);
        assert_eq!(parse_int("11", -10, 10), None);
        assert_eq!(parse_int("1.5", -10, 10), None);
        assert_eq!(parse_size("512k"), Some(512 * 1024));
        assert_eq!(parse_size("10M"), Some(10 << 20));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("100b"), Some(100));
        assert_eq!(parse_size("k"), None);
        assert_eq!(parse_size("1T"), None);
        assert_eq!(parse_size("-1"), None);
    }

    #[test]
    fn domains() {
        let ok = |s: &str| normalize_domain(s);
        assert_eq!(ok("Shop.Example.COM."), Some("shop.example.com".into()));
        assert_eq!(ok("*.example.com"), Some("*.example.com".into()));
        assert_eq!(ok("10.0.0.1"), Some("10.0.0.1".into()));
        assert_eq!(ok("localhost"), Some("localhost".into()));
        for bad in [
            "-a.com",
            "a-.com",
            "a..b",
            "a.com:80",
            "http://a.com",
            "*.com",
            "*",
            "a_b.com",
            "a.com/x",
            "bücher.de",
            "*.*.a.com",
            ".",
        ] {
            assert_eq!(ok(bad), None, "{bad}");
        }
        assert_eq!(ok(&format!("{}.com", "a".repeat(64))), None);
        assert!(ok(&format!("{}.com", "a".repeat(63))).is_some());
        let list = |s: &str| parse_domains(&split_list(s)).map_err(|e| e.to_string());
        assert_eq!(
            list("a.com, ,A.com,b.com"),
            Ok(vec!["a.com".into(), "b.com".into()])
        );
        assert_eq!(list(" , "), Err("no domains specified".into()));
        assert_eq!(list("a.com,-x"), Err("invalid domain: -x".into()));
        let many: Vec<String> = (0..33).map(|i| format!("d{i}.com")).collect();
        assert_eq!(list(&many.join(",")), Err("too many domains".into()));
    }

    #[test]
    fn paths() {
        let p = |s: &str| parse_route_path(s).map_err(|e| e.to_string());
        assert_eq!(p("/"), Ok("/".into()));
        assert_eq!(p("/api/"), Ok("/api".into()));
        assert_eq!(p("/a%2Fb/c~d"), Ok("/a%2Fb/c~d".into()));
        assert_eq!(p(""), Err("path cannot be empty".into()));
        for bad in [
            "api", "/a//b", "/a/../b", "/a/./b", "/a?x", "/a b", "/a#b", "/%zz", "//",
        ] {
            assert_eq!(p(bad), Err(format!("invalid path: {bad}")), "{bad}");
        }
        assert!(p(&format!("/{}", "a".repeat(1023))).is_ok());
        assert!(p(&format!("/{}", "a".repeat(1024))).is_err());
        assert_eq!(
            parse_check_path("/health/?full=1"),
            Some("/health/?full=1".into())
        );
        assert_eq!(parse_check_path("/"), Some("/".into()));
        assert_eq!(parse_check_path("health"), None);
        assert_eq!(parse_check_path("/a b"), None);
    }

    #[test]
    fn backend_urls() {
        let u = BackendUrl::parse("HTTP://Example.com:8080/v1/").expect("valid");
        assert_eq!(u.scheme, Scheme::Http);
        assert_eq!(u.host, "Example.com");
        assert_eq!(u.port, Some(8080));
        assert_eq!(u.base_path(), "/v1");
        assert_eq!(u.raw, "HTTP://Example.com:8080/v1/");
        let v6 = BackendUrl::parse("wss://[::1]:9000").expect("valid");
        assert_eq!(v6.authority(), "[::1]:9000");
        assert_eq!(v6.host_name(), "::1");
        assert_eq!(
            BackendUrl::parse("https://h").expect("valid").authority(),
            "h:443"
        );
        for bad in [
            "ftp://x",
            "http://",
            "http://u:p@h",
            "http://h?q=1",
            "http://h#f",
            "http://h:0",
            "http://h:70000",
            "http://h:",
            "http:/h",
            "h:80",
            "http://[zz]:1",
            "http://h h",
            "http://h/a b",
        ] {
            assert_eq!(BackendUrl::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn headers_and_options() {
        assert!(validate_settable_header("X-Frame-Options").is_ok());
        assert_eq!(
            validate_settable_header("Bad Name")
                .unwrap_err()
                .to_string(),
            "invalid header name"
        );
        assert_eq!(
            validate_settable_header("transfer-encoding")
                .unwrap_err()
                .to_string(),
            "header not allowed: transfer-encoding"
        );
        assert!(validate_header_value("a b\tc").is_ok());
        assert!(validate_header_value("é").is_err());
        assert!(validate_option("timeout", "30").is_ok());
        assert_eq!(
            validate_option("timeout", "50ms").unwrap_err().to_string(),
            "invalid value for timeout: 50ms"
        );
        assert!(validate_option("timeout", "2h").is_err());
        assert!(validate_option("websocket", "maybe").is_err());
        assert!(validate_option("max_body_size", "1G").is_ok());
        assert!(validate_option("max_body_size", "2G").is_err());
        assert!(validate_option("backend_protocol", "h3").is_err());
        assert!(validate_option("health_check_interval", "0").is_ok());
        assert!(validate_option("health_check_interval", "50ms").is_err());
        assert!(validate_option("Timeout", "whatever").is_ok());
    }

    #[test]
    fn health_ratelimit_breaker_fields() {
        let h = |p: &str, i: &str, t: &str| parse_health(p, i, t).map_err(|e| e.to_string());
        assert_eq!(
            h("/h", "10s", "2s"),
            Ok(Some(HealthSpec {
                path: "/h".into(),
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(2)
            }))
        );
        assert_eq!(h("", "0", "junk"), Ok(None));
        assert_eq!(h("bad", "0", ""), Err("invalid health path".into()));
        assert_eq!(h("/h", "50ms", "10ms"), Err("invalid interval".into()));
        assert_eq!(h("/h", "1s", "2s"), Err("invalid timeout".into()));
        assert_eq!(h("/h", "30S", "1s"), Err("invalid interval".into()));
        let r = |a: &str, b: &str| parse_ratelimit(a, b).map_err(|e| e.to_string());
        assert_eq!(r("0", "junk"), Ok(None));
        assert_eq!(r("-1", "1s"), Err("invalid requests".into()));
        assert_eq!(r("1000001", "1s"), Err("invalid requests".into()));
        assert_eq!(r("10", "50ms"), Err("invalid window".into()));
        let b = |a: &str, t: &str, h: &str| parse_breaker(a, t, h).map_err(|e| e.to_string());
        assert_eq!(b("0", "", ""), Ok(None));
        assert_eq!(b("10001", "1s", "1"), Err("invalid threshold".into()));
        assert_eq!(b("5", "1s", "0"), Err("invalid half_open_requests".into()));
        assert_eq!(b("5", "2h", "1"), Err("invalid timeout".into()));
    }

    #[test]
    fn json_route_elements() {
        let v = |s: &str| serde_json::from_str::<serde_json::Value>(s).expect("json");
        let i = route_input_from_json(&v(
            r#"{"domains":"a.com, b.com","path":"/","backend":"http://x:1","backend_url":"http://y:1","priority":3,"extra":1}"#,
        ))
        .expect("valid");
        assert_eq!(i.domains, vec!["a.com", "b.com"]);
        assert_eq!(i.backend_url, "http://y:1");
        assert_eq!(i.priority, "3");
        let i = route_input_from_json(&v(r#"{"domains":null}"#)).expect("nulls are empty");
        assert_eq!(
            i.validate().unwrap_err().to_string(),
            "no domains specified"
        );
        for bad in [
            r#"{"priority":"1"}"#,
            r#"{"domains":[1]}"#,
            r#"{"path":5}"#,
            "1",
            "[]",
        ] {
            assert_eq!(
                route_input_from_json(&v(bad)).unwrap_err().to_string(),
                "invalid json",
                "{bad}"
            );
        }
    }

    #[test]
    fn route_input_checks_fields_in_order() {
        let input = RouteInput {
            domains: vec!["-bad".into()],
            path: "nope".into(),
            backend_url: "ftp://x".into(),
            priority: "x".into(),
        };
        assert_eq!(
            input.validate().unwrap_err().to_string(),
            "invalid domain: -bad"
        );
        let input = RouteInput {
            domains: vec!["a.com".into()],
            path: "/x/".into(),
            backend_url: "http://b:1".into(),
            priority: "".into(),
        };
        let spec = input.validate().expect("valid");
        assert_eq!(spec.path, "/x");
        assert_eq!(spec.priority, 0);
    }
}
