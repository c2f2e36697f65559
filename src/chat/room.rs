//! The room: sessions and their names, the history ring and broadcast.
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
//! queued requests, so a burst of posts wakes each stream once.
//!
//! The bound is the lag: a member more than `--queue` events behind (or whose next event left the
//! history) is cut off as slow at the next broadcast, and resumes from history with
//! `Last-Event-ID`. No socket is written and nothing that can block is sent under the lock
//! (STYLE.md, 5): wakes go out after it is released, and a kick is a `try_send` into its
//! stream's one-slot channel; log lines are written after the lock is released.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;
use serde_json::json;

use super::session::{RateLimiter, Token};
use crate::config::Config;
use crate::http::sse::{encode_event, CloseReason};
use crate::http::validate::valid_name;
use crate::metrics::Metrics;

/// Largest message, in bytes of UTF-8.
pub const MAX_TEXT: usize = 4096;

/// One encoded SSE event, as kept in the history.
pub type Encoded = Arc<[u8]>;

/// Most bytes [`Room::take`] copies for one write (at least one event is always taken).
pub const TAKE_BYTES: usize = 64 * 1024;

/// Why a room operation was refused. The HTTP layer turns each into a status code.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatError {
    /// The name breaks the rules (400).
    InvalidName,
    /// Another session holds the name, compared case-insensitively (409).
    NameTaken,
    /// No session holds this token (401).
    Unauthorized,
    /// The session posts too fast; retry after this long (429).
    RateLimited(Duration),
    /// The message text is empty, too long or holds NUL (400).
    InvalidText(&'static str),
    /// The room holds `--max-members` sessions already (503).
    RoomFull,
    /// The OS random source failed (503).
    Random(String),
}

impl fmt::Display for ChatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatError::InvalidName => f.write_str(
                "invalid name: use 1-32 characters, no white space or control characters",
            ),
            ChatError::NameTaken => f.write_str("name taken"),
            ChatError::Unauthorized => f.write_str("unknown or missing token"),
            ChatError::RateLimited(_) => f.write_str("too many messages: slow down"),
            ChatError::InvalidText(why) => write!(f, "invalid message: {why}"),
            ChatError::RoomFull => f.write_str("the room is full: try again later"),
            ChatError::Random(e) => write!(f, "cannot make a token: {e}"),
        }
    }
}

impl std::error::Error for ChatError {}

/// A session made by `POST /chat/join`.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The name as given.
    pub name: String,
    /// The session's token (hex).
    pub token: String,
}

/// A stream's place in the room: what to send first, then where live events arrive.
pub struct Attached {
    /// The session's name now.
    pub name: String,
    /// The session's key (token selector), for [`Room::detach`].
    pub key: u64,
    /// This attachment's serial, for [`Room::detach`].
    pub serial: u64,
    /// `welcome`, then `reset` if events were lost, then the kept events after `Last-Event-ID`,
    /// each encoded; write these before anything from [`Room::take`].
    pub backlog: Vec<Encoded>,
    /// Ready (holds one message) when live events may be waiting: then call [`Room::take`].
    /// Many events may arrive for one wake.
    pub wake: Receiver<()>,
    /// Why the room closed this stream (replaced, left, slow).
    pub kick: Receiver<Kick>,
}

/// The room closing a stream: why, and the session's name at that moment (for the close line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kick {
    /// `replaced`, `left` or `slow`.
    pub reason: CloseReason,
    /// The session's name when it was closed.
    pub name: String,
}

struct Attachment {
    serial: u64,
    /// Id of the last event this stream took (or skipped as its own).
    cursor: u64,
    kick: Sender<Kick>,
}

/// What [`Room::take`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Copied this many events; the stream is caught up.
    Done(usize),
    /// Copied this many events; more are waiting (the byte cap was reached).
    More(usize),
    /// The stream is no longer the session's (kicked, replaced, or the session is gone): its
    /// kick channel says why.
    Closed,
}

/// Who to wake after a broadcast: every attached stream's wake channel.
#[derive(Clone)]
struct Waker {
    key: u64,
    wake: Sender<()>,
}

/// Wakes to send once the lock is released.
struct Wakes {
    list: Arc<Vec<Waker>>,
    skip: Option<u64>,
}

impl Wakes {
    fn send(self) {
        for w in self.list.iter() {
            if Some(w.key) != self.skip {
                // Full: a wake is already pending and that stream will take this event too.
                // Disconnected: the stream is ending.
                let _ = w.wake.try_send(());
            }
        }
    }
}

impl Attachment {
    /// Tells the stream to close; never blocks (the channel holds one kick, and a stream is
    /// kicked at most once because the room forgets it in the same step).
    fn kick(&self, reason: CloseReason, name: &str) {
        let _ = self.kick.try_send(Kick {
            reason,
            name: name.to_string(),
        });
    }
}

