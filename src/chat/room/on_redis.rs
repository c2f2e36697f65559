//! The room's calls when the chat is on Redis: each asks Redis first (one script, outside the
//! room's lock, on the caller's thread: a request thread, never the dispatcher), then, for a
//! stream, attaches it to the node's mirror under the lock. And what the node's reader and
//! keeper ask of the room.

use super::state::WELCOME_NAMES;
use super::state::{fold, Applied};
use super::types::check_text;
use super::{new_token, Attached, ChatError, Joined, Room};
use crate::chat::session::Token;
use crate::chat::shared::entry::{Entry, EntryId};
use crate::chat::shared::SharedChat;
use crate::http::validate::{normalize_name, valid_name};
use crate::stream::CloseReason;

/// What feeding a batch of entries to the mirror did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Fed {
    /// The holes found (first id missing, first id there): the mirror started again at each.
    pub(crate) holes: Vec<(u64, u64)>,
    /// Streams cut off because their events fell into a hole.
    pub(crate) cut: usize,
    /// The newest event id in the mirror afterwards.
    pub(crate) head: u64,
}

impl Room {
    pub(super) fn join_shared(&self, sh: &SharedChat, name: &str) -> Result<Joined, ChatError> {
        if !valid_name(name) {
            return Err(ChatError::InvalidName);
        }
        let token = new_token()?;
        sh.join(name, &fold(name), &token)?;
        log::info!("chat joined name={name}");
        Ok(Joined {
            name: name.to_string(),
            token: token.as_str().to_string(),
        })
    }

    pub(super) fn join_and_attach_shared(
        &self,
        sh: &SharedChat,
        name: &str,
        last_event_id: Option<u64>,
    ) -> Result<Attached, ChatError> {
        Ok(self.join_attach_on_redis(sh, name, last_event_id, false)?.1)
    }

    /// [`Room::join_lines`] on Redis: the session is the room's across nodes, its member reads
    /// the events' text lines from this node's mirror.
    pub(super) fn join_lines_shared(
        &self,
        sh: &SharedChat,
        name: &str,
    ) -> Result<(Token, Attached), ChatError> {
        self.join_attach_on_redis(sh, name, None, true)
    }

    fn join_attach_on_redis(
        &self,
        sh: &SharedChat,
        name: &str,
        last_event_id: Option<u64>,
        lines: bool,
    ) -> Result<(Token, Attached), ChatError> {
        if !valid_name(name) {
            return Err(ChatError::InvalidName);
        }
        ready(sh)?;
        let token = new_token()?;
        let serial = self.inner.lock().reserve_serial();
        let r = sh.join_attach(name, &fold(name), &token, serial, WELCOME_NAMES)?;
        log::info!("chat joined name={name}");
        let key = token.selector();
        let attached =
            self.inner
                .lock()
                .attach_mirrored(key, token.clone(), serial, &r, last_event_id, lines);
        Ok((token, attached))
    }

    pub(super) fn attach_shared(
        &self,
        sh: &SharedChat,
        token: &Token,
        last_event_id: Option<u64>,
        expect: Option<&str>,
    ) -> Result<Attached, ChatError> {
        ready(sh)?;
        let serial = self.inner.lock().reserve_serial();
        let r = sh.attach(token, serial, WELCOME_NAMES, expect)?;
        Ok(self.inner.lock().attach_mirrored(
            token.selector(),
            token.clone(),
            serial,
            &r,
            last_event_id,
            false,
        ))
    }

    /// Like [`Room::attach`], and the session's name must be `expect` (auth on: the token's
    /// name), else [`ChatError::NotYourName`] and nothing changes. On the local room the
    /// caller checks with [`Room::name_of`] before.
    pub(crate) fn attach_as(
        &self,
        token: &Token,
        last_event_id: Option<u64>,
        expect: Option<&str>,
    ) -> Result<Attached, ChatError> {
        match &self.shared {
            Some(sh) => self.attach_shared(sh, token, last_event_id, expect),
            None => self.attach(token, last_event_id),
        }
    }

    pub(super) fn post_shared(
        &self,
        sh: &SharedChat,
        token: &Token,
        text: &str,
    ) -> Result<u64, ChatError> {
        let bad = check_text(text).err();
        // A text refused here is not sent (it may be 64 KiB); the script still checks the
        // session first, so an unknown token is 401 whatever the text.
        let sent = if bad.is_some() { "" } else { text };
        let id = sh.post(token, sent, bad)?;
        self.metrics.chat_messages.inc();
        Ok(id)
    }

    pub(super) fn rename_shared(
        &self,
        sh: &SharedChat,
        token: &Token,
        to: &str,
    ) -> Result<(String, String), ChatError> {
        // The name as it is kept and shown: NFC. A bad one is refused by the script, after it
        // checked the session (an unknown token is 401 whatever the name).
        let to = normalize_name(to);
        let (sent, folded) = match &to {
            Some(n) => (n.as_str(), fold(n)),
            None => ("", String::new()),
        };
        let from = sh.rename(token, sent, &folded, to.is_none())?;
        Ok((from, to.unwrap_or_default()))
    }

    pub(super) fn leave_shared(&self, sh: &SharedChat, token: &Token) -> Result<String, ChatError> {
        let left = sh.leave(token)?;
        if left.node == sh.node {
            self.inner
                .lock()
                .kick_stream(token.selector(), left.serial, CloseReason::Left);
        }
        log::info!("chat left name={}", left.name);
        Ok(left.name)
    }

    /// Feeds the reader's entries into the mirror, in order, under one lock; the streams are
    /// woken once for the batch, after it. A hole (events trimmed before this node read them)
    /// starts the mirror again before the event after it.
    pub(crate) fn feed(&self, node: &str, batch: &[(EntryId, Entry)]) -> Fed {
        self.locked(|inner| {
            let mut fed = Fed::default();
            for (_, entry) in batch {
                if let Applied::Gap { expected, got } = inner.apply(entry, node) {
                    fed.holes.push((expected, got));
                    fed.cut += inner.restart_mirror(got - 1);
                    inner.apply(entry, node);
                }
            }
            fed.head = inner.last_id;
            fed
        })
    }

    /// Starts the mirror again, empty, after id `base` (see `Inner::restart_mirror`); returns
    /// how many streams were cut off.
    pub(crate) fn restart_mirror(&self, base: u64) -> usize {
        self.inner.lock().restart_mirror(base)
    }

    /// The newest event id in the mirror.
    pub(crate) fn head(&self) -> u64 {
        self.inner.lock().last_id
    }

    /// Every stream attached on this node: (session key, serial).
    pub(crate) fn attachments(&self) -> Vec<(u64, u64)> {
        self.inner.lock().attachments()
    }
}

/// Streams attach only once the reader has filled the mirror (else what a member missed might
/// not be in it yet); until then they are refused, to be retried.
fn ready(sh: &SharedChat) -> Result<(), ChatError> {
    if sh.synced() {
        Ok(())
    } else {
        Err(ChatError::Unavailable(
            "the room is still being read from redis".into(),
        ))
    }
}
