//! syncast: a thread-per-client Server-Sent Events server with no async runtime.
//!
//! It streams per-user alarm state (`GET /sse/call/{id}`) read from a SQLite store by one
//! refresher thread, and a chat room, to many clients. Every thread it spawns is named,
//! tracked, and joined on shutdown.
//!
//! ```no_run
//! let mut config = syncast::Config::default();
//! config.listen = "127.0.0.1:0".parse().unwrap();
//! let server = syncast::Server::start(config).unwrap();
//! println!("listening on {}", server.addr());
//! let joined = server.shutdown();
//! println!("joined {joined} threads");
//! ```

#![warn(missing_docs)]

mod admit;
mod alarm;
pub mod alloc;
mod auth;
mod chat;
pub mod cli;
mod config;
mod http;
pub mod kit;
mod metrics;
mod redis;
mod reload;
mod server;
mod stream;
mod sys;
#[cfg(test)]
mod testing;
mod threads;
mod web;

pub use alarm::store::StoreError;
pub use auth::keys::{KeyError, KeyFile};
pub use auth::KeyReload;
pub use config::{AlarmStoreKind, Config, ConfigError, ValidConfig};
pub use reload::{ReloadHook, Reloaded};
pub use server::{Server, Shutdown, StartError, SHUTDOWN_DEADLINE};

/// Starts this program again with glibc's cache of exited threads' stacks bounded (1 MiB instead
/// of 40 MiB, so the memory of thousands of ended streams comes back) and each thread's cache of
/// freed blocks kept to the smallest size (a parked stream then keeps none of what setting it up
/// freed), unless `GLIBC_TUNABLES` already sets those. Call it first thing in `main`; it returns
/// only if it did not restart the program: `Some` with the error if the restart failed (the
/// program can go on without it).
pub fn restart_with_malloc_tunables() -> Option<std::io::Error> {
    sys::mem::exec_with_tunables()
}

/// Every route the router answers, as (method, path pattern) — e.g. `("GET", "/sse/call/{id}")` —
/// plus the CORS preflight (`OPTIONS /{path}`). For the documentation check in `tests/`, which
/// fails on a route that docs/protocol.md does not mention; not an API to build on.
#[doc(hidden)]
pub fn routes() -> Vec<(&'static str, &'static str)> {
    server::routes()
}
