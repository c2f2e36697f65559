//! The dispatcher thread: takes requests from tiny_http and routes them, runs the accept
//! supervisor, and does the periodic work (reaping threads, expiring chat sessions, the
//! connection sweep, giving memory back).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use parking_lot::Mutex;
use tiny_http::Request;

use super::router::{Listener, Router};
use crate::admit::Admission;
use crate::chat::room::Room;
use crate::http::accept::Supervisor;
use crate::http::sweep::ConnTable;
use crate::http::watch::Watcher;
use crate::metrics::Metrics;
use crate::sys::mem::{Trim, Trimmed};
use crate::threads::Threads;

/// Most requests the dispatcher routes in a row while holding the chat room's wakes.
const HELD_REQUESTS: usize = 64;
/// Longest time the dispatcher holds the chat room's wakes while routing queued requests.
const HELD_FOR: Duration = Duration::from_millis(2);

/// How long an admin request may wait for the dispatcher at most: with `--admin-listen` the
/// dispatcher wakes this often to look at the admin server's queue (tiny_http's queue cannot be
/// waited on together with another), 20 wake-ups a second more than without.
const ADMIN_POLL: Duration = Duration::from_millis(50);
/// Most admin requests routed per wake-up, so that a flood there cannot starve the streams.
const ADMIN_BATCH: usize = 64;

/// The `--admin-listen` server: a tiny_http server of its own on its own socket, whose requests
/// the dispatcher takes between the public ones. It costs tiny_http's threads (an accept thread
/// and 4 pool threads) and no thread of syncast's.
pub(crate) struct AdminHttp {
    /// The address it listens on.
    pub(crate) local: SocketAddr,
    listener: TcpListener,
    http: Option<tiny_http::Server>,
    /// When to try starting tiny_http again after its accept loop died.
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl AdminHttp {
    /// Binds `addr` and starts tiny_http on it.
    pub(crate) fn start(addr: SocketAddr) -> std::io::Result<AdminHttp> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        let http = Some(crate::http::accept::start_owned(&listener, true)?);
        Ok(AdminHttp {
            local,
            listener,
            http,
            retry_at: None,
            backoff: Duration::from_millis(50),
        })
    }

    /// Moves the requests waiting (at most [`ADMIN_BATCH`]) into `out`, without blocking. An
    /// accept error (out of descriptors) ends tiny_http's accept loop for good: it is started
    /// again on the same socket, with back-off while that fails.
    fn take(&mut self, out: &mut Vec<Request>) {
        if self.http.is_none() && self.retry_at.is_some_and(|t| Instant::now() >= t) {
            match crate::http::accept::start_owned(&self.listener, false) {
                Ok(http) => {
                    log::info!("admin accept loop restarted");
                    self.http = Some(http);
                    self.retry_at = None;
                    self.backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    self.backoff = (self.backoff * 2).min(Duration::from_secs(1));
                    log::error!(
                        "admin accept loop restart failed error={e}; retrying in {}ms",
                        self.backoff.as_millis()
                    );
                    self.retry_at = Some(Instant::now() + self.backoff);
                }
            }
        }
        let Some(http) = &self.http else { return };
        while out.len() < ADMIN_BATCH {
            match http.try_recv() {
                Ok(Some(rq)) => out.push(rq),
                Ok(None) => break,
                Err(e) => {
                    log::error!("admin accept loop failed error={e}; restarting");
                    self.http = None;
                    self.retry_at = Some(Instant::now() + self.backoff);
                    break;
                }
            }
        }
    }
}

/// The tiny_http server in use, shared with [`super::Server`] (which wakes it at shutdown);
/// replaced when its accept loop dies, `None` once the server has stopped.
pub(crate) type CurrentHttp = Arc<Mutex<Option<Arc<tiny_http::Server>>>>;

/// What the dispatcher owns and reads.
pub(crate) struct Dispatcher {
    /// Routes each request.
    pub(crate) router: Arc<Router>,
    /// The chat room: its wakes are held while a run of queued requests is routed.
    pub(crate) room: Arc<Room>,
    /// Finished threads are reaped here.
    pub(crate) threads: Threads,
    /// Streaming clients, for the memory trim.
    pub(crate) admit: Arc<Admission>,
    /// Connections, swept here.
    pub(crate) conns: Arc<ConnTable>,
    /// The watcher, whose table is shrunk after a peak.
    pub(crate) watcher: Arc<Watcher>,
    /// Counters.
    pub(crate) metrics: Arc<Metrics>,
    /// The tiny_http server in use.
    pub(crate) http: CurrentHttp,
    /// The listening socket, kept to start tiny_http again on it.
    pub(crate) listener: TcpListener,
    /// The `--admin-listen` server, if any.
    pub(crate) admin: Option<AdminHttp>,
    /// Disconnected when the server shuts down.
    pub(crate) shutdown: Receiver<()>,
    /// `--header-timeout`.
    pub(crate) header_timeout: Duration,
    /// `--body-timeout` (the sweep runs at least twice per deadline).
    pub(crate) body_timeout: Duration,
    /// `--max-pending`.
    pub(crate) max_pending: usize,
}

