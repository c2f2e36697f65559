//! The SQLite store: a real file other programs may write into.
//!
//! Schema (created if missing):
//! ```sql
//! CREATE TABLE IF NOT EXISTS alarms (
//!     id         TEXT PRIMARY KEY NOT NULL,   -- the user id, 1-64 chars of [A-Za-z0-9._-]
//!     alarm      INTEGER NOT NULL CHECK (alarm IN (0, 1)),
//!     updated_at INTEGER NOT NULL DEFAULT (CAST(strftime('%s','now') AS INTEGER) * 1000)
//! ) WITHOUT ROWID;
//! ```
//! An id with no row is `false`. The file is in WAL mode, so outside writers and the refresher's
//! reads do not block each other.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};

use super::{AlarmStore, IdList, StoreError, Version};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Query(Box::new(e))
    }
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS alarms (
    id         TEXT PRIMARY KEY NOT NULL,
    alarm      INTEGER NOT NULL CHECK (alarm IN (0, 1)),
    updated_at INTEGER NOT NULL DEFAULT (CAST(strftime('%s','now') AS INTEGER) * 1000)
) WITHOUT ROWID;";

/// One connection to the SQLite store.
pub(crate) struct Sqlite {
    conn: Connection,
    path: PathBuf,
    /// Device and inode of the file when it was opened (`None`: it could not be read).
    inode: Option<(u64, u64)>,
}

/// Device and inode of the file at `path` now.
fn inode(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Sqlite {
    /// Opens the store at `path` in WAL mode (creating the file and its schema if `create`),
    /// with `busy` as the time a statement may wait for another writer's lock.
    pub(crate) fn open(path: &Path, busy: Duration, create: bool) -> Result<Sqlite, StoreError> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(path, flags).map_err(|e| StoreError::Open {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        conn.busy_timeout(busy)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        if create {
            conn.execute_batch(SCHEMA)?;
        }
        // A store another program broke (table renamed, wrong columns) is an error, not
        // something to paper over by recreating the table.
        conn.prepare("SELECT id, alarm FROM alarms LIMIT 0")
            .map_err(|e| StoreError::Schema {
                path: path.to_path_buf(),
                source: Box::new(e),
            })?;
        Ok(Sqlite {
            conn,
            path: path.to_path_buf(),
            inode: inode(path),
        })
    }

    /// A write that changes nothing but must reach the disk: `user_version` (a number in the
    /// file's header that syncast does not use) set to the value it has, in one `BEGIN
    /// IMMEDIATE` transaction so no other writer can change it in between. SQLite writes the
    /// header page to its log at the commit, so this fails exactly when a `PUT` would (disk
    /// full, read-only, I/O error; tried on a full tmpfs: `database or disk is full`).
    pub(crate) fn probe_write(&self) -> Result<(), StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let probed = (|| {
            let v: i64 = self
                .conn
                .query_row("PRAGMA user_version", [], |row| row.get(0))?;
            self.conn.pragma_update(None, "user_version", v)?;
            self.conn.execute_batch("COMMIT")?;
            Ok(())
        })();
        if probed.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        probed
    }

    /// SQLite's `PRAGMA data_version`: changes whenever another connection (a PUT, an outside
    /// writer) commits to the file, and only then.
    fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))?)
    }
}

impl AlarmStore for Sqlite {
    /// One query for the whole batch (an id without a row is `false`).
    fn load(&self, ids: &IdList) -> Result<Vec<bool>, StoreError> {
        let mut values = vec![false; ids.ids().len()];
        if ids.is_empty() {
            return Ok(values);
        }
        // One statement for the whole batch: the ids go in as one JSON array, so the statement
        // text (and its cached plan) is the same whatever the count. A row comes back with its
        // index in the array (`j.key`): no string is hashed or compared on this side.
        let mut stmt = self.conn.prepare_cached(
            "SELECT j.key, a.alarm FROM json_each(?1) AS j JOIN alarms AS a ON a.id = j.value",
        )?;
        let mut rows = stmt.query(params![ids.json()])?;
        while let Some(row) = rows.next()? {
            let i: i64 = row.get(0)?;
            let alarm: i64 = row.get(1)?;
            if let Some(v) = usize::try_from(i).ok().and_then(|i| values.get_mut(i)) {
                *v = alarm != 0;
            }
        }
        Ok(values)
    }

