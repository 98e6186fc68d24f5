//! docs/api.md is true: its HTTP curl examples replayed in order against a fresh server (status and documented JSON), its SSE examples answer event streams, its grpcurl calls name real methods and fields.

mod common;
use common::*;

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// Reading the document
// ---------------------------------------------------------------------------------------------

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// The lines of the first ```sh block after the line `after`.
fn sh_block(doc: &str, after: &str) -> Vec<String> {
    let start = doc
        .find(after)
        .unwrap_or_else(|| panic!("docs/api.md has no `{after}`"));
    let mut lines = doc[start..].lines();
    lines
        .by_ref()
        .find(|l| l.trim_start().starts_with("```sh"))
        .unwrap_or_else(|| panic!("no ```sh block after `{after}`"));
    lines
        .take_while(|l| !l.trim_start().starts_with("```"))
        .map(str::to_string)
        .collect()
}

/// Splits a shell command line into words (single and double quotes, no expansion).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                word.push(n);
                            }
                        }
                        c => word.push(c),
                    }
                }
            }
            '#' if !in_word => break,
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// One documented curl call and its documented answer.
#[derive(Debug)]
struct Example {
    line: String,
    method: String,
    path: String,
    body: Option<String>,
    status: u16,
    reply: String,
}

const BASE: &str = "http://127.0.0.1:7070";

fn curl(words: &[String]) -> (String, String, Option<String>) {
    assert_eq!(words.first().map(String::as_str), Some("curl"), "{words:?}");
    let mut method = None;
    let mut body = None;
    let mut url = None;
    let mut i = 1;
    while i < words.len() {
        match words[i].as_str() {
            "-X" | "--request" => {
                method = words.get(i + 1).cloned();
                i += 1;
            }
            "-d" | "--data" | "--data-raw" => {
                body = words.get(i + 1).cloned();
                i += 1;
            }
            w if w.starts_with("http://") => url = Some(w.to_string()),
            _ => {}
        }
        i += 1;
    }
    let url = url.unwrap_or_else(|| panic!("no URL in {words:?}"));
    let path = url
        .strip_prefix(BASE)
        .unwrap_or_else(|| panic!("URL not on {BASE}: {url}"))
        .to_string();
    let method = method.unwrap_or_else(|| if body.is_some() { "POST" } else { "GET" }.into());
    (method, path, body)
}

fn examples(doc: &str) -> Vec<Example> {
    let lines = sh_block(doc, "## HTTP: the examples");
    let mut out = Vec::new();
    let mut pending: Option<(String, String, String, Option<String>)> = None;
    for line in lines {
        let trimmed = line.trim();
        if trimmed.starts_with("curl ") {
            assert!(
                pending.is_none(),
                "two curl lines without a reply: {trimmed}"
            );
            let (method, path, body) = curl(&shell_words(trimmed));
            pending = Some((trimmed.to_string(), method, path, body));
        } else if let Some(rest) = trimmed.strip_prefix("# →") {
            let (line, method, path, body) = pending
                .take()
                .unwrap_or_else(|| panic!("a reply line without a curl line: {trimmed}"));
            let rest = rest.trim();
            let (status, reply) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push(Example {
                line,
                method,
                path,
                body,
                status: status
                    .parse()
                    .unwrap_or_else(|_| panic!("no status in {trimmed}")),
                reply: reply.trim().to_string(),
            });
        } else if !trimmed.is_empty() {
            panic!("unexpected line in the examples block: {trimmed}");
        }
    }
    assert!(pending.is_none(), "the last curl line has no reply");
    out
}

// ---------------------------------------------------------------------------------------------
// Documented JSON as a pattern
// ---------------------------------------------------------------------------------------------

