//! The room's state when the chat is on Redis: the history ring is a **mirror** of the Redis
//! stream, fed by the node's reader through [`Inner::append`] (the one append path, with the
//! ids Redis gave), and the sessions map holds only the sessions with a stream on this node
//! (name, token, the attachment: cursor and wake slot). Names, the sessions themselves, rate
//! buckets and presence live in Redis; none of the local room's tables for them is used.

use std::time::Instant;

use crossbeam_channel::bounded;

use super::{Attachment, Inner, Kept, Name, Session};
use crate::chat::room::events;
use crate::chat::room::types::{Attached, Encoded};
use crate::chat::room::wakes::Waker;
use crate::chat::session::{RateLimiter, Token};
use crate::chat::shared::entry::{Entry, Event};
use crate::chat::shared::AttachReply;
use crate::stream::CloseReason;

/// What applying one entry of the stream did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Appended (an event), or acted on (a control entry).
    Done,
    /// An event this mirror has already (never with dense ids; skipped).
    Old,
    /// An event after a hole: the events between were trimmed before this node read them.
    /// Nothing was done; the caller starts the mirror again before it.
    Gap { expected: u64, got: u64 },
}

impl Inner {
    /// A serial for a stream about to attach (its attachment is made later, with
    /// [`Inner::attach_mirrored`], once Redis has answered).
    pub(crate) fn reserve_serial(&mut self) -> u64 {
        self.next_serial += 1;
        self.next_serial
    }

    /// Attaches stream `serial` of session `key` (holding `token`), which Redis attached as
    /// `r` says: the welcome (names as of `r.last_id`), then what the stream missed, from the
    /// mirror. The mirror may be behind Redis (its reader has not read up to `r.last_id` yet)
    /// or ahead of it (it read more since): the cursor is set so that every event after the
    /// resume point arrives exactly once, from the backlog or, as the reader brings it, live.
    pub(crate) fn attach_mirrored(
        &mut self,
        key: u64,
        token: Token,
        serial: u64,
        r: &AttachReply,
        last_event_id: Option<u64>,
        lines: bool,
    ) -> Attached {
        // A stream of the session on this node; one on another node was told by the script.
        self.kick(key, CloseReason::Replaced);
        let (wake_tx, wake_rx) = bounded(1);
        let slot = self.wakers.add(Waker::new(key, wake_tx));
        let head = self.last_id;
        let top = r.last_id.max(head);
        // A line member (TCP) gets no welcome and no history: live from the join on.
        let after = match last_event_id {
            _ if lines => None,
            Some(k) => Some(k),
            None if !r.attached_before => Some(r.joined_after),
            None => None,
        };
        let mut backlog: Vec<Encoded> = Vec::new();
        if !lines {
            backlog.push(events::welcome(
                &r.name,
                token.as_str(),
                &r.first,
                r.count,
                r.last_id,
            ));
        }
        let cursor = match after {
            // Live from the welcome's last id on (events after it that the mirror holds
            // already are taken at once).
            None => r.last_id,
            Some(k) => {
                // An unknown id (beyond `top`) replays all the mirror holds: live after it.
                self.replay(key, k, top, &mut backlog).max(head)
            }
        };
        let limits = self.limits;
        let session = self.sessions.entry(key).or_insert_with(|| Session {
            secret: token.verifier(),
            name: Name::from(""),
            // Not used: the rate is counted in Redis.
            limiter: RateLimiter::new(limits.burst, Instant::now()),
            attached: None,
            detached_since: None,
            joined_after: 0,
            ever_attached: true,
        });
        session.name = Name::from(r.name.as_str());
        self.wakers.set_taken(slot, cursor);
        session.attached = Some(Attachment {
            serial,
            cursor,
            slot,
            lines,
        });
        session.detached_since = None;
        Attached {
            name: r.name.clone(),
            key,
            serial,
            backlog,
            wake: wake_rx,
            online_count: r.count,
        }
    }

    /// After a stream of session `key` ended: forgets the session here if no stream of it is
    /// left on this node (Redis keeps it for its grace).
    pub(crate) fn forget_unattached(&mut self, key: u64) {
        if self
            .sessions
            .get(&key)
            .is_some_and(|s| s.attached.is_none())
        {
            self.sessions.remove(&key);
        }
    }

    /// Closes stream `serial` of session `key` for `reason`, if it is still attached here.
    pub(crate) fn kick_stream(&mut self, key: u64, serial: u64, reason: CloseReason) -> bool {
        let attached = self
            .sessions
            .get(&key)
            .and_then(|s| s.attached.as_ref())
            .is_some_and(|a| a.serial == serial);
        if attached {
            self.kick(key, reason);
        }
        attached
    }

    /// Applies one entry of the stream (`node`: this node's name, for control entries).
    pub(crate) fn apply(&mut self, entry: &Entry, node: &str) -> Applied {
        let (id, event) = match entry {
            Entry::Event { id, event } => (*id, event),
            Entry::Kick {
                key,
                node: to,
                serial,
                reason,
                ..
            } => {
                if to == node {
                    self.kick_stream(*key, *serial, *reason);
                }
                return Applied::Done;
            }
            Entry::Other => return Applied::Done,
        };
        if id <= self.last_id {
            return Applied::Old;
        }
        if id != self.last_id + 1 {
            return Applied::Gap {
                expected: self.last_id + 1,
                got: id,
            };
        }
        match event {
            Event::Message {
                from,
                name,
                text,
                ts,
            } => self.append(
                id,
                "message",
                events::message_data(name, text, *ts),
                Some(*from),
            ),
            Event::Presence { joined, left } => {
                let left: Vec<(&str, &str)> =
                    left.iter().map(|(n, w)| (n.as_str(), w.as_str())).collect();
                self.append(id, "presence", events::presence_data(joined, &left), None)
            }
            Event::Rename { key, from, to } => {
                if let Some(s) = self.sessions.get_mut(key) {
                    s.name = Name::from(to.as_str());
                }
                self.append(id, "rename", events::rename_data(from, to), None)
            }
            // Written by a newer node: it takes its id, and members get nothing for it.
            Event::Unknown(_) => {
                self.last_id = id;
                self.history.push_back(Kept {
                    id,
                    from: None,
                    bytes: Encoded::from(&b""[..]),
                    line: None,
                    at: crate::metrics::now_ns(),
                });
                while self.history.len() > self.limits.history {
                    self.history.pop_front();
                }
            }
        }
        Applied::Done
    }

    /// Starts the mirror again, empty, after id `base` (the next event it takes is `base + 1`):
    /// at start, after a hole, or when Redis lost its data. Every stream attached here is cut
    /// off as slow (its events are gone from the mirror): it resumes with `Last-Event-ID`, on
    /// any node, and gets `reset` if what it missed is no longer kept.
    pub(crate) fn restart_mirror(&mut self, base: u64) -> usize {
        self.history.clear();
        self.last_id = base;
        let attached: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.attached.is_some())
            .map(|(k, _)| *k)
            .collect();
        for key in &attached {
            self.kick(*key, CloseReason::Slow);
            self.metrics.chat_slow.inc();
        }
        attached.len()
    }

    /// Every stream attached here: (session key, serial).
    pub(crate) fn attachments(&self) -> Vec<(u64, u64)> {
        self.sessions
            .iter()
            .filter_map(|(k, s)| s.attached.as_ref().map(|a| (*k, a.serial)))
            .collect()
    }
}
