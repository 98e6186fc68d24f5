//! Pipe framing (PROTOCOL §1.2): LF-terminated lines of at most 16 KiB, an optional CR, the
//! over-long-line discard, the 30 s partial-line deadline, and the final line at EOF.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// One framing result.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete line, terminator removed.
    Line(Vec<u8>),
    /// A line longer than the limit was discarded; answer `ERROR|line too long`.
    TooLong,
    /// Clean end of stream.
    Eof,
}

/// Why reading stopped.
#[derive(Debug)]
pub enum FrameError {
    /// A partial line was not completed in time: close without a reply.
    SlowSender,
    Io(std::io::Error),
}

/// Reads frames from a byte stream.
pub struct LineReader<R> {
    inner: R,
    buf: BytesMut,
    /// Bytes of `buf` already searched for LF.
    scanned: usize,
    discarding: bool,
    eof: bool,
    max_line: usize,
    partial_timeout: Duration,
    deadline: Option<Instant>,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R, max_line: usize, partial_timeout: Duration) -> Self {
        LineReader {
            inner,
            buf: BytesMut::with_capacity(4096),
            scanned: 0,
            discarding: false,
            eof: false,
            max_line,
            partial_timeout,
            deadline: None,
        }
    }

    /// Whether a complete line is already buffered (so it counts as read, §5.4).
    pub fn has_buffered_line(&self) -> bool {
        self.buf.contains(&b'\n')
    }

    /// The next frame. Cancel-safe: bytes read are kept in the buffer.
    pub async fn next(&mut self) -> Result<Frame, FrameError> {
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
                let end = self.scanned + pos;
                let mut line = self.buf.split_to(end + 1);
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                self.scanned = 0;
                self.deadline =
                    (!self.buf.is_empty()).then(|| Instant::now() + self.partial_timeout);
                if std::mem::take(&mut self.discarding) || line.len() > self.max_line {
                    return Ok(Frame::TooLong);
                }
                return Ok(Frame::Line(line.to_vec()));
            }
            self.scanned = self.buf.len();
            // One byte of slack: a CR that may turn out to be part of the terminator.
            if self.discarding || self.buf.len() > self.max_line + 1 {
                self.discarding = true;
                self.buf.clear();
                self.scanned = 0;
            }
            if self.eof {
                if std::mem::take(&mut self.discarding) {
                    return Ok(Frame::TooLong);
                }
                if self.buf.is_empty() {
                    return Ok(Frame::Eof);
                }
                let line = self.buf.split().to_vec();
                self.scanned = 0;
                if line.len() > self.max_line {
                    return Ok(Frame::TooLong);
                }
                return Ok(Frame::Line(line));
            }
            let read = self.inner.read_buf(&mut self.buf);
            let n = match self.deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, read)
                    .await
                    .map_err(|_| FrameError::SlowSender)?,
                None => read.await,
            }
            .map_err(FrameError::Io)?;
            if n == 0 {
                self.eof = true;
            } else if self.deadline.is_none() {
                self.deadline = Some(Instant::now() + self.partial_timeout);
            }
        }
    }
}

/// What to do with a complete line before parsing it.
#[derive(Debug, PartialEq, Eq)]
pub enum LineKind<'a> {
    /// Blank, or an `ACK` acknowledgement: no reply.
    Ignore,
    /// Not UTF-8, or a control character: `ERROR|invalid characters`.
    Invalid,
    Command(&'a str),
}

/// Classifies a line (§1.2).
pub fn classify(line: &[u8]) -> LineKind<'_> {
    let Ok(text) = std::str::from_utf8(line) else {
        return LineKind::Invalid;
    };
    if text
        .chars()
        .any(|c| (c < ' ' && c != '\t') || c == '\u{7f}')
    {
        return LineKind::Invalid;
    }
    let first = text
        .split('|')
        .next()
        .unwrap_or("")
        .trim_matches([' ', '\t']);
    if text.trim_matches([' ', '\t']).is_empty() || first == "ACK" {
        return LineKind::Ignore;
    }
    LineKind::Command(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn frames(input: &[u8], max: usize) -> Vec<Frame> {
        let (mut w, r) = tokio::io::duplex(1 << 20);
        w.write_all(input).await.expect("write");
        drop(w);
        let mut reader = LineReader::new(r, max, Duration::from_secs(30));
        let mut out = Vec::new();
        loop {
            let f = reader.next().await.expect("frame");
            let end = f == Frame::Eof;
            out.push(f);
            if end {
                return out;
            }
        }
    }

    fn line(s: &str) -> Frame {
        Frame::Line(s.as_bytes().to_vec())
    }

    #[tokio::test]
    async fn splits_lines_and_strips_one_cr() {
        let got = frames(b"A\nB\r\nC\r\r\n\nlast", 100).await;
        assert_eq!(
            got,
            vec![
                line("A"),
                line("B"),
                line("C\r"),
                line(""),
                line("last"),
                Frame::Eof
            ]
        );
    }

    #[tokio::test]
    async fn over_long_lines_are_discarded_and_reported_once() {
        let mut input = vec![b'x'; 25];
        input.extend_from_slice(b"\nOK\n");
        input.extend(vec![b'y'; 10]);
        input.extend_from_slice(b"\r\n");
        input.extend(vec![b'z'; 11]);
        input.extend_from_slice(b"\n");
        input.extend(vec![b'w'; 30]);
        let got = frames(&input, 10).await;
        assert_eq!(
            got,
            vec![
                Frame::TooLong,
                line("OK"),
                line("yyyyyyyyyy"),
                Frame::TooLong,
                Frame::TooLong,
                Frame::Eof
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_line_must_complete_in_time() {
        let (mut w, r) = tokio::io::duplex(1024);
        let mut reader = LineReader::new(r, 100, Duration::from_secs(30));
        w.write_all(b"PING\nPAR").await.expect("write");
        assert_eq!(reader.next().await.expect("frame"), line("PING"));
        let err = reader.next().await.unwrap_err();
        assert!(matches!(err, FrameError::SlowSender));
        drop(w);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_between_lines_is_unlimited() {
        let (mut w, r) = tokio::io::duplex(1024);
        let mut reader = LineReader::new(r, 100, Duration::from_secs(30));
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            w.write_all(b"PING\n").await.expect("write");
            w
        });
        assert_eq!(reader.next().await.expect("frame"), line("PING"));
        drop(writer.await);
    }

    #[test]
    fn classification() {
        assert_eq!(classify(b"  \t "), LineKind::Ignore);
        assert_eq!(classify(b" ACK |MAINT_OK"), LineKind::Ignore);
        assert_eq!(classify(b"ACKS"), LineKind::Command("ACKS"));
        assert_eq!(classify(b"PING\x01"), LineKind::Invalid);
        assert_eq!(classify(b"PING\x7f"), LineKind::Invalid);
        assert_eq!(classify(b"\xff"), LineKind::Invalid);
        assert_eq!(classify(b"ACK\x00"), LineKind::Invalid);
        assert_eq!(classify(b"A\tB"), LineKind::Command("A\tB"));
    }
}
