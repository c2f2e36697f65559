//! The wake channels of the attached streams, and a wake round: after a broadcast, and once the
//! room's lock is released, every attached stream's one-slot wake channel is poked (but the
//! sender's).
//!
//! The list is kept in chunks of [`CHUNK`] behind their own `Arc`s. A wake round runs outside
//! the lock on a snapshot (the outer list of chunk pointers: one reference count per chunk), and
//! adding or removing a stream copies at most the two chunks it touches while a round still
//! holds them. A single `Arc<Vec<_>>` copied on write cost O(members) per attach during a wake
//! round: during a ramp of joins, O(N) per join.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

/// Wake channels per chunk.
const CHUNK: usize = 64;

/// One attached stream's wake channel.
#[derive(Clone)]
pub(crate) struct Waker {
    pub(crate) key: u64,
    pub(crate) wake: Sender<()>,
    /// The last id its stream took, as of its last take (its attachment's cursor, stored
    /// under the room's lock and read by a round without it: at worst older than the cursor,
    /// never newer), so that a round skips a stream that has taken everything it covers.
    /// Shared: a chunk copied while a round holds it keeps the same counter.
    pub(crate) taken: Arc<AtomicU64>,
}

impl Waker {
    /// A waker for stream `key` that has taken nothing yet.
    pub(crate) fn new(key: u64, wake: Sender<()>) -> Waker {
        Waker {
            key,
            wake,
            taken: Arc::default(),
        }
    }
}

/// Where a waker sits in [`Wakers`] (chunk, index); kept by its attachment. Ordered by
/// position in the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Slot {
    chunk: u32,
    index: u32,
}

/// Every attached stream's wake channel, in chunks (see the module text).
#[derive(Default)]
pub(crate) struct Wakers {
    chunks: Vec<Arc<Vec<Waker>>>,
}

impl Wakers {
    /// Adds a waker; returns its slot.
    pub(crate) fn add(&mut self, waker: Waker) -> Slot {
        if self.chunks.last().is_none_or(|c| c.len() >= CHUNK) {
            self.chunks.push(Arc::new(Vec::with_capacity(CHUNK)));
        }
        let chunk = self.chunks.len() - 1;
        let last = Arc::make_mut(&mut self.chunks[chunk]);
        last.push(waker);
        Slot {
            chunk: chunk as u32,
            index: (last.len() - 1) as u32,
        }
    }

    /// Removes the waker at `slot`. The last waker moves into its place (every chunk but the
    /// last stays full); returns that waker's key and new slot if one moved, for its attachment.
    pub(crate) fn remove(&mut self, slot: Slot) -> Option<(u64, Slot)> {
        let (c, i) = (slot.chunk as usize, slot.index as usize);
        let last_chunk = self.chunks.len().checked_sub(1)?;
        if c > last_chunk || i >= self.chunks[c].len() {
            return None;
        }
        let moved = Arc::make_mut(&mut self.chunks[last_chunk]).pop()?;
        if self.chunks[last_chunk].is_empty() {
            self.chunks.pop();
        }
        if c == last_chunk && i == self.chunks.get(c).map_or(0, |v| v.len()) {
            // It was the last one itself.
            return None;
        }
        let key = moved.key;
        Arc::make_mut(&mut self.chunks[c])[i] = moved;
        Some((key, slot))
    }

    /// Attached streams.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum()
    }

    /// Records that the stream whose waker sits at `slot` took every event up to `id` (its
    /// cursor: see [`Waker::taken`]). Kept beside the wake channel, not in the attachment, so
    /// a session costs no more for it.
    pub(crate) fn set_taken(&self, slot: Slot, id: u64) {
        if let Some(w) = self
            .chunks
            .get(slot.chunk as usize)
            .and_then(|c| c.get(slot.index as usize))
        {
            w.taken.store(id, Ordering::Relaxed);
        }
    }

    /// Whether no stream is attached.
    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Lets go of room kept for a past peak.
    pub(crate) fn shrink(&mut self) {
        self.chunks.shrink_to_fit();
    }

    /// The list as it is now, for a wake round outside the lock.
    pub(crate) fn snapshot(&self) -> Vec<Arc<Vec<Waker>>> {
        self.chunks.clone()
    }
}

/// Wakes to send once the lock is released.
pub(crate) struct Wakes {
    pub(crate) list: Vec<Arc<Vec<Waker>>>,
    pub(crate) skip: Option<u64>,
    /// The newest id when the round was taken: a stream that took it already needs no wake.
    /// (Anything newer asked for a round of its own.)
    pub(crate) upto: u64,
}

impl Wakes {
    pub(crate) fn send(self) {
        for w in self.list.iter().flat_map(|c| c.iter()) {
            // A stream woken by an earlier round that took everything up to here while this
            // round waited (a burst of posts): a wake-up would find nothing to take.
            if Some(w.key) != self.skip && w.taken.load(Ordering::Relaxed) < self.upto {
                // Full: a wake is already pending and that stream will take this event too.
                // Disconnected: the stream is ending.
                let _ = w.wake.try_send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakers_stay_in_full_chunks_and_removal_reports_who_moved() {
        let mut w = Wakers::default();
        let mut slots: std::collections::HashMap<u64, Slot> = Default::default();
        let mut rx = Vec::new();
        for key in 0..200u64 {
            let (tx, r) = crossbeam_channel::bounded(1);
            rx.push(r);
            slots.insert(key, w.add(Waker::new(key, tx)));
        }
        let held = w.snapshot();
        // Remove every third, as streams leave at random while a wake round holds a snapshot.
        for key in (0..200u64).step_by(3) {
            let slot = slots.remove(&key).unwrap();
            if let Some((moved, at)) = w.remove(slot) {
                slots.insert(moved, at);
            }
        }
        assert_eq!(w.len(), slots.len());
        assert!(w.chunks[..w.chunks.len() - 1]
            .iter()
            .all(|c| c.len() == CHUNK));
        // Every remaining key sits where its slot says.
        for (key, slot) in &slots {
            assert_eq!(w.chunks[slot.chunk as usize][slot.index as usize].key, *key);
        }
        // The snapshot taken before is untouched.
        assert_eq!(held.iter().map(|c| c.len()).sum::<usize>(), 200);
        Wakes {
            list: w.snapshot(),
            skip: Some(1),
            upto: 1,
        }
        .send();
        for (key, r) in rx.iter().enumerate() {
            let woken = r.try_recv().is_ok();
            assert_eq!(woken, slots.contains_key(&(key as u64)) && key != 1);
        }
    }
}
