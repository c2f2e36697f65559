//! The refresher: the one thread that reads the alarm store.
//!
//! Every `refresh` interval it loads, with one batched query, the ids connected now (none: no
//! query), stores the results in the hub under one short write lock and wakes the change-mode
//! streams whose value changed. A newly connected id is loaded at once. A failing store is logged
//! and counted, the last known values stay, `/healthz` degrades, and the next tick tries again
//! (reopening the file if it was replaced or deleted).
//!
//! A tick skips its query when nothing can have changed: the [`Stamp`] read *before* the last
//! successful full query (SQLite's `data_version`, which moves on every commit by another
//! connection, plus the file's identity, size and modification time) is unchanged, and that
//! query was less than [`FULL_AT_LEAST_EVERY`] ago. Reading the stamp before the query is what
//! makes it safe: a commit that lands after the read, during or after the query, moves the
//! next tick's stamp.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::health::StoreHealth;
use super::hub::AlarmHub;
use super::store::{AlarmStore, Backend, IdList, StoreError, Version};
use crate::metrics::Metrics;
use crossbeam_channel::{select, tick, Receiver};

/// The store's health as `/healthz` reports it (shared with the alarm handlers).
pub(crate) type Health = Arc<StoreHealth>;

/// What the refresher needs.
pub(crate) struct Refresher {
    /// The store.
    pub(crate) store: Backend,
    /// Interval between refreshes.
    pub(crate) every: Duration,
    /// Connected ids and their values.
    pub(crate) hub: Arc<AlarmHub>,
    /// Ids to load at once.
    pub(crate) load_now: Receiver<Arc<str>>,
    /// Counters.
    pub(crate) metrics: Arc<Metrics>,
    /// Degraded reason, if any.
    pub(crate) health: Health,
    /// Disconnected when the server shuts down.
    pub(crate) shutdown: Receiver<()>,
    /// Test-only: panic when a refresh includes this id (see `Config::fault_panic_id`).
    pub(crate) fault_panic_id: Option<String>,
}

struct Opened {
    store: Box<dyn AlarmStore>,
    /// Tells connections apart (a reopened store has a new one and its own `data_version`).
    serial: u64,
}

/// Serial numbers of opened connections.
static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A full query runs at least this often even when the stamp did not move (a change SQLite
/// cannot see, such as the file edited in place by another program, still shows up).
pub(crate) const FULL_AT_LEAST_EVERY: Duration = Duration::from_secs(10);

/// What must be unchanged for a tick to skip its query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    connection: u64,
    /// The store's own (for SQLite: `data_version` and the file's identity, size and time).
    version: Version,
}

/// The skip state carried from tick to tick.
#[derive(Default)]
struct Skip {
    /// The stamp read before the last successful full query (`None`: do not skip).
    last: Option<Stamp>,
    /// When that query ran.
    at: Option<Instant>,
    /// The connected ids as of hub generation `.0`, sorted, with their JSON: rebuilt only when
    /// an id came or went (with 10,000 ids, sorting and encoding them cost ~1 ms a tick).
    ids: Option<(u64, IdList)>,
}

#[cfg(test)]
thread_local! {
    /// Test-only: runs right after a full query, before the tick ends (tests commit there).
    static AFTER_QUERY: std::cell::RefCell<Option<Box<dyn Fn()>>> =
        std::cell::RefCell::new(None);
    /// Test-only: runs between a successful query and storing its values in the hub (tests
    /// write through there).
    static BEFORE_STORE: std::cell::RefCell<Option<Box<dyn Fn()>>> =
        std::cell::RefCell::new(None);
}

impl Refresher {
    /// Runs until shutdown; a panic in a refresh is caught, logged, counted, and the loop starts
    /// again at once, so streams are never left without values. The refresher thread's body.
    pub(crate) fn run_restarting(self) {
        loop {
            let run = std::panic::AssertUnwindSafe(|| self.run());
            match std::panic::catch_unwind(run) {
                Ok(()) => return,
                Err(cause) => {
                    self.metrics.refresher_restarts.inc();
                    let cause = crate::threads::panic_message(&*cause);
                    log::error!("refresher panicked cause={cause:?}; restarting");
                }
            }
        }
    }

