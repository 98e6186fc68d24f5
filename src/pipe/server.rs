//! The pipe listener: accept loop, one task per connection that reads lines, executes them in
//! order and writes one reply each, and the `SHUTDOWN` goodbye of §2.9.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::codec::{classify, Frame, FrameError, LineKind, LineReader};
use super::command::parse;
use super::execute::execute;
use super::reply::Reply;
use crate::registry::events::{OutboxReceiver, Outgoing};
use crate::registry::{Error, Registry};
use crate::shutdown::Shutdown;

/// Pipe listener settings (PROTOCOL §1.2, §2.9, §8.4).
#[derive(Debug, Clone)]
pub struct PipeSettings {
    pub max_line: usize,
    pub partial_line_timeout: Duration,
    pub shutdown_wait: Duration,
    /// How long a half-closed connection waits for owed maintenance completions.
    pub completion_wait: Duration,
    /// Open connections at most, in total and from one client IP (§8.4).
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
}

impl Default for PipeSettings {
    fn default() -> Self {
        PipeSettings {
            max_line: 16_384,
            partial_line_timeout: Duration::from_secs(30),
            shutdown_wait: Duration::from_secs(5),
            completion_wait: Duration::from_secs(9),
            max_connections: 1024,
            max_connections_per_ip: 64,
        }
    }
}

/// Open connections, in total and per client IP.
#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Releases a connection's place in the counts when it ends.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Takes a place for a new connection from `ip`, `None` over a limit.
fn take_slot(counts: &Arc<Mutex<Counts>>, ip: IpAddr, settings: &PipeSettings) -> Option<Slot> {
    let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
    let from_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
    if c.total >= settings.max_connections || from_ip >= settings.max_connections_per_ip {
        return None;
    }
    c.total += 1;
    *c.per_ip.entry(ip).or_insert(0) += 1;
    Some(Slot {
        counts: counts.clone(),
        ip,
    })
}

/// Serves pipe connections until shutdown, then waits (bounded) for them to finish.
pub async fn serve(
    registry: Registry,
    listener: TcpListener,
    shutdown: Shutdown,
    settings: PipeSettings,
) {
    let mut connections = JoinSet::new();
    let counts = Arc::new(Mutex::new(Counts::default()));
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok((mut stream, peer)) => {
                    let Some(slot) = take_slot(&counts, peer.ip(), &settings) else {
                        // §8.4: refused before any command is read.
                        connections.spawn(async move {
                            let _ = stream.write_all(b"ERROR|too many connections\n").await;
                            let _ = stream.shutdown().await;
                        });
                        continue;
                    };
                    let (registry, shutdown, settings) =
                        (registry.clone(), shutdown.clone(), settings.clone());
                    connections.spawn(async move {
                        connection(registry, stream, peer, shutdown, settings).await;
                        drop(slot);
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "pipe accept failed");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let all_closed = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(settings.shutdown_wait + Duration::from_secs(1), all_closed)
        .await
        .is_err()
    {
        connections.abort_all();
    }
}

fn set_keepalive(stream: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(%error, "could not set TCP keepalive");
    }
}

async fn connection(
    registry: Registry,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: Shutdown,
    settings: PipeSettings,
) {
    set_keepalive(&stream);
    let _ = stream.set_nodelay(true);
    let (conn, mut outbox) = registry.open_connection();
    let (read, mut write) = stream.into_split();
    let mut reader = LineReader::new(read, settings.max_line, settings.partial_line_timeout);
    let session = Session {
        registry: &registry,
        conn,
        peer,
    };
    if let Err(error) = session
        .run(&mut reader, &mut outbox, &mut write, &shutdown, &settings)
        .await
    {
        tracing::debug!(%error, %peer, "pipe connection error");
    }
    let _ = write.shutdown().await;
    registry.close_connection(conn);
}

/// The line of an asynchronous item.
fn render_async(item: Outgoing) -> String {
    match item {
        Outgoing::Event(event) => format!("EVENT|{}|{}\n", event.kind.as_str(), event.pipe_json),
        Outgoing::Completion { txn, outcome } => match outcome {
            Ok(target) => Reply::text("MAINT_OK", target).render(txn.as_deref()),
            Err(error) => Reply::error(&error).render(txn.as_deref()),
        },
    }
}

/// At end of stream: the maintenance completions still owed are written (within their bound),
/// then the connection closes (§1.2).
async fn finish<W: AsyncWrite + Unpin>(
    outbox: &mut OutboxReceiver,
    write: &mut W,
    settings: &PipeSettings,
) -> std::io::Result<()> {
    let deadline = tokio::time::Instant::now() + settings.completion_wait;
    while outbox.pending_completions() > 0 {
        match tokio::time::timeout_at(deadline, outbox.recv()).await {
            Ok(Some(item)) => write.write_all(render_async(item).as_bytes()).await?,
            _ => break,
        }
    }
    Ok(())
}

/// One connection's conversation.
struct Session<'a> {
    registry: &'a Registry,
    conn: crate::registry::ConnId,
    peer: SocketAddr,
}

