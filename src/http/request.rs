//! What the server accepts in a request: the size limits tiny_http lacks, reading a body within
//! them, and the parts of a request a handler reads (headers, the path's `{id}`, the query).

use tiny_http::Request;

use super::body::{Bodies, ReadError};
use super::response::{self, bad_request, Reply};

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

/// Reads a request body of at most [`MAX_BODY`] bytes (also when no length was declared),
/// through `bodies`, which notes a body read to its end (its answer then keeps the connection
/// open) and refuses one that ended early.
pub(crate) fn read_body(bodies: &Bodies, request: &mut Request) -> Result<Vec<u8>, Reply> {
    let metrics = bodies.metrics();
    match bodies.read(request, MAX_BODY) {
        Ok(body) => Ok(body),
        Err(ReadError::TooLarge) => {
            metrics.reject("too-large");
            Err(response::error(
                413,
                "request body too large (max 65536 bytes)",
            ))
        }
        // The connection ended before the declared length or the last chunk (the client gave
        // up, or the sweep cut a body past `--body-timeout`): what arrived is not the body.
        Err(ReadError::Incomplete) => Err(bad_request(
            metrics,
            "the body ended early: the connection ended before the declared length",
        )),
        Err(ReadError::Io(e)) => Err(response::error(400, &format!("cannot read body: {e}"))),
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
