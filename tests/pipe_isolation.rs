//! Isolation between sessions and services over the pipe (PROTOCOL §3.9, §4 route-id resolution, §8.1): foreign route ids and claimed pairs are refused, same-service instances pool.

mod common;

use common::*;

/// Sends each line and collects every reply that differs from the expected one.
async fn mismatches(pipe: &mut Pipe, cases: &[(String, String)]) -> Vec<String> {
    let mut failures = Vec::new();
    for (line, want) in cases {
        let got = pipe.cmd(line).await;
        if got != *want {
            failures.push(format!("{line}\n    got:  {got}\n    want: {want}"));
        }
    }
    failures
}

fn assert_no_mismatches(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "wrong replies:\n{}",
        failures.join("\n")
    );
}

/// A session of `service` on its own connection.
async fn session(app: &TestApp, service: &str, instance: &str) -> (Pipe, String) {
    let mut pipe = app.pipe().await;
    let sid = pipe.register(service, instance).await;
    (pipe, sid)
}

/// The exact refusal of a pair claimed by another service (§3.9).
fn claimed(pair: &str) -> String {
    format!("ERROR|permission denied: {pair} is claimed by another service")
}

#[tokio::test]
async fn another_service_is_refused_on_every_route_id_command_and_on_claimed_pairs() {
    let app = TestApp::start().await;
    let backend = Backend::start("shop").await;
    let url = backend.url();
    let (mut a, sa) = session(&app, "shop", "shop-1").await;
    assert_eq!(a.add_route(&sa, "shop.example.com", "/", &url).await, "r1");
    assert_eq!(
        a.cmd(&format!("HEADERS_SET|{sa}|r1|X-Shop|1")).await,
        "HEADERS_OK"
    );
    a.apply(&sa).await;
    let a_list = a.cmd(&format!("ROUTE_LIST|{sa}")).await;
    let a_info_routes =
        payload(&a.cmd(&format!("SESSION_INFO|{sa}")).await, "SESSION_OK")["routes_active"].clone();

    let (mut b, sb) = session(&app, "other", "other-1").await;
    let denied = "ERROR|permission denied: route r1 belongs to another session".to_string();
    let route_id_commands = [
        format!("ROUTE_UPDATE|{sb}|r1|priority|5"),
        format!("ROUTE_UPDATE|{sb}|r1|backend_url|http://127.0.0.1:10"),
        format!("ROUTE_UPDATE|{sb}|r1|domains|evil.example.com"),
        format!("ROUTE_UPDATE|{sb}|r1|path|/evil"),
        format!("ROUTE_REMOVE|{sb}|r1"),
        format!("HEADERS_SET|{sb}|r1|X-Evil|1"),
        format!("HEADERS_REMOVE|{sb}|r1|X-Shop"),
        format!("OPTIONS_SET|{sb}|r1|timeout|5s"),
        format!("OPTIONS_REMOVE|{sb}|r1|timeout"),
        format!("HEALTH_SET|{sb}|r1|/h|10s|1s"),
        format!("HEALTH_SET|{sb}|r1||0|"),
        format!("RATELIMIT_SET|{sb}|r1|1|1s"),
        format!("RATELIMIT_SET|{sb}|r1|0|"),
        format!("CIRCUIT_BREAKER_SET|{sb}|r1|1|1s|1"),
        format!("CIRCUIT_BREAKER_SET|{sb}|r1|0||"),
    ];
    let cases: Vec<(String, String)> = route_id_commands
        .iter()
        .map(|line| (line.clone(), denied.clone()))
        .collect();
    let mut failures = mismatches(&mut b, &cases).await;
    // The same on a fresh connection (the session_id field selects the session).
    for (line, want) in &cases {
        let got = app.oneshot(line).await;
        if got != *want {
            failures.push(format!(
                "{line} (fresh connection)\n    got:  {got}\n    want: {want}"
            ));
        }
    }
    assert_no_mismatches(failures);

    // Staging a pair a has applied, by every staging path.
    assert_eq!(b.add_route(&sb, "other.example.com", "/", &url).await, "r2");
    assert_eq!(
        b.add_route(&sb, "shop.example.com", "/other", &url).await,
        "r3",
        "another path on the domain is free"
    );
    let pair_cases = vec![
        (
            format!("ROUTE_ADD|{sb}|shop.example.com|/|{url}|0"),
            claimed("shop.example.com/"),
        ),
        (
            format!("ROUTE_ADD|{sb}|free.example.com,shop.example.com|/|{url}|0"),
            claimed("shop.example.com/"),
        ),
        (
            format!(
                r#"ROUTE_ADD_BULK|{sb}|[{{"domains":["shop.example.com"],"path":"/","backend_url":"{url}"}}]"#
            ),
            format!(
                "ERROR|route 0: {}",
                claimed("shop.example.com/").trim_start_matches("ERROR|")
            ),
        ),
        (
            format!("ROUTE_UPDATE|{sb}|r2|domains|shop.example.com"),
            claimed("shop.example.com/"),
        ),
        (
            format!("ROUTE_UPDATE|{sb}|r3|path|/"),
            claimed("shop.example.com/"),
        ),
    ];
    assert_no_mismatches(mismatches(&mut b, &pair_cases).await);
    // Domains compare lower-cased without a trailing dot.
    let reply = b
        .cmd(&format!("ROUTE_ADD|{sb}|SHOP.Example.com.|/|{url}|0"))
        .await;
    assert!(
        reply.starts_with("ERROR|permission denied: ")
            && reply.ends_with(" is claimed by another service"),
        "case and trailing dot do not dodge the claim: {reply}"
    );

    // b sees only its own routes; a is untouched, byte for byte.
    let b_list = payload(&b.cmd(&format!("ROUTE_LIST|{sb}")).await, "ROUTE_LIST_OK");
    let b_ids: Vec<&str> = b_list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["route_id"].as_str().unwrap())
        .collect();
    assert_eq!(b_ids, ["r2", "r3"]);
    assert_eq!(a.cmd(&format!("ROUTE_LIST|{sa}")).await, a_list);
    let a_info = payload(&a.cmd(&format!("SESSION_INFO|{sa}")).await, "SESSION_OK");
    assert_eq!(a_info["routes_active"], a_info_routes);
    assert_eq!(a_info["routes_staged"], 0);
    let a_diff = payload(&a.cmd(&format!("CONFIG_DIFF|{sa}")).await, "DIFF_OK");
    assert_eq!(
        a_diff["pending"], false,
        "nothing was staged into a: {a_diff}"
    );
    // And b's own session still works.
    b.apply(&sb).await;
    assert_eq!(a.cmd(&format!("ROUTE_LIST|{sa}")).await, a_list);
}