    /// Runs until shutdown.
    fn run(&self) {
        let ticker = tick(self.every);
        let mut opened: Option<Opened> = None;
        let mut skip = Skip::default();
        loop {
            select! {
                recv(ticker) -> _ => {
                    if self.health.write_failing() {
                        self.probe_write();
                    }
                    if self.hub.is_empty() {
                        // Nobody connected: let the kept id list (up to ~0.5 MiB after 10,000
                        // streams) go.
                        skip.ids = None;
                        if opened.is_none() || self.health.read_failing() || self.store.shared() {
                            // Nothing to query, but keep /healthz honest about the store (a
                            // shared one, which other nodes and programs use, at every tick).
                            if !self.refresh(&mut opened, &IdList::default(), None) {
                                skip = Skip::default();
                            }
                        }
                        continue;
                    }
                    self.full_tick(&mut opened, &mut skip);
                }
                recv(self.load_now) -> id => {
                    let Ok(id) = id else { return };
                    let mut ids = vec![id];
                    ids.extend(self.load_now.try_iter());
                    if !self.refresh(&mut opened, &IdList::new(ids), None) {
                        skip = Skip::default();
                    }
                }
                recv(self.shutdown) -> _ => return,
            }
        }
    }

    /// A tick with ids connected: the full query, unless the stamp shows nothing changed since
    /// the last one (see the module comment). Returns whether the query ran.
    fn full_tick(&self, opened: &mut Option<Opened>, skip: &mut Skip) -> bool {
        // Read before the query: anything committed from here on moves the next stamp.
        let stamp = opened.as_ref().and_then(|o| self.stamp(o));
        let fresh = skip.at.is_some_and(|at| at.elapsed() < FULL_AT_LEAST_EVERY);
        // A new id whose immediate load could not be queued is loaded by this query; so is a
        // value written through that an outside commit may have overtaken (hub.rs).
        let missed = self.hub.take_missed_load();
        let written = self.hub.take_written();
        if fresh && !missed && !written && stamp.is_some() && stamp == skip.last {
            self.metrics.refresh_skipped.inc();
            return false;
        }
        // Timed from here: a tick that rebuilds the id list counts its cost too.
        let started = Instant::now();
        // The generation is read before the ids: an id added after this read moves it again.
        let generation = self.hub.generation();
        let ids = match skip.ids.take() {
            Some((g, ids)) if g == generation => ids,
            _ => IdList::new(self.hub.ids()),
        };
        let ok = self.refresh(opened, &ids, Some(started));
        #[cfg(test)]
        AFTER_QUERY.with(|f| {
            if let Some(f) = f.borrow().as_ref() {
                f()
            }
        });
        // A stamp of another connection (the store was reopened by this query) says nothing.
        let same = stamp.map(|s| s.connection) == opened.as_ref().map(|o| o.serial);
        *skip = if ok && same {
            Skip {
                last: stamp,
                at: Some(Instant::now()),
                ids: None,
            }
        } else {
            Skip::default()
        };
        skip.ids = Some((generation, ids));
        true
    }

    /// The stamp of the open connection now; `None` if it cannot be read (then no skip).
    fn stamp(&self, o: &Opened) -> Option<Stamp> {
        Some(Stamp {
            connection: o.serial,
            version: o.store.version()?,
        })
    }

    /// One refresh of `ids`; true if it succeeded. `full`: every connected id, on a tick, timed
    /// from that instant for the full-refresh window metrics.
    fn refresh(&self, opened: &mut Option<Opened>, ids: &IdList, full: Option<Instant>) -> bool {
        if let Some(bad) = &self.fault_panic_id {
            if ids.ids().iter().any(|id| **id == **bad) {
                panic!("injected fault in refresh id={bad}");
            }
        }
        let started = full.unwrap_or_else(Instant::now);
        // Read before the query: a value written through after this may be newer than what the
        // query reads, and is kept (hub.rs).
        let read_at = self.hub.epoch();
        match self.query(opened, ids) {
            Ok(values) => {
                #[cfg(test)]
                BEFORE_STORE.with(|f| {
                    if let Some(f) = f.borrow().as_ref() {
                        f()
                    }
                });
                let held = self.hub.store(ids.ids(), &values, read_at);
                let us = started.elapsed().as_micros() as u64;
                self.metrics.refresh_total.inc();
                self.metrics.refresh_last_us.set(us);
                self.metrics.refresh_duration.observe(started.elapsed());
                let held_us = held.as_micros() as u64;
                if held_us > self.metrics.refresh_lock_max_us.get() {
                    self.metrics.refresh_lock_max_us.set(held_us);
                }
                if full.is_some() {
                    self.metrics.record_full_refresh(us, held_us);
                }
                self.health.read_ok();
                true
            }
            Err(e) => {
                self.metrics.refresh_errors.inc();
                // Drop the connection: the next tick reopens, which also picks up a new file.
                *opened = None;
                self.health.read_failed(e.to_string());
                false
            }
        }
    }

