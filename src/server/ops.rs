//! The operator's endpoints: `GET /healthz`, `GET /metrics` and `GET /debug/threads`, answered
//! on the dispatcher from memory (and `/proc`).

use std::sync::Arc;

use serde_json::json;

use crate::admit::Admission;
use crate::alarm::hub::AlarmHub;
use crate::alarm::refresher::Health;
use crate::chat::shared::SharedChat;
use crate::http::response::{self, Reply};
use crate::metrics::{Format, Gauges, Metrics};
use crate::redis::Link;
use crate::sys::proc::{self, Proc};
use crate::threads::Threads;

/// What the ops endpoints read.
pub(crate) struct Ops {
    /// Counters.
    pub(crate) metrics: Arc<Metrics>,
    /// Every thread the server spawned.
    pub(crate) threads: Threads,
    /// The store's health.
    pub(crate) health: Health,
    /// Connected alarm ids.
    pub(crate) hub: Arc<AlarmHub>,
    /// Streaming clients.
    pub(crate) admit: Arc<Admission>,
    /// The shared Redis, with `--redis` (for `/metrics`).
    pub(crate) redis: Option<Arc<Link>>,
    /// Whether `/healthz` reports Redis: only when something of this node depends on it (the
    /// alarm store, the chat); a Redis nobody uses is not probed, so its state would go stale.
    pub(crate) redis_in_health: bool,
    /// The chat on Redis, with `--redis` (its reader's health, its figures).
    pub(crate) chat: Option<Arc<SharedChat>>,
}

/// `GET /healthz`: 200, or 503 with the reason while the store or Redis fails (read from
/// memory: never any I/O here, the dispatcher answers it).
pub(crate) fn healthz(ops: &Ops) -> Reply {
    let reason = ops
        .health
        .degraded()
        .or_else(|| {
            ops.redis
                .as_ref()
                .filter(|_| ops.redis_in_health)
                .and_then(|l| l.health())
        })
        .or_else(|| ops.chat.as_ref().and_then(|c| c.health()));
    match reason {
        None => response::json(200, &json!({ "status": "ok" })),
        Some(reason) => response::json(503, &json!({ "status": "degraded", "reason": reason })),
    }
}

/// `GET /metrics`: the Prometheus text format, or OpenMetrics if `accept` (the request's
/// `Accept` header) asks for it.
pub(crate) fn metrics(ops: &Ops, accept: Option<&str>) -> Reply {
    let gauges = Gauges {
        alarm_ids: ops.hub.len(),
        streaming_clients: ops.admit.stream_count(),
        threads_live: ops.threads.live(),
        thread_panics: ops.threads.panics(),
        threads_by_role: ops
            .threads
            .count_by_role()
            .into_iter()
            .map(|(role, n)| (role.as_str(), n as u64))
            .collect(),
        store_writable: !ops.health.write_failing(),
        redis: ops.redis.as_ref().map(|l| l.figures()),
        chat_redis: ops.chat.as_ref().map(|c| c.figures.snapshot()),
    };
    let format = Format::of_accept(accept);
    response::with_type(
        200,
        ops.metrics.render(gauges, format).into_bytes(),
        format.content_type(),
    )
}

/// `GET /debug/threads`: the live threads this server spawned, by role, as JSON.
pub(crate) fn debug_threads(ops: &Ops) -> Reply {
    let status = proc::status(Proc::This);
    let by_role: serde_json::Map<String, serde_json::Value> = ops
        .threads
        .count_by_role()
        .into_iter()
        .map(|(r, n)| (r.as_str().to_string(), json!(n)))
        .collect();
    let list: Vec<serde_json::Value> = ops
        .threads
        .list()
        .into_iter()
        .map(|t| json!({ "name": t.name, "role": t.role.as_str(), "age_ms": t.started.elapsed().as_millis() as u64 }))
        .collect();
    response::json(
        200,
        &json!({
            "process_threads": status.threads,
            "process_rss_bytes": status.rss_bytes,
            "spawned_live": list.len(),
            "by_role": by_role,
            "threads": list,
        }),
    )
}
