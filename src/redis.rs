//! The connection to the Redis (or Valkey) server several nodes share (`--redis`): the
//! synchronous client of the `redis` crate (no async runtime), a small pool of connections,
//! the time-outs, the health `/healthz` reports, back-off, and the metrics.
//!
//! Every connection has `--redis-timeout` as its connect, read and write time-out, so a Redis
//! that is down, frozen (`SIGSTOP`) or slow costs one call at most about that long; a
//! connection that failed is dropped, never reused (a timed-out one may still have a reply on
//! its way). While Redis is unavailable a call does not wait for a new connection that is
//! bound to fail: until the back-off (50 ms, doubling up to [`MAX_BACKOFF`]) has passed it
//! fails at once with the last error. Each change of state is logged once: `redis connected`,
//! `redis unavailable error=…`, `redis recovered`.
//!
//! Nothing here holds a lock during I/O: a connection is taken out of the pool, used, and put
//! back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::redis::{Client, Connection, ErrorKind, RedisResult, ServerErrorKind};
use parking_lot::Mutex;

/// Idle connections kept for reuse; more in use at once are closed when handed back.
const MAX_IDLE: usize = 16;

/// The first wait after a failure before a new connection is tried.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// The longest wait between two connection attempts while Redis is unavailable: the refresher
/// (every `--refresh`) retries at least this often, and a Redis that came back is used again
/// within it.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// A call that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RedisError {
    /// Redis is down, frozen, slow past the time-out, refusing (loading, read-only), or the
    /// back-off has not passed since the last such failure. The text is the cause.
    Unavailable(String),
    /// Redis answered, but not what syncast can use (a key of the wrong type: another
    /// program wrote it).
    Reply(String),
}

impl std::fmt::Display for RedisError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisError::Unavailable(e) | RedisError::Reply(e) => write!(f, "redis: {e}"),
        }
    }
}

impl std::error::Error for RedisError {}

/// Whether a call may be sent again on a fresh connection when the pooled connection it was
/// sent on turns out to be dead (Redis restarted, or closed it as idle). Every call syncast
/// makes may: the chat's scripts that append know their own second run (see
/// `chat::shared::SharedChat::ask`); a call that could not would need a variant here that
/// returns the failure as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// The call can run twice without harm (`HSET`, `HMGET`, `PING`, a script that knows it
    /// ran).
    Idempotent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing tried yet.
    Unknown,
    Up,
    Down,
}

struct State {
    phase: Phase,
    /// The failure while `Down`.
    error: Option<String>,
    /// The next wait after a failure.
    backoff: Duration,
    /// No new connection is tried before this (while `Down`).
    retry_at: Option<Instant>,
    /// When it went `Down` last: a call that started before then and succeeded is no news
    /// (its reply may have been read late, on a busy machine) and does not make it `Up`.
    down_at: Option<Instant>,
    /// When it went `Up` last: likewise, a call that started before then and failed (it waited
    /// out its time-out through the recovery) does not make it `Down` again.
    up_at: Option<Instant>,
}

/// The shared Redis: what every user of it (the alarm store, later the chat) goes through.
pub(crate) struct Link {
    client: Client,
    /// `host:port/db`, never the password: for log lines.
    shown: String,
    timeout: Duration,
    prefix: String,
    idle: Mutex<Vec<Connection>>,
    state: Mutex<State>,
    errors: AtomicU64,
    reconnects: AtomicU64,
}

/// What `/metrics` shows of the link.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Figures {
    /// 1 while the last call reached Redis.
    pub(crate) up: u64,
    /// Calls that failed because Redis was unavailable or answered with an error.
    pub(crate) errors: u64,
    /// Connections opened after a failure.
    pub(crate) reconnects: u64,
}

