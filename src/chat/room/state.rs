//! The room's state, all of it under the room's one lock: sessions and their names, the history
//! ring that is every member's queue, each attached stream's cursor, and the wake channels.
//! Nothing here blocks, writes a socket or logs; [`super::Room`] takes the lock, calls in, and
//! does those after releasing it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Sender};
use serde_json::json;

use super::types::{check_text, Attached, ChatError, Encoded, Kick, Take, TAKE_BYTES};
use super::wakes::{Waker, Wakes};
use crate::chat::session::{RateLimiter, Token};
use crate::http::sse::encode_event;
use crate::http::validate::valid_name;
use crate::metrics::Metrics;
use crate::stream::CloseReason;

/// The room's sizes, from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Events kept in the history.
    pub(crate) history: usize,
    /// Events a member may fall behind before it is cut off as slow.
    pub(crate) queue: usize,
    /// Messages per second per session, and the burst allowed.
    pub(crate) rate: f64,
    pub(crate) burst: f64,
    /// Sessions at once.
    pub(crate) max_members: usize,
}

pub(crate) struct Attachment {
    pub(crate) serial: u64,
    /// Id of the last event this stream took (or skipped as its own).
    cursor: u64,
    kick: Sender<Kick>,
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

pub(crate) struct Session {
    pub(crate) token: Token,
    pub(crate) name: String,
    limiter: RateLimiter,
    pub(crate) attached: Option<Attachment>,
    /// When the session lost (or never had) its stream; `None` while attached.
    pub(crate) detached_since: Option<Instant>,
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
    /// When it was broadcast (the post accepted), [`crate::metrics::now_ns`]: the start of its
    /// delivery latency.
    at: u64,
}

pub(crate) struct Inner {
    limits: Limits,
    metrics: Arc<Metrics>,
    pub(crate) last_id: u64,
    history: VecDeque<Kept>,
    pub(crate) sessions: HashMap<u64, Session>,
    /// Lower-cased name → session key.
    names: HashMap<String, u64>,
    next_serial: u64,
    /// The wake channel of every attached stream (copied on write while a wake round holds it).
    wakers: Arc<Vec<Waker>>,
    /// Set by a broadcast: wake every stream (but the sender's, if `Some(Some(key))`) once the
    /// lock is released.
    pending: Option<Option<u64>>,
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
    /// An empty room's state.
    pub(crate) fn new(limits: Limits, metrics: Arc<Metrics>) -> Inner {
        Inner {
            limits,
            metrics,
            last_id: 0,
            history: VecDeque::new(),
            sessions: HashMap::new(),
            names: HashMap::new(),
            next_serial: 0,
            wakers: Arc::default(),
            pending: None,
        }
    }
}

impl Inner {
    /// Assigns the next id, encodes, keeps and queues an event for every attached member except
    /// its sender `from` (a member's own messages). Members too far behind are cut off as slow.
    /// Returns the id.
    pub(crate) fn broadcast(
        &mut self,
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
        self.history.push_back(Kept {
            id,
            from,
            bytes,
            at: crate::metrics::now_ns(),
        });
        while self.history.len() > self.limits.history {
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
            if id - att.cursor > self.limits.queue as u64 || att.cursor + 1 < oldest {
                att.kick(CloseReason::Slow, &session.name);
                session.attached = None;
                session.detached_since = Some(Instant::now());
                self.metrics.chat_slow.inc();
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
    pub(crate) fn unwake(&mut self, key: u64) {
        self.unwake_all(&[key]);
    }

    /// Forgets the wake channels of the streams of sessions `keys`, in one pass.
    pub(crate) fn unwake_all(&mut self, keys: &[u64]) {
        if !keys.is_empty() {
            Arc::make_mut(&mut self.wakers).retain(|w| !keys.contains(&w.key));
        }
    }

    /// The wakes a broadcast under this lock asked for, to send once it is released.
    pub(crate) fn wakes(&mut self) -> Option<Wakes> {
        self.pending.take().map(|skip| Wakes {
            list: self.wakers.clone(),
            skip,
        })
    }

    /// Appends to `out` the events after the cursor of stream `serial` of session `key` (not
    /// the session's own messages), up to about [`TAKE_BYTES`] of them, and moves the cursor
    /// past them; appends to `accepted` when each was broadcast.
    pub(crate) fn take(
        &mut self,
        key: u64,
        serial: u64,
        out: &mut Vec<u8>,
        accepted: &mut Vec<u64>,
    ) -> Take {
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
                accepted.push(kept.at);
                taken += 1;
            }
        }
        Take::Done(taken)
    }

    pub(crate) fn session(&mut self, token: &Token) -> Result<&mut Session, ChatError> {
        match self.sessions.get_mut(&token.selector()) {
            Some(s) if s.token.matches(token) => Ok(s),
            _ => Err(ChatError::Unauthorized),
        }
    }

    pub(crate) fn online(&self) -> Vec<String> {
        let mut names: Vec<String> = self.sessions.values().map(|s| s.name.clone()).collect();
        names.sort();
        names
    }

    /// Creates a session named `name` holding `token` and broadcasts its `join`.
    pub(crate) fn join(&mut self, name: &str, token: Token) -> Result<u64, ChatError> {
        if !valid_name(name) {
            return Err(ChatError::InvalidName);
        }
        let folded = fold(name);
        if self.names.contains_key(&folded) {
            return Err(ChatError::NameTaken);
        }
        // The bound on sessions; the policy when full: 503, the client retries later.
        if self.sessions.len() >= self.limits.max_members {
            return Err(ChatError::RoomFull);
        }
        let key = token.selector();
        if self.sessions.contains_key(&key) {
            // Two random 64-bit selectors met (about 1 in 2^64 per pair of sessions).
            return Err(ChatError::Random("token collision: try again".into()));
        }
        let id = self.broadcast("join", json!({ "name": name }), None);
        self.sessions.insert(
            key,
            Session {
                token,
                name: name.to_string(),
                limiter: RateLimiter::new(self.limits.rate, self.limits.burst, Instant::now()),
                attached: None,
                detached_since: Some(Instant::now()),
                joined_after: id,
                ever_attached: false,
            },
        );
        self.names.insert(folded, key);
        self.metrics.chat_members.inc();
        Ok(key)
    }

    /// Attaches a new stream to session `key`, closing an older one; see [`Attached`].
    pub(crate) fn attach(&mut self, key: u64, last_event_id: Option<u64>) -> Attached {
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
    pub(crate) fn remove(&mut self, key: u64, why: &str, reason: CloseReason) -> Option<String> {
        let session = self.sessions.remove(&key)?;
        self.names.remove(&fold(&session.name));
        self.metrics.chat_members.dec();
        if let Some(att) = session.attached {
            att.kick(reason, &session.name);
        }
        // After the kick: a stream that sees its wake channel close looks for the kick.
        self.unwake(key);
        self.broadcast(
            "leave",
            json!({ "name": session.name, "reason": why }),
            None,
        );
        Some(session.name)
    }
}

impl Inner {
    /// [`super::Room::post`] under the lock.
    pub(crate) fn post(&mut self, token: &Token, text: &str) -> Result<u64, ChatError> {
        let session = self.session(token)?;
        check_text(text)?;
        session
            .limiter
            .take(Instant::now())
            .map_err(ChatError::RateLimited)?;
        let key = session.token.selector();
        let from = session.name.clone();
        let data = json!({ "from": from, "text": text, "ts": now_ms() });
        let id = self.broadcast("message", data, Some(key));
        self.metrics.chat_messages.inc();
        Ok(id)
    }

    /// [`super::Room::rename`] under the lock; returns the old name.
    pub(crate) fn rename(&mut self, token: &Token, to: &str) -> Result<String, ChatError> {
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
        self.broadcast("rename", data, None);
        Ok(from)
    }
}
