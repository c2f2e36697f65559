//! Server-Sent Events: encoding events (WHATWG HTML, "Server-sent events") and writing a stream.
//!
//! tiny_http's `respond()` buffers a streaming body in an 8 KiB chunk (src/response.rs,
//! `raw_print`), so streams take the raw writer with `into_writer()`, write the status line and
//! headers themselves, and flush each event with one write.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::os::fd::RawFd;

use crossbeam_channel::Receiver;

use super::socket::{self, Liveness, StreamSocket};
use super::sweep::ConnTable;
use super::watch::{Watched, Watcher};
use crate::metrics::Metrics;

/// Encodes one event. `data` may hold any text: every line break (`\n`, `\r\n`, `\r`) starts a new
/// `data:` line, so a spec-conformant parser gives back exactly `data`. `event` and `id` must not
/// contain line breaks (callers pass fixed names and numbers).
pub(crate) fn encode_event(event: Option<&str>, id: Option<u64>, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 32);
    if let Some(name) = event {
        debug_assert!(!name.contains(['\r', '\n']));
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    if let Some(id) = id {
        out.extend_from_slice(format!("id: {id}\n").as_bytes());
    }
    for line in split_lines(data) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// Splits on `\r\n`, `\n` or `\r`, as the SSE parser does; an empty text is one empty line.
fn split_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                lines.push(&text[start..i]);
                start = i + 1;
            }
            b'\r' => {
                lines.push(&text[start..i]);
                if bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    lines.push(&text[start..]);
    lines
}

/// A comment line (`: text`), ignored by clients. The streams write their one comment, the
/// keepalive, as a constant; this is what the property tests check comments against.
#[cfg(test)]
pub(crate) fn comment(text: &str) -> Vec<u8> {
    format!(": {}\n\n", text.replace(['\r', '\n'], " ")).into_bytes()
}

/// The keepalive comment, written as is (no allocation on a parked stream's path).
pub(crate) const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// The last event of every stream when the server shuts down.
pub(crate) const SHUTDOWN: &[u8] = b"event: shutdown\ndata: {}\n\n";

/// The status line and headers of every SSE response, up to (not including) the extra header
/// lines and the blank line that ends the head.
pub(crate) const HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
    Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\nConnection: close\r\n";

/// A whole refusal response an `EventSource` retries: the SSE head (plus `extra` header lines,
/// each without CRLF), `retry: retry_ms`, then one `event: refused` with
/// `{"reason":reason,"retry_ms":retry_ms}`. It carries no `id:`, so a client's last event id
/// (what a chat stream resumes from) is left as it was. `reason` is a fixed word.
pub(crate) fn refusal(extra: &[String], reason: &str, retry_ms: u64) -> Vec<u8> {
    debug_assert!(!reason.contains(['"', '\\', '\r', '\n']));
    let mut out = Vec::with_capacity(320);
    out.extend_from_slice(HEAD);
    out.extend_from_slice(b"Server: ");
    out.extend_from_slice(super::response::SERVER.as_bytes());
    out.extend_from_slice(b"\r\n");
    for line in extra {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(format!("retry: {retry_ms}\n\n").as_bytes());
    let data = format!("{{\"reason\":\"{reason}\",\"retry_ms\":{retry_ms}}}");
    out.extend_from_slice(&encode_event(Some("refused"), None, &data));
    out
}

/// The last event of a stream whose token expired: the client must come back with a new one.
pub(crate) const EXPIRED: &[u8] = b"event: expired\ndata: {}\n\n";

/// The `retry:` field telling `EventSource` how long to wait before reconnecting.
pub(crate) fn retry(after: Duration) -> Vec<u8> {
    format!("retry: {}\n\n", after.as_millis()).into_bytes()
}

/// How long a write may block and how much the kernel may queue for one stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteLimits {
    /// `SO_SNDTIMEO`: a write blocked this long fails and the stream closes as `stalled`.
    pub(crate) timeout: Duration,
    /// `SO_SNDBUF` in bytes.
    pub(crate) send_buffer: usize,
    /// `TCP_USER_TIMEOUT`: sent data unacknowledged this long makes the kernel drop the
    /// connection (a peer that vanished without FIN).
    pub(crate) user_timeout: Duration,
}

impl WriteLimits {
    /// The limits a configuration sets.
    pub(crate) fn of(config: &crate::config::Config) -> WriteLimits {
        WriteLimits {
            timeout: config.write_timeout,
            send_buffer: config.send_buffer,
            user_timeout: config.tcp_user_timeout,
        }
    }
}

/// The writing end of one SSE response, owned by the stream's thread.
pub(crate) struct SseWriter {
    out: Box<dyn Write + Send>,
    socket: Option<StreamSocket>,
    conns: Arc<ConnTable>,
    peer: Option<SocketAddr>,
    /// The socket's descriptors as registered in `conns` (unregistered in `Drop`, which runs
    /// before `out` closes them).
    fds: Vec<RawFd>,
    /// The socket's registration with the watcher (dropped in `Drop`, before `out` closes it).
    watched: Option<Watched>,
    gone: Receiver<()>,
    /// Keeps `gone` connected whatever the watcher does with its sender: a disconnected
    /// channel would be always ready.
    _gone_tx: Option<crossbeam_channel::Sender<()>>,
    write_timeout: Duration,
    /// Where event writes are timed (`syncast_event_write_seconds`).
    metrics: Arc<Metrics>,
}