struct Session {
    token: Token,
    name: String,
    limiter: RateLimiter,
    attached: Option<Attachment>,
    /// When the session lost (or never had) its stream; `None` while attached.
    detached_since: Option<Instant>,
    /// Id of the session's `join` event: a first attach without `Last-Event-ID` resumes after
    /// it, so a `POST /chat/join` client misses nothing before its stream opens.
    joined_after: u64,
    ever_attached: bool,
}

struct Kept {
    id: u64,
    /// The session whose message this is (its own messages are not sent back to it).
    from: Option<u64>,
    bytes: Encoded,
}

#[derive(Default)]
struct Inner {
    last_id: u64,
    history: VecDeque<Kept>,
    sessions: HashMap<u64, Session>,
    /// Lower-cased name → session key.
    names: HashMap<String, u64>,
    next_serial: u64,
    /// The wake channel of every attached stream (copied on write while a wake round holds it).
    wakers: Arc<Vec<Waker>>,
    /// Set by a broadcast: wake every stream (but the sender's, if `Some(Some(key))`) once the
    /// lock is released.
    pending: Option<Option<u64>>,
}

/// The chat room: sessions are data here, not threads.
pub struct Room {
    history: usize,
    queue: usize,
    grace: Duration,
    rate: f64,
    burst: f64,
    max_members: usize,
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
    /// How many [`HeldWakes`] guards live: while any does, broadcasts leave their wakes pending.
    held: AtomicUsize,
}

/// A log line to write once the lock is released.
enum Note {
    Expired(String),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn fold(name: &str) -> String {
    name.to_lowercase()
}

impl Inner {
    /// Assigns the next id, encodes, keeps and queues an event for every attached member except
    /// its sender `from` (a member's own messages). Members too far behind are cut off as slow.
    /// Returns the id.
    fn broadcast(
        &mut self,
        room: &Room,
        kind: &str,
        data: serde_json::Value,
        from: Option<u64>,
    ) -> u64 {
        self.last_id += 1;
        let id = self.last_id;
        let mut data = data;
        if let Some(obj) = data.as_object_mut() {
            if kind == "message" {
                obj.insert("id".into(), json!(id));
            }
        }
        let bytes: Encoded = encode_event(Some(kind), Some(id), &data.to_string()).into();
        self.history.push_back(Kept { id, from, bytes });
        while self.history.len() > room.history {
            self.history.pop_front();
        }
        // The bound: a stream more than `queue` events behind, or whose next event just left
        // the history, is cut off; its session stays for the grace period and it resumes from
        // history with Last-Event-ID.
        let oldest = self.history.front().map_or(id, |k| k.id);
        let mut slow = Vec::new();
        for (key, session) in self.sessions.iter_mut() {
            let Some(att) = &mut session.attached else {
                continue;
            };
            // The sender is not woken for its own message: if it had everything before it, it
            // has this one too (a sender that only posts must not fall behind).
            if from == Some(*key) && att.cursor + 1 == id {
                att.cursor = id;
            }
            if id - att.cursor > room.queue as u64 || att.cursor + 1 < oldest {
                att.kick(CloseReason::Slow, &session.name);
                session.attached = None;
                session.detached_since = Some(Instant::now());
                room.metrics.chat_slow.inc();
                slow.push(*key);
            }
        }
        self.unwake_all(&slow);
        self.pending = match self.pending {
            None => Some(from),
            Some(_) => Some(None),
        };
        id
    }

    /// Forgets the wake channel of session `key`'s stream.
    fn unwake(&mut self, key: u64) {
        self.unwake_all(&[key]);
    }

    /// Forgets the wake channels of the streams of sessions `keys`, in one pass.
    fn unwake_all(&mut self, keys: &[u64]) {
        if !keys.is_empty() {
            Arc::make_mut(&mut self.wakers).retain(|w| !keys.contains(&w.key));
        }
    }

    /// The wakes a broadcast under this lock asked for, to send once it is released.
    fn wakes(&mut self) -> Option<Wakes> {
        self.pending.take().map(|skip| Wakes {
            list: self.wakers.clone(),
            skip,
        })
    }

    /// Appends to `out` the events after the cursor of stream `serial` of session `key` (not
    /// the session's own messages), up to about [`TAKE_BYTES`] of them, and moves the cursor
    /// past them.
    fn take(&mut self, key: u64, serial: u64, out: &mut Vec<u8>) -> Take {
        let Some(att) = self
            .sessions
            .get_mut(&key)
            .and_then(|s| s.attached.as_mut())
            .filter(|a| a.serial == serial)
        else {
            return Take::Closed;
        };
        let Some(oldest) = self.history.front().map(|k| k.id) else {
            return Take::Done(0);
        };
        // Ids in the history are consecutive; a broadcast cuts off a stream before its next
        // event leaves the history, so `att.cursor + 1 >= oldest` here.
        let start = (att.cursor + 1).saturating_sub(oldest) as usize;
        let mut taken = 0;
        let before = out.len();
        for kept in self.history.range(start.min(self.history.len())..) {
            if out.len() - before >= TAKE_BYTES {
                return Take::More(taken);
            }
            att.cursor = kept.id;
            if kept.from != Some(key) {
                out.extend_from_slice(&kept.bytes);
                taken += 1;
            }
        }
        Take::Done(taken)
    }

