//! Request bodies that syncast does not read to their end: disposing of them so that they cost
//! nothing, end at once, and are never served as requests.
//!
//! tiny_http 0.12.0 decides a body's fate when the [`Request`] is dropped (inside `respond()`,
//! inside `into_writer()`, or on a plain drop):
//! - a `Content-Length` body of more than 1 KiB (or one sent with `Expect: 100-continue`) is
//!   *drained*: `vec![0; remaining]` of the declared remainder, then reads until it is all read
//!   or the socket ends (src/util/equal_reader.rs:70). The allocation is made lazy by
//!   [`crate::alloc::LazyHuge`]; the reads would block the dropping thread — the dispatcher, for
//!   every answer it gives inline — for as long as the client cares to keep the body coming;
//! - a chunked body is not drained at all: the pool thread goes on to parse whatever follows the
//!   headers as the next request, so a body shaped like a request is served as one (smuggling);
//! - a body of at most 1 KiB was read into memory before syncast saw the request: it costs
//!   nothing, and the connection stays usable (keep-alive).
//!
//! So before a request whose body is still on the socket and was not read to its end is dropped,
//! [`Bodies::respond`] closes its connection in this order:
//! 1. marks the peer as closing in the [`ConnTable`]: the dispatcher discards, unanswered, any
//!    request tiny_http parses from that connection from now on ([`Bodies::discard`]);
//! 2. shuts the socket's read half (`SHUT_RD`) and shrinks its receive buffer: the drain reads
//!    what tiny_http buffered and the kernel had queued, then sees EOF;
//! 3. lets tiny_http drop the request through `into_writer()` (so it writes no 500), inside
//!    `catch_unwind`, writes the answer (with `Connection: close`) through the writer it returns
//!    — after any answer the connection is still owed — and shuts the write half, so nothing
//!    tiny_http writes afterwards (a 400 for the bytes it parses next) reaches the client.
//!
//! A declared length over `isize::MAX` makes the drain's `vec!` panic ("capacity overflow"):
//! such a request is answered with `respond()` inside `catch_unwind`. A declared length no
//! address space can map (past ~64 TiB on x86-64) gets a guarded *window* from the allocator
//! instead of a refusal that would abort the process (see [`crate::alloc`]): valid for its first
//! 16 MiB only, which is safe because of step 2 — the drain writes at most what the socket
//! delivers, and the read half is shut and the receive buffer small before any such drop. So
//! every request, whatever its declared length, is dropped and frees its tiny_http thread and
//! descriptors.
//!
//! The same happens for a request whose framing [`super::framing`] refuses or says to close.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tiny_http::{Method, Request};

use super::response::Reply;
use super::socket::StreamSocket;
use super::sweep::ConnTable;
use crate::metrics::Metrics;
use crate::sys::fd::OwnedSocket;

/// Receive buffer set on a connection being closed, so a client that keeps sending after
/// `SHUT_RD` (the kernel still queues what arrives) gets a small window.
const CLOSING_RECEIVE_BUFFER: usize = 4096;

/// Where a request's body is when syncast gets the request (tiny_http's `new_request`,
/// src/request.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Location {
    /// No body: no `Content-Length` (or 0, or one tiny_http cannot parse) and no
    /// `Transfer-Encoding`.
    None,
    /// At most 1 KiB, already read into memory by tiny_http.
    Buffered,
    /// Still on the socket: a longer `Content-Length` body, one sent with
    /// `Expect: 100-continue`, or a chunked one.
    OnSocket,
    /// `Connection: upgrade`: tiny_http hands the raw connection over as the body and parses no
    /// further request from it.
    RawConnection,
}

/// Where `request`'s body is, by the rules tiny_http applied when it made the request.
pub(crate) fn location(request: &Request) -> Location {
    let first = |name: &'static str| {
        request
            .headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str())
    };
    if first("Connection").is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")) {
        return Location::RawConnection;
    }
    if first("Transfer-Encoding").is_some() {
        return Location::OnSocket;
    }
    // tiny_http answers 417 itself to any Expect but 100-continue: present means 100-continue.
    match request.body_length() {
        None | Some(0) => Location::None,
        Some(n) if n <= 1024 && first("Expect").is_none() => Location::Buffered,
        Some(_) => Location::OnSocket,
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// Longer than the limit.
    TooLarge,
    /// It ended (the client closed, or the connection was cut at the idle deadline) before its
    /// declared length or its last chunk.
    Incomplete,
    /// Reading failed (a malformed chunk, a reset).
    Io(io::Error),
}

