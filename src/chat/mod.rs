//! The chat room (issue 3): named sessions, broadcast with history, resume by `Last-Event-ID`,
//! and slow-consumer cut-off, served over HTTP + SSE.
//!
//! - [`room`]: sessions, names, the history ring and broadcast, under one lock.
//! - [`session`]: tokens (OS random, compared in constant time) and the rate limiter.
//! - [`stream`]: one chat stream on its own thread, a `select!` loop.
//! - [`http`]: the `/chat/...` routes.
//! - [`line`]: the room's events as text lines, for TCP members.
//! - [`tcp`]: the room over plain TCP (`--chat-tcp`): the listener and the members' threads.
//! - [`reply`]: the room's refusals as status codes and replies.

pub(crate) mod http;
pub(crate) mod line;
mod reply;
pub(crate) mod room;
pub(crate) mod session;
pub(crate) mod stream;
pub(crate) mod tcp;
