//! The refresher: the one thread that reads the alarm store.
//!
//! Every `refresh` interval it loads, with one batched query, the ids connected now (none: no
//! query), stores the results in the hub under one short write lock and wakes the change-mode
//! streams whose value changed. A newly connected id is loaded at once. A failing store is logged
//! and counted, the last known values stay, `/healthz` degrades, and the next tick tries again
//! (reopening the file if it was replaced or deleted).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, tick, Receiver};
use parking_lot::RwLock;

use super::hub::AlarmHub;
use super::store::{Store, StoreError};
use crate::metrics::Metrics;

/// The store's health as `/healthz` reports it: `None` when the last refresh succeeded.
pub type Health = Arc<RwLock<Option<String>>>;

/// What the refresher needs.
pub struct Refresher {
    /// The store file.
    pub db: PathBuf,
    /// Lock wait for each query.
    pub busy_timeout: Duration,
    /// Interval between refreshes.
    pub every: Duration,
    /// Shared state.
    pub hub: Arc<AlarmHub>,
    /// Ids to load at once.
    pub load_now: Receiver<Arc<str>>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Degraded reason, if any.
    pub health: Health,
    /// Disconnected when the server shuts down.
    pub shutdown: Receiver<()>,
    /// Test-only: panic when a refresh includes this id (see `Config::fault_panic_id`).
    pub fault_panic_id: Option<String>,
}

struct Opened {
    store: Store,
    inode: Option<(u64, u64)>,
}

impl Refresher {
    /// Runs until shutdown.
    pub fn run(&self) {
        let ticker = tick(self.every);
        let mut opened: Option<Opened> = None;
        loop {
            select! {
                recv(ticker) -> _ => {
                    if self.hub.is_empty() {
                        if opened.is_none() || self.health.read().is_some() {
                            // Nothing to query, but keep /healthz honest about the store.
                            self.refresh(&mut opened, &[], false);
                        }
                        continue;
                    }
                    // Every connected id, every tick. (A skip when `PRAGMA data_version`
                    // showed no commit was tried and removed: a commit landing between the
                    // version read and the query must never be skipped, and that needs its own
                    // test before the optimisation comes back.)
                    let ids = self.hub.ids();
                    self.refresh(&mut opened, &ids, true);
                }
                recv(self.load_now) -> id => {
                    let Ok(id) = id else { return };
                    let mut ids = vec![id];
                    ids.extend(self.load_now.try_iter());
                    self.refresh(&mut opened, &ids, false);
                }
                recv(self.shutdown) -> _ => return,
            }
        }
    }

    /// One refresh of `ids` (`full`: every connected id, on a tick); true if it succeeded.
    fn refresh(&self, opened: &mut Option<Opened>, ids: &[Arc<str>], full: bool) -> bool {
        if let Some(bad) = &self.fault_panic_id {
            if ids.iter().any(|id| **id == **bad) {
                panic!("injected fault in refresh id={bad}");
            }
        }
        let started = Instant::now();
        match self.query(opened, ids) {
            Ok(values) => {
                let held = self.hub.store(&values);
                let us = started.elapsed().as_micros() as u64;
                self.metrics.refresh_total.inc();
                self.metrics.refresh_last_us.set(us);
                self.metrics.refresh_sum_us.add(us);
                let held_us = held.as_micros() as u64;
                if held_us > self.metrics.refresh_lock_max_us.get() {
                    self.metrics.refresh_lock_max_us.set(held_us);
                }
                if full {
                    self.metrics.record_full_refresh(us, held_us);
                }
                if self.health.write().take().is_some() {
                    log::info!("store recovered");
                }
                true
            }
            Err(e) => {
                self.metrics.refresh_errors.inc();
                // Drop the connection: the next tick reopens, which also picks up a new file.
                *opened = None;
                let mut health = self.health.write();
                if health.as_deref() != Some(e.0.as_str()) {
                    log::error!("refresh failed error={:?}", e.0);
                }
                *health = Some(e.0);
                false
            }
        }
    }

    fn query(
        &self,
        opened: &mut Option<Opened>,
        ids: &[Arc<str>],
    ) -> Result<std::collections::HashMap<Arc<str>, bool>, StoreError> {
        let now = std::fs::metadata(&self.db).ok().map(|m| (m.dev(), m.ino()));
        if let Some(o) = opened.as_ref() {
            if o.inode != now {
                log::warn!("store file changed path={}; reopening", self.db.display());
                *opened = None;
            }
        }
        if opened.is_none() {
            // Never create the file here: a store deleted under us is a fault to report (and to
            // keep the last known values through), not an empty store.
            let store = Store::open(&self.db, self.busy_timeout, false)?;
            let inode = std::fs::metadata(&self.db).ok().map(|m| (m.dev(), m.ino()));
            *opened = Some(Opened { store, inode });
        }
        let o = opened.as_ref().expect("opened above");
        if ids.is_empty() {
            // A cheap check that the schema is still there.
            o.store.load(&[Arc::from("")]).map(|_| Default::default())
        } else {
            o.store.load(ids)
        }
    }
}