/// Removes `…` outside strings together with the comma it leaves behind.
fn strip_elisions(text: &str) -> String {
    // Pass 1: drop the ellipses outside strings.
    let mut first = String::new();
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            first.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '…' {
            continue;
        } else {
            if c == '"' {
                in_string = true;
            }
            first.push(c);
        }
    }
    // Pass 2: drop commas that now follow `{`/`[`/`,` or precede `}`/`]`/`,`.
    let chars: Vec<char> = first.chars().collect();
    let mut out = String::new();
    let (mut in_string, mut escaped) = (false, false);
    for (i, &c) in chars.iter().enumerate() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if c == ',' {
            let prev = out.trim_end().chars().last();
            let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
            if matches!(prev, Some('{') | Some('[') | Some(','))
                || matches!(next, Some('}') | Some(']') | Some(','))
            {
                continue;
            }
        }
        if c == '"' {
            in_string = true;
        }
        out.push(c);
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Lit(char),
    /// A run of 6 or more digits in the doc: an illustrative number (a time, a port).
    Digits,
    /// `…`: anything.
    Any,
}

fn pattern(doc: &str) -> Vec<Tok> {
    let chars: Vec<char> = doc.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '…' {
            out.push(Tok::Any);
            i += 1;
        } else if chars[i].is_ascii_digit() {
            let run = chars[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            if run >= 6 {
                out.push(Tok::Digits);
            } else {
                out.extend(chars[i..i + run].iter().map(|&c| Tok::Lit(c)));
            }
            i += run;
        } else {
            out.push(Tok::Lit(chars[i]));
            i += 1;
        }
    }
    out
}

fn matches_pattern(toks: &[Tok], text: &[char]) -> bool {
    match toks.first() {
        None => text.is_empty(),
        Some(Tok::Lit(c)) => text.first() == Some(c) && matches_pattern(&toks[1..], &text[1..]),
        Some(Tok::Digits) => {
            let run = text.iter().take_while(|c| c.is_ascii_digit()).count();
            (1..=run).any(|n| matches_pattern(&toks[1..], &text[n..]))
        }
        Some(Tok::Any) => (0..=text.len()).any(|n| matches_pattern(&toks[1..], &text[n..])),
    }
}