/// Disposal of unread bodies for one server, and the bodies read to their end.
pub(crate) struct Bodies {
    conns: Arc<ConnTable>,
    /// The `--admin-listen` address, if any: its connections are found there (the table
    /// tracks the public listener's).
    admin: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    /// The requests whose on-socket body a handler read to its end, by [`Key`]. Once a body is
    /// read to its end tiny_http parses the next request of the connection at once, so one
    /// connection can have two such requests alive: the peer alone is not enough.
    read: parking_lot::Mutex<HashSet<Key>>,
    /// `read.len()`, so the common case (empty) takes no lock.
    marked: AtomicUsize,
}

impl Bodies {
    /// Lets go of the table after a peak (see [`crate::sys::mem::shrink_map`]).
    pub(crate) fn shrink(&self) {
        crate::sys::mem::shrink_set(&mut self.read.lock());
    }

    /// For the server whose public connections `conns` tracks, and whose `--admin-listen`
    /// socket, if any, is `admin`.
    pub(crate) fn new(
        conns: Arc<ConnTable>,
        admin: Option<SocketAddr>,
        metrics: Arc<Metrics>,
    ) -> Bodies {
        Bodies {
            conns,
            admin,
            metrics,
            read: parking_lot::Mutex::new(HashSet::new()),
            marked: AtomicUsize::new(0),
        }
    }

