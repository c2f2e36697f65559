//! Property tests for the pure code a client's bytes reach: the SSE encoder (checked against a
//! separate, complete parser written from the WHATWG HTML "Server-sent events" rules), the id and
//! name validators, query-string decoding and alarm bodies.
//!
//! Each property runs 512 cases by default so the file stays a few seconds long in CI; set
//! `PROPTEST_CASES=100000` to search longer. A failure found here is kept twice: as a plain
//! `#[test]` with its literal input beside the code it broke (e.g.
//! `percent_decode_refuses_a_sign_inside_an_escape` in `src/http/validate.rs`), and as the seed
//! proptest saved in `tests/properties.proptest-regressions`, which is replayed first.

use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;

use syncast::http::sse::{comment, encode_event, retry};
use syncast::http::validate::{
    parse_alarm_body, percent_decode, query_get, split_url, valid_id, valid_name,
};

/// 512 cases unless `PROPTEST_CASES` is set, which then wins (proptest's default reads it).
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 512;
    }
    config
}

// ---------------------------------------------------------------------------------------------
// A spec-conformant event-stream parser (WHATWG HTML, 9.2.5 "Parsing an event stream" and 9.2.6
// "Interpreting an event stream"), fed arbitrary chunks of bytes. It is deliberately separate from
// `tests/common`'s `Sse`, which reads a live socket line by line and reports comments; this one is
// what a browser's `EventSource` would dispatch, state carried across events included.
// ---------------------------------------------------------------------------------------------

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched `MessageEvent`, as a browser would deliver it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dispatched {
    /// The event type: the `event` field, or `message` when that was empty or absent.
    kind: String,
    /// The data buffer with its trailing LF removed.
    data: String,
    /// The last event ID string at dispatch time (it persists across events).
    last_event_id: String,
}

/// The parser state the spec describes, plus what has been dispatched so far.
#[derive(Debug, Default)]
struct SpecParser {
    /// Whether the start of the stream has been seen (a single leading BOM is dropped there).
    started: bool,
    /// Bytes of the line being read (or of the stream's start, until `started`).
    line: Vec<u8>,
    /// The previous byte was a CR ending a line: an LF right after it belongs to that line end,
    /// even when it arrives in the next chunk.
    after_cr: bool,
    data: String,
    event_type: String,
    last_event_id: String,
    /// The reconnection time set by `retry` (only digits; a value too large for u128 is ignored).
    retry_ms: Option<u128>,
    events: Vec<Dispatched>,
}

impl SpecParser {
    /// Parses a whole stream fed in the given chunks; a trailing incomplete event is discarded.
    fn parse<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> SpecParser {
        let mut parser = SpecParser::default();
        for chunk in chunks {
            parser.feed(chunk);
        }
        parser
    }

    fn feed(&mut self, chunk: &[u8]) {
        if self.started {
            self.bytes(chunk);
            return;
        }
        // The UTF-8 decode the spec applies drops one leading BOM; wait until we can tell.
        self.line.extend_from_slice(chunk);
        if self.line.len() < BOM.len() && BOM.starts_with(&self.line) {
            return;
        }
        self.started = true;
        let head = std::mem::take(&mut self.line);
        self.bytes(head.strip_prefix(BOM).unwrap_or(&head));
    }

