//! HTTP/1.1 pipelining: the requests of one connection are served one after another, in order,
//! and the dispatcher never writes an answer behind one still in flight.
//!
//! tiny_http reads a connection's next request as soon as the previous one is handed over (for
//! a request without a body, or with one of at most 1 KiB, src/request.rs `new_request`), and
//! orders the responses itself: the writer of a response blocks until the previous response's
//! writer is dropped (src/util/sequential.rs, `SequentialWriter::write`). Without this module:
//! - a `PUT` then a `GET` of the same id, pipelined, ran on two request threads at once, and the
//!   `GET` could read the store before the `PUT` committed;
//! - any request pipelined behind a stream (`GET /sse/call/1` then `GET /healthz` in one
//!   segment) froze the dispatcher: the inline answer waited for the stream's writer, that is
//!   for the stream to end, and no other client was served meanwhile.
//!
//! So a connection with a request on a request thread has its later requests queued behind it,
//! and that thread serves them in turn; a connection that became a stream (its head says
//! `Connection: close`; RFC 9112 §9.6: the server must not process further requests) has later
//! requests held unanswered until the stream ends, then dropped with the connection shut.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use parking_lot::Mutex;
use tiny_http::Request;

use super::sweep::ConnTable;
pub(crate) use super::sweep::MAX_QUEUED;
use crate::sys::fd;

thread_local! {
    /// The connection whose requests this thread serves (a request thread working its queue).
    static SERVING: Cell<Option<SocketAddr>> = const { Cell::new(None) };
}

/// What is in flight on each connection, and the requests waiting behind it.
pub(crate) struct Pipelines {
    conns: std::sync::Arc<ConnTable>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    busy: HashMap<SocketAddr, Busy>,
    /// Requests that will never be answered, with the housekeeping round they were left in:
    /// dropped a round later (by then the writer before theirs is gone, so dropping one, which
    /// makes tiny_http write a 500 onto the shut socket, cannot wait on it).
    orphans: Vec<(u64, Request)>,
    round: u64,
}

enum Busy {
    /// A request thread serves the connection; these came after, in order.
    Requests(VecDeque<Request>),
    /// A stream took the connection; these came after and are never answered.
    Stream(Vec<Request>),
}

/// Whether a request may be served now.
pub(crate) enum Turn {
    /// Serve it: nothing else of its connection is in flight (or this thread serves them).
    Now(Request),
    /// Queued behind its connection's request in flight, or held behind its stream.
    Later,
}

/// Marks the calling thread as the one serving `peer`'s requests, until dropped.
pub(crate) struct Serving(Option<SocketAddr>);

impl Serving {
    /// This thread serves `peer`'s queue from now on.
    pub(crate) fn begin(peer: Option<SocketAddr>) -> Serving {
        Serving(SERVING.with(|s| s.replace(peer)))
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        SERVING.with(|s| s.set(self.0));
    }
}

/// Whether the calling thread serves `peer`'s requests.
pub(crate) fn serving(peer: Option<SocketAddr>) -> bool {
    peer.is_some() && SERVING.with(Cell::get) == peer
}

impl Pipelines {
    /// Lets go of the table after a peak of connections (see [`crate::sys::mem::shrink_map`]).
    pub(crate) fn shrink(&self) {
        let mut inner = self.inner.lock();
        crate::sys::mem::shrink_map(&mut inner.busy);
        if inner.orphans.is_empty() {
            inner.orphans.shrink_to_fit();
        }
    }

    /// No connection busy; `conns` finds a connection's socket to shut it.
    pub(crate) fn new(conns: std::sync::Arc<ConnTable>) -> Pipelines {
        Pipelines {
            conns,
            inner: Mutex::default(),
        }
    }

