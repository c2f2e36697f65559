//! The stream's entries as the reader reads them (`XRANGE`, `XREAD`), decoded: pure functions of
//! Redis replies, so they are tested without a Redis. The layout is [`super::lua`]'s.

use ::redis::Value;

use crate::stream::CloseReason;

/// A stream entry id, `ms-seq` in Redis's terms: here `id-sub`, the room event `id` (sub 0)
/// or a control entry after it (sub > 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct EntryId {
    pub(crate) id: u64,
    pub(crate) sub: u64,
}

impl EntryId {
    /// Parses `N-M`.
    pub(crate) fn parse(text: &str) -> Option<EntryId> {
        let (a, b) = text.split_once('-')?;
        Some(EntryId {
            id: a.parse().ok()?,
            sub: b.parse().ok()?,
        })
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.id, self.sub)
    }
}

/// What one entry says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A room event (sub 0): its id and what it is.
    Event { id: u64, event: Event },
    /// Close stream `serial` of session `key` on `node`, for `reason`.
    Kick {
        key: u64,
        node: String,
        serial: u64,
        reason: CloseReason,
        name: String,
    },
    /// A control entry this version does not know: nothing to do.
    Other,
}

/// A room event's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    Message {
        /// The sender's session key (its token's selector).
        from: u64,
        name: String,
        text: String,
        ts: u64,
    },
    Presence {
        joined: Vec<String>,
        /// (name, reason).
        left: Vec<(String, String)>,
    },
    Rename {
        key: u64,
        from: String,
        to: String,
    },
    /// A kind this version does not know; it still takes its id (ids stay dense), and members
    /// get nothing for it.
    Unknown(String),
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A session key as the scripts write it (16 hex digits: the token's selector).
pub(crate) fn key_of(hex: &str) -> Option<u64> {
    u64::from_str_radix(hex, 16).ok()
}

/// The selector as the scripts take it.
pub(crate) fn hex_of(key: u64) -> String {
    format!("{key:016x}")
}

fn lines(text: &str) -> Vec<String> {
    if text.is_empty() {
        Vec::new()
    } else {
        text.split('\n').map(str::to_string).collect()
    }
}

/// One entry of an `XRANGE`/`XREAD` reply: `[id, [field, value, ...]]`. `None` for a shape
/// that is not an entry.
pub(crate) fn decode(v: &Value) -> Option<(EntryId, Entry)> {
    let Value::Array(pair) = v else { return None };
    let [id, fields] = pair.as_slice() else {
        return None;
    };
    let at = EntryId::parse(&text(id)?)?;
    let Value::Array(fields) = fields else {
        return None;
    };
    let mut get = std::collections::HashMap::new();
    for kv in fields.chunks(2) {
        if let [k, v] = kv {
            get.insert(text(k)?, text(v)?);
        }
    }
    let field = |name: &str| get.get(name).cloned().unwrap_or_default();
    let kind = field("k");
    if at.sub > 0 {
        if kind != "kick" {
            return Some((at, Entry::Other));
        }
        let reason = match field("r").as_str() {
            "replaced" => CloseReason::Replaced,
            "left" => CloseReason::Left,
            "expired" => CloseReason::Expired,
            _ => return Some((at, Entry::Other)),
        };
        return Some((
            at,
            Entry::Kick {
                key: key_of(&field("s"))?,
                node: field("n"),
                serial: field("c").parse().ok()?,
                reason,
                name: field("m"),
            },
        ));
    }
    let event = match kind.as_str() {
        "message" => Event::Message {
            from: key_of(&field("f"))?,
            name: field("n"),
            text: field("t"),
            ts: field("ts").parse().unwrap_or(0),
        },
        "presence" => {
            let names = lines(&field("l"));
            let why = lines(&field("r"));
            Event::Presence {
                joined: lines(&field("j")),
                left: names.into_iter().zip(why).collect(),
            }
        }
        "rename" => Event::Rename {
            key: key_of(&field("s"))?,
            from: field("a"),
            to: field("b"),
        },
        other => Event::Unknown(other.to_string()),
    };
    Some((at, Entry::Event { id: at.id, event }))
}

/// The entries of an `XRANGE` reply, or of the one stream of an `XREAD` reply (`Nil` when the
/// block time passed with nothing new). `None` for a reply of another shape.
pub(crate) fn entries(reply: &Value, xread: bool) -> Option<Vec<(EntryId, Entry)>> {
    let list = if xread {
        match reply {
            Value::Nil => return Some(Vec::new()),
            Value::Array(streams) => match streams.as_slice() {
                [] => return Some(Vec::new()),
                [Value::Array(kv)] => match kv.as_slice() {
                    [_name, Value::Array(list)] => list,
                    _ => return None,
                },
                _ => return None,
            },
            Value::Map(streams) => match streams.as_slice() {
                [] => return Some(Vec::new()),
                [(_name, Value::Array(list))] => list,
                _ => return None,
            },
            _ => return None,
        }
    } else {
        match reply {
            Value::Array(list) => list,
            _ => return None,
        }
    };
    list.iter().map(decode).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        let mut f = Vec::new();
        for (k, v) in fields {
            f.push(b(k));
            f.push(b(v));
        }
        Value::Array(vec![b(id), Value::Array(f)])
    }

    #[test]
    fn events_and_kicks_decode_from_the_scripts_layout() {
        let m = entry(
            "7-0",
            &[
                ("k", "message"),
                ("f", "00000000000000ff"),
                ("n", "alice"),
                ("t", "hi\nthere"),
                ("ts", "1700000000000"),
            ],
        );
        assert_eq!(
            decode(&m),
            Some((
                EntryId { id: 7, sub: 0 },
                Entry::Event {
                    id: 7,
                    event: Event::Message {
                        from: 255,
                        name: "alice".into(),
                        text: "hi\nthere".into(),
                        ts: 1_700_000_000_000
                    }
                }
            ))
        );
        let p = entry(
            "8-0",
            &[
                ("k", "presence"),
                ("j", "bob\ncarol"),
                ("l", "dave\neve"),
                ("r", "left\ntimeout"),
            ],
        );
        assert_eq!(
            decode(&p).unwrap().1,
            Entry::Event {
                id: 8,
                event: Event::Presence {
                    joined: vec!["bob".into(), "carol".into()],
                    left: vec![
                        ("dave".into(), "left".into()),
                        ("eve".into(), "timeout".into())
                    ],
                }
            }
        );
        let empty = entry(
            "9-0",
            &[("k", "presence"), ("j", "x"), ("l", ""), ("r", "")],
        );
        assert_eq!(
            decode(&empty).unwrap().1,
            Entry::Event {
                id: 9,
                event: Event::Presence {
                    joined: vec!["x".into()],
                    left: vec![]
                }
            }
        );
        let k = entry(
            "9-2",
            &[
                ("k", "kick"),
                ("s", "0000000000000001"),
                ("n", "node1"),
                ("c", "42"),
                ("r", "replaced"),
                ("m", "alice"),
            ],
        );
        assert_eq!(
            decode(&k),
            Some((
                EntryId { id: 9, sub: 2 },
                Entry::Kick {
                    key: 1,
                    node: "node1".into(),
                    serial: 42,
                    reason: CloseReason::Replaced,
                    name: "alice".into()
                }
            ))
        );
        assert_eq!(
            decode(&entry("3-1", &[("k", "later")])).unwrap().1,
            Entry::Other
        );
        assert_eq!(
            decode(&entry("4-0", &[("k", "later")])).unwrap().1,
            Entry::Event {
                id: 4,
                event: Event::Unknown("later".into())
            }
        );
        assert_eq!(decode(&b("nonsense")), None);
    }

    #[test]
    fn xread_and_xrange_replies_list_their_entries() {
        let one = entry(
            "1-0",
            &[("k", "rename"), ("s", "01"), ("a", "x"), ("b", "y")],
        );
        let xread = Value::Array(vec![Value::Array(vec![
            b("syncast:chat:events"),
            Value::Array(vec![one.clone()]),
        ])]);
        assert_eq!(entries(&xread, true).unwrap().len(), 1);
        assert_eq!(entries(&Value::Nil, true), Some(vec![]));
        assert_eq!(entries(&Value::Array(vec![one]), false).unwrap().len(), 1);
        assert_eq!(entries(&b("x"), false), None);
        assert_eq!(EntryId::parse("12-3"), Some(EntryId { id: 12, sub: 3 }));
        assert_eq!(EntryId { id: 5, sub: 0 }.to_string(), "5-0");
        assert_eq!(hex_of(255), "00000000000000ff");
        assert_eq!(key_of(&hex_of(u64::MAX)), Some(u64::MAX));
    }
}
