//! The chat room: sessions, names, the history ring and broadcast, and how the rest of the
//! server calls them.
//!
//! Everything lives under one `parking_lot::Mutex`. Broadcasting assigns the event its id,
//! encodes it once and appends it to the history ring; that ring is every member's queue. Each
//! attached stream has a cursor (the last id it took) kept under the same lock, so a stream takes
//! events in id order without gap or duplicate; attaching snapshots the history after
//! `Last-Event-ID` and sets the cursor under the same lock, so a resuming member gets every event
//! exactly once, also when messages arrive during the handoff.
//!
//! Waking is coalesced: each stream has a `bounded(1)` wake channel, poked with `try_send` after
//! the lock is released (a wake already pending makes it a no-op). A woken stream takes
//! everything after its cursor with [`Room::take`] and writes it in one write, so under load one
//! wake-up and one syscall carry many events instead of one each; at rest it is one per event,
//! as before. The dispatcher holds the wakes ([`Room::hold_wakes`]) while it routes a run of
//! queued requests, so a burst of posts wakes each stream once. The round runs on a thread of
//! its own ([`rounds`]), so no broadcaster waits for it: broadcasts made while one runs share
//! the next.
//!
//! The bound is the lag: a member more than `--queue` events behind (or whose next event left the
//! history) is cut off as slow at the next broadcast, and resumes from history with
//! `Last-Event-ID`. No socket is written and nothing that can block is sent under the lock
//! (STYLE.md, 5): wakes go out after it is released, and a kick is a `try_send` into its
//! stream's one-slot channel; log lines are written after the lock is released.
//!
//! - [`Room`] (this file): the calls. Each takes the lock, runs one step of [`state::Inner`],
//!   and after releasing it sends the wakes and writes the log lines.
//! - [`state`]: everything under the lock.
//! - [`wakes`]: the coalesced wake round.
//! - [`rounds`]: where rounds run: a thread of their own, so a broadcaster never waits for one.
//! - [`types`]: what the calls take and return, and the room's refusals.

mod events;
mod name;
mod on_redis;
mod rounds;
mod state;
pub(crate) mod types;
mod wakes;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use parking_lot::Mutex;

use super::session::Token;
use super::shared::SharedChat;
use crate::config::Config;
use crate::http::validate::normalize_name;
use crate::metrics::Metrics;
use crate::stream::CloseReason;
use crate::threads::Threads;
use rounds::{Asked, Rounds};
use state::{Inner, Limits};
#[cfg(test)]
pub(crate) use state::{PRESENCE_MAX, WELCOME_NAMES};
pub(crate) use types::{Attached, ChatError, Encoded, Joined, Kick, Take, UsersPage, TAKE_EVENTS};

/// The chat room: sessions are data here, not threads.
///
/// Two engines sit behind its calls. Without `--redis`, the local one: everything is
/// [`state::Inner`], in this process. With it, ids, order, the history, sessions, names, rates
/// and expiry are Redis's ([`SharedChat`]; each call one script, run before the room's lock is
/// taken), and `Inner` keeps what is per member on this node: the history as a mirror of
/// Redis's stream, the streams attached here, their cursors and wakes (`on_redis.rs`). Fan-out,
/// cursors, the slow cut-off and the coalesced wakes are the same code in both.
pub(crate) struct Room {
    grace: Duration,
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
    /// How many [`HeldWakes`] guards live: while any does, broadcasts leave their wakes pending.
    held: AtomicUsize,
    /// The chat on Redis, with `--redis`.
    shared: Option<Arc<SharedChat>>,
    /// Where wake rounds run (see [`rounds`]).
    rounds: Rounds,
    /// This room, for the round thread to hold.
    me: Weak<Room>,
}

/// A log line to write once the lock is released.
enum Note {
    Expired(String),
}

impl Room {
    /// A new, empty room sized by `config` (`history`, `queue`, `grace`, `rate`, `burst`,
    /// `max_members`).
    pub(crate) fn new(config: &Config, metrics: Arc<Metrics>) -> Arc<Room> {
        Room::with_engine(config, metrics, None)
    }

    /// The room of the chat on Redis (`--redis`): its node's half of it; the reader and the
    /// keeper ([`crate::chat::shared`]) do the rest.
    pub(crate) fn on_redis(
        config: &Config,
        metrics: Arc<Metrics>,
        shared: Arc<SharedChat>,
    ) -> Arc<Room> {
        Room::with_engine(config, metrics, Some(shared))
    }

