//! Validation of what clients send: ids, names, query strings, bodies.

/// An alarm id: 1–64 characters of `[A-Za-z0-9._-]`.
pub(crate) fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Most grapheme clusters (what a person sees as one character) in a chat name.
pub(crate) const MAX_NAME_CLUSTERS: usize = 32;
/// Most bytes (UTF-8, after NFC) in a chat name: one cluster may stack many combining marks.
pub(crate) const MAX_NAME_BYTES: usize = 256;

/// A chat name as the room keeps and shows it: `name` in Unicode NFC, if that is 1–32
/// grapheme clusters (at most 256 bytes) with no character a person cannot see or that
/// reorders text ([`invisible`]), no control character and no white space; `None` otherwise.
/// NFC first, so `e` + U+0301 and `é` are the same name and count as one cluster.
pub(crate) fn normalize_name(name: &str) -> Option<String> {
    use unicode_normalization::UnicodeNormalization;
    use unicode_segmentation::UnicodeSegmentation;
    let nfc: String = name.nfc().collect();
    let clusters = nfc.graphemes(true).count();
    let ok = (1..=MAX_NAME_CLUSTERS).contains(&clusters)
        && nfc.len() <= MAX_NAME_BYTES
        && nfc
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && !invisible(c));
    ok.then_some(nfc)
}

/// Whether `name` is a valid chat name ([`normalize_name`]).
pub(crate) fn valid_name(name: &str) -> bool {
    normalize_name(name).is_some()
}

/// What two chat names are compared by: Unicode compatibility caseless matching (The Unicode
/// Standard §3.13, D146: NFKD(toCasefold(NFKD(toCasefold(NFD(name)))))), with full case
/// folding (`ß` = `ss`, the Kelvin sign = `k`) and compatibility forms folded (fullwidth `ａ`
/// = `a`, `ﬁ` = `fi`). Two names with the same key are one name: the second is taken.
pub(crate) fn name_key(name: &str) -> String {
    use unicase::UniCase;
    use unicode_normalization::UnicodeNormalization;
    let fold = |s: String| UniCase::unicode(s).to_folded_case();
    let once: String = fold(name.nfd().collect()).nfkd().collect();
    fold(once).nfkd().collect()
}

/// Characters a name may not hold because a reader cannot see them or they change how the
/// text around them is shown: the Unicode properties `Default_Ignorable_Code_Point` (zero
/// widths, joiners, variation selectors, fillers, tags, soft hyphen, ...) and `Bidi_Control`
/// (embeddings, overrides, isolates, marks), general category `Cf` (format characters: the
/// ones above plus prepended signs and interlinear annotations) and private-use characters
/// (shown however a font likes). Unicode 16.0 (DerivedCoreProperties.txt, PropList.txt,
/// UnicodeData.txt); a joiner-built emoji such as a family is refused with them, its parts
/// are not.
pub(crate) fn invisible(c: char) -> bool {
    matches!(c as u32,
        // Default_Ignorable_Code_Point
        0x00AD | 0x034F | 0x061C | 0x115F..=0x1160 | 0x17B4..=0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFF8 | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A
        | 0xE0000..=0xE0FFF
        // Cf not listed above (Bidi_Control is: 061C, 200E-200F, 202A-202E, 2066-2069)
        | 0x0600..=0x0605 | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2 | 0xFFF9..=0xFFFB
        | 0x110BD | 0x110CD | 0x13430..=0x1343F
        // Private use
        | 0xE000..=0xF8FF | 0xF0000..=0xFFFFD | 0x100000..=0x10FFFD)
}

/// Splits a request URL into its path and its decoded query pairs. Pairs that do not decode to
/// UTF-8 are dropped; the caller reports missing values.
pub(crate) fn split_url(url: &str) -> (&str, Vec<(String, String)>) {
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, q),
        None => (url, ""),
    };
    let pairs = query
        .split('&')
        .filter(|s| !s.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect();
    (path, pairs)
}

/// The first value of `key` in decoded query pairs.
pub(crate) fn query_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Decodes `%XX` escapes and `+` (as space); `None` on a bad escape or invalid UTF-8.
pub(crate) fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                // Exactly two hex digits: `u8::from_str_radix` alone would also take `+1`.
                let hi = hex_digit(*bytes.get(i + 1)?)?;
                let lo = hex_digit(*bytes.get(i + 2)?)?;
                out.push((hi << 4) | lo);
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