    /// The counters.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Reads `request`'s body, at most `max` bytes, and notes when it was read to its end (so its
    /// answer keeps the connection open). A body that ended early is [`ReadError::Incomplete`]:
    /// tiny_http reports the end of the socket as the end of the body, for a declared length
    /// (src/util/equal_reader.rs) as in the middle of a chunk (chunked_transfer's decoder), and a
    /// request cut off by its client must not be acted on.
    pub(crate) fn read(&self, request: &mut Request, max: usize) -> Result<Vec<u8>, ReadError> {
        let place = location(request);
        if matches!(place, Location::None | Location::RawConnection) {
            // With Connection: upgrade and no length (framing refuses one), there is no body:
            // tiny_http's reader is the raw connection, which would read the client's next bytes.
            return Ok(Vec::new());
        }
        let declared = request.body_length();
        let mut body = Vec::new();
        let n = request
            .as_reader()
            .take(max as u64 + 1)
            .read_to_end(&mut body)
            .map_err(ReadError::Io)?;
        if n > max {
            return Err(ReadError::TooLarge);
        }
        if place == Location::OnSocket {
            // Cut at `--body-timeout` (its read half shut): whatever arrived is not the body.
            if request
                .remote_addr()
                .is_some_and(|p| self.conns.body_cut(*p))
            {
                return Err(ReadError::Incomplete);
            }
            let complete = match declared {
                Some(len) => n == len,
                // Chunked: an end of socket in the middle of a chunk's data also reads as the
                // end, and the bytes that would tell are tiny_http's. After a last chunk the
                // client is still connected (its FIN, or our cut at the idle deadline, would have
                // moved the connection out of ESTABLISHED); the one case this refuses wrongly is
                // a client that half-closes right after a complete chunked body.
                None => self.socket(request).is_some_and(|s| s.established()),
            };
            if !complete {
                return Err(ReadError::Incomplete);
            }
            if let Some(key) = key(request) {
                if self.read.lock().insert(key) {
                    self.marked.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        Ok(body)
    }

    /// A guard for a handler that may read `request`'s body: if the handler panics, the mark
    /// [`Bodies::read`] left is removed while unwinding (so no stale mark can outlive the
    /// request). On the normal path [`Bodies::respond`] takes the mark and the guard does nothing.
    pub(crate) fn guard(&self, request: &Request) -> ReadGuard<'_> {
        ReadGuard {
            bodies: self,
            key: key(request),
        }
    }

    fn take(&self, key: Option<Key>) -> bool {
        let Some(key) = key else { return false };
        if self.marked.load(Ordering::Acquire) == 0 {
            return false;
        }
        let removed = self.read.lock().remove(&key);
        if removed {
            self.marked.fetch_sub(1, Ordering::AcqRel);
        }
        removed
    }

    /// Sends `reply` for `request`. If the request's body is on the socket and was not read to
    /// its end, or its framing says so, the connection is closed as the module documentation
    /// describes; otherwise this is tiny_http's `respond()`.
    ///
    /// The error is that of tiny_http's `respond()` (a write past the reply write deadline fails
    /// with `WouldBlock`); a connection closed here ends anyway, and its answer's error is not
    /// returned.
    pub(crate) fn respond(&self, request: Request, reply: Reply) -> io::Result<()> {
        let unread = location(&request) == Location::OnSocket && !self.take(key(&request));
        let framing = super::framing::of_request(&request);
        if !unread && framing.is_ok_and(|f| !f.close) {
            return request.respond(reply);
        }
        self.metrics.connections_closed_unread.inc();
        let peer = request.remote_addr().copied();
        let mut socket = None;
        if let Some(peer) = peer {
            let found = self.find(peer, true);
            let mark = found
                .as_ref()
                .and_then(|(s, local)| Some((*local, s.inode()?)));
            self.conns.close_after(peer, mark);
            socket = found.map(|(s, _)| s);
        }
        // None only when the connection has already ended (reset): nothing to answer, and the
        // drain reads an error or EOF at once.
        if let Some(s) = &socket {
            close_read(s);
        }
        let shut_write = || {
            if let Some(s) = &socket {
                s.shutdown(Shutdown::Write);
            }
        };
        match fate(&request) {
            Fate::Drain => {
                let answer = closing_answer(&request, reply);
                // The drain runs inside into_writer; then the answer goes through tiny_http's
                // writer, so it still follows any answer this connection is owed, and whatever
                // tiny_http writes after it (a 400 for the bytes it parses next) finds the write
                // half shut.
                if let Some(mut writer) = contain(&self.metrics, || request.into_writer()) {
                    let _ = writer.write_all(&answer).and_then(|()| writer.flush());
                    shut_write();
                }
            }
            Fate::Panics => {
                // into_writer would leak its writer when the drop panics after it was made (a
                // value being returned is not dropped when a later destructor unwinds,
                // rust-lang/rust#47949); respond() returns nothing that holds the connection.
                contain(&self.metrics, || request.respond(reply));
                shut_write();
            }
        }
        Ok(())
    }

    /// Drops, unanswered, a request tiny_http parsed from a connection that is closing, or from
    /// one that carries a stream (`behind_stream`). Never blocks, never writes: tiny_http writes
    /// the answers of one connection in order, so answering a request behind a stream would wait
    /// for the stream to end.
    pub(crate) fn discard(&self, request: Request, behind_stream: bool) {
        self.metrics.requests_discarded.inc();
        let peer = request.remote_addr().copied();
        log::debug!("request discarded peer={peer:?} behind_stream={behind_stream}");
        // A body on the socket: shut the read half so the drain below ends at once (the stream
        // ahead of it may not have started, nor shut it yet). The stream's own descriptors are
        // not skipped: this connection may be one.
        if location(&request) == Location::OnSocket {
            let found = peer.and_then(|p| self.find(p, false));
            if let Some((s, _)) = found {
                close_read(&s);
            }
        }
        // What is kept until the stream ends, if behind one: releasing a request's writer would
        // let tiny_http write (a 400 for the next bytes, say) into the stream.
        let keep: Box<dyn Send> = match fate(&request) {
            // Dropped whole, it writes tiny_http's 500, which waits for every earlier answer of
            // the connection: behind a stream, it is kept (and its pool thread waits) until the
            // stream ends; on a closing connection, whose write half is shut, it writes nothing.
            Fate::Panics if !behind_stream => return drop_contained(vec![Box::new(request)]),
            Fate::Panics => Box::new(request),
            Fate::Drain => match contain(&self.metrics, || request.into_writer()) {
                Some(writer) if behind_stream => Box::new(writer),
                _ => return,
            },
        };
        let Some(peer) = peer else { return };
        if let Err((keep, too_deep)) = self.conns.hold_for_stream(peer, keep) {
            // The stream ended meanwhile and writes nothing more; or the client pipelined too
            // much behind it, and the connection (the stream's too) is ended.
            if too_deep {
                log::info!("connection closed peer={peer} reason=pipelined-too-deep");
            }
            self.release_held(peer, vec![keep]);
        }
    }

    /// The stream slot of `peer`'s connection was released: its thread has ended, or its request
    /// was refused before the stream started (the dispatcher claims a stream's connection as it
    /// routes the request, see [`ConnTable::admit`]). Drops what was kept behind it.
    pub(crate) fn stream_released(&self, peer: SocketAddr) {
        let held = self.conns.stream_ended(peer);
        if !held.is_empty() {
            self.release_held(peer, held);
        }
    }

    /// Drops what [`ConnTable::hold_for_stream`] kept for `peer`, once the stream has written its
    /// last byte (or never started): the connection is marked closing (the requests discarded
    /// behind the stream got no answer) and its write half shut first, so tiny_http writes
    /// nothing more on it.
    fn release_held(&self, peer: SocketAddr, held: Vec<Box<dyn Send>>) {
        let found = self.find(peer, false);
        let mark = found
            .as_ref()
            .and_then(|(s, local)| Some((*local, s.inode()?)));
        self.conns.close_after(peer, mark);
        if let Some((s, _)) = found {
            s.shutdown(Shutdown::Write);
        }
        drop_contained(held);
    }

    /// The socket of `peer`'s connection on a descriptor of our own, and the address of the
    /// listener it came in on: the public one (skipping running streams' descriptors if
    /// `skip_streams`: the connection is not one), else `--admin-listen`.
    fn find(&self, peer: SocketAddr, skip_streams: bool) -> Option<(OwnedSocket, SocketAddr)> {
        let skip = if skip_streams {
            self.conns.stream_fds()
        } else {
            Default::default()
        };
        let public = self.conns.local();
        let (mut s, local) = match StreamSocket::find_skipping(public, peer, &skip) {
            Some(s) => (s, public),
            None => (StreamSocket::find(self.admin?, peer)?, self.admin?),
        };
        Some((s.own()?, local))
    }

    /// The socket of `request`'s connection, on a descriptor of our own.
    fn socket(&self, request: &Request) -> Option<OwnedSocket> {
        Some(self.find(*request.remote_addr()?, true)?.0)
    }
}

/// Before tiny_http may drain a body left on the socket: shuts the read half, so the drain reads
/// what tiny_http buffered and the kernel had queued, then sees EOF, and shrinks the receive
/// buffer, so a client that keeps sending after `SHUT_RD` (the kernel still queues what
/// arrives) gets a small window. Every path that lets a request with its body on the socket be
/// dropped calls this first: [`Bodies::respond`], [`Bodies::discard`] and [`release_body`].
fn close_read(socket: &OwnedSocket) {
    socket.shutdown(Shutdown::Read);
    socket.set_receive_buffer(CLOSING_RECEIVE_BUFFER);
}

/// For a request whose body may be on the socket and that is about to be taken over with
/// [`into_writer`] (a stream's): closes the read side of its connection first ([`close_read`]),
/// or the drain inside `into_writer` waits for the client. Running streams' descriptors are not
/// probed.
pub(crate) fn release_body(conns: &ConnTable, request: &Request) {
    if location(request) != Location::OnSocket {
        return;
    }
    let Some(&peer) = request.remote_addr() else {
        return;
    };
    let found = StreamSocket::find_skipping(conns.local(), peer, &conns.stream_fds());
    if let Some(s) = found.and_then(|mut s| s.own()) {
        close_read(&s);
    }
}

/// A live request, as the [`Bodies`] ledger knows it: its peer and the address of its header
/// list (a heap block the request owns for its whole life, never empty for a request with a body
/// on the socket, which has a `Content-Length` or `Transfer-Encoding` line; distinct among live
/// requests, and every mark is removed before its request is dropped).
type Key = (SocketAddr, usize);

fn key(request: &Request) -> Option<Key> {
    let peer = *request.remote_addr()?;
    Some((peer, request.headers().as_ptr() as usize))
}

/// See [`Bodies::guard`].
pub(crate) struct ReadGuard<'a> {
    bodies: &'a Bodies,
    key: Option<Key>,
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.bodies.take(self.key);
        }
    }
}

