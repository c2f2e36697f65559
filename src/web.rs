//! The page served at `/`: one self-contained HTML file (HTML, CSS and plain JavaScript, no
//! external assets) with an alarm panel and a chat panel, compiled into the binary.

use crate::http::response::{self, Reply};

/// The page, from `src/web/index.html`, embedded at compile time so `GET /` needs no files.
pub(crate) const INDEX: &str = include_str!("web/index.html");

/// `GET /`: the page, from memory. Cheap: a copy of static bytes, no store, no thread.
pub(crate) fn index() -> Reply {
    response::with_type(200, INDEX.as_bytes().to_vec(), "text/html; charset=utf-8")
}