#[tokio::test]
async fn instances_of_one_service_share_a_pair_as_a_pool() {
    let app = TestApp::start().await;
    let (backend1, backend2) = (
        Backend::start("shop-1").await,
        Backend::start("shop-2").await,
    );
    let (mut one, s1) = session(&app, "shop", "shop-1").await;
    assert_eq!(
        one.add_route(&s1, "shop.example.com", "/", &backend1.url())
            .await,
        "r1"
    );
    one.apply(&s1).await;
    let one_list = one.cmd(&format!("ROUTE_LIST|{s1}")).await;

    let (mut two, s2) = session(&app, "shop", "shop-2").await;
    assert_eq!(
        two.add_route(&s2, "shop.example.com", "/", &backend2.url())
            .await,
        "r2"
    );
    two.apply(&s2).await;
    let two_list = payload(&two.cmd(&format!("ROUTE_LIST|{s2}")).await, "ROUTE_LIST_OK");
    assert_eq!(two_list.as_array().unwrap().len(), 1);
    assert_eq!(two_list[0]["route_id"], "r2");
    assert_eq!(two_list[0]["status"], "active");
    assert_eq!(
        one.cmd(&format!("ROUTE_LIST|{s1}")).await,
        one_list,
        "the first member is untouched"
    );

    // Route ids stay private to their session, even within one service.
    assert_eq!(
        two.cmd(&format!("ROUTE_REMOVE|{s2}|r1")).await,
        "ERROR|permission denied: route r1 belongs to another session"
    );

    // Another service is still refused the pooled pair.
    let (mut other, so) = session(&app, "other", "other-1").await;
    let pair = format!("ROUTE_ADD|{so}|shop.example.com|/|{}|0", backend1.url());
    assert_eq!(other.cmd(&pair).await, claimed("shop.example.com/"));

    // Only the shutting-down instance leaves the pool: the pair stays claimed by shop-2.
    assert_eq!(
        one.cmd(&format!("CLIENT_SHUTDOWN|{s1}")).await,
        "SHUTDOWN_OK"
    );
    assert_eq!(other.cmd(&pair).await, claimed("shop.example.com/"));
    assert_eq!(
        payload(&two.cmd(&format!("ROUTE_LIST|{s2}")).await, "ROUTE_LIST_OK")[0]["status"],
        "active"
    );

    // With the last member gone, the pair is free.
    assert_eq!(
        two.cmd(&format!("CLIENT_SHUTDOWN|{s2}")).await,
        "SHUTDOWN_OK"
    );
    assert!(other.cmd(&pair).await.starts_with("ROUTE_OK|"));
    other.apply(&so).await;
}

