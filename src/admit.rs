//! Admission: who gets a thread. Stream slots under `--max-clients` (each with its own close
//! channel), request slots under `--max-requests`, connection numbers, the spawn helpers that
//! hand a request to its new thread, and the replies of every refusal.
//!
//! Handlers call [`Admission::spawn_stream`], [`Admission::spawn_request`] or
//! [`Admission::run_request`]; a refusal (cap reached, or the OS refused the thread) is counted
//! and answered here, from [`Refusal`], so what a refused client sees is decided in one place.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;
use tiny_http::Request;

use crate::config::Config;
use crate::http::body::{self, Bodies};
use crate::http::pipeline::{self, Pipelines, Serving};
use crate::http::response::{self, bad_request, Cors, Reply};
use crate::http::socket;
use crate::http::sse;
use crate::http::sweep::ConnTable;
use crate::metrics::Metrics;
use crate::threads::{Role, Threads, SERVICE_STACK};

/// How long one write of a buffered answer may block (`SO_SNDTIMEO`, set on the listening
/// socket and inherited by every accepted one: Linux copies it to the accepted socket, checked
/// in `tests/it/http.rs`). Only a client that leaves its answers unread fills the socket's
/// buffers so far that a write waits at all; the dispatcher writes most answers itself, and
/// must not wait on such a client for longer than this. Streams set their own (`--write-timeout`).
pub(crate) const REPLY_WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// What routes a request: the server's router, which a request thread calls for the requests
/// its connection pipelined behind the one it served (see [`crate::http::pipeline`]).
pub(crate) trait Route: Send + Sync {
    /// Routes one request, as the dispatcher does.
    fn route(&self, request: Request);
}

/// Who gets a thread, and the replies of those who do not.
pub(crate) struct Admission {
    max_clients: usize,
    max_requests: usize,
    stream_stack: usize,
    body_timeout: Duration,
    cors: Cors,
    /// Where every reply goes out, and bodies left unread are disposed of.
    bodies: Arc<Bodies>,
    metrics: Arc<Metrics>,
    threads: Threads,
    /// The connections: a stream refusal finds its socket here.
    conns: Arc<ConnTable>,
    /// State of the jitter sequence of refusals' retry delays.
    jitter: AtomicU64,
    /// What is in flight on each connection, and the requests waiting behind it.
    pipelines: Pipelines,
    /// The router, for the requests a request thread serves after its first.
    router: OnceLock<Weak<dyn Route>>,
    next_conn: AtomicU64,
    streams: AtomicUsize,
    requests: AtomicUsize,
    /// One close channel per stream slot, disconnected all at once by [`Admission::close_streams`].
    closers: Mutex<Closers>,
    /// Requests whose thread the OS refused, handed back for a 503 (see [`Handover`]).
    refused: (Sender<Box<Request>>, Receiver<Box<Request>>),
}

/// A place under `--max-clients`, held by a streaming client; released on drop. It carries the
/// stream's own shutdown channel, [`StreamSlot::closed`].
pub(crate) struct StreamSlot {
    admit: Arc<Admission>,
    key: u64,
    closed: Receiver<()>,
    /// The stream's connection: claimed as a stream's from the moment the dispatcher routed its
    /// request, so requests tiny_http parses behind it are discarded or held unanswered until
    /// it ends (see `ConnTable::admit` and [`crate::http::pipeline`]).
    peer: Option<SocketAddr>,
}

impl StreamSlot {
    /// Disconnected when the server shuts down (at once if it already has): the stream's
    /// `select!` loop watches this. A channel that a thousand `select!` loops register on
    /// serialises their wake-ups on its one waker lock (and each unregister scans every other
    /// registration; both showed in the profile of chat fan-out), so each stream has its own.
    pub(crate) fn closed(&self) -> &Receiver<()> {
        &self.closed
    }

