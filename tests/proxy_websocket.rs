//! WebSocket upgrades through the proxy: refused unless the route allows them, then tunnelled
//! both ways, and never cut by an apply or a drain.

mod common;
use common::*;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A backend that answers every upgrade request with 101 and then echoes bytes back.
async fn echo_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut stream = reader.into_inner();
                let head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Sends an upgrade request to the proxy; returns the connection and the response head.
async fn open_upgrade(proxy: std::net::SocketAddr, host: &str) -> (BufReader<TcpStream>, String) {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    let request = format!(
        "GET /chat HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(REPLY_WAIT, reader.read_line(&mut line))
            .await
            .expect("head in time")
            .expect("read");
        if n == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    (reader, head)
}

async fn echo(conn: &mut BufReader<TcpStream>, text: &str) -> String {
    conn.get_mut()
        .write_all(text.as_bytes())
        .await
        .expect("write");
    let mut buf = vec![0u8; text.len()];
    tokio::time::timeout(REPLY_WAIT, conn.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("read echo");
    String::from_utf8(buf).expect("utf-8")
}

#[tokio::test]
async fn upgrades_are_refused_unless_allowed_then_tunnelled_both_ways() {
    let app = TestApp::start().await;
    let backend = echo_backend().await;
    let mut pipe = app.pipe().await;
    let sid = pipe.register("chat", "chat-1").await;
    let rid = pipe
        .add_route(&sid, "chat.example.com", "/", &format!("http://{backend}"))
        .await;
    pipe.cmd(&format!("OPTIONS_SET|{sid}|ALL|health_check_interval|0"))
        .await;
    pipe.apply(&sid).await;

    let (_, head) = open_upgrade(app.proxy_addr(), "chat.example.com").await;
    assert!(
        head.starts_with("HTTP/1.1 400"),
        "websocket is off by default: {head}"
    );

    assert_eq!(
        pipe.cmd(&format!("OPTIONS_SET|{sid}|{rid}|websocket|true"))
            .await,
        "OPTIONS_OK"
    );
    pipe.apply(&sid).await;
    let (mut conn, head) = open_upgrade(app.proxy_addr(), "chat.example.com").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    assert_eq!(echo(&mut conn, "hello").await, "hello");

    // An apply and a completed drain change where new requests go, not open tunnels.
    pipe.add_route(&sid, "other.example.com", "/", &format!("http://{backend}"))
        .await;
    pipe.apply(&sid).await;
    assert!(pipe
        .cmd(&format!("DRAIN_START|{sid}|0"))
        .await
        .starts_with("DRAIN_OK|"));
    assert_eq!(echo(&mut conn, "still here").await, "still here");
}

#[tokio::test]
async fn ws_backends_allow_upgrades_by_default() {
    let app = TestApp::start().await;
    let backend = echo_backend().await;
    let mut pipe = app.pipe().await;
    let sid = pipe.register("chat", "chat-1").await;
    pipe.add_route(&sid, "ws.example.com", "/", &format!("ws://{backend}"))
        .await;
    pipe.cmd(&format!("OPTIONS_SET|{sid}|ALL|health_check_interval|0"))
        .await;
    pipe.apply(&sid).await;
    let (mut conn, head) = open_upgrade(app.proxy_addr(), "ws.example.com").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(echo(&mut conn, "ping").await, "ping");
}