impl Drop for SseWriter {
    fn drop(&mut self) {
        // Both registrations go before the fields drop: `out` closes the descriptor.
        drop(self.watched.take());
        self.conns.stream_fds_closed(&self.fds);
        if let Some(peer) = self.peer {
            let held = self.conns.stream_ended(peer);
            let own = self.socket.as_mut().and_then(StreamSocket::own);
            // The answer said Connection: close: whatever tiny_http still parses from this
            // connection is discarded (this connection's, by its socket).
            let local = self.conns.local();
            let socket = own.as_ref().and_then(|s| s.inode()).map(|i| (local, i));
            self.conns.close_after(peer, socket);
            if !held.is_empty() {
                // Writers of requests that followed this one on the connection, discarded
                // unanswered (http::body): tiny_http writes a connection's answers in order, so
                // they go only after ours, and with the write half shut they write nothing.
                self.out = Box::new(io::sink());
                if let Some(s) = &own {
                    s.shutdown(std::net::Shutdown::Write);
                }
                super::body::drop_contained(held);
            }
        }
    }
}

impl SseWriter {
    /// Takes over `request`: writes `200` and the SSE headers (plus `extra` header lines, each
    /// without CRLF), marks the connection as a stream in `conns` (so the idle sweep leaves it
    /// alone until this writer is dropped), frees tiny_http's pool thread from the connection,
    /// sets the write time-out and TCP keepalive, and has `watcher` watch the socket.
    pub(crate) fn start(
        request: tiny_http::Request,
        conns: &Arc<ConnTable>,
        watcher: &Watcher,
        extra: &[String],
        limits: WriteLimits,
        metrics: &Arc<Metrics>,
    ) -> io::Result<SseWriter> {
        let peer = request.remote_addr().copied();
        let local = conns.local();
        if let Some(peer) = peer {
            conns.stream_started(peer);
        }
        // From here on, Drop unregisters the stream whatever happens.
        let mut writer = SseWriter {
            out: Box::new(io::sink()),
            socket: None,
            conns: conns.clone(),
            peer,
            fds: Vec::new(),
            watched: None,
            gone: crossbeam_channel::never(),
            _gone_tx: None,
            write_timeout: limits.timeout,
            metrics: metrics.clone(),
        };
        // A body left on the socket (the router refuses a stream request with one): its read
        // side is closed first, so tiny_http's drain inside into_writer ends at once.
        super::body::release_body(conns, &request);
        writer.out = super::body::into_writer(request)?;
        let out = &mut writer.out;
        // Written in pieces into tiny_http's buffered writer (1 KiB) and flushed once: one
        // system call, and no temporary string freed into this thread's malloc cache.
        out.write_all(HEAD)?;
        out.write_all(b"Server: ")?;
        out.write_all(super::response::SERVER.as_bytes())?;
        out.write_all(b"\r\n")?;
        for line in extra {
            if !super::response::header_line_is_safe(line) {
                log::error!("sse header line refused line={line:?}: not a safe header");
                continue;
            }
            out.write_all(line.as_bytes())?;
            out.write_all(b"\r\n")?;
        }
        out.write_all(b"\r\n")?;
        out.flush()?;
        let skip = conns.stream_fds();
        writer.socket = peer.and_then(|peer| StreamSocket::find_skipping(local, peer, &skip));
        match writer.socket.as_mut() {
            Some(s) => {
                s.release_reader();
                s.set_write_timeout(limits.timeout)?;
                s.set_send_buffer(limits.send_buffer);
                s.set_keepalive(limits.user_timeout);
                // Zero capacity: a poke reaches the stream only while it waits in `select!`;
                // one sent while it is busy writing is lost, and the watcher sends it again
                // every 250 ms until the stream leaves. A one-slot channel costs 580 bytes per
                // stream (cache-padded head and tail), this one 130.
                let (tx, rx) = crossbeam_channel::bounded(0);
                writer.fds = s.fds();
                conns.stream_fds_opened(&writer.fds);
                // The first verified descriptor: normally the only one left, our writer's.
                if let Some(&fd) = writer.fds.first() {
                    match watcher.watch(fd, tx.clone()) {
                        Ok(w) => writer.watched = Some(w),
                        // Closed under us: the peer is gone, and the first write says so.
                        Err(e) => log::debug!("sse socket not watched peer={peer:?} error={e}"),
                    }
                }
                writer.gone = rx;
                writer._gone_tx = Some(tx);
            }
            None => {
                // Without its socket a stream would run with no write time-out and no liveness
                // check: a client that stops reading could pin the thread. The socket is only
                // missing when the peer has already gone, so the stream ends here.
                log::warn!("sse socket not found peer={peer:?}; stream not started");
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the stream's socket was not found (peer gone?)",
                ));
            }
        }
        Ok(writer)
    }

    /// Writes one encoded comment (a keepalive, the farewell) and flushes it to the socket.
    ///
    /// `SO_SNDTIMEO` bounds each `write(2)` on its own; a reader that drains a few bytes at a
    /// time (zero-window probes) would restart that clock on every call. So the whole write has
    /// one deadline: a send that took longer than the write time-out counts as stalled too.
    pub(crate) fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let started = crate::metrics::now_ns();
        self.write(bytes)?;
        self.within_deadline(crate::metrics::now_ns().saturating_sub(started))
    }

    /// Like [`SseWriter::send`], for events (one, or a batch): the time the write took is
    /// recorded in the event-write histogram (a write that ran past the deadline too). Returns
    /// when the write ended ([`crate::metrics::now_ns`]), for the caller's own latency.
    pub(crate) fn send_event(&mut self, bytes: &[u8]) -> io::Result<u64> {
        let started = crate::metrics::now_ns();
        self.write(bytes)?;
        let ended = crate::metrics::now_ns();
        let took = ended.saturating_sub(started);
        self.metrics.event_write.observe_ns(took);
        self.within_deadline(took)?;
        Ok(ended)
    }

    /// Writes and flushes `bytes`.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.out.flush()
    }

    /// `Err(TimedOut)` if a write that took `took_ns` ran past the write time-out.
    fn within_deadline(&self, took_ns: u64) -> io::Result<()> {
        if Duration::from_nanos(took_ns) > self.write_timeout {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "event took longer than the write time-out",
            ));
        }
        Ok(())
    }

    /// Gets a message when the watcher saw this connection's client leave (FIN, reset, or
    /// dropped by the kernel): a stream's `select!` loop watches it and then confirms with
    /// [`SseWriter::liveness`]. Never ready if the socket was not found.
    pub(crate) fn gone(&self) -> &Receiver<()> {
        &self.gone
    }

    /// Has the watcher tell `tx` instead of [`SseWriter::gone`] (which is then never ready)
    /// when it sees the client leave: a stream that already waits on a channel of its own
    /// (an alarm stream's wake-up) saves one channel in its `select!`. Whoever receives on it
    /// then checks [`SseWriter::liveness`].
    pub(crate) fn tell_gone_through(&mut self, tx: crossbeam_channel::Sender<()>) {
        if let Some(w) = &self.watched {
            w.tell_through(tx);
            self.gone = crossbeam_channel::never();
            self._gone_tx = None;
        }
    }

    /// Whether the client is still connected, checked without writing on this stream's own
    /// socket (verified by its addresses). Open after a poke means the watcher was misled (a
    /// reused descriptor number): it is told to stop.
    pub(crate) fn liveness(&mut self) -> Liveness {
        let now = socket::liveness_of(&mut self.socket);
        // A descriptor the socket no longer has (tiny_http's, closed after the release gave
        // up waiting for it) leaves the connection table now: its number may be reused.
        if let Some(s) = self.socket.as_ref() {
            let kept = s.known_fds();
            if kept.len() < self.fds.len() {
                let dropped: Vec<RawFd> = self
                    .fds
                    .iter()
                    .copied()
                    .filter(|fd| !kept.contains(fd))
                    .collect();
                self.conns.stream_fds_closed(&dropped);
                self.fds.retain(|fd| kept.contains(fd));
            }
        }
        if now == Liveness::Open {
            if let Some(w) = &self.watched {
                w.still_open();
            }
        }
        now
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_with_name_id_and_multiline_data() {
        let e = encode_event(Some("message"), Some(7), "a\nb\r\nc\rd");
        assert_eq!(
            String::from_utf8(e).unwrap(),
            "event: message\nid: 7\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }

    #[test]
    fn an_unnamed_event_and_an_empty_one() {
        assert_eq!(
            encode_event(None, None, "{\"alarm\":true}"),
            b"data: {\"alarm\":true}\n\n"
        );
        assert_eq!(encode_event(None, None, ""), b"data: \n\n");
    }

    #[test]
    fn comments_and_retry() {
        assert_eq!(comment("keepalive"), b": keepalive\n\n");
        assert_eq!(comment("a\nb"), b": a b\n\n");
        assert_eq!(retry(Duration::from_secs(2)), b"retry: 2000\n\n");
        assert_eq!(KEEPALIVE, comment("keepalive"));
        assert_eq!(SHUTDOWN, encode_event(Some("shutdown"), None, "{}"));
    }

    #[test]
    fn a_refusal_is_a_whole_sse_response_with_retry_and_one_refused_event() {
        let r = refusal(&["Vary: Origin".to_string()], "max-clients", 1234);
        let text = String::from_utf8(r).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("\r\nContent-Type: text/event-stream; charset=utf-8"));
        assert!(head.contains("\r\nConnection: close"));
        assert!(head.ends_with("\r\nVary: Origin"), "{head}");
        assert_eq!(
            body,
            "retry: 1234\n\nevent: refused\ndata: {\"reason\":\"max-clients\",\"retry_ms\":1234}\n\n"
        );
        assert!(text.len() < 400, "a few hundred bytes: {}", text.len());
    }
}