    fn session(&mut self, token: &Token) -> Result<&mut Session, ChatError> {
        match self.sessions.get_mut(&token.selector()) {
            Some(s) if s.token.matches(token) => Ok(s),
            _ => Err(ChatError::Unauthorized),
        }
    }

    fn online(&self) -> Vec<String> {
        let mut names: Vec<String> = self.sessions.values().map(|s| s.name.clone()).collect();
        names.sort();
        names
    }

    /// Creates a session named `name` holding `token` and broadcasts its `join`.
    fn join(&mut self, room: &Room, name: &str, token: Token) -> Result<u64, ChatError> {
        if !valid_name(name) {
            return Err(ChatError::InvalidName);
        }
        let folded = fold(name);
        if self.names.contains_key(&folded) {
            return Err(ChatError::NameTaken);
        }
        // The bound on sessions; the policy when full: 503, the client retries later.
        if self.sessions.len() >= room.max_members {
            return Err(ChatError::RoomFull);
        }
        let key = token.selector();
        if self.sessions.contains_key(&key) {
            // Two random 64-bit selectors met (about 1 in 2^64 per pair of sessions).
            return Err(ChatError::Random("token collision: try again".into()));
        }
        let id = self.broadcast(room, "join", json!({ "name": name }), None);
        self.sessions.insert(
            key,
            Session {
                token,
                name: name.to_string(),
                limiter: RateLimiter::new(room.rate, room.burst, Instant::now()),
                attached: None,
                detached_since: Some(Instant::now()),
                joined_after: id,
                ever_attached: false,
            },
        );
        self.names.insert(folded, key);
        room.metrics.chat_members.inc();
        Ok(key)
    }

    /// Attaches a new stream to session `key`, closing an older one; see [`Attached`].
    fn attach(&mut self, key: u64, last_event_id: Option<u64>) -> Attached {
        self.next_serial += 1;
        let serial = self.next_serial;
        let (wake_tx, wake_rx) = bounded(1);
        let (kick_tx, kick_rx) = bounded(1);
        let last_id = self.last_id;
        let online = self.online();
        let oldest = self.history.front().map_or(last_id + 1, |k| k.id);
        let session = self.sessions.get_mut(&key).expect("caller checked the key");
        if let Some(old) = session.attached.take() {
            old.kick(CloseReason::Replaced, &session.name);
        }
        let after = match last_event_id {
            Some(k) => Some(k),
            None if !session.ever_attached => Some(session.joined_after),
            None => None,
        };
        session.attached = Some(Attachment {
            serial,
            cursor: last_id,
            kick: kick_tx,
        });
        session.detached_since = None;
        session.ever_attached = true;
        let welcome = json!({
            "name": session.name,
            "token": session.token.as_str(),
            "online": online,
            "last_id": last_id,
        });
        let name = session.name.clone();
        let mut backlog: Vec<Encoded> =
            vec![encode_event(Some("welcome"), None, &welcome.to_string()).into()];
        if let Some(k) = after {
            // Events after k were dropped from the history (or k is from another run).
            if k.saturating_add(1) < oldest || k > last_id {
                let reset = json!({ "oldest": oldest });
                backlog.push(encode_event(Some("reset"), None, &reset.to_string()).into());
            }
            backlog.extend(
                self.history
                    .iter()
                    .filter(|e| e.id > k && e.from != Some(key))
                    .map(|e| e.bytes.clone()),
            );
        }
        self.unwake(key);
        Arc::make_mut(&mut self.wakers).push(Waker { key, wake: wake_tx });
        Attached {
            name,
            key,
            serial,
            backlog,
            wake: wake_rx,
            kick: kick_rx,
        }
    }

    /// Removes session `key`, closing its stream with `reason`, and broadcasts its `leave`.
    fn remove(&mut self, room: &Room, key: u64, why: &str, reason: CloseReason) -> Option<String> {
        let session = self.sessions.remove(&key)?;
        self.names.remove(&fold(&session.name));
        room.metrics.chat_members.dec();
        if let Some(att) = session.attached {
            att.kick(reason, &session.name);
        }
        // After the kick: a stream that sees its wake channel close looks for the kick.
        self.unwake(key);
        self.broadcast(
            room,
            "leave",
            json!({ "name": session.name, "reason": why }),
            None,
        );
        Some(session.name)
    }
}

impl Room {
    /// A new, empty room sized by `config` (`history`, `queue`, `grace`, `rate`, `burst`,
    /// `max_members`).
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Arc<Room> {
        Arc::new(Room {
            history: config.history,
            queue: config.queue,
            grace: config.grace,
            rate: config.rate,
            burst: config.burst,
            max_members: config.max_members,
            metrics,
            inner: Mutex::new(Inner::default()),
            held: AtomicUsize::new(0),
        })
    }