    fn with_engine(
        config: &Config,
        metrics: Arc<Metrics>,
        shared: Option<Arc<SharedChat>>,
    ) -> Arc<Room> {
        let limits = Limits {
            history: config.history,
            queue: config.queue,
            rate: config.rate,
            burst: config.burst,
            max_members: config.max_members,
            lines: config.chat_tcp.is_some(),
        };
        Arc::new_cyclic(|me| Room {
            grace: config.grace,
            inner: Mutex::new(Inner::new(limits, metrics.clone())),
            metrics,
            held: AtomicUsize::new(0),
            shared,
            rounds: Rounds::default(),
            me: me.clone(),
        })
    }

    /// From now on wake rounds run on a `chat-waker` thread registered in `threads` (started
    /// by the first broadcast, ended when nothing is attached or `shutdown` disconnects); until
    /// this is called, each broadcaster runs its round itself (see [`rounds`]).
    pub(crate) fn run_rounds_on(&self, threads: Threads, shutdown: Receiver<()>) {
        self.rounds.run_on(threads, shutdown);
    }

    /// The chat on Redis, if this room is on it: its calls do I/O then, and must not run on
    /// the dispatcher.
    pub(crate) fn shared(&self) -> Option<&Arc<SharedChat>> {
        self.shared.as_ref()
    }

