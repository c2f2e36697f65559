//! The WHATWG event-stream parser (HTML, "Server-sent events": 9.2.5 "Parsing an event stream"
//! and 9.2.6 "Interpreting an event stream"), fed raw bytes in chunks of any size.
//!
//! It dispatches what a browser's `EventSource` would, state carried across events included
//! (the last event ID persists), and also reports comments and `retry` fields, which tools
//! count. Feed it from a blocking socket ([`Reader`], or [`Parser::feed`]: owned items) or from
//! an event loop that must not allocate per event ([`Parser::feed_with`], items borrowed from
//! its buffers).

use std::collections::VecDeque;
use std::io::{self, BufRead};

/// The UTF-8 byte order mark, dropped once at the start of a stream.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One item of an event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A dispatched event.
    Event {
        /// The event type: the `event` field, or `message` when that was empty or absent.
        event: String,
        /// The last event ID at dispatch; it persists across events, as the spec says. `None`
        /// until the stream sets one.
        id: Option<String>,
        /// The `data` lines joined with LF.
        data: String,
    },
    /// A comment line: what follows the colon, as sent (` keepalive` for `: keepalive`). The
    /// spec ignores comments; tools count them.
    Comment(String),
    /// A `retry` field with a valid value (digits only): the reconnection time, milliseconds.
    Retry(u128),
}

/// An [`Item`] borrowed from the parser's buffers (valid during the callback only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemRef<'a> {
    /// A dispatched event (see [`Item::Event`]).
    Event {
        /// The event type.
        event: &'a str,
        /// The last event ID.
        id: Option<&'a str>,
        /// The data.
        data: &'a str,
    },
    /// A comment (see [`Item::Comment`]).
    Comment(&'a str),
    /// A `retry` field.
    Retry(u128),
}

impl ItemRef<'_> {
    /// The owned item.
    pub fn to_item(self) -> Item {
        match self {
            ItemRef::Event { event, id, data } => Item::Event {
                event: event.to_string(),
                id: id.map(str::to_string),
                data: data.to_string(),
            },
            ItemRef::Comment(text) => Item::Comment(text.to_string()),
            ItemRef::Retry(ms) => Item::Retry(ms),
        }
    }
}

/// The parser's state between chunks.
#[derive(Debug, Default)]
pub struct Parser {
    /// Whether the first line has ended (a leading BOM is dropped there).
    started: bool,
    /// Bytes of the line being read.
    line: Vec<u8>,
    /// The previous chunk ended in a CR that ended a line: an LF right after it belongs to that
    /// line end.
    after_cr: bool,
    event: String,
    data: String,
    id: Option<String>,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Feeds bytes; returns the items they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Item> {
        let mut out = Vec::new();
        self.feed_with(bytes, |item| out.push(item.to_item()));
        out
    }

    /// Feeds bytes, calling `on` with each item they complete. Lines end at CRLF, LF or CR,
    /// also when the CR and the LF arrive in different calls. Whole line pieces are copied at
    /// once and every buffer is reused, so a stream costs no allocation per event (the client
    /// shares its cores with the server it measures).
    pub fn feed_with(&mut self, bytes: &[u8], mut on: impl FnMut(ItemRef<'_>)) {
        let mut rest = bytes;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&rest[..end]);
            self.end_line(&mut on);
            let cr = rest[end] == b'\r';
            rest = &rest[end + 1..];
            if cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.line.extend_from_slice(rest);
    }

