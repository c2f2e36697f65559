//! One chat stream: `GET /chat/stream` served on its own named thread.
//!
//! The thread joins or attaches to the room, answers with the SSE head, writes the backlog
//! (welcome, reset, replayed history) and then loops over keepalive tick, its wake channel (live
//! events waiting in the room; closed when the room closes the stream: replaced, left, slow),
//! the watcher's poke (the peer left) and its shutdown channel.
//! It writes only its own socket, never under the room's lock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{at, never, select, tick};

use super::reply::error_reply;
use super::room::{Attached, ChatError, Encoded, Kick, Room, Take, TAKE_EVENTS};
use super::session::Token;
use crate::admit::{Refusal, StreamSlot, Unprepared};
use crate::http::socket::Liveness;
use crate::http::sse::{self, SseWriter};
use crate::metrics::Metrics;
use crate::stream::{CloseReason, Streams};

/// What a chat stream needs: the room, how to open its socket, its keepalive interval and the
/// counters it keeps.
pub(crate) struct ChatStreams {
    /// The room.
    pub(crate) room: Arc<Room>,
    /// Opening the stream's socket.
    pub(crate) streams: Streams,
    /// Counters for `/metrics`.
    pub(crate) metrics: Arc<Metrics>,
    /// Keepalive interval.
    pub(crate) heartbeat: Duration,
    /// Test-only: a stream of a member of this name panics once its backlog is written (see
    /// `Config::fault_panic_id`).
    pub(crate) fault_panic_id: Option<String>,
}

/// Who the stream is for.
#[derive(Debug, Clone)]
pub(crate) enum Member {
    /// Join as this (validated) name.
    Join(String),
    /// Attach to the session holding this token.
    Resume(Token),
}

/// Logs the open line when made and the close line (with its reason) when dropped, keeps the
/// attached-streams gauge and detaches the session: every exit path of the thread, panics
/// included, does this once.
struct Lifecycle<'a> {
    metrics: &'a Metrics,
    room: &'a Room,
    key: u64,
    serial: u64,
    name: String,
    conn: u64,
    reason: CloseReason,
}

impl<'a> Lifecycle<'a> {
    #[inline(never)]
    /// Takes the attachment's name (no second copy of it lives as long as the stream).
    fn new(metrics: &'a Metrics, room: &'a Room, att: &mut Attached, conn: u64) -> Lifecycle<'a> {
        metrics.chat_streams.inc();
        log::info!("chat stream opened name={} conn={conn}", att.name);
        Lifecycle {
            metrics,
            room,
            key: att.key,
            serial: att.serial,
            name: std::mem::take(&mut att.name),
            conn,
            // Until the loop says otherwise, an unwinding thread closed because of a fault.
            reason: CloseReason::ClientGone,
        }
    }
}

impl Drop for Lifecycle<'_> {
    #[inline(never)]
    fn drop(&mut self) {
        let name = self.room.detach(self.key, self.serial);
        self.metrics.chat_streams.dec();
        if self.reason == CloseReason::Stalled {
            self.metrics.stalled.inc();
        }
        log::info!(
            "chat stream closed name={} conn={} reason={}",
            name.as_deref().unwrap_or(&self.name),
            self.conn,
            self.reason.as_str()
        );
    }
}

/// A stream's place in the room, made before its thread starts ([`prepare`]); if the thread
/// never runs it, or ends before the stream is running (the SSE head could not be written),
/// dropping it detaches the session, which then starts its grace period instead of staying
/// attached.
pub(crate) struct Prepared {
    room: Arc<Room>,
    att: Option<Attached>,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(att) = self.att.take() {
            self.room.detach(att.key, att.serial);
        }
    }
}

/// Joins (`?name=`) or attaches (`?token=`) for a new stream, on the calling thread; a refusal
/// is the reply to answer with.
pub(crate) fn prepare(
    cx: &ChatStreams,
    member: &Member,
    last_event_id: Option<u64>,
) -> Result<Prepared, Unprepared> {
    let room = &cx.room;
    let attached = match member {
        Member::Join(name) => room.join_and_attach(name, last_event_id),
        Member::Resume(token) => room.attach(token, last_event_id),
    };
    match attached {
        Ok(att) => Ok(Prepared {
            room: room.clone(),
            att: Some(att),
        }),
        // A full room frees up by itself: EventSource must come back, so it gets a `refused`
        // event, not a 503 that ends it for good. A bad name, a taken name or an unknown token
        // is for the user to act on: a 4xx.
        Err(ChatError::RoomFull) => Err(Unprepared::Retry(Refusal::RoomFull)),
        Err(e) => Err(Unprepared::Reply(error_reply(&cx.metrics, &e))),
    }
}

