//! Buffered replies: small JSON responses, the `{"error": "..."}` body every 4xx/5xx carries,
//! and the CORS headers every reply gets when `--cors-origin` is set.

use std::io::Cursor;

use serde_json::Value;
use tiny_http::{Header, Request, Response, StatusCode};

use crate::metrics::Metrics;

/// A buffered response.
pub(crate) type Reply = Response<Cursor<Vec<u8>>>;

fn header(name: &str, value: &str) -> Header {
    // Names and values here are fixed ASCII or digits, so this cannot fail.
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|_| Header::from_bytes(&b"X-Invalid"[..], &b"1"[..]).expect("ascii header"))
}

/// `status` with a JSON body.
pub(crate) fn json(status: u16, body: &Value) -> Reply {
    with_type(status, body.to_string().into_bytes(), "application/json")
}

/// `status` with `body` of the given content type.
pub(crate) fn with_type(status: u16, body: Vec<u8>, content_type: &str) -> Reply {
    Response::from_data(body)
        .with_status_code(StatusCode(status))
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cache-Control", "no-store"))
}

/// `status` with `{"error": message}`.
pub(crate) fn error(status: u16, message: &str) -> Reply {
    json(status, &serde_json::json!({ "error": message }))
}

/// `503` (or `429`) with `Retry-After: secs` and `{"error": message}`.
pub(crate) fn retry_later(status: u16, secs: u64, message: &str) -> Reply {
    error(status, message).with_header(header("Retry-After", &secs.to_string()))
}

/// `204 No Content`.
pub(crate) fn no_content() -> Reply {
    Response::from_data(Vec::new()).with_status_code(StatusCode(204))
}

/// Adds a header to a reply.
pub(crate) fn add_header(reply: Reply, name: &str, value: &str) -> Reply {
    reply.with_header(header(name, value))
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

    /// Sends `reply` for `request`, adding `Server` and, when configured, the CORS headers.
    /// Every buffered reply of the server goes through here. The error is the write's
    /// (tiny_http already ignores a peer that closed: src/request.rs,
    /// `ignore_client_closing_errors`); a write past the reply write deadline fails with
    /// `WouldBlock`.
    pub(crate) fn respond(&self, request: Request, reply: Reply) -> std::io::Result<()> {
        let mut reply = add_header(reply, "Server", SERVER);
        if let Some(origin) = &self.0 {
            reply = add_header(reply, "Access-Control-Allow-Origin", origin);
            reply = add_header(reply, "Vary", "Origin");
        }
        request.respond(reply)
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