    /// While writes fail: tries one that changes nothing, on a connection of its own as a `PUT`
    /// has (this thread's connection may predate a disk turned read-only); its success clears
    /// the degraded health, so a node nobody writes to recovers too.
    fn probe_write(&self) {
        match self.store.probe_write() {
            Ok(()) => self.health.write_ok(),
            Err(e) => {
                if crate::alarm::health::write_fault(&e).is_some() {
                    self.metrics.store_write_errors.inc();
                }
                self.health.write_failed(&e);
            }
        }
    }

    fn query(&self, opened: &mut Option<Opened>, ids: &IdList) -> Result<Vec<bool>, StoreError> {
        if let Some(what) = opened.as_ref().and_then(|o| o.store.moved()) {
            log::warn!("{what}; reopening");
            *opened = None;
        }
        if opened.is_none() {
            // Never create the store here: a store deleted under us is a fault to report (and
            // to keep the last known values through), not an empty store.
            let store = self.store.open()?;
            let serial = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *opened = Some(Opened { store, serial });
        }
        let o = opened.as_ref().expect("opened above");
        if ids.is_empty() {
            // A cheap check that the store is still there (the schema, the hash).
            o.store.check().map(|()| Vec::new())
        } else {
            o.store.load(ids)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::store::sqlite::Sqlite as Store;
    use std::path::PathBuf;

    fn setup(name: &str) -> (Refresher, PathBuf, super::super::hub::Registration) {
        let dir =
            std::env::temp_dir().join(format!("syncast-refresher-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("a.db");
        Store::open(&db, Duration::from_millis(100), true)
            .unwrap()
            .set("x", false)
            .unwrap();
        let (hub, load_now) = AlarmHub::new();
        let (wake, _) = crossbeam_channel::unbounded();
        let reg = AlarmHub::register(&hub, "x", 1, wake);
        let (_, shutdown) = crossbeam_channel::bounded(0);
        let r = Refresher {
            store: Backend::Sqlite {
                path: db.clone(),
                busy: Duration::from_millis(100),
            },
            every: Duration::from_millis(500),
            hub,
            load_now,
            metrics: Arc::new(Metrics::default()),
            health: Health::default(),
            shutdown,
            fault_panic_id: None,
        };
        (r, db, reg)
    }

    /// What a refresher carries from tick to tick, for driving [`Refresher::full_tick`] by hand.
    #[derive(Default)]
    struct Ticks {
        opened: Option<Opened>,
        skip: Skip,
    }

    impl Ticks {
        fn tick(&mut self, r: &Refresher) -> bool {
            r.full_tick(&mut self.opened, &mut self.skip)
        }

        /// The first two ticks query (the first has no stamp to compare with yet), the third
        /// skips: nothing was committed.
        fn settle(&mut self, r: &Refresher) {
            self.tick(r);
            self.tick(r);
            assert!(!self.tick(r), "nothing changed: skipped");
        }
    }

    #[test]
    fn a_tick_skips_the_query_only_while_nothing_was_committed() {
        let (r, db, _reg) = setup("skip");
        let mut t = Ticks::default();
        assert!(t.tick(&r), "first tick opens and queries");
        assert!(t.tick(&r), "no stamp yet: queries");
        assert!(!t.tick(&r), "nothing changed: skipped");
        assert_eq!(r.metrics.refresh_skipped.get(), 1);
        let other = Store::open(&db, Duration::from_millis(100), false).unwrap();
        other.set("x", true).unwrap();
        assert!(t.tick(&r), "a commit: queries");
        assert_eq!(r.hub.get("x"), Some(true));
        assert!(!t.tick(&r));
        // Two commits that end where they began still count as commits.
        other.set("x", false).unwrap();
        other.set("x", true).unwrap();
        assert!(t.tick(&r));
        // A full query at least every FULL_AT_LEAST_EVERY, whatever the stamp says.
        t.skip.at = Some(Instant::now() - FULL_AT_LEAST_EVERY);
        assert!(t.tick(&r));
    }

    #[test]
    fn a_commit_landing_right_after_the_query_is_seen_by_the_next_tick() {
        let (r, db, _reg) = setup("race");
        let mut t = Ticks::default();
        t.tick(&r);
        t.tick(&r);
        assert_eq!(r.hub.get("x"), Some(false));
        // Commit in the window between this tick's query and its end: a stamp read after the
        // query would include it and the next tick would wrongly skip.
        let path = db.clone();
        AFTER_QUERY.with(|f| {
            *f.borrow_mut() = Some(Box::new(move || {
                let other = Store::open(&path, Duration::from_millis(100), false).unwrap();
                other.set("x", true).unwrap();
            }))
        });
        t.skip = Skip::default();
        assert!(t.tick(&r));
        AFTER_QUERY.with(|f| *f.borrow_mut() = None);
        assert_eq!(r.hub.get("x"), Some(false), "committed after the query");
        assert!(t.tick(&r), "the next tick must not skip");
        assert_eq!(r.hub.get("x"), Some(true));
    }

    #[test]
    fn a_new_id_that_missed_its_immediate_load_is_loaded_by_the_next_tick() {
        let (r, _db, _reg) = setup("missed");
        let mut t = Ticks::default();
        t.settle(&r);
        // Nobody drains `load_now` here: after its 4,096 slots, registrations cannot queue.
        let (wake, _) = crossbeam_channel::unbounded();
        let regs: Vec<_> = (0..4100)
            .map(|i| AlarmHub::register(&r.hub, &format!("n{i}"), 2, wake.clone()))
            .collect();
        assert!(t.tick(&r), "must not skip");
        assert_eq!(r.hub.get("n4099"), Some(false));
        assert!(!t.tick(&r), "then skips again");
        drop(regs);
    }

    #[test]
    fn the_kept_id_list_follows_ids_coming_and_going() {
        let (r, db, reg) = setup("idlist");
        let mut t = Ticks::default();
        t.tick(&r);
        let other = Store::open(&db, Duration::from_millis(100), false).unwrap();
        other.set("y", true).unwrap();
        // Nobody drains `load_now` here: only the tick's query can load "y".
        let (wake, _) = crossbeam_channel::unbounded();
        let y = AlarmHub::register(&r.hub, "y", 2, wake);
        assert!(t.tick(&r));
        assert_eq!(
            r.hub.get("y"),
            Some(true),
            "a kept list without y would miss it"
        );
        drop(reg);
        other.set("y", false).unwrap();
        assert!(t.tick(&r));
        assert_eq!(r.hub.get("y"), Some(false));
        assert_eq!(t.skip.ids.as_ref().map(|(_, l)| l.ids().len()), Some(1));
        drop(y);
    }

    #[test]
    fn a_file_changed_behind_sqlite_is_not_skipped() {
        let (r, db, _reg) = setup("file");
        let mut t = Ticks::default();
        t.settle(&r);
        // Another program touching the file (no SQLite commit): its mtime moves.
        let f = std::fs::OpenOptions::new().append(true).open(&db).unwrap();
        f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        assert!(t.tick(&r));
    }

    #[test]
    fn a_put_committed_during_a_refresh_is_not_undone_by_it() {
        let (r, db, _reg) = setup("ryow");
        let mut t = Ticks::default();
        t.settle(&r);
        assert_eq!(r.hub.get("x"), Some(false));
        // Force a query, and make a PUT (commit, then write through) land between that query
        // and the storing of its result: the query read `false`, the hub has `true`.
        t.skip = Skip::default();
        let (path, hub) = (db.clone(), r.hub.clone());
        BEFORE_STORE.with(|f| {
            *f.borrow_mut() = Some(Box::new(move || {
                let put = Store::open(&path, Duration::from_millis(100), false).unwrap();
                let n = put.write("x", Some(true), &|| hub.next_order()).unwrap();
                hub.write_through("x", true, n);
            }))
        });
        assert!(t.tick(&r));
        BEFORE_STORE.with(|f| *f.borrow_mut() = None);
        assert_eq!(r.hub.get("x"), Some(true), "the stale read did not win");
        // The next tick queries (the commit moved the stamp, and a write went through) and
        // agrees.
        assert!(t.tick(&r));
        assert_eq!(r.hub.get("x"), Some(true));
    }

    #[test]
    fn a_write_through_makes_the_next_tick_query_even_with_an_unmoved_stamp() {
        let (r, _db, _reg) = setup("wrote");
        let mut t = Ticks::default();
        t.settle(&r);
        // A value written through that no commit of another connection announced (the stamp
        // holds still): an outside commit may have overtaken it, so the next tick checks.
        let n = r.hub.next_order();
        r.hub.write_through("x", true, n);
        assert!(t.tick(&r), "queries");
        assert_eq!(
            r.hub.get("x"),
            Some(false),
            "the store's value, read after the write"
        );
        assert!(!t.tick(&r), "then skips again");
    }
}
