//! Refusals worth retrying: their reasons, their replies (a 503 with `Retry-After`, or for a
//! stream `event: refused` with a jittered delay), and the jitter itself.

use super::*;

/// Why a request was refused before it got a thread of its own (or, for a stream, before it
/// could start). Every one of these is worth retrying: a refusal the user must act on (a bad
/// id, an unknown token, a taken name) is a 4xx from its handler instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `--max-clients` streams run already.
    MaxClients,
    /// `--max-requests` short requests run already.
    MaxRequests,
    /// The OS refused the thread.
    ThreadSpawn,
    /// The server is shutting down (a stream opened during shutdown).
    ShuttingDown,
    /// The store fails and the stream has nothing to show (an alarm id nobody watches).
    StoreUnavailable,
    /// `--max-members` chat sessions already (a join by `GET /chat/stream?name=`).
    RoomFull,
    /// The chat on Redis cannot reach Redis now, or this node has not read the room yet.
    ChatUnavailable,
}

impl Refusal {
    /// The `reason` label of `syncast_rejected_total`, and the `reason` of a `refused` event.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::MaxClients => "max-clients",
            Refusal::MaxRequests => "max-requests",
            Refusal::ThreadSpawn => "thread-spawn",
            Refusal::ShuttingDown => "shutting-down",
            Refusal::StoreUnavailable => "store-unavailable",
            Refusal::RoomFull => "room-full",
            Refusal::ChatUnavailable => "chat-unavailable",
        }
    }

    /// The base delay before a refused stream should come back; each refusal sends this
    /// jittered by ±50 % ([`Admission::retry_ms`]). A full server or a thread the OS refused
    /// frees up as streams end: soon. A store that fails, a full room (sessions expire after
    /// `--grace`) and a restart take longer.
    pub(crate) fn base_retry(self) -> Duration {
        match self {
            Refusal::MaxClients | Refusal::MaxRequests | Refusal::ThreadSpawn => {
                Duration::from_secs(2)
            }
            Refusal::ShuttingDown | Refusal::ChatUnavailable => Duration::from_secs(3),
            Refusal::StoreUnavailable | Refusal::RoomFull => Duration::from_secs(5),
        }
    }

    /// What a client that is not a stream gets: a 503 it may retry after a second.
    pub(super) fn reply(self) -> Reply {
        let message = match self {
            Refusal::MaxClients => "too many clients",
            Refusal::MaxRequests => "server busy",
            Refusal::ThreadSpawn => "cannot start a thread",
            Refusal::ShuttingDown => "shutting down",
            Refusal::StoreUnavailable => "store unavailable",
            Refusal::RoomFull => "the room is full: try again later",
            Refusal::ChatUnavailable => "chat unavailable",
        };
        response::retry_later(503, 1, message)
    }
}

/// A delay of `base` ± 50 %, picked by `random` (any 64 bits): uniform over
/// `[base / 2, base * 3 / 2]`, in whole milliseconds.
pub(crate) fn jittered_ms(base: Duration, random: u64) -> u64 {
    let base = base.as_millis().min(u64::MAX as u128 / 4) as u64;
    base / 2 + random % (base + 1)
}

/// splitmix64: a fast, well-mixed sequence for jitter (not for secrets).
pub(super) fn splitmix64(state: &AtomicU64) -> u64 {
    let mut z = state
        .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Why a stream's preparation refused it (see [`Admission::spawn_stream_prepared`]).
pub(crate) enum Unprepared {
    /// A reply the user must act on (a 4xx).
    Reply(Reply),
    /// A refusal that passes by itself: `event: refused`, retried by `EventSource`.
    Retry(Refusal),
}
