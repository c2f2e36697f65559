//! A wake round: after a broadcast, and once the room's lock is released, every attached
//! stream's one-slot wake channel is poked (but the sender's).

use std::sync::Arc;

use crossbeam_channel::Sender;

/// Who to wake after a broadcast: every attached stream's wake channel.
#[derive(Clone)]
pub(crate) struct Waker {
    pub(crate) key: u64,
    pub(crate) wake: Sender<()>,
}

/// Wakes to send once the lock is released.
pub(crate) struct Wakes {
    pub(crate) list: Arc<Vec<Waker>>,
    pub(crate) skip: Option<u64>,
}

impl Wakes {
    pub(crate) fn send(self) {
        for w in self.list.iter() {
            if Some(w.key) != self.skip {
                // Full: a wake is already pending and that stream will take this event too.
                // Disconnected: the stream is ending.
                let _ = w.wake.try_send(());
            }
        }
    }
}
