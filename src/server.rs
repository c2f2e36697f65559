//! The server: starts tiny_http on a listener, the dispatcher and the refresher, routes requests,
//! and shuts everything down in order, joining every thread it spawned.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::RwLock;
use serde_json::json;
use tiny_http::{Method, Request};

use crate::alarm::hub::AlarmHub;
use crate::alarm::refresher::{Health, Refresher};
use crate::alarm::store::Store;
use crate::alarm::stream::{self as alarm_stream, Mode};
use crate::config::{Config, ConfigError};
use crate::http::accept::{self, Supervisor};
use crate::http::response::{self, Reply};
use crate::http::sweep::ConnTable;
use crate::http::validate::{parse_alarm_body, query_get, split_url, valid_id};
use crate::metrics::Metrics;
use crate::threads::{Role, Threads};

/// Largest request body read; a larger one gets 413 without being read.
pub const MAX_BODY: usize = 64 * 1024;
/// Longest request target; a longer one gets 414.
pub const MAX_URL: usize = 8 * 1024;
/// Most header bytes (names and values); more get 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most header lines; more get 431.
pub const MAX_HEADERS: usize = 100;

/// Most requests the dispatcher routes in a row while holding the chat room's wakes.
const HELD_REQUESTS: usize = 64;
/// Longest time the dispatcher holds the chat room's wakes while routing queued requests.
const HELD_FOR: Duration = Duration::from_millis(2);