    /// Splits on CRLF, LF or CR (end-of-line in the spec's ABNF).
    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\n' => self.end_line(),
                b'\r' => {
                    self.end_line();
                    self.after_cr = true;
                }
                _ => self.line.push(b),
            }
        }
    }

    fn end_line(&mut self) {
        let raw = std::mem::take(&mut self.line);
        // Decoding per line equals decoding the stream: CR and LF never occur inside a UTF-8
        // sequence, and a truncated sequence before them decodes to U+FFFD either way.
        let line = String::from_utf8_lossy(&raw);
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if line.starts_with(':') {
            return; // a comment
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        match field {
            "event" => self.event_type = value.to_string(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.last_event_id = value.to_string(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry_ms = value.parse().ok().or(self.retry_ms);
            }
            _ => {} // unknown fields, an id with NUL, a retry with a non-digit: ignored
        }
    }

    fn dispatch(&mut self) {
        // The last event ID buffer is not reset here: it carries over to later events.
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        let kind = match std::mem::take(&mut self.event_type) {
            t if t.is_empty() => "message".to_string(),
            t => t,
        };
        self.events.push(Dispatched {
            kind,
            data,
            last_event_id: self.last_event_id.clone(),
        });
    }
}

fn event(kind: &str, data: &str, last_event_id: &str) -> Dispatched {
    Dispatched {
        kind: kind.into(),
        data: data.into(),
        last_event_id: last_event_id.into(),
    }
}

fn parse_whole(bytes: &[u8]) -> SpecParser {
    SpecParser::parse([bytes])
}

/// `bytes` cut at the given points (any order, duplicates allowed, any byte — a CRLF or a UTF-8
/// sequence may be split).
fn chunks<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
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

/// What survives the SSE format: every line break in `data` comes back as LF. The format has no
/// escape, so each break must end a `data:` line, and the parser joins those lines with LF; a
/// CR, a CRLF and an LF all end a line the same way, so which one was sent cannot be recovered.
fn normalise_breaks(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

/// The parser against the spec's own examples and its edge cases.
#[test]
fn spec_parser_follows_the_whatwg_examples() {
    let p = parse_whole(b"data: YHOO\ndata: +2\ndata: 10\n\n");
    assert_eq!(p.events, [event("message", "YHOO\n+2\n10", "")]);

    // Comment, id, an empty `id` resetting it, two spaces keeping one, no final blank line.
    let p = parse_whole(
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n",
    );
    assert_eq!(
        p.events,
        [
            event("message", "first event", "1"),
            event("message", "second event", "")
        ]
    );

    // `data` alone gives an empty line of data; the last, unterminated event is dropped.
    let p = parse_whole(b"data\n\ndata\ndata\n\ndata:");
    assert_eq!(
        p.events,
        [event("message", "", ""), event("message", "\n", "")]
    );

    // With or without the space after the colon.
    let p = parse_whole(b"data:test\n\ndata: test\n\n");
    assert_eq!(
        p.events,
        [event("message", "test", ""), event("message", "test", "")]
    );
}

#[test]
fn spec_parser_handles_line_ends_bom_ids_retry_and_types() {
    let p = parse_whole(b"data: a\rdata: b\r\n\r\ndata: c\n\r\n");
    assert_eq!(
        p.events,
        [event("message", "a\nb", ""), event("message", "c", "")]
    );

    // One leading BOM is dropped; a second is part of the field name (unknown field).
    assert_eq!(parse_whole(b"\xEF\xBB\xBFdata: a\n\n").events.len(), 1);
    assert!(parse_whole(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\n")
        .events
        .is_empty());
    assert!(parse_whole(b"x\xEF\xBB\xBFdata: a\n\n").events.is_empty());

    // An id containing NUL is ignored; the last id carries over to later events.
    let p = parse_whole(b"id: 1\ndata: x\n\nid: a\0b\ndata: y\n\ndata: z\n\n");
    let ids: Vec<_> = p.events.iter().map(|e| e.last_event_id.as_str()).collect();
    assert_eq!(ids, ["1", "1", "1"]);

    // Retry takes digits only.
    let p = parse_whole(b"retry: 1500\n\nretry: 15x\n\nretry:  7\n\nretry:\n\n");
    assert_eq!(p.retry_ms, Some(1500));
    assert!(p.events.is_empty());

    // A type without data dispatches nothing and does not leak into the next event.
    let p = parse_whole(b"event: a\n\ndata: x\n\nevent: b\ndata: y\n\n");
    assert_eq!(p.events, [event("message", "x", ""), event("b", "y", "")]);

    // Field names are case-sensitive; unknown fields are ignored.
    assert!(parse_whole(b"Data: x\n\nfoo: y\n\n").events.is_empty());

    // A CR split from its LF across chunks ends one line, not two.
    let p = SpecParser::parse([&b"data: a\r"[..], b"\ndata: b\r", b"\n\r", b"\n"]);
    assert_eq!(p.events, [event("message", "a\nb", "")]);
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// Text rich in what is hard for SSE: every kind of line break, NUL, colons, spaces, BOMs,
/// field-like prefixes and arbitrary Unicode.
fn tricky_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::collection::vec(any::<char>(), 0..6).prop_map(String::from_iter),
        1 => Just("\n".to_string()),
        1 => Just("\r".to_string()),
        1 => Just("\r\n".to_string()),
        1 => Just("\n\n".to_string()),
        1 => Just("\r\r\n\n".to_string()),
        1 => Just("\0".to_string()),
        1 => Just(":".to_string()),
        1 => Just(" ".to_string()),
        1 => Just("\u{FEFF}".to_string()),
        1 => Just("data: x".to_string()),
        1 => Just("id: 9".to_string()),
        1 => Just("é日".to_string()),
    ];
    prop::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat())
}

/// Any text: plain `String`s and the tricky ones above.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), tricky_text()]
}

