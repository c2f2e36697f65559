//! The summary: one struct, printed as text for people or as one JSON object with `--json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use syncast::kit::stats::quantile;

use crate::check::{AlarmMode, AlarmTally, ChatTally, Leak, PresenceTally};

/// Latency percentiles in milliseconds.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Latency {
    /// Percentiles of microsecond samples (sorted in place).
    pub fn of(us: &mut [u64]) -> Latency {
        us.sort_unstable();
        let ms = |q: f64| quantile(us, q).unwrap_or(0) as f64 / 1000.0;
        Latency {
            p50: ms(0.50),
            p90: ms(0.90),
            p99: ms(0.99),
            max: ms(1.0),
        }
    }
}

/// Chat results.
#[derive(Debug, Clone, Serialize)]
pub struct ChatSummary {
    /// Members.
    pub clients: u64,
    /// The counts.
    #[serde(flatten)]
    pub tally: ChatTally,
    /// Send-to-receipt latency of expected deliveries.
    pub latency_ms: Latency,
    /// Receipts per second of the chat phase.
    pub deliveries_per_s: f64,
    /// Joins and leaves: each once, in order, to every member streaming then.
    pub presence: PresenceTally,
}

/// Alarm results.
#[derive(Debug, Clone, Serialize)]
pub struct AlarmSummary {
    /// Streams.
    pub clients: u64,
    /// `tick` or `change`.
    pub mode: AlarmMode,
    /// The per-flip deadline.
    pub deadline_ms: f64,
    /// The counts.
    #[serde(flatten)]
    pub tally: AlarmTally,
    /// PUT-answered-to-event latency of flips seen.
    pub latency_ms: Latency,
}

/// One node's figures in a run over several.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// Its `--url`.
    pub url: String,
    /// Its threads and RSS; `None` if unreadable.
    pub server: Option<Leak>,
}

/// Everything a run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `chat`, `alarm` or `mixed`.
    pub scenario: String,
    /// The server.
    pub url: String,
    /// The seed of the random intervals.
    pub seed: u64,
    /// Wall time of the whole run, settle included.
    pub elapsed_s: f64,
    /// Simulated clients that finished their script.
    pub clients_ok: u64,
    /// Simulated clients that did not (or the alarm writer).
    pub clients_failed: u64,
    /// Chat results.
    pub chat: Option<ChatSummary>,
    /// Alarm results.
    pub alarm: Option<AlarmSummary>,
    /// Server threads and RSS at baseline, peak and after; `None` if unreadable. With several
    /// nodes: the first `--url`'s (all of them are in `nodes`).
    pub server: Option<Leak>,
    /// With several `--url`s: each node's figures, in order (empty with one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<Node>,
    /// Errors met, by kind (retried or not).
    pub errors: BTreeMap<String, u64>,
    /// Streams refused with `event: refused` and then retried, by reason.
    pub refused: BTreeMap<String, u64>,
    /// `PASS` or `FAIL`.
    pub verdict: &'static str,
    /// Why it failed (empty on PASS).
    pub reasons: Vec<String>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn lat(l: &Latency) -> String {
    format!(
        "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        l.p50, l.p90, l.p99, l.max
    )
}

/// The server figures of one node.
fn server_text(o: &mut String, server: &Option<Leak>) {
    match server {
        Some(l) => {
            let (b, p, a) = (&l.baseline, &l.peak, &l.after);
            let _ = writeln!(
                o,
                "server threads     baseline {} / peak {} / after {} (process)",
                b.process_threads, p.process_threads, a.process_threads
            );
            let _ = writeln!(
                o,
                "  spawned live     baseline {} / peak {} / after {}",
                b.spawned_live, p.spawned_live, a.spawned_live
            );
            let back = |v: Option<f64>| {
                v.map_or("not within the wait".to_string(), |s| format!("{s:.1} s"))
            };
            let _ = writeln!(
                o,
                "  back to baseline spawned {}, process {} (waited up to {:.0} s)",
                back(l.spawned_back_after_s),
                back(l.process_back_after_s),
                l.settle_s
            );
            let _ = writeln!(
                o,
                "server RSS         baseline {:.1} MiB / peak {:.1} MiB / after {:.1} MiB",
                mib(b.rss_bytes),
                mib(p.rss_bytes),
                mib(a.rss_bytes)
            );
            let _ = writeln!(
                o,
                "  streams/members  peak {} / {}, after {} / {}",
                p.streaming_clients, p.chat_members, a.streaming_clients, a.chat_members
            );
        }
        None => {
            let _ = writeln!(o, "server threads     unreadable");
        }
    }
}

