//! One alarm stream: `GET /sse/call/{id}` served on its own named thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{at, bounded, never, select, tick, Receiver};

use super::hub::{AlarmHub, Registration};
use crate::admit::StreamSlot;
use crate::http::socket::Liveness;
use crate::http::sse::{self, SseWriter};
use crate::metrics::Metrics;
use crate::stream::{CloseReason, Streams};

/// What an alarm stream needs: the hub it reads values from, how to open its socket, its
/// intervals, and the counters it keeps.
pub(crate) struct AlarmStreams {
    /// Connected ids and their values.
    pub(crate) hub: Arc<AlarmHub>,
    /// Opening the stream's socket.
    pub(crate) streams: Streams,
    /// Counters for `/metrics`.
    pub(crate) metrics: Arc<Metrics>,
    /// Tick-mode event interval.
    pub(crate) tick: Duration,
    /// Change-mode keepalive interval.
    pub(crate) heartbeat: Duration,
    /// Test-only: a stream of this id panics on its first tick (see `Config::fault_panic_id`).
    pub(crate) fault_panic_id: Option<String>,
}

/// How a stream sends values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// One event every tick (the Go original's behaviour).
    Tick,
    /// An event only when the value changes, plus keepalives.
    Change,
}

impl Mode {
    /// Parses `?mode=`: absent means tick.
    pub(crate) fn parse(text: Option<&str>) -> Option<Mode> {
        match text {
            None | Some("tick") => Some(Mode::Tick),
            Some("change") => Some(Mode::Change),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Mode::Tick => "tick",
            Mode::Change => "change",
        }
    }
}

fn event(alarm: bool) -> &'static [u8] {
    if alarm {
        b"data: {\"alarm\":true}\n\n"
    } else {
        b"data: {\"alarm\":false}\n\n"
    }
}

/// Logs the open line when made and the close line (with its reason) when dropped, and keeps the
/// open-streams gauge: every exit path of the thread, panics included, logs and counts once.
struct Lifecycle<'a> {
    cx: &'a AlarmStreams,
    id: &'a str,
    conn: u64,
    reason: CloseReason,
}

impl<'a> Lifecycle<'a> {
    // Not inlined (nor are `register`, `Drop` and the fault below): the loop's frame stays small
    // enough for a parked stream to touch two stack pages, not three (see `run`).
    #[inline(never)]
    fn new(cx: &'a AlarmStreams, id: &'a str, conn: u64, mode: Mode) -> Lifecycle<'a> {
        cx.metrics.alarm_streams.inc();
        log::info!(
            "sse stream opened id={id} conn={conn} mode={}",
            mode.as_str()
        );
        Lifecycle {
            cx,
            id,
            conn,
            // Until the loop says otherwise, an unwinding thread closed because of a fault.
            reason: CloseReason::ClientGone,
        }
    }
}

impl Drop for Lifecycle<'_> {
    #[inline(never)]
    fn drop(&mut self) {
        self.cx.metrics.alarm_streams.dec();
        if self.reason == CloseReason::Stalled {
            self.cx.metrics.stalled.inc();
        }
        log::info!(
            "sse stream closed id={} conn={} reason={}",
            self.id,
            self.conn,
            self.reason.as_str()
        );
    }
}

/// Serves one stream until the client leaves, the server shuts down or the token it was opened
/// with expires (`expires`: none when auth is off). Runs on the stream's own thread; `slot` is
/// its place under `--max-clients`, released when this returns.
#[inline(never)]
pub(crate) fn serve(
    cx: Arc<AlarmStreams>,
    request: tiny_http::Request,
    id: String,
    mode: Mode,
    conn: u64,
    slot: StreamSlot,
    expires: Option<Instant>,
) {
    if let Some(out) = open(&cx, request, &id, conn) {
        run(cx, out, id, mode, conn, slot, expires);
    }
}

/// Takes over the request's socket. Never inlined: its temporaries then live in a frame that is
/// gone before the loop starts, instead of being reserved for the stream's whole life in the
/// frame the loop runs in (with them, the loop parked past the second page of its stack).
#[inline(never)]
fn open(cx: &AlarmStreams, request: tiny_http::Request, id: &str, conn: u64) -> Option<SseWriter> {
    match cx.streams.open(request) {
        Ok(out) => Some(out),
        Err(e) => {
            log::info!("sse stream failed to start id={id} conn={conn} error={e}");
            None
        }
    }
}

