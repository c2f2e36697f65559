//! The shared alarm state: which ids are connected now, their last known values, and who wants
//! to hear when one changes.
//!
//! One `parking_lot::RwLock<HashMap>`: stream threads take the read lock to read a value; the
//! refresher takes the write lock once per refresh to store a whole batch; connect and disconnect
//! take it briefly to count streams per id. Two streams for one id share one entry with a count,
//! so one leaving never removes the other's (the Go original deleted the entry).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::RwLock;

struct Entry {
    /// `None` until the refresher has loaded it.
    alarm: Option<bool>,
    streams: usize,
    /// Streams to wake when the value changes (a wake-up only: they read the map).
    watchers: Vec<(u64, Sender<()>)>,
}

/// The connected ids and their values.
pub(crate) struct AlarmHub {
    entries: RwLock<HashMap<Arc<str>, Entry>>,
    /// Tells the refresher to load a new id at once.
    load_now: Sender<Arc<str>>,
    /// A new id could not be queued on `load_now` (full): the next tick must run the full query
    /// even if the store did not change.
    missed_load: std::sync::atomic::AtomicBool,
    /// Moves (under the write lock) whenever an id is added or removed: the refresher rebuilds
    /// its sorted id list only then.
    generation: AtomicU64,
}

/// A stream's registration; dropping it unregisters (exactly once, on every exit path).
pub(crate) struct Registration {
    hub: Arc<AlarmHub>,
    id: Arc<str>,
    conn: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut entries = self.hub.entries.write();
        if let Some(e) = entries.get_mut(&self.id) {
            e.watchers.retain(|(c, _)| *c != self.conn);
            e.streams -= 1;
            if e.streams == 0 {
                entries.remove(&self.id);
                self.hub.generation.fetch_add(1, Ordering::Release);
            }
        }
    }
}

impl AlarmHub {
    /// A hub and the receiver on which the refresher hears of ids to load at once.
    pub(crate) fn new() -> (Arc<AlarmHub>, Receiver<Arc<str>>) {
        // Bounded: if the refresher is behind, a new id simply waits for the next tick.
        let (tx, rx) = crossbeam_channel::bounded(4096);
        (
            Arc::new(AlarmHub {
                entries: RwLock::new(HashMap::new()),
                load_now: tx,
                missed_load: std::sync::atomic::AtomicBool::new(false),
                generation: AtomicU64::new(0),
            }),
            rx,
        )
    }

    /// Lets go of the table after a peak of connected ids (see [`crate::sys::mem::shrink_map`]).
    pub(crate) fn shrink(&self) {
        crate::sys::mem::shrink_map(&mut self.entries.write());
    }

    /// Whether a new id missed its immediate load since the last call (and clears it).
    pub(crate) fn take_missed_load(&self) -> bool {
        self.missed_load
            .swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Registers stream `conn` for `id`; `wake` gets a message when the value changes.
    #[inline(never)]
    pub(crate) fn register(
        hub: &Arc<AlarmHub>,
        id: &str,
        conn: u64,
        wake: Sender<()>,
    ) -> Registration {
        let (key, is_new) = {
            let mut entries = hub.entries.write();
            match entries.get_key_value(id) {
                Some((k, _)) => {
                    let k = k.clone();
                    let e = entries.get_mut(&k).expect("present");
                    e.streams += 1;
                    e.watchers.push((conn, wake));
                    (k, false)
                }
                None => {
                    hub.generation.fetch_add(1, Ordering::Release);
                    let k: Arc<str> = Arc::from(id);
                    entries.insert(
                        k.clone(),
                        Entry {
                            alarm: None,
                            streams: 1,
                            watchers: vec![(conn, wake)],
                        },
                    );
                    (k, true)
                }
            }
        };
        if is_new {
            // Bounded: if the refresher is behind, the id is loaded by the next full tick.
            if hub.load_now.try_send(key.clone()).is_err() {
                hub.missed_load
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
        Registration {
            hub: hub.clone(),
            id: key,
            conn,
        }
    }

    /// The last known value of `id`, if connected and loaded.
    pub(crate) fn get(&self, id: &str) -> Option<bool> {
        self.entries.read().get(id).and_then(|e| e.alarm)
    }

    /// A number that changes whenever an id is added or removed. Read it *before*
    /// [`AlarmHub::ids`]: a change after the read then shows as a new number next time.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The ids connected now.
    pub(crate) fn ids(&self) -> Vec<Arc<str>> {
        self.entries.read().keys().cloned().collect()
    }

    /// Number of ids connected now.
    pub(crate) fn len(&self) -> usize {
        self.entries.read().len()
    }

    /// Whether no id is connected.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.read().is_empty()
    }

    /// Stores a batch of loaded values (`values[i]` is the alarm of `ids[i]`), then wakes the watchers of every id whose value changed
    /// — after the lock is released. The batch is compared with the map under the *read* lock
    /// (streams keep reading meanwhile); the write lock is taken once, only to apply the values
    /// that differ, so its hold is proportional to the changes, not to the connected ids (with
    /// 10,000 ids it went from ~3 ms to microseconds). Ids no longer connected are skipped.
    /// Returns how long the write lock was held.
    pub(crate) fn store(&self, ids: &[Arc<str>], values: &[bool]) -> std::time::Duration {
        let changed: Vec<(&Arc<str>, bool)> = {
            let entries = self.entries.read();
            ids.iter()
                .zip(values.iter().copied())
                .filter(|(id, v)| entries.get(*id).is_some_and(|e| e.alarm != Some(*v)))
                .collect()
        };
        if changed.is_empty() {
            return std::time::Duration::ZERO;
        }
        let mut wake: Vec<Sender<()>> = Vec::new();
        let held = {
            let mut entries = self.entries.write();
            let t = Instant::now();
            // Re-checked under the write lock: a registration may have come or gone between.
            for (id, v) in changed {
                if let Some(e) = entries.get_mut(id) {
                    if e.alarm != Some(v) {
                        e.alarm = Some(v);
                        wake.extend(e.watchers.iter().map(|(_, s)| s.clone()));
                    }
                }
            }
            t.elapsed()
        };
        for w in wake {
            // A full wake channel already has a wake-up pending; the stream reads the map.
            match w.try_send(()) {
                Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
            }
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_registrations_share_an_id_and_the_last_one_out_removes_it() {
        let (hub, load) = AlarmHub::new();
        let (tx, rx) = crossbeam_channel::bounded(1);
        let a = AlarmHub::register(&hub, "42", 1, tx.clone());
        let b = AlarmHub::register(&hub, "42", 2, tx);
        assert_eq!(load.try_iter().count(), 1, "loaded once, when new");
        assert_eq!(hub.len(), 1);
        let g = hub.generation();
        hub.store(&[Arc::from("42")], &[true]);
        assert_eq!(hub.get("42"), Some(true));
        assert!(rx.try_recv().is_ok());
        drop(a);
        assert_eq!(hub.get("42"), Some(true), "the other stream keeps it");
        assert_eq!(hub.generation(), g, "the set of ids did not change");
        drop(b);
        assert_eq!(hub.len(), 0);
        assert_ne!(hub.generation(), g, "an id left");
        hub.store(&[Arc::from("42")], &[false]);
        assert_eq!(hub.len(), 0, "a late result for a gone id is not stored");
    }
}