    /// Holds back the wakes of broadcasts (from any thread) until the returned guard drops;
    /// then sends them once. The dispatcher holds them while it routes a run of queued requests,
    /// so a burst of posts wakes each stream once.
    pub fn hold_wakes(&self) -> HeldWakes<'_> {
        self.held.fetch_add(1, Ordering::AcqRel);
        HeldWakes(self)
    }

    /// Runs `step` under the room's lock, then (lock released) sends the wakes its broadcasts
    /// asked for; none while held (the [`HeldWakes`] guard sends them).
    fn locked<R>(&self, step: impl FnOnce(&mut Inner) -> R) -> R {
        let (out, wakes) = {
            let mut inner = self.inner.lock();
            let out = step(&mut inner);
            let wakes = if self.held.load(Ordering::Acquire) > 0 {
                None
            } else {
                inner.wakes()
            };
            (out, wakes)
        };
        if let Some(w) = wakes {
            w.send();
        }
        out
    }

    /// Creates a session without a stream (`POST /chat/join`) and broadcasts `join`.
    pub fn join(&self, name: &str) -> Result<Joined, ChatError> {
        let token = new_token()?;
        self.locked(|inner| inner.join(self, name, token.clone()))?;
        log::info!("chat joined name={name}");
        Ok(Joined {
            name: name.to_string(),
            token: token.as_str().to_string(),
        })
    }

    /// Creates a session and attaches a stream to it in one step (`GET /chat/stream?name=`).
    /// With `last_event_id` (an `EventSource` reconnecting to a `?name=` URL after its session
    /// expired) the kept events after it are replayed, as for any attach.
    pub fn join_and_attach(
        &self,
        name: &str,
        last_event_id: Option<u64>,
    ) -> Result<Attached, ChatError> {
        let token = new_token()?;
        let attached = self.locked(|inner| {
            let key = inner.join(self, name, token)?;
            Ok(inner.attach(key, last_event_id))
        })?;
        log::info!("chat joined name={name}");
        Ok(attached)
    }

    /// Attaches a stream to the session holding `token`; events after `last_event_id` are
    /// replayed from history first. An older stream of the session is closed as `replaced`.
    pub fn attach(&self, token: &Token, last_event_id: Option<u64>) -> Result<Attached, ChatError> {
        let mut inner = self.inner.lock();
        let key = inner.session(token)?;
        let key = key.token.selector();
        Ok(inner.attach(key, last_event_id))
    }

    /// Called when a stream ends: if it is still the session's stream, the session starts its
    /// grace period. Returns the session's current name (if it still exists).
    pub fn detach(&self, key: u64, serial: u64) -> Option<String> {
        let mut inner = self.inner.lock();
        let session = inner.sessions.get_mut(&key)?;
        if session
            .attached
            .as_ref()
            .is_some_and(|a| a.serial == serial)
        {
            session.attached = None;
            session.detached_since = Some(Instant::now());
            let name = session.name.clone();
            inner.unwake(key);
            return Some(name);
        }
        Some(session.name.clone())
    }

    /// Takes the live events waiting for the stream `serial` of session `key` (the
    /// [`Attached`] fields): copies them, encoded, into `out` (up to about [`TAKE_BYTES`]; call
    /// again on [`Take::More`]) and counts them as delivered. Call after each message on
    /// [`Attached::wake`]; the copy is made under the room's lock, the write after it.
    pub fn take(&self, key: u64, serial: u64, out: &mut Vec<u8>) -> Take {
        let took = self.inner.lock().take(key, serial, out);
        if let Take::Done(n) | Take::More(n) = took {
            self.metrics.chat_deliveries.add(n as u64);
        }
        took
    }

    /// Posts `text` from the session holding `token` to every other member; returns its id.
    pub fn post(&self, token: &Token, text: &str) -> Result<u64, ChatError> {
        self.locked(|inner| inner.post(self, token, text))
    }

    /// Renames the session holding `token`; broadcasts `rename` to everyone. Returns
    /// `(from, to)`. Counts against the session's rate limit, like a message.
    pub fn rename(&self, token: &Token, to: &str) -> Result<(String, String), ChatError> {
        let from = self.locked(|inner| inner.rename(self, token, to))?;
        if from != to {
            log::info!("chat renamed from={from} to={to}");
        }
        Ok((from, to.to_string()))
    }
}

impl Inner {
    /// [`Room::post`] under the lock.
    fn post(&mut self, room: &Room, token: &Token, text: &str) -> Result<u64, ChatError> {
        let session = self.session(token)?;
        check_text(text)?;
        session
            .limiter
            .take(Instant::now())
            .map_err(ChatError::RateLimited)?;
        let key = session.token.selector();
        let from = session.name.clone();
        let data = json!({ "from": from, "text": text, "ts": now_ms() });
        let id = self.broadcast(room, "message", data, Some(key));
        room.metrics.chat_messages.inc();
        Ok(id)
    }