    /// The router asks for each request: serve it now, or is it queued (or held)?
    pub(crate) fn turn(&self, request: Request) -> Turn {
        let peer = request.remote_addr().copied();
        let Some(peer) = peer.filter(|p| !serving(Some(*p))) else {
            return Turn::Now(request);
        };
        let mut inner = self.inner.lock();
        let waiting = match inner.busy.get_mut(&peer) {
            None => return Turn::Now(request),
            Some(Busy::Requests(queue)) => {
                queue.push_back(request);
                queue.len()
            }
            Some(Busy::Stream(held)) => {
                held.push(request);
                held.len()
            }
        };
        drop(inner);
        if waiting > MAX_QUEUED {
            log::info!("connection closed peer={peer} reason=pipelined-too-deep");
            self.shut(peer);
        }
        Turn::Later
    }

    /// A request thread is about to serve `peer`'s connection (the dispatcher found it free).
    pub(crate) fn begin_requests(&self, peer: Option<SocketAddr>) {
        if let Some(peer) = peer {
            self.inner
                .lock()
                .busy
                .insert(peer, Busy::Requests(VecDeque::new()));
        }
    }

    /// The next request queued behind `peer`'s, for its request thread; `None` ends the
    /// connection's turn (nothing is waiting, or a stream took the connection).
    pub(crate) fn next(&self, peer: Option<SocketAddr>) -> Option<Request> {
        let peer = peer?;
        let mut inner = self.inner.lock();
        match inner.busy.get_mut(&peer) {
            Some(Busy::Requests(queue)) => {
                let next = queue.pop_front();
                if next.is_none() {
                    inner.busy.remove(&peer);
                }
                next
            }
            _ => None,
        }
    }

    /// `peer`'s request thread ended without [`Pipelines::next`] saying so (the OS refused
    /// the thread, a handler panicked): the requests still queued are dropped, the connection
    /// shut. A stream that took the connection keeps it.
    pub(crate) fn end_requests(&self, peer: Option<SocketAddr>) {
        let Some(peer) = peer else { return };
        let left = {
            let mut inner = self.inner.lock();
            if !matches!(inner.busy.get(&peer), Some(Busy::Requests(_))) {
                return;
            }
            match inner.busy.remove(&peer) {
                Some(Busy::Requests(queue)) => queue.into_iter().collect::<Vec<_>>(),
                _ => Vec::new(),
            }
        };
        if !left.is_empty() {
            self.orphan(peer, left);
        }
    }

    /// A stream takes `peer`'s connection (from the dispatcher, or from its request thread,
    /// whose queue is then held behind the stream).
    pub(crate) fn begin_stream(&self, peer: Option<SocketAddr>) {
        let Some(peer) = peer else { return };
        let mut inner = self.inner.lock();
        let held = match inner.busy.remove(&peer) {
            Some(Busy::Requests(queue)) => queue.into_iter().collect(),
            Some(Busy::Stream(held)) => held,
            None => Vec::new(),
        };
        inner.busy.insert(peer, Busy::Stream(held));
    }

    /// `peer`'s stream ended (or never started): requests held behind it are dropped, the
    /// connection shut (its head said `Connection: close`).
    pub(crate) fn end_stream(&self, peer: Option<SocketAddr>) {
        let Some(peer) = peer else { return };
        let held = {
            let mut inner = self.inner.lock();
            if !matches!(inner.busy.get(&peer), Some(Busy::Stream(_))) {
                return;
            }
            match inner.busy.remove(&peer) {
                Some(Busy::Stream(held)) => held,
                _ => Vec::new(),
            }
        };
        if !held.is_empty() {
            self.orphan(peer, held);
        }
    }

    /// Housekeeping (the dispatcher, every quarter second): drops the requests orphaned a
    /// round ago or earlier.
    pub(crate) fn reap(&self) {
        let old: Vec<Request> = {
            let mut inner = self.inner.lock();
            let round = inner.round;
            inner.round += 1;
            if inner.orphans.is_empty() {
                return;
            }
            let (old, young) = std::mem::take(&mut inner.orphans)
                .into_iter()
                .partition(|(r, _)| *r < round);
            inner.orphans = young;
            old.into_iter().map(|(_, rq)| rq).collect()
        };
        // Each drop makes tiny_http write a 500 onto the shut socket: it fails at once. A drop
        // can panic (a declared length over isize::MAX, see http::body): contained.
        crate::http::body::drop_contained(
            old.into_iter()
                .map(|rq| Box::new(rq) as Box<dyn Send>)
                .collect(),
        );
    }