/// `reply` as tiny_http would write it for `request`, plus `Connection: close` (which tiny_http
/// refuses to add: `Response::add_header` drops it).
fn closing_answer(request: &Request, reply: Reply) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let _ = reply.raw_print(
        &mut out,
        request.http_version().clone(),
        request.headers(),
        *request.method() == Method::Head,
        None,
    );
    if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
        out.splice(end..end, *b"\r\nConnection: close");
    }
    out
}

/// What dropping a request with its body still on the socket does, by its declared length.
enum Fate {
    /// tiny_http drains the rest, into a lazy mapping or, past what any mapping can hold, a
    /// guarded window ([`crate::alloc::LazyHuge`]).
    Drain,
    /// Over `isize::MAX`: the drain's `vec!` panics ("capacity overflow").
    Panics,
}

fn fate(request: &Request) -> Fate {
    match request.body_length() {
        Some(n) if n > isize::MAX as usize => Fate::Panics,
        _ => Fate::Drain,
    }
}

/// Runs `f` (a call that drops a request) and catches a panic of tiny_http's drain.
fn contain<T>(metrics: &Metrics, f: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(cause) => {
            metrics.request_drop_panics.inc();
            log::warn!(
                "request drop panicked cause={:?}; contained",
                crate::threads::panic_message(&*cause)
            );
            None
        }
    }
}

