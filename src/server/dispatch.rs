//! The dispatcher thread: takes requests from tiny_http and routes them, runs the accept
//! supervisor, and does the periodic work (reaping threads, expiring chat sessions, the
//! connection sweep, giving memory back).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use parking_lot::Mutex;

use super::router::Router;
use crate::admit::Admission;
use crate::chat::room::Room;
use crate::http::accept::Supervisor;
use crate::http::sweep::ConnTable;
use crate::metrics::Metrics;
use crate::sys::mem::Trim;
use crate::threads::Threads;

/// Most requests the dispatcher routes in a row while holding the chat room's wakes.
const HELD_REQUESTS: usize = 64;
/// Longest time the dispatcher holds the chat room's wakes while routing queued requests.
const HELD_FOR: Duration = Duration::from_millis(2);

/// The tiny_http server in use, shared with [`super::Server`] (which wakes it at shutdown);
/// replaced when its accept loop dies, `None` once the server has stopped.
pub(crate) type CurrentHttp = Arc<Mutex<Option<Arc<tiny_http::Server>>>>;

/// What the dispatcher owns and reads.
pub(crate) struct Dispatcher {
    /// Routes each request.
    pub(crate) router: Router,
    /// The chat room: its wakes are held while a run of queued requests is routed.
    pub(crate) room: Arc<Room>,
    /// Finished threads are reaped here.
    pub(crate) threads: Threads,
    /// Streaming clients, for the memory trim.
    pub(crate) admit: Arc<Admission>,
    /// Connections, swept here.
    pub(crate) conns: Arc<ConnTable>,
    /// Counters.
    pub(crate) metrics: Arc<Metrics>,
    /// The tiny_http server in use.
    pub(crate) http: CurrentHttp,
    /// The listening socket, kept to start tiny_http again on it.
    pub(crate) listener: TcpListener,
    /// Disconnected when the server shuts down.
    pub(crate) shutdown: Receiver<()>,
    /// `--header-timeout`.
    pub(crate) header_timeout: Duration,
    /// `--max-pending`.
    pub(crate) max_pending: usize,
}

impl Dispatcher {
    /// Runs until shutdown.
    pub(crate) fn run(self, mut accept: Supervisor) {
        let housekeeping = Duration::from_millis(250);
        let mut trim = Trim::default();
        let sweep_every = Duration::from_secs(1).min(self.header_timeout / 2);
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
                        self.router.route(request);
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
                self.router.route(request);
            }
            if let Some(new) = accept.tick(&self.listener, http, &self.metrics) {
                *self.http.lock() = Some(new);
            }
            let now = Instant::now();
            if now >= next_housekeeping {
                self.threads.reap();
                self.room.housekeeping();
                trim.after_streams_left(self.admit.stream_count());
                next_housekeeping = now + housekeeping;
            }
            if now >= next_sweep {
                let swept = self.conns.sweep(self.header_timeout, self.max_pending);
                let m = &self.metrics;
                m.header_timeouts.add(swept.header_timeouts as u64);
                m.idle_closed.add(swept.idle as u64);
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