/// An event name as callers may pass it: any text without CR or LF (empty included).
fn event_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\r\n]{0,12}",
        Just(String::new()),
        Just("message".to_string()),
        Just(" lead".to_string()),
        Just("a:b".to_string()),
    ]
}

/// One item written to a stream.
#[derive(Debug, Clone)]
enum Item {
    Event(Option<String>, Option<u64>, String),
    Comment(String),
    Retry(Duration),
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        6 => (prop::option::of(event_name()), any::<Option<u64>>(), any_text())
            .prop_map(|(name, id, data)| Item::Event(name, id, data)),
        1 => any_text().prop_map(Item::Comment),
        1 => (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Item::Retry(Duration::new(s, n))),
    ]
}

fn encode(item: &Item) -> Vec<u8> {
    match item {
        Item::Event(name, id, data) => encode_event(name.as_deref(), *id, data),
        Item::Comment(text) => comment(text),
        Item::Retry(after) => retry(*after),
    }
}

/// What a browser sees for `items`, written back to back on a fresh stream.
fn expected(items: &[Item]) -> (Vec<Dispatched>, Option<u128>) {
    let mut last_id = String::new();
    let mut retry_ms = None;
    let mut events = Vec::new();
    for item in items {
        match item {
            Item::Event(name, id, data) => {
                if let Some(id) = id {
                    last_id = id.to_string();
                }
                let kind = match name.as_deref() {
                    None | Some("") => "message",
                    Some(name) => name,
                };
                events.push(event(kind, &normalise_breaks(data), &last_id));
            }
            Item::Comment(_) => {}
            Item::Retry(after) => retry_ms = Some(after.as_millis()),
        }
    }
    (events, retry_ms)
}

/// An SSE-ish byte soup for testing the parser alone: line ends of every kind, field names,
/// colons, BOM and invalid UTF-8.
fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(&b"\n"[..]),
        Just(&b"\r"[..]),
        Just(&b"\r\n"[..]),
        Just(&b"data"[..]),
        Just(&b"event"[..]),
        Just(&b"id"[..]),
        Just(&b"retry"[..]),
        Just(&b":"[..]),
        Just(&b" "[..]),
        Just(&b"7"[..]),
        Just(&b"\0"[..]),
        Just(BOM),
        Just(&b"\xC3"[..]),
        Just(&b"\xA9"[..]),
        Just(&b"\xFF"[..]),
        Just(&b"x"[..]),
    ];
    prop::collection::vec(piece, 0..48).prop_map(|pieces| pieces.concat())
}