/// Drops what [`ConnTable::hold_for_stream`] kept (writers, whole requests), once the stream's
/// writer is gone and the write half is shut. A kept request may panic in its drain (caught);
/// while the thread is already unwinding a second panic would abort the process, so then they
/// are leaked instead.
pub(crate) fn drop_contained(items: Vec<Box<dyn Send>>) {
    if std::thread::panicking() {
        std::mem::forget(items);
        return;
    }
    for item in items {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(item))).is_err() {
            log::warn!("a kept request's drop panicked; contained");
        }
    }
}

/// tiny_http's `into_writer()` of a request whose body may be unread, made safe for streams
/// ([`super::sse::SseWriter::start`]): call [`release_body`] first, or the drain waits for the
/// client. A declared length the drain cannot take is answered 413 instead.
pub(crate) fn into_writer(request: Request) -> io::Result<Box<dyn Write + Send>> {
    let refused = || io::Error::other("the request declares a body too large to drain");
    match fate(&request) {
        Fate::Drain => {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| request.into_writer()))
                .map_err(|_| refused())
        }
        Fate::Panics => {
            let reply = super::response::error(413, "request body too large (max 65536 bytes)");
            let reply = super::response::add_header(reply, "Server", super::response::SERVER);
            let _ =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| request.respond(reply)));
            Err(refused())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn closing_the_read_side_ends_reads_and_shrinks_the_receive_buffer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(local).unwrap();
        let (mut side, peer) = listener.accept().unwrap();
        let s = crate::sys::fd::own_connection(side.as_raw_fd(), local, Some(peer)).unwrap();
        let before = s.receive_buffer().unwrap();
        client.write_all(b"queued").unwrap();
        // Arrived (peek blocks until it has), so it is queued before the read half is shut.
        side.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut first = [0u8; 6];
        while side.peek(&mut first).unwrap() < first.len() {}
        close_read(&s);
        let after = s.receive_buffer().unwrap();
        // The kernel doubles what is set (and has a floor of its own).
        assert!(
            after <= 2 * CLOSING_RECEIVE_BUFFER && after < before,
            "SO_RCVBUF {before} -> {after}"
        );
        // What was queued is still read (tiny_http's drain takes it), then EOF, not a wait.
        let mut got = Vec::new();
        side.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"queued");
    }
}
