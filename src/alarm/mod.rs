//! The alarm service: the store, the refresher that polls it, the hub streams read from, the
//! streams themselves, and the routes.

pub(crate) mod health;
pub(crate) mod http;
pub(crate) mod hub;
pub(crate) mod refresher;
pub(crate) mod store;
pub(crate) mod stream;