    /// Holds back the wakes of broadcasts (from any thread) until the returned guard drops;
    /// then asks for one round. The dispatcher holds them while it routes a run of queued requests,
    /// so a burst of posts wakes each stream once.
    pub(crate) fn hold_wakes(&self) -> HeldWakes<'_> {
        self.held.fetch_add(1, Ordering::AcqRel);
        HeldWakes(self)
    }

    /// Runs `step` under the room's lock, then (lock released) asks for the wake round its
    /// broadcasts want; none while held (the [`HeldWakes`] guard asks).
    fn locked<R>(&self, step: impl FnOnce(&mut Inner) -> R) -> R {
        let (out, wanted, idle) = {
            let mut inner = self.inner.lock();
            let out = step(&mut inner);
            // With no stream attached a round has nobody to wake.
            let idle = inner.idle();
            let wanted = self.held.load(Ordering::Acquire) == 0 && inner.wants_round() && !idle;
            (out, wanted, idle)
        };
        self.after_lock(wanted, idle);
        out
    }

    /// Once the lock is released: asks for a round if one is `wanted`, or, when nothing is
    /// attached any more (`idle`), lets the round thread see that and end.
    fn after_lock(&self, wanted: bool, idle: bool) {
        if wanted || (idle && self.rounds.running()) {
            self.wake();
        }
    }

    /// Has the round thread run a round, or runs it here where no thread can.
    fn wake(&self) {
        let Some(room) = self.me.upgrade() else {
            return self.round();
        };
        let asked = self.rounds.ask(move |wanted, shutdown| {
            rounds::run(
                &room.rounds,
                wanted,
                shutdown,
                || room.round(),
                || room.inner.lock().idle(),
            )
        });
        if asked == Asked::Inline {
            self.round();
        }
    }

    /// One wake round: the wakes the broadcasts since the last round asked for, sent once the
    /// lock is released.
    fn round(&self) {
        let wakes = self.inner.lock().wakes();
        if let Some(w) = wakes {
            w.send();
        }
    }

    /// Creates a session without a stream (`POST /chat/join`); its join is announced in the
    /// next `presence` event.
    pub(crate) fn join(&self, name: &str) -> Result<Joined, ChatError> {
        // The name as it is kept and shown: NFC (see `normalize_name`).
        let name = &normalize_name(name).ok_or(ChatError::InvalidName)?;
        if let Some(sh) = &self.shared {
            return self.join_shared(sh, name);
        }
        let token = new_token()?;
        self.locked(|inner| inner.join(name, token.clone()))?;
        log::info!("chat joined name={name}");
        Ok(Joined {
            name: name.to_string(),
            token: token.as_str().to_string(),
        })
    }

    /// Creates a session and attaches a stream to it in one step (`GET /chat/stream?name=`).
    /// With `last_event_id` (an `EventSource` reconnecting to a `?name=` URL after its session
    /// expired) the kept events after it are replayed, as for any attach.
    pub(crate) fn join_and_attach(
        &self,
        name: &str,
        last_event_id: Option<u64>,
    ) -> Result<Attached, ChatError> {
        let name = &normalize_name(name).ok_or(ChatError::InvalidName)?;
        if let Some(sh) = &self.shared {
            return self.join_and_attach_shared(sh, name, last_event_id);
        }
        let token = new_token()?;
        let attached = self.locked(|inner| {
            let key = inner.join(name, token)?;
            Ok(inner.attach(key, last_event_id, false))
        })?;
        log::info!("chat joined name={name}");
        Ok(attached)
    }

    /// Creates a session for a TCP member and attaches it in one step: it reads the events'
    /// text lines (no `welcome`), and acts through the returned token, which only its own
    /// thread ever holds (so nothing else can attach to it or act for it).
    pub(crate) fn join_lines(&self, name: &str) -> Result<(Token, Attached), ChatError> {
        let name = &normalize_name(name).ok_or(ChatError::InvalidName)?;
        if let Some(sh) = &self.shared {
            return self.join_lines_shared(sh, name);
        }
        let token = new_token()?;
        let attached = self.locked(|inner| {
            let key = inner.join(name, token.clone())?;
            let mut att = inner.attach(key, None, true);
            // Exact, and counting the new member: what its greeting says.
            att.online_count = inner.sessions.len();
            Ok(att)
        })?;
        log::info!("chat joined name={name}");
        Ok((token, attached))
    }

    /// Whether the room holds `--max-members` sessions now (a join would be refused): checked
    /// before a TCP connection gets a thread.
    pub(crate) fn is_full(&self) -> bool {
        self.inner.lock().is_full()
    }

    /// Attaches a stream to the session holding `token`; events after `last_event_id` are
    /// replayed from history first. An older stream of the session is closed as `replaced`.
    pub(crate) fn attach(
        &self,
        token: &Token,
        last_event_id: Option<u64>,
    ) -> Result<Attached, ChatError> {
        if let Some(sh) = &self.shared {
            return self.attach_shared(sh, token, last_event_id, None);
        }
        let mut inner = self.inner.lock();
        inner.session(token)?;
        let key = token.selector();
        Ok(inner.attach(key, last_event_id, false))
    }

    /// Called when a stream ends: if it is still the session's stream, the session starts its
    /// grace period. Returns the session's current name (if it still exists).
    pub(crate) fn detach(&self, key: u64, serial: u64) -> Option<String> {
        let (name, idle) = {
            let mut inner = self.inner.lock();
            let name = inner.detach(key, serial);
            if self.shared.is_some() {
                inner.forget_unattached(key);
            }
            (name, inner.idle())
        };
        // The last stream gone: the round thread ends.
        self.after_lock(false, idle);
        if let Some(sh) = &self.shared {
            sh.detached(key, serial);
        }
        name
    }

    /// Why the room closed the stream `serial` (replaced, left, slow), if it did; asked once,
    /// by the stream, when its wake channel closes or a take finds it closed.
    pub(crate) fn kick_of(&self, serial: u64) -> Option<Kick> {
        self.inner.lock().kick_of(serial)
    }

    /// Takes the live events waiting for the stream `serial` of session `key` (the
    /// [`Attached`] fields): hands them out, encoded, in `out` (as many as fit; call again on
    /// [`Take::More`]), with when each was broadcast in `accepted` at the same index (for the
    /// delivery latency, once written), and counts them as delivered. Call after each message
    /// on [`Attached::wake`]; the events are taken under the room's lock, written after it.
    pub(crate) fn take(
        &self,
        key: u64,
        serial: u64,
        out: &mut [Option<Encoded>],
        accepted: &mut [u64],
    ) -> Take {
        let took = self.inner.lock().take(key, serial, out, accepted);
        if let Take::Done(n) | Take::More(n) = took {
            self.metrics.chat_deliveries.add(n as u64);
        }
        took
    }

    /// Posts `text` from the session holding `token` to every other member; returns its id.
    pub(crate) fn post(&self, token: &Token, text: &str) -> Result<u64, ChatError> {
        if let Some(sh) = &self.shared {
            return self.post_shared(sh, token, text);
        }
        self.locked(|inner| inner.post(token, text))
    }

    /// Renames the session holding `token`; broadcasts `rename` to everyone. Returns
    /// `(from, to)`. Counts against the session's rate limit, like a message.
    pub(crate) fn rename(&self, token: &Token, to: &str) -> Result<(String, String), ChatError> {
        let (from, to) = match &self.shared {
            Some(sh) => self.rename_shared(sh, token, to)?,
            None => self.locked(|inner| inner.rename(token, to))?,
        };
        if from != to {
            log::info!("chat renamed from={from} to={to}");
        }
        Ok((from, to))
    }
}

