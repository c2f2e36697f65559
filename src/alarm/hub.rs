//! The shared alarm state: which ids are connected now, their last known values, and who wants
//! to hear when one changes.
//!
//! One `parking_lot::RwLock<HashMap>`: stream threads take the read lock to read a value; the
//! refresher takes the write lock once per refresh to store a whole batch; connect and disconnect
//! take it briefly to count streams per id. Two streams for one id share one entry with a count,
//! so one leaving never removes the other's (the Go original deleted the entry).
//!
//! **Read your own writes.** A `PUT`/`DELETE /alarms/{id}` that syncast acknowledges is written
//! through to the hub ([`AlarmHub::write_through`]) before the 204 goes out, so a stream opened
//! after it never starts with an older value, and change-mode streams are woken at once. Two
//! numbers keep the refresher from undoing such a write:
//! - each write takes an *order* number while it holds the store's write lock, before it commits
//!   ([`AlarmStore::write`](super::store::AlarmStore::write)), so numbers follow commit order; an
//!   entry keeps the highest one applied, and a slower write that committed earlier is ignored;
//! - applying a write moves the hub's *epoch*; the refresher reads the epoch before its query
//!   ([`AlarmHub::epoch`]), and [`AlarmHub::store`] leaves alone every entry written through
//!   after that read: the query may have run before that write committed. The write also asks
//!   the refresher's next tick to query ([`AlarmHub::take_written`]), which settles an outside
//!   writer's commit that raced it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::RwLock;

struct Entry {
    /// `None` until the refresher has loaded it (or a write went through).
    alarm: Option<bool>,
    /// Order number of the last write applied through [`AlarmHub::write_through`] (0: none).
    written: u64,
    /// The hub's epoch right after that write was applied (0: none).
    written_at: u64,
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
    /// Hands out the order numbers of store writes (see the module comment).
    order: AtomicU64,
    /// Moves (under the write lock) whenever a write is applied through.
    epoch: AtomicU64,
    /// A write went through since the refresher last asked: its next tick must query.
    written: std::sync::atomic::AtomicBool,
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
                order: AtomicU64::new(0),
                epoch: AtomicU64::new(0),
                written: std::sync::atomic::AtomicBool::new(false),
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
                            written: 0,
                            written_at: 0,
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

    /// A new order number for a store write; call it while the write holds the store's write
    /// lock (it is the `order` of [`AlarmStore::write`](super::store::AlarmStore::write)).
    pub(crate) fn next_order(&self) -> u64 {
        self.order.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The write epoch now. The refresher reads it *before* its query and hands it to
    /// [`AlarmHub::store`], which then keeps every value written through after this read.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether a write went through since the last call (and clears it): the refresher's next
    /// tick must then query even if the store's stamp held still.
    pub(crate) fn take_written(&self) -> bool {
        self.written.swap(false, Ordering::AcqRel)
    }

    /// Applies a committed store write of `id` (`alarm`; a delete is `false`) whose order
    /// number is `order`, and wakes the id's watchers if the value changed, after the lock is
    /// released. An id nobody streams is not kept (its first stream loads it from the store,
    /// after this commit). A write with a lower number than one applied already committed
    /// before it and is ignored.
    pub(crate) fn write_through(&self, id: &str, alarm: bool, order: u64) {
        let wake: Vec<Sender<()>> = {
            let mut entries = self.entries.write();
            let Some(e) = entries.get_mut(id) else {
                return;
            };
            if order <= e.written {
                return;
            }
            e.written = order;
            e.written_at = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
            if e.alarm == Some(alarm) {
                Vec::new()
            } else {
                e.alarm = Some(alarm);
                e.watchers.iter().map(|(_, s)| s.clone()).collect()
            }
        };
        self.written.store(true, Ordering::Release);
        wake_all(wake);
    }

    /// Stores a batch of loaded values (`values[i]` is the alarm of `ids[i]`), then wakes the watchers of every id whose value changed
    /// — after the lock is released. The batch is compared with the map under the *read* lock
    /// (streams keep reading meanwhile); the write lock is taken once, only to apply the values
    /// that differ, so its hold is proportional to the changes, not to the connected ids (with
    /// 10,000 ids it went from ~3 ms to microseconds). Ids no longer connected are skipped, and
    /// so are ids written through after epoch `read_at` (read before the query that loaded
    /// `values`: it may predate that write's commit). Returns how long the write lock was held.
    pub(crate) fn store(
        &self,
        ids: &[Arc<str>],
        values: &[bool],
        read_at: u64,
    ) -> std::time::Duration {
        let stale = |e: &Entry, v: bool| e.alarm == Some(v) || e.written_at > read_at;
        let changed: Vec<(&Arc<str>, bool)> = {
            let entries = self.entries.read();
            ids.iter()
                .zip(values.iter().copied())
                .filter(|(id, v)| entries.get(*id).is_some_and(|e| !stale(e, *v)))
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
                    if !stale(e, v) {
                        e.alarm = Some(v);
                        wake.extend(e.watchers.iter().map(|(_, s)| s.clone()));
                    }
                }
            }
            t.elapsed()
        };
        wake_all(wake);
        held
    }
}

