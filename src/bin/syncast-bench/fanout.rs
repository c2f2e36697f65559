//! Chat fan-out beside a naive server (issue 13, item 5): 1,000 members, then a paced phase (50
//! messages a second: 50,000 deliveries a second) and a burst (100 messages back to back), the
//! same load client against any server that speaks the chat wire (syncast, or the naive
//! thread-per-member server `syncast-bench --naive-server chat`). Measured: server CPU per
//! delivery over the paced phase, latency (from a POST's due time, or its send in the burst, to
//! each member's receipt) p50/p99, and deliveries lost.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::epoll::{self, get, Clients};
use crate::proc::{http, ServerProc};
use syncast::kit::proc::{self, Proc};
use syncast::kit::prom;

/// Members streaming.
pub const MEMBERS: usize = 1000;
/// Posting sessions, taken in turn (syncast allows one session 20 messages a second).
const POSTERS: usize = 20;
/// The paced phase: messages a second, and for how long.
pub const PACED_RATE: u32 = 50;
const PACED_FOR: Duration = Duration::from_secs(4);
/// Messages of the burst, each sent when the previous one's 202 came back.
pub const BURST: usize = 100;
/// Streams opening at once: below the server's `--max-requests` (64), since on Redis a stream's
/// attach (its session looked up and claimed in Redis) is a short request, and one over the cap
/// is refused (`event: refused`, which a browser retries and this client does not).
const OPENING: usize = 48;

/// What one server (or the nodes of one Redis together) did.
pub struct Fanout {
    /// Server CPU (user + system, all nodes) per delivery over the paced phase, µs.
    pub paced_cpu_us: f64,
    /// Latency quantiles of the paced phase, ms.
    pub paced_p50: f64,
    pub paced_p99: f64,
    /// Latency quantiles of the burst, ms.
    pub burst_p50: f64,
    pub burst_p99: f64,
    /// Server CPU (all nodes) per delivery over the burst, µs.
    pub burst_cpu_us: f64,
    /// Deliveries of the burst a second: from its first POST to its last receipt.
    pub burst_rate: f64,
    /// This load client's own CPU (all its threads) over the burst, % of one core: the two
    /// cores are shared, and what the server spends the client cannot.
    pub burst_client_cpu_pct: f64,
    /// The server's own account of the burst (`syncast_chat_delivery_seconds`, first node):
    /// the bucket bound within which 99 % of the burst's events were written to members'
    /// sockets after their post was accepted, ms. NaN for a server without that histogram.
    pub burst_written_p99: f64,
    /// Deliveries that never arrived (both phases).
    pub lost: usize,
    /// Deliveries that arrived more than once on one member (both phases).
    pub duplicated: usize,
    /// Members that streamed.
    pub members: usize,
    /// The members of each node, in the order the nodes were given.
    pub nodes: Vec<NodeFanout>,
}

/// The members of one node: their latencies, and that node's process CPU.
pub struct NodeFanout {
    pub paced_p50: f64,
    pub paced_p99: f64,
    pub burst_p50: f64,
    pub burst_p99: f64,
    /// This node's CPU over the paced phase per delivery to its own members, µs.
    pub paced_cpu_us: f64,
    /// This node's CPU over the paced phase, % of one core.
    pub paced_cpu_pct: f64,
}

/// One POST: when it was due (paced) or sent (burst).
#[derive(Clone, Copy)]
struct Sent {
    due: Instant,
    burst: bool,
}

fn join(srv: &ServerProc, name: &str) -> Result<String, String> {
    let (st, body) =
        http(srv.addr, "POST", "/chat/join", Some(name), None).map_err(|e| e.to_string())?;
    if st != 201 {
        return Err(format!("POST /chat/join answered {st}: {body}"));
    }
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    v["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no token in {body}"))
}

fn post(srv_addr: std::net::SocketAddr, token: &str, k: usize) -> Result<u64, String> {
    let (st, body) = http(
        srv_addr,
        "POST",
        "/chat/messages",
        Some(&format!("bench message {k}")),
        Some(token),
    )
    .map_err(|e| e.to_string())?;
    if st != 202 {
        return Err(format!("POST /chat/messages answered {st}: {body}"));
    }
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    v["id"].as_u64().ok_or(format!("no id in {body}"))
}

/// This process's CPU (user + system, all threads), seconds.
fn own_cpu() -> f64 {
    proc::cpu_seconds(Proc::This)
}

/// The cumulative buckets of `syncast_chat_delivery_seconds` on `srv` (bounds in seconds).
fn delivery_buckets(srv: &ServerProc) -> Option<prom::Buckets> {
    let (_, body) = http(srv.addr, "GET", "/metrics", None, None).ok()?;
    let buckets = prom::buckets(&body, "syncast_chat_delivery_seconds");
    (!buckets.is_empty()).then_some(buckets)
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    syncast::kit::stats::quantile(v, q).unwrap_or(f64::NAN)
}