/// Whether `actual` has what `doc` documents: every documented key (objects are matched as
/// subsets when the doc elides, exactly otherwise), equal arrays lengths, equal scalars,
/// strings as patterns.
fn check(doc: &Value, actual: &Value, exact: bool, at: &str, problems: &mut Vec<String>) {
    match (doc, actual) {
        (Value::Object(d), Value::Object(a)) => {
            for (k, v) in d {
                match a.get(k) {
                    Some(av) => check(v, av, exact, &format!("{at}.{k}"), problems),
                    None => problems.push(format!("{at}: documented key `{k}` missing")),
                }
            }
            if exact {
                for k in a.keys().filter(|k| !d.contains_key(*k)) {
                    problems.push(format!("{at}: undocumented key `{k}`"));
                }
            }
        }
        (Value::Array(d), Value::Array(a)) => {
            if d.len() != a.len() {
                problems.push(format!(
                    "{at}: {} elements documented, {} answered",
                    d.len(),
                    a.len()
                ));
            }
            for (i, (dv, av)) in d.iter().zip(a).enumerate() {
                check(dv, av, exact, &format!("{at}[{i}]"), problems);
            }
        }
        (Value::String(d), Value::String(a)) => {
            let text: Vec<char> = a.chars().collect();
            if !matches_pattern(&pattern(d), &text) {
                problems.push(format!("{at}: documented {d:?}, answered {a:?}"));
            }
        }
        (d, a) if d == a => {}
        (d, a) => problems.push(format!("{at}: documented {d}, answered {a}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Replaying
// ---------------------------------------------------------------------------------------------

#[test]
fn the_pattern_helpers_work() {
    assert_eq!(
        strip_elisions(r#"{"a":{"b":1},…,"c":true}"#),
        r#"{"a":{"b":1},"c":true}"#
    );
    assert_eq!(
        strip_elisions(r#"{"routes":[{"route_id":"r1",…,"status":"active",…}]}"#),
        r#"{"routes":[{"route_id":"r1","status":"active"}]}"#
    );
    assert_eq!(strip_elisions(r#"{"s":"x-…"}"#), r#"{"s":"x-…"}"#);
    let p = pattern("shop-1-1764650000-…");
    let ok: Vec<char> = "shop-1-1799999999-0123456789abcdef".chars().collect();
    assert!(matches_pattern(&p, &ok));
    let bad: Vec<char> = "shop-2-1799999999-0123".chars().collect();
    assert!(!matches_pattern(&p, &bad));
    assert!(matches_pattern(&pattern("…"), &[]));
}

async fn send(addr: SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    // curl -d sends application/x-www-form-urlencoded by default; the gateway takes any
    // non-gRPC content type as JSON, so the examples are replayed as curl sends them.
    let headers: &[(&str, &str)] = if body.is_empty() {
        &[]
    } else {
        &[("content-type", "application/x-www-form-urlencoded")]
    };
    http_request(addr, method, Some("127.0.0.1:7070"), path, headers, body).await
}

#[tokio::test]
async fn the_http_examples_answer_as_documented() {
    let doc = doc();
    let examples = examples(&doc);
    assert!(
        examples.len() >= 10,
        "the examples block has {} curl examples",
        examples.len()
    );
    let app = TestApp::start().await;
    let mut sid: Option<String> = None;
    let mut rid: Option<String> = None;
    let mut problems = Vec::new();
    for ex in &examples {
        let subst = |text: &str| -> String {
            let mut out = text.to_string();
            if let Some(s) = &sid {
                out = out.replace("$SID", s);
            }
            if let Some(r) = &rid {
                out = out.replace("$RID", r);
            }
            out
        };
        let path = subst(&ex.path);
        let body = ex.body.as_deref().map(subst).unwrap_or_default();
        assert!(
            !path.contains('$') && !body.contains('$'),
            "unresolved variable in `{}`",
            ex.line
        );
        let reply = send(app.api_addr(), &ex.method, &path, &body).await;
        let mut these = Vec::new();
        if reply.status != ex.status {
            these.push(format!(
                "status {} (documented {})",
                reply.status, ex.status
            ));
        }
        match serde_json::from_str::<Value>(&reply.body) {
            Err(e) => these.push(format!("reply is not JSON ({e}): {}", reply.body)),
            Ok(actual) => {
                if sid.is_none() {
                    sid = actual["session_id"].as_str().map(String::from);
                }
                if rid.is_none() {
                    rid = actual["route_id"].as_str().map(String::from);
                }
                if !ex.reply.is_empty() {
                    let exact = !ex.reply.contains('…');
                    match serde_json::from_str::<Value>(&strip_elisions(&ex.reply)) {
                        Ok(documented) => check(&documented, &actual, exact, "$", &mut these),
                        Err(e) => these.push(format!(
                            "documented reply does not parse ({e}): {}",
                            ex.reply
                        )),
                    }
                }
            }
        }
        if !these.is_empty() {
            problems.push(format!(
                "`{}`\n    sent {} {} {}\n    documented {} {}\n    answered {} {}\n    - {}",
                ex.line,
                ex.method,
                path,
                body,
                ex.status,
                ex.reply,
                reply.status,
                reply.body,
                these.join("\n    - ")
            ));
        }
    }
    assert!(sid.is_some(), "the first example registers a session");
    assert!(
        problems.is_empty(),
        "docs/api.md examples that do not hold:\n{}",
        problems.join("\n")
    );
}

/// Status and content type of a GET, read from a raw connection (the body may never end).
async fn stream_head(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:7070\r\nAccept: */*\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
    let mut reader = BufReader::new(stream);
    let mut status = 0;
    let mut content_type = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(REPLY_WAIT, reader.read_line(&mut line))
            .await
            .expect("head in time")
            .expect("read");
        let line = line.trim_end();
        if n == 0 || line.is_empty() {
            break;
        }
        if status == 0 {
            status = line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        } else if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-type") {
                content_type = v.trim().to_string();
            }
        }
    }
    (status, content_type)
}

#[tokio::test]
async fn the_event_stream_examples_are_event_streams() {
    let doc = doc();
    let lines = sh_block(&doc, "Events arrive as Server-Sent Events");
    let app = TestApp::start().await;
    let reply = send(
        app.api_addr(),
        "POST",
        "/v2/sessions",
        r#"{"service_name":"shop","instance_name":"shop-1"}"#,
    )
    .await;
    let sid = serde_json::from_str::<Value>(&reply.body).expect("JSON")["session_id"]
        .as_str()
        .expect("session_id")
        .to_string();
    let mut count = 0;
    for line in lines.iter().filter(|l| l.trim_start().starts_with("curl ")) {
        let (method, path, _) = curl(&shell_words(line.trim()));
        assert_eq!(method, "GET", "{line}");
        let path = path.replace("$SID", &sid);
        let (status, content_type) = stream_head(app.api_addr(), &path).await;
        assert_eq!(status, 200, "`{line}`");
        assert!(
            content_type.starts_with("text/event-stream"),
            "`{line}`: {content_type}"
        );
        count += 1;
    }
    assert!(count >= 2, "the event examples: {lines:?}");
}

#[test]
fn the_grpcurl_examples_name_real_methods_and_fields() {
    use prost::Message;

    let set = prost_types::FileDescriptorSet::decode(switchyard::grpc::pb::FILE_DESCRIPTOR_SET)
        .expect("the embedded descriptor set decodes");
    let files: Vec<&prost_types::FileDescriptorProto> = set
        .file
        .iter()
        .filter(|f| f.package() == "switchyard.v2")
        .collect();
    let message = |full: &str| -> Option<&prost_types::DescriptorProto> {
        let name = full
            .trim_start_matches('.')
            .strip_prefix("switchyard.v2.")?;
        files
            .iter()
            .flat_map(|f| f.message_type.iter())
            .find(|m| m.name() == name)
    };
    let doc = doc();
    let lines = sh_block(&doc, "## gRPC: the same calls");
    let mut count = 0;
    for line in lines
        .iter()
        .filter(|l| l.trim_start().starts_with("grpcurl "))
    {
        let words = shell_words(line.trim());
        let target = words.last().expect("a method");
        let (service, method) = target.rsplit_once('/').expect("service/method");
        let Some(short) = service.strip_prefix("switchyard.v2.") else {
            continue; // grpc.health.v1.Health: the standard service
        };
        let rpc = files
            .iter()
            .flat_map(|f| f.service.iter())
            .find(|s| s.name() == short)
            .unwrap_or_else(|| panic!("`{line}`: no service {service}"))
            .method
            .iter()
            .find(|m| m.name() == method)
            .unwrap_or_else(|| panic!("`{line}`: no method {method} in {service}"));
        let input = message(rpc.input_type())
            .unwrap_or_else(|| panic!("`{line}`: no message {}", rpc.input_type()));
        if let Some(i) = words.iter().position(|w| w == "-d") {
            // `'{"session_id":"'$SID'",…}'` arrives as one word with $SID inside.
            let body = words[i + 1].replace("$SID", "sid");
            let json: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("`{line}`: -d is not JSON ({e}): {body}"));
            for key in json.as_object().expect("object").keys() {
                assert!(
                    input
                        .field
                        .iter()
                        .any(|f| f.name() == key || f.json_name() == key),
                    "`{line}`: {} has no field {key}",
                    input.name()
                );
            }
        }
        count += 1;
    }
    assert!(count >= 5, "grpcurl examples found: {count}");
}
