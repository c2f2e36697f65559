//! The page served at `/`.

use crate::http::response::{self, Reply};

const INDEX: &str = "<!doctype html><meta charset=utf-8><title>syncast</title><h1>syncast</h1>\
<p>Alarm stream: <code>GET /sse/call/{id}</code>. See the README.</p>";

/// `GET /`: the page, from memory.
pub fn index() -> Reply {
    response::with_type(200, INDEX.as_bytes().to_vec(), "text/html; charset=utf-8")
}
