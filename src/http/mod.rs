//! HTTP plumbing over tiny_http: the socket under a request, SSE encoding, JSON replies,
//! validation of what clients send.

pub mod accept;
pub mod conn;
pub mod response;
pub mod sse;
pub mod validate;
