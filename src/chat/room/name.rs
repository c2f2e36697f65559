//! [`Name`]: a name as the room keeps it (a session's name, its folded key, the sorted list),
//! in place in the table that holds it when it is short, as nearly all are.
//!
//! Why not `String`: each `String` is one small heap block, and a session kept three (its name,
//! the folded key, the sorted set's copy). They were allocated on the dispatcher during a ramp,
//! between the blocks the members' stream threads took and later gave back, so after a mass
//! close the sessions still in their grace period pinned a few live bytes on page after page:
//! measured, 10 s after 10,000 members closed, 41,486 live blocks (2.8 MB, 30,000 of them the
//! names' 32-byte blocks) kept 1,564 pages (6.3 MB) of one arena resident, and moving them to
//! fresh memory at the trim only refilled the scattered holes. A name in place costs no block
//! of its own: the tables are a few large allocations that come back whole.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// Bytes of UTF-8 kept in place; a longer name (up to 128 bytes: 32 characters of up to 4
/// bytes) goes to the heap.
pub(crate) const INLINE: usize = 22;

/// A name: the same size as a `String` (24 bytes), with no heap block for up to [`INLINE`]
/// bytes. Compares, orders and hashes as its text (so a map keyed by it is looked up by `&str`).
#[derive(Clone)]
pub(crate) struct Name(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl Name {
    /// The text.
    pub(crate) fn as_str(&self) -> &str {
        match &self.0 {
            // The bytes are a whole `&str`'s, copied in `From<&str>`: valid UTF-8 (the
            // fallback never runs).
            Repr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..*len as usize]).unwrap_or_default()
            }
            Repr::Heap(s) => s,
        }
    }

    /// Whether it has a heap block (longer than [`INLINE`] bytes).
    #[cfg(test)]
    fn on_heap(&self) -> bool {
        matches!(self.0, Repr::Heap(_))
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        if s.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Name(Repr::Inline {
                len: s.len() as u8,
                bytes,
            })
        } else {
            Name(Repr::Heap(s.into()))
        }
    }
}

impl From<String> for Name {
    fn from(s: String) -> Name {
        Name::from(s.as_str())
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Name {}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Name) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Name) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for Name {
    // As `str` hashes: `Borrow<str>` requires it (a map keyed by names is looked up by `&str`).
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn a_name_is_a_string_s_size_and_short_ones_have_no_heap_block() {
        assert_eq!(std::mem::size_of::<Name>(), std::mem::size_of::<String>());
        let short = Name::from("ann");
        assert!(!short.on_heap());
        assert_eq!(short.as_str(), "ann");
        let edge = "é".repeat(11); // 22 bytes
        assert!(!Name::from(edge.as_str()).on_heap());
        assert_eq!(Name::from(edge.as_str()).as_str(), edge);
        let long = "😀".repeat(32); // 128 bytes: the longest a name may be
        let n = Name::from(long.as_str());
        assert!(n.on_heap());
        assert_eq!(n.as_str(), long);
        assert_eq!(Name::from(""), *"");
    }

    #[test]
    fn names_order_and_hash_as_their_text() {
        let mut v: Vec<Name> = ["bea", "Ann", "ann", "a-very-long-name-over-22-bytes", "ä"]
            .into_iter()
            .map(Name::from)
            .collect();
        v.sort();
        let mut s: Vec<&str> = vec!["bea", "Ann", "ann", "a-very-long-name-over-22-bytes", "ä"];
        s.sort();
        assert_eq!(v.iter().map(|n| n.as_str()).collect::<Vec<_>>(), s);
        let mut m: HashMap<Name, u32> = HashMap::new();
        m.insert(Name::from("ann"), 1);
        m.insert(Name::from("a-very-long-name-over-22-bytes"), 2);
        assert_eq!(m.get("ann"), Some(&1));
        assert_eq!(m.get("a-very-long-name-over-22-bytes"), Some(&2));
        assert_eq!(m.get("Ann"), None);
        assert_eq!(
            format!("{} {:?}", v[0], Name::from("x")),
            format!("{} \"x\"", s[0])
        );
    }
}
