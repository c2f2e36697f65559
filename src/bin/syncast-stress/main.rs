//! `syncast-stress`: drives a syncast server with many simulated clients (a thread each, no async
//! runtime), checks that nothing was lost, duplicated or reordered, and that the server's threads
//! fall back to their baseline afterwards. Exit status 0 only on PASS.

mod alarm;
mod barriers;
mod chat;
mod check;
mod probe;
mod report;
mod shared;
mod tcp;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver};

use check::{AlarmMode, Leak, Outcome, Snapshot};
use report::{AlarmSummary, ChatSummary, Latency, Summary};
use shared::Ctx;
use syncast::kit::http::Target;

const HELP: &str = "\
syncast-stress: many simulated clients against a syncast server; PASS only if nothing is lost,
duplicated or reordered and no thread leaks

USAGE: syncast-stress [OPTIONS]

OPTIONS:
  --url URL            the server                          [default: http://127.0.0.1:8080]
                       given again (or as a comma list): nodes on one Redis; member i
                       joins and posts on node i and streams on node i+1 (mod n), and the
                       threads must fall back to baseline on every node
  --spread-alarms      with several --url: alarm stream i on node i, its PUTs to node i+1
                       (needs a shared alarm store: the nodes' --alarm-store redis);
                       without it the alarm scenario stays on the first --url
  --scenario NAME      chat | alarm | mixed (both at once) [default: chat]
  --clients N          chat members / alarm streams        [default: 500]
  --transport T        the chat members': sse | tcp (the server's --chat-tcp) | mixed
                       (half over each, in one room; also `mixed-transport`) [default: sse]
  --chat-tcp ADDR      the server's --chat-tcp address, for --transport tcp [default: 127.0.0.1:7070]
  --alarm-clients N    alarm streams in mixed              [default: --clients]
  --messages M         messages per chat member            [default: 11]
  --interval A..B      pause before each message           [default: 1s..3s]
  --duration D         shortest alarm run                  [default: 10s]
  --mode MODE          alarm stream mode: tick | change    [default: tick]
  --ramp R             new connections per second          [default: 200]
  --seed S             seed of the random pauses           [default: from the clock]
  --settle D           longest wait for threads to fall back to baseline [default: 15s]
  --drain D            longest wait of a member for others' messages before leaving [default: 15s]
  --put-rate R         most alarm PUTs per second          [default: 100]
  --idle D             silence after which a stream is dead [default: 45s]
  --refresh D          the server's --refresh (alarm deadline: two of them) [default: 500ms]
  --tick D             the server's --tick (tick mode: refresh + max(refresh, tick)) [default: 500ms]
  --slack D            added to the alarm deadline for scheduling on a loaded machine [default: 250ms]
  --jwt-secret-file PATH  the server's HS256 secret: mint a short-lived token per request
                       and stream (name claims for members, sub for alarm streams,
                       publish rights for the writer, admin for the probes)
  --json               print the summary as one JSON object on stdout
  -q, --quiet          no status line
  -h, --help           print this help
D: 500ms, 2s, 1m or a number of seconds. Exit status: 0 PASS, 1 FAIL, 2 usage or unreachable.
";

/// Most client threads one run may start.
const MAX_THREADS: usize = 12_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Chat,
    Alarm,
    Mixed,
}

impl Scenario {
    fn as_str(self) -> &'static str {
        match self {
            Scenario::Chat => "chat",
            Scenario::Alarm => "alarm",
            Scenario::Mixed => "mixed",
        }
    }
}

