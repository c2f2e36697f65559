//! Raw system calls, in one place: this process's descriptors and sockets ([`fd`]), the kernel's
//! socket table ([`diag`]), `epoll` ([`epoll`]), `/proc`
//! ([`proc`]), per-thread tuning ([`thread`]) and memory ([`mem`]). The layers above speak in
//! Rust types; the `unsafe` blocks of the server live here.

pub(crate) mod diag;
pub(crate) mod epoll;
pub(crate) mod fd;
pub(crate) mod mem;
pub(crate) mod proc;
pub(crate) mod thread;