    /// [`Room::rename`] under the lock; returns the old name.
    fn rename(&mut self, room: &Room, token: &Token, to: &str) -> Result<String, ChatError> {
        let session = self.session(token)?;
        let key = session.token.selector();
        if !valid_name(to) {
            return Err(ChatError::InvalidName);
        }
        // A rename is broadcast like a message, so it draws on the same bucket.
        session
            .limiter
            .take(Instant::now())
            .map_err(ChatError::RateLimited)?;
        let folded = fold(to);
        if self.names.get(&folded).is_some_and(|k| *k != key) {
            return Err(ChatError::NameTaken);
        }
        let session = self.sessions.get_mut(&key).expect("found above");
        let from = std::mem::replace(&mut session.name, to.to_string());
        if from == to {
            return Ok(from);
        }
        self.names.remove(&fold(&from));
        self.names.insert(folded, key);
        let data = json!({ "from": from, "to": to });
        self.broadcast(room, "rename", data, None);
        Ok(from)
    }
}

impl Room {
    /// Ends the session holding `token`: its stream closes, `leave` is broadcast. Returns the name.
    pub fn leave(&self, token: &Token) -> Result<String, ChatError> {
        let name = self.locked(|inner| {
            let key = inner.session(token)?.token.selector();
            inner
                .remove(self, key, "left", CloseReason::Left)
                .ok_or(ChatError::Unauthorized)
        })?;
        log::info!("chat left name={name}");
        Ok(name)
    }

    /// Names of every session, sorted.
    pub fn online(&self) -> Vec<String> {
        self.inner.lock().online()
    }

    /// Periodic work, called by the dispatcher: expires sessions that have had no stream for
    /// the grace period.
    pub fn housekeeping(&self) {
        self.expire(Instant::now());
    }

    /// Expires, as of `now`, every session detached for longer than the grace period: each
    /// gets `leave` with reason `timeout` and its name is freed. Returns how many expired.
    pub fn expire(&self, now: Instant) -> usize {
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
                .filter_map(|key| inner.remove(self, key, "timeout", CloseReason::Expired))
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

/// Holds the room's wakes while it lives (see [`Room::hold_wakes`]); sends them when dropped.
pub struct HeldWakes<'a>(&'a Room);

impl Drop for HeldWakes<'_> {
    fn drop(&mut self) {
        if self.0.held.fetch_sub(1, Ordering::AcqRel) == 1 {
            let wakes = self.0.inner.lock().wakes();
            if let Some(w) = wakes {
                w.send();
            }
        }
    }
}

/// A fresh token, made before the room's lock is taken (it reads the OS random source).
fn new_token() -> Result<Token, ChatError> {
    Token::generate().map_err(|e| ChatError::Random(e.to_string()))
}