#[derive(Debug, Clone)]
struct Opts {
    /// Every node, in the order given (one without `--url`).
    urls: Vec<String>,
    spread_alarms: bool,
    scenario: Scenario,
    /// Chat over TCP (`--transport tcp`) at this address; `None`: over SSE.
    chat_tcp: Option<std::net::SocketAddr>,
    /// With `chat_tcp`: half the members over TCP, half over SSE (`--transport mixed`).
    mixed_room: bool,
    chat_tcp_addr: std::net::SocketAddr,
    clients: usize,
    alarm_clients: Option<usize>,
    messages: u32,
    interval: (Duration, Duration),
    duration: Duration,
    mode: AlarmMode,
    ramp: f64,
    seed: Option<u64>,
    settle: Duration,
    drain: Duration,
    put_rate: f64,
    idle: Duration,
    refresh: Duration,
    tick: Duration,
    slack: Duration,
    jwt_secret_file: Option<std::path::PathBuf>,
    json: bool,
    quiet: bool,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            urls: vec!["http://127.0.0.1:8080".into()],
            spread_alarms: false,
            scenario: Scenario::Chat,
            chat_tcp: None,
            mixed_room: false,
            chat_tcp_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 7070)),
            clients: 500,
            alarm_clients: None,
            messages: 11,
            interval: (Duration::from_secs(1), Duration::from_secs(3)),
            duration: Duration::from_secs(10),
            mode: AlarmMode::Tick,
            ramp: 200.0,
            seed: None,
            settle: Duration::from_secs(15),
            drain: Duration::from_secs(15),
            put_rate: 100.0,
            idle: Duration::from_secs(45),
            refresh: Duration::from_millis(500),
            tick: Duration::from_millis(500),
            slack: Duration::from_millis(250),
            jwt_secret_file: None,
            json: false,
            quiet: false,
        }
    }
}

/// Parses `500ms`, `2s`, `1.5s`, `1m` or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    syncast::kit::parse_duration(text).map_err(|e| e.to_string())
}

/// Parses `A..B` (two durations, A <= B).
fn parse_interval(text: &str) -> Result<(Duration, Duration), String> {
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| format!("invalid interval {text:?} (use e.g. 1s..3s)"))?;
    let (a, b) = (parse_duration(a)?, parse_duration(b)?);
    if a > b {
        return Err(format!("invalid interval {text:?}: start after end"));
    }
    Ok((a, b))
}

