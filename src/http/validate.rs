//! Validation of what clients send: ids, names, query strings, bodies.

/// An alarm id: 1–64 characters of `[A-Za-z0-9._-]`.
pub(crate) fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A chat name: 1–32 Unicode characters, none a control character or white space.
pub(crate) fn valid_name(name: &str) -> bool {
    let n = name.chars().count();
    (1..=32).contains(&n) && name.chars().all(|c| !c.is_control() && !c.is_whitespace())
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
