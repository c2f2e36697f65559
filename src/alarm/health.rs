//! The store's health as `/healthz` reports it: whether the refresher can read the store, and
//! whether the last write to it (a `PUT` or `DELETE`, or the refresher's write probe) failed
//! for a reason of the store's own: disk full, read-only, an I/O error.
//!
//! A failed read is cleared by the next refresh that succeeds; a failed write by the next write
//! that succeeds, and, so that a node nobody writes to recovers too, by the refresher's probe:
//! while writes are failing it tries a write that changes nothing every tick
//! ([`crate::alarm::store::Backend::probe_write`]).

use parking_lot::RwLock;

use super::store::StoreError;

/// Why the store is degraded, if it is. Shared by the refresher, the alarm handlers and
/// `/healthz`.
#[derive(Debug, Default)]
pub(crate) struct StoreHealth {
    /// Why the last refresh failed (`None`: it succeeded).
    read: RwLock<Option<String>>,
    /// Why the last write failed (`None`: it succeeded, or none has failed).
    write: RwLock<Option<String>>,
}

impl StoreHealth {
    /// Why `/healthz` says degraded; `None` when it says ok.
    pub(crate) fn degraded(&self) -> Option<String> {
        let read = self.read.read().clone();
        let write = self
            .write
            .read()
            .clone()
            .map(|w| format!("writes fail: {w}"));
        match (read, write) {
            (Some(r), Some(w)) => Some(format!("{r}; {w}")),
            (r, w) => r.or(w),
        }
    }

    /// A refresh failed with `error`; logs `refresh failed` once per distinct error.
    pub(crate) fn read_failed(&self, error: String) {
        let mut read = self.read.write();
        if read.as_deref() != Some(error.as_str()) {
            log::error!("refresh failed error={error:?}");
        }
        *read = Some(error);
    }

    /// Whether the last refresh failed.
    pub(crate) fn read_failing(&self) -> bool {
        self.read.read().is_some()
    }

    /// A refresh succeeded; logs `store recovered` if refreshes were failing.
    pub(crate) fn read_ok(&self) {
        if self.read.write().take().is_some() {
            log::info!("store recovered");
        }
    }

    /// Whether the last write failed.
    pub(crate) fn write_failing(&self) -> bool {
        self.write.read().is_some()
    }

    /// A write failed with `error`. A fault of the store itself (see [`write_fault`]) degrades
    /// the health and is logged once per distinct error; waiting for another writer's lock
    /// does not. Returns the text for the client: the fault first, then the store's words.
    pub(crate) fn write_failed(&self, error: &StoreError) -> String {
        let Some(fault) = write_fault(error) else {
            return error.to_string();
        };
        let reason = format!("{fault} ({error})");
        let mut write = self.write.write();
        if write.as_deref() != Some(reason.as_str()) {
            log::error!("store write failed error={reason:?}");
        }
        *write = Some(reason.clone());
        reason
    }

    /// A write succeeded; logs `store writable again` if writes were failing.
    pub(crate) fn write_ok(&self) {
        if self.write.write().take().is_some() {
            log::info!("store writable again");
        }
    }
}

/// What is wrong with the store when a write fails for a reason of its own, in a few words
/// (`disk full`, `read-only`, `I/O error`, `cannot open`; Redis: `read-only`, `out of memory`,
/// `cannot persist`); `None` when the write only lost a race for a lock (`database is locked`:
/// another writer held it past the busy time-out) or Redis could not be reached.
pub(crate) fn write_fault(error: &StoreError) -> Option<&'static str> {
    use rusqlite::ErrorCode;
    if let StoreError::Redis(e) = error {
        // Redis says why it refuses a write in the first word of its error reply. A Redis that
        // cannot be reached is not a write fault: the link reports it (`redis unavailable`,
        // `/healthz` with `redis: …`), and the message stays as it is.
        let text = e.to_string();
        return if text.contains("READONLY") {
            Some("read-only")
        } else if text.contains("OOM") {
            Some("out of memory")
        } else if text.contains("MISCONF") {
            Some("cannot persist")
        } else {
            None
        };
    }
    let source = std::error::Error::source(error)?;
    let code = match source.downcast_ref::<rusqlite::Error>() {
        Some(rusqlite::Error::SqliteFailure(e, _)) => e.code,
        _ => return Some("store error"),
    };
    Some(match code {
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => return None,
        ErrorCode::DiskFull => "disk full",
        ErrorCode::ReadOnly => "read-only",
        ErrorCode::SystemIoFailure => "I/O error",
        ErrorCode::CannotOpen => "cannot open",
        _ => "store error",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_error(code: i32, text: &str) -> StoreError {
        StoreError::Query(Box::new(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            Some(text.into()),
        )))
    }

    #[test]
    fn a_write_fault_degrades_until_a_write_succeeds_and_a_busy_lock_does_not() {
        let h = StoreHealth::default();
        let busy = sqlite_error(rusqlite::ffi::SQLITE_BUSY, "database is locked");
        assert_eq!(h.write_failed(&busy), "database is locked");
        assert_eq!(h.degraded(), None, "losing a lock race is not a fault");
        let full = sqlite_error(rusqlite::ffi::SQLITE_FULL, "database or disk is full");
        assert_eq!(
            h.write_failed(&full),
            "disk full (database or disk is full)"
        );
        assert_eq!(
            h.degraded().as_deref(),
            Some("writes fail: disk full (database or disk is full)")
        );
        let ro = sqlite_error(
            rusqlite::ffi::SQLITE_READONLY,
            "attempt to write a readonly database",
        );
        assert!(h.write_failed(&ro).starts_with("read-only ("));
        h.read_failed("no such table: alarms".into());
        let both = h.degraded().unwrap();
        assert!(
            both.starts_with("no such table: alarms; writes fail: read-only"),
            "{both}"
        );
        h.write_ok();
        h.read_ok();
        assert_eq!(h.degraded(), None);
    }
}