    /// Connections busy now (for tests and `/debug`).
    #[cfg(test)]
    pub(crate) fn busy(&self) -> usize {
        self.inner.lock().busy.len()
    }

    /// Shuts `peer`'s connection and keeps `requests` to be dropped by [`Pipelines::reap`].
    fn orphan(&self, peer: SocketAddr, requests: Vec<Request>) {
        self.shut(peer);
        let mut inner = self.inner.lock();
        let round = inner.round;
        inner
            .orphans
            .extend(requests.into_iter().map(|rq| (round, rq)));
    }

    /// Shuts both halves of `peer`'s connection: whatever is written to it fails at once.
    pub(crate) fn shut(&self, peer: SocketAddr) {
        let local = self.conns.local();
        let skip = crate::sys::fd::FdSet::default();
        // Through checked dups (fd::own_connection): tiny_http may close a number and a new
        // connection get it between a check and an action.
        for fd in fd::find_connection(local, peer, &skip) {
            if let Some(s) = fd::own_connection(fd, local, Some(peer)) {
                s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiny_http::TestRequest;

    fn request(peer: SocketAddr, path: &str) -> Request {
        TestRequest::new()
            .with_remote_addr(peer)
            .with_path(path)
            .into()
    }

    fn path(turn: Turn) -> Option<String> {
        match turn {
            Turn::Now(rq) => Some(rq.url().to_string()),
            Turn::Later => None,
        }
    }

    #[test]
    fn a_connection_waits_its_turn_and_is_served_in_order() {
        let local: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let p = Pipelines::new(std::sync::Arc::new(ConnTable::new(local)));
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:40001".parse().unwrap(),
            "127.0.0.1:40002".parse().unwrap(),
        );
        assert_eq!(path(p.turn(request(a, "/1"))).as_deref(), Some("/1"));
        p.begin_requests(Some(a));
        assert_eq!(path(p.turn(request(a, "/2"))), None, "queued behind /1");
        assert_eq!(path(p.turn(request(a, "/3"))), None);
        assert_eq!(
            path(p.turn(request(b, "/x"))).as_deref(),
            Some("/x"),
            "others go on"
        );
        // The thread serving `a` gets them in order; its own routing is never queued.
        let _serving = Serving::begin(Some(a));
        assert_eq!(path(p.turn(request(a, "/own"))).as_deref(), Some("/own"));
        assert_eq!(
            p.next(Some(a)).map(|r| r.url().to_string()).as_deref(),
            Some("/2")
        );
        assert_eq!(
            p.next(Some(a)).map(|r| r.url().to_string()).as_deref(),
            Some("/3")
        );
        assert!(p.next(Some(a)).is_none());
        assert_eq!(p.busy(), 0, "the turn ended with the queue");
    }

    #[test]
    fn requests_behind_a_stream_are_held_then_dropped_after_it_ends() {
        let local: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let p = Pipelines::new(std::sync::Arc::new(ConnTable::new(local)));
        let a: SocketAddr = "127.0.0.1:40003".parse().unwrap();
        p.begin_requests(Some(a));
        assert!(path(p.turn(request(a, "/queued"))).is_none());
        // The request thread routes a stream: what was queued is now held behind it.
        p.begin_stream(Some(a));
        assert!(
            p.next(Some(a)).is_none(),
            "the request thread's turn is over"
        );
        assert!(path(p.turn(request(a, "/behind"))).is_none());
        p.end_requests(Some(a));
        assert_eq!(p.busy(), 1, "the stream keeps the connection");
        p.end_stream(Some(a));
        assert_eq!(p.busy(), 0);
        assert_eq!(p.inner.lock().orphans.len(), 2);
        p.reap();
        assert_eq!(p.inner.lock().orphans.len(), 2, "kept one round");
        p.reap();
        assert!(p.inner.lock().orphans.is_empty());
    }
}