    /// The last event ID buffer now.
    pub fn last_event_id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    fn end_line(&mut self, on: &mut impl FnMut(ItemRef<'_>)) {
        let mut raw = std::mem::take(&mut self.line);
        let mut skip = 0;
        if !self.started {
            self.started = true;
            if raw.starts_with(BOM) {
                skip = BOM.len();
            }
        }
        // Decoding per line equals decoding the stream: CR and LF never occur inside a UTF-8
        // sequence, and a truncated sequence before them decodes to U+FFFD either way.
        self.line_done(&String::from_utf8_lossy(&raw[skip..]), on);
        // Give the buffer back, keeping its capacity for the next line.
        raw.clear();
        self.line = raw;
    }

    fn line_done(&mut self, line: &str, on: &mut impl FnMut(ItemRef<'_>)) {
        if line.is_empty() {
            self.dispatch(on);
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            on(ItemRef::Comment(comment));
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => {
                self.event.clear();
                self.event.push_str(value);
            }
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => match &mut self.id {
                Some(id) => {
                    id.clear();
                    id.push_str(value);
                }
                None => self.id = Some(value.to_string()),
            },
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                // A value too large for u128 is ignored.
                if let Ok(ms) = value.parse() {
                    on(ItemRef::Retry(ms));
                }
            }
            _ => {} // unknown fields, an id with NUL, a retry with a non-digit: ignored
        }
    }

    fn dispatch(&mut self, on: &mut impl FnMut(ItemRef<'_>)) {
        // The last event ID buffer is not reset here: it carries over to later events.
        if self.data.is_empty() {
            self.event.clear();
            return;
        }
        // Every data line appended an LF; the spec removes the last one.
        let data = &self.data[..self.data.len() - 1];
        let event = if self.event.is_empty() {
            "message"
        } else {
            self.event.as_str()
        };
        on(ItemRef::Event {
            event,
            id: self.id.as_deref(),
            data,
        });
        self.data.clear();
        self.event.clear();
    }
}

/// An event stream read item by item from a blocking reader (a socket's `BufReader`).
pub struct Reader<R> {
    reader: R,
    parser: Parser,
    pending: VecDeque<Item>,
}

impl<R: BufRead> Reader<R> {
    /// Reads the stream that `reader` is positioned at (after the response head).
    pub fn new(reader: R) -> Reader<R> {
        Reader {
            reader,
            parser: Parser::new(),
            pending: VecDeque::new(),
        }
    }

    /// The next item; `Ok(None)` at the end of the stream. Blocks until one is complete.
    pub fn next_item(&mut self) -> io::Result<Option<Item>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Ok(Some(item));
            }
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                return Ok(None);
            }
            let n = buf.len();
            self.pending.extend(self.parser.feed(buf));
            self.reader.consume(n);
        }
    }

    /// The reader underneath.
    pub fn get_ref(&self) -> &R {
        &self.reader
    }

    /// The reader underneath, e.g. to read a body instead of events (before any [`Reader::next_item`]).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.reader
    }
}

/// What the property tests compare: the parser's dispatched events as a browser delivers them.
#[cfg(test)]
pub(crate) mod spec {
    use proptest::sample::Index;

    use super::{Item, Parser};

    /// One dispatched `MessageEvent`, as a browser would deliver it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Dispatched {
        /// The event type: the `event` field, or `message` when that was empty or absent.
        pub(crate) kind: String,
        /// The data buffer with its trailing LF removed.
        pub(crate) data: String,
        /// The last event ID string at dispatch time (it persists across events).
        pub(crate) last_event_id: String,
    }

    /// A whole stream parsed: the events, the last `retry` and the last event ID at the end.
    #[derive(Debug, Default)]
    pub(crate) struct SpecParser {
        pub(crate) events: Vec<Dispatched>,
        pub(crate) retry_ms: Option<u128>,
        pub(crate) last_event_id: String,
    }

    impl SpecParser {
        /// Parses a whole stream fed in the given chunks; a trailing incomplete event is
        /// discarded.
        pub(crate) fn parse<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> SpecParser {
            let mut parser = Parser::new();
            let mut out = SpecParser::default();
            for chunk in chunks {
                for item in parser.feed(chunk) {
                    match item {
                        Item::Event { event, id, data } => out.events.push(Dispatched {
                            kind: event,
                            data,
                            last_event_id: id.unwrap_or_default(),
                        }),
                        Item::Comment(_) => {}
                        Item::Retry(ms) => out.retry_ms = Some(ms),
                    }
                }
            }
            out.last_event_id = parser.last_event_id().unwrap_or_default().to_string();
            out
        }
    }

    pub(crate) fn event(kind: &str, data: &str, last_event_id: &str) -> Dispatched {
        Dispatched {
            kind: kind.into(),
            data: data.into(),
            last_event_id: last_event_id.into(),
        }
    }

    pub(crate) fn parse_whole(bytes: &[u8]) -> SpecParser {
        SpecParser::parse([bytes])
    }

    /// `bytes` cut at the given points (any order, duplicates allowed, any byte — a CRLF or a
    /// UTF-8 sequence may be split).
    pub(crate) fn chunks<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        at.sort_unstable();
        let mut out = Vec::new();
        let mut start = 0;
        for end in at {
            out.push(&bytes[start..end]);
            start = end;
        }
        out.push(&bytes[start..]);
        out
    }
}

#[cfg(test)]
mod tests;
