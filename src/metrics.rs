//! What `/metrics` shows: the server's counters, gauges and histograms, the figures read when
//! it is asked for, and the standard `process_*` series, rendered by `prometheus-client` (the
//! official Prometheus client library for Rust) in the Prometheus text format (0.0.4) or, for a
//! scraper that asks for it, OpenMetrics.
//!
//! The numbers live in this module's own atomics ([`Counter`], [`Histogram`]) and are handed to
//! the library's encoder at each scrape (a `Collector`), so the library writes every name,
//! `HELP`, `TYPE`, `UNIT`, label and bucket line. Two kinds are not the library's:
//! - [`Histogram`]: the library's takes a mutex for every sample; this one is two relaxed atomic
//!   additions, and a batch of samples (a chat write carries many events) adds once per bucket
//!   it touches (docs/performance.md has the measurements);
//! - the two refresh summaries (quantiles over the last 64 full refreshes): the library has no
//!   summary type, so their few lines are written here, after the library's.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

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
pub(crate) const REJECT_REASONS: [&str; 14] = [
    "max-clients",
    "max-requests",
    "thread-spawn",
    "bad-request",
    "unauthorized",
    "forbidden",
    "name-taken",
    "rate-limited",
    "too-large",
    "room-full",
    "bad-framing",
    "shutting-down",
    "store-unavailable",
    "chat-unavailable",
];

/// Why a chat TCP line was refused: the `why` label of `syncast_chat_tcp_bad_lines_total`, in
/// the order of `Metrics::chat_tcp_bad_lines`.
pub(crate) const BAD_LINES: [&str; 3] = ["too-long", "not-utf8", "nul"];

/// How the watcher (`crate::http::watch`) found a stream's client gone: the `how` label of
/// `syncast_streams_gone_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gone {
    /// Epoll reported a state change and the socket had left `ESTABLISHED`: the client closed
    /// (FIN).
    Fin,
    /// Epoll reported `EPOLLHUP`/`EPOLLERR`: reset, or dropped by the kernel (`TCP_USER_TIMEOUT`).
    Hangup,
    /// The watcher's sweep (every 5 s) found it (epoll had not reported it).
    Sweep,
}

impl Gone {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Gone::Fin => "fin",
            Gone::Hangup => "hangup",
            Gone::Sweep => "sweep",
        }
    }

    /// Every value, in the order `/metrics` shows them.
    pub(crate) const ALL: [Gone; 3] = [Gone::Fin, Gone::Hangup, Gone::Sweep];
}

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
    /// Durations of the refresher's successful queries (full and immediate loads).
    pub(crate) refresh_duration: Histogram,
    /// Chat: from a post accepted to its event written to a member's socket, per live
    /// delivery (replayed history not included).
    pub(crate) chat_delivery: Histogram,
    /// How long one write of events (an alarm event, a batch of chat events) to a stream's
    /// socket took.
    pub(crate) event_write: Histogram,
    /// Store writes (`PUT`, `DELETE`, the write probe) that failed for a fault of the store.
    pub(crate) store_write_errors: Counter,
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
    /// Request bodies cut for not arriving within `--body-timeout`.
    pub(crate) body_timeouts: Counter,
    /// Connections shut because a buffered answer's write stayed blocked.
    pub(crate) write_timeouts: Counter,
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
    /// Stream sockets the watcher watches now.
    pub(crate) streams_watched: Counter,
    /// 1 while the watcher's sweep uses `sock_diag`, 0 while it reads `TCP_INFO`.
    pub(crate) watcher_sock_diag: Counter,
    /// Duration of the watcher's last sweep, microseconds.
    pub(crate) watcher_sweep_us: Counter,
    /// Chat over TCP: connections open now (each one a thread), named or not.
    pub(crate) chat_tcp_connections: Counter,
    /// Chat over TCP: members named now (a subset of `chat_members`).
    pub(crate) chat_tcp_members: Counter,
    /// Chat over TCP: lines the watcher read from clients and handed to their threads.
    pub(crate) chat_tcp_lines: Counter,
    /// Chat over TCP: times the watcher stopped reading a client whose line queue was full.
    pub(crate) chat_tcp_paused: Counter,
    /// Chat over TCP: lines answered with `! ` for what they were: too long, not UTF-8, NUL.
    pub(crate) chat_tcp_bad_lines: [Counter; 3],
    /// Streams the watcher found gone, by how (`Gone::ALL` order).
    streams_gone: [Counter; 3],
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

    /// Counts `n` streams the watcher found gone, `how`.
    pub(crate) fn stream_gone(&self, how: Gone, n: u64) {
        self.streams_gone[how as usize].add(n);
    }

    /// Streams the watcher found gone `how`, so far.
    #[cfg(test)]
    pub(crate) fn gone(&self, how: Gone) -> u64 {
        self.streams_gone[how as usize].get()
    }

    /// Counts one refusal for `reason` (one of [`REJECT_REASONS`], or another fixed word).
    pub(crate) fn reject(&self, reason: &'static str) {
        let mut r = self.rejected.lock();
        match r.iter_mut().find(|(k, _)| *k == reason) {
            Some((_, n)) => *n += 1,
            None => r.push((reason, 1)),
        }
    }

    /// The whole `/metrics` text in `format`: the counters, `gauges`, the histograms, the
    /// refresh summaries and the process figures.
    pub(crate) fn render(self: &Arc<Self>, gauges: Gauges, format: Format) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessSeries(crate::sys::proc::figures())));
        registry
            .sub_registry_with_prefix("syncast")
            .register_collector(Box::new(Scrape {
                metrics: self.clone(),
                gauges,
            }));
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail; the encoders only pass on the writer's errors.
        match format {
            Format::Prometheus => {
                let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
                self.write_summaries(&mut out);
            }
            Format::OpenMetrics => {
                let _ = prometheus_client::encoding::text::encode_registry(&mut out, &registry);
                self.write_summaries(&mut out);
                let _ = prometheus_client::encoding::text::encode_eof(&mut out);
            }
        }
        out
    }

    /// The refresh summaries, in lines the same in both formats.
    fn write_summaries(&self, out: &mut String) {
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
            let _ = writeln!(out, "{name}_sum {}", secs(v.iter().sum()));
            let _ = writeln!(out, "{name}_count {}", v.len());
        }
    }
}