/// Checks a message: 1–[`MAX_TEXT`] bytes, no NUL.
pub fn check_text(text: &str) -> Result<(), ChatError> {
    if text.is_empty() {
        Err(ChatError::InvalidText("empty"))
    } else if text.len() > MAX_TEXT {
        Err(ChatError::InvalidText("longer than 4096 bytes"))
    } else if text.contains('\0') {
        Err(ChatError::InvalidText("contains NUL"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(tweak: impl FnOnce(&mut Config)) -> Arc<Room> {
        let mut c = Config::default();
        tweak(&mut c);
        Room::new(&c, Arc::new(Metrics::default()))
    }

    /// Parses an encoded event into (event, id, data).
    fn parse(bytes: &[u8]) -> (String, Option<u64>, serde_json::Value) {
        let text = std::str::from_utf8(bytes).unwrap();
        let mut event = String::new();
        let mut id = None;
        let mut data = String::new();
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                event = v.into();
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = v.parse().ok();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
        (event, id, serde_json::from_str(&data).unwrap())
    }

    /// Takes every live event waiting for `att`, as its stream does when woken.
    fn drain(r: &Room, att: &Attached) -> Vec<(String, Option<u64>, serde_json::Value)> {
        let mut out = Vec::new();
        while att.wake.try_recv().is_ok() {}
        while let Take::More(_) = r.take(att.key, att.serial, &mut out) {}
        events(out)
    }

    /// The events in `bytes`, each parsed.
    fn events(bytes: Vec<u8>) -> Vec<(String, Option<u64>, serde_json::Value)> {
        String::from_utf8(bytes)
            .unwrap()
            .split_terminator("\n\n")
            .map(|e| parse(format!("{e}\n\n").as_bytes()))
            .collect()
    }

    fn token(j: &Joined) -> Token {
        Token::parse(&j.token).unwrap()
    }

    #[test]
    fn welcome_comes_first_and_a_message_reaches_others_only() {
        let r = room(|_| {});
        let a = r.join_and_attach("alice", None).unwrap();
        let (ev, id, data) = parse(&a.backlog[0]);
        assert_eq!((ev.as_str(), id), ("welcome", None));
        assert_eq!(data["name"], "alice");
        assert_eq!(data["last_id"], 1);
        assert_eq!(data["online"], json!(["alice"]));
        let bob = r.join("bob").unwrap();
        let b = r.attach(&token(&bob), None).unwrap();
        let id = r.post(&token(&bob), "hi").unwrap();
        let got = drain(&r, &a);
        assert_eq!(got[0].0, "join");
        assert_eq!(got[1].0, "message");
        assert_eq!(got[1].1, Some(id));
        assert_eq!(got[1].2["from"], "bob");
        assert_eq!(got[1].2["text"], "hi");
        assert_eq!(got[1].2["id"], id);
        assert!(drain(&r, &b).is_empty(), "no echo of one's own message");
    }

    #[test]
    fn names_are_unique_case_insensitively_and_renames_free_the_old_one() {
        let r = room(|_| {});
        let a = r.join("Alice").unwrap();
        assert_eq!(r.join("alice").unwrap_err(), ChatError::NameTaken);
        assert_eq!(r.join("ALICE").unwrap_err(), ChatError::NameTaken);
        assert_eq!(r.join("a b").unwrap_err(), ChatError::InvalidName);
        let b = r.join("bob").unwrap();
        assert_eq!(
            r.rename(&token(&b), "aLiCe").unwrap_err(),
            ChatError::NameTaken
        );
        // A session may change the case of its own name.
        r.rename(&token(&a), "ALICE").unwrap();
        r.rename(&token(&a), "carol").unwrap();
        r.join("alice").unwrap();
        assert_eq!(r.online(), vec!["alice", "bob", "carol"]);
    }

    #[test]
    fn resume_after_k_replays_exactly_the_later_events_then_live_ones() {
        let r = room(|_| {});
        let watcher = r.join("w").unwrap();
        let poster = r.join("p").unwrap();
        let w = r.attach(&token(&watcher), None).unwrap();
        let ids: Vec<u64> = (0..5)
            .map(|i| r.post(&token(&poster), &format!("m{i}")).unwrap())
            .collect();
        drop(w);
        let w2 = r.attach(&token(&watcher), Some(ids[1])).unwrap();
        let replayed: Vec<u64> = w2.backlog[1..]
            .iter()
            .map(|b| parse(b).1.unwrap())
            .collect();
        assert_eq!(replayed, ids[2..]);
        let live = r.post(&token(&poster), "live").unwrap();
        assert_eq!(drain(&r, &w2)[0].1, Some(live));
    }

    #[test]
    fn a_resume_older_than_the_history_gets_reset_first() {
        let r = room(|c| c.history = 3);
        let w = r.join("w").unwrap();
        let p = r.join("p").unwrap();
        for i in 0..10 {
            r.post(&token(&p), &format!("m{i}")).unwrap();
        }
        let a = r.attach(&token(&w), Some(1)).unwrap();
        let (ev, _, data) = parse(&a.backlog[1]);
        assert_eq!(ev, "reset");
        assert_eq!(data["oldest"], 10);
        assert_eq!(a.backlog.len(), 2 + 3);
    }

    #[test]
    fn own_messages_are_not_replayed() {
        let r = room(|_| {});
        let a = r.join("a").unwrap();
        let b = r.join("b").unwrap();
        r.post(&token(&a), "mine").unwrap();
        let theirs = r.post(&token(&b), "theirs").unwrap();
        let att = r.attach(&token(&a), Some(0)).unwrap();
        let messages: Vec<_> = att.backlog[1..]
            .iter()
            .map(|b| parse(b))
            .filter(|e| e.0 == "message")
            .collect();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].1, Some(theirs));
    }

    #[test]
    fn a_first_attach_after_post_join_gets_what_came_since_joining() {
        let r = room(|_| {});
        let a = r.join("a").unwrap();
        let b = r.join("b").unwrap();
        let m = r.post(&token(&b), "before your stream").unwrap();
        let att = r.attach(&token(&a), None).unwrap();
        let ids: Vec<_> = att.backlog[1..].iter().map(|b| parse(b).1).collect();
        // b's join (after a's) and the message.
        assert_eq!(ids, vec![Some(m - 1), Some(m)]);
        // A later attach without Last-Event-ID is live only.
        let again = r.attach(&token(&a), None).unwrap();
        assert_eq!(again.backlog.len(), 1);
        assert_eq!(att.kick.try_recv().unwrap().reason, CloseReason::Replaced);
    }

    #[test]
    fn a_full_queue_cuts_the_member_off_as_slow_and_others_go_on() {
        let metrics = Arc::new(Metrics::default());
        let c = Config {
            queue: 2,
            ..Config::default()
        };
        let r = Room::new(&c, metrics.clone());
        let slow = r.join("slow").unwrap();
        let fast = r.join("fast").unwrap();
        let p = r.join("p").unwrap();
        let s = r.attach(&token(&slow), None).unwrap();
        let f = r.attach(&token(&fast), None).unwrap();
        let _ = drain(&r, &s);
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(r.post(&token(&p), &format!("m{i}")).unwrap());
            assert_eq!(drain(&r, &f).len(), 1);
        }
        // Cut off at the third event, the first more than `queue` behind.
        assert_eq!(s.kick.try_recv().unwrap().reason, CloseReason::Slow);
        assert_eq!(metrics.chat_slow.get(), 1);
        assert_eq!(r.take(s.key, s.serial, &mut Vec::new()), Take::Closed);
        assert!(s.wake.try_recv().is_ok(), "the pending wake is still there");
        assert!(s.wake.try_recv().is_err(), "and then the channel is closed");
        // Reattaching after the last event it got gives it the rest.
        let s2 = r.attach(&token(&slow), Some(ids[1])).unwrap();
        let rest: Vec<_> = s2.backlog[1..].iter().map(|b| parse(b).1).collect();
        assert_eq!(rest, ids[2..].iter().map(|i| Some(*i)).collect::<Vec<_>>());
    }

    #[test]
    fn a_stream_whose_next_event_leaves_the_history_is_cut_off() {
        let r = room(|c| {
            c.history = 3;
            c.queue = 100;
        });
        let w = r.join("w").unwrap();
        let p = r.join("p").unwrap();
        let att = r.attach(&token(&w), None).unwrap();
        for i in 0..3 {
            r.post(&token(&p), &format!("m{i}")).unwrap();
        }
        assert!(
            att.kick.try_recv().is_err(),
            "three behind still fit the history"
        );
        r.post(&token(&p), "m3").unwrap();
        assert_eq!(att.kick.try_recv().unwrap().reason, CloseReason::Slow);
    }

    #[test]
    fn many_events_wait_behind_one_wake_and_go_out_in_one_take() {
        let r = room(|_| {});
        let w = r.join("w").unwrap();
        let p = r.join("p").unwrap();
        let att = r.attach(&token(&w), None).unwrap();
        let ids: Vec<u64> = (0..10)
            .map(|i| r.post(&token(&p), &format!("m{i}")).unwrap())
            .collect();
        assert!(att.wake.try_recv().is_ok());
        assert!(att.wake.try_recv().is_err(), "one wake for ten events");
        let mut out = Vec::new();
        assert_eq!(r.take(att.key, att.serial, &mut out), Take::Done(10));
        let got: Vec<u64> = events(out).into_iter().map(|e| e.1.unwrap()).collect();
        assert_eq!(got, ids);
        assert_eq!(r.take(att.key, att.serial, &mut Vec::new()), Take::Done(0));
    }

    #[test]
    fn a_member_that_only_posts_is_not_cut_off() {
        let r = room(|c| {
            c.queue = 3;
            c.rate = 1000.0;
            c.burst = 1000.0;
        });
        let a = r.join("a").unwrap();
        let att = r.attach(&token(&a), None).unwrap();
        for i in 0..10 {
            r.post(&token(&a), &format!("m{i}")).unwrap();
        }
        assert!(att.kick.try_recv().is_err());
        assert!(
            att.wake.try_recv().is_err(),
            "not woken for its own messages"
        );
        assert!(drain(&r, &att).is_empty());
    }

    #[test]
    fn held_wakes_go_out_once_when_the_guard_drops() {
        let r = room(|_| {});
        let w = r.join("w").unwrap();
        let p = r.join("p").unwrap();
        let att = r.attach(&token(&w), None).unwrap();
        let held = r.hold_wakes();
        r.post(&token(&p), "one").unwrap();
        r.post(&token(&p), "two").unwrap();
        assert!(att.wake.try_recv().is_err(), "no wake while held");
        drop(held);
        assert!(att.wake.try_recv().is_ok());
        assert_eq!(drain(&r, &att).len(), 2);
    }

    #[test]
    fn a_take_stops_at_the_byte_cap_and_the_next_goes_on_from_there() {
        let r = room(|c| {
            c.rate = 1000.0;
            c.burst = 1000.0;
        });
        let w = r.join("w").unwrap();
        let p = r.join("p").unwrap();
        let att = r.attach(&token(&w), None).unwrap();
        let big = "x".repeat(MAX_TEXT);
        let n = 2 * TAKE_BYTES / MAX_TEXT;
        for _ in 0..n {
            r.post(&token(&p), &big).unwrap();
        }
        let mut taken = 0;
        let mut takes = 0;
        loop {
            let mut out = Vec::new();
            takes += 1;
            match r.take(att.key, att.serial, &mut out) {
                Take::More(k) => taken += k,
                Take::Done(k) => {
                    taken += k;
                    break;
                }
                Take::Closed => panic!("closed"),
            }
            assert!(out.len() < TAKE_BYTES + MAX_TEXT + 100);
        }
        assert_eq!(taken, n);
        assert!(takes >= 2);
    }

    #[test]
    fn sessions_expire_after_the_grace_period_without_a_stream() {
        let metrics = Arc::new(Metrics::default());
        let c = Config {
            grace: Duration::from_secs(30),
            ..Config::default()
        };
        let r = Room::new(&c, metrics.clone());
        let watcher = r.join_and_attach("w", None).unwrap();
        let gone = r.join("gone").unwrap();
        let stays = r.join_and_attach("stays", None).unwrap();
        assert_eq!(metrics.chat_members.get(), 3);
        let now = Instant::now();
        assert_eq!(r.expire(now), 0);
        // Only the session without a stream expires.
        assert_eq!(r.expire(now + Duration::from_secs(31)), 1);
        assert_eq!(r.online(), vec!["stays", "w"]);
        assert_eq!(metrics.chat_members.get(), 2);
        // When the stream of "stays" ends, its grace period starts.
        r.detach(stays.key, stays.serial);
        let detached = Instant::now();
        assert_eq!(r.expire(detached + Duration::from_secs(29)), 0);
        assert_eq!(r.expire(detached + Duration::from_secs(31)), 1);
        assert_eq!(r.online(), vec!["w"]);
        let leave = drain(&r, &watcher)
            .into_iter()
            .find(|e| e.0 == "leave")
            .unwrap();
        assert_eq!(leave.2, json!({ "name": "gone", "reason": "timeout" }));
        assert_eq!(
            r.post(&token(&gone), "x").unwrap_err(),
            ChatError::Unauthorized
        );
        r.join("gone").unwrap();
    }

    #[test]
    fn a_stale_detach_does_not_detach_the_newer_stream() {
        let r = room(|_| {});
        let j = r.join("a").unwrap();
        let first = r.attach(&token(&j), None).unwrap();
        let _second = r.attach(&token(&j), None).unwrap();
        r.detach(first.key, first.serial);
        assert_eq!(r.expire(Instant::now() + Duration::from_secs(3600)), 0);
    }

    #[test]
    fn one_session_cannot_act_as_another() {
        let r = room(|_| {});
        let a = r.join("a").unwrap();
        let b = r.join("b").unwrap();
        // Same selector as a, wrong secret.
        let forged = format!("{}{}", &a.token[..16], &b.token[16..]);
        let forged = Token::parse(&forged).unwrap();
        assert_eq!(r.post(&forged, "x").unwrap_err(), ChatError::Unauthorized);
        assert_eq!(r.rename(&forged, "z").unwrap_err(), ChatError::Unauthorized);
        assert_eq!(r.leave(&forged).unwrap_err(), ChatError::Unauthorized);
        assert!(r.attach(&forged, None).is_err());
        assert_eq!(r.online(), vec!["a", "b"]);
    }

    #[test]
    fn leaving_closes_the_stream_and_frees_the_name() {
        let r = room(|_| {});
        let w = r.join_and_attach("w", None).unwrap();
        let a = r.join("a").unwrap();
        let s = r.attach(&token(&a), None).unwrap();
        assert_eq!(r.leave(&token(&a)).unwrap(), "a");
        assert_eq!(s.kick.try_recv().unwrap().reason, CloseReason::Left);
        let leave = drain(&r, &w).pop().unwrap();
        assert_eq!(leave.2, json!({ "name": "a", "reason": "left" }));
        assert_eq!(r.leave(&token(&a)).unwrap_err(), ChatError::Unauthorized);
        r.join("A").unwrap();
    }

    #[test]
    fn the_rate_limit_answers_with_a_wait() {
        let r = room(|c| {
            c.rate = 1.0;
            c.burst = 2.0;
        });
        let a = r.join("a").unwrap();
        r.post(&token(&a), "1").unwrap();
        r.post(&token(&a), "2").unwrap();
        match r.post(&token(&a), "3") {
            Err(ChatError::RateLimited(d)) => assert!(d <= Duration::from_secs(1)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_full_room_refuses_joins_until_someone_leaves() {
        let r = room(|c| c.max_members = 2);
        let a = r.join("a").unwrap();
        r.join("b").unwrap();
        assert_eq!(r.join("c").unwrap_err(), ChatError::RoomFull);
        r.leave(&token(&a)).unwrap();
        r.join("c").unwrap();
    }

    #[test]
    fn texts_are_checked() {
        assert!(check_text("hi\nthere").is_ok());
        assert!(check_text(&"x".repeat(4096)).is_ok());
        assert!(check_text("").is_err());
        assert!(check_text(&"x".repeat(4097)).is_err());
        assert!(check_text("a\0b").is_err());
    }
}