/// Serves one chat stream until the client leaves, the room closes it, the server shuts down,
/// or the token it was opened with expires (`expires`: none with auth off). Runs on the stream's
/// own thread; `slot` is its place under `--max-clients`.
///
/// Memory: an idle member must cost what an idle alarm stream costs (two stack pages and no
/// buffer sized for a past write), so the room's work was done before the thread started
/// ([`prepare`]), setting up ([`start`], [`send_backlog`]) runs in frames of its own that are
/// gone before the loop ([`run`]) starts, the stack pages they touched are given back, and
/// nothing the backlog needed (the welcome, replayed events, their buffer) is kept.
#[inline(never)]
pub(crate) fn serve(
    cx: Arc<ChatStreams>,
    request: tiny_http::Request,
    prepared: Prepared,
    conn: u64,
    slot: StreamSlot,
    expires: Option<Instant>,
) {
    if let Some((att, out)) = start(&cx, request, prepared, conn) {
        run(cx, att, out, conn, slot, expires);
    }
}

/// Takes over the request's socket (never inlined: see [`serve`]).
#[inline(never)]
fn start(
    cx: &ChatStreams,
    request: tiny_http::Request,
    mut prepared: Prepared,
    conn: u64,
) -> Option<(Attached, SseWriter)> {
    match cx.streams.open(request) {
        Ok(out) => prepared.att.take().map(|att| (att, out)),
        Err(e) => {
            let name = prepared.att.as_ref().map_or("", |a| a.name.as_str());
            log::info!("chat stream failed to start name={name} conn={conn} error={e}");
            None
        }
    }
}

/// `retry:`, then the backlog (welcome, reset, replayed events) in one write; the buffer and
/// the events are let go of when it returns.
#[inline(never)]
fn send_backlog(out: &mut SseWriter, backlog: Vec<Encoded>) -> std::io::Result<()> {
    let mut batch = sse::retry(std::time::Duration::from_secs(2));
    batch.reserve(backlog.iter().map(|e| e.len()).sum());
    for event in &backlog {
        batch.extend_from_slice(event);
    }
    drop(backlog);
    out.send_event(&batch).map(|_| ())
}

#[inline(never)]
fn opened<'a>(cx: &'a ChatStreams, att: &mut Attached, conn: u64) -> Lifecycle<'a> {
    Lifecycle::new(&cx.metrics, &cx.room, att, conn)
}

/// The stream's loop, from the backlog to close (never inlined, like [`start`]).
#[inline(never)]
fn run(
    cx: Arc<ChatStreams>,
    mut att: Attached,
    mut out: SseWriter,
    conn: u64,
    slot: StreamSlot,
    expires: Option<Instant>,
) {
    let room = cx.room.clone();
    let mut life = opened(&cx, &mut att, conn);
    crate::sys::thread::batch_scheduling();
    let ticker = tick(cx.heartbeat);
    let expiry = expires.map_or_else(never, at);
    crate::sys::thread::relax_keepalive_timer(cx.heartbeat);
    let backlog = std::mem::take(&mut att.backlog);
    let result = send_backlog(&mut out, backlog).and_then(|()| {
        // Setting up went deeper than the loop below goes: give those pages back.
        crate::sys::thread::release_unused_stack();
        // How long to wait, with nothing to do, before giving back the stack pages the last
        // delivery or keepalive touched (see SETTLE); forever once given back.
        let mut settle = Duration::MAX;
        if cx.fault_panic_id.as_deref() == Some(life.name.as_str()) {
            injected_fault(&life.name);
        }
        loop {
            select! {
                recv(ticker) -> _ => {
                    if out.liveness() == Liveness::Gone {
                        return Ok(CloseReason::ClientGone);
                    }
                    out.send(sse::KEEPALIVE)?;
                    cx.metrics.keepalives_sent.inc();
                    settle = SETTLE;
                }
                recv(att.wake) -> woke => {
                    // The room dropped our wake channel: it closed the stream.
                    if woke.is_err() {
                        return Ok(kicked(&mut life.name, room.kick_of(att.serial)));
                    }
                    if let Some(reason) = deliver(&cx.metrics, &room, &att, &mut out)? {
                        return Ok(kicked(&mut life.name, reason));
                    }
                    settle = SETTLE;
                }
                // The watcher saw the client's socket leave ESTABLISHED: confirm on our
                // own socket (a reused descriptor number cannot fool it) and end.
                recv(out.gone()) -> _ => {
                    if out.liveness() == Liveness::Gone {
                        return Ok(CloseReason::ClientGone);
                    }
                }
                recv(slot.closed()) -> _ => {
                    let _ = out.send(sse::SHUTDOWN);
                    return Ok(CloseReason::Shutdown);
                }
                // The token expired: the session stays for its grace period, and the client
                // attaches again with a fresh token.
                recv(expiry) -> _ => {
                    let _ = out.send(sse::EXPIRED);
                    return Ok(CloseReason::TokenExpired);
                }
                default(settle) => {
                    crate::sys::thread::release_unused_stack();
                    settle = Duration::MAX;
                }
            }
        }
    });
    life.reason = match result {
        Ok(reason) => reason,
        // A write that failed because the client stopped reading, after the room already cut
        // it off as slow, is reported as slow: that is the cause, the failed write the symptom.
        Err(e) => match room.kick_of(att.serial) {
            Some(kick) => kicked(&mut life.name, Some(kick)),
            // Shutdown shut the socket of a stream blocked in a write.
            None if slot.is_closed() => CloseReason::Shutdown,
            None => CloseReason::from_write_error(&e),
        },
    };
}

