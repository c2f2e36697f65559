//! What every simulated client shares: the target, the run's clock, progress counters, errors by
//! kind, the ramp, and the one helper that spawns a client thread.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use serde_json::{json, Value};
use syncast::kit::http::Target;
use syncast::kit::jwt::{self, Minter};

/// Stack of every client thread: they parse a line, a small JSON object, and keep their logs on
/// the heap. 128 KiB keeps 1,500 client threads under 200 MiB of reserved stack.
pub const CLIENT_STACK: usize = 128 * 1024;

/// Time-out of one short request (connect, write, read).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a cut stream is reopened before its client gives up.
pub const RETRIES: u32 = 20;

/// How long a client keeps retrying a refused request (503 at a cap, 429, connection refused)
/// before it gives up; each wait is the server's `Retry-After` (else 1 s, or 200 ms after a
/// refused connection).
pub const RETRY_FOR: Duration = Duration::from_secs(60);

/// A retry budget of [`RETRY_FOR`].
pub struct Retry(Instant);

impl Retry {
    /// A budget starting now.
    pub fn new() -> Retry {
        Retry(Instant::now() + RETRY_FOR)
    }

    /// Waits `after` and returns `true`, or returns `false` at once if that would pass the budget.
    pub fn wait(&self, after: Duration) -> bool {
        if Instant::now() + after > self.0 {
            return false;
        }
        std::thread::sleep(after);
        true
    }
}

/// Counters the status line shows.
#[derive(Default)]
pub struct Progress {
    /// Streams connected now.
    pub connected: AtomicU64,
    /// Chat messages acknowledged.
    pub sent: AtomicU64,
    /// Chat messages and alarm events received.
    pub received: AtomicU64,
    /// Alarm flips written.
    pub flips: AtomicU64,
    /// Errors of any kind.
    pub errors: AtomicU64,
}

/// How long a minted token lives: a client mints one for each request or stream it opens, so
/// this only has to outlast one stream (a run's streams last well under a minute).
pub const TOKEN_TTL: Duration = Duration::from_secs(300);

/// State shared by every client of one run.
pub struct Ctx {
    /// The server (the first `--url`).
    pub target: Target,
    /// Every `--url`, the first one first: the nodes the clients are spread over.
    pub nodes: Vec<Target>,
    /// With `--jwt-secret-file`: signs each client's tokens.
    pub minter: Option<Minter>,
    /// When the run started; every recorded time is relative to it.
    pub t0: Instant,
    /// Live counters.
    pub progress: Progress,
    errors: Mutex<BTreeMap<String, u64>>,
    refused: Mutex<BTreeMap<String, u64>>,
    ramp_next: Mutex<Instant>,
    ramp_gap: Duration,
}

impl Ctx {
    /// A context for `nodes` (at least one; the clients are spread over them), opening at most
    /// `ramp` connections per second, minting tokens with `minter` (auth on) or none.
    pub fn new(nodes: Vec<Target>, ramp: f64, minter: Option<Minter>) -> Result<Ctx, String> {
        let t0 = Instant::now();
        let target = nodes.first().cloned().ok_or("no --url")?;
        Ok(Ctx {
            target,
            nodes,
            minter,
            t0,
            progress: Progress::default(),
            errors: Mutex::new(BTreeMap::new()),
            refused: Mutex::new(BTreeMap::new()),
            ramp_next: Mutex::new(t0),
            ramp_gap: Duration::from_secs_f64(1.0 / ramp),
        })
    }

    /// Node `i` modulo the number of nodes: client `i` of a run is placed on `node(i)`.
    pub fn node(&self, i: usize) -> &Target {
        &self.nodes[i % self.nodes.len()]
    }

    /// `Bearer JWT` for `sub` with `extra` claims merged in (`None` with auth off, or if the
    /// token cannot be made: the request then goes without and is refused, and counted).
    fn bearer(&self, sub: &str, extra: Value) -> Option<String> {
        let minter = self.minter.as_ref()?;
        let mut claims = jwt::claims(sub, TOKEN_TTL);
        if let (Some(c), Value::Object(extra)) = (claims.as_object_mut(), extra) {
            c.extend(extra);
        }
        minter.mint(&claims).ok().map(|t| format!("Bearer {t}"))
    }

    /// The `Authorization` value of chat member `name` (its `name` claim).
    pub fn member_auth(&self, name: &str) -> Option<String> {
        self.bearer(name, json!({ "name": name }))
    }

    /// The `Authorization` value of the stream of alarm `id` (its `sub`).
    pub fn subscriber_auth(&self, id: &str) -> Option<String> {
        self.bearer(id, json!({}))
    }

    /// The `Authorization` value of the alarm writer: publish on every id of the run.
    pub fn publisher_auth(&self, tag: &str) -> Option<String> {
        self.bearer(
            "stress-writer",
            json!({ "syncast": { "publish": [format!("{tag}-*")] } }),
        )
    }

    /// The `Authorization` value of the probes of `/metrics` and `/debug/threads`.
    pub fn admin_auth(&self) -> Option<String> {
        self.bearer("stress-probe", json!({ "syncast": { "admin": true } }))
    }

    /// Microseconds since the run started.
    pub fn now_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    /// Counts one error of `kind` (a stable word: `refused`, `503`, `429`, `stream-cut`, ...).
    pub fn error(&self, kind: &str) {
        self.progress.errors.fetch_add(1, Ordering::Relaxed);
        *self.errors.lock().entry(kind.to_string()).or_default() += 1;
    }

    /// Errors so far, by kind.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().clone()
    }

    /// Counts one stream the server refused with `event: refused` (and that the client then
    /// retried after the `retry_ms` it was given), by the event's `reason`.
    pub fn refused(&self, reason: &str) {
        *self.refused.lock().entry(reason.to_string()).or_default() += 1;
    }

    /// Streams refused and retried so far, by reason.
    pub fn refusals(&self) -> BTreeMap<String, u64> {
        self.refused.lock().clone()
    }

    /// Waits for this caller's turn to open a connection: turns are `1/ramp` seconds apart.
    pub fn ramp(&self) {
        let at = {
            let mut next = self.ramp_next.lock();
            let at = (*next).max(Instant::now());
            *next = at + self.ramp_gap;
            at
        };
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
    }
}

/// Spawns a named client thread with [`CLIENT_STACK`]; the caller owns and joins the handle.
pub fn spawn<T, F>(name: String, body: F) -> std::io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(name)
        .stack_size(CLIENT_STACK)
        .spawn(body)
}

/// A small deterministic generator (SplitMix64), so `--seed` repeats a run's intervals without a
/// dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`, distinct per `stream` (e.g. the client index).
    pub fn new(seed: u64, stream: u64) -> Rng {
        Rng(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A duration uniformly in `[lo, hi]`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_micros() as u64;
        let off = if span == 0 {
            0
        } else {
            self.next_u64() % (span + 1)
        };
        lo + Duration::from_micros(off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_intervals() {
        let lo = Duration::from_secs(1);
        let hi = Duration::from_secs(3);
        let a: Vec<_> = (0..5).map(|_| Rng::new(7, 1).between(lo, hi)).collect();
        let mut r = Rng::new(7, 1);
        let b: Vec<_> = (0..5).map(|_| r.between(lo, hi)).collect();
        assert_eq!(a[0], b[0]);
        assert!(b.iter().all(|d| *d >= lo && *d <= hi));
        assert_ne!(Rng::new(7, 2).next_u64(), Rng::new(7, 1).next_u64());
    }
}
