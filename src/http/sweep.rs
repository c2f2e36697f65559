//! The sweep table: what the server knows of its accepted connections, for the once-a-second
//! sweep that gives tiny_http the header deadline, idle time-out and pending-connection cap it
//! lacks (it reads a request line and headers for as long as a client cares to send them, on a
//! thread of its own), and the descriptors of running streams, which the sweep and the search
//! for a new stream's socket skip. (Whether a stream's client left is the watcher's job:
//! [`crate::http::watch`].)
//!
//! The descriptor scans and socket calls it relies on live in [`crate::sys::fd`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sys::fd::{self, FdSet};

/// Most requests one connection may have waiting behind the one in flight (in the request
/// pipelines, and the writers kept behind a stream here); one more shuts the connection (no
/// client pipelines that deep; tiny_http would otherwise read without end).
pub(crate) const MAX_QUEUED: usize = 32;

/// Every this many sweeps, [`ConnTable::sweep`] lists `/proc/self/fd` instead of probing, so a
/// connection a probe cannot reach (above a gap of closed numbers) is still shut in bounded time.
pub(crate) const FULL_SCAN_EVERY: u32 = 5;

/// What the server knows of its accepted connections, for the sweep that gives tiny_http the
/// header deadline, idle time-out and pending-connection cap it lacks (it reads a request line
/// and headers for as long as a client cares to send them, on a thread of its own).
pub(crate) struct ConnTable {
    local: SocketAddr,
    inner: parking_lot::Mutex<ConnInner>,
    streams: parking_lot::Mutex<StreamFds>,
}

/// The descriptors of running streams: skipped by [`fd::find_connection`] and by the
/// sweep's scan (no system call per stream).
#[derive(Default)]
struct StreamFds {
    set: FdSet,
}

#[derive(Default)]
struct ConnInner {
    /// Last time a request arrived from each peer (keep-alive connections).
    last_request: HashMap<SocketAddr, Instant>,
    /// When the sweep first saw a connection that has sent no request yet.
    first_seen: HashMap<SocketAddr, Instant>,
    /// Peers whose connection is a running stream: never swept.
    streaming: HashSet<SocketAddr>,
    /// Peers whose connection is closing (a body left unread, a framing refusal, a stream's
    /// end): any further request tiny_http parses from that connection is discarded (see
    /// [`ConnTable::admit`]).
    closing: HashMap<SocketAddr, Closing>,
    /// Discarded requests' writers (or whole requests), dropped once the stream of that peer has
    /// written its last byte (see [`ConnTable::hold_for_stream`]).
    held: HashMap<SocketAddr, Vec<Box<dyn Send>>>,
    /// Peers whose request body a request thread is reading: its deadline, and the flag the
    /// sweep sets when it cut the body (`--body-timeout`).
    bodies: HashMap<SocketAddr, (Instant, Arc<AtomicBool>)>,
    /// Sweeps so far (every [`FULL_SCAN_EVERY`]th lists `/proc/self/fd`).
    sweeps: u32,
    /// The highest descriptor number of a non-stream connection the last sweep found (-1 or 0:
    /// none, or no sweep yet): the next probing sweep goes at least this far, so a known connection is not lost
    /// when a gap of closed numbers opens below it.
    ceiling: RawFd,
}

/// A closing mark: which connection of a peer address it is for, and since when.
#[derive(Debug, Clone, Copy)]
struct Closing {
    since: Instant,
    /// The listener's address and the inode of the connection's socket when it was marked
    /// (`None`: its socket was already gone). A peer address is not a connection: loopback
    /// reuses a closed connection's address for a new one at once (`tcp_tw_reuse`), and the new
    /// one's requests are its own.
    socket: Option<(SocketAddr, u64)>,
}

/// What [`ConnTable::admit`] decided for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Serve it.
    Route,
    /// Drop it unanswered: its connection is closing.
    Discard,
    /// Drop it unanswered: it follows a stream's request on the same connection.
    DiscardBehindStream,
}

