//! Chat routes under `/chat/`.

use std::sync::Arc;

use tiny_http::Request;

use crate::http::response;
use crate::server::Shared;

/// Answers a request under `/chat/`.
pub fn route(
    _shared: &Arc<Shared>,
    request: Request,
    _segments: &[&str],
    _query: &[(String, String)],
) {
    let _ = request.respond(response::error(404, "not found"));
}