    /// Whether the server is shutting down: a write that failed then failed because shutdown
    /// shut the socket of a stream blocked in it (`reason=shutdown`, not the client's doing).
    pub(crate) fn is_closed(&self) -> bool {
        matches!(
            self.closed.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.admit.closers.lock().open.remove(&self.key);
        self.admit.streams.fetch_sub(1, Ordering::AcqRel);
        if let Some(peer) = self.peer {
            self.admit.bodies.stream_released(peer);
        }
        self.admit.pipelines.end_stream(self.peer);
    }
}

/// The senders of every stream slot's close channel; shutdown drops them all.
#[derive(Default)]
struct Closers {
    shut: bool,
    next: u64,
    open: HashMap<u64, Sender<()>>,
}

impl Closers {
    /// A new close channel; already disconnected once shutdown has begun.
    fn open(&mut self) -> (u64, Receiver<()>) {
        let (tx, rx) = bounded(0);
        self.next += 1;
        if !self.shut {
            self.open.insert(self.next, tx);
        }
        (self.next, rx)
    }

    /// Disconnects every close channel, now and from now on.
    fn shut(&mut self) {
        self.shut = true;
        self.open.clear();
    }
}

struct RequestSlot(Arc<Admission>);

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// Admission under `config`'s caps; threads are spawned in `threads`, replies go out through
    /// `bodies`.
    pub(crate) fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        threads: Threads,
        conns: Arc<ConnTable>,
        bodies: Arc<Bodies>,
    ) -> Arc<Admission> {
        // Seeded apart per process and start, so two servers restarted together do not send
        // their crowds back in step.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32);
        Arc::new(Admission {
            max_clients: config.max_clients,
            max_requests: config.max_requests,
            stream_stack: config.stream_stack,
            body_timeout: config.body_timeout,
            cors: Cors::new(config.cors_origin.clone()),
            bodies,
            metrics,
            threads,
            pipelines: Pipelines::new(conns.clone()),
            router: OnceLock::new(),
            conns,
            jitter: AtomicU64::new(seed),
            next_conn: AtomicU64::new(0),
            streams: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            closers: Mutex::default(),
            refused: bounded(64),
        })
    }

    /// A new connection number for logs.
    pub(crate) fn next_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The router, for the requests a connection pipelines behind one on a request thread.
    pub(crate) fn set_router(&self, router: Weak<dyn Route>) {
        let _ = self.router.set(router);
    }

    /// Whether `request` is served now (`Some`), or waits behind its connection's request in
    /// flight or its stream (see [`crate::http::pipeline`]); the router asks first.
    pub(crate) fn turn(&self, request: Request) -> Option<Request> {
        match self.pipelines.turn(request) {
            pipeline::Turn::Now(rq) => Some(rq),
            pipeline::Turn::Later => None,
        }
    }

    /// Periodic work on the dispatcher: drops requests that will never be answered.
    pub(crate) fn housekeeping(&self) {
        self.pipelines.reap();
    }

    /// Routes a request on the calling (request) thread.
    fn route_here(&self, request: Request) {
        match self.router.get().and_then(Weak::upgrade) {
            Some(router) => router.route(request),
            // The server is gone: the request's drop answers it (500).
            None => drop(request),
        }
    }

    /// Takes a streaming slot, or `None` at `--max-clients`.
    fn stream_slot(self: &Arc<Self>, peer: Option<SocketAddr>) -> Option<StreamSlot> {
        let max = self.max_clients;
        self.streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        let (key, closed) = self.closers.lock().open();
        self.pipelines.begin_stream(peer);
        if let Some(peer) = peer {
            // Claimed now, on the dispatcher: a request tiny_http parses behind this one is
            // discarded from here on, even before the stream's thread runs.
            self.conns.stream_started(peer);
        }
        Some(StreamSlot {
            admit: self.clone(),
            key,
            closed,
            peer,
        })
    }

    /// A place under `--max-clients` for a chat TCP connection (which holds a thread like a
    /// stream), or `None` at the cap; a refusal is counted here, answered by the caller.
    pub(crate) fn tcp_slot(self: &Arc<Self>) -> Option<StreamSlot> {
        let slot = self.stream_slot(None);
        if slot.is_none() {
            self.count(Refusal::MaxClients);
        }
        slot
    }

    /// Counts a refusal answered elsewhere (a chat TCP connection's thread the OS refused).
    pub(crate) fn count_refusal(&self, why: Refusal) {
        self.count(why);
    }

    /// `--max-clients`.
    pub(crate) fn max_clients(&self) -> usize {
        self.max_clients
    }

    /// Lets go of the close channels' table after a peak (see [`crate::sys::mem::shrink_map`]).
    /// The request pipelines' and read bodies' tables too.
    pub(crate) fn shrink(&self) {
        crate::sys::mem::shrink_map(&mut self.closers.lock().open);
        self.pipelines.shrink();
        self.bodies.shrink();
    }

    /// Streaming clients now.
    pub(crate) fn stream_count(&self) -> usize {
        self.streams.load(Ordering::Acquire)
    }

    /// Disconnects the close channel of every stream slot, now and from now on (shutdown).
    pub(crate) fn close_streams(&self) {
        self.closers.lock().shut();
    }

    /// Sends `reply` for `request` (with the CORS headers, when configured), closing the
    /// connection when the request's body was left unread (see [`Bodies::respond`]). A write
    /// that stays blocked past [`REPLY_WRITE_TIMEOUT`] (a client that sends requests and reads no
    /// answer, so its socket buffers are full) fails, and the connection is shut: whatever else
    /// it pipelined then fails at once instead of blocking the dispatcher again.
    pub(crate) fn respond(&self, request: Request, reply: Reply) {
        let peer = request.remote_addr().copied();
        let Err(e) = self.bodies.respond(request, self.cors.apply(reply)) else {
            return;
        };
        let blocked = matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        );
        if let (true, Some(peer)) = (blocked, peer) {
            log::info!("connection closed peer={peer} reason=write-timeout");
            self.metrics.write_timeouts.inc();
            self.pipelines.shut(peer);
        }
    }

    /// Request bodies: read them with `http::request::read_body(admit.bodies(), ..)`, so that one
    /// read to its end keeps its connection open.
    pub(crate) fn bodies(&self) -> &Bodies {
        &self.bodies
    }

    /// Counts a refusal (once per refusal, however many requests it turns away).
    fn count(&self, why: Refusal) {
        self.metrics.reject(why.reason());
    }

    /// Spawns a stream thread for `request`, named after its role and a new connection number
    /// (`sse-17`, `chat-18`), which `body` gets too. A refusal (no slot, the server shutting
    /// down, the OS refusing the thread) is answered here with [`Admission::refuse_stream`],
    /// without a thread.
    pub(crate) fn spawn_stream<F>(self: &Arc<Self>, role: Role, request: Request, body: F)
    where
        F: FnOnce(Request, StreamSlot, u64) + Send + 'static,
    {
        let Some((request, slot, conn, name)) = self.stream_start(role, request) else {
            return;
        };
        self.spawn_with(role, name, self.stream_stack, request, true, move |rq| {
            body(rq, slot, conn)
        });
    }

    /// What every stream spawn does first, on the calling thread: a request with a body on the
    /// socket is refused (400: a stream never reads one, and one left unread would close the
    /// connection anyway), a stream asked for during shutdown or at `--max-clients` gets
    /// `event: refused`; otherwise the request comes back with its slot, connection number and
    /// thread name. `None`: it was answered.
    fn stream_start(
        self: &Arc<Self>,
        role: Role,
        request: Request,
    ) -> Option<(Request, StreamSlot, u64, String)> {
        if body::location(&request) == body::Location::OnSocket {
            let reply = bad_request(&self.metrics, "a stream request carries no body");
            self.respond(request, reply);
            return None;
        }
        let conn = self.next_conn();
        let name = format!("{}-{conn}", role.stream_prefix());
        let peer = request.remote_addr().copied();
        if self.closers.lock().shut {
            log::warn!("stream refused reason=shutting-down");
            self.refuse_stream(request, Refusal::ShuttingDown);
            return None;
        }
        let Some(slot) = self.stream_slot(peer) else {
            log::warn!("stream refused reason=max-clients max={}", self.max_clients);
            self.refuse_stream(request, Refusal::MaxClients);
            return None;
        };
        Some((request, slot, conn, name))
    }

    /// Answers a stream request its preparation refused, giving its slot back first: a reply
    /// the user must act on as it is, a refusal that passes as `event: refused`.
    fn unprepared(&self, request: Request, slot: StreamSlot, why: Unprepared) {
        drop(slot);
        match why {
            Unprepared::Reply(reply) => self.respond(request, reply),
            Unprepared::Retry(why) => {
                log::warn!("stream refused reason={}", why.reason());
                self.refuse_stream(request, why);
            }
        }
    }

    /// A retry delay for `why`: its base ± 50 %, in milliseconds.
    pub(crate) fn retry_ms(&self, why: Refusal) -> u64 {
        jittered_ms(why.base_retry(), splitmix64(&self.jitter))
    }

    /// Counts a stream request refused for `why` and answers it so that `EventSource` comes
    /// back by itself: `200 text/event-stream`, `retry:` with a jittered delay, one `event:
    /// refused` with `{"reason","retry_ms"}`, then the connection is closed (a `503` would end
    /// an `EventSource` for good: WHATWG HTML, "Server-sent events", and the web-platform test
    /// `request-status-error`). No thread is spawned: the few hundred bytes are written on the
    /// calling thread, never blocking ([`socket::answer_and_close`]).
    pub(crate) fn refuse_stream(&self, request: Request, why: Refusal) {
        self.count(why);
        self.write_refusal(request, why);
    }

    /// The answer of [`Admission::refuse_stream`], not counted.
    fn write_refusal(&self, request: Request, why: Refusal) {
        let retry_ms = self.retry_ms(why);
        let bytes = sse::refusal(&self.cors.sse_headers(), why.reason(), retry_ms);
        let peer = request.remote_addr().copied();
        let mut writer = request.into_writer();
        match peer {
            Some(peer) => {
                let skip = self.conns.stream_fds();
                let _ = socket::answer_and_close(self.conns.local(), peer, &skip, &bytes);
            }
            // Only a request without a socket (a test's) has no peer: nothing can block there.
            None => {
                let _ = writer.write_all(&bytes).and_then(|()| writer.flush());
            }
        }
    }

    /// Like [`Admission::spawn_stream`], but `prepare` runs first, on the calling thread, once
    /// the slot is taken: its `Err` reply is answered there (the slot is given back and no thread
    /// is spent), its `Ok` value goes to `body` on the new thread. If the OS refuses the thread
    /// the value is dropped on the calling thread, so its `Drop` must undo what `prepare` did.
    ///
    /// Why: what is allocated and freed on a stream thread stays in that thread's malloc cache
    /// (glibc's tcache) for the stream's whole life. The chat room's work for a new stream
    /// (a token, the welcome's JSON) freed ~7 KiB of small blocks per member there.
    ///
    /// `prepare` may refuse with a reply (a 4xx the user acts on) or with a [`Refusal`] the
    /// client should retry (a full room): that one is answered as [`Admission::refuse_stream`]
    /// does, `event: refused`.
    pub(crate) fn spawn_stream_prepared<P, G, F>(
        self: &Arc<Self>,
        role: Role,
        request: Request,
        prepare: G,
        body: F,
    ) where
        P: Send + 'static,
        G: FnOnce(&Request) -> Result<P, Unprepared>,
        F: FnOnce(Request, P, StreamSlot, u64) + Send + 'static,
    {
        let Some((request, slot, conn, name)) = self.stream_start(role, request) else {
            return;
        };
        let prepared = match prepare(&request) {
            Ok(p) => p,
            Err(why) => return self.unprepared(request, slot, why),
        };
        self.spawn_with(role, name, self.stream_stack, request, true, move |rq| {
            body(rq, prepared, slot, conn)
        });
    }

    /// Like [`Admission::spawn_stream_prepared`], for a `prepare` that waits for I/O (the chat
    /// on Redis asks Redis to attach): it runs on a request thread (under `--max-requests`),
    /// which then spawns the stream's own thread, so neither the dispatcher waits nor the
    /// stream thread keeps what preparing allocated (see `spawn_stream_prepared`). The stream
    /// slot is taken first, on the calling thread, as there.
    pub(crate) fn spawn_stream_prepared_off<P, G, F>(
        self: &Arc<Self>,
        role: Role,
        request: Request,
        prepare: G,
        body: F,
    ) where
        P: Send + 'static,
        G: FnOnce(&Request) -> Result<P, Unprepared> + Send + 'static,
        F: FnOnce(Request, P, StreamSlot, u64) + Send + 'static,
    {
        let Some((request, slot, conn, name)) = self.stream_start(role, request) else {
            return;
        };
        let peer = request.remote_addr().copied();
        let admit = self.clone();
        let run = move |rq: Request| {
            let prepared = prepare(&rq);
            match prepared {
                Ok(p) => {
                    admit.spawn_with(role, name, admit.stream_stack, rq, true, move |rq| {
                        body(rq, p, slot, conn)
                    });
                }
                Err(why) => admit.unprepared(rq, slot, why),
            }
        };
        if pipeline::serving(peer) {
            // A request thread already (the stream was pipelined behind a request it served).
            return run(request);
        }
        let max = self.max_requests;
        if self
            .requests
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            // The closure (and the stream slot in it) is dropped first: the slot is free again.
            drop(run);
            log::warn!("stream refused reason=max-requests max={max}");
            return self.refuse_stream(request, Refusal::MaxRequests);
        }
        let request_slot = RequestSlot(self.clone());
        self.spawn_with(
            Role::Request,
            format!("req-{}", self.next_conn()),
            SERVICE_STACK,
            request,
            true,
            move |rq| {
                let _request_slot = request_slot;
                run(rq);
            },
        );
    }

    /// Spawns a short request thread (store access, bodies); over `--max-requests` answers 503.
    pub(crate) fn spawn_request<F>(self: &Arc<Self>, request: Request, handler: F)
    where
        F: FnOnce(&mut Request) -> Reply + Send + 'static,
    {
        let peer = request.remote_addr().copied();
        if pipeline::serving(peer) {
            // This thread serves the connection already (a request pipelined behind its first).
            let mut rq = request;
            let reply = self.serve(&mut rq, handler);
            return self.respond(rq, reply);
        }
        let max = self.max_requests;
        if self
            .requests
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            self.count(Refusal::MaxRequests);
            self.respond(request, Refusal::MaxRequests.reply());
            return;
        }
        let slot = RequestSlot(self.clone());
        let name = format!("req-{}", self.next_conn());
        self.pipelines.begin_requests(peer);
        let spawned = self.spawn_with(
            Role::Request,
            name,
            SERVICE_STACK,
            request,
            false,
            move |mut rq| {
                let slot = slot;
                let admit = &slot.0;
                let _serving = Serving::begin(peer);
                // However this thread ends (a panic included), the connection's turn ends.
                let _turn = EndTurn(admit, peer);
                let reply = admit.serve(&mut rq, handler);
                admit.respond(rq, reply);
                // Then the requests its connection pipelined behind this one, in order.
                while let Some(next) = admit.pipelines.next(peer) {
                    admit.route_here(next);
                }
            },
        );
        if !spawned {
            self.pipelines.end_requests(peer);
        }
    }

    /// Runs `handler` for a request whose work is in memory (no store, no socket): inline on the
    /// dispatcher when its body is already buffered, else on a request thread.
    ///
    /// tiny_http reads a body of at most 1 KiB into memory on its own thread before handing the
    /// request over, unless the client sent `Expect: 100-continue` (src/request.rs,
    /// `new_request`); reading such a body cannot block. A larger or chunked body is read from the
    /// socket lazily, so it must not be read on the dispatcher.
    pub(crate) fn run_request<F>(self: &Arc<Self>, mut request: Request, handler: F)
    where
        F: FnOnce(&mut Request) -> Reply + Send + 'static,
    {
        let buffered = request.body_length().is_some_and(|n| n <= 1024)
            && !request.headers().iter().any(|h| h.field.equiv("Expect"));
        if buffered || pipeline::serving(request.remote_addr().copied()) {
            let reply = self.serve(&mut request, handler);
            self.respond(request, reply);
        } else {
            self.spawn_request(request, handler);
        }
    }

    /// Runs `handler` for `request` on the calling thread; a body still to come from the socket
    /// must arrive within `--body-timeout` of now, or the sweep cuts it and the answer is 408
    /// (whatever the handler made of the short body), the connection closed.
    fn serve<F>(&self, request: &mut Request, handler: F) -> Reply
    where
        F: FnOnce(&mut Request) -> Reply,
    {
        let watch = match request.remote_addr() {
            Some(peer) if body::location(request) == body::Location::OnSocket => Some(BodyWatch {
                conns: &self.conns,
                peer: *peer,
                cut: self
                    .conns
                    .body_started(*peer, std::time::Instant::now() + self.body_timeout),
            }),
            _ => None,
        };
        // A handler that panics leaves no mark of a body read to its end (http::body).
        let _read = self.bodies.guard(request);
        let reply = handler(request);
        match watch {
            Some(w) if w.cut.load(Ordering::Acquire) => {
                let message = format!(
                    "request body not received within {} ms (--body-timeout)",
                    self.body_timeout.as_millis()
                );
                response::add_header(response::error(408, &message), "Connection", "close")
            }
            _ => reply,
        }
    }

    /// Spawns `body` with `request`; if the OS refuses the thread, counts it and answers it
    /// (a stream with [`Admission::refuse_stream`], anything else 503) and returns `false`.
    fn spawn_with<F>(
        &self,
        role: Role,
        name: String,
        stack: usize,
        request: Request,
        stream: bool,
        body: F,
    ) -> bool
    where
        F: FnOnce(Request) + Send + 'static,
    {
        let handover = Handover {
            request: Some(Box::new(request)),
            refused: self.refused.0.clone(),
        };
        let spawned = self.threads.spawn(role, name, stack, move || {
            let mut handover = handover;
            if let Some(rq) = handover.request.take() {
                drop(handover);
                body(*rq);
            }
        });
        if let Err(e) = spawned {
            log::error!("thread spawn failed role={} error={e}", role.as_str());
            self.count(Refusal::ThreadSpawn);
            // The refused closure was dropped, and its handover passed the request back.
            while let Ok(rq) = self.refused.1.try_recv() {
                if stream {
                    self.write_refusal(*rq, Refusal::ThreadSpawn);
                } else {
                    self.respond(*rq, Refusal::ThreadSpawn.reply());
                }
            }
            return false;
        }
        true
    }
}