/// How long a closing mark outlives a sweep that did not find the connection.
pub(crate) const CLOSING_KEPT: Duration = Duration::from_secs(5);

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sweep {
    /// Connections that had sent no complete request within the deadline.
    pub(crate) header_timeouts: usize,
    /// Keep-alive connections idle past the deadline.
    pub(crate) idle: usize,
    /// Connections shut because more than the cap were waiting for headers.
    pub(crate) over_cap: usize,
    /// Connections waiting for headers after the sweep.
    pub(crate) pending: usize,
    /// Accepted connections that have ended (TCP state `CLOSE`) while their descriptors are still
    /// open: tiny_http never closes them, because the pool thread that owns them waits forever
    /// (an `HTTP/2.0` or `HTTP/3.0` request line deadlocks it, see tests/http2_deadlock.rs). Each
    /// is a thread and two descriptors for good.
    pub(crate) stuck: usize,
    /// Request bodies cut for not arriving by their deadline.
    pub(crate) body_timeouts: usize,
}

impl ConnTable {
    /// A table for the server listening on `local`.
    pub(crate) fn new(local: SocketAddr) -> ConnTable {
        ConnTable {
            local,
            inner: parking_lot::Mutex::new(ConnInner::default()),
            streams: parking_lot::Mutex::new(StreamFds::default()),
        }
    }

    /// The descriptors of running streams now (a copy: callers probe without the lock).
    pub(crate) fn stream_fds(&self) -> FdSet {
        self.streams.lock().set.clone()
    }

    /// `fds` are the socket of a running stream: the sweep and the search for a new stream's
    /// socket skip them. Undone by [`ConnTable::stream_fds_closed`], which must run before the
    /// descriptors are closed.
    pub(crate) fn stream_fds_opened(&self, fds: &[RawFd]) {
        let mut st = self.streams.lock();
        for &fd in fds {
            st.set.insert(fd);
        }
    }

    /// The stream owning `fds` is about to close them.
    pub(crate) fn stream_fds_closed(&self, fds: &[RawFd]) {
        let mut st = self.streams.lock();
        for &fd in fds {
            st.set.remove(fd);
        }
    }

    /// The accepted connections of this server that are not running streams, as (peer,
    /// descriptor); see [`crate::sys::fd::connections`].
    fn connections(
        &self,
        streams: &FdSet,
        full: bool,
        ceiling: RawFd,
        dead: &mut HashSet<u64>,
    ) -> Vec<(SocketAddr, RawFd)> {
        fd::connections(self.local, streams, full, ceiling, dead)
    }

    /// The server's listening address.
    pub(crate) fn local(&self) -> SocketAddr {
        self.local
    }

    /// A complete request from `peer` reached the dispatcher: [`Admit::Route`] it (and, if
    /// `idle_clock` — the public listener's connections, which the sweep watches — count it as
    /// the connection's latest request, which restarts its idle clock), or discard it
    /// unanswered because the connection is closing or is a stream. tiny_http keeps parsing
    /// requests from what it has buffered after the one syncast closed the connection on (an
    /// unread chunked body is parsed as requests: smuggling) or after a stream's request
    /// (pipelining); they must not be served, and a stream's must not even be answered (tiny_http
    /// would hold the answer until the stream ends, and the dispatcher with it).
    pub(crate) fn admit(&self, peer: SocketAddr, idle_clock: bool) -> Admit {
        let marked = {
            let inner = self.inner.lock();
            if inner.streaming.contains(&peer) {
                return Admit::DiscardBehindStream;
            }
            inner.closing.get(&peer).copied()
        };
        // Outside the lock: it reads the process's descriptors.
        if let Some(mark) = marked {
            if self.is_marked_connection(peer, mark) {
                return Admit::Discard;
            }
        }
        let mut inner = self.inner.lock();
        if marked.is_some() {
            inner.closing.remove(&peer);
        }
        if idle_clock {
            inner.first_seen.remove(&peer);
            inner.last_request.insert(peer, Instant::now());
        }
        Admit::Route
    }

    /// Whether a request from `peer` comes from the connection `mark` was made for, not from a
    /// new connection that reuses its address: the peer's live socket is the marked one (same
    /// inode), or it has no live socket at all (the request is what tiny_http had buffered from
    /// the marked one, which has ended).
    fn is_marked_connection(&self, peer: SocketAddr, mark: Closing) -> bool {
        let (local, marked) = match mark.socket {
            Some((local, inode)) => (local, Some(inode)),
            None => (self.local, None),
        };
        // Each inode read through a checked dup (fd::own_connection): a number found for
        // `peer` that tiny_http closes meanwhile may be another connection's by the time its
        // inode is read, and that inode would make the marked connection look gone and its
        // request (one hidden in an unread body, say) be served.
        let live: Vec<u64> = fd::find_connection(local, peer, &self.stream_fds())
            .into_iter()
            .filter_map(|n| fd::own_connection(n, local, Some(peer))?.inode())
            .collect();
        match marked {
            _ if live.is_empty() => true,
            Some(inode) => live.contains(&inode),
            None => false,
        }
    }

