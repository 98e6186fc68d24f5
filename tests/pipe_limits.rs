//! Connection limits of PROTOCOL §8.4 on the pipe: total and per IP on accept, per session on
//! attachment; everyone else keeps being served.

mod common;
use common::*;

#[tokio::test]
async fn connections_over_the_per_ip_limit_are_refused_on_accept() {
    let app = TestApp::start_with(|c| c.max_connections_per_ip = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut p = app.pipe().await;
        assert_eq!(p.cmd("PING").await, "PONG");
        held.push(p);
    }
    let mut refused = app.pipe().await;
    assert_eq!(refused.recv().await, "ERROR|too many connections");
    assert!(
        refused.closed_within(REPLY_WAIT).await,
        "then the registry closes it"
    );
    assert_eq!(held[0].cmd("PING").await, "PONG", "the others keep working");
    drop(held.pop());
    wait_until(|| async {
        let mut p = app.pipe().await;
        p.cmd("PING").await == "PONG"
    })
    .await;
}

#[tokio::test]
async fn the_total_limit_counts_every_client() {
    let app = TestApp::start_with(|c| c.max_connections = 2).await;
    let mut a = app.pipe().await;
    let mut b = app.pipe().await;
    assert_eq!(a.cmd("PING").await, "PONG");
    assert_eq!(b.cmd("PING").await, "PONG");
    let mut c = app.pipe().await;
    assert_eq!(c.recv().await, "ERROR|too many connections");
}

#[tokio::test]
async fn a_session_accepts_a_bounded_number_of_attached_connections() {
    let app = TestApp::start_with(|c| c.max_connections_per_session = 2).await;
    let mut first = app.pipe().await;
    let sid = first.register("shop", "shop-1").await;
    let mut second = app.pipe().await;
    assert_eq!(second.cmd(&format!("PING|{sid}")).await, "PONG");
    let mut third = app.pipe().await;
    assert_eq!(
        third.cmd(&format!("PING|{sid}")).await,
        "ERROR|too many connections for session"
    );
    assert_eq!(
        third.cmd(&format!("RECONNECT|{sid}")).await,
        "ERROR|too many connections for session"
    );
    assert_eq!(
        third.cmd("PING").await,
        "PONG",
        "the connection itself stays usable"
    );
    assert_eq!(
        first.cmd(&format!("PING|{sid}")).await,
        "PONG",
        "attached ones go on"
    );
    drop(second);
    wait_until(|| async {
        let mut p = app.pipe().await;
        p.cmd(&format!("PING|{sid}")).await == "PONG"
    })
    .await;
}
