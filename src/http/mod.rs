//! HTTP plumbing over tiny_http: keeping it accepting, the socket under a streaming request,
//! the connection sweep, the watcher that sees a stream's client leave (and reads the lines of the chat's TCP clients), SSE encoding and writing, replies, request limits, and validation of
//! what clients send.

pub(crate) mod accept;
pub(crate) mod body;
pub(crate) mod framing;
pub(crate) mod lines;
pub(crate) mod pipeline;
pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod socket;
pub(crate) mod sse;
pub(crate) mod sweep;
pub(crate) mod validate;
pub(crate) mod watch;