impl Session<'_> {
    async fn run<R, W>(
        &self,
        reader: &mut LineReader<R>,
        outbox: &mut OutboxReceiver,
        write: &mut W,
        shutdown: &Shutdown,
        settings: &PipeSettings,
    ) -> std::io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            // Asynchronous lines go out only while no command read is unanswered (§5.4).
            let idle = !reader.has_buffered_line();
            let frame = tokio::select! {
                biased;
                _ = shutdown.wait() => return self.goodbye(reader, write, settings).await,
                frame = reader.next() => frame,
                Some(line) = outbox.recv(), if idle => {
                    write.write_all(render_async(line).as_bytes()).await?;
                    continue;
                }
            };
            let line = match frame {
                Ok(Frame::Line(bytes)) => match classify(&bytes) {
                    LineKind::Ignore => continue,
                    LineKind::Invalid => "ERROR|invalid characters\n".to_string(),
                    LineKind::Command(text) => {
                        let (line, close) = self.command(text).await;
                        write.write_all(line.as_bytes()).await?;
                        if close {
                            return Ok(());
                        }
                        continue;
                    }
                },
                Ok(Frame::TooLong) => "ERROR|line too long\n".to_string(),
                Ok(Frame::Eof) => return finish(outbox, write, settings).await,
                Err(FrameError::SlowSender) => {
                    tracing::debug!(peer = %self.peer, "partial line not completed in time");
                    return Ok(());
                }
                Err(FrameError::Io(e)) => return Err(e),
            };
            write.write_all(line.as_bytes()).await?;
        }
    }

    /// Parses and executes one command; returns its reply line and whether to close.
    async fn command(&self, text: &str) -> (String, bool) {
        match parse(text) {
            Err(e) => (Reply::error(&e.error).render(e.txn.as_deref()), false),
            Ok(cmd) => {
                let reply = execute(self.registry, self.conn, self.peer.ip(), &cmd).await;
                (reply.render(cmd.txn.as_deref()), reply.close)
            }
        }
    }

    /// §2.9: `SHUTDOWN` once, then every further command is refused until the client closes
    /// or the wait runs out.
    async fn goodbye<R, W>(
        &self,
        reader: &mut LineReader<R>,
        write: &mut W,
        settings: &PipeSettings,
    ) -> std::io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        write.write_all(b"SHUTDOWN\n").await?;
        let refuse = async {
            loop {
                let line = match reader.next().await {
                    Ok(Frame::Line(bytes)) => match classify(&bytes) {
                        LineKind::Ignore => continue,
                        LineKind::Invalid => "ERROR|invalid characters\n".to_string(),
                        LineKind::Command(_) => format!("ERROR|{}\n", Error::ShuttingDown),
                    },
                    Ok(Frame::TooLong) => "ERROR|line too long\n".to_string(),
                    _ => return Ok(()),
                };
                write.write_all(line.as_bytes()).await?;
            }
        };
        tokio::time::timeout(settings.shutdown_wait, refuse)
            .await
            .unwrap_or(Ok(()))
    }
}