/// Stack of the dispatcher, refresher and request threads (SQLite wants more than a stream).
const SERVICE_STACK: usize = 256 * 1024;

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// A configuration value is out of range.
    Config(ConfigError),
    /// The listening socket could not be bound.
    Bind(std::io::Error),
    /// The store could not be opened or created.
    Store(String),
    /// A thread could not be spawned.
    Spawn(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Bind(e) => write!(f, "cannot listen: {e}"),
            StartError::Store(e) => write!(f, "cannot open store: {e}"),
            StartError::Spawn(e) => write!(f, "cannot spawn thread: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// State every thread of one server shares.
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// The address the server listens on (port resolved).
    pub local: SocketAddr,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Every thread this server spawned.
    pub threads: Threads,
    /// Connected alarm ids and their values.
    pub hub: Arc<AlarmHub>,
    /// Store health (`None`: fine).
    pub health: Health,
    /// Disconnected when the server shuts down: the refresher's and dispatcher's loops watch it.
    /// Stream threads watch their own [`StreamSlot::closed`] instead: a channel that a thousand
    /// `select!` loops register on serialises their wake-ups on its one waker lock (and each
    /// unregister scans every other registration; both showed in the profile of chat fan-out).
    pub shutdown: Receiver<()>,
    /// One close channel per stream slot, disconnected all at once by shutdown.
    closers: parking_lot::Mutex<Closers>,
    /// The chat room.
    pub chat: Arc<crate::chat::Room>,
    /// Accepted connections: header deadline, idle time-out, streams.
    pub conns: Arc<ConnTable>,
    /// The tiny_http server in use (replaced if its accept loop dies).
    http: parking_lot::Mutex<Option<Arc<tiny_http::Server>>>,
    /// The listening socket, kept to rebuild tiny_http on it.
    listener: TcpListener,
    next_conn: AtomicU64,
    streams: AtomicUsize,
    requests: AtomicUsize,
    /// Requests whose thread the OS refused, handed back for a 503 (see [`Handover`]).
    refused: (Sender<Box<Request>>, Receiver<Box<Request>>),
}

/// A place under `--max-clients`, held by a streaming client; released on drop. It carries the
/// stream's own shutdown channel, [`StreamSlot::closed`].
pub struct StreamSlot {
    shared: Arc<Shared>,
    key: u64,
    closed: Receiver<()>,
}

impl StreamSlot {
    /// Disconnected when the server shuts down (at once if it already has): the stream's
    /// `select!` loop watches this instead of the server-wide [`Shared::shutdown`].
    pub fn closed(&self) -> &Receiver<()> {
        &self.closed
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.shared.closers.lock().open.remove(&self.key);
        self.shared.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The senders of every stream slot's close channel; shutdown drops them all.
#[derive(Default)]
struct Closers {
    shut: bool,
    next: u64,
    open: std::collections::HashMap<u64, Sender<()>>,
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

struct RequestSlot(Arc<Shared>);

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    /// A new connection number for logs.
    pub fn next_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Takes a streaming slot, or `None` at `--max-clients`.
    pub fn stream_slot(self: &Arc<Self>) -> Option<StreamSlot> {
        let max = self.config.max_clients;
        self.streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        let (key, closed) = self.closers.lock().open();
        Some(StreamSlot {
            shared: self.clone(),
            key,
            closed,
        })
    }

    /// Streaming clients now.
    pub fn stream_count(&self) -> usize {
        self.streams.load(Ordering::Acquire)
    }

    /// Extra header lines every SSE response carries (CORS, when configured).
    pub fn cors_headers(&self) -> Vec<String> {
        match &self.config.cors_origin {
            Some(origin) => vec![
                format!("Access-Control-Allow-Origin: {origin}"),
                "Vary: Origin".to_string(),
            ],
            None => Vec::new(),
        }
    }

    /// Sends `reply` for `request`, adding the CORS headers when configured. Every reply of
    /// the server goes through here.
    pub fn respond(&self, request: Request, reply: Reply) {
        let mut reply = reply;
        if let Some(origin) = &self.config.cors_origin {
            reply = response::add_header(reply, "Access-Control-Allow-Origin", origin);
            reply = response::add_header(reply, "Vary", "Origin");
        }
        let _ = request.respond(reply);
    }

    /// Spawns a stream thread for `request`; on refusal (slot or OS) answers 503 itself.
    pub fn spawn_stream<F>(self: &Arc<Self>, role: Role, name: String, request: Request, body: F)
    where
        F: FnOnce(Arc<Shared>, Request, StreamSlot) + Send + 'static,
    {
        let Some(slot) = self.stream_slot() else {
            self.metrics.reject("max-clients");
            log::warn!(
                "stream refused reason=max-clients max={}",
                self.config.max_clients
            );
            self.respond(request, response::retry_later(503, 1, "too many clients"));
            return;
        };
        self.spawn_with(
            role,
            name,
            self.config.stream_stack,
            request,
            move |shared, rq| body(shared, rq, slot),
        );
    }

    /// Spawns a short request thread (store access, bodies); over `--max-requests` answers 503.
    pub fn spawn_request<F>(self: &Arc<Self>, request: Request, handler: F)
    where
        F: FnOnce(&Shared, &mut Request) -> Reply + Send + 'static,
    {
        let max = self.config.max_requests;
        if self
            .requests
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            self.metrics.reject("max-requests");
            self.respond(request, response::retry_later(503, 1, "server busy"));
            return;
        }
        let slot = RequestSlot(self.clone());
        let name = format!("req-{}", self.next_conn());
        self.spawn_with(
            Role::Request,
            name,
            SERVICE_STACK,
            request,
            move |shared, mut rq| {
                let _slot = slot;
                let reply = handler(&shared, &mut rq);
                shared.respond(rq, reply);
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
    pub fn run_request<F>(self: &Arc<Self>, mut request: Request, handler: F)
    where
        F: FnOnce(&Shared, &mut Request) -> Reply + Send + 'static,
    {
        let buffered = request.body_length().is_some_and(|n| n <= 1024)
            && !request.headers().iter().any(|h| h.field.equiv("Expect"));
        if buffered {
            let reply = handler(self, &mut request);
            self.respond(request, reply);
        } else {
            self.spawn_request(request, handler);
        }
    }

    /// Spawns `body` with `request`; if the OS refuses the thread, answers 503 and counts it.
    fn spawn_with<F>(
        self: &Arc<Self>,
        role: Role,
        name: String,
        stack: usize,
        request: Request,
        body: F,
    ) where
        F: FnOnce(Arc<Shared>, Request) + Send + 'static,
    {
        let handover = Handover {
            request: Some(Box::new(request)),
            refused: self.refused.0.clone(),
        };
        let shared = self.clone();
        let spawned = self.threads.spawn(role, name, stack, move || {
            let mut handover = handover;
            if let Some(rq) = handover.request.take() {
                drop(handover);
                body(shared, *rq);
            }
        });
        if let Err(e) = spawned {
            self.metrics.reject("thread-spawn");
            log::error!("thread spawn failed role={} error={e}", role.as_str());
            // The refused closure was dropped, and its handover passed the request back.
            while let Ok(rq) = self.refused.1.try_recv() {
                self.respond(*rq, response::retry_later(503, 1, "cannot start a thread"));
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
            // Never blocks (the spawner may hold the thread registry's lock). Full only if more
            // spawns failed at once than it holds: that request then gets tiny_http's 500.
            let _ = self.refused.try_send(rq);
        }
    }
}

/// A running syncast server.
pub struct Server {
    shared: Arc<Shared>,
    shutdown_tx: Option<Sender<()>>,
}

impl Server {
    /// Validates `config`, opens (or creates) the store, binds the listener and starts serving.
    pub fn start(config: Config) -> Result<Server, StartError> {
        config.validate().map_err(StartError::Config)?;
        accept::install_panic_watch();
        // Create the file and schema now, so a bad path is a start error, not a degraded run.
        Store::open(&config.db, config.busy_timeout, true).map_err(|e| StartError::Store(e.0))?;
        let listener = TcpListener::bind(config.listen).map_err(StartError::Bind)?;
        let local = listener.local_addr().map_err(StartError::Bind)?;
        // Read before tiny_http starts: a panic of its accept thread in the moment before the
        // dispatcher first runs (a burst of connections at start-up, out of descriptors) must
        // still be noticed. (Reading it in the dispatcher instead missed exactly that, and the
        // EMFILE test then saw no recovery at all on a loaded machine.)
        let panics_at_start = accept::tiny_http_panics();
        let http = accept::start(&listener, true).map_err(StartError::Bind)?;
        let (shutdown_tx, shutdown_rx) = bounded::<()>(0);
        let (hub, load_now) = AlarmHub::new();
        let metrics = Arc::new(Metrics::default());
        let threads = Threads::new();
        let health: Health = Arc::new(RwLock::new(None));
        let chat = crate::chat::Room::new(&config, metrics.clone());
        let shared = Arc::new(Shared {
            config,
            local,
            metrics: metrics.clone(),
            threads: threads.clone(),
            hub: hub.clone(),
            health: health.clone(),
            shutdown: shutdown_rx.clone(),
            closers: parking_lot::Mutex::default(),
            chat,
            conns: Arc::new(ConnTable::new(local)),
            http: parking_lot::Mutex::new(Some(http)),
            listener,
            next_conn: AtomicU64::new(0),
            streams: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            refused: bounded(64),
        });
        let refresher = Refresher {
            db: shared.config.db.clone(),
            busy_timeout: shared.config.busy_timeout,
            every: shared.config.refresh,
            hub,
            load_now,
            metrics,
            health,
            shutdown: shutdown_rx,
            fault_panic_id: shared.config.fault_panic_id.clone(),
        };
        threads
            .spawn(
                Role::Refresher,
                "refresher".into(),
                SERVICE_STACK,
                move || {
                    // A panic in a refresh must not leave streams without values: restart.
                    loop {
                        let run = std::panic::AssertUnwindSafe(|| refresher.run());
                        match std::panic::catch_unwind(run) {
                            Ok(()) => return,
                            Err(cause) => {
                                refresher.metrics.refresher_restarts.inc();
                                let cause = crate::threads::panic_message(&*cause);
                                log::error!("refresher panicked cause={cause:?}; restarting");
                            }
                        }
                    }
                },
            )
            .map_err(StartError::Spawn)?;
        let d_shared = shared.clone();
        threads
            .spawn(
                Role::Dispatcher,
                "dispatcher".into(),
                SERVICE_STACK,
                move || dispatch_loop(&d_shared, Supervisor::new(local, panics_at_start)),
            )
            .map_err(StartError::Spawn)?;
        log::info!("server listening addr={local}");
        Ok(Server {
            shared,
            shutdown_tx: Some(shutdown_tx),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// Stops accepting, sends every stream `event: shutdown` and closes it, stops the
    /// refresher, joins every thread this server spawned and returns how many it joined.
    /// Connections tiny_http still holds are shut so its own (unjoinable) threads end too.
    pub fn shutdown(mut self) -> usize {
        self.stop()
    }

    fn stop(&mut self) -> usize {
        let Some(tx) = self.shutdown_tx.take() else {
            return 0;
        };
        log::info!("shutdown started streams={}", self.shared.stream_count());
        // Count every join from here on, including the dispatcher's last reaps.
        let joined_before = self.shared.threads.joined_total();
        drop(tx);
        self.shared.closers.lock().shut();
        if let Some(http) = self.shared.http.lock().as_ref() {
            http.unblock();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let (_, left) = self.shared.threads.join_all(deadline);
        let joined = (self.shared.threads.joined_total() - joined_before) as usize;
        // tiny_http's pool threads park reading keep-alive connections: shut those sockets so
        // they see EOF and exit; its accept thread exits when the Server is dropped.
        // The dispatcher has ended: dropping the last tiny_http Server stops its accept thread.
        self.shared.http.lock().take();
        let shut = crate::sys::fd::shutdown_accepted(self.shared.local);
        if left > 0 {
            log::error!("shutdown incomplete: joined {joined} threads, {left} still running");
        }
        log::info!("shutdown complete: joined {joined} threads");
        log::debug!("shutdown closed {shut} idle connections");
        joined
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn dispatch_loop(shared: &Arc<Shared>, mut accept: Supervisor) {
    let housekeeping = Duration::from_millis(250);
    let mut trim = crate::sys::mem::Trim::default();
    let sweep_every = Duration::from_secs(1).min(shared.config.header_timeout / 2);
    let mut next_housekeeping = Instant::now() + housekeeping;
    let mut next_sweep = Instant::now() + sweep_every;
    loop {
        let Some(http) = shared.http.lock().clone() else {
            return;
        };
        let mut wake = next_housekeeping.min(next_sweep);
        if let Some(due) = accept.next_due() {
            wake = wake.min(due);
        }
        match http.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(Some(request)) => {
                // Requests already queued are routed before the chat room wakes its streams: a
                // burst of posts then wakes each member once, not once per post. The guard
                // sends the wakes when dropped; the caps (count and time: an answer written to a
                // slow client must not hold every member's wake) keep it short.
                let held = Instant::now();
                let _wakes = shared.chat.hold_wakes();
                let mut next = Some(request);
                let mut routed = 0;
                while let Some(request) = next.take() {
                    accept.served(&request);
                    route(shared, request);
                    routed += 1;
                    if routed < HELD_REQUESTS && held.elapsed() < HELD_FOR {
                        match http.try_recv() {
                            Ok(more) => next = more,
                            // tiny_http reports an accept error once: it must reach the
                            // supervisor, or the dead accept loop is never restarted.
                            Err(e) => {
                                if !shutting_down(shared) {
                                    accept.accept_failed(&e, &shared.metrics);
                                }
                            }
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                if shutting_down(shared) {
                    return;
                }
                // The accept thread has ended; its pool threads may still deliver requests of
                // open keep-alive connections, so this server is still polled until replaced.
                accept.accept_failed(&e, &shared.metrics);
            }
        }
        if shutting_down(shared) {
            return;
        }
        for request in accept.drain_retired() {
            accept.served(&request);
            route(shared, request);
        }
        if let Some(new) = accept.tick(&shared.listener, http, &shared.metrics) {
            *shared.http.lock() = Some(new);
        }
        let now = Instant::now();
        if now >= next_housekeeping {
            shared.threads.reap();
            shared.chat.housekeeping();
            trim.after_streams_left(shared.stream_count());
            next_housekeeping = now + housekeeping;
        }
        if now >= next_sweep {
            let swept = shared
                .conns
                .sweep(shared.config.header_timeout, shared.config.max_pending);
            let m = &shared.metrics;
            m.header_timeouts.add(swept.header_timeouts as u64);
            m.idle_closed.add(swept.idle as u64);
            m.pending_over_cap.add(swept.over_cap as u64);
            m.pending_connections.set(swept.pending as u64);
            next_sweep = now + sweep_every;
        }
    }
}

fn shutting_down(shared: &Shared) -> bool {
    matches!(
        shared.shutdown.try_recv(),
        Err(crossbeam_channel::TryRecvError::Disconnected)
    )
}

/// Routes one request: cheap in-memory answers inline, streams and store work on threads.
fn route(shared: &Arc<Shared>, request: Request) {
    shared.metrics.requests.inc();
    if let Some(peer) = request.remote_addr() {
        shared.conns.request_seen(*peer);
    }
    // tiny_http reads request lines and headers without a limit; refuse oversized ones here.
    if request.url().len() > MAX_URL {
        shared.metrics.reject("too-large");
        let reply = response::error(414, "request line too long (max 8192 bytes)");
        shared.respond(request, reply);
        return;
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|h| h.field.as_str().as_str().len() + h.value.as_str().len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES || request.headers().len() > MAX_HEADERS {
        shared.metrics.reject("too-large");
        let reply = response::error(
            431,
            "request headers too large (max 16384 bytes, 100 lines)",
        );
        shared.respond(request, reply);
        return;
    }
    if *request.method() == Method::Options {
        let reply = match &shared.config.cors_origin {
            Some(_) => {
                let r = response::no_content();
                let r = response::add_header(
                    r,
                    "Access-Control-Allow-Methods",
                    "GET, PUT, POST, DELETE, OPTIONS",
                );
                let r = response::add_header(
                    r,
                    "Access-Control-Allow-Headers",
                    "Authorization, Content-Type, Last-Event-ID",
                );
                response::add_header(r, "Access-Control-Max-Age", "600")
            }
            None => method_not_allowed("GET, PUT, POST, DELETE"),
        };
        shared.respond(request, reply);
        return;
    }
    let url = request.url().to_string();
    let (path, query) = split_url(&url);
    let method = request.method().clone();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let Some(len) = request.body_length() {
        if len > MAX_BODY {
            shared.metrics.reject("too-large");
            let reply = response::error(413, "request body too large (max 65536 bytes)");
            shared.respond(request, reply);
            return;
        }
    }
    let reply = match (segments.as_slice(), &method) {
        (["healthz"], Method::Get) => healthz(shared),
        (["metrics"], Method::Get) => metrics(shared),
        (["debug", "threads"], Method::Get) => debug_threads(shared),
        (["sse", "call", id], Method::Get) => {
            let id = crate::http::validate::percent_decode(id).unwrap_or_default();
            if !valid_id(&id) {
                bad_request(
                    shared,
                    "invalid id: use 1-64 characters of A-Z a-z 0-9 . _ -",
                )
            } else {
                match Mode::parse(query_get(&query, "mode")) {
                    None => bad_request(shared, "invalid mode: use tick or change"),
                    Some(mode) => {
                        let conn = shared.next_conn();
                        shared.spawn_stream(
                            Role::AlarmStream,
                            format!("sse-{conn}"),
                            request,
                            move |shared, rq, slot| {
                                alarm_stream::serve(shared, rq, id, mode, conn, slot)
                            },
                        );
                        return;
                    }
                }
            }
        }
        (["alarms", id], Method::Get | Method::Put | Method::Delete) => {
            let id = crate::http::validate::percent_decode(id).unwrap_or_default();
            if !valid_id(&id) {
                bad_request(
                    shared,
                    "invalid id: use 1-64 characters of A-Z a-z 0-9 . _ -",
                )
            } else {
                shared.spawn_request(request, move |shared, rq| {
                    alarm_request(shared, rq, &id, &method)
                });
                return;
            }
        }
        (["sse", "call", _], _) => method_not_allowed("GET"),
        (["alarms", _], _) => method_not_allowed("GET, PUT, DELETE"),
        (["healthz"] | ["metrics"] | ["debug", "threads"], _) => method_not_allowed("GET"),
        (["chat", ..], _) => {
            crate::chat::http::route(shared, request, &segments, &query);
            return;
        }
        ([""], Method::Get) => crate::web::index(),
        ([""], _) => method_not_allowed("GET"),
        _ => response::error(404, "not found"),
    };
    shared.respond(request, reply);
}

/// Counts and answers a 400.
pub fn bad_request(shared: &Shared, message: &str) -> Reply {
    shared.metrics.reject("bad-request");
    response::error(400, message)
}

/// A 405 naming the allowed methods.
pub fn method_not_allowed(allow: &str) -> Reply {
    response::add_header(response::error(405, "method not allowed"), "Allow", allow)
}

/// Reads a request body of at most [`MAX_BODY`] bytes (also when no length was declared).
pub fn read_body(shared: &Shared, request: &mut Request) -> Result<Vec<u8>, Reply> {
    let mut body = Vec::new();
    match request
        .as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
    {
        Ok(n) if n > MAX_BODY => {
            shared.metrics.reject("too-large");
            Err(response::error(
                413,
                "request body too large (max 65536 bytes)",
            ))
        }
        Ok(_) => Ok(body),
        Err(e) => Err(response::error(400, &format!("cannot read body: {e}"))),
    }
}

fn alarm_request(shared: &Shared, request: &mut Request, id: &str, method: &Method) -> Reply {
    let body = match method {
        Method::Put => match read_body(shared, request) {
            Ok(body) => match parse_alarm_body(&body) {
                Some(v) => Some(v),
                None => {
                    return bad_request(shared, "body must be true, false or {\"alarm\":bool}");
                }
            },
            Err(reply) => return reply,
        },
        _ => None,
    };
    let store = match Store::open(&shared.config.db, shared.config.busy_timeout, false) {
        Ok(s) => s,
        Err(e) => return response::error(503, &format!("store unavailable: {e}")),
    };
    let result = match (method, body) {
        (Method::Put, Some(v)) => store.set(id, v).map(|()| response::no_content()),
        (Method::Delete, _) => store.delete(id).map(|()| response::no_content()),
        _ => store
            .get(id)
            .map(|v| response::json(200, &json!({ "id": id, "alarm": v }))),
    };
    result.unwrap_or_else(|e| response::error(503, &format!("store unavailable: {e}")))
}

fn healthz(shared: &Shared) -> Reply {
    match shared.health.read().clone() {
        None => response::json(200, &json!({ "status": "ok" })),
        Some(reason) => response::json(503, &json!({ "status": "degraded", "reason": reason })),
    }
}

fn metrics(shared: &Shared) -> Reply {
    let mut extra: Vec<(&str, &str, String)> = vec![
        (
            "syncast_alarm_ids_registered",
            "Alarm ids connected now.",
            shared.hub.len().to_string(),
        ),
        (
            "syncast_streaming_clients",
            "Streaming clients (alarm and chat) now.",
            shared.stream_count().to_string(),
        ),
        (
            "syncast_threads_spawned_live",
            "Live threads this server spawned.",
            shared.threads.live().to_string(),
        ),
        (
            "syncast_thread_panics_total",
            "Panics caught in server threads.",
            shared.threads.panics().to_string(),
        ),
    ];
    let text = shared.metrics.render(&std::mem::take(&mut extra));
    let mut text = text;
    for (role, n) in shared.threads.count_by_role() {
        text.push_str(&format!(
            "syncast_threads_live{{role=\"{}\"}} {n}\n",
            role.as_str()
        ));
    }
    response::with_type(
        200,
        text.into_bytes(),
        "text/plain; version=0.0.4; charset=utf-8",
    )
}

fn debug_threads(shared: &Shared) -> Reply {
    let status = crate::sys::proc::status(crate::sys::proc::Proc::This);
    let (process_threads, rss) = (status.threads, status.rss_bytes);
    let by_role: serde_json::Map<String, serde_json::Value> = shared
        .threads
        .count_by_role()
        .into_iter()
        .map(|(r, n)| (r.as_str().to_string(), json!(n)))
        .collect();
    let list: Vec<serde_json::Value> = shared
        .threads
        .list()
        .into_iter()
        .map(|t| json!({ "name": t.name, "role": t.role.as_str(), "age_ms": t.started.elapsed().as_millis() as u64 }))
        .collect();
    response::json(
        200,
        &json!({
            "process_threads": process_threads,
            "process_rss_bytes": rss,
            "spawned_live": list.len(),
            "by_role": by_role,
            "threads": list,
        }),
    )
}
