//! Admission: who gets a thread. Stream slots under `--max-clients` (each with its own close
//! channel), request slots under `--max-requests`, connection numbers, the spawn helpers that
//! hand a request to its new thread, and the replies of every refusal.
//!
//! Handlers call [`Admission::spawn_stream`], [`Admission::spawn_request`] or
//! [`Admission::run_request`]; a refusal (cap reached, or the OS refused the thread) is counted
//! and answered here, from [`Refusal`], so what a refused client sees is decided in one place.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;
use tiny_http::Request;

use crate::config::Config;
use crate::http::response::{self, Cors, Reply};
use crate::metrics::Metrics;
use crate::threads::{Role, Threads, SERVICE_STACK};

/// Why a request was refused before it got a thread of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `--max-clients` streams run already.
    MaxClients,
    /// `--max-requests` short requests run already.
    MaxRequests,
    /// The OS refused the thread.
    ThreadSpawn,
}

impl Refusal {
    /// The `reason` label of `syncast_rejected_total`.
    fn reason(self) -> &'static str {
        match self {
            Refusal::MaxClients => "max-clients",
            Refusal::MaxRequests => "max-requests",
            Refusal::ThreadSpawn => "thread-spawn",
        }
    }

    /// What the client gets: a 503 it may retry after a second.
    fn reply(self) -> Reply {
        let message = match self {
            Refusal::MaxClients => "too many clients",
            Refusal::MaxRequests => "server busy",
            Refusal::ThreadSpawn => "cannot start a thread",
        };
        response::retry_later(503, 1, message)
    }
}

