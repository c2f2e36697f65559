//! The room's state, all of it under the room's one lock: sessions and their names, the history
//! ring that is every member's queue, each attached stream's cursor, and the wake channels.
//! Nothing here blocks, writes a socket or logs; [`super::Room`] takes the lock, calls in, and
//! does those after releasing it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::bounded;
use serde_json::json;

use super::events::{self, presence_data};
use super::name::Name;
use super::types::{check_text, Attached, ChatError, Encoded, Kick, Take, UsersPage};
use super::wakes::{Slot, Waker, Wakers, Wakes};
use crate::chat::session::{RateLimiter, Token, Verifier};
use crate::http::sse::encode_event;
use crate::http::validate::{name_key, normalize_name};
use crate::metrics::Metrics;
use crate::stream::CloseReason;

mod mirror;
pub(crate) use mirror::Applied;

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
    /// Members may read the room as text lines (`--chat-tcp`): every event is also encoded so.
    pub(crate) lines: bool,
}

pub(crate) struct Attachment {
    pub(crate) serial: u64,
    /// Id of the last event this stream took (or skipped as its own).
    cursor: u64,
    /// Where its wake channel sits in [`Inner::wakers`].
    slot: Slot,
    /// It reads the events' text lines (a TCP member), not their SSE encoding.
    lines: bool,
}

pub(crate) struct Session {
    /// The secret half of its token (the selector is its key in [`Inner::sessions`]).
    pub(crate) secret: Verifier,
    pub(crate) name: Name,
    limiter: RateLimiter,
    pub(crate) attached: Option<Attachment>,
    /// When the session lost (or never had) its stream; `None` while attached.
    pub(crate) detached_since: Option<Instant>,
    /// The room's last id when the session joined: a first attach without `Last-Event-ID`
    /// resumes after it, so a `POST /chat/join` client misses nothing before its stream opens
    /// (its own join, announced in the next `presence` event, included).
    joined_after: u64,
    ever_attached: bool,
}

struct Kept {
    id: u64,
    /// The session whose message this is (its own messages are not sent back to it).
    from: Option<u64>,
    /// The SSE encoding.
    bytes: Encoded,
    /// The text lines of TCP members ([`crate::chat::line`]), when the room has them.
    line: Option<Encoded>,
    /// When it was broadcast (the post accepted), [`crate::metrics::now_ns`]: the start of its
    /// delivery latency.
    at: u64,
}

/// Joins and leaves not yet announced: they go out together as one `presence` event (see
/// [`Inner::flush_presence`]). A name is in it at most once, so `joined` and `left` never
/// overlap and their order inside the event does not matter.
#[derive(Default)]
struct Presence {
    joined: Vec<String>,
    /// Names that left, with why (`left` or `timeout`).
    left: Vec<(String, &'static str)>,
}

impl Presence {
    fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.left.is_empty()
    }

    fn len(&self) -> usize {
        self.joined.len() + self.left.len()
    }

    fn mentions(&self, name: &str) -> bool {
        self.joined.iter().any(|n| n == name) || self.left.iter().any(|(n, _)| n == name)
    }
}

/// Most names one `presence` event carries; a batch this full goes out at once.
pub(crate) const PRESENCE_MAX: usize = 256;

/// Most names a `welcome` lists (the first in sorted order; `online_count` says how many there
/// are, `GET /chat/users?after=` pages through the rest).
pub(crate) const WELCOME_NAMES: usize = 100;