    /// `peer`'s connection — the socket `socket` (the listener's address and the socket's
    /// inode; `None` if it is gone already) — is being closed: from now on [`ConnTable::admit`]
    /// discards the requests tiny_http parses from it, until the sweep finds its descriptors
    /// gone (and at least [`CLOSING_KEPT`] has passed, so a connection a probing sweep misses
    /// keeps its mark). A new connection from the same address is not affected.
    pub(crate) fn close_after(&self, peer: SocketAddr, socket: Option<(SocketAddr, u64)>) {
        let mark = Closing {
            since: Instant::now(),
            socket,
        };
        self.inner.lock().closing.insert(peer, mark);
    }

    /// Keeps `item` (a discarded request's writer) until `peer`'s stream ends: tiny_http chains
    /// the writers of one connection, so releasing it earlier would let tiny_http write into the
    /// stream (its 400 for the bytes that follow, say). Gives `item` back if the stream has
    /// already ended, or if [`MAX_QUEUED`] are
    /// kept for it already (`true`: the caller closes the connection, as a pipeline that deep
    /// is closed; the kept writers would otherwise grow with what the client sent).
    pub(crate) fn hold_for_stream(
        &self,
        peer: SocketAddr,
        item: Box<dyn Send>,
    ) -> Result<(), (Box<dyn Send>, bool)> {
        let mut inner = self.inner.lock();
        if !inner.streaming.contains(&peer) {
            return Err((item, false));
        }
        let held = inner.held.entry(peer).or_default();
        if held.len() >= MAX_QUEUED {
            return Err((item, true));
        }
        held.push(item);
        Ok(())
    }

    /// A request thread starts reading `peer`'s request body, which must have arrived by
    /// `deadline`; past it the sweep shuts the connection's read side (the blocked read then
    /// ends) and sets the returned flag. Undone by [`ConnTable::body_ended`].
    pub(crate) fn body_started(&self, peer: SocketAddr, deadline: Instant) -> Arc<AtomicBool> {
        let cut = Arc::new(AtomicBool::new(false));
        self.inner
            .lock()
            .bodies
            .insert(peer, (deadline, cut.clone()));
        cut
    }

    /// `peer`'s request body has been read (or given up on).
    pub(crate) fn body_ended(&self, peer: SocketAddr) {
        self.inner.lock().bodies.remove(&peer);
    }

    /// Whether the sweep cut `peer`'s request body at its deadline (the read that ended did
    /// not end at the body's end).
    pub(crate) fn body_cut(&self, peer: SocketAddr) -> bool {
        self.inner
            .lock()
            .bodies
            .get(&peer)
            .is_some_and(|(_, cut)| cut.load(Ordering::Acquire))
    }

    /// Lets go of the tables after a peak of connections (see [`crate::sys::mem::shrink_map`]):
    /// measured, 10 s after 10,000 streams closed their marks' and peers' tables still held
    /// ~2 MiB sized for the peak.
    pub(crate) fn shrink(&self) {
        use crate::sys::mem::{shrink_map, shrink_set};
        let mut inner = self.inner.lock();
        shrink_map(&mut inner.last_request);
        shrink_map(&mut inner.first_seen);
        shrink_set(&mut inner.streaming);
        shrink_map(&mut inner.closing);
        shrink_map(&mut inner.held);
        shrink_map(&mut inner.bodies);
    }

    /// `peer`'s connection became a stream (until [`ConnTable::stream_ended`]).
    pub(crate) fn stream_started(&self, peer: SocketAddr) {
        self.inner.lock().streaming.insert(peer);
    }

    /// `peer`'s stream ended (it writes nothing more), or its request was refused before it
    /// started. Returns what [`ConnTable::hold_for_stream`] kept for it: the caller drops that
    /// once the stream's own writer is gone, after shutting the write half, and marks the
    /// connection closing ([`ConnTable::close_after`]) when its answer said `Connection: close`
    /// or a request behind it was discarded (and got no answer).
    #[must_use]
    pub(crate) fn stream_ended(&self, peer: SocketAddr) -> Vec<Box<dyn Send>> {
        let mut inner = self.inner.lock();
        inner.streaming.remove(&peer);
        inner.last_request.remove(&peer);
        inner.held.remove(&peer).unwrap_or_default()
    }

