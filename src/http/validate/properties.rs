//! Property tests of the validators and decoders a client's bytes reach: `valid_id` and
//! `valid_name` against references written without the code under test's helpers,
//! `percent_decode` / `split_url` / `query_get` against a reference decoder, and
//! `parse_alarm_body` on any bytes.
//!
//! Each property runs 512 cases by default (see `crate::testing`). A failure found here is kept
//! twice: as a plain `#[test]` with its literal input beside the code it broke (e.g.
//! `percent_decode_refuses_a_sign_inside_an_escape` in `src/http/validate.rs`), and as the seed
//! proptest saved in `properties.proptest-regressions` beside this file, which is replayed first.

use proptest::prelude::*;
use proptest::sample::Index;

use crate::testing::any_text;

use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

use super::{
    name_key, normalize_name, parse_alarm_body, percent_decode, query_get, split_url, valid_id,
    valid_name,
};

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

/// A name's rules, spelled out: in NFC, 1–32 grapheme clusters, at most 256 bytes, no control,
/// white-space or invisible character (the normaliser and the segmenter are the crates'; the
/// composition and the character classes are what is checked).
fn reference_valid_name(name: &str) -> bool {
    let nfc: String = name.nfc().collect();
    let n = nfc.graphemes(true).count();
    (1..=32).contains(&n)
        && nfc.len() <= 256
        && !nfc
            .chars()
            .any(|c| is_cc(c) || is_white_space(c) || reference_invisible(c))
}

/// `Default_Ignorable_Code_Point` (DerivedCoreProperties.txt), `Bidi_Control` (PropList.txt),
/// general category `Cf` and `Co` (UnicodeData.txt), Unicode 16.0, as listed there.
const INVISIBLE: &[(u32, u32)] = &[
    // Default_Ignorable_Code_Point
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180D),
    (0x180E, 0x180E),
    (0x180F, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2065, 0x2065),
    (0x2066, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0000),
    (0xE0001, 0xE0001),
    (0xE0002, 0xE001F),
    (0xE0020, 0xE007F),
    (0xE0080, 0xE00FF),
    (0xE0100, 0xE01EF),
    (0xE01F0, 0xE0FFF),
    // Bidi_Control
    (0x061C, 0x061C),
    (0x200E, 0x200F),
    (0x202A, 0x202E),
    (0x2066, 0x2069),
    // Cf
    (0x0600, 0x0605),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    // Co
    (0xE000, 0xF8FF),
    (0xF0000, 0xFFFFD),
    (0x100000, 0x10FFFD),
];

fn reference_invisible(c: char) -> bool {
    INVISIBLE
        .iter()
        .any(|&(lo, hi)| (lo..=hi).contains(&(c as u32)))
}

/// A name made of pieces that matter to the rules: letters with and without marks, composed
/// and not, clusters of several code points, cased letters with special folds.
fn name_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9]{1,3}",
        1 => Just("e\u{301}".to_string()),
        1 => Just("\u{e9}".to_string()),
        1 => Just("q\u{301}\u{323}".to_string()),
        1 => Just("\u{1F1EB}\u{1F1F7}".to_string()),
        1 => Just("\u{915}\u{94D}\u{937}\u{93F}".to_string()),
        1 => Just("ß".to_string()),
        1 => Just("\u{212A}".to_string()),
        1 => Just("Σ".to_string()),
        1 => Just("ﬁ".to_string()),
        1 => Just("ａ".to_string()),
        1 => Just("日本".to_string()),
        1 => prop::char::range('\u{C0}', '\u{24F}').prop_map(String::from),
        1 => prop::char::range('\u{370}', '\u{3FF}').prop_map(String::from),
        1 => prop::char::range('\u{400}', '\u{4FF}').prop_map(String::from),
    ]
}

fn cased_name() -> impl Strategy<Value = String> {
    prop::collection::vec(name_piece(), 1..12).prop_map(|p| p.concat())
}

/// One character of the invisible set, any of them.
fn invisible_char() -> impl Strategy<Value = char> {
    (any::<Index>(), any::<u32>()).prop_map(|(i, n)| {
        let (lo, hi) = INVISIBLE[i.index(INVISIBLE.len())];
        char::from_u32(lo + n % (hi - lo + 1)).expect("no surrogates in the set")
    })
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
    #![proptest_config(crate::testing::proptest_config())]

    /// `valid_id` accepts exactly 1–64 characters of `[A-Za-z0-9._-]`.
    #[test]
    fn valid_id_accepts_exactly_1_to_64_id_characters(id in validator_input()) {
        prop_assert_eq!(valid_id(&id), reference_valid_id(&id), "id {:?}", id);
    }

    /// `valid_name` accepts exactly 1–32 grapheme clusters of visible characters, no control,
    /// white-space or invisible character.
    #[test]
    fn valid_name_accepts_exactly_1_to_32_visible_clusters(name in validator_input()) {
        prop_assert_eq!(valid_name(&name), reference_valid_name(&name), "name {:?}", name);
    }

    /// The same with names built of clusters, composed and decomposed letters, near the limit.
    #[test]
    fn valid_name_counts_clusters_not_code_points(name in prop::collection::vec(name_piece(), 25..40).prop_map(|p| p.concat())) {
        prop_assert_eq!(valid_name(&name), reference_valid_name(&name), "name {:?}", name);
    }

    /// A name is kept in NFC, and keeping it again changes nothing.
    #[test]
    fn a_normalised_name_is_nfc_and_normalising_it_again_changes_nothing(name in prop_oneof![validator_input(), cased_name()]) {
        if let Some(n) = normalize_name(&name) {
            prop_assert_eq!(n.nfc().collect::<String>(), n.clone());
            prop_assert_eq!(normalize_name(&n), Some(n.clone()));
            prop_assert_eq!(name_key(&n), name_key(&name));
        }
    }

    /// One invisible or reordering character anywhere makes any name invalid.
    #[test]
    fn an_invisible_character_anywhere_makes_a_name_invalid(name in cased_name(), c in invisible_char(), at in any::<Index>()) {
        let mut chars: Vec<char> = name.chars().collect();
        chars.insert(at.index(chars.len() + 1), c);
        let spoof: String = chars.into_iter().collect();
        prop_assert!(!valid_name(&spoof), "U+{:04X} in {:?}", c as u32, spoof);
    }

    /// Names that differ only in case or in how they are encoded (composed or not) are the same
    /// name: their keys are equal.
    #[test]
    fn names_differing_in_case_or_encoding_have_one_key(name in cased_name()) {
        let key = name_key(&name);
        prop_assert_eq!(name_key(&name.nfd().collect::<String>()), key.clone(), "NFD");
        prop_assert_eq!(name_key(&name.to_lowercase()), key.clone(), "lower case");
        // Upper case maps dotless ı (U+0131) to I, which folds to i: the one character (checked
        // over all of Unicode) whose upper case is another letter's. Found by this property;
        // kept as `names_compare_by_full_case_folding_after_normalisation` in validate.rs.
        if !name.contains('\u{131}') {
            prop_assert_eq!(name_key(&name.to_uppercase()), key.clone(), "upper case");
        }
        prop_assert_eq!(name_key(&key), key.clone(), "a key is its own key");
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
    #![proptest_config(crate::testing::proptest_config())]

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
    #![proptest_config(crate::testing::proptest_config())]

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