// ---------------------------------------------------------------------------------------------
// SSE properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// The parser itself: however a stream is cut into chunks (inside a CRLF, a BOM or a UTF-8
    /// sequence), it dispatches the same events as when fed whole.
    #[test]
    fn spec_parser_gives_the_same_events_for_any_chunking(
        bytes in prop_oneof![sse_bytes(), prop::collection::vec(any::<u8>(), 0..64)],
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let whole = parse_whole(&bytes);
        let split = SpecParser::parse(chunks(&bytes, &cuts));
        prop_assert_eq!(&split.events, &whole.events);
        prop_assert_eq!(split.retry_ms, whole.retry_ms);
        let bytewise = SpecParser::parse(bytes.chunks(1));
        prop_assert_eq!(&bytewise.events, &whole.events);
    }

    /// One event round-trips: same type, id and data, line breaks normalised to LF (see
    /// `normalise_breaks` for why a CR cannot come back as a CR). An empty name is `message`.
    #[test]
    fn an_encoded_event_parses_back_to_its_type_id_and_data(
        name in event_name(),
        id in any::<u64>(),
        data in any_text(),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let bytes = encode_event(Some(&name), Some(id), &data);
        let kind = if name.is_empty() { "message" } else { name.as_str() };
        let want = [event(kind, &normalise_breaks(&data), &id.to_string())];
        prop_assert_eq!(&parse_whole(&bytes).events, &want);
        prop_assert_eq!(&SpecParser::parse(chunks(&bytes, &cuts)).events, &want);
        prop_assert_eq!(&SpecParser::parse(bytes.chunks(1)).events, &want);
    }

    /// Data without CR round-trips byte for byte, with or without a name and an id.
    #[test]
    fn data_without_cr_round_trips_exactly(
        name in prop::option::of(event_name()),
        id in any::<Option<u64>>(),
        data in any_text().prop_map(|d| d.replace('\r', "")),
    ) {
        let parsed = parse_whole(&encode_event(name.as_deref(), id, &data));
        prop_assert_eq!(parsed.events.len(), 1);
        prop_assert_eq!(&parsed.events[0].data, &data);
        let id = id.map(|id| id.to_string()).unwrap_or_default();
        prop_assert_eq!(&parsed.events[0].last_event_id, &id);
    }

    /// Events, comments and retries written back to back and read in random chunks give the
    /// same sequence of events (ids carrying over as the spec says) and the last retry.
    #[test]
    fn a_sequence_of_items_parses_back_in_order_for_any_chunking(
        items in prop::collection::vec(item(), 0..10),
        cuts in prop::collection::vec(any::<Index>(), 0..24),
    ) {
        let bytes: Vec<u8> = items.iter().flat_map(encode).collect();
        let (events, retry_ms) = expected(&items);
        let parsed = SpecParser::parse(chunks(&bytes, &cuts));
        prop_assert_eq!(&parsed.events, &events);
        prop_assert_eq!(parsed.retry_ms, retry_ms);
    }

    /// A comment never dispatches and changes no state, whatever its text; on its own it is one
    /// `:` line and the blank line.
    #[test]
    fn a_comment_never_dispatches(text in any_text(), id in any::<u64>()) {
        let bytes = comment(&text);
        let alone = parse_whole(&bytes);
        prop_assert!(alone.events.is_empty());
        prop_assert_eq!(alone.retry_ms, None);
        prop_assert_eq!(&alone.last_event_id, "");

        // Between two events it changes nothing either.
        let mut stream = encode_event(None, Some(id), "a");
        stream.extend_from_slice(&bytes);
        stream.extend_from_slice(&encode_event(None, None, "b"));
        let id = id.to_string();
        prop_assert_eq!(
            parse_whole(&stream).events,
            vec![event("message", "a", &id), event("message", "b", &id)]
        );
    }

    /// `retry` sets the reconnection time to the whole milliseconds and never dispatches.
    #[test]
    fn retry_sets_the_reconnection_time_and_never_dispatches(
        secs in any::<u64>(),
        nanos in 0u32..1_000_000_000,
    ) {
        let after = Duration::new(secs, nanos);
        let parsed = parse_whole(&retry(after));
        prop_assert!(parsed.events.is_empty());
        prop_assert_eq!(parsed.retry_ms, Some(after.as_millis()));
    }
}

// ---------------------------------------------------------------------------------------------
// Validators: checked against references written without the code under test's helpers.
// ---------------------------------------------------------------------------------------------

/// `[A-Za-z0-9._-]`, spelled out.
const ID_CHARS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";

fn reference_valid_id(id: &str) -> bool {
    let n = id.chars().count();
    (1..=64).contains(&n) && id.chars().all(|c| ID_CHARS.contains(c))
}

/// Unicode general category Cc (what `char::is_control` means), spelled out.
fn is_cc(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1F}' | '\u{7F}'..='\u{9F}')
}