/// Runs both phases against `srv` (its process's CPU is read from `/proc`).
pub fn measure(srv: &ServerProc, tag: &str) -> Result<Fanout, String> {
    measure_nodes(&[srv], tag)
}

/// Runs both phases with the members split evenly over `nodes` (several nodes on one Redis),
/// every session joined and every message posted on the first node; each node's CPU is read
/// from `/proc`. With one node this is [`measure`].
pub fn measure_nodes(nodes: &[&ServerProc], tag: &str) -> Result<Fanout, String> {
    let first = *nodes.first().ok_or("no node")?;
    let mut c = Clients::new(first.addr).map_err(|e| e.to_string())?;
    c.parse = true;
    let receipts: Arc<Mutex<Vec<(u64, usize, Instant)>>> = Arc::default();
    let rec = receipts.clone();
    let mut on_event = move |e: epoll::Event<'_>| {
        if e.name == "message" {
            if let Some(id) = e.id {
                rec.lock().unwrap().push((id, e.conn, e.at));
            }
        }
    };
    // Connections are numbered in the order they are opened: node k's members are the
    // connections from bounds[k] (inclusive) to bounds[k + 1].
    let mut bounds = vec![0usize];
    let mut members = 0;
    for (k, node) in nodes.iter().enumerate() {
        let share = MEMBERS / nodes.len() + usize::from(k < MEMBERS % nodes.len());
        let mut rqs = Vec::with_capacity(share);
        for i in 0..share {
            let t = join(node, &format!("{tag}n{k}m{i}"))?;
            rqs.push(get(node.addr, &format!("/chat/stream?token={t}")));
        }
        c.retarget(node.addr);
        members = c
            .open(rqs, OPENING, Duration::from_secs(60), &mut on_event)
            .map_err(|e| e.to_string())?;
        bounds.push(c.conns.len());
    }
    let mut posters = Vec::new();
    for i in 0..POSTERS {
        posters.push(join(first, &format!("{tag}p{i}"))?);
    }
    let node_of = |conn: usize| bounds[1..].iter().position(|&b| conn < b).unwrap_or(0);
    // Let the joins' presence events and tiny_http's surplus threads settle.
    c.run_until(Duration::from_secs(2), &mut on_event, |_| false);
    receipts.lock().unwrap().clear();
    let sent: Arc<Mutex<HashMap<u64, Sent>>> = Arc::default();
    let addr = first.addr;
    let cpu = || nodes.iter().map(|n| n.sample().cpu).collect::<Vec<f64>>();
    let cpu0 = cpu();
    let t_paced = Instant::now();
    let (phase_tx, phase_rx) = crossbeam_channel::bounded::<Result<(), String>>(2);
    // The load client's CPU when the burst's first POST goes out (read by the poster).
    let client_at_burst: Arc<Mutex<f64>> = Arc::new(Mutex::new(f64::NAN));
    let poster = {
        let sent = sent.clone();
        let client_at_burst = client_at_burst.clone();
        std::thread::spawn(move || {
            let n = (PACED_FOR.as_secs_f64() * PACED_RATE as f64) as usize;
            let every = Duration::from_secs(1) / PACED_RATE;
            let start = Instant::now() + Duration::from_millis(10);
            // Three lanes take turns, so one slow POST does not hold up the next.
            let paced = std::thread::scope(|s| {
                let hs: Vec<_> = (0..3)
                    .map(|lane| {
                        let (sent, posters) = (&sent, &posters);
                        s.spawn(move || -> Result<(), String> {
                            for k in (lane..n).step_by(3) {
                                let due = start + every * k as u32;
                                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                                let id = post(addr, &posters[k % POSTERS], k)?;
                                sent.lock().unwrap().insert(id, Sent { due, burst: false });
                            }
                            Ok(())
                        })
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().unwrap_or(Err("poster panicked".into())))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|_| ())
            });
            let _ = phase_tx.send(paced);
            std::thread::sleep(Duration::from_secs(2));
            *client_at_burst.lock().unwrap() = own_cpu();
            let burst = (|| {
                for k in 0..BURST {
                    let due = Instant::now();
                    let id = post(addr, &posters[k % POSTERS], n + k)?;
                    sent.lock().unwrap().insert(id, Sent { due, burst: true });
                }
                Ok(())
            })();
            let _ = phase_tx.send(burst);
        })
    };
    let expected_paced = (PACED_FOR.as_secs_f64() * PACED_RATE as f64) as usize * members;
    let mut phases_done = 0;
    let mut cpu_paced = (cpu0.clone(), None::<Vec<f64>>);
    let mut paced_secs = f64::NAN;
    let mut cpu_burst = (cpu0.clone(), None::<Vec<f64>>);
    let mut client_end = f64::NAN;
    let mut written_burst: (Option<prom::Buckets>, Option<prom::Buckets>) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut since_last: Option<Instant> = None;
    while Instant::now() < deadline {
        c.run_until(Duration::from_millis(50), &mut on_event, |_| false);
        if let Ok(r) = phase_rx.try_recv() {
            r?;
            phases_done += 1;
            since_last = Some(Instant::now());
        }
        let got = receipts.lock().unwrap().len();
        // The paced phase's CPU ends when its deliveries are in (the burst starts 2 s later).
        if phases_done >= 1 && cpu_paced.1.is_none() && got >= expected_paced {
            let now = cpu();
            paced_secs = t_paced.elapsed().as_secs_f64();
            cpu_burst.0 = now.clone();
            cpu_paced.1 = Some(now);
            written_burst.0 = delivery_buckets(first);
        }
        let all_in = phases_done == 2 && got >= expected_paced + BURST * members;
        // Stragglers get 5 s after the last post; what is missing then counts as lost.
        let given_up =
            since_last.is_some_and(|t| phases_done == 2 && t.elapsed() > Duration::from_secs(5));
        if all_in || given_up {
            cpu_burst.1 = Some(cpu());
            client_end = own_cpu();
            written_burst.1 = delivery_buckets(first);
            break;
        }
    }
    let _ = poster.join();
    let sent = sent.lock().unwrap().clone();
    let receipts = receipts.lock().unwrap().clone();
    let mut seen: HashSet<(u64, usize)> = HashSet::new();
    let mut duplicated = 0;
    let (mut paced, mut burst) = (Vec::new(), Vec::new());
    // Per node: paced latencies, burst latencies.
    let mut by_node: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); nodes.len()];
    let mut burst_span: Option<(Instant, Instant)> = None;
    for &(id, conn, at) in &receipts {
        if !seen.insert((id, conn)) {
            duplicated += 1;
            continue;
        }
        if let Some(s) = sent.get(&id) {
            let ms = at.saturating_duration_since(s.due).as_secs_f64() * 1e3;
            let node = &mut by_node[node_of(conn)];
            if s.burst {
                burst.push(ms);
                node.1.push(ms);
                let (a, b) = burst_span.get_or_insert((s.due, at));
                *a = (*a).min(s.due);
                *b = (*b).max(at);
            } else {
                paced.push(ms);
                node.0.push(ms);
            }
        }
    }
    let lost = (sent.len() * members).saturating_sub(paced.len() + burst.len());
    // Phases whose end was never reached (deliveries lost) are measured to the loop's end.
    let end = cpu();
    let cpu_paced = (cpu_paced.0, cpu_paced.1.unwrap_or_else(|| end.clone()));
    let cpu_burst = (cpu_burst.0, cpu_burst.1.unwrap_or(end));
    let total = |v: &[f64]| v.iter().sum::<f64>();
    let per = |secs: f64, n: usize| secs / n.max(1) as f64 * 1e6;
    let nodes_out = by_node
        .iter_mut()
        .enumerate()
        .map(|(k, (p, b))| NodeFanout {
            paced_cpu_us: per(cpu_paced.1[k] - cpu_paced.0[k], p.len()),
            paced_cpu_pct: (cpu_paced.1[k] - cpu_paced.0[k]) / paced_secs * 100.0,
            paced_p50: quantile(p, 0.5),
            paced_p99: quantile(p, 0.99),
            burst_p50: quantile(b, 0.5),
            burst_p99: quantile(b, 0.99),
        })
        .collect();
    Ok(Fanout {
        paced_cpu_us: per(total(&cpu_paced.1) - total(&cpu_paced.0), paced.len()),
        burst_cpu_us: per(total(&cpu_burst.1) - total(&cpu_burst.0), burst.len()),
        burst_rate: burst_span.map_or(f64::NAN, |(a, b)| {
            burst.len() as f64 / b.duration_since(a).as_secs_f64().max(1e-9)
        }),
        burst_client_cpu_pct: burst_span.map_or(f64::NAN, |(a, b)| {
            (client_end - *client_at_burst.lock().unwrap())
                / b.duration_since(a).as_secs_f64().max(1e-9)
                * 100.0
        }),
        burst_written_p99: match written_burst {
            (Some(a), Some(b)) => prom::bucket_quantile(&a, &b, 0.99) * 1e3,
            _ => f64::NAN,
        },
        paced_p50: quantile(&mut paced, 0.5),
        paced_p99: quantile(&mut paced, 0.99),
        burst_p50: quantile(&mut burst, 0.5),
        burst_p99: quantile(&mut burst, 0.99),
        lost,
        duplicated,
        members,
        nodes: nodes_out,
    })
}