#[tokio::test]
async fn whoever_applies_a_contested_pair_first_wins() {
    let app = TestApp::start().await;
    let backend = Backend::start("b").await;
    let url = backend.url();
    let (mut b, sb) = session(&app, "other", "other-1").await;
    let (mut a, sa) = session(&app, "shop", "shop-1").await;

    // Both stage the unclaimed pair; a applies first.
    assert_eq!(b.add_route(&sb, "shop.example.com", "/", &url).await, "r1");
    assert_eq!(b.add_route(&sb, "free.example.com", "/", &url).await, "r2");
    assert_eq!(a.add_route(&sa, "shop.example.com", "/", &url).await, "r3");
    a.apply(&sa).await;

    let b_list = b.cmd(&format!("ROUTE_LIST|{sb}")).await;
    let b_diff = b.cmd(&format!("CONFIG_DIFF|{sb}")).await;
    let conflict = format!(
        "ERROR|route r1: {}",
        claimed("shop.example.com/").trim_start_matches("ERROR|")
    );
    let cases = vec![
        (format!("CONFIG_APPLY|{sb}"), conflict.clone()),
        (format!("CONFIG_VALIDATE|{sb}"), conflict.clone()),
        (
            format!("CONFIG_APPLY_PARTIAL|{sb}|routes"),
            conflict.clone(),
        ),
        (format!("CONFIG_APPLY_PARTIAL|{sb}|all"), conflict.clone()),
    ];
    assert_no_mismatches(mismatches(&mut b, &cases).await);
    // Nothing of b changed: r2 did not slip through, staged is intact.
    assert_eq!(b.cmd(&format!("ROUTE_LIST|{sb}")).await, b_list);
    assert_eq!(b.cmd(&format!("CONFIG_DIFF|{sb}")).await, b_diff);
    let b_info = payload(&b.cmd(&format!("SESSION_INFO|{sb}")).await, "SESSION_OK");
    assert_eq!(b_info["routes_active"], 0);
    assert_eq!(b_info["last_apply"], serde_json::Value::Null);
    let a_list = payload(&a.cmd(&format!("ROUTE_LIST|{sa}")).await, "ROUTE_LIST_OK");
    assert_eq!(a_list[0]["route_id"], "r3");
    assert_eq!(a_list[0]["status"], "active");

    // Once a's session ends the pair is released and b's apply goes through.
    assert_eq!(a.cmd(&format!("CLIENT_SHUTDOWN|{sa}")).await, "SHUTDOWN_OK");
    assert_eq!(b.cmd(&format!("CONFIG_APPLY|{sb}")).await, "OK");
    let b_list = payload(&b.cmd(&format!("ROUTE_LIST|{sb}")).await, "ROUTE_LIST_OK");
    for route in b_list.as_array().unwrap() {
        assert_eq!(route["status"], "active", "{route}");
    }
}

#[tokio::test]
async fn each_command_acts_on_the_session_it_names_whatever_the_connection() {
    let app = TestApp::start().await;
    let (mut a, sa) = session(&app, "alpha", "alpha-1").await;
    let (mut b, sb) = session(&app, "beta", "beta-1").await;

    // a's connection carries a command for b: it acts on b only.
    assert_eq!(
        a.add_route(&sb, "b.example.com", "/", "http://127.0.0.1:9")
            .await,
        "r1"
    );
    assert_eq!(a.cmd(&format!("ROUTE_LIST|{sa}")).await, "ROUTE_LIST_OK|[]");
    let b_list = payload(&b.cmd(&format!("ROUTE_LIST|{sb}")).await, "ROUTE_LIST_OK");
    assert_eq!(b_list[0]["route_id"], "r1");

    // And a cannot reach r1 through its own id, on either connection.
    let denied = "ERROR|permission denied: route r1 belongs to another session";
    assert_eq!(a.cmd(&format!("ROUTE_REMOVE|{sa}|r1")).await, denied);
    assert_eq!(b.cmd(&format!("ROUTE_REMOVE|{sa}|r1")).await, denied);

    // Near-miss session ids name no session.
    let truncated = &sa[..sa.len() - 1];
    for line in [
        format!("ROUTE_LIST|{sa}0"),
        format!("ROUTE_LIST|{truncated}"),
        format!("ROUTE_LIST|{}", sa.to_uppercase()),
        format!("ROUTE_LIST|{}", sb.replace('-', "_")),
    ] {
        assert_eq!(a.cmd(&line).await, "ERROR|session not found", "{line}");
    }
}
