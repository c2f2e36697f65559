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

pub mod alarm;
pub mod chat;
pub mod config;
pub mod http;
pub mod metrics;
pub mod server;
pub mod threads;
pub mod web;

pub use config::Config;
pub use server::{Server, StartError};