/// Who gets a thread, and the replies of those who do not.
pub(crate) struct Admission {
    max_clients: usize,
    max_requests: usize,
    stream_stack: usize,
    cors: Cors,
    metrics: Arc<Metrics>,
    threads: Threads,
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
    /// Admission under `config`'s caps; threads are spawned in `threads`.
    pub(crate) fn new(config: &Config, metrics: Arc<Metrics>, threads: Threads) -> Arc<Admission> {
        Arc::new(Admission {
            max_clients: config.max_clients,
            max_requests: config.max_requests,
            stream_stack: config.stream_stack,
            cors: Cors::new(config.cors_origin.clone()),
            metrics,
            threads,
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

    /// Takes a streaming slot, or `None` at `--max-clients`.
    fn stream_slot(self: &Arc<Self>) -> Option<StreamSlot> {
        let max = self.max_clients;
        self.streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        let (key, closed) = self.closers.lock().open();
        Some(StreamSlot {
            admit: self.clone(),
            key,
            closed,
        })
    }

    /// Lets go of the close channels' table after a peak (see [`crate::sys::mem::shrink_map`]).
    pub(crate) fn shrink(&self) {
        crate::sys::mem::shrink_map(&mut self.closers.lock().open);
    }

    /// Streaming clients now.
    pub(crate) fn stream_count(&self) -> usize {
        self.streams.load(Ordering::Acquire)
    }

    /// Disconnects the close channel of every stream slot, now and from now on (shutdown).
    pub(crate) fn close_streams(&self) {
        self.closers.lock().shut();
    }

    /// Sends `reply` for `request` (with the CORS headers, when configured).
    pub(crate) fn respond(&self, request: Request, reply: Reply) {
        self.cors.respond(request, reply);
    }

    /// Counts a refusal (once per refusal, however many requests it turns away).
    fn count(&self, why: Refusal) {
        self.metrics.reject(why.reason());
    }

    /// Spawns a stream thread for `request`, named after its role and a new connection number
    /// (`sse-17`, `chat-18`), which `body` gets too; on refusal (slot or OS) answers 503 itself.
    pub(crate) fn spawn_stream<F>(self: &Arc<Self>, role: Role, request: Request, body: F)
    where
        F: FnOnce(Request, StreamSlot, u64) + Send + 'static,
    {
        let conn = self.next_conn();
        let name = format!("{}-{conn}", role.stream_prefix());
        let Some(slot) = self.stream_slot() else {
            self.count(Refusal::MaxClients);
            log::warn!("stream refused reason=max-clients max={}", self.max_clients);
            self.respond(request, Refusal::MaxClients.reply());
            return;
        };
        self.spawn_with(role, name, self.stream_stack, request, move |rq| {
            body(rq, slot, conn)
        });
    }

    /// Like [`Admission::spawn_stream`], but `prepare` runs first, on the calling thread, once
    /// the slot is taken: its `Err` reply is answered there (the slot is given back and no thread
    /// is spent), its `Ok` value goes to `body` on the new thread. If the OS refuses the thread
    /// the value is dropped on the calling thread, so its `Drop` must undo what `prepare` did.
    ///
    /// Why: what is allocated and freed on a stream thread stays in that thread's malloc cache
    /// (glibc's tcache) for the stream's whole life. The chat room's work for a new stream
    /// (a token, the welcome's JSON) freed ~7 KiB of small blocks per member there.
    pub(crate) fn spawn_stream_prepared<P, G, F>(
        self: &Arc<Self>,
        role: Role,
        request: Request,
        prepare: G,
        body: F,
    ) where
        P: Send + 'static,
        G: FnOnce(&Request) -> Result<P, Reply>,
        F: FnOnce(Request, P, StreamSlot, u64) + Send + 'static,
    {
        let conn = self.next_conn();
        let name = format!("{}-{conn}", role.stream_prefix());
        let Some(slot) = self.stream_slot() else {
            self.count(Refusal::MaxClients);
            log::warn!("stream refused reason=max-clients max={}", self.max_clients);
            self.respond(request, Refusal::MaxClients.reply());
            return;
        };
        let prepared = match prepare(&request) {
            Ok(p) => p,
            Err(reply) => {
                drop(slot);
                self.respond(request, reply);
                return;
            }
        };
        self.spawn_with(role, name, self.stream_stack, request, move |rq| {
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
        G: FnOnce(&Request) -> Result<P, Reply> + Send + 'static,
        F: FnOnce(Request, P, StreamSlot, u64) + Send + 'static,
    {
        let conn = self.next_conn();
        let name = format!("{}-{conn}", role.stream_prefix());
        let Some(slot) = self.stream_slot() else {
            self.count(Refusal::MaxClients);
            log::warn!("stream refused reason=max-clients max={}", self.max_clients);
            self.respond(request, Refusal::MaxClients.reply());
            return;
        };
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
        let request_slot = RequestSlot(self.clone());
        let admit = self.clone();
        self.spawn_with(
            Role::Request,
            format!("req-{}", self.next_conn()),
            SERVICE_STACK,
            request,
            move |rq| {
                let prepared = prepare(&rq);
                drop(request_slot);
                match prepared {
                    Ok(p) => admit.spawn_with(role, name, admit.stream_stack, rq, move |rq| {
                        body(rq, p, slot, conn)
                    }),
                    Err(reply) => {
                        drop(slot);
                        admit.respond(rq, reply);
                    }
                }
            },
        );
    }

    /// Spawns a short request thread (store access, bodies); over `--max-requests` answers 503.
    pub(crate) fn spawn_request<F>(self: &Arc<Self>, request: Request, handler: F)
    where
        F: FnOnce(&mut Request) -> Reply + Send + 'static,
    {
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
        self.spawn_with(
            Role::Request,
            name,
            SERVICE_STACK,
            request,
            move |mut rq| {
                let slot = slot;
                let reply = handler(&mut rq);
                slot.0.respond(rq, reply);
            },
        );
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
        if buffered {
            let reply = handler(&mut request);
            self.respond(request, reply);
        } else {
            self.spawn_request(request, handler);
        }
    }

    /// Spawns `body` with `request`; if the OS refuses the thread, answers 503 and counts it.
    fn spawn_with<F>(&self, role: Role, name: String, stack: usize, request: Request, body: F)
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
            self.count(Refusal::ThreadSpawn);
            log::error!("thread spawn failed role={} error={e}", role.as_str());
            // The refused closure was dropped, and its handover passed the request back.
            while let Ok(rq) = self.refused.1.try_recv() {
                self.respond(*rq, Refusal::ThreadSpawn.reply());
            }
        }
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