#[cold]
#[inline(never)]
fn injected_fault(name: &str) -> ! {
    panic!("injected fault in chat stream name={name}");
}

/// Quiet time after a delivery or a keepalive before a stream gives back the stack pages it
/// touched. Taking events (the room's lock, the events' array and gathering buffer, the write)
/// goes deeper than a parked stream: without this, every member that ever received an event kept three pages
/// instead of two (measured: 200 members, resident pages of each stack from the top, (0, 1, 2)
/// before, (0, 1) after). Once per quiet period, so a busy stream does not pay a system call
/// per wake.
const SETTLE: Duration = Duration::from_secs(1);

/// Bytes of small events a stream gathers (on its stack) into one write; a bigger event is
/// written from the history's own buffer.
const GATHER_BYTES: usize = 4096;

/// Where [`deliver`] writes: an SSE stream's socket, or a TCP member's (`super::tcp`).
pub(crate) trait Sink {
    /// Writes `bytes` (one or more encoded events) whole; returns when the write ended
    /// ([`crate::metrics::now_ns`]), for the delivery latency.
    fn send_event(&mut self, bytes: &[u8]) -> std::io::Result<u64>;
}

impl Sink for SseWriter {
    fn send_event(&mut self, bytes: &[u8]) -> std::io::Result<u64> {
        SseWriter::send_event(self, bytes)
    }
}

/// Everything that arrived since the last wake goes out in as few writes as possible: under
/// fan-out load one wake-up and one system call carry many events. The events are the
/// history's own buffers (no copy under the room's lock, no heap buffer kept by the stream).
/// `Some(kick)` when the room closed the stream.
#[inline(never)]
pub(crate) fn deliver(
    metrics: &Metrics,
    room: &Room,
    att: &Attached,
    out: &mut impl Sink,
) -> std::io::Result<Option<Option<Kick>>> {
    let mut events: [Option<Encoded>; TAKE_EVENTS] = [const { None }; TAKE_EVENTS];
    // When each was broadcast, for the delivery latency once it is written.
    let mut accepted = [0u64; TAKE_EVENTS];
    let mut gather = [0u8; GATHER_BYTES];
    loop {
        let took = room.take(att.key, att.serial, &mut events, &mut accepted);
        let n = match took {
            Take::Closed => return Ok(Some(room.kick_of(att.serial))),
            Take::Done(n) | Take::More(n) => n,
        };
        // `gather` holds events [from, i); one too big for it is written on its own.
        let (mut len, mut from) = (0, 0);
        for i in 0..n {
            let Some(event) = events[i].take() else {
                continue;
            };
            if len + event.len() > GATHER_BYTES && len > 0 {
                let written = out.send_event(&gather[..len])?;
                metrics
                    .chat_delivery
                    .observe_since(&accepted[from..i], written);
                (len, from) = (0, i);
            }
            if event.len() > GATHER_BYTES {
                let written = out.send_event(&event)?;
                metrics
                    .chat_delivery
                    .observe_since(&accepted[i..=i], written);
                from = i + 1;
            } else {
                gather[len..len + event.len()].copy_from_slice(&event);
                len += event.len();
            }
        }
        if len > 0 {
            let written = out.send_event(&gather[..len])?;
            metrics
                .chat_delivery
                .observe_since(&accepted[from..n], written);
        }
        if let Take::Done(_) = took {
            return Ok(None);
        }
    }
}

/// The close reason of a kick (a kick channel closed without one means the session is gone),
/// taking the session's name at that moment for the close line.
pub(crate) fn kicked(name: &mut String, kick: Option<Kick>) -> CloseReason {
    match kick {
        Some(kick) => {
            *name = kick.name;
            kick.reason
        }
        None => CloseReason::Left,
    }
}