impl Dispatcher {
    /// Runs until shutdown.
    pub(crate) fn run(mut self, mut accept: Supervisor) {
        let housekeeping = Duration::from_millis(250);
        let mut trim = Trim::default();
        let sweep_every = Duration::from_secs(1)
            .min(self.header_timeout / 2)
            .min(self.body_timeout / 2);
        let mut next_housekeeping = Instant::now() + housekeeping;
        let mut next_sweep = Instant::now() + sweep_every;
        loop {
            let Some(http) = self.http.lock().clone() else {
                return;
            };
            let mut wake = next_housekeeping.min(next_sweep);
            if let Some(due) = accept.next_due() {
                wake = wake.min(due);
            }
            if self.admin.is_some() {
                wake = wake.min(Instant::now() + ADMIN_POLL);
            }
            match http.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(Some(request)) => {
                    // Requests already queued are routed before the chat room wakes its streams:
                    // a burst of posts then wakes each member once, not once per post. The guard
                    // sends the wakes when dropped; the caps (count and time: an answer written to
                    // a slow client must not hold every member's wake) keep it short.
                    let held = Instant::now();
                    let _wakes = self.room.hold_wakes();
                    let mut next = Some(request);
                    let mut routed = 0;
                    while let Some(request) = next.take() {
                        accept.served(&request);
                        self.router.route(request, Listener::Public);
                        routed += 1;
                        if routed < HELD_REQUESTS && held.elapsed() < HELD_FOR {
                            match http.try_recv() {
                                Ok(more) => next = more,
                                // tiny_http reports an accept error once: it must reach the
                                // supervisor, or the dead accept loop is never restarted.
                                Err(e) => {
                                    if !self.shutting_down() {
                                        accept.accept_failed(&e, &self.metrics);
                                    }
                                }
                            }
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    if self.shutting_down() {
                        return;
                    }
                    // The accept thread has ended; its pool threads may still deliver requests
                    // of open keep-alive connections, so this server is still polled until
                    // replaced.
                    accept.accept_failed(&e, &self.metrics);
                }
            }
            if self.shutting_down() {
                return;
            }
            for request in accept.drain_retired() {
                self.router.route(request, Listener::Public);
            }
            if let Some(admin) = self.admin.as_mut() {
                let mut waiting = Vec::new();
                admin.take(&mut waiting);
                for request in waiting {
                    self.router.route(request, Listener::Admin);
                }
            }
            if let Some(new) = accept.tick(&self.listener, http, &self.metrics) {
                *self.http.lock() = Some(new);
            }
            let now = Instant::now();
            if now >= next_housekeeping {
                self.threads.reap();
                self.room.housekeeping();
                self.admit.housekeeping();
                // Stream threads still live, not only slots taken: a thread frees its malloc
                // caches when it exits, after giving back its slot.
                let streams = self.admit.stream_count().max(self.threads.streams_live());
                let trimmed = trim.after_streams_left(streams, now, || {
                    self.threads.shrink();
                    self.admit.shrink();
                    self.room.shrink();
                    self.router.alarms.streams.hub.shrink();
                    self.conns.shrink();
                    self.watcher.shrink();
                });
                if trimmed == Trimmed::Settled {
                    // The code the leave ran (thread exits, closes, sweeps: ~1.5 MiB measured)
                    // goes back to the page cache, as after start.
                    if let Err(e) = crate::sys::mem::release_clean_file_pages() {
                        log::debug!("file pages not released error={e}");
                    }
                }
                next_housekeeping = now + housekeeping;
            }
            if now >= next_sweep {
                let swept = self.conns.sweep(self.header_timeout, self.max_pending);
                let m = &self.metrics;
                m.header_timeouts.add(swept.header_timeouts as u64);
                m.idle_closed.add(swept.idle as u64);
                m.body_timeouts.add(swept.body_timeouts as u64);
                m.pending_over_cap.add(swept.over_cap as u64);
                m.pending_connections.set(swept.pending as u64);
                m.connections_stuck.set(swept.stuck as u64);
                next_sweep = now + sweep_every;
            }
        }
    }

    fn shutting_down(&self) -> bool {
        matches!(
            self.shutdown.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }
}