fn parse_args(args: Vec<std::ffi::OsString>) -> Result<Option<Opts>, String> {
    use lexopt::prelude::*;
    let mut o = Opts::default();
    let mut p = lexopt::Parser::from_args(args);
    let mut tcp = false;
    let mut urls: Vec<String> = Vec::new();
    fn text(p: &mut lexopt::Parser, flag: &str) -> Result<String, String> {
        p.value()
            .map_err(|e| e.to_string())?
            .into_string()
            .map_err(|_| format!("{flag}: not UTF-8"))
    }
    fn num<T: std::str::FromStr>(p: &mut lexopt::Parser, flag: &str) -> Result<T, String> {
        let v = text(p, flag)?;
        v.parse()
            .map_err(|_| format!("{flag}: invalid number {v:?}"))
    }
    fn dur(p: &mut lexopt::Parser, flag: &str) -> Result<Duration, String> {
        parse_duration(&text(p, flag)?).map_err(|e| format!("{flag}: {e}"))
    }
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Long("url") => {
                for u in text(&mut p, "--url")?.split(',') {
                    let u = u.trim();
                    if u.is_empty() {
                        return Err("--url: empty URL in the list".into());
                    }
                    urls.push(u.to_string());
                }
            }
            Long("spread-alarms") => o.spread_alarms = true,
            Long("scenario") => {
                o.scenario = match text(&mut p, "--scenario")?.as_str() {
                    "chat" => Scenario::Chat,
                    "alarm" => Scenario::Alarm,
                    "mixed" => Scenario::Mixed,
                    v => return Err(format!("--scenario: unknown {v:?} (chat, alarm or mixed)")),
                }
            }
            Long("clients") => o.clients = num(&mut p, "--clients")?,
            Long("transport") => {
                (tcp, o.mixed_room) = match text(&mut p, "--transport")?.as_str() {
                    "sse" => (false, false),
                    "tcp" => (true, false),
                    "mixed" | "mixed-transport" => (true, true),
                    v => return Err(format!("--transport: unknown {v:?} (sse, tcp or mixed)")),
                }
            }
            Long("chat-tcp") => {
                let v = text(&mut p, "--chat-tcp")?;
                o.chat_tcp_addr = v
                    .parse()
                    .map_err(|_| format!("--chat-tcp: not IP:PORT: {v:?}"))?;
            }
            Long("alarm-clients") => o.alarm_clients = Some(num(&mut p, "--alarm-clients")?),
            Long("messages") => o.messages = num(&mut p, "--messages")?,
            Long("interval") => {
                o.interval = parse_interval(&text(&mut p, "--interval")?)
                    .map_err(|e| format!("--interval: {e}"))?
            }
            Long("duration") => o.duration = dur(&mut p, "--duration")?,
            Long("mode") => {
                o.mode = match text(&mut p, "--mode")?.as_str() {
                    "tick" => AlarmMode::Tick,
                    "change" => AlarmMode::Change,
                    v => return Err(format!("--mode: unknown {v:?} (tick or change)")),
                }
            }
            Long("ramp") => o.ramp = num(&mut p, "--ramp")?,
            Long("seed") => o.seed = Some(num(&mut p, "--seed")?),
            Long("settle") => o.settle = dur(&mut p, "--settle")?,
            Long("drain") => o.drain = dur(&mut p, "--drain")?,
            Long("put-rate") => o.put_rate = num(&mut p, "--put-rate")?,
            Long("idle") => o.idle = dur(&mut p, "--idle")?,
            Long("refresh") => o.refresh = dur(&mut p, "--refresh")?,
            Long("tick") => o.tick = dur(&mut p, "--tick")?,
            Long("slack") => o.slack = dur(&mut p, "--slack")?,
            Long("jwt-secret-file") => {
                o.jwt_secret_file = Some(text(&mut p, "--jwt-secret-file")?.into())
            }
            Long("json") => o.json = true,
            Short('q') | Long("quiet") => o.quiet = true,
            Short('h') | Long("help") => {
                print!("{HELP}");
                return Ok(None);
            }
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    if !urls.is_empty() {
        o.urls = urls;
    }
    if tcp && o.urls.len() > 1 {
        return Err("--transport tcp and mixed run against one node (one --url)".into());
    }
    if tcp {
        if o.scenario == Scenario::Alarm {
            return Err("--transport tcp is for the chat (scenario chat or mixed)".into());
        }
        o.chat_tcp = Some(o.chat_tcp_addr);
    }
    if !(o.ramp > 0.0 && o.ramp.is_finite()) {
        return Err("--ramp must be a positive number".into());
    }
    if !(o.put_rate > 0.0 && o.put_rate.is_finite()) {
        return Err("--put-rate must be a positive number".into());
    }
    if o.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    // Two threads per member, one per alarm stream; the server needs about as many again, and
    // the whole machine shares one pid space (pid_max is often 32768).
    let threads = match o.scenario {
        Scenario::Chat => 2 * o.clients,
        Scenario::Alarm => o.clients,
        Scenario::Mixed => 2 * o.clients + o.alarm_clients.unwrap_or(o.clients),
    };
    if threads > MAX_THREADS {
        return Err(format!(
            "that needs {threads} client threads (2 per chat member, 1 per alarm stream); at most {MAX_THREADS}"
        ));
    }
    if o.refresh.is_zero() || o.idle.is_zero() {
        return Err("--refresh and --idle must be above zero".into());
    }
    Ok(Some(o))
}

/// Reads a snapshot of node `target`, folding it into `peak`.
fn sample(ctx: &Ctx, target: &Target, peak: &mut Option<Snapshot>) -> Option<Snapshot> {
    match probe::snapshot(ctx, target) {
        Ok(s) => {
            *peak = Some(peak.map_or(s, |p| probe::max(p, s)));
            Some(s)
        }
        Err(_) => {
            ctx.error("probe");
            None
        }
    }
}