/// The Unicode `White_Space` property (what `char::is_whitespace` means), spelled out.
fn is_white_space(c: char) -> bool {
    matches!(
        c,
        '\u{9}'..='\u{D}'
            | ' '
            | '\u{85}'
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

fn reference_valid_name(name: &str) -> bool {
    let n = name.chars().count();
    (1..=32).contains(&n) && !name.chars().any(|c| is_cc(c) || is_white_space(c))
}

/// Characters that matter to the validators: id characters, the other ASCII punctuation, every
/// control and white-space character, and arbitrary Unicode.
fn validator_char() -> impl Strategy<Value = char> {
    prop_oneof![
        6 => prop::sample::select(ID_CHARS.chars().collect::<Vec<_>>()),
        2 => prop::sample::select("!\"#$%&'()*+,/:;<=>?@[\\]^`{|}~".chars().collect::<Vec<_>>()),
        1 => prop::char::range('\0', '\u{7F}'),
        1 => prop::char::range('\u{80}', '\u{A0}'),
        1 => prop::sample::select(vec![
            '\u{85}', '\u{A0}', '\u{1680}', '\u{2000}', '\u{200A}', '\u{200B}', '\u{2028}',
            '\u{2029}', '\u{202F}', '\u{205F}', '\u{3000}', '\u{FEFF}', '/', ' ', '\t',
        ]),
        2 => any::<char>(),
    ]
}

fn validator_input() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => prop::collection::vec(validator_char(), 0..80).prop_map(String::from_iter),
        1 => "[A-Za-z0-9._-]{0,70}",
        1 => "[^\\p{Cc}\\s]{0,40}",
        1 => any::<String>(),
        // Lengths around the limits (64 id characters, 32 name characters).
        2 => prop::collection::vec(prop::sample::select(ID_CHARS.chars().collect::<Vec<_>>()), 62..=66)
            .prop_map(String::from_iter),
        2 => prop::collection::vec(prop_oneof![Just('é'), Just('x'), Just('日')], 30..=34)
            .prop_map(String::from_iter),
        // Almost valid: a valid id or name with one character replaced by any other.
        3 => ("[A-Za-z0-9._-]{1,64}", validator_char(), any::<Index>()).prop_map(replace_one),
        3 => ("[^\\p{Cc}\\s]{1,32}", validator_char(), any::<Index>()).prop_map(replace_one),
    ]
}

/// Every Unicode scalar value between two valid characters, against the references: exhaustive
/// where sampling would rarely hit the one character a bug lets through.
#[test]
fn validators_agree_with_the_references_on_every_character() {
    let mut text = String::with_capacity(8);
    for c in char::MIN..=char::MAX {
        text.clear();
        text.push('a');
        text.push(c);
        text.push('b');
        assert_eq!(valid_id(&text), reference_valid_id(&text), "id {text:?}");
        assert_eq!(
            valid_name(&text),
            reference_valid_name(&text),
            "name {text:?}"
        );
    }
}

fn replace_one((text, c, at): (String, char, Index)) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let i = at.index(chars.len());
    chars[i] = c;
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(config())]

    /// `valid_id` accepts exactly 1–64 characters of `[A-Za-z0-9._-]`.
    #[test]
    fn valid_id_accepts_exactly_1_to_64_id_characters(id in validator_input()) {
        prop_assert_eq!(valid_id(&id), reference_valid_id(&id), "id {:?}", id);
    }

    /// `valid_name` accepts exactly 1–32 characters, none a control or white-space character.
    #[test]
    fn valid_name_accepts_exactly_1_to_32_visible_characters(name in validator_input()) {
        prop_assert_eq!(valid_name(&name), reference_valid_name(&name), "name {:?}", name);
    }
}

// ---------------------------------------------------------------------------------------------
// Query strings
// ---------------------------------------------------------------------------------------------

/// RFC 3986 unreserved characters, which never need escaping.
fn unreserved(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')
}

