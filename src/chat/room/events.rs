//! What each room event says: the data of a `message`, `presence` and `rename`, and the
//! `welcome` and `reset` a stream starts with. Built here for the local room and for the
//! node's reader alike (the chat on Redis), so an event has the same bytes whichever room made
//! it; [`super::state::Inner::append`] encodes each room event once.

use serde::Serialize;
use serde_json::{json, Value};

use super::types::Encoded;
use crate::http::sse::encode_event;

/// `message`: `{"from","text","ts"}` (`ts`: unix ms); the append adds `"id"`.
pub(crate) fn message_data(from: &str, text: &str, ts: u64) -> Value {
    json!({ "from": from, "text": text, "ts": ts })
}

/// `presence`: `{"joined":[names],"left":[{"name","reason"}]}`.
pub(crate) fn presence_data<J: AsRef<str>>(joined: &[J], left: &[(&str, &str)]) -> Value {
    let joined: Vec<&str> = joined.iter().map(AsRef::as_ref).collect();
    let left: Vec<Value> = left
        .iter()
        .map(|(name, why)| json!({ "name": name, "reason": why }))
        .collect();
    json!({ "joined": joined, "left": left })
}

/// `rename`: `{"from","to"}`.
pub(crate) fn rename_data(from: &str, to: &str) -> Value {
    json!({ "from": from, "to": to })
}

/// The `welcome` every stream starts with: the session's name and token, the first names
/// online as of `last_id` and how many there were.
pub(crate) fn welcome<N: Serialize>(
    name: &str,
    token: &str,
    online: N,
    online_count: usize,
    last_id: u64,
) -> Encoded {
    let welcome = json!({
        "name": name,
        "token": token,
        "online": online,
        "online_count": online_count,
        "last_id": last_id,
    });
    encode_event(Some("welcome"), None, &welcome.to_string()).into()
}

/// `reset`: the events before `oldest` are gone.
pub(crate) fn reset(oldest: u64) -> Encoded {
    let reset = json!({ "oldest": oldest });
    encode_event(Some("reset"), None, &reset.to_string()).into()
}