pub(crate) struct Inner {
    limits: Limits,
    metrics: Arc<Metrics>,
    pub(crate) last_id: u64,
    history: VecDeque<Kept>,
    pub(crate) sessions: HashMap<u64, Session>,
    /// Folded name ([`fold`]) → session key.
    names: HashMap<Name, u64>,
    /// Every session's name, sorted: `GET /chat/users` (exact, now). The names online as of
    /// `last_id`, which a `welcome` lists, are these without the joins still in `presence` and
    /// with its leaves (see [`Inner::announced`]). A sorted vector, not a `BTreeSet`: one
    /// allocation, where the set's ~900 nodes for 10,000 names were allocated during the ramp
    /// among the stream threads' blocks and each kept a page resident after they closed (see
    /// [`super::name`]). An insert or removal moves the names after it: at 10,000 members
    /// ~120 KB, a few microseconds.
    online: Vec<Name>,
    /// Joins and leaves waiting for the next `presence` event.
    presence: Presence,
    next_serial: u64,
    /// The wake channel of every attached stream.
    wakers: Wakers,
    /// Why the room closed a stream, by attachment serial, until that stream asks
    /// ([`super::Room::kick_of`]) or detaches.
    kicks: HashMap<u64, Kick>,
    /// Set by a broadcast: wake every stream (but the sender's, if `Some(Some(key))`) once the
    /// lock is released.
    pending: Option<Option<u64>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What names are compared by (see [`name_key`]): two names with the same key are one name.
/// The chat on Redis folds with this too (its scripts only compare the folded strings).
pub(crate) fn fold(name: &str) -> String {
    name_key(name)
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
            online: Vec::new(),
            presence: Presence::default(),
            next_serial: 0,
            wakers: Wakers::default(),
            kicks: HashMap::new(),
            pending: None,
        }
    }
}

impl Inner {
    /// Broadcasts an event to every attached member except its sender `from` (a member's own
    /// messages), after the joins and leaves still waiting (they happened first). Returns its id.
    pub(crate) fn broadcast(
        &mut self,
        kind: &str,
        data: serde_json::Value,
        from: Option<u64>,
    ) -> u64 {
        self.flush_presence();
        self.push_event(kind, data, from)
    }

    /// Announces the joins and leaves waiting, if any, as one `presence` event:
    /// `{"joined":[names],"left":[{"name","reason"}]}`. Called by the dispatcher's housekeeping
    /// (every 250 ms), before every other broadcast, and when a batch is full or would name
    /// someone twice. Returns whether there was anything to announce.
    pub(crate) fn flush_presence(&mut self) -> bool {
        if self.presence.is_empty() {
            return false;
        }
        let p = std::mem::take(&mut self.presence);
        let left: Vec<(&str, &str)> = p.left.iter().map(|(n, why)| (n.as_str(), *why)).collect();
        self.push_event("presence", presence_data(&p.joined, &left), None);
        true
    }

    /// Queues a join (`why` `None`) or a leave for the next `presence` event.
    fn note_presence(&mut self, name: &str, why: Option<&'static str>) {
        // One name at most once per event: a second change of it waits for the next one.
        if self.presence.mentions(name) {
            self.flush_presence();
        }
        match why {
            None => self.presence.joined.push(name.to_string()),
            Some(why) => self.presence.left.push((name.to_string(), why)),
        }
        if self.presence.len() >= PRESENCE_MAX {
            self.flush_presence();
        }
    }

    /// Assigns the next id and appends the event (see [`Inner::append`]). Returns the id.
    fn push_event(&mut self, kind: &str, data: serde_json::Value, from: Option<u64>) -> u64 {
        let id = self.last_id + 1;
        self.append(id, kind, data, from);
        id
    }