/// A percent-encoder with the freedom a client has: `escape[i]` says whether the i-th character
/// is escaped even when it need not be, `plus` writes a space as `+`, `upper` picks the hex case.
/// `%`, `+`, `&`, `=` and `#` are always escaped, as a query's separators.
fn percent_encode(text: &str, escape: &[bool], plus: bool, upper: bool) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        let forced = !unreserved(c) && (c.is_ascii_control() || "%+&=#? ".contains(c));
        if c == ' ' && plus {
            out.push('+');
        } else if forced
            || escape
                .get(i % escape.len().max(1))
                .copied()
                .unwrap_or(false)
        {
            let mut buf = [0; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                if upper {
                    out.push_str(&format!("%{b:02X}"));
                } else {
                    out.push_str(&format!("%{b:02x}"));
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A strict decoder: `%` must be followed by exactly two hex digits, `+` is a space, and the
/// result must be UTF-8.
fn reference_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = (*bytes.get(i + 1)? as char).to_digit(16)?;
                let lo = (*bytes.get(i + 2)? as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A query key: often one of a few names, so that keys repeat.
fn query_key() -> impl Strategy<Value = String> {
    prop_oneof![
        any_text(),
        prop::sample::select(vec!["mode", "id", "", "a b"]).prop_map(String::from),
    ]
}

/// Text heavy in escapes, broken escapes, signs and multi-byte characters.
fn escape_soup() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("%"),
        Just("%%"),
        Just("+"),
        Just("-"),
        Just("0"),
        Just("7"),
        Just("a"),
        Just("F"),
        Just("g"),
        Just("C3"),
        Just("A9"),
        Just("ff"),
        Just("é"),
        Just("&"),
        Just("="),
        Just("?"),
        Just(" "),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(config())]

    /// Whatever a client escapes, and however, `percent_decode` gives the text back.
    #[test]
    fn percent_decode_inverts_percent_encoding(
        text in any_text(),
        escape in prop::collection::vec(any::<bool>(), 0..8),
        plus in any::<bool>(),
        upper in any::<bool>(),
    ) {
        let encoded = percent_encode(&text, &escape, plus, upper);
        prop_assert_eq!(percent_decode(&encoded), Some(text));
    }

    /// On any input `percent_decode` agrees with the strict decoder: a `%` takes exactly two hex
    /// digits, anything else is refused.
    #[test]
    fn percent_decode_accepts_exactly_well_formed_escapes(
        text in prop_oneof![escape_soup(), any::<String>()],
    ) {
        prop_assert_eq!(percent_decode(&text), reference_decode(&text), "input {:?}", text);
    }

    /// Arbitrary key/value pairs (repeated keys included), encoded into a URL with stray `&`s,
    /// come back from `split_url` in order, and `query_get` finds each key's first value.
    #[test]
    fn split_url_and_query_get_recover_encoded_pairs(
        path in "[^?]{0,16}",
        pairs in prop::collection::vec((query_key(), any_text()), 0..6),
        escape in prop::collection::vec(any::<bool>(), 0..8),
        plus in any::<bool>(),
        stray in prop::collection::vec(any::<bool>(), 7),
        absent in query_key(),
    ) {
        let mut query = String::new();
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                query.push('&');
            }
            if stray[i] {
                query.push('&'); // an empty segment, which is skipped
            }
            query.push_str(&percent_encode(k, &escape, plus, i % 2 == 0));
            query.push('=');
            query.push_str(&percent_encode(v, &escape, plus, i % 2 == 1));
        }
        if stray[6] {
            query.push('&');
        }
        let url = if query.is_empty() && !plus { path.clone() } else { format!("{path}?{query}") };
        let (got_path, got) = split_url(&url);
        prop_assert_eq!(got_path, path.as_str());
        prop_assert_eq!(&got, &pairs);
        for key in pairs.iter().map(|(k, _)| k).chain([&absent]) {
            let first = pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
            prop_assert_eq!(query_get(&got, key), first);
        }
    }

    /// No URL makes `split_url` or `query_get` panic, and every pair it returns is the decoding
    /// of one `&`-separated segment of the query.
    #[test]
    fn split_url_never_panics_and_only_returns_decodable_pairs(
        url in prop_oneof![escape_soup(), any::<String>(), "/[a-z/]{0,8}\\?[a-zA-Z0-9%&=+]{0,24}"],
        key in any_text(),
    ) {
        let (path, pairs) = split_url(&url);
        prop_assert!(url.starts_with(path));
        let _ = query_get(&pairs, &key);
        let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
        let decodable = query
            .split('&')
            .filter(|s| !s.is_empty())
            .filter_map(|s| {
                let (k, v) = s.split_once('=').unwrap_or((s, ""));
                Some((reference_decode(k)?, reference_decode(v)?))
            })
            .collect::<Vec<_>>();
        prop_assert_eq!(pairs, decodable);
    }
}