/// Which text `/metrics` answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// The Prometheus text format 0.0.4: what every scraper reads, and the default.
    Prometheus,
    /// OpenMetrics 1.0, for a client whose `Accept` names `application/openmetrics-text`
    /// (Prometheus itself asks for it first).
    OpenMetrics,
}

impl Format {
    /// The format a request's `Accept` header asks for.
    pub(crate) fn of_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a)
                if a.to_ascii_lowercase()
                    .contains("application/openmetrics-text") =>
            {
                Format::OpenMetrics
            }
            _ => Format::Prometheus,
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
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
    pub(crate) threads_by_role: Vec<(&'static str, u64)>,
    /// Whether the store takes writes (no write fault since the last successful write).
    pub(crate) store_writable: bool,
    /// The shared Redis's figures, with `--redis` (none shown without it).
    pub(crate) redis: Option<crate::redis::Figures>,
    /// The chat on Redis's figures, with `--redis`.
    pub(crate) chat_redis: Option<ChatRedisFigures>,
}

/// What `/metrics` shows of the chat on Redis (see `crate::chat::shared::Figures`).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ChatRedisFigures {
    pub(crate) entries_read: u64,
    pub(crate) resyncs: u64,
    pub(crate) expired: u64,
}

/// How one scrape reads the server's numbers: the library asks it to encode them.
#[derive(Debug)]
struct Scrape {
    metrics: Arc<Metrics>,
    gauges: Gauges,
}

/// A family's label set: one `name="value"` pair.
type Label = [(&'static str, &'static str); 1];

/// What one row of the table in [`Scrape::encode`] is.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// One series, by its full name as it appears (`syncast_` included, and `_total` for a
/// counter): the library adds the prefix and the suffix itself.
fn series<'a>(
    enc: &'a mut DescriptorEncoder,
    name: &'a str,
    help: &str,
    kind: Kind,
) -> Result<prometheus_client::encoding::MetricEncoder<'a>, std::fmt::Error> {
    let name = name.strip_prefix("syncast_").unwrap_or(name);
    let (name, unit, kind) = match kind {
        Kind::Counter => (
            name.strip_suffix("_total").unwrap_or(name),
            None,
            MetricType::Counter,
        ),
        Kind::Gauge => (name, None, MetricType::Gauge),
    };
    let (name, unit) = match name.strip_suffix("_seconds") {
        Some(base) => (base, Some(&Unit::Seconds)),
        None => match name.strip_suffix("_bytes") {
            Some(base) => (base, Some(&Unit::Bytes)),
            None => (name, unit),
        },
    };
    enc.encode_descriptor(name, help, unit, kind)
}

