//! The client kit, for tools and tests: what `syncast-stress`, `syncast-bench` and the
//! integration tests need to talk to a syncast server and read its figures, written once.
//!
//! - [`http`]: a blocking HTTP/1.1 client (one request per connection, event streams).
//! - [`jwt`]: minting tokens for a server with auth on.
//! - [`sse`]: the WHATWG event-stream parser, whole or incremental.
//! - [`prom`]: reading a sample from Prometheus text.
//! - [`stats`]: quantiles of measured values.
//! - [`proc`]: a process's threads, memory and CPU time from `/proc`.
//! - [`redis_server`]: a `redis-server` of one's own on a free loopback port.
//!
//! The server uses none of this, except what server and kit share: the `/proc` readers and the
//! duration syntax of the flags are one implementation each, in the server's modules.

pub mod http;
pub mod jwt;
pub mod prom;
pub mod redis_server;
pub mod sse;

use std::net::SocketAddr;
use std::os::fd::RawFd;

pub use crate::config::parse_duration;

/// Quantiles of measured values (the server's `/metrics` summaries use the same function).
pub mod stats {
    pub use crate::metrics::quantile;
}

/// A process's threads, memory and CPU time from `/proc` (the server reads its own figures for
/// `/metrics` with the same functions).
pub mod proc {
    pub use crate::sys::proc::{cpu_seconds, status, Proc, Status};
}

/// The descriptors of this process that are the connection `local` ⇄ `peer` (for a test whose
/// server runs in its own process: the server's side of a client's connection).
pub fn socket_fds(local: SocketAddr, peer: SocketAddr) -> Vec<RawFd> {
    crate::sys::fd::socket_fds(local, peer)
}

/// Marks the calling thread `SCHED_BATCH`, as the server does its chat stream threads (for a
/// tool that imitates them).
pub fn batch_scheduling() {
    crate::sys::thread::batch_scheduling()
}