// ---------------------------------------------------------------------------------------------
// Alarm bodies
// ---------------------------------------------------------------------------------------------

/// White space as `str::trim` sees it (Unicode `White_Space`), and JSON's own.
fn white_space() -> impl Strategy<Value = String> {
    let c = prop_oneof![
        Just(' '),
        Just('\t'),
        Just('\n'),
        Just('\r'),
        Just('\u{A0}'),
        Just('\u{3000}')
    ];
    prop::collection::vec(c, 0..4).prop_map(String::from_iter)
}

/// JSON's white space only, for inside an object.
fn json_space() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec![' ', '\t', '\n', '\r']), 0..3)
        .prop_map(String::from_iter)
}

/// A documented body with its expected value: `true`/`false` or `{"alarm": bool}`, with white
/// space wherever it is allowed.
fn documented_body() -> impl Strategy<Value = (String, bool)> {
    let plain = (white_space(), any::<bool>(), white_space())
        .prop_map(|(a, v, b)| (format!("{a}{v}{b}"), v));
    let json = (
        white_space(),
        prop::collection::vec(json_space(), 4),
        any::<bool>(),
        white_space(),
    )
        .prop_map(|(a, s, v, b)| {
            let text = format!("{a}{{{}\"alarm\"{}:{}{v}{}}}{b}", s[0], s[1], s[2], s[3]);
            (text, v)
        });
    prop_oneof![plain, json]
}

/// Bytes near the documented forms: pieces of them, JSON punctuation, invalid UTF-8, nesting.
fn body_soup() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(&b"true"[..]),
        Just(&b"false"[..]),
        Just(&b"{"[..]),
        Just(&b"}"[..]),
        Just(&b"["[..]),
        Just(&b"]"[..]),
        Just(&b"\"alarm\""[..]),
        Just(&b"\"other\""[..]),
        Just(&b":"[..]),
        Just(&b","[..]),
        Just(&b" "[..]),
        Just(&b"\n"[..]),
        Just(&b"1"[..]),
        Just(&b"null"[..]),
        Just(&b"\xFF"[..]),
        Just(&b"\xC3"[..]),
        Just(&b"\xE3\x80\x80"[..]),
    ];
    prop::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat())
}

/// Whether `body` is one of the documented forms meaning `value`: `true`/`false` with white
/// space around, or a JSON object whose `alarm` member is that boolean.
fn documents(body: &[u8], value: bool) -> bool {
    let Ok(text) = std::str::from_utf8(body) else {
        return false;
    };
    let text = text.trim_matches(is_white_space);
    if text == if value { "true" } else { "false" } {
        return true;
    }
    matches!(
        serde_json::from_str::<serde_json::Value>(text),
        Ok(serde_json::Value::Object(map)) if map.get("alarm") == Some(&serde_json::Value::Bool(value))
    )
}

proptest! {
    #![proptest_config(config())]

    /// Every documented form is accepted with its value.
    #[test]
    fn parse_alarm_body_accepts_every_documented_form((body, value) in documented_body()) {
        prop_assert_eq!(parse_alarm_body(body.as_bytes()), Some(value), "body {:?}", body);
    }

    /// No bytes make it panic, and it answers `Some` only for a documented form.
    #[test]
    fn parse_alarm_body_never_panics_and_accepts_only_documented_forms(
        body in prop_oneof![body_soup(), prop::collection::vec(any::<u8>(), 0..128)],
    ) {
        match parse_alarm_body(&body) {
            Some(value) => prop_assert!(documents(&body, value), "body {:?}", body),
            None => {
                prop_assert!(!documents(&body, true) && !documents(&body, false), "body {:?}", body)
            }
        }
    }
}

/// Deep nesting is refused by serde_json's recursion limit, not by a stack overflow.
#[test]
fn parse_alarm_body_refuses_deep_nesting_without_overflowing() {
    let deep = format!("{}{}", "[".repeat(65_536), "]".repeat(65_536));
    assert_eq!(parse_alarm_body(deep.as_bytes()), None);
    let deep = format!("{}true{}", "{\"alarm\":".repeat(10_000), "}".repeat(10_000));
    assert_eq!(parse_alarm_body(deep.as_bytes()), None);
}
