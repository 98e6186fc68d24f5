//! Result → the exact reply line (PROTOCOL §1.5): `TOKEN[|txn:…][|payload]`, compact JSON with
//! no raw `|`, the 64 KiB cap, and gzip+base64 for `compressed` (§1.7).

use std::io::Write;

use base64::Engine as _;
use serde::Serialize;

use crate::registry::Error;

/// Longest plain reply, LF included.
pub const MAX_REPLY: usize = 65_536;
/// Longest compressed reply, LF included.
pub const MAX_COMPRESSED_REPLY: usize = 1_048_576;

/// How a reply's payload may be shortened when it is too large.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Plain,
    /// Plain, but the overflow error suggests `compressed` (ROUTE_LIST, STATS_GET).
    PlainCompressible,
    Compressed,
}

/// One reply before its tag is inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub token: &'static str,
    pub payload: Option<String>,
    pub size: Size,
    /// Close the connection after writing (CLIENT_SHUTDOWN).
    pub close: bool,
}

impl Reply {
    /// A bare token: `OK`, `PONG` …
    pub fn token(token: &'static str) -> Reply {
        Reply {
            token,
            payload: None,
            size: Size::Plain,
            close: false,
        }
    }

    /// A token with a text payload: `ACK|<sid>`, `ROUTE_OK|r1`.
    pub fn text(token: &'static str, payload: impl Into<String>) -> Reply {
        Reply {
            payload: Some(payload.into()),
            ..Reply::token(token)
        }
    }

    /// A token with a JSON payload.
    pub fn json<T: Serialize>(token: &'static str, value: &T) -> Reply {
        match to_json(value) {
            Ok(json) => Reply::text(token, json),
            Err(_) => Reply::error(&Error::Internal),
        }
    }

    /// A JSON reply that may be asked for `compressed`.
    pub fn json_compressible<T: Serialize>(
        token: &'static str,
        value: &T,
        compressed: bool,
    ) -> Reply {
        let json = match to_json(value) {
            Ok(json) => json,
            Err(_) => return Reply::error(&Error::Internal),
        };
        if !compressed {
            return Reply {
                size: Size::PlainCompressible,
                ..Reply::text(token, json)
            };
        }
        match gzip_base64(json.as_bytes()) {
            Ok(packed) => Reply {
                size: Size::Compressed,
                ..Reply::text(token, packed)
            },
            Err(_) => Reply::error(&Error::Internal),
        }
    }

    /// `ERROR|<message>`.
    pub fn error(error: &Error) -> Reply {
        Reply::text("ERROR", error.to_string())
    }

    /// The whole line with its LF, the tag in second position, within the size cap.
    pub fn render(&self, txn: Option<&str>) -> String {
        let line = assemble(self.token, txn, self.payload.as_deref());
        let cap = match self.size {
            Size::Compressed => MAX_COMPRESSED_REPLY,
            _ => MAX_REPLY,
        };
        if line.len() <= cap {
            return line;
        }
        let message = match self.size {
            Size::PlainCompressible => "response too large; use compressed",
            _ => "response too large",
        };
        assemble("ERROR", txn, Some(message))
    }
}

fn assemble(token: &str, txn: Option<&str>, payload: Option<&str>) -> String {
    let mut line = String::with_capacity(
        token.len() + txn.map_or(0, |t| t.len() + 1) + payload.map_or(0, |p| p.len() + 1) + 1,
    );
    line.push_str(token);
    for part in [txn, payload].into_iter().flatten() {
        line.push('|');
        line.push_str(part);
    }
    line.push('\n');
    line
}

/// Compact JSON with every `|` written as `\u007c`. A `|` can only occur inside JSON strings,
/// so replacing the byte is exact; serde_json already escapes control characters.
pub fn to_json<T: Serialize>(value: &T) -> serde_json::Result<String> {
    let json = serde_json::to_string(value)?;
    Ok(if json.contains('|') {
        json.replace('|', "\\u007c")
    } else {
        json
    })
}

fn gzip_base64(bytes: &[u8]) -> std::io::Result<String> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes)?;
    let packed = gz.finish()?;
    Ok(base64::engine::general_purpose::STANDARD.encode(packed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn tags_go_second() {
        assert_eq!(Reply::token("OK").render(None), "OK\n");
        assert_eq!(Reply::token("OK").render(Some("txn:42")), "OK|txn:42\n");
        assert_eq!(
            Reply::text("ROUTE_OK", "r7").render(Some("txn:42")),
            "ROUTE_OK|txn:42|r7\n"
        );
        assert_eq!(
            Reply::error(&Error::RouteNotFound).render(Some("txn:1")),
            "ERROR|txn:1|route not found\n"
        );
    }

    #[test]
    fn json_has_no_raw_separator() {
        let r = Reply::json("X", &serde_json::json!({"a": "p|q", "b": "\n"}));
        assert_eq!(r.render(None), "X|{\"a\":\"p\\u007cq\",\"b\":\"\\n\"}\n");
    }

    #[test]
    fn oversized_replies_are_replaced() {
        let big = vec!["x".repeat(1000); 70];
        assert_eq!(
            Reply::json_compressible("ROUTE_LIST_OK", &big, false).render(None),
            "ERROR|response too large; use compressed\n"
        );
        assert_eq!(
            Reply::json("X", &big).render(None),
            "ERROR|response too large\n"
        );
        let packed = Reply::json_compressible("ROUTE_LIST_OK", &big, true).render(None);
        let b64 = packed
            .trim_end()
            .strip_prefix("ROUTE_LIST_OK|")
            .expect("compressed reply");
        let gz = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        let mut json = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut json)
            .expect("gzip");
        assert_eq!(json, serde_json::to_string(&big).expect("json"));
    }

    #[test]
    fn exactly_the_cap_fits() {
        let payload = "y".repeat(MAX_REPLY - "T|".len() - 1);
        let line = Reply::text("T", payload).render(None);
        assert_eq!(line.len(), MAX_REPLY);
        assert!(line.starts_with("T|"));
    }
}
