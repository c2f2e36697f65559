//! What the server accepts in a request: the size limits tiny_http lacks, reading a body within
//! them, and the parts of a request a handler reads (headers, the path's `{id}`, the query).

use std::io::Read;

use tiny_http::Request;

use super::response::{self, Reply};
use crate::metrics::Metrics;

/// Largest request body read; a larger one gets 413 without being read.
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// Longest request target; a longer one gets 414.
pub(crate) const MAX_URL: usize = 8 * 1024;
/// Most header bytes (names and values); more get 431.
pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most header lines; more get 431.
pub(crate) const MAX_HEADERS: usize = 100;

/// What the router took from the request target for its handler.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params<'a> {
    /// The path segment a route's `{id}` matched, as sent (still percent-encoded); empty for
    /// routes without one.
    pub(crate) id: &'a str,
    /// The decoded query pairs.
    pub(crate) query: &'a [(String, String)],
}

/// Reads a request body of at most [`MAX_BODY`] bytes (also when no length was declared).
pub(crate) fn read_body(metrics: &Metrics, request: &mut Request) -> Result<Vec<u8>, Reply> {
    let mut body = Vec::new();
    match request
        .as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
    {
        Ok(n) if n > MAX_BODY => {
            metrics.reject("too-large");
            Err(response::error(
                413,
                "request body too large (max 65536 bytes)",
            ))
        }
        // The connection ended before the declared length (the client gave up, or the sweep
        // cut a body past `--body-timeout`): what arrived is not the body.
        Ok(n) if request.body_length().is_some_and(|want| n < want) => Err(response::error(
            400,
            "cannot read body: the connection ended before the declared length",
        )),
        Ok(_) => Ok(body),
        Err(e) => Err(response::error(400, &format!("cannot read body: {e}"))),
    }
}

/// A header's value by (case-insensitive) name.
pub(crate) fn header(request: &Request, name: &'static str) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str().to_string())
}