impl Room {
    /// Ends the session holding `token`: its stream closes, its leave is announced in the next
    /// `presence` event. Returns the name.
    pub(crate) fn leave(&self, token: &Token) -> Result<String, ChatError> {
        if let Some(sh) = &self.shared {
            return self.leave_shared(sh, token);
        }
        let name = self.locked(|inner| {
            inner.session(token)?;
            let key = token.selector();
            inner
                .remove(key, "left", CloseReason::Left)
                .ok_or(ChatError::Unauthorized)
        })?;
        log::info!("chat left name={name}");
        Ok(name)
    }

    /// The name of the session holding `token`, if there is one (the local room only: on
    /// Redis the attach checks the name, [`Room::attach_as`]).
    pub(crate) fn name_of(&self, token: &Token) -> Option<String> {
        self.inner
            .lock()
            .session(token)
            .ok()
            .map(|s| s.name.to_string())
    }

    /// Names of every session, sorted.
    #[cfg(test)]
    pub(crate) fn online(&self) -> Vec<String> {
        self.inner.lock().online()
    }

    /// A page of the sessions' names (`GET /chat/users`): up to `limit` after `after`.
    pub(crate) fn users(&self, after: Option<&str>, limit: usize) -> Result<UsersPage, ChatError> {
        match &self.shared {
            Some(sh) => sh.users(after, limit),
            None => Ok(self.inner.lock().users(after, limit)),
        }
    }

    /// Lets go of the room's tables after a peak of sessions (see [`crate::sys::mem::shrink_map`]).
    pub(crate) fn shrink(&self) {
        self.inner.lock().shrink();
    }

    /// Periodic work, called by the dispatcher (every 250 ms): expires sessions that have had
    /// no stream for the grace period, and announces the joins and leaves since the last
    /// `presence` event.
    pub(crate) fn housekeeping(&self) {
        if self.shared.is_some() {
            // Redis's: the keeper thread does it (I/O, not on the dispatcher).
            return;
        }
        self.expire(Instant::now());
        self.flush_presence();
    }

    /// Announces the joins and leaves waiting, as one `presence` event; returns whether there
    /// were any.
    pub(crate) fn flush_presence(&self) -> bool {
        self.locked(|inner| inner.flush_presence())
    }

    /// Expires, as of `now`, every session detached for longer than the grace period: each
    /// leaves with reason `timeout` (in the next `presence` event) and its name is freed. Returns how many expired.
    pub(crate) fn expire(&self, now: Instant) -> usize {
        let notes: Vec<Note> = self.locked(|inner| {
            let due: Vec<u64> = inner
                .sessions
                .iter()
                .filter(|(_, s)| {
                    s.detached_since
                        .is_some_and(|t| now.saturating_duration_since(t) >= self.grace)
                })
                .map(|(k, _)| *k)
                .collect();
            due.into_iter()
                .filter_map(|key| inner.remove(key, "timeout", CloseReason::Expired))
                .map(Note::Expired)
                .collect()
        });
        for note in &notes {
            match note {
                Note::Expired(name) => log::info!("chat expired name={name}"),
            }
        }
        notes.len()
    }
}

/// Holds the room's wakes while it lives (see [`Room::hold_wakes`]); asks for their round when
/// dropped.
pub(crate) struct HeldWakes<'a>(&'a Room);

impl Drop for HeldWakes<'_> {
    fn drop(&mut self) {
        if self.0.held.fetch_sub(1, Ordering::AcqRel) == 1 {
            let wanted = self.0.inner.lock().wants_round();
            self.0.after_lock(wanted, false);
        }
    }
}

/// A fresh token, made before the room's lock is taken (it reads the OS random source).
fn new_token() -> Result<Token, ChatError> {
    Token::generate().map_err(|e| ChatError::Random(e.to_string()))
}

#[cfg(test)]
mod tests;
