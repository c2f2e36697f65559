//! Counters and gauges, rendered as Prometheus text with the process's own threads and RSS.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// A monotonically increasing counter or an up/down gauge.
#[derive(Default, Debug)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Subtracts one (gauges only).
    pub(crate) fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// The current value.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Sets the value (gauges only).
    pub(crate) fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
}

/// Why a request or connection was refused; a label of `syncast_rejected_total`.
pub(crate) const REJECT_REASONS: [&str; 10] = [
    "max-clients",
    "max-requests",
    "thread-spawn",
    "bad-request",
    "unauthorized",
    "name-taken",
    "rate-limited",
    "too-large",
    "room-full",
    "bad-framing",
];

/// Every number `/metrics` shows that the server counts itself.
#[derive(Default, Debug)]
pub(crate) struct Metrics {
    /// Alarm streams open now.
    pub(crate) alarm_streams: Counter,
    /// Alarm events (data lines, not keepalives) written.
    pub(crate) events_sent: Counter,
    /// Keepalive comments written (alarm and chat).
    pub(crate) keepalives_sent: Counter,
    /// Refresher queries that succeeded.
    pub(crate) refresh_total: Counter,
    /// Refresher queries that failed.
    pub(crate) refresh_errors: Counter,
    /// Ticks whose full query was skipped: no commit and no change to the store file since the
    /// last one.
    pub(crate) refresh_skipped: Counter,
    /// Duration of the last refresh, microseconds.
    pub(crate) refresh_last_us: Counter,
    /// Sum of refresh durations, microseconds.
    pub(crate) refresh_sum_us: Counter,
    /// Longest refresh write-lock hold, microseconds.
    pub(crate) refresh_lock_max_us: Counter,
    /// Streams closed as stalled (write time-out).
    pub(crate) stalled: Counter,
    /// Chat sessions that exist now.
    pub(crate) chat_members: Counter,
    /// Chat streams attached now.
    pub(crate) chat_streams: Counter,
    /// Chat messages accepted.
    pub(crate) chat_messages: Counter,
    /// Chat room events taken by members' streams to write.
    pub(crate) chat_deliveries: Counter,
    /// Chat streams cut off as slow: more than `--queue` events behind, or behind the history.
    pub(crate) chat_slow: Counter,
    /// Requests served (any route).
    pub(crate) requests: Counter,
    /// Times the refresher was restarted after a panic.
    pub(crate) refresher_restarts: Counter,
    /// Times tiny_http's accept loop died and was restarted.
    pub(crate) accept_restarts: Counter,
    /// Connections closed for not sending their headers in time.
    pub(crate) header_timeouts: Counter,
    /// Keep-alive connections closed for idling.
    pub(crate) idle_closed: Counter,
    /// Connections closed because too many were waiting for headers.
    pub(crate) pending_over_cap: Counter,
    /// Connections waiting for their headers at the last sweep.
    pub(crate) pending_connections: Counter,
    /// Connections closed because a request's body was left unread on the socket, or its
    /// framing was refused or said to close (`http::body`).
    pub(crate) connections_closed_unread: Counter,
    /// Requests tiny_http parsed from a closing connection or from behind a stream, dropped
    /// unanswered.
    pub(crate) requests_discarded: Counter,
    /// Panics caught while tiny_http dropped a request (its drain of a length over `isize::MAX`).
    pub(crate) request_drop_panics: Counter,
    /// Ended connections whose descriptors tiny_http still holds, at the last sweep.
    pub(crate) connections_stuck: Counter,
    /// The last [`REFRESH_WINDOW`] full refreshes: (duration, write-lock hold), microseconds.
    refresh_window: Mutex<std::collections::VecDeque<(u64, u64)>>,
    rejected: Mutex<Vec<(&'static str, u64)>>,
}

/// How many recent full refreshes the quantiles in `/metrics` are taken over.
pub(crate) const REFRESH_WINDOW: usize = 64;

/// The `q` quantile (0..=1) of `sorted` by nearest rank: the smallest value with at least a
/// share `q` of the values at or below it. `None` when there are no values.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

impl Metrics {
    /// Records one full refresh (every connected id queried): its duration and write-lock hold.
    pub(crate) fn record_full_refresh(&self, us: u64, lock_us: u64) {
        let mut w = self.refresh_window.lock();
        if w.len() == REFRESH_WINDOW {
            w.pop_front();
        }
        w.push_back((us, lock_us));
    }

    /// Counts one refusal for `reason` (one of [`REJECT_REASONS`], or another fixed word).
    pub(crate) fn reject(&self, reason: &'static str) {
        let mut r = self.rejected.lock();
        match r.iter_mut().find(|(k, _)| *k == reason) {
            Some((_, n)) => *n += 1,
            None => r.push((reason, 1)),
        }
    }

