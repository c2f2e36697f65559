//! `syncast-bench`: starts the release server as a child process and measures it from outside
//! with epoll-driven clients (issue 5). Prints the machine, a table of median (min..max) over
//! the runs, and writes `target/bench/results.json`.
//!
//! Usage: `syncast-bench [--runs N]
//! [--only footprint,idle,chat-idle,close,tick,refresh,redis-refresh,redis-fanout,chat,fanout,floor]
//! [--idle-sizes 1000,5000,10000] [--chat-sizes 5000,10000] [--close-size 10000] [--out PATH] [--auth]`
//!
//! `--auth`: the server runs with an HS256 secret, and the footprint and idle scenarios' streams
//! carry a token (each such stream then also waits on its token's expiry in its `select!`).
//!
//! `syncast-bench --naive-server tick|chat [--listen ADDR]` runs the naive thread-per-connection
//! server the bench compares syncast with (naive.rs); scenarios start it as a child with
//! `ServerProc::start_naive` and drive it with the same client.

mod epoll;
mod fanout;
mod floor;
mod naive;
mod proc;
mod redis;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use epoll::{get, Clients};
use proc::{http, temp_db, ServerProc};
use serde_json::json;

/// One figure over several runs.
struct Figure {
    scenario: String,
    name: String,
    unit: String,
    values: Vec<f64>,
    target: String,
}

#[derive(Default)]
struct Results {
    figures: Vec<Figure>,
    notes: Vec<String>,
}

impl Results {
    fn add(&mut self, scenario: &str, name: &str, unit: &str, target: &str, v: f64) {
        match self
            .figures
            .iter_mut()
            .find(|f| f.scenario == scenario && f.name == name)
        {
            Some(f) => f.values.push(v),
            None => self.figures.push(Figure {
                scenario: scenario.into(),
                name: name.into(),
                unit: unit.into(),
                values: vec![v],
                target: target.into(),
            }),
        }
    }
}

/// For `--auth`: a fresh HS256 secret file and a day-long token that may stream every id.
fn bench_token() -> Result<(PathBuf, String), String> {
    let (dir, _) = temp_db();
    let secret = dir.join("jwt-secret");
    let bytes: Vec<u8> = (0..48u8)
        .map(|i| b'a' + (i.wrapping_mul(7) ^ std::process::id() as u8) % 26)
        .collect();
    std::fs::write(&secret, &bytes).map_err(|e| e.to_string())?;
    let minter = syncast::kit::jwt::Minter::hs256(&bytes)?;
    let mut claims = syncast::kit::jwt::claims("bench", Duration::from_secs(86_400));
    claims["syncast"] = json!({ "subscribe": ["*"] });
    Ok((secret, minter.mint(&claims)?))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[s.len() / 2]
}

/// The `q` quantile of sorted figures, NaN (shown as `-`) when there are none.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    syncast::kit::stats::quantile(sorted, q).unwrap_or(f64::NAN)
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

struct Bench {
    bin: PathBuf,
    runs: usize,
    results: Results,
    /// With `--auth`: the secret file the server is given, and a token for every stream.
    auth: Option<(PathBuf, String)>,
}

const KIB: f64 = 1024.0;
const MIB: f64 = 1024.0 * 1024.0;

