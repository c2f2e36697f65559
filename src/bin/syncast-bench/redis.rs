//! `--only redis-refresh`: the refresh of 10,000 connected ids from Redis (`--alarm-store
//! redis`), as the SQLite row measures it, on a `redis-server` of the bench's own (the kit's:
//! a free loopback port, no persistence); and, before it, the `HMGET` batch size: one pipeline
//! of 10,000 ids in batches of 100 to 10,000 fields, timed from the client, with Redis's own
//! time per command (`INFO commandstats`), which is how long one batch keeps every other
//! client of that Redis waiting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use syncast::kit::redis_server::RedisServer;

use super::epoll::{get, Clients};
use super::proc::{http, temp_db, ServerProc};
use super::{no_events, quantile, Bench};

/// The hash the server reads (the default prefix).
const KEY: &str = "syncast:alarms";
/// Fields in the hash, and ids connected: as the SQLite row (100,000 rows, 10,000 streams).
const FIELDS: u32 = 100_000;
const IDS: usize = 10_000;
/// Batch sizes tried, and the pipelines timed for each.
const BATCHES: [usize; 6] = [100, 250, 500, 1000, 2500, 10_000];
const REPS: usize = 40;

/// The ids the streams connect: every 10th has no field, as in real life (as the SQLite row).
fn id(i: usize) -> String {
    if i % 10 == 9 {
        format!("none{i}")
    } else {
        format!("r{}", i * 10)
    }
}