    /// Shuts every connection that has not completed a request within `deadline` of being
    /// seen or of its previous request, and the oldest waiting ones beyond `max_pending`.
    /// Shutting (not closing) the socket makes tiny_http's blocked read end, so its thread is
    /// freed; the descriptor stays tiny_http's to close.
    pub(crate) fn sweep(&self, deadline: Duration, max_pending: usize) -> Sweep {
        let now = Instant::now();
        // Group descriptors by peer first (tiny_http holds two per connection).
        let mut conns: HashMap<SocketAddr, Vec<RawFd>> = Default::default();
        let stuck;
        {
            let stream_fds = self.stream_fds();
            let (full, ceiling) = {
                let mut inner = self.inner.lock();
                inner.sweeps = inner.sweeps.wrapping_add(1);
                (inner.sweeps.is_multiple_of(FULL_SCAN_EVERY), inner.ceiling)
            };
            let mut dead = HashSet::new();
            let found = self.connections(&stream_fds, full, ceiling, &mut dead);
            stuck = dead.len();
            let mut inner = self.inner.lock();
            inner.ceiling = found.iter().map(|&(_, fd)| fd).max().unwrap_or(-1);
            for (peer, fd) in found {
                if !inner.streaming.contains(&peer) {
                    conns.entry(peer).or_default().push(fd);
                }
            }
        }
        let mut result = Sweep {
            stuck,
            ..Sweep::default()
        };
        // Bodies past their deadline: shut the read side only, so the request thread's read
        // ends and it can still write its 408.
        // A cut body keeps its entry, flagged, until its reader ends it (`body_ended`): the
        // reader asks whether its body was cut (`body_cut`), since a read ended by SHUT_RD looks
        // like the end of the body to tiny_http's chunked decoder.
        let overdue: Vec<(SocketAddr, Arc<AtomicBool>)> = {
            let inner = self.inner.lock();
            inner
                .bodies
                .iter()
                .filter(|(_, (at, cut))| now >= *at && !cut.load(Ordering::Acquire))
                .map(|(p, (_, cut))| (*p, cut.clone()))
                .collect()
        };
        for (peer, cut) in overdue {
            // Flagged first: the request thread reads the flag once its read has ended.
            cut.store(true, Ordering::Release);
            let fds = match conns.get(&peer) {
                Some(fds) => fds.clone(),
                None => fd::find_connection(self.local, peer, &FdSet::default()),
            };
            for fd in fds {
                if let Some(socket) = fd::own_connection(fd, self.local, Some(peer)) {
                    socket.shutdown(std::net::Shutdown::Read);
                }
            }
            log::info!("connection closed peer={peer} reason=body-timeout");
            result.body_timeouts += 1;
        }
        let mut pending: Vec<(Instant, SocketAddr)> = Vec::new();
        let mut shut: Vec<(SocketAddr, &'static str)> = Vec::new();
        {
            let mut inner = self.inner.lock();
            inner.first_seen.retain(|p, _| conns.contains_key(p));
            inner.last_request.retain(|p, _| conns.contains_key(p));
            let ConnInner {
                closing, streaming, ..
            } = &mut *inner;
            closing.retain(|p, mark| {
                conns.contains_key(p)
                    || streaming.contains(p)
                    || now.duration_since(mark.since) < CLOSING_KEPT
            });
            for peer in conns.keys() {
                // A body still within its deadline is not an idle connection.
                if inner.streaming.contains(peer) || inner.bodies.contains_key(peer) {
                    continue;
                }
                if let Some(&t) = inner.last_request.get(peer) {
                    if now.duration_since(t) > deadline {
                        shut.push((*peer, "idle"));
                    }
                    continue;
                }
                let t = *inner.first_seen.entry(*peer).or_insert(now);
                if now.duration_since(t) > deadline {
                    shut.push((*peer, "header-timeout"));
                } else {
                    pending.push((t, *peer));
                }
            }
        }
        if pending.len() > max_pending {
            pending.sort();
            let excess = pending.len() - max_pending;
            for (_, peer) in pending.drain(..excess) {
                shut.push((peer, "over-cap"));
            }
        }
        result.pending = pending.len();
        for (peer, reason) in shut {
            // Through a checked dup: tiny_http may have closed the number since the scan, and a
            // new connection got it. Its two descriptors are one socket: one shutdown does.
            for &fd in &conns[&peer] {
                if let Some(socket) = fd::own_connection(fd, self.local, Some(peer)) {
                    socket.shutdown(std::net::Shutdown::Both);
                    break;
                }
            }
            log::info!("connection closed peer={peer} reason={reason}");
            match reason {
                "idle" => result.idle += 1,
                "header-timeout" => result.header_timeouts += 1,
                _ => result.over_cap += 1,
            }
            let mut inner = self.inner.lock();
            inner.first_seen.remove(&peer);
            inner.last_request.remove(&peer);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fd::fd_layout;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn requests_kept_behind_a_stream_are_bounded() {
        let table = ConnTable::new("127.0.0.1:9".parse().unwrap());
        let peer: SocketAddr = "127.0.0.1:40100".parse().unwrap();
        let item = || Box::new(0u8) as Box<dyn Send>;
        assert!(
            matches!(table.hold_for_stream(peer, item()), Err((_, false))),
            "no stream"
        );
        table.stream_started(peer);
        for _ in 0..MAX_QUEUED {
            assert!(table.hold_for_stream(peer, item()).is_ok());
        }
        assert!(
            matches!(table.hold_for_stream(peer, item()), Err((_, true))),
            "too deep"
        );
        let kept = table.stream_ended(peer);
        assert_eq!(kept.len(), MAX_QUEUED);
    }

    #[test]
    fn a_known_connection_above_a_gap_is_probed_and_an_unknown_one_found_by_the_full_scan() {
        let _layout = fd_layout();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        // 200 descriptors (more than PROBE_SLACK) below the connection, closed once it is open:
        // numbers the kernel will not hand out again until something else opens.
        let fillers: Vec<std::fs::File> = (0..200)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let _client = TcpStream::connect(local).unwrap();
        let (side, _) = listener.accept().unwrap();
        drop(fillers);
        let table = ConnTable::new(local);
        let none = FdSet::default();
        let has =
            |found: Vec<(SocketAddr, RawFd)>| found.iter().any(|&(_, fd)| fd == side.as_raw_fd());
        assert!(
            has(table.connections(&none, true, -1, &mut HashSet::new())),
            "the listing sees it"
        );
        assert!(
            has(table.connections(&none, false, side.as_raw_fd(), &mut HashSet::new())),
            "a probe reaches a connection an earlier sweep saw, whatever the gap below it"
        );
        // A table that never saw it: found by the first full scan at the latest.
        let pending: Vec<usize> = (0..FULL_SCAN_EVERY)
            .map(|_| table.sweep(Duration::from_secs(60), 100).pending)
            .collect();
        assert_eq!(pending.last(), Some(&1), "pending per sweep: {pending:?}");
    }

    #[test]
    fn a_sweep_never_takes_a_stream_or_a_foreign_descriptor_for_a_connection() {
        let _layout = fd_layout();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let table = ConnTable::new(local);
        // A running stream, both of its descriptors known.
        let _stream_client = TcpStream::connect(local).unwrap();
        let (stream_side, _) = listener.accept().unwrap();
        let stream_dup = stream_side.try_clone().unwrap();
        table.stream_fds_opened(&[stream_side.as_raw_fd(), stream_dup.as_raw_fd()]);
        // Other descriptors: a file, an accepted socket of another listener, the listener itself
        // and our own client sockets (their local address is not the server's).
        let _file = std::fs::File::open("/dev/null").unwrap();
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let _other_client = TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let _other_side = other.accept().unwrap();
        let streams = table.stream_fds();
        for full in [false, true] {
            assert!(
                table
                    .connections(&streams, full, -1, &mut HashSet::new())
                    .is_empty(),
                "full={full}"
            );
        }
        // One connection waiting for headers: the only one a zero cap shuts, in a probing
        // sweep (the first) and in the full scan (the FULL_SCAN_EVERY-th).
        let mut waiting = TcpStream::connect(local).unwrap();
        let (waiting_side, _) = listener.accept().unwrap();
        let first = table.sweep(Duration::from_secs(60), 0);
        assert_eq!((first.over_cap, first.pending), (1, 0));
        let mut buf = [0u8; 1];
        waiting
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            std::io::Read::read(&mut waiting, &mut buf).unwrap(),
            0,
            "shut"
        );
        drop(waiting_side);
        for _ in 1..FULL_SCAN_EVERY {
            assert_eq!(table.sweep(Duration::ZERO, 0), Sweep::default());
        }
        let mut stream_side = stream_side;
        assert!(
            std::io::Write::write_all(&mut stream_side, b"still open").is_ok(),
            "the stream's socket was never shut"
        );
    }
}
