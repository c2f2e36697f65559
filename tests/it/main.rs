//! The integration tests that need no process of their own, in one test binary (as ripgrep's
//! `tests/tests.rs`), so a change links the harness once instead of once per file. Each module
//! starts real servers on port 0 in this process through `common`.
//!
//! The tests that count the process's threads, set its limits, run the binary under
//! namespaces, cgroups or descriptor starvation, or read the real binary's threads, RSS and
//! descriptors under hostile requests are separate binaries beside this folder (`binary.rs`,
//! `emfile.rs`, `fuzz.rs`, `hostile_bodies.rs`, `http2_deadlock.rs`, `no_fin.rs`, `stress.rs`,
//! `thread_limit.rs`, `threads.rs`).

#[path = "../common/mod.rs"]
mod common;

mod alarm;
mod auth;
mod bodies;
mod chat;
mod docs;
mod hostile;
mod http;
mod injection;
mod leaving;
mod metrics;
mod smuggling;
mod tcp;
mod web;