/// The value of one ASCII hex digit.
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parses an alarm body: `true`/`false` (surrounding white space allowed) or `{"alarm": bool}`.
pub(crate) fn parse_alarm_body(body: &[u8]) -> Option<bool> {
    let text = std::str::from_utf8(body).ok()?.trim();
    match text {
        "true" => Some(true),
        "false" => Some(false),
        _ => {
            let v: serde_json::Value = serde_json::from_str(text).ok()?;
            v.as_object()?.get("alarm")?.as_bool()
        }
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("42"));
        assert!(valid_id("user.name_1-x"));
        assert!(valid_id(&"a".repeat(64)));
        assert!(!valid_id(""));
        assert!(!valid_id(&"a".repeat(65)));
        assert!(!valid_id("a b"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id("é"));
    }

    #[test]
    fn names() {
        assert!(valid_name("alice"));
        assert!(valid_name("Zoë"));
        assert!(valid_name("日本語"));
        assert!(valid_name(&"é".repeat(32)));
        assert!(!valid_name(&"é".repeat(33)));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("a\tb"));
        assert!(!valid_name("a\u{7}"));
    }

    #[test]
    fn names_are_kept_in_nfc_and_their_length_is_what_a_person_sees() {
        // e + COMBINING ACUTE is é: stored composed, one cluster.
        assert_eq!(normalize_name("Zoe\u{308}").as_deref(), Some("Zoë"));
        assert_eq!(normalize_name("e\u{301}").unwrap().chars().count(), 1);
        // A letter with a mark that has no composed form is still one cluster.
        assert!(valid_name(&"q\u{301}".repeat(32)));
        assert!(!valid_name(&"q\u{301}".repeat(33)));
        // Flags are two code points each, one cluster.
        assert!(valid_name(&"\u{1F1EB}\u{1F1F7}".repeat(32)));
        assert!(!valid_name(&"\u{1F1EB}\u{1F1F7}".repeat(33)));
        assert!(valid_name("\u{1F600}"));
        // Devanagari: क्षि is one cluster of four code points.
        assert!(valid_name(&"\u{915}\u{94D}\u{937}\u{93F}".repeat(8)));
        // One cluster stacking marks past the byte cap.
        assert!(!valid_name(&format!("a{}", "\u{301}".repeat(200))));
    }

    #[test]
    fn names_with_invisible_or_reordering_characters_are_refused() {
        for c in [
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{200E}',
            '\u{200F}',
            '\u{202A}',
            '\u{202E}',
            '\u{2066}',
            '\u{2069}',
            '\u{2060}',
            '\u{FEFF}',
            '\u{00AD}',
            '\u{061C}',
            '\u{180E}',
            '\u{3164}',
            '\u{FE0F}',
            '\u{E0041}',
            '\u{E000}',
            '\u{0600}',
            '\u{FFF9}',
        ] {
            assert!(!valid_name(&format!("ann{c}")), "U+{:04X}", c as u32);
            assert!(!valid_name(&c.to_string()), "U+{:04X} alone", c as u32);
        }
        // "admin" with a right-to-left override in the middle, shown as "adnim".
        assert!(!valid_name("ad\u{202E}nim"));
    }

    #[test]
    fn names_compare_by_full_case_folding_after_normalisation() {
        let same = |a: &str, b: &str| name_key(a) == name_key(b);
        assert!(same("Alice", "aLICE"));
        assert!(same("straße", "STRASSE"));
        assert!(same("ß", "ss"));
        assert!(same("\u{212A}elvin", "kelvin"), "Kelvin sign");
        assert!(same("\u{212B}ngstrom", "\u{C5}ngstrom"), "Angstrom sign");
        assert!(same("Zoe\u{308}", "ZOË"));
        assert!(same("ΣΊΣΥΦΟΣ", "σίσυφος"));
        assert!(same("ﬁsh", "FISH"), "ligature");
        assert!(same("ａｌｉｃｅ", "Alice"), "fullwidth");
        assert!(!same("alice", "alicia"));
        // Dotless ı is its own letter (Turkish): its upper case is I, but it does not fold to i.
        // Found by `names_differing_in_case_or_encoding_have_one_key` (properties.rs).
        assert!(!same("ıi", "ii"), "dotless i is its own letter");
        assert!(same("I", "i") && !same("\u{131}", "I"));
    }

    #[test]
    fn urls_and_queries() {
        let (p, q) = split_url("/sse/call/1?mode=change&x=a%20b+c");
        assert_eq!(p, "/sse/call/1");
        assert_eq!(query_get(&q, "mode"), Some("change"));
        assert_eq!(query_get(&q, "x"), Some("a b c"));
        assert_eq!(query_get(&q, "y"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("%C3%A9"), Some("é".into()));
    }

    /// Found by the property tests (`validate/properties.rs`:
    /// `percent_decode_accepts_exactly_well_formed_escapes`,
    /// `split_url_never_panics_and_only_returns_decodable_pairs`): a sign inside an escape was
    /// taken as a hex number, so `%+C3` decoded to "\x0c3" and `?%+A` to a key "\n".
    #[test]
    fn percent_decode_refuses_a_sign_inside_an_escape() {
        assert_eq!(percent_decode("%+C3"), None);
        assert_eq!(percent_decode("%+1"), None);
        assert_eq!(percent_decode("%-1"), None);
        assert_eq!(split_url("/?%+A").1, vec![]);
        assert_eq!(percent_decode("%2B1"), Some("+1".into()));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%a"), None);
    }

    #[test]
    fn alarm_bodies() {
        assert_eq!(parse_alarm_body(b"true"), Some(true));
        assert_eq!(parse_alarm_body(b" false\n"), Some(false));
        assert_eq!(parse_alarm_body(br#"{"alarm":true}"#), Some(true));
        assert_eq!(parse_alarm_body(br#"{"alarm":1}"#), None);
        assert_eq!(parse_alarm_body(b"yes"), None);
        assert_eq!(parse_alarm_body(b"\xff"), None);
    }
}
