//! One chat stream: `GET /chat/stream` served on its own named thread.
//!
//! The thread joins or attaches to the room, answers with the SSE head, writes the backlog
//! (welcome, reset, replayed history) and then loops over keepalive tick, its wake channel (live
//! events waiting in the room), its kick channel (replaced, left, slow) and its shutdown channel.
//! It writes only its own socket, never under the room's lock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{at, never, select, tick};

use super::reply::error_reply;
use super::room::{Attached, Kick, Room, Take};
use super::session::Token;
use crate::admit::StreamSlot;
use crate::http::socket::Liveness;
use crate::http::sse;
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
    fn new(metrics: &'a Metrics, room: &'a Room, att: &Attached, conn: u64) -> Lifecycle<'a> {
        metrics.chat_streams.inc();
        log::info!("chat stream opened name={} conn={conn}", att.name);
        Lifecycle {
            metrics,
            room,
            key: att.key,
            serial: att.serial,
            name: att.name.clone(),
            conn,
            // Until the loop says otherwise, an unwinding thread closed because of a fault.
            reason: CloseReason::ClientGone,
        }
    }
}

impl Drop for Lifecycle<'_> {
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

/// Detaches the session if the thread ends before the stream is running (the SSE head could
/// not be written): the session then starts its grace period instead of staying attached.
struct Detach<'a> {
    room: &'a Room,
    key: u64,
    serial: u64,
    armed: bool,
}

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.room.detach(self.key, self.serial);
        }
    }
}

/// Serves one chat stream until the client leaves, the room closes it, the server shuts down,
/// or the token it was opened with expires (`expires`: none with auth off). Runs on the stream's
/// own thread; `slot` is its place under `--max-clients`.
pub(crate) fn serve(
    cx: Arc<ChatStreams>,
    request: tiny_http::Request,
    member: Member,
    last_event_id: Option<u64>,
    conn: u64,
    slot: StreamSlot,
    expires: Option<Instant>,
) {
    let room = cx.room.clone();
    let attached = match &member {
        Member::Join(name) => room.join_and_attach(name, last_event_id),
        Member::Resume(token) => room.attach(token, last_event_id),
    };
    let att = match attached {
        Ok(att) => att,
        Err(e) => {
            let reply = error_reply(&cx.metrics, &e);
            cx.streams.refuse(request, reply);
            return;
        }
    };
    let mut detach = Detach {
        room: &room,
        key: att.key,
        serial: att.serial,
        armed: true,
    };
    let mut out = match cx.streams.open(request) {
        Ok(out) => out,
        Err(e) => {
            log::info!(
                "chat stream failed to start name={} conn={conn} error={e}",
                att.name
            );
            return;
        }
    };
    detach.armed = false;
    let mut life = Lifecycle::new(&cx.metrics, &room, &att, conn);
    crate::sys::thread::batch_scheduling();
    let ticker = tick(cx.heartbeat);
    let expiry = expires.map_or_else(never, at);
    crate::sys::thread::relax_keepalive_timer(cx.heartbeat);
    let mut batch: Vec<u8> = Vec::new();
    // When each event of `batch` was broadcast, for the delivery latency once it is written.
    let mut accepted: Vec<u64> = Vec::new();
    let result = (|| {
        // The backlog goes out with as few writes as possible, like live events below.
        batch = sse::retry(std::time::Duration::from_secs(2));
        for event in &att.backlog {
            batch.extend_from_slice(event);
        }
        out.send_event(&batch)?;
        loop {
            select! {
                recv(ticker) -> _ => {
                    if out.liveness() == Liveness::Gone {
                        return Ok(CloseReason::ClientGone);
                    }
                    out.send(sse::KEEPALIVE)?;
                    cx.metrics.keepalives_sent.inc();
                }
                recv(att.wake) -> woke => {
                    // The room dropped our wake channel: it kicked us first.
                    if woke.is_err() {
                        return Ok(kicked(&mut life.name, att.kick.try_recv().ok()));
                    }
                    // Everything that arrived since the last wake goes out in one write: under
                    // fan-out load one wake-up and one syscall carry many events.
                    loop {
                        batch.clear();
                        accepted.clear();
                        match room.take(att.key, att.serial, &mut batch, &mut accepted) {
                            Take::Closed => {
                                return Ok(kicked(&mut life.name, att.kick.try_recv().ok()))
                            }
                            Take::Done(_) => {
                                if !batch.is_empty() {
                                    let written = out.send_event(&batch)?;
                                    delivered(&cx.metrics, &accepted, written);
                                }
                                break;
                            }
                            Take::More(_) => {
                                let written = out.send_event(&batch)?;
                                delivered(&cx.metrics, &accepted, written);
                            }
                        }
                    }
                }
                recv(att.kick) -> kick => return Ok(kicked(&mut life.name, kick.ok())),
                // The connection sweep saw the client's socket leave ESTABLISHED: confirm on our
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
            }
        }
    })();
    life.reason = match result {
        Ok(reason) => reason,
        // A write that failed because the client stopped reading, after the room already cut
        // it off as slow, is reported as slow: that is the cause, the failed write the symptom.
        Err(e) => match att.kick.try_recv() {
            Ok(kick) => kicked(&mut life.name, Some(kick)),
            // Shutdown shut the socket of a stream blocked in a write.
            Err(_) if slot.is_closed() => CloseReason::Shutdown,
            Err(_) => CloseReason::from_write_error(&e),
        },
    };
}

/// Records the delivery latency of the events just written at `written` (`accepted`: when
/// each was broadcast; both [`crate::metrics::now_ns`]).
fn delivered(metrics: &Metrics, accepted: &[u64], written: u64) {
    metrics.chat_delivery.observe_since(accepted, written);
}

/// The close reason of a kick (a kick channel closed without one means the session is gone),
/// taking the session's name at that moment for the close line.
fn kicked(name: &mut String, kick: Option<Kick>) -> CloseReason {
    match kick {
        Some(kick) => {
            *name = kick.name;
            kick.reason
        }
        None => CloseReason::Left,
    }
}
