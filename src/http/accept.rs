//! Keeping tiny_http accepting: starting it on our listener, noticing that its accept thread
//! died, and starting it again.
//!
//! tiny_http 0.12's accept thread ends for good in three ways, none of which it recovers from:
//! - any `accept()` error, e.g. `EMFILE`: it pushes the error to `recv()` and `break`s
//!   (src/lib.rs, "Error accepting new client");
//! - a failed `dup` of an accepted socket (`EMFILE` again): `try_clone().unwrap()` panics
//!   (src/util/refined_tcp_stream.rs, `impl Clone for Stream`) and nothing reaches `recv()`;
//! - the OS refusing a thread: `TaskPool::spawn` calls `thread::spawn`, which panics, while it
//!   holds the pool's queue lock (src/util/task_pool.rs), so the lock is poisoned and every pool
//!   thread that looks for work next panics too. Nothing reaches `recv()` either.
//!
//! [`start`] also turns a panic of `Server::from_listener` (its own `thread::spawn`) into an
//! error, so a restart attempted while the OS still refuses threads cannot kill the dispatcher.
//!
//! The dispatcher owns one [`Supervisor`]. It restarts tiny_http on a `try_clone` of the same
//! listening socket when `recv()` reports an error, and, when the process-wide panic count
//! ([`tiny_http_panics`]) has moved since the server in use was started, it sends itself a
//! marked `GET /healthz` (connecting without blocking) and restarts if that is not served in
//! time. A restart that fails
//! (no descriptor for the clone, no thread) is retried with back-off until it succeeds.
//! Servers replaced this way are kept and drained: their pool threads may still be serving
//! keep-alive connections accepted before the accept thread died.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tiny_http::Request;

use crate::sys::proc;

/// Header that marks the dispatcher's own liveness probe.
pub(crate) const PROBE_HEADER: &str = "X-Syncast-Probe";

/// How long a probe may take to be served before the accept loop is declared dead. Generous:
/// a false alarm costs a needless restart, not a lost request (the old server is drained).
const PROBE_DEADLINE: Duration = Duration::from_secs(3);

/// First and longest wait between two restart attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Replaced servers drained at once; beyond this the oldest is dropped.
const MAX_RETIRED: usize = 8;

/// Panics seen in tiny_http's own (unnamed) threads, process-wide.
static TINY_HTTP_PANICS: AtomicU64 = AtomicU64::new(0);

/// Panics counted so far in tiny_http's threads (all servers of this process).
pub(crate) fn tiny_http_panics() -> u64 {
    TINY_HTTP_PANICS.load(Ordering::Relaxed)
}

/// Installs (once per process) the panic hook that counts panics in tiny_http's threads:
/// a panic located in tiny_http's source, or an unnamed thread failing to spawn a thread.
/// The previous hook still runs (the panic is still printed).
pub(crate) fn install_panic_watch() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tiny_http = info
                .location()
                .is_some_and(|l| l.file().contains("tiny_http"));
            let unnamed = std::thread::current().name().is_none();
            if in_tiny_http
                || (unnamed && crate::threads::panic_message(info.payload()).contains("spawn"))
            {
                TINY_HTTP_PANICS.fetch_add(1, Ordering::Relaxed);
            }
            previous(info);
        }));
    });
}

/// Starts tiny_http on a clone of `listener` (so it can be started again on the same socket).
/// Fails without panicking when the clone needs a descriptor the process does not have, or
/// when the OS refuses tiny_http its accept thread (`thread::spawn` panics in
/// `Server::from_listener`, src/lib.rs "creating a task where server.accept() ...").
///
/// With `settle` (the server's first start, on the starting thread) it returns once tiny_http's
/// new threads are asleep, at most about [`SETTLE_LIMIT`] later: its pool adds a thread for a
/// connection that arrives while none of its 4 is waiting yet (src/util/task_pool.rs, `spawn`),
/// so a client connecting the moment the address is printed used to leave the idle server with
/// 9 threads instead of 8 until the surplus one expired 5 s later (3 starts in 12 with a probe
/// connecting at once; 0 in 12 with the wait). A restart (on the dispatcher, with streams
/// running) does not wait: there the count does not matter and the dispatcher must not stall.
pub(crate) fn start(
    listener: &TcpListener,
    settle: bool,
) -> std::io::Result<Arc<tiny_http::Server>> {
    start_owned(listener, settle).map(Arc::new)
}

