//! The histograms `/metrics` shows: lock-free buckets on the hot path (a write, a chat
//! delivery, a refresh), measured cheaper than the library's (docs/performance.md, "What the
//! histograms cost").

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of every histogram's buckets, nanoseconds: 1-2.5-5 steps from 1 µs to 10 s,
/// wide enough for a socket write (µs), a chat delivery (ms) and a refresh (ms to s) alike.
pub(super) const BOUNDS_NS: [u64; 22] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A histogram of durations in relaxed atomics: one bucket count per bound of [`BOUNDS_NS`]
/// plus one past the last (`+Inf`), and the sum. The count is the sum of the buckets, so the
/// `+Inf` bucket always equals `_count`, even read during a sample.
#[derive(Debug)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

/// For each power of two `2^k`, how many bounds are below it. A range `[2^k, 2^(k+1))` holds at
/// most one bound (consecutive bounds are at least twice apart), so the bucket of a sample is
/// this count plus one comparison: no search on the hot path.
const BELOW_POW2: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut k = 0;
    while k < 64 {
        let p = 1u64 << k;
        let mut n = 0;
        while n < BOUNDS_NS.len() && BOUNDS_NS[n] < p {
            n += 1;
        }
        t[k] = n as u8;
        k += 1;
    }
    t
};

/// The bucket of a sample of `ns` nanoseconds: the first bound at or above it (Prometheus'
/// `le`), or the last bucket (`+Inf`) past them all.
pub(super) fn bucket_of(ns: u64) -> usize {
    if ns == 0 {
        return 0;
    }
    let below = BELOW_POW2[63 - ns.leading_zeros() as usize] as usize;
    match BOUNDS_NS.get(below) {
        Some(&bound) if bound < ns => below + 1,
        _ => below,
    }
}

/// The monotonic clock (`CLOCK_MONOTONIC`, the clock of [`Instant`]) in nanoseconds: what the
/// hot paths stamp and subtract, in plain integers (an `Instant` difference goes through
/// `Duration` and 128-bit arithmetic; measured 161 instructions a chat batch against 42).
pub(crate) fn now_ns() -> u64 {
    // SAFETY: timespec is plain data, filled in by clock_gettime; CLOCK_MONOTONIC always exists.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}

impl Histogram {
    /// Records one sample. Out of line: the stream loops that call it keep their frames small.
    #[inline(never)]
    pub(crate) fn observe(&self, d: Duration) {
        self.observe_ns(d.as_nanos().min(u64::MAX as u128) as u64);
    }

    /// Records one sample of `ns` nanoseconds.
    #[inline(never)]
    pub(crate) fn observe_ns(&self, ns: u64) {
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Records `now - t` for each `t` of `starts` (stamps of [`now_ns`], oldest first, as a
    /// chat batch is): one atomic addition per run of samples in one bucket, and one for the
    /// sum, however many samples.
    #[inline(never)]
    pub(crate) fn observe_since(&self, starts: &[u64], now: u64) {
        let Some((&first, rest)) = starts.split_first() else {
            return;
        };
        let mut sum = now.saturating_sub(first);
        let (mut bucket, mut run) = (bucket_of(sum), 1u64);
        for &t in rest {
            let ns = now.saturating_sub(t);
            sum = sum.saturating_add(ns);
            let b = bucket_of(ns);
            if b != bucket {
                self.buckets[bucket].fetch_add(run, Ordering::Relaxed);
                (bucket, run) = (b, 0);
            }
            run += 1;
        }
        self.buckets[bucket].fetch_add(run, Ordering::Relaxed);
        self.sum_ns.fetch_add(sum, Ordering::Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts with their upper bounds in seconds).
    pub(super) fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let bound = BOUNDS_NS
                    .get(i)
                    .map_or(f64::INFINITY, |&ns| ns as f64 / 1e9);
                (bound, n.load(Ordering::Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        (
            self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            count,
            buckets,
        )
    }
}
