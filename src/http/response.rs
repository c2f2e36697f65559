//! Small JSON responses and the `{"error": "..."}` body every 4xx/5xx carries.

use std::io::Cursor;

use serde_json::Value;
use tiny_http::{Header, Response, StatusCode};

/// A buffered response.
pub type Reply = Response<Cursor<Vec<u8>>>;

fn header(name: &str, value: &str) -> Header {
    // Names and values here are fixed ASCII or digits, so this cannot fail.
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|_| Header::from_bytes(&b"X-Invalid"[..], &b"1"[..]).expect("ascii header"))
}

/// `status` with a JSON body.
pub fn json(status: u16, body: &Value) -> Reply {
    with_type(status, body.to_string().into_bytes(), "application/json")
}

/// `status` with `body` of the given content type.
pub fn with_type(status: u16, body: Vec<u8>, content_type: &str) -> Reply {
    Response::from_data(body)
        .with_status_code(StatusCode(status))
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cache-Control", "no-store"))
}

/// `status` with `{"error": message}`.
pub fn error(status: u16, message: &str) -> Reply {
    json(status, &serde_json::json!({ "error": message }))
}

/// `503` (or `429`) with `Retry-After: secs` and `{"error": message}`.
pub fn retry_later(status: u16, secs: u64, message: &str) -> Reply {
    error(status, message).with_header(header("Retry-After", &secs.to_string()))
}

/// `204 No Content`.
pub fn no_content() -> Reply {
    Response::from_data(Vec::new()).with_status_code(StatusCode(204))
}

/// Adds a header to a reply.
pub fn add_header(reply: Reply, name: &str, value: &str) -> Reply {
    reply.with_header(header(name, value))
}