    /// Renders the counters, `extra` gauges (name, help, value) and the process figures.
    pub(crate) fn render(&self, extra: &[(&str, &str, String)]) -> String {
        let mut out = String::with_capacity(4096);
        let mut one = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let status = crate::sys::proc::status(crate::sys::proc::Proc::This);
        let (threads, rss) = (status.threads, status.rss_bytes);
        // Every plain counter and gauge, in output order: name, type, help, value.
        let rows: [(&str, &str, &str, String); 29] = [
            (
                "syncast_process_threads",
                "gauge",
                "Threads of this process (/proc/self/status).",
                threads.to_string(),
            ),
            (
                "syncast_process_rss_bytes",
                "gauge",
                "Resident set size of this process.",
                rss.to_string(),
            ),
            (
                "syncast_alarm_streams_open",
                "gauge",
                "Alarm streams open now.",
                self.alarm_streams.get().to_string(),
            ),
            (
                "syncast_events_sent_total",
                "counter",
                "Alarm events written to streams.",
                self.events_sent.get().to_string(),
            ),
            (
                "syncast_keepalives_sent_total",
                "counter",
                "Keepalive comments written.",
                self.keepalives_sent.get().to_string(),
            ),
            (
                "syncast_refresh_total",
                "counter",
                "Successful refresher queries.",
                self.refresh_total.get().to_string(),
            ),
            (
                "syncast_refresh_errors_total",
                "counter",
                "Failed refresher queries.",
                self.refresh_errors.get().to_string(),
            ),
            (
                "syncast_refresh_skipped_total",
                "counter",
                "Refresher ticks that skipped the query: nothing committed since the last one.",
                self.refresh_skipped.get().to_string(),
            ),
            (
                "syncast_refresh_last_duration_seconds",
                "gauge",
                "Duration of the last refresh.",
                secs(self.refresh_last_us.get()),
            ),
            (
                "syncast_refresh_duration_seconds_sum",
                "counter",
                "Total time spent refreshing.",
                secs(self.refresh_sum_us.get()),
            ),
            (
                "syncast_refresh_lock_max_seconds",
                "gauge",
                "Longest write-lock hold of a refresh.",
                secs(self.refresh_lock_max_us.get()),
            ),
            (
                "syncast_streams_stalled_total",
                "counter",
                "Streams closed because a write stayed blocked.",
                self.stalled.get().to_string(),
            ),
            (
                "syncast_chat_members",
                "gauge",
                "Chat sessions now.",
                self.chat_members.get().to_string(),
            ),
            (
                "syncast_chat_streams_attached",
                "gauge",
                "Chat streams attached now.",
                self.chat_streams.get().to_string(),
            ),
            (
                "syncast_chat_messages_total",
                "counter",
                "Chat messages accepted.",
                self.chat_messages.get().to_string(),
            ),
            (
                "syncast_chat_deliveries_total",
                "counter",
                "Chat events taken by member streams to write.",
                self.chat_deliveries.get().to_string(),
            ),
            (
                "syncast_chat_slow_cutoffs_total",
                "counter",
                "Chat streams cut off as slow.",
                self.chat_slow.get().to_string(),
            ),
            (
                "syncast_requests_total",
                "counter",
                "HTTP requests received.",
                self.requests.get().to_string(),
            ),
            (
                "syncast_refresher_restarts_total",
                "counter",
                "Refresher restarts after a panic.",
                self.refresher_restarts.get().to_string(),
            ),
            (
                "syncast_accept_restarts_total",
                "counter",
                "Accept loop restarts after an accept error.",
                self.accept_restarts.get().to_string(),
            ),
            (
                "syncast_header_timeouts_total",
                "counter",
                "Connections closed for not finishing their headers in time.",
                self.header_timeouts.get().to_string(),
            ),
            (
                "syncast_idle_closed_total",
                "counter",
                "Keep-alive connections closed for idling.",
                self.idle_closed.get().to_string(),
            ),
            (
                "syncast_pending_over_cap_total",
                "counter",
                "Connections closed because too many waited for headers.",
                self.pending_over_cap.get().to_string(),
            ),
            (
                "syncast_pending_connections",
                "gauge",
                "Connections waiting for headers at the last sweep.",
                self.pending_connections.get().to_string(),
            ),
            (
                "syncast_connections_closed_unread_total",
                "counter",
                "Connections closed because a body was left unread or the framing required it.",
                self.connections_closed_unread.get().to_string(),
            ),
            (
                "syncast_requests_discarded_total",
                "counter",
                "Requests parsed from a closing connection or behind a stream, dropped unanswered.",
                self.requests_discarded.get().to_string(),
            ),
            (
                "syncast_alloc_windows_total",
                "counter",
                "Allocations no mapping could hold, served as a 16 MiB guarded window (tiny_http draining a declared length past the address space); process-wide.",
                crate::alloc::windows().to_string(),
            ),
            (
                "syncast_request_drop_panics_total",
                "counter",
                "Panics caught while tiny_http dropped a request (a declared length over isize::MAX).",
                self.request_drop_panics.get().to_string(),
            ),
            (
                "syncast_connections_stuck",
                "gauge",
                "Ended connections whose descriptors tiny_http still holds (a deadlocked thread each).",
                self.connections_stuck.get().to_string(),
            ),
        ];
        for (name, kind, help, value) in rows {
            one(name, kind, help, value);
        }
        for (name, help, value) in extra {
            one(name, "gauge", help, value.clone());
        }
        let window: Vec<(u64, u64)> = self.refresh_window.lock().iter().copied().collect();
        for (name, help, pick) in [
            (
                "syncast_refresh_window_seconds",
                "Duration of the last full refreshes (all connected ids).",
                0,
            ),
            (
                "syncast_refresh_lock_window_seconds",
                "Write-lock hold of the last full refreshes.",
                1,
            ),
        ] {
            let mut v: Vec<u64> = window
                .iter()
                .map(|&(a, b)| if pick == 0 { a } else { b })
                .collect();
            v.sort_unstable();
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} summary");
            for (q, f) in [("0.5", 0.5), ("0.99", 0.99), ("1", 1.0)] {
                let x = quantile(&v, f).unwrap_or(0);
                let _ = writeln!(out, "{name}{{quantile=\"{q}\"}} {}", secs(x));
            }
            let _ = writeln!(out, "{name}_count {}", v.len());
        }
        let _ = writeln!(out, "# HELP syncast_rejected_total Requests refused, by reason.\n# TYPE syncast_rejected_total counter");
        let rejected = self.rejected.lock().clone();
        for reason in REJECT_REASONS {
            let n = rejected
                .iter()
                .find(|(k, _)| *k == reason)
                .map_or(0, |(_, n)| *n);
            let _ = writeln!(out, "syncast_rejected_total{{reason=\"{reason}\"}} {n}");
        }
        for (reason, n) in rejected.iter().filter(|(k, _)| !REJECT_REASONS.contains(k)) {
            let _ = writeln!(out, "syncast_rejected_total{{reason=\"{reason}\"}} {n}");
        }
        out
    }
}

