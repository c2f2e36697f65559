//! The client kit, for tools and tests: what `syncast-stress`, `syncast-bench` and the
//! integration tests need to talk to a syncast server and read its figures, written once.
//!
//! - [`sse`]: the WHATWG event-stream parser.
//!
//! Nothing here is used by the server itself, except what server and kit share (the `/proc`
//! readers, the duration syntax of the flags).

pub mod sse;

use std::net::SocketAddr;
use std::os::fd::RawFd;

pub use crate::config::parse_duration;

/// `(threads, rss_bytes)` of this process from `/proc/self/status`; zeros if unreadable.
pub fn process_status() -> (u64, u64) {
    crate::metrics::process_status()
}

/// The descriptors of this process that are the connection `local` ⇄ `peer` (a server running
/// in a test's own process: its side of a client's connection).
pub fn socket_fds(local: SocketAddr, peer: SocketAddr) -> Vec<RawFd> {
    match crate::http::conn::StreamSocket::find(local, peer) {
        Some(mut socket) => socket.fds(),
        None => Vec::new(),
    }
}

/// Marks the calling thread `SCHED_BATCH`, as the server does its chat stream threads (for a
/// tool that imitates them).
pub fn batch_scheduling() {
    crate::threads::batch_scheduling()
}