fn fill(con: &mut redis::Connection) -> Result<(), String> {
    for start in (0..FIELDS).step_by(10_000) {
        let mut pipe = redis::pipe();
        for i in start..start + 10_000 {
            pipe.cmd("HSET")
                .arg(KEY)
                .arg(format!("r{i}"))
                .arg(if i % 7 == 0 { "1" } else { "0" })
                .ignore();
        }
        pipe.query::<()>(con).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Redis's mean time per `HMGET` since the last `CONFIG RESETSTAT`, microseconds.
fn hmget_usec_per_call(con: &mut redis::Connection) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(con)
        .unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("cmdstat_hmget:"))
        .and_then(|l| {
            l.split(',')
                .find_map(|kv| kv.strip_prefix("usec_per_call="))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

impl Bench {
    pub(super) fn redis_refresh(&mut self) -> Result<(), String> {
        let sweep = "redis HMGET: 10,000 ids in one pipeline, 100,000 fields";
        let sc = "refresher from Redis: 10,000 ids connected, 100,000 fields";
        for _ in 0..self.runs {
            let redis = RedisServer::start()?;
            let client = redis::Client::open(redis.url()).map_err(|e| e.to_string())?;
            let mut con = client
                .get_connection_with_timeout(Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            fill(&mut con)?;
            let ids: Vec<String> = (0..IDS).map(id).collect();
            for batch in BATCHES {
                let _: () = redis::cmd("CONFIG")
                    .arg("RESETSTAT")
                    .query(&mut con)
                    .map_err(|e| e.to_string())?;
                let mut took = Vec::with_capacity(REPS);
                for _ in 0..REPS {
                    let t0 = Instant::now();
                    let mut pipe = redis::pipe();
                    for chunk in ids.chunks(batch) {
                        pipe.cmd("HMGET").arg(KEY).arg(chunk);
                    }
                    let got: Vec<Vec<Option<Vec<u8>>>> =
                        pipe.query(&mut con).map_err(|e| e.to_string())?;
                    took.push(t0.elapsed().as_secs_f64() * 1e3);
                    if got.iter().map(Vec::len).sum::<usize>() != IDS {
                        return Err("HMGET answered the wrong number of values".into());
                    }
                }
                took.sort_by(f64::total_cmp);
                let r = &mut self.results;
                r.add(
                    sweep,
                    &format!("batch {batch}: pipeline p50"),
                    "ms",
                    "",
                    quantile(&took, 0.5),
                );
                r.add(
                    sweep,
                    &format!("batch {batch}: pipeline p99"),
                    "ms",
                    "",
                    quantile(&took, 0.99),
                );
                r.add(
                    sweep,
                    &format!("batch {batch}: Redis busy per HMGET"),
                    "µs",
                    "",
                    hmget_usec_per_call(&mut con),
                );
            }
            drop(con);

            let (dir, db) = temp_db();
            let url = redis.url();
            let srv = ServerProc::start(
                &self.bin,
                dir,
                db,
                &[
                    "--refresh",
                    "100ms",
                    "--redis",
                    &url,
                    "--alarm-store",
                    "redis",
                ],
            )?;
            let mut c = Clients::new(srv.addr).map_err(|e| e.to_string())?;
            let rqs: Vec<Vec<u8>> = ids
                .iter()
                .map(|id| get(srv.addr, &format!("/sse/call/{id}?mode=change")))
                .collect();
            let open = c
                .open(rqs, 256, Duration::from_secs(120), &mut no_events)
                .map_err(|e| e.to_string())?;
            // A writer changes one field every 50 ms through the server, as in the SQLite row.
            let addr = srv.addr;
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stop2 = stop.clone();
            let writer = std::thread::spawn(move || {
                let mut k = 0u32;
                while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = if k.is_multiple_of(2) { "true" } else { "false" };
                    let path = format!("/alarms/r{}", (k % IDS as u32) * 10);
                    let _ = http(addr, "PUT", &path, Some(body), None);
                    k += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
            let r0 = srv.metric("syncast_refresh_total").unwrap_or(0.0);
            let e0 = c.events();
            // 70 refreshes: the 64-refresh window then holds only refreshes of all 10,000 ids.
            c.run_until(Duration::from_secs(30), &mut no_events, |_| {
                srv.metric("syncast_refresh_total").unwrap_or(0.0) >= r0 + 70.0
            });
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = writer.join();
            let q = |name: &str, quant: &str| {
                srv.metric(&format!("{name}{{quantile=\"{quant}\"}}"))
                    .map_or(f64::NAN, |v| v * 1e3)
            };
            let r = &mut self.results;
            r.add(sc, "streams open", "", "10000", open as f64);
            let w = "syncast_refresh_window_seconds";
            let l = "syncast_refresh_lock_window_seconds";
            r.add(sc, "refresh p50", "ms", "", q(w, "0.5"));
            r.add(sc, "refresh p99", "ms", "<= 20", q(w, "0.99"));
            r.add(sc, "refresh max", "ms", "", q(w, "1"));
            r.add(sc, "write lock p99", "µs", "<= 1000", q(l, "0.99") * 1e3);
            r.add(
                sc,
                "change events received",
                "",
                "",
                (c.events() - e0) as f64,
            );
            r.add(
                sc,
                "redis errors",
                "",
                "0",
                srv.metric("syncast_redis_errors_total").unwrap_or(f64::NAN),
            );
            drop(c);
            srv.stop();
            drop(redis);
        }
        Ok(())
    }
}

impl Bench {
    /// `--only redis-fanout`: the chat fan-out of fanout.rs (1,000 members, paced 50 messages
    /// a second, then a burst of 100) across two nodes on one `redis-server` of the bench's own,
    /// 500 members on each, every message posted on node A; and, in the same run, the same load
    /// on one node without Redis. Node A's members measure the POST → script → reader → fan-out
    /// path on the posting node, node B's the same through the other node's reader; the single
    /// node is the room without Redis.
    pub(super) fn redis_fanout(&mut self) -> Result<(), String> {
        let sc = "chat fan-out across two nodes on Redis: 1,000 members (500 + 500)";
        let paced = format!("paced {}/s", super::fanout::PACED_RATE);
        let burst = format!("burst of {}", super::fanout::BURST);
        for run in 0..self.runs {
            let redis = RedisServer::start()?;
            let url = redis.url();
            let nodes = [
                self.server(&["--redis", &url])?,
                self.server(&["--redis", &url])?,
            ];
            let two = super::fanout::measure_nodes(&[&nodes[0], &nodes[1]], &format!("r{run}"));
            let errors: f64 = nodes
                .iter()
                .map(|n| n.metric("syncast_redis_errors_total").unwrap_or(f64::NAN))
                .sum();
            for n in nodes {
                n.stop();
            }
            drop(redis);
            let two = two?;
            let one = self.server(&[])?;
            let single = super::fanout::measure(&one, &format!("o{run}"));
            one.stop();
            let single = single?;
            let r = &mut self.results;
            r.add(sc, "members streaming", "", "1000", two.members as f64);
            for (k, node) in two.nodes.iter().enumerate() {
                let on = if k == 0 {
                    "node A (posts here)"
                } else {
                    "node B"
                };
                r.add(
                    sc,
                    &format!("{on}: {paced}: latency p50"),
                    "ms",
                    "",
                    node.paced_p50,
                );
                r.add(
                    sc,
                    &format!("{on}: {paced}: latency p99"),
                    "ms",
                    "",
                    node.paced_p99,
                );
                r.add(
                    sc,
                    &format!("{on}: {burst}: latency p50"),
                    "ms",
                    "",
                    node.burst_p50,
                );
                r.add(
                    sc,
                    &format!("{on}: {burst}: latency p99"),
                    "ms",
                    "",
                    node.burst_p99,
                );
                r.add(
                    sc,
                    &format!("{on}: {paced}: CPU per delivery to its members"),
                    "µs",
                    "",
                    node.paced_cpu_us,
                );
                r.add(
                    sc,
                    &format!("{on}: {paced}: CPU"),
                    "% of a core",
                    "",
                    node.paced_cpu_pct,
                );
            }
            for (q, v) in [
                (format!("{paced}: latency p50"), single.paced_p50),
                (format!("{paced}: latency p99"), single.paced_p99),
                (format!("{burst}: latency p50"), single.burst_p50),
                (format!("{burst}: latency p99"), single.burst_p99),
            ] {
                r.add(sc, &format!("one node, no Redis: {q}"), "ms", "", v);
            }
            // Every node, the posting one too, delivers from its reader's mirror of the Redis
            // stream: node B's members wait for no more than node A's, and what the Redis hop
            // adds is the difference from one node without Redis.
            if let [a, b] = &two.nodes[..] {
                r.add(
                    sc,
                    &format!("{paced}: p50 node B − node A"),
                    "ms",
                    "",
                    b.paced_p50 - a.paced_p50,
                );
                r.add(
                    sc,
                    &format!("latency added by the Redis hop, {paced}: p50 node B − one node"),
                    "ms",
                    "",
                    b.paced_p50 - single.paced_p50,
                );
                r.add(
                    sc,
                    &format!("latency added by the Redis hop, {paced}: p99 node B − one node"),
                    "ms",
                    "",
                    b.paced_p99 - single.paced_p99,
                );
            }
            r.add(
                sc,
                &format!("two nodes: {paced}: CPU per delivery, both nodes"),
                "µs",
                "",
                two.paced_cpu_us,
            );
            r.add(
                sc,
                &format!("one node, no Redis: {paced}: CPU per delivery"),
                "µs",
                "",
                single.paced_cpu_us,
            );
            r.add(
                sc,
                &format!("two nodes: {burst}: deliveries/s"),
                "1/s",
                "",
                two.burst_rate,
            );
            r.add(
                sc,
                &format!("one node, no Redis: {burst}: deliveries/s"),
                "1/s",
                "",
                single.burst_rate,
            );
            r.add(sc, "two nodes: lost", "", "0", two.lost as f64);
            r.add(sc, "two nodes: duplicated", "", "0", two.duplicated as f64);
            r.add(sc, "one node, no Redis: lost", "", "0", single.lost as f64);
            r.add(sc, "redis errors (both nodes)", "", "0", errors);
        }
        Ok(())
    }
}
