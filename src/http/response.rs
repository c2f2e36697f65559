//! Buffered replies: small JSON responses, the `{"error": "..."}` body every 4xx/5xx carries,
//! and the CORS headers every reply gets when `--cors-origin` is set.
//!
//! Header lines are built only here (and the SSE head in `sse.rs`, from [`header_line_is_safe`]
//! lines): names are `&'static str`, so never a client's bytes, and a value is refused (the
//! header left out, an error logged) unless it is printable ASCII, space or tab. tiny_http 0.12.0
//! itself would pass CR and LF through (`Header::from_bytes`), so this is what keeps a response
//! head from being split.

use std::io::Cursor;

use serde_json::Value;
use tiny_http::{Header, Response, StatusCode};

use crate::metrics::Metrics;

/// A buffered response.
pub(crate) type Reply = Response<Cursor<Vec<u8>>>;

/// Whether `name` is a token (RFC 9110 §5.6.2) and `value` a field value without control
/// characters other than tab (RFC 9110 §5.5; never CR, LF or NUL), all ASCII.
pub(crate) fn header_is_safe(name: &str, value: &str) -> bool {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !name.is_empty()
        && name.bytes().all(tchar)
        && value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// Whether a preformatted `Name: value` line (no CRLF) is safe to write into a response head.
pub(crate) fn header_line_is_safe(line: &str) -> bool {
    line.split_once(": ")
        .is_some_and(|(name, value)| header_is_safe(name, value))
}

fn header(name: &'static str, value: &str) -> Option<Header> {
    if !header_is_safe(name, value) {
        log::error!("response header refused name={name} value={value:?}: not a safe field value");
        return None;
    }
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn with(reply: Reply, name: &'static str, value: &str) -> Reply {
    match header(name, value) {
        Some(h) => reply.with_header(h),
        None => reply,
    }
}

/// `status` with a JSON body.
pub(crate) fn json(status: u16, body: &Value) -> Reply {
    with_type(status, body.to_string().into_bytes(), "application/json")
}

/// `status` with `body` of the given content type.
pub(crate) fn with_type(status: u16, body: Vec<u8>, content_type: &'static str) -> Reply {
    let reply = Response::from_data(body).with_status_code(StatusCode(status));
    with(
        with(reply, "Content-Type", content_type),
        "Cache-Control",
        "no-store",
    )
}

/// `status` with `{"error": message}`.
pub(crate) fn error(status: u16, message: &str) -> Reply {
    json(status, &serde_json::json!({ "error": message }))
}

/// `503` (or `429`) with `Retry-After: secs` and `{"error": message}`.
pub(crate) fn retry_later(status: u16, secs: u64, message: &str) -> Reply {
    with(error(status, message), "Retry-After", &secs.to_string())
}

/// `204 No Content`.
pub(crate) fn no_content() -> Reply {
    Response::from_data(Vec::new()).with_status_code(StatusCode(204))
}

/// Adds a header to a reply; a value that is not a safe field value is left out (and logged).
pub(crate) fn add_header(reply: Reply, name: &'static str, value: &str) -> Reply {
    with(reply, name, value)
}

/// Counts and answers a 400.
pub(crate) fn bad_request(metrics: &Metrics, message: &str) -> Reply {
    metrics.reject("bad-request");
    error(400, message)
}

/// A 405 naming the allowed methods.
pub(crate) fn method_not_allowed(allow: &str) -> Reply {
    add_header(error(405, "method not allowed"), "Allow", allow)
}

/// The `Server` header of every answer, buffered or streamed. tiny_http writes its own
/// (`tiny-http (Rust)`) only when the response has none (src/response.rs, `raw_print`).
pub(crate) const SERVER: &str = concat!("syncast/", env!("CARGO_PKG_VERSION"));

/// The `Access-Control-Allow-Origin` the server sends, if configured (`--cors-origin`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Cors(Option<String>);

impl Cors {
    /// CORS for `origin` (`None`: off).
    pub(crate) fn new(origin: Option<String>) -> Cors {
        Cors(origin)
    }

    /// `reply` with `Server` and, when configured, the CORS headers. Every buffered reply of the
    /// server gets them on its way out (`http::body::Bodies::respond` sends it).
    pub(crate) fn apply(&self, reply: Reply) -> Reply {
        let mut reply = add_header(reply, "Server", SERVER);
        if let Some(origin) = &self.0 {
            reply = add_header(reply, "Access-Control-Allow-Origin", origin);
            reply = add_header(reply, "Vary", "Origin");
        }
        reply
    }

    /// Extra header lines every SSE response carries (CORS, when configured).
    pub(crate) fn sse_headers(&self) -> Vec<String> {
        match &self.0 {
            Some(origin) => vec![
                format!("Access-Control-Allow-Origin: {origin}"),
                "Vary: Origin".to_string(),
            ],
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(reply: Reply) -> String {
        let mut out = Vec::new();
        reply
            .raw_print(&mut out, tiny_http::HTTPVersion(1, 1), &[], true, None)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn unsafe_values_never_reach_the_head() {
        for bad in [
            "a\r\nInjected: yes",
            "a\nInjected: yes",
            "a\rInjected: yes",
            "a\0b",
            "é",
            "\x7f",
            "\x1b[31m",
        ] {
            let h = head(add_header(no_content(), "X-Test", bad));
            assert!(!h.contains("X-Test"), "{bad:?}: {h}");
            assert!(!h.contains("Injected"), "{bad:?}: {h}");
            assert!(!h.contains("X-Invalid"), "{bad:?}: {h}");
        }
        let h = head(add_header(no_content(), "X-Test", "a b\tc-~"));
        assert!(h.contains("X-Test: a b\tc-~\r\n"), "{h}");
    }

    #[test]
    fn names_must_be_tokens_and_lines_must_split() {
        assert!(header_is_safe("Access-Control-Allow-Origin", "*"));
        assert!(!header_is_safe("Bad Name", "x"));
        assert!(!header_is_safe("Bad:Name", "x"));
        assert!(!header_is_safe("", "x"));
        assert!(header_line_is_safe("Vary: Origin"));
        assert!(!header_line_is_safe("Vary: Origin\r\nInjected: yes"));
        assert!(!header_line_is_safe("no separator"));
    }
}