/// The value of one row: a count or a number of seconds.
#[derive(Clone, Copy)]
enum Value {
    Count(u64),
    Seconds(f64),
}

fn encode_value(
    mut m: prometheus_client::encoding::MetricEncoder,
    kind: Kind,
    v: Value,
) -> std::fmt::Result {
    match (kind, v) {
        (Kind::Counter, Value::Count(n)) => m.encode_counter::<NoLabelSet, _, u64>(&n, None),
        (Kind::Counter, Value::Seconds(x)) => m.encode_counter::<NoLabelSet, _, f64>(&x, None),
        (Kind::Gauge, Value::Count(n)) => m.encode_gauge(&(n.min(i64::MAX as u64) as i64)),
        (Kind::Gauge, Value::Seconds(x)) => m.encode_gauge(&x),
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let m = &self.metrics;
        let g = &self.gauges;
        let status = crate::sys::proc::status(crate::sys::proc::Proc::This);
        use Kind::{Counter as C, Gauge as G};
        use Value::{Count, Seconds};
        let secs_of = |us: u64| Seconds(us as f64 / 1e6);
        // Every plain counter and gauge, in output order: name, type, help, value.
        let rows: [(&str, Kind, &str, Value); 43] = [
            ("syncast_process_threads", G, "Threads of this process (/proc/self/status).", Count(status.threads)),
            ("syncast_process_rss_bytes", G, "Resident set size of this process.", Count(status.rss_bytes)),
            ("syncast_alarm_streams_open", G, "Alarm streams open now.", Count(m.alarm_streams.get())),
            ("syncast_events_sent_total", C, "Alarm events written to streams.", Count(m.events_sent.get())),
            ("syncast_keepalives_sent_total", C, "Keepalive comments written.", Count(m.keepalives_sent.get())),
            ("syncast_refresh_total", C, "Successful refresher queries.", Count(m.refresh_total.get())),
            ("syncast_refresh_errors_total", C, "Failed refresher queries.", Count(m.refresh_errors.get())),
            ("syncast_refresh_skipped_total", C, "Refresher ticks that skipped the query: nothing committed since the last one.", Count(m.refresh_skipped.get())),
            ("syncast_refresh_last_duration_seconds", G, "Duration of the last refresh.", secs_of(m.refresh_last_us.get())),
            ("syncast_refresh_lock_max_seconds", G, "Longest write-lock hold of a refresh.", secs_of(m.refresh_lock_max_us.get())),
            ("syncast_store_write_errors_total", C, "Store writes that failed for a fault of the store (disk full, read-only, I/O error).", Count(m.store_write_errors.get())),
            ("syncast_streams_stalled_total", C, "Streams closed because a write stayed blocked.", Count(m.stalled.get())),
            ("syncast_chat_members", G, "Chat sessions now.", Count(m.chat_members.get())),
            ("syncast_chat_streams_attached", G, "Chat streams attached now.", Count(m.chat_streams.get())),
            ("syncast_chat_messages_total", C, "Chat messages accepted.", Count(m.chat_messages.get())),
            ("syncast_chat_deliveries_total", C, "Chat events taken by member streams to write.", Count(m.chat_deliveries.get())),
            ("syncast_chat_slow_cutoffs_total", C, "Chat streams cut off as slow.", Count(m.chat_slow.get())),
            ("syncast_chat_tcp_connections", G, "Chat over TCP: connections open now (a thread each), named or not.", Count(m.chat_tcp_connections.get())),
            ("syncast_chat_tcp_members", G, "Chat over TCP: members with a name now (counted in syncast_chat_members too).", Count(m.chat_tcp_members.get())),
            ("syncast_chat_tcp_lines_total", C, "Chat over TCP: lines read from clients.", Count(m.chat_tcp_lines.get())),
            ("syncast_chat_tcp_paused_total", C, "Chat over TCP: times reading a client stopped because its line queue was full.", Count(m.chat_tcp_paused.get())),
            ("syncast_requests_total", C, "HTTP requests received.", Count(m.requests.get())),
            ("syncast_refresher_restarts_total", C, "Refresher restarts after a panic.", Count(m.refresher_restarts.get())),
            ("syncast_accept_restarts_total", C, "Accept loop restarts after an accept error.", Count(m.accept_restarts.get())),
            ("syncast_header_timeouts_total", C, "Connections closed for not finishing their headers in time.", Count(m.header_timeouts.get())),
            ("syncast_idle_closed_total", C, "Keep-alive connections closed for idling.", Count(m.idle_closed.get())),
            ("syncast_body_timeouts_total", C, "Request bodies cut for not arriving within --body-timeout.", Count(m.body_timeouts.get())),
            ("syncast_write_timeouts_total", C, "Connections shut because an answer's write stayed blocked (answers left unread).", Count(m.write_timeouts.get())),
            ("syncast_pending_over_cap_total", C, "Connections closed because too many waited for headers.", Count(m.pending_over_cap.get())),
            ("syncast_pending_connections", G, "Connections waiting for headers at the last sweep.", Count(m.pending_connections.get())),
            ("syncast_connections_closed_unread_total", C, "Connections closed because a body was left unread or the framing required it.", Count(m.connections_closed_unread.get())),
            ("syncast_requests_discarded_total", C, "Requests parsed from a closing connection or behind a stream, dropped unanswered.", Count(m.requests_discarded.get())),
            ("syncast_request_drop_panics_total", C, "Panics caught while tiny_http dropped a request (a declared length over isize::MAX).", Count(m.request_drop_panics.get())),
            ("syncast_alloc_windows_total", C, "Allocations no mapping could hold, served as a 16 MiB guarded window (tiny_http draining a declared length past the address space); process-wide.", Count(crate::alloc::windows())),
            ("syncast_connections_stuck", G, "Ended connections whose descriptors tiny_http still holds (a deadlocked thread each).", Count(m.connections_stuck.get())),
            ("syncast_streams_watched", G, "Stream sockets the watcher watches for a client that left.", Count(m.streams_watched.get())),
            ("syncast_watcher_sock_diag", G, "1 while the watcher's sweep uses sock_diag, 0 while it reads TCP_INFO.", Count(m.watcher_sock_diag.get())),
            ("syncast_watcher_last_sweep_seconds", G, "Duration of the watcher's last sweep (a sock_diag dump or a TCP_INFO batch).", secs_of(m.watcher_sweep_us.get())),
            ("syncast_alarm_ids_registered", G, "Alarm ids connected now.", Count(g.alarm_ids as u64)),
            ("syncast_streaming_clients", G, "Streaming clients (alarm and chat) now.", Count(g.streaming_clients as u64)),
            ("syncast_threads_spawned_live", G, "Live threads this server spawned.", Count(g.threads_live as u64)),
            ("syncast_thread_panics_total", C, "Panics caught in server threads.", Count(g.thread_panics)),
            ("syncast_store_writable", G, "1 while the store takes writes, 0 while writes fail for a fault of the store.", Count(u64::from(g.store_writable))),
        ];
        for (name, kind, help, value) in rows {
            encode_value(series(&mut enc, name, help, kind)?, kind, value)?;
        }
        if let Some(r) = g.redis {
            for (name, kind, help, value) in [
                (
                    "syncast_redis_up",
                    G,
                    "1 while the last call to Redis reached it.",
                    r.up,
                ),
                (
                    "syncast_redis_errors_total",
                    C,
                    "Calls to Redis that failed (unavailable, timed out, or an error reply).",
                    r.errors,
                ),
                (
                    "syncast_redis_reconnects_total",
                    C,
                    "Connections to Redis opened after a failure.",
                    r.reconnects,
                ),
            ] {
                encode_value(series(&mut enc, name, help, kind)?, kind, Count(value))?;
            }
        }
        if let Some(c) = g.chat_redis {
            for (name, help, value) in [
                (
                    "syncast_chat_redis_entries_read_total",
                    "Chat on Redis: stream entries this node's reader read into its mirror.",
                    c.entries_read,
                ),
                (
                    "syncast_chat_redis_mirror_restarts_total",
                    "Chat on Redis: times the mirror was filled anew (at start, after the reader \
                     fell more than --history behind, or after Redis lost the room).",
                    c.resyncs,
                ),
                (
                    "syncast_chat_redis_expired_total",
                    "Chat on Redis: sessions whose expiry this node claimed.",
                    c.expired,
                ),
            ] {
                encode_value(series(&mut enc, name, help, C)?, C, Count(value))?;
            }
        }
        for (name, help, h) in [
            ("syncast_refresh_duration_seconds", "Duration of the refresher's successful queries.", &m.refresh_duration),
            ("syncast_chat_delivery_seconds", "Chat: from a message accepted to its event written to a member's socket (live deliveries).", &m.chat_delivery),
            ("syncast_event_write_seconds", "Time one write of events (an alarm event, a batch of chat events) to a stream socket took.", &m.event_write),
        ] {
            let base = name.strip_prefix("syncast_").and_then(|n| n.strip_suffix("_seconds")).unwrap_or(name);
            let (sum, count, buckets) = h.snapshot();
            enc.encode_descriptor(base, help, Some(&Unit::Seconds), MetricType::Histogram)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        let mut family = |name: &str,
                          help: &str,
                          kind: Kind,
                          label: &'static str,
                          values: Vec<(&'static str, u64)>|
         -> std::fmt::Result {
            let mut m = series(&mut enc, name, help, kind)?;
            for (v, n) in values {
                let labels: Label = [(label, v)];
                encode_value(m.encode_family(&labels)?, kind, Count(n))?;
            }
            Ok(())
        };
        family(
            "syncast_streams_gone_total",
            "Streams the watcher found gone, by how: fin (epoll saw the state change), hangup \
             (epoll: reset or dropped by the kernel), sweep (the check every 5 s).",
            C,
            "how",
            Gone::ALL
                .iter()
                .map(|&h| (h.as_str(), m.streams_gone[h as usize].get()))
                .collect(),
        )?;
        family(
            "syncast_chat_tcp_bad_lines_total",
            "Chat over TCP: lines answered with a ! line for what they were.",
            C,
            "why",
            BAD_LINES
                .iter()
                .zip(&m.chat_tcp_bad_lines)
                .map(|(w, n)| (*w, n.get()))
                .collect(),
        )?;
        family(
            "syncast_threads_live",
            "Live threads this server spawned, by role.",
            G,
            "role",
            g.threads_by_role.clone(),
        )?;
        let rejected = m.rejected.lock().clone();
        let count = |reason: &str| {
            rejected
                .iter()
                .find(|(k, _)| *k == reason)
                .map_or(0, |(_, n)| *n)
        };
        let mut reasons: Vec<(&'static str, u64)> =
            REJECT_REASONS.iter().map(|r| (*r, count(r))).collect();
        reasons.extend(
            rejected
                .iter()
                .filter(|(k, _)| !REJECT_REASONS.contains(k))
                .copied(),
        );
        family(
            "syncast_rejected_total",
            "Requests refused, by reason.",
            C,
            "reason",
            reasons,
        )
    }
}

/// The standard `process_*` series (what every Prometheus client exports for its process),
/// read from `/proc` at each scrape.
#[derive(Debug)]
struct ProcessSeries(crate::sys::proc::Figures);

impl Collector for ProcessSeries {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let p = &self.0;
        use Kind::{Counter as C, Gauge as G};
        use Value::{Count, Seconds};
        for (name, kind, help, value) in [
            (
                "process_cpu_seconds_total",
                C,
                "Total user and system CPU time spent in seconds.",
                Seconds(p.cpu_seconds),
            ),
            (
                "process_resident_memory_bytes",
                G,
                "Resident memory size in bytes.",
                Count(p.resident_bytes),
            ),
            (
                "process_virtual_memory_bytes",
                G,
                "Virtual memory size in bytes.",
                Count(p.virtual_bytes),
            ),
            (
                "process_open_fds",
                G,
                "Number of open file descriptors.",
                Count(p.open_fds),
            ),
            (
                "process_max_fds",
                G,
                "Maximum number of open file descriptors.",
                Count(p.max_fds),
            ),
            (
                "process_start_time_seconds",
                G,
                "Start time of the process since unix epoch in seconds.",
                Seconds(p.start_time_seconds),
            ),
            (
                "process_threads",
                G,
                "Number of OS threads in the process.",
                Count(p.threads),
            ),
        ] {
            encode_value(series(&mut enc, name, help, kind)?, kind, value)?;
        }
        Ok(())
    }
}

fn secs(us: u64) -> String {
    format!("{:.6}", us as f64 / 1e6)
}

mod histogram;
#[cfg(test)]
mod tests;

pub(crate) use histogram::{now_ns, Histogram};
