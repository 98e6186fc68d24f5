//! The proxy's own responses (§3.10 "Built-in pages"): status, code, text, and a JSON or HTML
//! body chosen by the request's `Accept`.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// One built-in page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    InvalidHost,
    WebsocketRefused,
    NoRoute,
    BodyTooLarge,
    RateLimited,
    BadGateway,
    NoBackend,
    Maintenance,
    GatewayTimeout,
}

impl Page {
    /// Status, code and message.
    pub fn parts(self) -> (StatusCode, &'static str, &'static str) {
        use StatusCode as S;
        match self {
            Page::InvalidHost => (S::BAD_REQUEST, "invalid_argument", "invalid host"),
            Page::WebsocketRefused => (S::BAD_REQUEST, "invalid_argument", "websocket not allowed"),
            Page::NoRoute => (S::NOT_FOUND, "not_found", "no route"),
            Page::BodyTooLarge => (
                S::PAYLOAD_TOO_LARGE,
                "resource_exhausted",
                "request body too large",
            ),
            Page::RateLimited => (S::TOO_MANY_REQUESTS, "resource_exhausted", "rate limited"),
            Page::BadGateway => (S::BAD_GATEWAY, "unavailable", "bad gateway"),
            Page::NoBackend => (
                S::SERVICE_UNAVAILABLE,
                "unavailable",
                "no backend available",
            ),
            Page::Maintenance => (S::SERVICE_UNAVAILABLE, "unavailable", "maintenance"),
            Page::GatewayTimeout => (S::GATEWAY_TIMEOUT, "deadline_exceeded", "gateway timeout"),
        }
    }

    /// The response for a request whose `Accept` header is `accept`.
    pub fn render(self, accept: Option<&HeaderValue>) -> Response<Full<Bytes>> {
        let (status, code, message) = self.parts();
        let accept = accept.and_then(|v| v.to_str().ok()).unwrap_or("");
        let (content_type, body) = if prefers_json(accept) {
            (
                "application/json",
                format!(r#"{{"code":"{code}","message":"{message}"}}"#),
            )
        } else {
            (
                "text/html; charset=utf-8",
                format!(
                    "<!DOCTYPE html><html><head><title>{} {message}</title></head>\
                     <body><h1>{} {message}</h1><p>switchyard</p></body></html>\n",
                    status.as_u16(),
                    status.as_u16()
                ),
            )
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

/// Whether `Accept` gives `application/json` a higher q-value than `text/html`, each taking
/// the q of its most specific matching range (`*/*` counts for both).
pub fn prefers_json(accept: &str) -> bool {
    quality(accept, "application", "json") > quality(accept, "text", "html")
}

fn quality(accept: &str, kind: &str, sub: &str) -> f32 {
    let mut best: Option<(u8, f32)> = None;
    for range in accept.split(',') {
        let mut params = range.split(';');
        let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
        let Some((t, s)) = media.split_once('/') else {
            continue;
        };
        let specificity = match (t == kind, s == sub, t == "*", s == "*") {
            (true, true, _, _) => 2,
            (true, false, _, true) => 1,
            (false, _, true, true) => 0,
            _ => continue,
        };
        let q = params
            .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
            .find_map(|v| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if best.is_none_or(|(sp, _)| specificity > sp) {
            best = Some((specificity, q));
        }
    }
    best.map_or(0.0, |(_, q)| q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        assert!(prefers_json("application/json"));
        assert!(!prefers_json(""));
        assert!(!prefers_json("*/*"));
        assert!(!prefers_json("text/html"));
        assert!(prefers_json("text/html;q=0.5, application/json"));
        assert!(prefers_json("application/json, */*;q=0.1"));
        assert!(!prefers_json("application/json;q=0.5, text/html"));
        assert!(prefers_json("application/*, text/html;q=0.9"));
    }

    #[test]
    fn json_body_is_exact() {
        let json = HeaderValue::from_static("application/json");
        let resp = Page::NoRoute.render(Some(&json));
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
    }
}