impl Link {
    /// The link to `url` (checked by `Config::validate`), with `timeout` on every connection
    /// and `prefix` before every key. Connects nothing yet.
    pub(crate) fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Link, RedisError> {
        #[cfg(feature = "redis-tls")]
        {
            // rustls needs a process-wide crypto provider before its first configuration; ring is
            // the only one built in. Err means one is installed already: fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = Client::open(url).map_err(|e| RedisError::Reply(e.to_string()))?;
        let info = client.get_connection_info();
        let shown = format!("{}/{}", info.addr(), info.redis_settings().db());
        Ok(Link {
            client,
            shown,
            timeout,
            prefix: prefix.to_string(),
            idle: Mutex::new(Vec::new()),
            state: Mutex::new(State {
                phase: Phase::Unknown,
                error: None,
                backoff: FIRST_BACKOFF,
                retry_at: None,
                down_at: None,
                up_at: None,
            }),
            errors: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        })
    }

    /// `prefix` + `name`: the full name of one of syncast's keys.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// `None` while Redis answers (or nothing was tried yet); otherwise the reason, as
    /// `/healthz` shows it (`redis: …`).
    pub(crate) fn health(&self) -> Option<String> {
        let s = self.state.lock();
        match s.phase {
            Phase::Down => Some(format!(
                "redis: {}",
                s.error.as_deref().unwrap_or("unavailable")
            )),
            Phase::Unknown | Phase::Up => None,
        }
    }

    /// The figures for `/metrics`.
    pub(crate) fn figures(&self) -> Figures {
        Figures {
            up: u64::from(self.state.lock().phase == Phase::Up),
            errors: self.errors.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
        }
    }

    /// `PING`: whether Redis answers now (and the state change, if any, logged).
    pub(crate) fn ping(&self) -> Result<(), RedisError> {
        self.run(Retry::Idempotent, |c| {
            ::redis::cmd("PING").query::<String>(c).map(drop)
        })
    }

    /// Runs `call` on a connection: a pooled one, or a new one (unless the back-off since the
    /// last failure has not passed: then it fails at once). A connection that failed is
    /// dropped; with [`Retry::Idempotent`], a call that failed on a *pooled* connection because
    /// that connection was dead is sent once more on a new one.
    pub(crate) fn run<T>(
        &self,
        retry: Retry,
        mut call: impl FnMut(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, RedisError> {
        let started = Instant::now();
        let pooled = self.idle.lock().pop();
        let first_pooled = pooled.is_some();
        let mut con = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        let mut result = call(&mut con);
        if let Err(e) = &result {
            if first_pooled && retry == Retry::Idempotent && e.is_connection_dropped() {
                // The pooled connection was dead before this call (Redis restarted or closed
                // it): that says nothing about Redis now, so try a fresh one.
                drop(con);
                con = self.connect()?;
                self.reconnects.fetch_add(1, Ordering::Relaxed);
                result = call(&mut con);
            }
        }
        match result {
            Ok(v) => {
                self.up(started);
                self.give_back(con);
                Ok(v)
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                match classify(&e) {
                    Failure::Unavailable => {
                        drop(con);
                        let text = describe(&e);
                        self.down(&text, started);
                        Err(RedisError::Unavailable(text))
                    }
                    Failure::Reply => {
                        // Redis is there and the connection is in step (the whole reply was
                        // read): keep both.
                        self.up(started);
                        self.give_back(con);
                        Err(RedisError::Reply(describe(&e)))
                    }
                }
            }
        }
    }

    /// Runs `call` on `con`, a connection of the caller's own that is never pooled (the chat
    /// reader's, blocked in `XREAD` most of the time): opened here when `None` (or the failure,
    /// also while backing off), with `read_timeout` as its read time-out instead of
    /// `--redis-timeout` (a blocking read waits longer by design). The same bookkeeping as
    /// [`Link::run`]: health, back-off, log lines, figures; a connection that failed is dropped
    /// (`con` is `None` afterwards).
    ///
    /// A connection that was open before and turns out dropped (Redis closed it: `CLIENT
    /// KILL`, its `timeout`, a restart) is not taken for Redis being down, which would refuse
    /// every caller for the back-off: it is dropped, its failure returned, and the caller's
    /// next call opens a new one (the caller sees `con` is `None`, and may check what it must
    /// on a new connection first).
    pub(crate) fn run_own<T>(
        &self,
        con: &mut Option<Connection>,
        read_timeout: Duration,
        call: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, RedisError> {
        let started = Instant::now();
        let had = con.is_some();
        if con.is_none() {
            *con = Some(self.open_own(read_timeout)?);
        }
        let Some(c) = con.as_mut() else {
            return Err(RedisError::Unavailable("no connection".into()));
        };
        let result = call(c);
        if let Err(e) = &result {
            if had && e.is_connection_dropped() {
                *con = None;
                self.errors.fetch_add(1, Ordering::Relaxed);
                // The next call opens the new connection: counted as opened after a failure.
                self.reconnects.fetch_add(1, Ordering::Relaxed);
                return Err(RedisError::Unavailable(describe(e)));
            }
        }
        match result {
            Ok(v) => {
                self.up(started);
                Ok(v)
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                match classify(&e) {
                    Failure::Unavailable => {
                        *con = None;
                        let text = describe(&e);
                        self.down(&text, started);
                        Err(RedisError::Unavailable(text))
                    }
                    Failure::Reply => {
                        self.up(started);
                        Err(RedisError::Reply(describe(&e)))
                    }
                }
            }
        }
    }

    /// A connection of a caller's own (see [`Link::run_own`]), with `read_timeout`.
    fn open_own(&self, read_timeout: Duration) -> Result<Connection, RedisError> {
        let started = Instant::now();
        let fresh = self.connect()?;
        if let Err(e) = fresh.set_read_timeout(Some(read_timeout)) {
            self.errors.fetch_add(1, Ordering::Relaxed);
            let text = describe(&e);
            self.down(&text, started);
            return Err(RedisError::Unavailable(text));
        }
        Ok(fresh)
    }

    /// The `--redis-timeout` every pooled connection has.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A new connection with the time-outs set, or the failure (also while backing off).
    fn connect(&self) -> Result<Connection, RedisError> {
        let started = Instant::now();
        {
            let s = self.state.lock();
            if let (Phase::Down, Some(at)) = (s.phase, s.retry_at) {
                if Instant::now() < at {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    let e = s.error.clone().unwrap_or_else(|| "unavailable".into());
                    return Err(RedisError::Unavailable(e));
                }
            }
        }
        let opened = self
            .client
            .get_connection_with_timeout(self.timeout)
            .and_then(|c| {
                c.set_read_timeout(Some(self.timeout))?;
                c.set_write_timeout(Some(self.timeout))?;
                Ok(c)
            });
        match opened {
            Ok(c) => {
                if self.state.lock().phase == Phase::Down {
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                Ok(c)
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let text = describe(&e);
                self.down(&text, started);
                Err(RedisError::Unavailable(text))
            }
        }
    }

    fn give_back(&self, con: Connection) {
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(con);
        }
    }

    /// Redis answered: logs the change if it was not known to be up.
    fn up(&self, started: Instant) {
        let was = {
            let mut s = self.state.lock();
            let was = s.phase;
            if was == Phase::Down && s.down_at.is_some_and(|at| started < at) {
                return;
            }
            s.phase = Phase::Up;
            if was != Phase::Up {
                s.up_at = Some(Instant::now());
            }
            s.error = None;
            s.backoff = FIRST_BACKOFF;
            s.retry_at = None;
            was
        };
        match was {
            Phase::Up => {}
            Phase::Unknown => log::info!("redis connected addr={}", self.shown),
            Phase::Down => log::info!("redis recovered addr={}", self.shown),
        }
    }

    /// Redis failed: logs the change if it was not known to be down, and sets the back-off.
    fn down(&self, error: &str, started: Instant) {
        let was = {
            let mut s = self.state.lock();
            let was = s.phase;
            if was == Phase::Up && s.up_at.is_some_and(|at| started < at) {
                return;
            }
            if was == Phase::Down {
                s.backoff = (s.backoff * 2).min(MAX_BACKOFF);
            } else {
                s.backoff = FIRST_BACKOFF;
            }
            s.phase = Phase::Down;
            s.down_at = Some(Instant::now());
            s.error = Some(error.to_string());
            s.retry_at = Some(Instant::now() + s.backoff);
            was
        };
        if was != Phase::Down {
            // Every pooled connection may be as dead as the one that failed.
            self.idle.lock().clear();
            log::error!("redis unavailable error={error:?} addr={}", self.shown);
        }
    }
}

enum Failure {
    /// Redis cannot be used now: drop the connection, report unavailable.
    Unavailable,
    /// An answer syncast cannot use; Redis itself is fine.
    Reply,
}

fn classify(e: &::redis::RedisError) -> Failure {
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown,
        ) => Failure::Unavailable,
        ErrorKind::Server(_) | ErrorKind::Extension | ErrorKind::UnexpectedReturnType => {
            Failure::Reply
        }
        // I/O, time-outs, a reply that does not parse, a failed AUTH or SELECT: the connection
        // is unusable or out of step.
        _ => Failure::Unavailable,
    }
}

/// The error in words, with "timed out" said plainly (the OS says "Resource temporarily
/// unavailable" for a read time-out).
fn describe(e: &::redis::RedisError) -> String {
    if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port with nothing listening: bound, then closed.
    fn dead_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[test]
    fn a_refused_connection_is_unavailable_then_backs_off_without_connecting() {
        let url = format!("redis://127.0.0.1:{}/0", dead_port());
        let link = Link::new(&url, "t:", Duration::from_millis(500)).unwrap();
        assert_eq!(link.health(), None, "nothing tried yet");
        let e = link.ping().unwrap_err();
        assert!(matches!(e, RedisError::Unavailable(_)), "{e:?}");
        let health = link.health().expect("degraded");
        assert!(health.starts_with("redis: "), "{health}");
        // Within the back-off the next call fails at once with the same error.
        let again = link.ping().unwrap_err();
        assert_eq!(again, e);
        let f = link.figures();
        assert_eq!((f.up, f.reconnects), (0, 0));
        assert!(f.errors >= 2);
        assert_eq!(link.key("alarms"), "t:alarms");
    }

    #[test]
    fn a_server_that_accepts_but_never_answers_costs_about_the_timeout() {
        // A listener that never reads: the TCP connect succeeds (the kernel's backlog), the
        // handshake's reply never comes, like a Redis stopped with SIGSTOP.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("redis://{}/0", l.local_addr().unwrap());
        let link = Link::new(&url, "t:", Duration::from_millis(200)).unwrap();
        let t0 = Instant::now();
        let e = link.ping().unwrap_err();
        // Generous: the bound is the time-out, checked here only against a hang.
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        assert_eq!(e, RedisError::Unavailable("timed out".into()), "{e:?}");
        drop(l);
    }

    #[test]
    fn the_back_off_doubles_up_to_its_cap() {
        let url = format!("redis://127.0.0.1:{}/0", dead_port());
        let link = Link::new(&url, "", Duration::from_millis(100)).unwrap();
        for _ in 0..10 {
            link.down("x", Instant::now());
        }
        assert_eq!(link.state.lock().backoff, MAX_BACKOFF);
        link.up(Instant::now());
        assert_eq!(link.state.lock().backoff, FIRST_BACKOFF);
        assert_eq!(link.health(), None);
    }

    #[test]
    fn a_call_that_started_before_the_last_change_does_not_change_the_state_back() {
        let url = format!("redis://127.0.0.1:{}/0", dead_port());
        let link = Link::new(&url, "", Duration::from_millis(100)).unwrap();
        let before = Instant::now();
        link.down("timed out", Instant::now());
        // A reply read late (the thread was not scheduled) for a call sent before the freeze.
        link.up(before);
        assert_eq!(link.health(), Some("redis: timed out".into()));
        // A call that started after the failure and succeeded: it is back.
        let during = Instant::now();
        link.up(Instant::now());
        assert_eq!(link.health(), None);
        // A call that was waiting through the recovery and timed out: no news either.
        link.down("timed out", during);
        assert_eq!(link.health(), None);
        link.down("timed out", Instant::now());
        assert_eq!(link.health(), Some("redis: timed out".into()));
    }
}
