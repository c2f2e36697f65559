//! Where a token comes from, and keeping it out of log lines.
//!
//! A token may come in `Authorization: Bearer T`, in `?access_token=T` (an `EventSource`
//! cannot set headers) or in the cookie `syncast_token` (the web page). When several are present
//! the most explicit wins: the header, then the query, then the cookie (a page's stale cookie
//! must not shadow a fresh token in its URL). A chat session token (48 hex digits) in the
//! `Authorization` header is the chat's own credential, not a JWT, and is passed over here.

use tiny_http::Request;

use crate::http::validate::query_get;

/// The query parameter that carries a token.
pub(crate) const QUERY: &str = "access_token";
/// The cookie that carries a token.
pub(crate) const COOKIE: &str = "syncast_token";

/// The JWT a request carries, if any (see the module's order of precedence).
pub(crate) fn token_of(request: &Request, query: &[(String, String)]) -> Option<String> {
    let header = request
        .headers()
        .iter()
        .filter(|h| h.field.equiv("Authorization"))
        .find_map(|h| bearer(h.value.as_str()))
        .filter(|t| !is_session_token(t));
    header
        .or_else(|| query_get(query, QUERY).map(str::to_string))
        .or_else(|| {
            request
                .headers()
                .iter()
                .filter(|h| h.field.equiv("Cookie"))
                .find_map(|h| cookie(h.value.as_str(), COOKIE))
        })
        .filter(|t| !t.is_empty())
}

/// Whether `text` has the shape of a chat session token (48 lower-case hex digits, see
/// `chat::session::Token`), which a JWT (three base64url parts joined by dots) never has.
fn is_session_token(text: &str) -> bool {
    text.len() == 48 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The credentials of `Bearer CREDENTIALS` (the scheme compared case-insensitively).
pub(crate) fn bearer(value: &str) -> Option<String> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim().to_string())
}

/// The value of cookie `name` in a `Cookie` header (`a=1; name=2`).
fn cookie(header: &str, name: &str) -> Option<String> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// A request target fit for a log line: the value of every credential in the query
/// (`access_token`, and the chat's `token`) replaced by `<redacted>`, whatever its encoding.
pub(crate) fn redact_target(target: &str) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_string();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            let decoded = crate::http::validate::percent_decode(key);
            match decoded.as_deref() {
                Some(QUERY) | Some("token") => format!("{key}=<redacted>"),
                // A key that does not decode could be anything: keep it out too.
                None => "<redacted>".to_string(),
                Some(_) => pair.to_string(),
            }
        })
        .collect();
    format!("{path}?{}", pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiny_http::{Header, TestRequest};

    fn request(headers: &[(&str, &str)]) -> Request {
        let mut rq = TestRequest::new().with_path("/x");
        for (k, v) in headers {
            rq = rq.with_header(Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap());
        }
        rq.into()
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_header_wins_then_the_query_then_the_cookie() {
        let all = request(&[
            ("Authorization", "Bearer h.h.h"),
            ("Cookie", "a=1; syncast_token=c.c.c; b=2"),
        ]);
        assert_eq!(
            token_of(&all, &q(&[("access_token", "q.q.q")])).as_deref(),
            Some("h.h.h")
        );
        let no_header = request(&[("Cookie", "syncast_token=c.c.c")]);
        assert_eq!(
            token_of(&no_header, &q(&[("access_token", "q.q.q")])).as_deref(),
            Some("q.q.q")
        );
        assert_eq!(token_of(&no_header, &[]).as_deref(), Some("c.c.c"));
        assert_eq!(
            token_of(&request(&[("authorization", "bearer  x.y.z ")]), &[]).as_deref(),
            Some("x.y.z")
        );
        assert_eq!(token_of(&request(&[("Cookie", "other=1")]), &[]), None);
        assert_eq!(
            token_of(&request(&[("Authorization", "Basic abc")]), &[]),
            None
        );
        assert_eq!(token_of(&request(&[]), &q(&[("access_token", "")])), None);
    }

    #[test]
    fn a_chat_session_token_in_the_header_is_not_taken_for_a_jwt() {
        let session = "0123456789abcdef0123456789abcdef0123456789abcdef";
        let rq = request(&[
            ("Authorization", &format!("Bearer {session}")),
            ("Cookie", "syncast_token=j.w.t"),
        ]);
        assert_eq!(token_of(&rq, &[]).as_deref(), Some("j.w.t"));
    }

    #[test]
    fn credentials_in_a_target_are_redacted_however_they_are_spelled() {
        assert_eq!(redact_target("/sse/call/42"), "/sse/call/42");
        assert_eq!(
            redact_target("/sse/call/42?mode=change&access_token=eyJ.a.b"),
            "/sse/call/42?mode=change&access_token=<redacted>"
        );
        assert_eq!(
            redact_target("/chat/stream?token=abc&last_event_id=3"),
            "/chat/stream?token=<redacted>&last_event_id=3"
        );
        assert_eq!(
            redact_target("/x?access%5Ftoken=secret"),
            "/x?access%5Ftoken=<redacted>"
        );
        assert_eq!(redact_target("/x?%zz=secret"), "/x?<redacted>");
        assert_eq!(
            redact_target("/x?access_token"),
            "/x?access_token=<redacted>"
        );
    }
}