impl Summary {
    /// The human-readable summary, one fact per line.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "syncast-stress: scenario {} against {} (seed {}, {:.1} s)",
            self.scenario, self.url, self.seed, self.elapsed_s
        );
        let _ = writeln!(
            o,
            "clients            {} ok, {} failed",
            self.clients_ok, self.clients_failed
        );
        if let Some(c) = &self.chat {
            let t = &c.tally;
            let _ = writeln!(o, "chat members       {}", c.clients);
            let _ = writeln!(o, "  sent             {}", t.sent);
            let _ = writeln!(o, "  expected         {}", t.expected);
            let _ = writeln!(o, "  delivered        {}", t.delivered);
            let _ = writeln!(o, "  lost             {}", t.lost);
            let _ = writeln!(o, "  duplicated       {}", t.duplicated);
            let _ = writeln!(o, "  out of order     {}", t.out_of_order);
            let _ = writeln!(o, "  unexpected       {}", t.unexpected);
            let _ = writeln!(o, "  latency          {}", lat(&c.latency_ms));
            let _ = writeln!(o, "  deliveries/s     {:.0}", c.deliveries_per_s);
            let p = &c.presence;
            let _ = writeln!(
                o,
                "  presence         {} expected, {} lost, {} duplicated, {} out of order, {} inconsistent",
                p.expected, p.lost, p.duplicated, p.out_of_order, p.inconsistent
            );
        }
        if let Some(a) = &self.alarm {
            let t = &a.tally;
            let _ = writeln!(
                o,
                "alarm streams      {} ({:?} mode, deadline {:.0} ms)",
                a.clients, a.mode, a.deadline_ms
            );
            let _ = writeln!(o, "  flips            {}", t.flips);
            let _ = writeln!(o, "  on time          {}", t.on_time);
            let _ = writeln!(o, "  late             {}", t.late);
            let _ = writeln!(o, "  missed           {}", t.missed);
            let _ = writeln!(o, "  duplicated       {}", t.duplicated);
            let _ = writeln!(o, "  stale            {}", t.stale);
            let _ = writeln!(o, "  events           {}", t.events);
            let _ = writeln!(o, "  latency          {}", lat(&a.latency_ms));
        }
        // One block per node with several (the first headed like the others), else as always.
        let servers: Vec<(Option<&str>, &Option<Leak>)> = if self.nodes.is_empty() {
            vec![(None, &self.server)]
        } else {
            self.nodes
                .iter()
                .map(|n| (Some(n.url.as_str()), &n.server))
                .collect()
        };
        for (k, (url, server)) in servers.into_iter().enumerate() {
            if let Some(url) = url {
                let _ = writeln!(o, "node {}             {url}", k + 1);
            }
            server_text(&mut o, server);
        }
        if self.errors.is_empty() {
            let _ = writeln!(o, "errors             none");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(o, "errors             {}", list.join(", "));
        }
        if self.refused.is_empty() {
            let _ = writeln!(o, "refused, retried   none");
        } else {
            let list: Vec<String> = self
                .refused
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(o, "refused, retried   {}", list.join(", "));
        }
        let _ = writeln!(o, "verdict            {}", self.verdict);
        for r in &self.reasons {
            let _ = writeln!(o, "  - {r}");
        }
        o
    }

    /// The same as one JSON object.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}
