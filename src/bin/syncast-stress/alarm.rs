//! Scenario `alarm`: N streams on `/sse/call/{id}` (one thread each) while one writer flips their
//! alarms with `PUT /alarms/{id}`, spaced so that each flip has its own span to show up in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};
use parking_lot::Mutex;
use serde_json::Value;

use syncast::kit::http::{self, Closer, Opened, Target};
use syncast::kit::sse::Item;

use crate::check::{check_alarm, AlarmMode, AlarmTally, Flip, Seen};
use crate::shared::{spawn, Ctx, Retry, REQUEST_TIMEOUT};

/// What the alarm scenario does.
#[derive(Debug, Clone)]
pub struct AlarmPlan {
    /// Streams (one id each).
    pub clients: usize,
    /// Shortest run; in `mixed` it also lasts until the chat is done.
    pub duration: Duration,
    /// `?mode=`.
    pub mode: AlarmMode,
    /// A flip must show within this long of its PUT's answer.
    pub deadline: Duration,
    /// Most PUTs per second the writer makes.
    pub put_rate: f64,
    /// Prefix of the ids (unique per run).
    pub tag: String,
    /// Longest silence on a stream before it counts as dead.
    pub idle: Duration,
    /// Spread over the nodes (`--spread-alarms`): stream `i` on node `i`, its PUTs to node
    /// `i + 1`; otherwise everything on the first node.
    pub spread: bool,
}

impl AlarmPlan {
    /// Where stream `i` connects.
    fn stream_node<'a>(&self, ctx: &'a Ctx, i: usize) -> &'a Target {
        if self.spread {
            ctx.node(i)
        } else {
            &ctx.target
        }
    }

    /// Where the PUTs of id `i` go: another node than its stream's when spread, so each flip
    /// must cross the shared store.
    fn put_node<'a>(&self, ctx: &'a Ctx, i: usize) -> &'a Target {
        if self.spread {
            ctx.node(i + 1)
        } else {
            &ctx.target
        }
    }
}

/// What the alarm scenario found.
pub struct AlarmRun {
    /// The check, summed over streams.
    pub tally: AlarmTally,
    /// Streams (and the writer) that could not finish.
    pub failed: u64,
}

struct Slot {
    closing: AtomicBool,
    closer: Mutex<Option<Closer>>,
}

impl Slot {
    fn close(&self) {
        self.closing.store(true, Ordering::Release);
        if let Some(c) = self.closer.lock().as_ref() {
            c.close();
        }
    }
}

/// Runs the scenario; `chat_done` (if any) disconnects when the chat scenario has finished, and
/// the writer keeps flipping until then.
pub fn run(ctx: &Arc<Ctx>, plan: &AlarmPlan, chat_done: Option<Receiver<()>>) -> AlarmRun {
    let n = plan.clients;
    let (ready_tx, ready_rx) = bounded::<bool>(n.max(1));
    let slots: Vec<Arc<Slot>> = (0..n)
        .map(|_| {
            Arc::new(Slot {
                closing: AtomicBool::new(false),
                closer: Mutex::new(None),
            })
        })
        .collect();
    let mut handles = Vec::with_capacity(n);
    for (i, slot) in slots.iter().enumerate() {
        let (ctx2, plan2, slot2, ready2) =
            (ctx.clone(), plan.clone(), slot.clone(), ready_tx.clone());
        match spawn(format!("alarm-{i}"), move || {
            stream(&ctx2, &plan2, i, &slot2, ready2)
        }) {
            Ok(h) => handles.push(Some(h)),
            Err(_) => {
                ctx.error("client-spawn");
                let _ = ready_tx.send(false);
                handles.push(None);
            }
        }
    }
    drop(ready_tx);
    // Flip only once every stream has shown its first value (or failed).
    let mut live = vec![true; n];
    let mut answered = 0;
    let ready_deadline =
        Instant::now() + Duration::from_secs(60) + Duration::from_secs(n as u64 / 10);
    while answered < n {
        match ready_rx.recv_deadline(ready_deadline) {
            Ok(_) => answered += 1,
            Err(_) => break,
        }
    }
    let min_end = Instant::now() + plan.duration;
    let (flips, writer_ok) = write(ctx, plan, &mut live, min_end, chat_done);
    // Let the last flips show, then hang up.
    std::thread::sleep(plan.deadline * 2);
    let end_us = ctx.now_us();
    for s in &slots {
        s.close();
    }
    let mut run = AlarmRun {
        tally: AlarmTally::default(),
        failed: u64::from(!writer_ok),
    };
    for (i, h) in handles.into_iter().enumerate() {
        let seen = h.and_then(|h| h.join().ok());
        match seen {
            Some(Ok(seen)) if live[i] => run.tally.add(check_alarm(
                plan.mode,
                false,
                &flips[i],
                &seen,
                plan.deadline.as_micros() as u64,
                end_us,
            )),
            Some(Ok(_)) => {} // its id was written with an unknown outcome: not checked
            _ => run.failed += 1,
        }
    }
    run
}