/// One status line on stderr (server threads per node, `/`-separated).
fn status(ctx: &Ctx, snaps: &[Option<Snapshot>], tty: bool) {
    let p = &ctx.progress;
    let threads = snaps
        .iter()
        .map(|s| s.map_or("?".into(), |s| s.process_threads.to_string()))
        .collect::<Vec<String>>()
        .join("/");
    let line = format!(
        "[{:>4.0}s] connected {} sent {} received {} flips {} errors {} server-threads {}",
        ctx.t0.elapsed().as_secs_f64(),
        p.connected.load(Ordering::Relaxed),
        p.sent.load(Ordering::Relaxed),
        p.received.load(Ordering::Relaxed),
        p.flips.load(Ordering::Relaxed),
        p.errors.load(Ordering::Relaxed),
        threads
    );
    if tty {
        eprint!("\r{line}\x1b[K");
    } else {
        eprintln!("{line}");
    }
}

/// After the last client left: polls until spawned and process threads, streams and members are
/// back at baseline, or `settle` has passed. tiny_http's pool threads above its minimum exit
/// after 5 s without work, but every request (our probes too) wakes the longest-waiting one and
/// restarts its 5 s: probing 8 times a second keeps about 40 idle threads alive. So probe fast
/// (250 ms) only until our own clients are gone, then one request every 2 s.
fn settle(
    ctx: &Ctx,
    target: &Target,
    baseline: Snapshot,
    peak: Snapshot,
    settle: Duration,
) -> Option<Leak> {
    let start = Instant::now();
    let mut leak = Leak {
        baseline,
        peak,
        settle_s: settle.as_secs_f64(),
        ..Leak::default()
    };
    let mut read_once = false;
    let mut clients_back = false;
    loop {
        let snap = if clients_back {
            probe::threads(ctx, target, leak.after)
        } else {
            probe::snapshot(ctx, target)
        };
        if let Ok(s) = snap {
            read_once = true;
            leak.after = s;
            leak.peak = probe::max(leak.peak, s);
            let (spawned, process) = Leak::threads_back(&baseline, &s);
            let t = start.elapsed().as_secs_f64();
            if spawned && leak.spawned_back_after_s.is_none() {
                leak.spawned_back_after_s = Some(t);
            }
            if process && leak.process_back_after_s.is_none() {
                leak.process_back_after_s = Some(t);
            }
            clients_back = spawned
                && s.streaming_clients <= baseline.streaming_clients
                && s.chat_members <= baseline.chat_members;
            if clients_back && process {
                break;
            }
        }
        let gap = if clients_back {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(250)
        };
        let left = settle.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(gap.min(left));
    }
    read_once.then_some(leak)
}

