//! The registry's one error enum: its `Display` is the exact legacy message of PROTOCOL.md.

use std::fmt;

/// What went wrong, by meaning. Every front maps it in exactly one place: the pipe writes
/// `ERROR|<Display>`, gRPC and HTTP pick a status from [`Error::kind`] and send the same text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A required field is missing, or a list that needs an item is empty.
    #[error("invalid format")]
    InvalidFormat,
    /// No session id and no connection fallback (§2.3 rule 3).
    #[error("no session")]
    NoSession,
    #[error("session not found")]
    SessionNotFound,
    #[error("route not found")]
    RouteNotFound,
    /// The route exists only in staged, the command reads active.
    #[error("route not active")]
    RouteNotActive,
    #[error("circuit breaker not found")]
    BreakerNotFound,
    #[error("no drain in progress")]
    NoDrain,
    /// An isolation or authorisation refusal; the text follows `permission denied: `.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// `duplicate route: <domain><path>`
    #[error("duplicate route: {0}")]
    DuplicateRoute(String),
    /// A field value that breaks its rule; the whole message (`invalid priority`,
    /// `invalid domain: x`, `unknown field: x`, `header not allowed: x` …).
    #[error("{0}")]
    InvalidArgument(String),
    /// A limit: `too many <what>`.
    #[error("too many {0}")]
    TooMany(&'static str),
    /// A validation failure of §3.4: `<category> <target>: <reason>`.
    #[error("{category} {target}: {reason}")]
    Validation {
        category: &'static str,
        target: String,
        reason: Box<Error>,
    },
    /// An element of a bulk request: `route <i>: <reason>`.
    #[error("route {index}: {reason}")]
    BulkItem { index: usize, reason: Box<Error> },
    #[error("apply failed: {0}")]
    ApplyFailed(String),
    #[error("unknown command: {0}")]
    UnknownCommand(String),
    #[error("server shutting down")]
    ShuttingDown,
    #[error("response too large")]
    ResponseTooLarge,
    #[error("internal error")]
    Internal,
}

/// The class of an error, which the gRPC and HTTP fronts turn into a status code
/// (API.md, "Codes by message").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
    Internal,
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }

    /// `<what>: <value>` with the value echoed safely (§1.5).
    pub fn invalid_value(what: &str, value: &str) -> Self {
        Error::InvalidArgument(format!("{what}: {}", echo(value)))
    }

    /// The status class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidFormat | Error::NoSession | Error::InvalidArgument(_) => {
                ErrorKind::InvalidArgument
            }
            Error::UnknownCommand(_) => ErrorKind::InvalidArgument,
            Error::SessionNotFound | Error::RouteNotFound | Error::BreakerNotFound => {
                ErrorKind::NotFound
            }
            Error::RouteNotActive
            | Error::NoDrain
            | Error::Validation { .. }
            | Error::ApplyFailed(_) => ErrorKind::FailedPrecondition,
            Error::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Error::DuplicateRoute(_) => ErrorKind::AlreadyExists,
            Error::TooMany(_) | Error::ResponseTooLarge => ErrorKind::ResourceExhausted,
            Error::BulkItem { reason, .. } => reason.kind(),
            Error::ShuttingDown => ErrorKind::Unavailable,
            Error::Internal => ErrorKind::Internal,
        }
    }

    /// Wraps this error as the §3.4 validation failure of `category` `target`.
    pub fn in_validation(self, category: &'static str, target: impl fmt::Display) -> Self {
        Error::Validation {
            category,
            target: target.to_string(),
            reason: Box::new(self),
        }
    }
}

/// A value echoed inside a message: `|` and control characters written as JSON escapes
/// (PROTOCOL §1.5), so the message stays one line that clients can split on `|`.
pub fn echo(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '|' => out.push_str("\\u007c"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// The registry's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_the_legacy_texts() {
        assert_eq!(Error::NoSession.to_string(), "no session");
        assert_eq!(
            Error::PermissionDenied("route r1 belongs to another session".into()).to_string(),
            "permission denied: route r1 belongs to another session"
        );
        let v = Error::invalid("invalid backend url format").in_validation("route", "r2");
        assert_eq!(v.to_string(), "route r2: invalid backend url format");
        assert_eq!(v.kind(), ErrorKind::FailedPrecondition);
        let b = Error::BulkItem {
            index: 1,
            reason: Box::new(Error::DuplicateRoute("a.com/x".into())),
        };
        assert_eq!(b.to_string(), "route 1: duplicate route: a.com/x");
        assert_eq!(b.kind(), ErrorKind::AlreadyExists);
        assert_eq!(Error::TooMany("routes").to_string(), "too many routes");
    }

    #[test]
    fn echo_escapes_separator_and_controls() {
        assert_eq!(echo("a|b"), "a\\u007cb");
        assert_eq!(echo("x\ty\n"), "x\\ty\\n");
        assert_eq!(echo("\u{1}"), "\\u0001");
        assert_eq!(echo("ümlaut"), "ümlaut");
    }
}