/// The figures `/metrics` shows that are read when it is asked for, not counted.
#[derive(Debug, Default)]
pub(crate) struct Gauges {
    /// Alarm ids connected now.
    pub(crate) alarm_ids: usize,
    /// Streaming clients (alarm and chat) now.
    pub(crate) streaming_clients: usize,
    /// Live threads this server spawned.
    pub(crate) threads_live: usize,
    /// Panics caught in server threads.
    pub(crate) thread_panics: u64,
    /// Live threads by role.
    pub(crate) threads_by_role: Vec<(&'static str, usize)>,
    /// The shared Redis's figures, with `--redis` (none shown without it).
    pub(crate) redis: Option<crate::redis::Figures>,
}

impl Metrics {
    /// The whole `/metrics` text: the counters, `gauges`, and the process figures.
    pub(crate) fn render_all(&self, gauges: &Gauges) -> String {
        let extra: [(&str, &str, String); 4] = [
            (
                "syncast_alarm_ids_registered",
                "Alarm ids connected now.",
                gauges.alarm_ids.to_string(),
            ),
            (
                "syncast_streaming_clients",
                "Streaming clients (alarm and chat) now.",
                gauges.streaming_clients.to_string(),
            ),
            (
                "syncast_threads_spawned_live",
                "Live threads this server spawned.",
                gauges.threads_live.to_string(),
            ),
            (
                "syncast_thread_panics_total",
                "Panics caught in server threads.",
                gauges.thread_panics.to_string(),
            ),
        ];
        let mut out = self.render(&extra);
        for (role, n) in &gauges.threads_by_role {
            let _ = writeln!(out, "syncast_threads_live{{role=\"{role}\"}} {n}");
        }
        if let Some(r) = gauges.redis {
            for (name, kind, help, value) in [
                (
                    "syncast_redis_up",
                    "gauge",
                    "1 while the last call to Redis reached it.",
                    r.up,
                ),
                (
                    "syncast_redis_errors_total",
                    "counter",
                    "Calls to Redis that failed (unavailable, timed out, or an error reply).",
                    r.errors,
                ),
                (
                    "syncast_redis_reconnects_total",
                    "counter",
                    "Connections to Redis opened after a failure.",
                    r.reconnects,
                ),
            ] {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
                );
            }
        }
        out
    }
}

fn secs(us: u64) -> String {
    format!("{:.6}", us as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_process_figures() {
        let m = Metrics::default();
        m.events_sent.add(3);
        m.reject("max-clients");
        let text = m.render(&[("syncast_x", "An extra.", "5".into())]);
        assert!(text.contains("syncast_events_sent_total 3\n"));
        assert!(text.contains("syncast_rejected_total{reason=\"max-clients\"} 1\n"));
        assert!(text.contains("syncast_x 5\n"));
        let status = crate::sys::proc::status(crate::sys::proc::Proc::This);
        let (threads, rss) = (status.threads, status.rss_bytes);
        assert!(threads >= 1 && rss > 0);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        v.sort_unstable();
        assert_eq!(quantile(&v, 0.50), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&v, 1.0), Some(100));
        assert_eq!(quantile::<u64>(&[], 0.50), None);
        assert_eq!(quantile(&[1.5, 2.5, 9.0], 0.5), Some(2.5));
    }
}
