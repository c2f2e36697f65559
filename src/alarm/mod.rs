//! The alarm service: the store, the refresher that polls it, the hub streams read from, and
//! the streams themselves.

pub mod hub;
pub mod refresher;
pub mod store;
pub mod stream;
