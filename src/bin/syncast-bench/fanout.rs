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

/// Members streaming.
pub const MEMBERS: usize = 1000;
/// Posting sessions, taken in turn (syncast allows one session 20 messages a second).
const POSTERS: usize = 20;
/// The paced phase: messages a second, and for how long.
pub const PACED_RATE: u32 = 50;
const PACED_FOR: Duration = Duration::from_secs(4);
/// Messages of the burst, each sent when the previous one's 202 came back.
pub const BURST: usize = 100;

/// What one server did.
pub struct Fanout {
    /// Server CPU (user + system) per delivery over the paced phase, µs.
    pub paced_cpu_us: f64,
    /// Latency quantiles of the paced phase, ms.
    pub paced_p50: f64,
    pub paced_p99: f64,
    /// Latency quantiles of the burst, ms.
    pub burst_p50: f64,
    pub burst_p99: f64,
    /// Server CPU per delivery over the burst, µs.
    pub burst_cpu_us: f64,
    /// Deliveries that never arrived (both phases).
    pub lost: usize,
    /// Members that streamed.
    pub members: usize,
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

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    syncast::kit::stats::quantile(v, q).unwrap_or(f64::NAN)
}

/// Runs both phases against `srv` (its process's CPU is read from `/proc`).
pub fn measure(srv: &ServerProc, tag: &str) -> Result<Fanout, String> {
    let mut tokens = Vec::new();
    for i in 0..MEMBERS {
        tokens.push(join(srv, &format!("{tag}m{i}"))?);
    }
    let mut posters = Vec::new();
    for i in 0..POSTERS {
        posters.push(join(srv, &format!("{tag}p{i}"))?);
    }
    let mut c = Clients::new(srv.addr).map_err(|e| e.to_string())?;
    c.parse = true;
    let rqs: Vec<Vec<u8>> = tokens
        .iter()
        .map(|t| get(srv.addr, &format!("/chat/stream?token={t}")))
        .collect();
    let receipts: Arc<Mutex<Vec<(u64, usize, Instant)>>> = Arc::default();
    let rec = receipts.clone();
    let mut on_event = move |e: epoll::Event<'_>| {
        if e.name == "message" {
            if let Some(id) = e.id {
                rec.lock().unwrap().push((id, e.conn, e.at));
            }
        }
    };
    let members = c
        .open(rqs, 256, Duration::from_secs(60), &mut on_event)
        .map_err(|e| e.to_string())?;
    // Let the joins' presence events and tiny_http's surplus threads settle.
    c.run_until(Duration::from_secs(2), &mut on_event, |_| false);
    receipts.lock().unwrap().clear();
    let sent: Arc<Mutex<HashMap<u64, Sent>>> = Arc::default();
    let addr = srv.addr;
    let cpu0 = srv.sample().cpu;
    let (phase_tx, phase_rx) = crossbeam_channel::bounded::<Result<(), String>>(2);
    let poster = {
        let sent = sent.clone();
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
    let mut cpu_paced = (cpu0, cpu0);
    let mut cpu_burst = (cpu0, cpu0);
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
        if phases_done >= 1 && cpu_paced.1 == cpu0 && got >= expected_paced {
            cpu_paced.1 = srv.sample().cpu;
            cpu_burst.0 = cpu_paced.1;
        }
        if phases_done == 2 && got >= expected_paced + BURST * members {
            cpu_burst.1 = srv.sample().cpu;
            break;
        }
        // Stragglers get 5 s after the last post; what is missing then counts as lost.
        if since_last.is_some_and(|t| phases_done == 2 && t.elapsed() > Duration::from_secs(5)) {
            cpu_burst.1 = srv.sample().cpu;
            break;
        }
    }
    let _ = poster.join();
    let sent = sent.lock().unwrap().clone();
    let receipts = receipts.lock().unwrap().clone();
    let mut seen: HashSet<(u64, usize)> = HashSet::new();
    let (mut paced, mut burst) = (Vec::new(), Vec::new());
    for &(id, conn, at) in &receipts {
        if !seen.insert((id, conn)) {
            continue;
        }
        if let Some(s) = sent.get(&id) {
            let ms = at.saturating_duration_since(s.due).as_secs_f64() * 1e3;
            if s.burst {
                burst.push(ms);
            } else {
                paced.push(ms);
            }
        }
    }
    let lost = (sent.len() * members).saturating_sub(paced.len() + burst.len());
    let per = |cpu: (f64, f64), n: usize| (cpu.1 - cpu.0) / n.max(1) as f64 * 1e6;
    Ok(Fanout {
        paced_cpu_us: per(cpu_paced, paced.len()),
        burst_cpu_us: per(cpu_burst, burst.len()),
        paced_p50: quantile(&mut paced, 0.5),
        paced_p99: quantile(&mut paced, 0.99),
        burst_p50: quantile(&mut burst, 0.5),
        burst_p99: quantile(&mut burst, 0.99),
        lost,
        members,
    })
}