fn no_events(_: epoll::Event<'_>) {}

impl Bench {
    fn server(&self, extra: &[&str]) -> Result<ServerProc, String> {
        let (dir, db) = temp_db();
        let mut args: Vec<&str> = extra.to_vec();
        if let Some((secret, _)) = &self.auth {
            args.extend(["--jwt-secret-file", secret.to_str().unwrap_or_default()]);
        }
        ServerProc::start(&self.bin, dir, db, &args)
    }

    /// `GET path` as a stream request, with the token when `--auth` is on.
    fn stream_request(&self, addr: std::net::SocketAddr, path: &str) -> Vec<u8> {
        match &self.auth {
            Some((_, token)) => syncast::kit::http::request_bytes(
                &addr.to_string(),
                "GET",
                path,
                &[
                    ("Accept", "text/event-stream"),
                    ("Authorization", &format!("Bearer {token}")),
                ],
                b"",
            ),
            None => get(addr, path),
        }
    }

    /// Waits until the server's thread count is at most `idle` (or `limit` passes); returns
    /// how long that took.
    fn wait_threads(srv: &ServerProc, idle: u64, limit: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if srv.sample().threads <= idle {
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    fn footprint(&mut self) -> Result<(), String> {
        let size = std::fs::metadata(&self.bin)
            .map_err(|e| e.to_string())?
            .len();
        for _ in 0..self.runs {
            let srv = self.server(&[])?;
            let ready = srv.ready_after;
            std::thread::sleep(Duration::from_secs(2));
            let s = srv.sample();
            let r = &mut self.results;
            r.add(
                "footprint",
                "release binary size",
                "MiB",
                "",
                size as f64 / MIB,
            );
            r.add("footprint", "idle RSS", "MiB", "<= 4", s.rss as f64 / MIB);
            // Once tiny_http's threads sleep the server prints its address (accept.rs), so a
            // client connecting at once no longer makes its pool add a surplus thread that
            // lingered for 5 s: 2 s after start is idle.
            r.add(
                "footprint",
                "idle threads (2 s after start)",
                "",
                "<= 8",
                s.threads as f64,
            );
            r.add(
                "footprint",
                "start to first answered request",
                "ms",
                "",
                ready.as_secs_f64() * 1e3,
            );
            srv.stop();
        }
        Ok(())
    }

    fn idle(&mut self, n: usize) -> Result<(), String> {
        let sc = format!(
            "idle change streams N={n}{}",
            if self.auth.is_some() {
                " (auth on)"
            } else {
                ""
            }
        );
        for run in 0..self.runs {
            let srv = self.server(&[])?;
            std::thread::sleep(Duration::from_millis(500));
            let before = srv.sample();
            let mut c = Clients::new(srv.addr).map_err(|e| e.to_string())?;
            let rqs: Vec<Vec<u8>> = (0..n)
                .map(|i| {
                    self.stream_request(srv.addr, &format!("/sse/call/idle{run}x{i}?mode=change"))
                })
                .collect();
            let t0 = Instant::now();
            let open = c
                .open(rqs, 256, Duration::from_secs(120), &mut no_events)
                .map_err(|e| e.to_string())?;
            let ramp = t0.elapsed();
            if open < n {
                self.results.notes.push(format!(
                    "{sc} run {run}: only {open} of {n} streams opened in {:.1} s",
                    ramp.as_secs_f64()
                ));
            }
            // Let tiny_http's extra pool threads (5 s idle time-out) go before holding.
            c.run_until(Duration::from_secs(6), &mut no_events, |_| false);
            // Hold for one whole heartbeat (at least 10 s): every stream then writes exactly one
            // keepalive inside the window, whatever the phase of its timer. A fixed 10 s window
            // held all first keepalives of a 15 s heartbeat (1.5 times the steady rate) and
            // would hold none of a 30 s one.
            let hold = heartbeat().max(Duration::from_secs(10));
            let h0 = srv.sample();
            c.run_until(hold, &mut no_events, |_| false);
            let at = srv.sample();
            let stacks = proc::stack_resident(srv.pid(), proc::STREAM_STACK);
            let sweep_ms = srv
                .metric("syncast_watcher_last_sweep_seconds")
                .map_or(f64::NAN, |v| v * 1e3);
            let still = c.streaming();
            c.close_all();
            let back = Self::wait_threads(&srv, before.threads, Duration::from_secs(10));
            std::thread::sleep(
                Duration::from_secs(10).saturating_sub(back.unwrap_or(Duration::from_secs(10))),
            );
            let after = srv.sample();
            let r = &mut self.results;
            r.add(
                &sc,
                "streams open",
                "",
                &n.to_string(),
                open.min(still) as f64,
            );
            r.add(&sc, "ramp time", "s", "", ramp.as_secs_f64());
            r.add(&sc, "RSS before", "MiB", "", before.rss as f64 / MIB);
            r.add(&sc, "RSS at N", "MiB", "", at.rss as f64 / MIB);
            r.add(
                &sc,
                "RSS 10 s after close",
                "MiB",
                "",
                after.rss as f64 / MIB,
            );
            r.add(
                &sc,
                "RSS per stream",
                "KiB",
                if n == 10_000 { "<= 16" } else { "" },
                (at.rss as f64 - before.rss as f64) / KIB / open.max(1) as f64,
            );
            r.add(
                &sc,
                "resident stack per stream thread",
                "KiB",
                "8",
                stacks.map_or(f64::NAN, |(_, kib)| kib),
            );
            r.add(
                &sc,
                "RSS 10 s after close - before",
                "MiB",
                if n == 10_000 { "<= 8" } else { "" },
                (after.rss as f64 - before.rss as f64) / MIB,
            );
            r.add(&sc, "threads before", "", "", before.threads as f64);
            r.add(&sc, "threads at N", "", "", at.threads as f64);
            r.add(
                &sc,
                "threads per stream",
                "",
                "1",
                (at.threads as f64 - before.threads as f64) / open.max(1) as f64,
            );
            r.add(
                &sc,
                "threads 10 s after close",
                "",
                &format!("<= {}", before.threads),
                after.threads as f64,
            );
            r.add(
                &sc,
                "threads back to idle after",
                "s",
                "<= 10",
                back.map_or(f64::NAN, |d| d.as_secs_f64()),
            );
            let cpu = at.cpu - h0.cpu;
            r.add(&sc, "watcher sweep (last)", "ms", "", sweep_ms);
            r.add(&sc, "hold (one heartbeat)", "s", "", hold.as_secs_f64());
            r.add(&sc, "server CPU over the hold", "s", "", cpu);
            r.add(
                &sc,
                "server CPU holding",
                "% core",
                if n == 10_000 { "<= 2" } else { "" },
                cpu / hold.as_secs_f64() * 100.0,
            );
            drop(c);
            srv.stop();
        }
        Ok(())
    }

    /// Idle chat members (issue 13): `n` members join with `GET /chat/stream?name=` at
    /// [`CHAT_RAMP_RATE`] connections a second, then sit idle; memory and threads per member,
    /// the time until the last one has its `welcome`, and what is left 10 s after they close.
    fn chat_idle(&mut self, n: usize) -> Result<(), String> {
        let sc = format!("idle chat members N={n}");
        for run in 0..self.runs {
            let srv = self.server(&[])?;
            std::thread::sleep(Duration::from_millis(500));
            let before = srv.sample();
            let mut c = Clients::new(srv.addr).map_err(|e| e.to_string())?;
            let rqs: Vec<Vec<u8>> = (0..n)
                .map(|i| get(srv.addr, &format!("/chat/stream?name=i{run}x{i}")))
                .collect();
            let (welcomed, ramp) = c
                .open_paced(rqs, CHAT_RAMP_RATE, Duration::from_secs(60), &mut no_events)
                .map_err(|e| e.to_string())?;
            if welcomed < n {
                let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
                for conn in c.conns.iter().filter(|c| c.events == 0) {
                    *statuses.entry(conn.status).or_default() += 1;
                }
                self.results.notes.push(format!(
                    "{sc} run {run}: only {welcomed} of {n} members welcomed in {:.1} s \
                     (the others by status, 0 = no answer: {statuses:?})",
                    ramp.as_secs_f64()
                ));
            }
            let ramp_events = c.events();
            // As for alarm streams: tiny_http's surplus pool threads go first (5 s).
            c.run_until(Duration::from_secs(6), &mut no_events, |_| false);
            let at = srv.sample();
            let stacks = proc::stack_resident(srv.pid(), proc::STREAM_STACK);
            let still = c.streaming();
            c.close_all();
            let back = Self::wait_threads(&srv, before.threads, Duration::from_secs(10));
            std::thread::sleep(
                Duration::from_secs(10).saturating_sub(back.unwrap_or(Duration::from_secs(10))),
            );
            let after = srv.sample();
            let open = welcomed.min(still);
            let r = &mut self.results;
            r.add(&sc, "members welcomed", "", &n.to_string(), open as f64);
            r.add(
                &sc,
                "ramp: first connect to last welcome",
                "s",
                if n == 10_000 { "<= 12" } else { "" },
                ramp.as_secs_f64(),
            );
            r.add(
                &sc,
                "events received during the ramp",
                "",
                "",
                ramp_events as f64,
            );
            r.add(&sc, "RSS before", "MiB", "", before.rss as f64 / MIB);
            r.add(&sc, "RSS at N", "MiB", "", at.rss as f64 / MIB);
            r.add(
                &sc,
                "RSS per member",
                "KiB",
                "<= 16",
                (at.rss as f64 - before.rss as f64) / KIB / open.max(1) as f64,
            );
            r.add(
                &sc,
                "threads per member",
                "",
                "1",
                (at.threads as f64 - before.threads as f64) / open.max(1) as f64,
            );
            r.add(
                &sc,
                "resident stack per member thread",
                "KiB",
                "8",
                stacks.map_or(f64::NAN, |(_, kib)| kib),
            );
            r.add(
                &sc,
                "threads 10 s after close",
                "",
                &format!("<= {}", before.threads),
                after.threads as f64,
            );
            r.add(
                &sc,
                "RSS 10 s after close",
                "MiB",
                "",
                after.rss as f64 / MIB,
            );
            r.add(
                &sc,
                "RSS 10 s after close - before",
                "MiB",
                "<= 8",
                (after.rss as f64 - before.rss as f64) / MIB,
            );
            drop(c);
            srv.stop();
        }
        Ok(())
    }

    /// `n` tick-mode streams on syncast, then on the naive server (naive.rs) in the same run:
    /// events/s and server CPU over [`TICK_WINDOW`], and the ratio of the two CPUs.
    fn tick(&mut self, n: usize) -> Result<(), String> {
        let sc = format!("tick streams N={n}");
        for run in 0..self.runs {
            let srv = self.server(&[])?;
            let ours = Self::tick_load(&srv, n, run)?;
            srv.stop();
            let naive = ServerProc::start_naive("tick")?;
            let theirs = Self::tick_load(&naive, n, run)?;
            naive.stop();
            let r = &mut self.results;
            r.add(&sc, "streams open", "", &n.to_string(), ours.open as f64);
            r.add(
                &sc,
                "events/s delivered",
                "1/s",
                &format!("{}", n * 2),
                ours.events_per_s,
            );
            r.add(&sc, "server CPU", "% core", "", ours.cpu_pct);
            r.add(&sc, "server RSS", "MiB", "", ours.rss_mib);
            r.add(
                &sc,
                "naive server: streams open",
                "",
                "",
                theirs.open as f64,
            );
            r.add(
                &sc,
                "naive server: events/s delivered",
                "1/s",
                "",
                theirs.events_per_s,
            );
            r.add(&sc, "naive server: CPU", "% core", "", theirs.cpu_pct);
            r.add(&sc, "naive server: RSS", "MiB", "", theirs.rss_mib);
            r.add(
                &sc,
                "server CPU / naive server CPU",
                "",
                "<= 1.1",
                ours.cpu_pct / theirs.cpu_pct,
            );
        }
        Ok(())
    }

    /// Opens `n` tick-mode streams on `srv` (over 1,000 ids), lets them settle, and measures.
    fn tick_load(srv: &ServerProc, n: usize, run: usize) -> Result<TickLoad, String> {
        let mut c = Clients::new(srv.addr).map_err(|e| e.to_string())?;
        let rqs: Vec<Vec<u8>> = (0..n)
            .map(|i| get(srv.addr, &format!("/sse/call/tick{run}x{}", i % 1000)))
            .collect();
        let open = c
            .open(rqs, 256, Duration::from_secs(120), &mut no_events)
            .map_err(|e| e.to_string())?;
        c.run_until(Duration::from_secs(2), &mut no_events, |_| false);
        let e0 = c.events();
        let s0 = srv.sample();
        let t0 = Instant::now();
        c.run_until(TICK_WINDOW, &mut no_events, |_| false);
        let secs = t0.elapsed().as_secs_f64();
        let s1 = srv.sample();
        Ok(TickLoad {
            open,
            events_per_s: (c.events() - e0) as f64 / secs,
            cpu_pct: (s1.cpu - s0.cpu) / secs * 100.0,
            rss_mib: s1.rss as f64 / MIB,
        })
    }

    /// `n` streams of `kind` whose clients all send FIN at once, right after the ramp and
    /// after a hold of [`CLOSE_HOLD`], each on a fresh server: how long until every stream
    /// thread has ended (the server's own count, `/metrics`), the server's CPU in the second
    /// after the close, and (after the hold, when tiny_http's pool has settled) how long until
    /// the process is back at its thread count from before the ramp.
    fn mass_close(&mut self, kind: Kind, n: usize) -> Result<(), String> {
        let sc = format!("mass close N={n}: {}", kind.label());
        for run in 0..self.runs {
            for (phase, hold) in [
                ("right after the ramp", Duration::ZERO),
                ("after a hold", CLOSE_HOLD),
            ] {
                let srv = self.server(&[])?;
                std::thread::sleep(Duration::from_millis(500));
                let before = srv.sample();
                let mut c = Clients::new(srv.addr).map_err(|e| e.to_string())?;
                let tag = format!("{}{run}", if hold.is_zero() { "r" } else { "h" });
                let rqs: Vec<Vec<u8>> =
                    (0..n).map(|i| get(srv.addr, &kind.path(&tag, i))).collect();
                let t_ramp = Instant::now();
                let open = c
                    .open(rqs, 256, Duration::from_secs(180), &mut no_events)
                    .map_err(|e| e.to_string())?;
                let ramp = t_ramp.elapsed();
                if open < n {
                    self.results.notes.push(format!(
                        "{sc} run {run} {phase}: only {open} of {n} streams opened in {:.1} s",
                        ramp.as_secs_f64()
                    ));
                }
                c.run_until(hold, &mut no_events, |_| false);
                let s0 = srv.sample();
                let t0 = Instant::now();
                c.fin_all();
                let mut first_second = None;
                let mut gone = None;
                // After the ramp tiny_http's surplus pool threads linger 5 s whatever syncast
                // does, so the process count is taken only after the hold.
                let mut back = None;
                while t0.elapsed() < Duration::from_secs(30) {
                    let _ = c.poll(Duration::from_millis(10), &mut no_events);
                    if first_second.is_none() && t0.elapsed() >= Duration::from_secs(1) {
                        let s1 = srv.sample();
                        first_second = Some((s1.cpu - s0.cpu) / t0.elapsed().as_secs_f64() * 100.0);
                    }
                    // The dispatcher and the refresher are all that is left.
                    if gone.is_none()
                        && srv
                            .metric("syncast_threads_spawned_live")
                            .unwrap_or(f64::MAX)
                            <= 2.0
                    {
                        gone = Some(t0.elapsed());
                    }
                    if back.is_none() && !hold.is_zero() && srv.sample().threads <= before.threads {
                        back = Some(t0.elapsed());
                    }
                    if gone.is_some()
                        && first_second.is_some()
                        && (hold.is_zero() || back.is_some())
                    {
                        break;
                    }
                }
                let r = &mut self.results;
                r.add(
                    &sc,
                    &format!("{phase}: streams open"),
                    "",
                    &n.to_string(),
                    open as f64,
                );
                r.add(
                    &sc,
                    &format!("{phase}: ramp time"),
                    "s",
                    "",
                    ramp.as_secs_f64(),
                );
                r.add(
                    &sc,
                    &format!("{phase}: stream threads all ended after"),
                    "s",
                    "<= 2",
                    gone.map_or(f64::NAN, |d| d.as_secs_f64()),
                );
                r.add(
                    &sc,
                    &format!("{phase}: server CPU in the first second"),
                    "% core",
                    "",
                    first_second.unwrap_or(f64::NAN),
                );
                if !hold.is_zero() {
                    r.add(
                        &sc,
                        &format!("{phase}: process threads back to before after"),
                        "s",
                        "",
                        back.map_or(f64::NAN, |d| d.as_secs_f64()),
                    );
                }
                drop(c);
                srv.stop();
            }
        }
        Ok(())
    }

    fn refresh(&mut self) -> Result<(), String> {
        let sc = "refresher: 10,000 ids connected, 100,000 rows";
        let n = 10_000;
        for _ in 0..self.runs {
            let (dir, db) = temp_db();
            {
                let conn = rusqlite::Connection::open(&db).map_err(|e| e.to_string())?;
                conn.execute_batch(
                    "PRAGMA journal_mode=WAL;
                     CREATE TABLE IF NOT EXISTS alarms (
                        id TEXT PRIMARY KEY NOT NULL,
                        alarm INTEGER NOT NULL CHECK (alarm IN (0, 1)),
                        updated_at INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
                     BEGIN;",
                )
                .map_err(|e| e.to_string())?;
                let mut st = conn
                    .prepare("INSERT INTO alarms (id, alarm) VALUES (?1, ?2)")
                    .map_err(|e| e.to_string())?;
                for i in 0..100_000u32 {
                    st.execute(rusqlite::params![format!("r{i}"), (i % 7 == 0) as i64])
                        .map_err(|e| e.to_string())?;
                }
                drop(st);
                conn.execute_batch("COMMIT;").map_err(|e| e.to_string())?;
            }
            let srv = ServerProc::start(&self.bin, dir, db, &["--refresh", "100ms"])?;
            let mut c = Clients::new(srv.addr).map_err(|e| e.to_string())?;
            // Every 10th connected id has no row, as in real life.
            let rqs: Vec<Vec<u8>> = (0..n)
                .map(|i| {
                    let id = if i % 10 == 9 {
                        format!("none{i}")
                    } else {
                        format!("r{}", i * 10)
                    };
                    get(srv.addr, &format!("/sse/call/{id}?mode=change"))
                })
                .collect();
            let open = c
                .open(rqs, 256, Duration::from_secs(120), &mut no_events)
                .map_err(|e| e.to_string())?;
            // A writer changes one row every 50 ms, so every refresh sees a changed store.
            let addr = srv.addr;
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stop2 = stop.clone();
            let writer = std::thread::spawn(move || {
                let mut k = 0u32;
                while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = if k.is_multiple_of(2) { "true" } else { "false" };
                    let _ = http(
                        addr,
                        "PUT",
                        &format!("/alarms/r{}", (k % n as u32) * 10),
                        Some(body),
                        None,
                    );
                    k += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
            let r0 = srv.metric("syncast_refresh_total").unwrap_or(0.0);
            let e0 = c.events();
            // 70 ticks: the 64-refresh window then holds only refreshes of all 10,000 ids.
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
            // Microseconds: the hold is far below a millisecond.
            r.add(sc, "write lock p99", "µs", "<= 1000", q(l, "0.99") * 1e3);
            r.add(sc, "write lock max", "µs", "<= 1000", q(l, "1") * 1e3);
            r.add(
                sc,
                "change events received",
                "",
                "",
                (c.events() - e0) as f64,
            );
            drop(c);
            srv.stop();
        }
        Ok(())
    }

    fn chat(&mut self) -> Result<(), String> {
        let sc = "chat fan-out: 1,000 members";
        let members = 1000;
        let posters = 20;
        for _run in 0..self.runs {
            let srv = self.server(&[])?;
            let join = |name: String| -> Result<String, String> {
                let (st, body) = http(srv.addr, "POST", "/chat/join", Some(&name), None)
                    .map_err(|e| e.to_string())?;
                if st != 201 {
                    return Err(format!("POST /chat/join answered {st}: {body}"));
                }
                let v: serde_json::Value =
                    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
                v["token"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("no token in {body}"))
            };
            let mut tokens = Vec::new();
            for i in 0..members {
                tokens.push(join(format!("m{i}"))?);
            }
            let mut poster_tokens = Vec::new();
            for i in 0..posters {
                poster_tokens.push(join(format!("p{i}"))?);
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
                // The SSE `id:` of a message is its id (the JSON's "id" too); reading the field
                // instead of parsing the JSON keeps the bench's own CPU per delivery small.
                if e.name == "message" {
                    if let Some(id) = e.id {
                        rec.lock().unwrap().push((id, e.conn, e.at));
                    }
                }
            };
            let open = c
                .open(rqs, 256, Duration::from_secs(60), &mut on_event)
                .map_err(|e| e.to_string())?;
            receipts.lock().unwrap().clear();
            let sent: Arc<Mutex<HashMap<u64, Sent>>> = Arc::default();
            let s0 = srv.sample();
            let addr = srv.addr;
            let sent2 = sent.clone();
            let ptoks = poster_tokens.clone();
            let (done_tx, done_rx) =
                crossbeam_channel::bounded::<Result<(Instant, Vec<Instant>), String>>(1);
            let poster = std::thread::spawn(move || {
                // `due`: when the POST was meant to go out (the paced phase), else now. Latency
                // counts from `due`, so a POST that itself went out late is not flattered.
                let post_due = |k: usize, due: Option<Instant>| -> Result<(), String> {
                    let sent_at = Instant::now();
                    let t = due.unwrap_or(sent_at);
                    let (st, body) = http(
                        addr,
                        "POST",
                        "/chat/messages",
                        Some(&format!("bench message {k}")),
                        Some(&ptoks[k % ptoks.len()]),
                    )
                    .map_err(|e| e.to_string())?;
                    if st != 202 {
                        return Err(format!("POST /chat/messages answered {st}: {body}"));
                    }
                    let v: serde_json::Value =
                        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
                    let id = v["id"].as_u64().ok_or(format!("no id in {body}"))?;
                    let answered = Instant::now();
                    sent2.lock().unwrap().insert(
                        id,
                        Sent {
                            due: t,
                            sent: sent_at,
                            answered,
                        },
                    );
                    Ok(())
                };
                let post = |k: usize| post_due(k, None);
                let run = || -> Result<(Instant, Vec<Instant>), String> {
                    for k in 0..200 {
                        post(k)?;
                    }
                    // Let the sequential phase drain before the bursts.
                    std::thread::sleep(Duration::from_millis(500));
                    let burst_start = Instant::now();
                    for b in 0..10 {
                        std::thread::scope(|s| {
                            let hs: Vec<_> = (0..20)
                                .map(|j| s.spawn(move || post(200 + b * 20 + j)))
                                .collect();
                            hs.into_iter()
                                .map(|h| h.join().unwrap_or(Err("poster panicked".into())))
                                .collect::<Result<Vec<_>, _>>()
                        })?;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    std::thread::sleep(Duration::from_millis(500));
                    // Paced: PACED_RATES messages/s (x 1,000 members: the last is the target's
                    // 150,000 deliveries/s) for PACED_FOR each, every POST at its due time;
                    // three posting threads take turns so one slow POST does not delay the next.
                    let mut paced_starts = Vec::new();
                    let mut k0 = 400;
                    for rate in PACED_RATES {
                        std::thread::sleep(Duration::from_millis(500));
                        let paced_start = Instant::now() + Duration::from_millis(10);
                        paced_starts.push(paced_start);
                        let every = Duration::from_secs(1) / rate;
                        let n = paced_count(rate);
                        std::thread::scope(|s| {
                            let hs: Vec<_> = (0..3)
                                .map(|lane| {
                                    let post_due = &post_due;
                                    s.spawn(move || -> Result<(), String> {
                                        for i in (lane..n).step_by(3) {
                                            let due = paced_start + every * i as u32;
                                            std::thread::sleep(
                                                due.saturating_duration_since(Instant::now()),
                                            );
                                            post_due(k0 + i, Some(due))?;
                                        }
                                        Ok(())
                                    })
                                })
                                .collect();
                            hs.into_iter()
                                .map(|h| h.join().unwrap_or(Err("poster panicked".into())))
                                .collect::<Result<Vec<_>, _>>()
                        })?;
                        k0 += n;
                    }
                    Ok((burst_start, paced_starts))
                };
                let _ = done_tx.send(run());
            });
            let paced_n: usize = PACED_RATES.iter().map(|&r| paced_count(r)).sum();
            let expected = (400 + paced_n) * open;
            let mut burst_start = None;
            let mut posted_at = None::<Instant>;
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                c.run_until(Duration::from_millis(100), &mut on_event, |_| false);
                if burst_start.is_none() {
                    match done_rx.try_recv() {
                        Ok(Ok(t)) => {
                            burst_start = Some(t);
                            posted_at = Some(Instant::now());
                        }
                        Ok(Err(e)) => return Err(e),
                        Err(_) => {}
                    }
                }
                if burst_start.is_some() && receipts.lock().unwrap().len() >= expected {
                    break;
                }
                // Stragglers get 10 s after the last post; then what is missing counts as lost.
                if posted_at.is_some_and(|p| p.elapsed() > Duration::from_secs(10)) {
                    break;
                }
            }
            let _ = poster.join();
            let s1 = srv.sample();
            let sent = sent.lock().unwrap().clone();
            let receipts = receipts.lock().unwrap().clone();
            let mut seen: std::collections::HashSet<(u64, usize)> = Default::default();
            let mut lat: Vec<f64> = Vec::new();
            let (mut lat_seq, mut lat_burst) = (Vec::new(), Vec::new());
            let mut last_burst_receipt = None::<Instant>;
            let (burst_start, paced_starts) =
                burst_start.unwrap_or_else(|| (Instant::now(), Vec::new()));
            // Per paced rate: latencies and the last receipt.
            let mut paced: Vec<(Vec<f64>, Option<Instant>)> =
                vec![(Vec::new(), None); paced_starts.len()];
            for &(id, conn, at) in &receipts {
                if !seen.insert((id, conn)) {
                    continue;
                }
                if let Some(Sent { due: t, .. }) = sent.get(&id) {
                    let ms = at.saturating_duration_since(*t).as_secs_f64() * 1e3;
                    if let Some(i) = paced_starts.iter().rposition(|p| *t >= *p) {
                        let (lat, last) = &mut paced[i];
                        lat.push(ms);
                        *last = Some(last.map_or(at, |l| l.max(at)));
                        continue;
                    }
                    // The issue's scenario: sequential, then bursts.
                    lat.push(ms);
                    if *t >= burst_start {
                        lat_burst.push(ms);
                        last_burst_receipt = Some(last_burst_receipt.map_or(at, |l| l.max(at)));
                    } else {
                        lat_seq.push(ms);
                    }
                }
            }
            for v in [&mut lat, &mut lat_seq, &mut lat_burst]
                .into_iter()
                .chain(paced.iter_mut().map(|p| &mut p.0))
            {
                v.sort_by(|a, b| a.total_cmp(b));
            }
            // The POSTs themselves: round trip, and how fast the sequential ones went out.
            let mut rtt: Vec<f64> = sent
                .values()
                .map(|p| p.answered.duration_since(p.sent).as_secs_f64() * 1e3)
                .collect();
            rtt.sort_by(|a, b| a.total_cmp(b));
            let seq: Vec<&Sent> = sent.values().filter(|p| p.due < burst_start).collect();
            let seq_rate = match (
                seq.iter().map(|p| p.due).min(),
                seq.iter().map(|p| p.answered).max(),
            ) {
                (Some(a), Some(b)) => seq.len() as f64 / b.duration_since(a).as_secs_f64(),
                _ => f64::NAN,
            };
            let delivered = seen.len();
            let burst_secs = last_burst_receipt
                .map_or(f64::NAN, |l| l.duration_since(burst_start).as_secs_f64());

            let r = &mut self.results;
            r.add(sc, "members streaming", "", "1000", open as f64);
            r.add(sc, "latency p50", "ms", "", quantile(&lat, 0.5));
            r.add(sc, "latency p99", "ms", "<= 10", quantile(&lat, 0.99));
            r.add(sc, "latency max", "ms", "", quantile(&lat, 1.0));
            r.add(
                sc,
                "sequential: latency p50",
                "ms",
                "",
                quantile(&lat_seq, 0.5),
            );
            r.add(
                sc,
                "sequential: latency p99",
                "ms",
                "",
                quantile(&lat_seq, 0.99),
            );
            r.add(sc, "sequential: POSTs/s", "1/s", "", seq_rate);
            r.add(
                sc,
                "bursts: latency p50",
                "ms",
                "",
                quantile(&lat_burst, 0.5),
            );
            r.add(
                sc,
                "bursts: latency p99",
                "ms",
                "",
                quantile(&lat_burst, 0.99),
            );
            for ((rate, start), (lat_paced, last)) in
                PACED_RATES.iter().zip(&paced_starts).zip(&paced)
            {
                let name = format!("paced {rate}/s");
                // The target's rate carries the target; the slower one shows the unloaded case.
                // (Its deliveries/s is the offered rate stretched by the last delivery's latency;
                // the sustained-rate target is read off the bursts.)
                let t_lat = if *rate == 150 { "<= 10" } else { "" };
                let secs = last.map_or(f64::NAN, |l| l.duration_since(*start).as_secs_f64());
                r.add(
                    sc,
                    &format!("{name}: latency p50"),
                    "ms",
                    "",
                    quantile(lat_paced, 0.5),
                );
                r.add(
                    sc,
                    &format!("{name}: latency p99"),
                    "ms",
                    t_lat,
                    quantile(lat_paced, 0.99),
                );
                r.add(
                    sc,
                    &format!("{name}: latency max"),
                    "ms",
                    "",
                    quantile(lat_paced, 1.0),
                );
                r.add(
                    sc,
                    &format!("{name}: deliveries/s"),
                    "1/s",
                    "",
                    lat_paced.len() as f64 / secs,
                );
            }
            r.add(sc, "POST round trip p50", "ms", "", quantile(&rtt, 0.5));
            r.add(sc, "POST round trip p99", "ms", "", quantile(&rtt, 0.99));
            r.add(
                sc,
                "lost",
                "",
                "0",
                (sent.len() * open).saturating_sub(delivered) as f64,
            );
            r.add(
                sc,
                "deliveries/s (bursts)",
                "1/s",
                ">= 150000",
                lat_burst.len() as f64 / burst_secs,
            );
            r.add(
                sc,
                "server CPU per 1,000 deliveries",
                "ms",
                "",
                (s1.cpu - s0.cpu) / delivered.max(1) as f64 * 1e6,
            );
            drop(c);
            srv.stop();
        }
        Ok(())
    }
}

impl Bench {
    /// Chat fan-out beside the naive thread-per-member server, same client, same run (issue 13,
    /// item 5; see fanout.rs). The naive server is this binary's `--naive-server chat` (issue 13
    /// part A); a build without it measures syncast alone and says so.
    fn fanout(&mut self) -> Result<(), String> {
        let sc = "chat fan-out beside naive threads: 1,000 members";
        for run in 0..self.runs {
            let srv = self.server(&[])?;
            let ours = fanout::measure(&srv, &format!("s{run}"));
            srv.stop();
            let ours = ours?;
            let naive = match ServerProc::start_naive("chat") {
                Ok(n) => {
                    let got = fanout::measure(&n, &format!("n{run}"));
                    n.stop();
                    Some(got?)
                }
                Err(e) => {
                    self.results
                        .notes
                        .push(format!("{sc}: no naive server in this build ({e})"));
                    None
                }
            };
            let r = &mut self.results;
            let paced = format!("paced {}/s", fanout::PACED_RATE);
            let burst = format!("burst of {}", fanout::BURST);
            r.add(sc, "members streaming", "", "1000", ours.members as f64);
            r.add(
                sc,
                &format!("syncast: {paced}: CPU per delivery"),
                "µs",
                "",
                ours.paced_cpu_us,
            );
            r.add(
                sc,
                &format!("syncast: {paced}: latency p50"),
                "ms",
                "",
                ours.paced_p50,
            );
            r.add(
                sc,
                &format!("syncast: {paced}: latency p99"),
                "ms",
                "",
                ours.paced_p99,
            );
            r.add(
                sc,
                &format!("syncast: {burst}: CPU per delivery"),
                "µs",
                "",
                ours.burst_cpu_us,
            );
            r.add(
                sc,
                &format!("syncast: {burst}: latency p50"),
                "ms",
                "",
                ours.burst_p50,
            );
            r.add(
                sc,
                &format!("syncast: {burst}: latency p99"),
                "ms",
                "<= 25",
                ours.burst_p99,
            );
            r.add(
                sc,
                &format!("syncast: {burst}: written to members' sockets within (server's histogram, p99 bucket)"),
                "ms",
                "",
                ours.burst_written_p99,
            );
            r.add(
                sc,
                &format!("syncast: {burst}: load client's own CPU"),
                "% core",
                "",
                ours.burst_client_cpu_pct,
            );
            r.add(sc, "syncast: lost", "", "0", ours.lost as f64);
            if let Some(n) = naive {
                r.add(
                    sc,
                    &format!("naive: {paced}: CPU per delivery"),
                    "µs",
                    "",
                    n.paced_cpu_us,
                );
                r.add(
                    sc,
                    &format!("naive: {paced}: latency p99"),
                    "ms",
                    "",
                    n.paced_p99,
                );
                r.add(
                    sc,
                    &format!("naive: {burst}: CPU per delivery"),
                    "µs",
                    "",
                    n.burst_cpu_us,
                );
                r.add(
                    sc,
                    &format!("naive: {burst}: latency p99"),
                    "ms",
                    "",
                    n.burst_p99,
                );
                r.add(sc, "naive: lost", "", "", n.lost as f64);
                r.add(
                    sc,
                    &format!("{paced}: CPU per delivery, syncast / naive"),
                    "",
                    "<= 1.0",
                    ours.paced_cpu_us / n.paced_cpu_us,
                );
            }
        }
        Ok(())
    }

    /// The machine's floor for thread-per-member fan-out (see floor.rs).
    fn floor(&mut self) -> Result<(), String> {
        let sc = "floor: 1,000 threads wake and write (no server)";
        for _run in 0..self.runs {
            for (v, name) in [
                (floor::Variant::Select, "select! over 5 channels"),
                (floor::Variant::Loop, "one writing loop"),
            ] {
                let f = floor::measure(1000, 50, Duration::from_millis(15), v)
                    .map_err(|e| e.to_string())?;
                let r = &mut self.results;
                r.add(
                    sc,
                    &format!("{name}: wave p50"),
                    "ms",
                    "",
                    quantile(&f.wave_ms, 0.5),
                );
                r.add(
                    sc,
                    &format!("{name}: wave p99"),
                    "ms",
                    "",
                    quantile(&f.wave_ms, 0.99),
                );
                r.add(
                    sc,
                    &format!("{name}: writer CPU per delivery"),
                    "µs",
                    "",
                    f.writer_us,
                );
                r.add(
                    sc,
                    &format!("{name}: reader CPU per delivery"),
                    "µs",
                    "",
                    f.reader_us,
                );
                // Share of both cores that 150,000 deliveries/s would take at this cost.
                r.add(
                    sc,
                    &format!("{name}: 150k deliveries/s would use"),
                    "% of 2 cores",
                    "",
                    150_000.0 * (f.writer_us + f.reader_us) / 1e6 / 2.0 * 100.0,
                );
            }
        }
        Ok(())
    }
}

/// One chat POST of the bench: when it was due (paced phases) or sent (others), when it was
/// sent, and when its 202 came back.
#[derive(Clone, Copy)]
struct Sent {
    due: Instant,
    sent: Instant,
    answered: Instant,
}

/// Members joining a second in the idle chat scenario (issue 13: 10,000 at 1,000/s).
const CHAT_RAMP_RATE: u32 = 1000;

/// How long the tick scenario counts events and CPU (60,000 events at 5,000 streams).
const TICK_WINDOW: Duration = Duration::from_secs(6);

/// What one tick-mode load measured.
struct TickLoad {
    open: usize,
    events_per_s: f64,
    cpu_pct: f64,
    rss_mib: f64,
}

/// How long the mass-close scenario holds the streams before its second close.
const CLOSE_HOLD: Duration = Duration::from_secs(10);

/// The stream kinds of the mass-close scenario.
#[derive(Clone, Copy)]
enum Kind {
    /// `GET /sse/call/{id}?mode=change`, distinct ids.
    Change,
    /// `GET /sse/call/{id}` (tick mode), 1,000 ids.
    Tick,
    /// `GET /chat/stream?name=NAME`: each a new member.
    Chat,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Change => "alarm change streams",
            Kind::Tick => "alarm tick streams",
            Kind::Chat => "chat members (?name=)",
        }
    }

    /// The path of client `i` of the phase and run tagged `tag`.
    fn path(self, tag: &str, i: usize) -> String {
        match self {
            Kind::Change => format!("/sse/call/c{tag}x{i}?mode=change"),
            // 1,000 ids, as the tick scenario.
            Kind::Tick => format!("/sse/call/t{tag}x{}", i % 1000),
            Kind::Chat => format!("/chat/stream?name=m{tag}x{i}"),
        }
    }
}

/// The chat scenario's paced phases: messages per second (x 1,000 members; 150 is the target's
/// 150,000 deliveries/s, 50 a third of it) and how long each lasts.
const PACED_RATES: [u32; 2] = [50, 150];
const PACED_FOR: Duration = Duration::from_secs(2);

/// Messages in one paced phase.
fn paced_count(rate: u32) -> usize {
    (PACED_FOR.as_secs_f64() * rate as f64) as usize
}

/// The server's keepalive interval: its default, or `--heartbeat` from
/// `SYNCAST_BENCH_SERVER_ARGS` (see proc.rs).
fn heartbeat() -> Duration {
    let args = std::env::var("SYNCAST_BENCH_SERVER_ARGS").unwrap_or_default();
    let mut words = args.split_whitespace();
    let mut beat = syncast::Config::default().heartbeat;
    while let Some(w) = words.next() {
        if w == "--heartbeat" {
            if let Some(d) = words
                .next()
                .and_then(|v| syncast::kit::parse_duration(v).ok())
            {
                beat = d;
            }
        }
    }
    beat
}

/// One scenario of the bench.
type Step = Box<dyn Fn(&mut Bench) -> Result<(), String>>;

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    format!(
        "{cores} cores ({model}), {:.1} GiB RAM, Linux {}",
        mem as f64 / 1024.0 / 1024.0,
        kernel.trim()
    )
}

fn main() -> std::process::ExitCode {
    let mut runs = 3;
    let mut auth = false;
    let mut only: Option<Vec<String>> = None;
    let mut sizes: Vec<usize> = vec![1000, 5000, 10_000];
    let mut chat_sizes: Vec<usize> = vec![5000, 10_000];
    let mut close_size = 10_000;
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--naive-server") {
        let mode = argv.get(1).and_then(|m| naive::Mode::parse(m));
        let listen = match argv.get(2).map(String::as_str) {
            None => Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            Some("--listen") => argv.get(3).and_then(|a| a.parse().ok()),
            Some(_) => None,
        };
        let (Some(mode), Some(listen)) = (mode, listen) else {
            eprintln!("usage: syncast-bench --naive-server tick|chat [--listen ADDR]");
            return std::process::ExitCode::from(2);
        };
        return match naive::run(mode, listen) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("naive server: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let mut out = dir.join("../bench/results.json");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(3),
            "--only" => {
                only = args
                    .next()
                    .map(|v| v.split(',').map(String::from).collect())
            }
            "--out" => out = args.next().map(PathBuf::from).unwrap_or(out),
            "--chat-sizes" => {
                chat_sizes = args
                    .next()
                    .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
                    .unwrap_or(chat_sizes)
            }
            "--close-size" => {
                close_size = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(close_size)
            }
            "--auth" => auth = true,
            "--idle-sizes" => {
                sizes = args
                    .next()
                    .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
                    .unwrap_or(sizes)
            }
            _ => {
                eprintln!("usage: syncast-bench [--runs N] [--only footprint,idle,chat-idle,close,tick,refresh,redis-refresh,redis-fanout,chat,fanout,floor] [--idle-sizes 1000,5000,10000] [--chat-sizes 5000,10000] [--close-size 10000] [--out PATH] [--auth]\n       syncast-bench --naive-server tick|chat [--listen ADDR]");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let want = |s: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == s));
    let auth = match auth.then(bench_token).transpose() {
        Ok(auth) => auth,
        Err(e) => {
            eprintln!("syncast-bench: --auth: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut b = Bench {
        bin: dir.join("syncast"),
        runs,
        results: Results::default(),
        auth,
    };
    let machine = machine();
    let started = Instant::now();
    println!(
        "syncast-bench: {machine}; {runs} runs per figure; server {}",
        b.bin.display()
    );
    let mut steps: Vec<(&str, Step)> = Vec::new();
    if want("footprint") {
        steps.push(("footprint", Box::new(|b| b.footprint())));
    }
    if want("idle") {
        for n in sizes {
            steps.push(("idle", Box::new(move |b| b.idle(n))));
        }
    }
    if want("chat-idle") {
        for n in chat_sizes {
            steps.push(("chat-idle", Box::new(move |b| b.chat_idle(n))));
        }
    }
    if want("close") {
        for kind in [Kind::Change, Kind::Tick, Kind::Chat] {
            steps.push(("close", Box::new(move |b| b.mass_close(kind, close_size))));
        }
    }
    if want("tick") {
        steps.push(("tick", Box::new(|b| b.tick(5000))));
    }
    if want("refresh") {
        steps.push(("refresh", Box::new(|b| b.refresh())));
    }
    if want("redis-refresh") {
        steps.push(("redis-refresh", Box::new(|b| b.redis_refresh())));
    }
    if want("redis-fanout") {
        steps.push(("redis-fanout", Box::new(|b| b.redis_fanout())));
    }
    if want("chat") {
        steps.push(("chat", Box::new(|b| b.chat())));
    }
    if want("fanout") {
        steps.push(("fanout", Box::new(|b| b.fanout())));
    }
    if want("floor") {
        steps.push(("floor", Box::new(|b| b.floor())));
    }
    for (name, step) in steps {
        let t = Instant::now();
        eprintln!("[{:>5.0} s] {name} ...", started.elapsed().as_secs_f64());
        if let Err(e) = step(&mut b) {
            eprintln!("{name}: {e}");
            b.results.notes.push(format!("{name}: not measured: {e}"));
        }
        eprintln!(
            "[{:>5.0} s] {name} done in {:.0} s",
            started.elapsed().as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
    }
    // The table.
    let mut by_sc: BTreeMap<usize, (&str, Vec<&Figure>)> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for f in &b.results.figures {
        let i = match order.iter().position(|s| *s == f.scenario) {
            Some(i) => i,
            None => {
                order.push(&f.scenario);
                order.len() - 1
            }
        };
        by_sc
            .entry(i)
            .or_insert((&f.scenario, Vec::new()))
            .1
            .push(f);
    }
    let mut table = String::new();
    table.push_str("| scenario | figure | median | min | max | unit | target |\n");
    table.push_str("| --- | --- | ---: | ---: | ---: | --- | --- |\n");
    for (_, (sc, figs)) in by_sc {
        for f in figs {
            let ok: Vec<f64> = f.values.iter().copied().filter(|v| !v.is_nan()).collect();
            let min = ok.iter().copied().reduce(f64::min).unwrap_or(f64::NAN);
            let max = ok.iter().copied().reduce(f64::max).unwrap_or(f64::NAN);
            table.push_str(&format!(
                "| {sc} | {} | {} | {} | {} | {} | {} |\n",
                f.name,
                fmt(median(&f.values)),
                fmt(min),
                fmt(max),
                f.unit,
                f.target
            ));
        }
    }
    println!("\n{table}");
    for n in &b.results.notes {
        println!("note: {n}");
    }
    println!("total bench time: {:.0} s", started.elapsed().as_secs_f64());
    let json = json!({
        "machine": machine,
        "runs": runs,
        "seconds": started.elapsed().as_secs_f64(),
        "figures": b.results.figures.iter().map(|f| json!({
            "scenario": f.scenario, "figure": f.name, "unit": f.unit, "target": f.target,
            "median": median(&f.values), "values": f.values,
        })).collect::<Vec<_>>(),
        "notes": b.results.notes,
    });
    if let Some(p) = out.parent() {
        let _ = std::fs::create_dir_all(p);
    }
    match std::fs::write(
        &out,
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    ) {
        Ok(()) => println!("wrote {}", out.display()),
        Err(e) => eprintln!("cannot write {}: {e}", out.display()),
    }
    std::process::ExitCode::SUCCESS
}