/// Wakes each stream of `wake` (after the hub's lock is released).
fn wake_all(wake: Vec<Sender<()>>) {
    for w in wake {
        // A full wake channel already has a wake-up pending; the stream reads the map.
        match w.try_send(()) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
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
        hub.store(&[Arc::from("42")], &[true], hub.epoch());
        assert_eq!(hub.get("42"), Some(true));
        assert!(rx.try_recv().is_ok());
        drop(a);
        assert_eq!(hub.get("42"), Some(true), "the other stream keeps it");
        assert_eq!(hub.generation(), g, "the set of ids did not change");
        drop(b);
        assert_eq!(hub.len(), 0);
        assert_ne!(hub.generation(), g, "an id left");
        hub.store(&[Arc::from("42")], &[false], hub.epoch());
        assert_eq!(hub.len(), 0, "a late result for a gone id is not stored");
    }

    #[test]
    fn a_refresh_read_before_a_write_went_through_does_not_undo_it() {
        let (hub, _load) = AlarmHub::new();
        let (tx, rx) = crossbeam_channel::bounded(1);
        let _r = AlarmHub::register(&hub, "77", 1, tx);
        hub.store(&[Arc::from("77")], &[false], hub.epoch());
        let _ = rx.try_recv();
        // The refresher reads the epoch, then queries the store: the query sees `false`.
        let read_at = hub.epoch();
        // Meanwhile a PUT commits `true` and writes it through: the change-mode stream wakes.
        let n = hub.next_order();
        hub.write_through("77", true, n);
        assert_eq!(hub.get("77"), Some(true));
        assert!(rx.try_recv().is_ok(), "watchers woken by the write");
        assert!(hub.take_written(), "the next tick must query");
        assert!(!hub.take_written(), "asked once");
        // The refresh that read before the commit stores what it read: kept out.
        hub.store(&[Arc::from("77")], &[false], read_at);
        assert_eq!(hub.get("77"), Some(true), "the acknowledged write stays");
        assert!(rx.try_recv().is_err(), "and nobody is woken for nothing");
        // A refresh whose read began after the write (an outside writer's newer value) applies.
        hub.store(&[Arc::from("77")], &[false], hub.epoch());
        assert_eq!(hub.get("77"), Some(false));
    }

    #[test]
    fn writes_through_apply_in_commit_order_whatever_order_they_arrive_in() {
        let (hub, _load) = AlarmHub::new();
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let _r = AlarmHub::register(&hub, "5", 1, tx);
        // Two PUTs: `true` commits first (number 1), `false` second (number 2), but the second
        // reaches the hub first.
        let (first, second) = (hub.next_order(), hub.next_order());
        hub.write_through("5", false, second);
        hub.write_through("5", true, first);
        assert_eq!(hub.get("5"), Some(false), "the last commit wins");
        // An id nobody streams is not kept: its first stream loads it from the store.
        hub.write_through("nobody", true, hub.next_order());
        assert_eq!(hub.get("nobody"), None);
        assert_eq!(hub.len(), 1);
    }
}