    /// The one way into the history: every room event enters it here, with its id (the next
    /// of the local room's own sequence, or the one Redis gave it: the node's reader feeds its
    /// mirror through here too), and every encoding of it is made here, once. Keeps it and
    /// queues it for every attached member except its sender `from`; members too far behind are
    /// cut off as slow. `id` must be `last_id + 1` (the history's ids are consecutive).
    pub(crate) fn append(
        &mut self,
        id: u64,
        kind: &str,
        data: serde_json::Value,
        from: Option<u64>,
    ) {
        debug_assert_eq!(id, self.last_id + 1, "consecutive ids");
        self.last_id = id;
        let mut data = data;
        if let Some(obj) = data.as_object_mut() {
            if kind == "message" {
                obj.insert("id".into(), json!(id));
            }
        }
        // Every encoding of the event, made here once: this is the one way into the history.
        let bytes: Encoded = encode_event(Some(kind), Some(id), &data.to_string()).into();
        let line = self
            .limits
            .lines
            .then(|| crate::chat::line::render(kind, &data).into());
        self.history.push_back(Kept {
            id,
            from,
            bytes,
            line,
            at: crate::metrics::now_ns(),
        });
        while self.history.len() > self.limits.history {
            self.history.pop_front();
        }
        // The bound: a stream more than `queue` events behind, or whose next event just left
        // the history, is cut off; its session keeps its grace period and it resumes from
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
                self.wakers.set_taken(att.slot, id);
            }
            // A cursor may be ahead of the history's newest id: a stream attached on a node
            // whose reader has not brought what the member saw elsewhere yet (the chat on
            // Redis); it is behind by nothing then.
            if id.saturating_sub(att.cursor) > self.limits.queue as u64 || att.cursor + 1 < oldest {
                self.kicks.insert(
                    att.serial,
                    Kick {
                        reason: CloseReason::Slow,
                        name: session.name.to_string(),
                    },
                );
                slow.push((*key, att.slot));
                session.attached = None;
                session.detached_since = Some(Instant::now());
                self.metrics.chat_slow.inc();
            }
        }
        // Last position first: a removal moves the list's last waker into the freed place, and
        // that one is then never another of these (each still sits where its slot says). In
        // any other order a slow stream's waker moved into a freed place was left behind at a
        // slot nobody knew (its attachment was gone already), and the removal meant for it
        // took whatever sat at its old slot: another, live stream's.
        slow.sort_unstable_by_key(|&(_, slot)| std::cmp::Reverse(slot));
        for (_, slot) in slow {
            self.unwake(slot);
        }
        self.pending = match self.pending {
            None => Some(from),
            Some(_) => Some(None),
        };
    }

    /// Forgets the wake channel at `slot` (its stream then sees the channel closed, once a
    /// wake round in flight lets go of it); the waker moved into its place gets its new slot.
    fn unwake(&mut self, slot: Slot) {
        if let Some((moved, at)) = self.wakers.remove(slot) {
            if let Some(att) = self
                .sessions
                .get_mut(&moved)
                .and_then(|s| s.attached.as_mut())
            {
                att.slot = at;
            }
        }
    }

    /// Closes the stream attached to `session` (if any) for `reason`: its kick is kept for it,
    /// its wake channel forgotten, and the session starts its grace period.
    fn kick(&mut self, key: u64, reason: CloseReason) {
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let Some(att) = session.attached.take() else {
            return;
        };
        session.detached_since = Some(Instant::now());
        let name = session.name.to_string();
        self.kicks.insert(att.serial, Kick { reason, name });
        self.unwake(att.slot);
    }

    /// Shrinks the tables sized for a past peak of sessions (see [`crate::sys::mem::shrink_map`]).
    /// Nothing else of a session has a block of its own to move (its name and token are in
    /// place: [`super::name`], [`Token`]).
    pub(crate) fn shrink(&mut self) {
        crate::sys::mem::shrink_map(&mut self.sessions);
        crate::sys::mem::shrink_map(&mut self.names);
        crate::sys::mem::shrink_map(&mut self.kicks);
        crate::sys::mem::shrink_vec(&mut self.online);
        self.wakers.shrink();
    }

    /// The kick of attachment `serial`, if the room closed it (taken: asked once).
    pub(crate) fn kick_of(&mut self, serial: u64) -> Option<Kick> {
        self.kicks.remove(&serial)
    }

    /// Called when a stream ends (see [`super::Room::detach`]).
    pub(crate) fn detach(&mut self, key: u64, serial: u64) -> Option<String> {
        self.kicks.remove(&serial);
        let session = self.sessions.get_mut(&key)?;
        let name = session.name.to_string();
        if session
            .attached
            .as_ref()
            .is_some_and(|a| a.serial == serial)
        {
            if let Some(att) = session.attached.take() {
                session.detached_since = Some(Instant::now());
                self.unwake(att.slot);
            }
        }
        Some(name)
    }

    /// Whether a broadcast since the last round wants one.
    pub(crate) fn wants_round(&self) -> bool {
        self.pending.is_some()
    }

    /// Wake channels in the list (one per attached stream).
    #[cfg(test)]
    pub(crate) fn wakers_len(&self) -> usize {
        self.wakers.len()
    }

    /// Whether no stream is attached (the round thread then ends).
    pub(crate) fn idle(&self) -> bool {
        self.wakers.is_empty()
    }

    /// The wakes a broadcast under this lock asked for, to send once it is released.
    pub(crate) fn wakes(&mut self) -> Option<Wakes> {
        self.pending.take().map(|skip| Wakes {
            list: self.wakers.snapshot(),
            skip,
            upto: self.last_id,
        })
    }

    /// Hands out, in `out` from its start, the events after the cursor of stream `serial` of
    /// session `key` (not the session's own messages), as many as fit, and moves the cursor past
    /// them; `accepted` gets when each was broadcast, at the same index. They are the history's
    /// own buffers (a reference count each): nothing is copied under the lock, and no stream
    /// keeps a buffer sized for the largest write it ever made.
    pub(crate) fn take(
        &mut self,
        key: u64,
        serial: u64,
        out: &mut [Option<Encoded>],
        accepted: &mut [u64],
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
        for kept in self.history.range(start.min(self.history.len())..) {
            if kept.from == Some(key) {
                att.cursor = kept.id;
                continue;
            }
            let bytes = if att.lines {
                match &kept.line {
                    // A kind line members are not shown.
                    Some(l) if l.is_empty() => {
                        att.cursor = kept.id;
                        continue;
                    }
                    Some(l) => l,
                    None => &kept.bytes,
                }
            } else {
                &kept.bytes
            };
            let Some(slot) = out.get_mut(taken) else {
                self.wakers.set_taken(att.slot, att.cursor);
                return Take::More(taken);
            };
            *slot = Some(bytes.clone());
            att.cursor = kept.id;
            if let Some(at) = accepted.get_mut(taken) {
                *at = kept.at;
            }
            taken += 1;
        }
        self.wakers.set_taken(att.slot, att.cursor);
        Take::Done(taken)
    }

    pub(crate) fn session(&mut self, token: &Token) -> Result<&mut Session, ChatError> {
        match self.sessions.get_mut(&token.selector()) {
            Some(s) if s.secret.matches(token) => Ok(s),
            _ => Err(ChatError::Unauthorized),
        }
    }

    /// The first `n` names online as of `last_id` (sorted), and how many there were: `online`
    /// without the joins still waiting in `presence`, with its leaves. (A name is in the batch
    /// at most once, and one that left is not online again before the batch goes out: see
    /// [`Inner::note_presence`].) Keeping a second sorted set for this cost ~70 bytes a member.
    fn announced(&self, n: usize) -> (Vec<&str>, usize) {
        let joined: std::collections::HashSet<&str> =
            self.presence.joined.iter().map(String::as_str).collect();
        let mut left: Vec<&str> = self.presence.left.iter().map(|(n, _)| n.as_str()).collect();
        left.sort_unstable();
        let count = self.online.len() - joined.len() + left.len();
        let mut now = self
            .online
            .iter()
            .map(Name::as_str)
            .filter(|n| !joined.contains(n))
            .peekable();
        let mut gone = left.into_iter().peekable();
        let mut first = Vec::with_capacity(n.min(count));
        while first.len() < n {
            let next = match (now.peek(), gone.peek()) {
                (Some(a), Some(b)) if b < a => gone.next(),
                (Some(_), _) => now.next(),
                (None, Some(_)) => gone.next(),
                (None, None) => None,
            };
            match next {
                Some(name) => first.push(name),
                None => break,
            }
        }
        (first, count)
    }

    /// Every session's name, sorted.
    #[cfg(test)]
    pub(crate) fn online(&self) -> Vec<String> {
        self.online.iter().map(|n| n.to_string()).collect()
    }

    /// Room for how many sessions the tables hold (sessions, names, the sorted list).
    #[cfg(test)]
    pub(crate) fn capacities(&self) -> [usize; 3] {
        [
            self.sessions.capacity(),
            self.names.capacity(),
            self.online.capacity(),
        ]
    }

    /// Adds `name` to the sorted list (not there yet: [`Inner::names`] says so).
    fn list(&mut self, name: &str) {
        let at = self.online.partition_point(|n| n.as_str() < name);
        self.online.insert(at, Name::from(name));
    }

    /// Takes `name` off the sorted list.
    fn unlist(&mut self, name: &str) {
        if let Ok(at) = self.online.binary_search_by(|n| n.as_str().cmp(name)) {
            self.online.remove(at);
        }
    }

    /// A page of the sessions' names, sorted: up to `limit` names after `after` (all from the
    /// first without it), how many sessions there are, and the room's last id.
    pub(crate) fn users(&self, after: Option<&str>, limit: usize) -> UsersPage {
        let from = after.map_or(0, |a| self.online.partition_point(|n| n.as_str() <= a));
        let mut names: Vec<String> = self.online[from..]
            .iter()
            .take(limit + 1)
            .map(|n| n.to_string())
            .collect();
        let more = names.len() > limit;
        names.truncate(limit);
        UsersPage {
            next: if more { names.last().cloned() } else { None },
            names,
            count: self.online.len(),
            last_id: self.last_id,
        }
    }

    /// Creates a session named `name` holding `token`; its join goes out in the next
    /// `presence` event.
    pub(crate) fn join(&mut self, name: &str, token: Token) -> Result<u64, ChatError> {
        let name = &normalize_name(name).ok_or(ChatError::InvalidName)?;
        let folded = fold(name);
        if self.names.contains_key(folded.as_str()) {
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
        self.note_presence(name, None);
        self.sessions.insert(
            key,
            Session {
                secret: token.verifier(),
                name: Name::from(name.as_str()),
                limiter: RateLimiter::new(self.limits.burst, Instant::now()),
                attached: None,
                detached_since: Some(Instant::now()),
                joined_after: self.last_id,
                ever_attached: false,
            },
        );
        self.names.insert(Name::from(folded), key);
        self.list(name);
        self.metrics.chat_members.inc();
        Ok(key)
    }

    /// Whether the room holds `--max-members` sessions (a join now would be refused).
    pub(crate) fn is_full(&self) -> bool {
        self.sessions.len() >= self.limits.max_members
    }

    /// Attaches a new stream to session `key`, closing an older one; see [`Attached`]. A
    /// `lines` member (TCP) reads the events' text lines and gets no `welcome` or `reset`.
    pub(crate) fn attach(&mut self, key: u64, last_event_id: Option<u64>, lines: bool) -> Attached {
        self.next_serial += 1;
        let serial = self.next_serial;
        let last_id = self.last_id;
        self.kick(key, CloseReason::Replaced);
        let (wake_tx, wake_rx) = bounded(1);
        let slot = self.wakers.add(Waker::new(key, wake_tx));
        self.wakers.set_taken(slot, last_id);
        // A line member is told how many are online, not who (it asks with /who), and gets no
        // welcome.
        let (first, announced) = self.announced(if lines { 0 } else { WELCOME_NAMES });
        let session = self.sessions.get(&key).expect("caller checked the key");
        let welcome = (!lines).then(|| {
            events::welcome(
                &session.name,
                session.secret.token(key).as_str(),
                first,
                announced,
                last_id,
            )
        });
        let after = match last_event_id {
            Some(k) => Some(k),
            None if !session.ever_attached => Some(session.joined_after),
            None => None,
        };
        let mut backlog: Vec<Encoded> = welcome.into_iter().collect();
        // A line member gets no history (it has no id to resume from).
        if let Some(k) = after.filter(|_| !lines) {
            self.replay(key, k, last_id, &mut backlog);
        }
        let session = self.sessions.get_mut(&key).expect("caller checked the key");
        session.attached = Some(Attachment {
            serial,
            cursor: last_id,
            slot,
            lines,
        });
        session.detached_since = None;
        session.ever_attached = true;
        Attached {
            name: session.name.to_string(),
            key,
            serial,
            backlog,
            wake: wake_rx,
            online_count: announced,
        }
    }

    /// What a stream of session `key` resuming after `k` gets first, into `backlog`: `reset` if
    /// the events after `k` are no longer all kept, or `k` is beyond `top` (the newest id the
    /// room knows of: from another run), then the kept events after `k` but the session's own.
    ///
    /// An id beyond `top` is from another run, or names no event at all (a hint that is not a
    /// number comes as `u64::MAX`): where the client stands is unknown, as for an id older than
    /// the history. Both get `reset`, then everything kept. Returns the id the replay went
    /// from (`k`, or 0 for an unknown one).
    fn replay(&self, key: u64, k: u64, top: u64, backlog: &mut Vec<Encoded>) -> u64 {
        let oldest = self.history.front().map_or(self.last_id + 1, |e| e.id);
        let unknown = k > top;
        if unknown || k.saturating_add(1) < oldest {
            backlog.push(events::reset(oldest));
        }
        let after = if unknown { 0 } else { k };
        backlog.extend(
            self.history
                .iter()
                .filter(|e| e.id > after && e.from != Some(key))
                .map(|e| e.bytes.clone()),
        );
        after
    }

    /// Removes session `key`, closing its stream with `reason`; its leave (`why`: `left` or
    /// `timeout`) goes out in the next `presence` event.
    pub(crate) fn remove(
        &mut self,
        key: u64,
        why: &'static str,
        reason: CloseReason,
    ) -> Option<String> {
        // The kick first: a stream that sees its wake channel close looks for it.
        self.kick(key, reason);
        let session = self.sessions.remove(&key)?;
        self.names.remove(fold(&session.name).as_str());
        self.unlist(&session.name);
        self.metrics.chat_members.dec();
        self.note_presence(&session.name, Some(why));
        Some(session.name.to_string())
    }
}