/// The stream's loop, from registration to close (never inlined, like [`open`]).
#[inline(never)]
fn run(
    cx: Arc<AlarmStreams>,
    mut out: SseWriter,
    id: String,
    mode: Mode,
    conn: u64,
    slot: StreamSlot,
    expires: Option<Instant>,
) {
    let (_registration, wake_rx) = watch(&cx.hub, &id, conn, &mut out);
    let expiry = expiry(expires);
    let mut life = Lifecycle::new(&cx, &id, conn, mode);
    // Setting up went a page deeper than the loop below ever goes: give that page back
    // (4 KiB of the ~21 KiB an idle stream cost).
    crate::sys::thread::release_unused_stack();
    // Tick mode: one `at` channel per tick, due a whole tick after the previous one was due,
    // so ticks keep their schedule (`tick` schedules the next from the moment it is taken, so
    // every late wake-up would add up). Change mode: the keepalive, where that does not matter.
    let mut due = Instant::now() + cx.tick;
    let mut ticker = match mode {
        Mode::Tick => at(due),
        Mode::Change => tick(cx.heartbeat),
    };
    match mode {
        Mode::Change => crate::sys::thread::relax_keepalive_timer(cx.heartbeat),
        // A hundredth of the tick (5 ms at 500 ms): thousands of tick streams then wake in
        // groups served by one timer interrupt, each tick at most that late.
        Mode::Tick => crate::sys::thread::relax_timers(cx.tick / 100),
    }
    let mut last: Option<bool> = cx.hub.get(&id);
    let mut first = sse::retry(std::time::Duration::from_secs(2));
    if let Some(v) = last {
        first.extend_from_slice(event(v));
    }
    let result = send_counted(&cx, &mut out, &first, last.is_some()).and_then(|()| loop {
        select! {
            recv(ticker) -> _ => {
                if cx.fault_panic_id.as_deref() == Some(id.as_str()) {
                    injected_fault(&id);
                }
                // No socket check first (three system calls per tick): the watcher tells
                // through the wake channel as soon as the peer's FIN or reset shows, and the
                // write itself fails on a reset or dead peer.
                match mode {
                    Mode::Tick => {
                        due += cx.tick;
                        // Far behind (a write blocked): start again from now, no burst.
                        let now = Instant::now();
                        if due <= now {
                            due = now + cx.tick;
                        }
                        ticker = at(due);
                        // The value is the one the last wake-up read; a wake-up that came
                        // with this tick is taken first, so the tick sends the value now.
                        if wake_rx.try_recv().is_ok() {
                            if out.liveness() == Liveness::Gone {
                                break Ok(CloseReason::ClientGone);
                            }
                            last = cx.hub.get(&id).or(last);
                        }
                        if let Some(v) = last {
                            send_counted(&cx, &mut out, event(v), true)?;
                        }
                    }
                    Mode::Change => {
                        out.send(sse::KEEPALIVE)?;
                        cx.metrics.keepalives_sent.inc();
                    }
                }
            }
            recv(wake_rx) -> _ => {
                // The value changed, or the watcher saw the peer leave: our own socket tells
                // which (end now instead of at the next write, up to --heartbeat away).
                if out.liveness() == Liveness::Gone {
                    break Ok(CloseReason::ClientGone);
                }
                let now = cx.hub.get(&id);
                // Tick mode sends its first value at once, then only at its ticks.
                let wanted = match mode {
                    Mode::Tick => last.is_none(),
                    Mode::Change => now != last,
                };
                last = now.or(last);
                if let (true, Some(v)) = (wanted, now) {
                    send_counted(&cx, &mut out, event(v), true)?;
                }
            }
            recv(slot.closed()) -> _ => {
                let _ = out.send(sse::SHUTDOWN);
                break Ok(CloseReason::Shutdown);
            }
            // A stream lives no longer than its token: the client reconnects with a fresh one.
            recv(expiry) -> _ => {
                let _ = out.send(sse::EXPIRED);
                break Ok(CloseReason::TokenExpired);
            }
        }
    });
    life.reason = match result {
        Ok(reason) => reason,
        Err(_) if slot.is_closed() => CloseReason::Shutdown,
        Err(e) => CloseReason::from_write_error(&e),
    };
}

/// Registers the stream for `id`'s changes; the receiver gets a wake-up per change, and also
/// when the watcher sees the client leave (it tells through this channel instead of a `gone`
/// channel of its own: one channel fewer in every `select!`, one allocation and four lock
/// operations fewer per tick). Out of line: building a channel puts its ~0.5 KiB, 128-byte-
/// aligned body on the stack first, which would otherwise stay reserved in the loop's frame.
#[inline(never)]
fn watch(
    hub: &Arc<AlarmHub>,
    id: &str,
    conn: u64,
    out: &mut SseWriter,
) -> (Registration, Receiver<()>) {
    let (wake_tx, wake_rx) = bounded::<()>(1);
    out.tell_gone_through(wake_tx.clone());
    (AlarmHub::register(hub, id, conn, wake_tx), wake_rx)
}

/// The channel that fires when the stream's token expires; never without auth. Out of line,
/// like [`watch`]: the loop's frame keeps only the receiver.
#[inline(never)]
fn expiry(expires: Option<Instant>) -> Receiver<Instant> {
    expires.map_or_else(never, at)
}

#[cold]
#[inline(never)]
fn injected_fault(id: &str) -> ! {
    panic!("injected fault in stream id={id}");
}

fn send_counted(
    cx: &AlarmStreams,
    out: &mut SseWriter,
    bytes: &[u8],
    is_event: bool,
) -> std::io::Result<()> {
    if is_event {
        out.send_event(bytes)?;
        cx.metrics.events_sent.inc();
    } else {
        out.send(bytes)?;
    }
    Ok(())
}