/// A body being read under `--body-timeout`; unregistered from the sweep when dropped.
struct BodyWatch<'a> {
    conns: &'a ConnTable,
    peer: SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for BodyWatch<'_> {
    fn drop(&mut self) {
        self.conns.body_ended(self.peer);
    }
}

/// Ends a request thread's turn on its connection when dropped (see
/// [`Pipelines::end_requests`]).
struct EndTurn<'a>(&'a Admission, Option<SocketAddr>);

impl Drop for EndTurn<'_> {
    fn drop(&mut self) {
        self.0.pipelines.end_requests(self.1);
    }
}

/// A request on its way to a new thread, inside the thread's closure. If the OS refuses the
/// thread, the closure is dropped on the spawning thread and this hands the request back through
/// `refused`, so it can still get a 503. (A one-slot channel used to carry it: ~0.8 KiB freed on
/// the new thread, where glibc's per-thread cache then kept it for the stream's whole life.)
struct Handover {
    request: Option<Box<Request>>,
    refused: Sender<Box<Request>>,
}

impl Drop for Handover {
    fn drop(&mut self) {
        if let Some(rq) = self.request.take() {
            // Never blocks (this runs inside the failed spawn, on the dispatcher). Full only if
            // more spawns failed at once than it holds: that request then gets tiny_http's 500.
            let _ = self.refused.try_send(rq);
        }
    }
}

mod refusal;
#[cfg(test)]
mod tests;

use refusal::splitmix64;
pub(crate) use refusal::{jittered_ms, Refusal, Unprepared};