impl Inner {
    /// [`super::Room::post`] under the lock.
    pub(crate) fn post(&mut self, token: &Token, text: &str) -> Result<u64, ChatError> {
        let Limits { rate, burst, .. } = self.limits;
        let key = token.selector();
        let session = self.session(token)?;
        check_text(text)?;
        session
            .limiter
            .take(rate, burst, Instant::now())
            .map_err(ChatError::RateLimited)?;
        let from = session.name.to_string();
        let data = events::message_data(&from, text, now_ms());
        let id = self.broadcast("message", data, Some(key));
        self.metrics.chat_messages.inc();
        Ok(id)
    }

    /// [`super::Room::rename`] under the lock; returns the old name and the new one (in NFC).
    pub(crate) fn rename(
        &mut self,
        token: &Token,
        to: &str,
    ) -> Result<(String, String), ChatError> {
        let Limits { rate, burst, .. } = self.limits;
        let key = token.selector();
        let session = self.session(token)?;
        let to = &normalize_name(to).ok_or(ChatError::InvalidName)?;
        // A rename is broadcast like a message, so it draws on the same bucket.
        session
            .limiter
            .take(rate, burst, Instant::now())
            .map_err(ChatError::RateLimited)?;
        let folded = fold(to);
        if self.names.get(folded.as_str()).is_some_and(|k| *k != key) {
            return Err(ChatError::NameTaken);
        }
        let session = self.sessions.get_mut(&key).expect("found above");
        let from = std::mem::replace(&mut session.name, Name::from(to.as_str())).to_string();
        if from == *to {
            return Ok((from, to.clone()));
        }
        self.names.remove(fold(&from).as_str());
        self.names.insert(Name::from(folded), key);
        self.unlist(&from);
        self.list(to);
        let data = events::rename_data(&from, to);
        // The waiting joins go out first: the rename's own join among them, if it is that new.
        self.flush_presence();
        self.push_event("rename", data, None);
        Ok((from, to.clone()))
    }
}