/// Like [`start`], the server not yet shared.
pub(crate) fn start_owned(
    listener: &TcpListener,
    settle: bool,
) -> std::io::Result<tiny_http::Server> {
    let clone = listener.try_clone()?;
    let before = if settle { proc::thread_ids() } else { None };
    let started = std::panic::catch_unwind(move || tiny_http::Server::from_listener(clone, None));
    if let (Some(before), Ok(Ok(_))) = (before, started.as_ref()) {
        settle_new_threads(&before, SETTLE_LIMIT);
    }
    match started {
        Ok(Ok(server)) => Ok(server),
        Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
        Err(cause) => Err(std::io::Error::other(crate::threads::panic_message(
            &*cause,
        ))),
    }
}

/// How long [`start`] waits at most for tiny_http's threads to fall asleep.
pub(crate) const SETTLE_LIMIT: Duration = Duration::from_millis(50);

/// Waits until every thread not in `before` is asleep (not in state R), or `limit` passes, or
/// `/proc` cannot be read.
fn settle_new_threads(before: &std::collections::HashSet<u64>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while let Some(now) = proc::thread_ids() {
        let new: Vec<u64> = now.into_iter().filter(|t| !before.contains(t)).collect();
        if proc::all_asleep(&new) || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// How soon the dispatcher tries again to write a probe whose connection is not up yet.
const PROBE_WRITE_RETRY: Duration = Duration::from_millis(10);

/// A probe of the accept loop in flight: the connection and the nonce it carries.
struct Probe {
    sock: TcpStream,
    nonce: String,
    deadline: Instant,
    /// What is left to write of the request: the connection is non-blocking, so the write
    /// waits for the handshake on later ticks instead of on the dispatcher.
    unsent: Vec<u8>,
    /// [`tiny_http_panics`] when the probe began: seen once the request is written.
    panics: u64,
}

impl Probe {
    /// Writes what it can of the request; `false` if the connection failed (no listener, reset).
    fn send(&mut self) -> bool {
        use std::io::Write;
        while !self.unsent.is_empty() {
            match self.sock.write(&self.unsent) {
                Ok(0) => return false,
                Ok(n) => {
                    self.unsent.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

/// Watches one server's tiny_http accept loop; owned by its dispatcher thread.
pub(crate) struct Supervisor {
    local: SocketAddr,
    /// [`tiny_http_panics`] just before the server in use was started: a higher count means a
    /// tiny_http thread panicked since (maybe another server's in this process), so probe.
    panics_seen: u64,
    probe: Option<Probe>,
    next_nonce: u64,
    /// When to try starting tiny_http again (`None`: the one in use is believed alive).
    restart_at: Option<Instant>,
    backoff: Duration,
    /// Replaced servers, still drained of requests their pool threads deliver.
    retired: Vec<Arc<tiny_http::Server>>,
}

impl Supervisor {
    /// A supervisor for the server listening on `local`, whose tiny_http was started when the
    /// panic count was `panics_at_start` (read *before* starting it, so that a panic in the
    /// window before the dispatcher runs is not missed).
    pub(crate) fn new(local: SocketAddr, panics_at_start: u64) -> Supervisor {
        Supervisor {
            local,
            panics_seen: panics_at_start,
            probe: None,
            next_nonce: 0,
            restart_at: None,
            backoff: BACKOFF_MIN,
            retired: Vec::new(),
        }
    }

    /// A request arrived from the server in use: it accepts, so back-off starts over; if it is
    /// our own probe (answered by the router like any `GET /healthz`), the probe is done.
    pub(crate) fn served(&mut self, request: &Request) {
        if self.restart_at.is_none() {
            self.backoff = BACKOFF_MIN;
        }
        self.probe_answered(request);
    }

    /// If `request` is our probe, the probe is done.
    fn probe_answered(&mut self, request: &Request) {
        let ours = self.probe.as_ref().is_some_and(|probe| {
            request
                .headers()
                .iter()
                .any(|h| h.field.equiv(PROBE_HEADER) && h.value.as_str() == probe.nonce)
        });
        if ours {
            self.probe = None;
        }
    }

    /// `recv()` reported an error: tiny_http's accept thread has ended. Schedules a restart.
    pub(crate) fn accept_failed(
        &mut self,
        error: &std::io::Error,
        metrics: &crate::metrics::Metrics,
    ) {
        if self.restart_at.is_some() {
            return;
        }
        log::error!(
            "accept loop failed error={error}; restarting in {}ms",
            self.backoff.as_millis()
        );
        metrics.accept_restarts.inc();
        self.restart_at = Some(Instant::now() + self.backoff);
    }

    /// The next moment [`Supervisor::tick`] has something to do, if any.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        let probe = self.probe.as_ref().map(|p| match p.unsent.is_empty() {
            true => p.deadline,
            false => (Instant::now() + PROBE_WRITE_RETRY).min(p.deadline),
        });
        match (self.restart_at, probe) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Requests delivered by replaced servers (their pool threads may still serve keep-alive
    /// connections); never blocks. They say nothing about the server in use, so the back-off
    /// stays (resetting it here restarted a dead accept loop every 50 ms while an old keep-alive
    /// client talked); one of them may still be our probe, if the retired server's accept thread
    /// was alive after all.
    pub(crate) fn drain_retired(&mut self) -> Vec<Request> {
        let mut out = Vec::new();
        for old in &self.retired {
            while let Ok(Some(rq)) = old.try_recv() {
                out.push(rq);
            }
        }
        for rq in &out {
            self.probe_answered(rq);
        }
        out
    }

    /// Probes after a tiny_http panic, declares the loop dead when a probe times out, and
    /// attempts a due restart on `listener`. Returns the new server when one was started, for
    /// the caller to install in place of `current` (kept here as retired).
    pub(crate) fn tick(
        &mut self,
        listener: &TcpListener,
        current: Arc<tiny_http::Server>,
        metrics: &crate::metrics::Metrics,
    ) -> Option<Arc<tiny_http::Server>> {
        let now = Instant::now();
        if self.restart_at.is_none() {
            let panics = tiny_http_panics();
            if self.probe.is_none() && panics != self.panics_seen {
                // A failed connect (no descriptor, say) is simply retried on the next tick.
                self.probe = self.start_probe(panics);
            }
            if let Some(probe) = self.probe.as_mut() {
                let unsent = !probe.unsent.is_empty();
                if !probe.send() {
                    // The connection failed before the request went out: retried next tick.
                    self.probe = None;
                } else if unsent && probe.unsent.is_empty() {
                    self.panics_seen = probe.panics;
                }
            }
            if self.probe.as_ref().is_some_and(|p| now >= p.deadline) {
                self.probe = None;
                log::error!("accept loop failed error=\"accept thread died\"; restarting");
                metrics.accept_restarts.inc();
                self.restart_at = Some(now);
            }
        }
        let due = self.restart_at.is_some_and(|at| now >= at);
        if !due {
            return None;
        }
        let panics = tiny_http_panics();
        match start(listener, false) {
            Ok(new) => {
                log::info!("accept loop restarted");
                // Until a request is served again, each further restart waits longer: an
                // accept loop that dies at once (EMFILE right away) must not restart every 50 ms.
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                self.panics_seen = panics;
                self.restart_at = None;
                self.probe = None;
                if self.retired.len() >= MAX_RETIRED {
                    self.retired.remove(0);
                }
                self.retired.push(current);
                Some(new)
            }
            Err(e) => {
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                log::error!(
                    "accept loop restart failed error={e}; retrying in {}ms",
                    self.backoff.as_millis()
                );
                self.restart_at = Some(now + self.backoff);
                None
            }
        }
    }

    /// Begins `GET /healthz` to ourselves, marked with a fresh nonce, without waiting for the
    /// connection: a dead accept loop leaves a full accept queue, where a connect waits for a
    /// handshake that never comes, and a blocking connect here stalled the dispatcher (500 ms
    /// each tick, and the loop was then never declared dead).
    fn start_probe(&mut self, panics: u64) -> Option<Probe> {
        let sock = crate::sys::fd::connect_nonblocking(self.local).ok()?;
        self.next_nonce += 1;
        let nonce = format!("{}-{}", std::process::id(), self.next_nonce);
        let rq = format!("GET /healthz HTTP/1.1\r\nHost: probe\r\n{PROBE_HEADER}: {nonce}\r\n\r\n");
        Some(Probe {
            sock,
            nonce,
            deadline: Instant::now() + PROBE_DEADLINE,
            unsent: rq.into_bytes(),
            panics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn metrics() -> crate::metrics::Metrics {
        crate::metrics::Metrics::default()
    }

    /// A request from `server`, waiting at most 5 s.
    fn next(server: &tiny_http::Server) -> Request {
        server
            .recv_timeout(Duration::from_secs(5))
            .unwrap()
            .expect("a request")
    }

    #[test]
    fn a_request_from_a_retired_server_leaves_the_back_off_alone() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let first = start(&listener, false).unwrap();
        let mut sup = Supervisor::new(local, tiny_http_panics());
        let metrics = metrics();
        // A keep-alive client of the first server.
        let mut client = TcpStream::connect(local).unwrap();
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let rq = next(&first);
        sup.served(&rq);
        rq.respond(tiny_http::Response::empty(200)).unwrap();
        // Its accept loop is declared dead and tiny_http started again: the back-off doubles.
        sup.accept_failed(&std::io::Error::other("test"), &metrics);
        let deadline = Instant::now() + Duration::from_secs(5);
        let _second = loop {
            if let Some(new) = sup.tick(&listener, first.clone(), &metrics) {
                break new;
            }
            assert!(Instant::now() < deadline, "never restarted");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(sup.backoff, BACKOFF_MIN * 2);
        // The old client goes on talking on its connection, which the retired server serves.
        client
            .write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let retired = loop {
            let got = sup.drain_retired();
            if !got.is_empty() {
                break got;
            }
            assert!(
                Instant::now() < deadline,
                "the retired server delivered nothing"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(retired[0].url(), "/b");
        assert_eq!(
            sup.backoff,
            BACKOFF_MIN * 2,
            "a dead accept loop must not go back to restarting every 50 ms"
        );
    }

    /// A listener whose accept queue is full, as a dead accept loop leaves it: a connect to it
    /// waits for a handshake that does not come (the kernel drops the SYN).
    fn full_listener() -> (TcpListener, Vec<TcpStream>) {
        use std::os::fd::AsRawFd;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: listen(2) again on our own socket: its accept queue now holds one connection.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let local = listener.local_addr().unwrap();
        let fillers: Vec<TcpStream> = (0..4)
            .filter_map(|_| TcpStream::connect_timeout(&local, Duration::from_millis(100)).ok())
            .collect();
        assert!(
            TcpStream::connect_timeout(&local, Duration::from_millis(200)).is_err(),
            "the accept queue is full"
        );
        (listener, fillers)
    }

    #[test]
    fn a_probe_never_blocks_the_dispatcher_on_its_connect() {
        let (full, _fillers) = full_listener();
        let local = full.local_addr().unwrap();
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let current = start(&other, false).unwrap();
        let metrics = metrics();
        // A tiny_http panic was counted since this supervisor's server started: it probes.
        let mut sup = Supervisor::new(local, tiny_http_panics().wrapping_add(1));
        let t = Instant::now();
        assert!(sup.tick(&other, current.clone(), &metrics).is_none());
        let took = t.elapsed();
        assert!(
            took < Duration::from_millis(100),
            "the dispatcher waited {took:?} in the probe's connect"
        );
        // A probe whose connection never comes up is a dead accept loop, declared so at its
        // deadline like one that is never answered.
        sup.probe.as_mut().expect("a probe in flight").deadline = Instant::now();
        assert!(
            sup.tick(&other, current, &metrics).is_some(),
            "declared dead and started again"
        );
        assert_eq!(metrics.accept_restarts.get(), 1);
    }
}
