//! What the room's calls take and give back: the encoded events, the results of attaching
//! and taking, the room's refusals, and the rule for a message's text.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::stream::CloseReason;

/// Largest message, in bytes of UTF-8.
pub(crate) const MAX_TEXT: usize = 4096;

/// One encoded SSE event, as kept in the history.
pub(crate) type Encoded = Arc<[u8]>;

/// Most events one [`super::Room::take`] hands out: the size of the array a stream passes in
/// (on its stack: 16 bytes an event).
pub(crate) const TAKE_EVENTS: usize = 64;

/// Why a room operation was refused. The HTTP layer turns each into a status code.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ChatError {
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
    /// The chat on Redis cannot reach Redis (down, frozen, slow past `--redis-timeout`), or
    /// this node's reader has not read the room yet (503, to retry). The text is the cause.
    Unavailable(String),
    /// Auth on, the chat on Redis: the session's name is not the token's (403).
    NotYourName,
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
            ChatError::Unavailable(e) => write!(f, "chat unavailable: {e}"),
            ChatError::NotYourName => {
                f.write_str("the name must be the token's name claim (else its sub)")
            }
        }
    }
}

impl std::error::Error for ChatError {}

/// A session made by `POST /chat/join`.
#[derive(Debug, Clone)]
pub(crate) struct Joined {
    /// The name as given.
    pub(crate) name: String,
    /// The session's token (hex).
    pub(crate) token: String,
}

/// A stream's place in the room: what to send first, then where live events arrive.
pub(crate) struct Attached {
    /// The session's name now.
    pub(crate) name: String,
    /// The session's key (token selector), for [`super::Room::detach`].
    pub(crate) key: u64,
    /// This attachment's serial, for [`super::Room::detach`].
    pub(crate) serial: u64,
    /// `welcome`, then `reset` if events were lost, then the kept events after `Last-Event-ID`,
    /// each encoded; write these before anything from [`super::Room::take`].
    pub(crate) backlog: Vec<Encoded>,
    /// Ready (holds one message) when live events may be waiting: then call [`super::Room::take`].
    /// Many events may arrive for one wake. Disconnected once the room closed the stream:
    /// [`super::Room::kick_of`] says why.
    pub(crate) wake: Receiver<()>,
    /// How many were online as of the room's last event (the `welcome`'s `online_count`).
    pub(crate) online_count: usize,
}

/// The room closing a stream: why, and the session's name at that moment (for the close line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kick {
    /// `replaced`, `left` or `slow`.
    pub(crate) reason: CloseReason,
    /// The session's name when it was closed.
    pub(crate) name: String,
}

/// What [`super::Room::take`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// Handed out this many events; the stream is caught up.
    Done(usize),
    /// Handed out this many events (the array is full); more are waiting.
    More(usize),
    /// The stream is no longer the session's (kicked, replaced, or the session is gone): its
    /// kick channel says why.
    Closed,
}

/// Checks a message: 1–[`MAX_TEXT`] bytes, no NUL.
pub(crate) fn check_text(text: &str) -> Result<(), ChatError> {
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

/// A page of `GET /chat/users`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UsersPage {
    /// Names, sorted.
    pub(crate) names: Vec<String>,
    /// The last name of this page when more follow (the next page's `after`).
    pub(crate) next: Option<String>,
    /// Sessions in the room.
    pub(crate) count: usize,
    /// The room's last event id.
    pub(crate) last_id: u64,
}
