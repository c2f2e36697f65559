//! The chat room (issue 3): sessions, broadcast, history and resume. Not built yet: the routes
//! answer 404 until it is.

pub mod http;

use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;

/// The chat room.
pub struct Room {}

impl Room {
    /// A new, empty room.
    pub fn new(_config: &Config, _metrics: Arc<Metrics>) -> Arc<Room> {
        Arc::new(Room {})
    }

    /// Periodic work (session expiry), called by the dispatcher.
    pub fn housekeeping(&self) {}
}
