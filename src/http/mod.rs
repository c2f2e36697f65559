//! HTTP plumbing over tiny_http: the socket under a request, SSE encoding, JSON replies,
//! validation of what clients send.

pub mod accept;
pub mod response;
pub(crate) mod socket;
pub mod sse;
pub(crate) mod sweep;
pub mod validate;