    fn get(&self, id: &str) -> Result<bool, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT alarm FROM alarms WHERE id = ?1")?;
        let mut rows = stmt.query(params![id])?;
        Ok(match rows.next()? {
            Some(row) => row.get::<_, i64>(0)? != 0,
            None => false,
        })
    }

    /// Inserts or updates the row (`Some`), or deletes it (`None`), in one `BEGIN IMMEDIATE`
    /// transaction: `order` runs while this connection holds the file's write lock, so no other
    /// write can commit between the number and this commit. Any failure rolls back.
    fn write(
        &self,
        id: &str,
        alarm: Option<bool>,
        order: &dyn Fn() -> u64,
    ) -> Result<u64, StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let written = (|| {
            match alarm {
                Some(alarm) => self.conn.execute(
                    "INSERT INTO alarms (id, alarm, updated_at)
                     VALUES (?1, ?2, CAST(strftime('%s','now') AS INTEGER) * 1000)
                     ON CONFLICT(id) DO UPDATE SET alarm = excluded.alarm,
                                                   updated_at = excluded.updated_at",
                    params![id, alarm as i64],
                )?,
                None => self
                    .conn
                    .execute("DELETE FROM alarms WHERE id = ?1", params![id])?,
            };
            let n = order();
            self.conn.execute_batch("COMMIT")?;
            Ok(n)
        })();
        if written.is_err() && !self.conn.is_autocommit() {
            // The statement or the commit failed (disk full, read-only, I/O error): nothing of
            // this write may stay pending on the connection.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        written
    }

    /// `data_version` (moved by every commit of another connection: a PUT's, an outside
    /// writer's) with the file's identity, size and modification time (a change SQLite cannot
    /// see, such as the file edited in place, still shows). The file is read first.
    fn version(&self) -> Option<Version> {
        let m = std::fs::metadata(&self.path).ok()?;
        Some(Version([
            self.data_version().ok()?,
            m.dev() as i64,
            m.ino() as i64,
            m.size() as i64,
            m.mtime(),
            m.mtime_nsec(),
        ]))
    }

    fn moved(&self) -> Option<String> {
        (inode(&self.path) != self.inode)
            .then(|| format!("store file changed path={}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn temp_db(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("syncast-store-{}-{name}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn set_get_delete_and_batch_load() {
        let path = temp_db("crud");
        let s = Sqlite::open(&path, Duration::from_millis(100), true).unwrap();
        assert!(!s.get("a").unwrap());
        s.set("a", true).unwrap();
        s.set("b", false).unwrap();
        assert!(s.get("a").unwrap());
        // Out of order and with a duplicate: the list sorts and dedups, values follow it.
        let ids = IdList::new(vec!["c".into(), "a".into(), "b".into(), "a".into()]);
        assert_eq!(ids.ids(), &[Arc::from("a"), "b".into(), "c".into()]);
        let got = s.load(&ids).unwrap();
        assert_eq!(got, vec![true, false, false]);
        s.delete("a").unwrap();
        assert!(!s.get("a").unwrap());
        // A second connection (an outside writer) sees the same file.
        let other = Sqlite::open(&path, Duration::from_millis(100), true).unwrap();
        other.set("c", true).unwrap();
        assert_eq!(
            s.load(&ids).unwrap(),
            vec![false, false, true],
            "a deleted, c set"
        );
        assert!(s.load(&IdList::default()).unwrap().is_empty());
    }

    #[test]
    fn data_version_moves_only_when_another_connection_commits() {
        let path = temp_db("version");
        let s = Sqlite::open(&path, Duration::from_millis(100), true).unwrap();
        let v0 = s.data_version().unwrap();
        s.get("a").unwrap();
        assert_eq!(s.data_version().unwrap(), v0, "reads do not move it");
        let other = Sqlite::open(&path, Duration::from_millis(100), true).unwrap();
        other.set("a", true).unwrap();
        assert_ne!(s.data_version().unwrap(), v0, "an outside commit does");
    }

    #[test]
    fn a_wrong_schema_is_an_error() {
        let path = temp_db("schema");
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE alarms (x INTEGER);").unwrap();
        drop(c);
        let err = Sqlite::open(&path, Duration::from_millis(100), false)
            .err()
            .expect("a wrong schema is refused");
        assert!(err.to_string().contains("wrong schema"), "{err}");
        assert!(matches!(err, StoreError::Schema { .. }), "{err:?}");
        assert!(
            std::error::Error::source(&err).is_some(),
            "the cause is kept"
        );
    }
}
