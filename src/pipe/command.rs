//! Line → `Command`: the command word, the session id, the optional `txn:` tag, and each
//! verb's fields with its rest field (PROTOCOL §1.3, §1.6, §1.8 steps 2–3). No semantics.

use crate::registry::error::echo;
use crate::registry::Error;

/// The 34 commands of PROTOCOL §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Register,
    Reconnect,
    Ping,
    SessionInfo,
    ClientShutdown,
    RouteAdd,
    RouteAddBulk,
    RouteUpdate,
    RouteRemove,
    RouteList,
    HeadersSet,
    HeadersRemove,
    OptionsSet,
    OptionsRemove,
    HealthSet,
    RatelimitSet,
    CircuitBreakerSet,
    CircuitBreakerStatus,
    CircuitBreakerReset,
    ConfigValidate,
    ConfigApply,
    ConfigRollback,
    ConfigDiff,
    ConfigApplyPartial,
    DrainStart,
    DrainStatus,
    DrainCancel,
    MaintEnter,
    MaintExit,
    MaintStatus,
    StatsGet,
    BackendTest,
    Subscribe,
    Unsubscribe,
}

/// Every verb with its command word.
const VERBS: [(Verb, &str); 34] = [
    (Verb::Register, "REGISTER"),
    (Verb::Reconnect, "RECONNECT"),
    (Verb::Ping, "PING"),
    (Verb::SessionInfo, "SESSION_INFO"),
    (Verb::ClientShutdown, "CLIENT_SHUTDOWN"),
    (Verb::RouteAdd, "ROUTE_ADD"),
    (Verb::RouteAddBulk, "ROUTE_ADD_BULK"),
    (Verb::RouteUpdate, "ROUTE_UPDATE"),
    (Verb::RouteRemove, "ROUTE_REMOVE"),
    (Verb::RouteList, "ROUTE_LIST"),
    (Verb::HeadersSet, "HEADERS_SET"),
    (Verb::HeadersRemove, "HEADERS_REMOVE"),
    (Verb::OptionsSet, "OPTIONS_SET"),
    (Verb::OptionsRemove, "OPTIONS_REMOVE"),
    (Verb::HealthSet, "HEALTH_SET"),
    (Verb::RatelimitSet, "RATELIMIT_SET"),
    (Verb::CircuitBreakerSet, "CIRCUIT_BREAKER_SET"),
    (Verb::CircuitBreakerStatus, "CIRCUIT_BREAKER_STATUS"),
    (Verb::CircuitBreakerReset, "CIRCUIT_BREAKER_RESET"),
    (Verb::ConfigValidate, "CONFIG_VALIDATE"),
    (Verb::ConfigApply, "CONFIG_APPLY"),
    (Verb::ConfigRollback, "CONFIG_ROLLBACK"),
    (Verb::ConfigDiff, "CONFIG_DIFF"),
    (Verb::ConfigApplyPartial, "CONFIG_APPLY_PARTIAL"),
    (Verb::DrainStart, "DRAIN_START"),
    (Verb::DrainStatus, "DRAIN_STATUS"),
    (Verb::DrainCancel, "DRAIN_CANCEL"),
    (Verb::MaintEnter, "MAINT_ENTER"),
    (Verb::MaintExit, "MAINT_EXIT"),
    (Verb::MaintStatus, "MAINT_STATUS"),
    (Verb::StatsGet, "STATS_GET"),
    (Verb::BackendTest, "BACKEND_TEST"),
    (Verb::Subscribe, "SUBSCRIBE"),
    (Verb::Unsubscribe, "UNSUBSCRIBE"),
];

/// How a verb's fields are laid out after the session id.
struct Shape {
    required: usize,
    optional: usize,
    /// The last field is a rest field (§1.3).
    rest: bool,
}

const fn shape(required: usize, optional: usize, rest: bool) -> Shape {
    Shape {
        required,
        optional,
        rest,
    }
}

impl Verb {
    /// Looks up a command word (case-sensitive).
    pub fn from_word(word: &str) -> Option<Verb> {
        VERBS.iter().find(|(_, w)| *w == word).map(|(v, _)| *v)
    }

    /// The command word.
    pub fn word(self) -> &'static str {
        VERBS
            .iter()
            .find(|(v, _)| *v == self)
            .map_or("", |(_, w)| w)
    }

    fn shape(self) -> Shape {
        use Verb::*;
        match self {
            Register => shape(3, 1, true),
            Reconnect | Ping | SessionInfo | ClientShutdown | ConfigValidate | ConfigApply
            | ConfigRollback | ConfigDiff | DrainStatus | DrainCancel | MaintStatus => {
                shape(0, 0, false)
            }
            RouteAdd => shape(3, 1, false),
            RouteAddBulk => shape(1, 0, true),
            RouteUpdate => shape(3, 0, false),
            RouteRemove | CircuitBreakerStatus | CircuitBreakerReset | ConfigApplyPartial
            | DrainStart | MaintExit | BackendTest | Subscribe | Unsubscribe => shape(1, 0, false),
            RouteList => shape(0, 1, false),
            HeadersSet => shape(3, 0, true),
            HeadersRemove | OptionsRemove => shape(2, 0, false),
            OptionsSet | RatelimitSet => shape(3, 0, false),
            HealthSet | CircuitBreakerSet => shape(4, 0, false),
            MaintEnter => shape(1, 1, false),
            StatsGet => shape(0, 2, false),
        }
    }
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub verb: Verb,
    pub txn: Option<String>,
    /// Field 1 (empty when absent); unused by `REGISTER`.
    pub sid: String,
    /// The fields after the session id (and tag), trimmed; missing optional fields are "".
    pub args: Vec<String>,
    /// How many of `args` were present on the line.
    pub present: usize,
}