/// The writer: rounds over every id, one PUT each, `1/put_rate` apart, at least four deadlines per
/// round so every flip owns a span of more than two deadlines. Returns the flips per stream and
/// whether every PUT was answered.
fn write(
    ctx: &Ctx,
    plan: &AlarmPlan,
    live: &mut [bool],
    min_end: Instant,
    chat_done: Option<Receiver<()>>,
) -> (Vec<Vec<Flip>>, bool) {
    let n = live.len();
    let mut flips: Vec<Vec<Flip>> = vec![Vec::new(); n];
    let mut ok = true;
    if n == 0 {
        return (flips, ok);
    }
    let round = (plan.deadline * 4).max(Duration::from_secs_f64(n as f64 / plan.put_rate));
    let gap = round / n as u32;
    let chat_running = |done: &Option<Receiver<()>>| {
        done.as_ref()
            .is_some_and(|d| !matches!(d.try_recv(), Err(TryRecvError::Disconnected)))
    };
    let mut value = true;
    let mut round_start = Instant::now();
    while Instant::now() < min_end || chat_running(&chat_done) {
        for (i, alive) in live.iter_mut().enumerate() {
            if !*alive {
                continue;
            }
            let at = round_start + gap * i as u32;
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            let path = format!("/alarms/{}-{i}", plan.tag);
            let body: &[u8] = if value { b"true" } else { b"false" };
            let sent_us = ctx.now_us();
            if put(ctx, plan, plan.put_node(ctx, i), &path, body) {
                flips[i].push(Flip {
                    value,
                    sent_us,
                    acked_us: ctx.now_us(),
                });
                ctx.progress.flips.fetch_add(1, Ordering::Relaxed);
            } else {
                // The value may or may not be stored: this id can no longer be checked.
                *alive = false;
                ok = false;
            }
        }
        value = !value;
        round_start = (round_start + round).max(Instant::now());
    }
    (flips, ok)
}

fn put(ctx: &Ctx, plan: &AlarmPlan, target: &Target, path: &str, body: &[u8]) -> bool {
    let retry = Retry::new();
    loop {
        let auth = ctx.publisher_auth(&plan.tag);
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        match http::request(target, "PUT", path, &headers, body, REQUEST_TIMEOUT) {
            Ok(r) if r.status == 204 => return true,
            Ok(r) if r.status == 503 => {
                ctx.error("put-503");
                if !retry.wait(r.retry_after().unwrap_or(Duration::from_secs(1))) {
                    ctx.error("put-gave-up");
                    return false;
                }
            }
            Ok(r) => {
                ctx.error(&format!("put-{}", r.status));
                return false;
            }
            Err(http::HttpError::Refused) => {
                ctx.error("put-refused");
                if !retry.wait(Duration::from_millis(200)) {
                    ctx.error("put-gave-up");
                    return false;
                }
            }
            Err(e) => {
                ctx.error(&format!("put-{}", e.kind()));
                return false;
            }
        }
    }
}

/// One stream's thread: connect (retrying 503), record every value until we close it.
/// `Err` when the stream could not be opened or ended on its own.
fn stream(
    ctx: &Ctx,
    plan: &AlarmPlan,
    i: usize,
    slot: &Slot,
    ready: Sender<bool>,
) -> Result<Vec<Seen>, ()> {
    ctx.ramp();
    let mode = match plan.mode {
        AlarmMode::Tick => "tick",
        AlarmMode::Change => "change",
    };
    let id = format!("{}-{i}", plan.tag);
    let path = format!("/sse/call/{id}?mode={mode}");
    let mut ready = Some(ready);
    let retry = Retry::new();
    let mut es = loop {
        let auth = ctx.subscriber_auth(&id);
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        match http::open_stream(
            plan.stream_node(ctx, i),
            &path,
            &headers,
            REQUEST_TIMEOUT,
            plan.idle,
        ) {
            Ok(Opened::Stream(es)) => break es,
            // The server's answer at a cap: come back when it says (`retry_ms`, jittered).
            Ok(Opened::Retry(r)) if retry.wait(r.after()) => ctx.refused(&r.reason),
            Ok(Opened::Retry(r)) => {
                ctx.error(&format!("stream-refused-{}", r.reason));
                let _ = ready.take().map(|r| r.send(false));
                return Err(());
            }
            Ok(Opened::Refused(r)) => {
                ctx.error(&format!("stream-{}", r.status));
                let _ = ready.take().map(|r| r.send(false));
                return Err(());
            }
            Err(http::HttpError::Refused) if retry.wait(Duration::from_millis(200)) => {
                ctx.error("stream-refused");
            }
            Err(e) => {
                ctx.error(e.kind());
                let _ = ready.take().map(|r| r.send(false));
                return Err(());
            }
        }
    };
    if let Ok(c) = es.closer() {
        *slot.closer.lock() = Some(c);
        // Closed while we were connecting: the close above found no closer.
        if slot.closing.load(Ordering::Acquire) {
            slot.close();
        }
    }
    ctx.progress.connected.fetch_add(1, Ordering::Relaxed);
    let mut seen = Vec::new();
    let result = loop {
        match es.next_item() {
            Ok(Some(Item::Event { event, data, .. })) if event == "message" => {
                let value = match data.as_str() {
                    // The server's two fixed encodings first; anything else through JSON.
                    "{\"alarm\":true}" => Some(true),
                    "{\"alarm\":false}" => Some(false),
                    other => serde_json::from_str::<Value>(other)
                        .ok()
                        .and_then(|v| v["alarm"].as_bool()),
                };
                match value {
                    Some(value) => {
                        seen.push(Seen {
                            value,
                            at_us: ctx.now_us(),
                        });
                        ctx.progress.received.fetch_add(1, Ordering::Relaxed);
                        if let Some(r) = ready.take() {
                            let _ = r.send(true);
                        }
                    }
                    None => ctx.error("bad-event"),
                }
            }
            Ok(Some(Item::Event { event, .. })) if event == "shutdown" => {
                ctx.error("server-shutdown");
                break Err(());
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) if slot.closing.load(Ordering::Acquire) => break Ok(()),
            Ok(None) => {
                ctx.error("stream-cut");
                break Err(());
            }
            Err(e) => {
                ctx.error(&format!("stream-{}", e.kind()));
                break Err(());
            }
        }
    };
    ctx.progress.connected.fetch_sub(1, Ordering::Relaxed);
    if let Some(r) = ready.take() {
        let _ = r.send(false);
    }
    result.map(|()| seen)
}