fn run(o: Opts) -> Result<Summary, String> {
    let targets = o
        .urls
        .iter()
        .map(|u| Target::parse(u))
        .collect::<Result<Vec<Target>, String>>()?;
    let seed = o.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    // Names and ids unique to this run, so runs against one server do not mix.
    let tag = format!(
        "st{:06x}",
        (u64::from(std::process::id()) ^ shared::Rng::new(seed, 0).next_u64()) & 0xff_ffff
    );
    let minter = match &o.jwt_secret_file {
        Some(path) => Some(syncast::kit::jwt::Minter::hs256_file(path)?),
        None => None,
    };
    let ctx = Arc::new(Ctx::new(targets, o.ramp, minter)?);
    let mut baselines = Vec::with_capacity(o.urls.len());
    for (t, url) in ctx.nodes.iter().zip(&o.urls) {
        baselines.push(
            probe::snapshot(&ctx, t)
                .map_err(|e| format!("cannot read the server's figures at {url}: {e}"))?,
        );
    }
    let mut peaks: Vec<Option<Snapshot>> = baselines.iter().copied().map(Some).collect();
    let chat_on = o.scenario != Scenario::Alarm;
    let alarm_on = o.scenario != Scenario::Chat;
    let chat_plan = chat::ChatPlan {
        clients: o.clients,
        messages: o.messages,
        interval: o.interval,
        seed,
        tag: tag.clone(),
        drain: o.drain,
        idle: o.idle,
    };
    let deadline = o.refresh
        + match o.mode {
            AlarmMode::Change => o.refresh,
            AlarmMode::Tick => o.refresh.max(o.tick),
        }
        + o.slack;
    let alarm_clients = if o.scenario == Scenario::Mixed {
        o.alarm_clients.unwrap_or(o.clients)
    } else {
        o.clients
    };
    let alarm_plan = alarm::AlarmPlan {
        clients: alarm_clients,
        duration: o.duration,
        mode: o.mode,
        deadline,
        put_rate: o.put_rate,
        tag: tag.clone(),
        idle: o.idle,
        spread: o.spread_alarms,
    };
    // Each runner holds a sender of `done`; when both have returned it disconnects.
    let (done_tx, done_rx) = bounded::<()>(0);
    let (chat_done_tx, chat_done_rx) = bounded::<()>(0);
    let (tcp_addr, mixed_room) = (o.chat_tcp, o.mixed_room);
    let chat_handle = chat_on.then(|| {
        let (ctx, plan, done, chat_done) = (
            ctx.clone(),
            chat_plan.clone(),
            done_tx.clone(),
            chat_done_tx,
        );
        std::thread::Builder::new()
            .name("chat-runner".into())
            .spawn(move || {
                let started = Instant::now();
                let r = match tcp_addr {
                    Some(addr) if mixed_room => tcp::run_mixed(&ctx, &plan, addr),
                    Some(addr) => tcp::run(&ctx, &plan, addr),
                    None => chat::run(&ctx, &plan),
                };
                drop((done, chat_done));
                (r, started.elapsed())
            })
    });
    let alarm_handle = alarm_on.then(|| {
        let (ctx, plan, done) = (ctx.clone(), alarm_plan.clone(), done_tx.clone());
        let chat_done: Option<Receiver<()>> = chat_on.then_some(chat_done_rx);
        std::thread::Builder::new()
            .name("alarm-runner".into())
            .spawn(move || {
                let r = alarm::run(&ctx, &plan, chat_done);
                drop(done);
                r
            })
    });
    drop(done_tx);
    let tty = std::io::stderr().is_terminal();
    // Peak figures twice a second (a short run still gets a few), a status line every second.
    let mut samples = 0u64;
    loop {
        select! {
            recv(done_rx) -> _ => break,
            default(Duration::from_millis(500)) => {
                let snaps: Vec<Option<Snapshot>> = ctx
                    .nodes
                    .iter()
                    .zip(peaks.iter_mut())
                    .map(|(t, peak)| sample(&ctx, t, peak))
                    .collect();
                samples += 1;
                if !o.quiet && samples.is_multiple_of(2) {
                    status(&ctx, &snaps, tty);
                }
            }
        }
    }
    if !o.quiet && tty {
        eprintln!();
    }
    let join_err = |what: &str| format!("the {what} runner could not start or panicked");
    let chat_run = match chat_handle {
        Some(h) => Some(
            h.map_err(|e| format!("{}: {e}", join_err("chat")))?
                .join()
                .map_err(|_| join_err("chat"))?,
        ),
        None => None,
    };
    let alarm_run = match alarm_handle {
        Some(h) => Some(
            h.map_err(|e| format!("{}: {e}", join_err("alarm")))?
                .join()
                .map_err(|_| join_err("alarm"))?,
        ),
        None => None,
    };
    // One node after the other: each gets the whole settle wait, and by the time the first is
    // back the others have had as long.
    let leaks: Vec<Option<Leak>> = ctx
        .nodes
        .iter()
        .zip(baselines.iter().zip(&peaks))
        .map(|(t, (&baseline, peak))| settle(&ctx, t, baseline, peak.unwrap_or(baseline), o.settle))
        .collect();
    let mut clients_failed = 0;
    let mut clients_total = 0;
    let chat = chat_run.map(|(r, took)| {
        clients_failed += r.failed;
        clients_total += o.clients as u64;
        let mut tally = check::check_chat(&r.log);
        let presence = check::check_presence(&r.log);
        let latency_ms = Latency::of(&mut tally.latencies_us);
        ChatSummary {
            clients: o.clients as u64,
            deliveries_per_s: tally.receipts as f64 / took.as_secs_f64().max(0.001),
            tally,
            latency_ms,
            presence,
        }
    });
    let alarm = alarm_run.map(|mut r| {
        clients_failed += r.failed;
        clients_total += alarm_clients as u64;
        let latency_ms = Latency::of(&mut r.tally.latencies_us);
        AlarmSummary {
            clients: alarm_clients as u64,
            mode: o.mode,
            deadline_ms: deadline.as_secs_f64() * 1000.0,
            tally: r.tally,
            latency_ms,
        }
    });
    let outcome = Outcome {
        chat: chat.as_ref().map(|c| c.tally.clone()),
        presence: chat.as_ref().map(|c| c.presence.clone()),
        alarm: alarm.as_ref().map(|a| a.tally.clone()),
        clients_failed,
        leaks: leaks.clone(),
    };
    let reasons = check::verdict(&outcome);
    Ok(Summary {
        scenario: match o.chat_tcp {
            Some(_) if o.mixed_room => format!("{} (chat over tcp and sse)", o.scenario.as_str()),
            Some(_) => format!("{} (chat over tcp)", o.scenario.as_str()),
            None => o.scenario.as_str().into(),
        },
        url: o.urls.join(","),
        seed,
        elapsed_s: ctx.t0.elapsed().as_secs_f64(),
        clients_ok: clients_total.saturating_sub(clients_failed),
        clients_failed,
        chat,
        alarm,
        server: leaks.first().cloned().flatten(),
        nodes: if leaks.len() > 1 {
            o.urls
                .iter()
                .zip(leaks)
                .map(|(url, server)| report::Node {
                    url: url.clone(),
                    server,
                })
                .collect()
        } else {
            Vec::new()
        },
        errors: ctx.errors(),
        refused: ctx.refusals(),
        verdict: if reasons.is_empty() { "PASS" } else { "FAIL" },
        reasons,
    })
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args_os().skip(1).collect()) {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("syncast-stress: {e} (see --help)");
            return ExitCode::from(2);
        }
    };
    let json = opts.json;
    match run(opts) {
        Ok(summary) => {
            if json {
                println!("{}", summary.json());
            } else {
                print!("{}", summary.text());
            }
            if summary.reasons.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("syncast-stress: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Option<Opts>, String> {
        parse_args(list.iter().map(Into::into).collect())
    }

    #[test]
    fn flags_parse_and_bad_values_are_refused() {
        let o = args(&[
            "--scenario",
            "mixed",
            "--clients",
            "7",
            "--interval",
            "50ms..200ms",
            "--mode",
            "change",
            "--json",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(o.scenario, Scenario::Mixed);
        assert_eq!(o.clients, 7);
        assert_eq!(
            o.interval,
            (Duration::from_millis(50), Duration::from_millis(200))
        );
        assert_eq!(o.mode, AlarmMode::Change);
        assert!(o.json);
        assert!(args(&["--interval", "3s..1s"]).is_err());
        assert!(args(&["--scenario", "poll"]).is_err());
        assert!(args(&["--ramp", "0"]).is_err());
        assert!(args(&["--bogus"]).is_err());
        assert!(args(&["--clients", "6001"]).is_err());
        assert!(args(&["--scenario", "alarm", "--clients", "6001"]).is_ok());
    }

    #[test]
    fn url_repeats_or_lists_nodes_and_one_url_stays_as_it_was() {
        let one = args(&["--url", "http://127.0.0.1:9"]).unwrap().unwrap();
        assert_eq!(one.urls, vec!["http://127.0.0.1:9".to_string()]);
        assert_eq!(
            args(&[]).unwrap().unwrap().urls,
            vec!["http://127.0.0.1:8080".to_string()]
        );
        let two = args(&["--url", "http://a:1", "--url", "http://b:2"])
            .unwrap()
            .unwrap();
        assert_eq!(
            two.urls,
            vec!["http://a:1".to_string(), "http://b:2".into()]
        );
        let list = args(&[
            "--url",
            "http://a:1,http://b:2,http://c:3",
            "--spread-alarms",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(list.urls.len(), 3);
        assert!(list.spread_alarms);
        assert!(args(&["--url", "http://a:1,"]).is_err());
        assert!(args(&["--url", "http://a:1,http://b:2", "--transport", "tcp"]).is_err());
        assert!(args(&["--url", "http://a:1", "--transport", "tcp"]).is_ok());
    }
}