impl Command {
    /// Argument `i`, "" when absent.
    pub fn arg(&self, i: usize) -> &str {
        self.args.get(i).map_or("", String::as_str)
    }
}

/// A line that could not become a command, with the tag if one was recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub txn: Option<String>,
    pub error: Error,
}

fn trim(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

fn is_txn(field: &str) -> Option<Result<String, ()>> {
    let tag = field.strip_prefix("txn:")?;
    let ok = (1..=64).contains(&tag.len())
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    Some(if ok { Ok(field.to_string()) } else { Err(()) })
}

/// Parses one command line (already checked by `codec::classify`).
pub fn parse(line: &str) -> Result<Command, ParseError> {
    let fields: Vec<&str> = line.split('|').collect();
    let word = trim(fields[0]);
    let untagged = |error| ParseError { txn: None, error };
    let verb = Verb::from_word(word).ok_or_else(|| untagged(Error::UnknownCommand(echo(word))))?;
    let mut next = 1;
    let mut sid = String::new();
    if verb != Verb::Register {
        sid = fields
            .get(1)
            .map(|f| trim(f).to_string())
            .unwrap_or_default();
        next = 2;
    }
    let mut txn = None;
    if let Some(field) = fields.get(next) {
        if let Some(tag) = is_txn(trim(field)) {
            txn = Some(tag.map_err(|()| untagged(Error::InvalidFormat))?);
            next += 1;
        }
    }
    let shape = verb.shape();
    let rest_fields = &fields[next.min(fields.len())..];
    let present = rest_fields.len().min(shape.required + shape.optional);
    if present < shape.required {
        return Err(ParseError {
            txn,
            error: Error::InvalidFormat,
        });
    }
    let total = shape.required + shape.optional;
    let mut args: Vec<String> = Vec::with_capacity(total);
    for i in 0..total {
        let value = if shape.rest && i + 1 == total {
            if i < rest_fields.len() {
                rest_fields[i..].join("|")
            } else {
                String::new()
            }
        } else {
            rest_fields
                .get(i)
                .map(|s| s.to_string())
                .unwrap_or_default()
        };
        args.push(trim(&value).to_string());
    }
    Ok(Command {
        verb,
        txn,
        sid,
        args,
        present,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        parse(line).expect("parses")
    }

    fn err(line: &str) -> (Option<String>, String) {
        let e = parse(line).unwrap_err();
        (e.txn, e.error.to_string())
    }

    #[test]
    fn fields_are_trimmed_and_extra_fields_ignored() {
        let c = ok(" ROUTE_ADD | s1 | a.com | / | http://b:1 | 5 | extra");
        assert_eq!(c.verb, Verb::RouteAdd);
        assert_eq!(c.sid, "s1");
        assert_eq!(c.args, vec!["a.com", "/", "http://b:1", "5"]);
        let c = ok("ROUTE_ADD|s1|a.com|/|http://b:1");
        assert_eq!(c.arg(3), "");
        assert_eq!(c.present, 3);
    }

    #[test]
    fn rest_fields_keep_separators() {
        let c = ok("HEADERS_SET|s|ALL|X-A| a|b|c ");
        assert_eq!(c.args, vec!["ALL", "X-A", "a|b|c"]);
        let c = ok("HEADERS_SET|s|ALL|X-A|");
        assert_eq!(c.arg(2), "");
        assert_eq!(
            err("HEADERS_SET|s|ALL|X-A"),
            (None, "invalid format".into())
        );
        let c = ok("REGISTER|api|api-v2|9000|9001");
        assert_eq!(c.args, vec!["api", "api-v2", "9000", "9001"]);
        let c = ok(r#"REGISTER|a|b|1|{"x":"p|q"}"#);
        assert_eq!(c.arg(3), r#"{"x":"p|q"}"#);
        let c = ok("ROUTE_ADD_BULK|s|[{\"path\":\"/a|b\"}]");
        assert_eq!(c.arg(0), "[{\"path\":\"/a|b\"}]");
    }

    #[test]
    fn session_field_is_never_missing() {
        assert_eq!(ok("ROUTE_LIST").sid, "");
        assert_eq!(ok("ROUTE_LIST|").sid, "");
        assert_eq!(err("ROUTE_ADD"), (None, "invalid format".into()));
        assert_eq!(err("REGISTER|a|b"), (None, "invalid format".into()));
    }

    #[test]
    fn transaction_tags() {
        let c = ok("ROUTE_ADD|s|txn:42|a.com|/|http://b:1|0");
        assert_eq!(c.txn.as_deref(), Some("txn:42"));
        assert_eq!(c.args[0], "a.com");
        let c = ok("REGISTER|txn:1|shop|shop-1|3001|{}");
        assert_eq!(c.txn.as_deref(), Some("txn:1"));
        assert_eq!(c.args[0], "shop");
        let c = ok("PING||txn:9");
        assert_eq!((c.sid.as_str(), c.txn.as_deref()), ("", Some("txn:9")));
        let c = ok("PING|txn:9");
        assert_eq!((c.sid.as_str(), c.txn), ("txn:9", None));
        assert_eq!(err("PING|s|txn:"), (None, "invalid format".into()));
        assert_eq!(err("PING|s|txn:a b"), (None, "invalid format".into()));
        assert_eq!(
            err("ROUTE_ADD|s|txn:7|a.com"),
            (Some("txn:7".into()), "invalid format".into())
        );
    }

    #[test]
    fn unknown_words() {
        assert_eq!(err("FOO|x"), (None, "unknown command: FOO".into()));
        assert_eq!(err("ping"), (None, "unknown command: ping".into()));
    }
}
