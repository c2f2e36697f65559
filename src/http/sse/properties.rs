//! Property tests of the SSE encoder against the kit's WHATWG parser (`crate::kit::sse`): any
//! event, comment or `retry` parses back as written, however the bytes are cut into chunks.
//!
//! Each property runs 512 cases by default (see `crate::testing`); set `PROPTEST_CASES=100000`
//! to search longer.

use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;

use super::{comment, encode_event, retry};
use crate::kit::sse::spec::{chunks, event, parse_whole, Dispatched, SpecParser};
use crate::testing::any_text;

/// What survives the SSE format: every line break in `data` comes back as LF. The format has no
/// escape, so each break must end a `data:` line, and the parser joins those lines with LF; a
/// CR, a CRLF and an LF all end a line the same way, so which one was sent cannot be recovered.
fn normalise_breaks(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// SSE properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(crate::testing::proptest_config())]

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
