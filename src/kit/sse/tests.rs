//! The parser against the spec's own examples and its edge cases, and against itself however a
//! stream is cut into chunks.

use proptest::prelude::*;
use proptest::sample::Index;

use super::spec::{chunks, event, parse_whole, SpecParser};
use super::{Item, Parser, BOM};

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

proptest! {
    #![proptest_config(crate::testing::proptest_config())]

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
}

// The incremental parser as the tools drive it.

/// A dispatched event's fields.
struct Ev {
    event: String,
    id: Option<String>,
    data: String,
}

/// The dispatched events among `items`.
fn events(items: Vec<Item>) -> Vec<Ev> {
    items
        .into_iter()
        .filter_map(|i| match i {
            Item::Event { event, id, data } => Some(Ev { event, id, data }),
            _ => None,
        })
        .collect()
}

#[test]
fn parses_named_events_with_ids_and_comments() {
    let mut p = Parser::new();
    let items = p.feed(
        b"retry: 2000\n\n: keepalive\n\nevent: message\nid: 7\ndata: {\"a\":1}\n\ndata: x\n\n",
    );
    assert_eq!(items[0], Item::Retry(2000));
    assert_eq!(items[1], Item::Comment(" keepalive".into()));
    let ev = events(items);
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0].event, "message");
    assert_eq!(ev[0].id.as_deref(), Some("7"));
    assert_eq!(ev[0].data, "{\"a\":1}");
    // The last event ID persists; an unnamed event is a `message`.
    assert_eq!(ev[1].id.as_deref(), Some("7"));
    assert_eq!(ev[1].data, "x");
}

#[test]
fn joins_data_lines_and_handles_every_line_ending_split_anywhere() {
    let text = b"event: e\r\ndata: a\rdata:b\r\ndata\n\n";
    for cut in 0..text.len() {
        let mut p = Parser::new();
        let mut items = p.feed(&text[..cut]);
        items.extend(p.feed(&text[cut..]));
        let ev = events(items);
        assert_eq!(ev.len(), 1, "cut at {cut}");
        assert_eq!(ev[0].event, "e");
        assert_eq!(ev[0].data, "a\nb\n");
    }
}

#[test]
fn an_event_without_data_is_not_dispatched_and_its_name_is_reset() {
    let mut p = Parser::new();
    let ev = events(p.feed(b"event: lonely\n\ndata: y\n\n"));
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].event, "message");
}

#[test]
fn an_unfinished_event_is_not_dispatched() {
    let mut p = Parser::new();
    assert!(events(p.feed(b"data: half\n")).is_empty());
}
