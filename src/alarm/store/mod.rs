//! The alarm store: where alarms live, behind [`AlarmStore`], so the refresher and the handlers
//! do not depend on which store it is: a SQLite file ([`sqlite`], the default) or a hash on the
//! Redis several nodes share ([`redis`], `--alarm-store redis`).

pub(crate) mod redis;
pub(crate) mod sqlite;

use std::error::Error;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{AlarmStoreKind, Config};
use crate::redis::Link;

/// A store failure, in words for `/healthz` and logs, with the failure underneath as its
/// [`Error::source`].
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The store at `path` could not be opened (or created).
    Open {
        /// Where.
        path: PathBuf,
        /// Why.
        source: Box<dyn Error + Send + Sync>,
    },
    /// The store at `path` does not hold alarms the way syncast expects (a table renamed, a
    /// column missing: another program broke it).
    Schema {
        /// Where.
        path: PathBuf,
        /// Why.
        source: Box<dyn Error + Send + Sync>,
    },
    /// A read or a write failed.
    Query(Box<dyn Error + Send + Sync>),
    /// The Redis store failed (`redis: …`): Redis unavailable, or the hash is not a hash.
    Redis(Box<dyn Error + Send + Sync>),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Open { path, source } => {
                write!(f, "cannot open {}: {source}", path.display())
            }
            StoreError::Schema { path, source } => {
                write!(f, "wrong schema in {}: {source}", path.display())
            }
            StoreError::Query(source) => write!(f, "{source}"),
            StoreError::Redis(source) => write!(f, "{source}"),
        }
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            StoreError::Open { source, .. }
            | StoreError::Schema { source, .. }
            | StoreError::Query(source)
            | StoreError::Redis(source) => Some(&**source),
        }
    }
}

/// One connection to the alarm store.
pub(crate) trait AlarmStore: Send {
    /// Reads the alarms of `ids` at once; `values[i]` is the alarm of `ids.ids()[i]`, `false`
    /// for an id the store does not hold.
    fn load(&self, ids: &IdList) -> Result<Vec<bool>, StoreError>;
    /// Reads one id's alarm (`false` if the store does not hold it).
    fn get(&self, id: &str) -> Result<bool, StoreError>;
    /// Writes one id's alarm: `Some(alarm)` sets it, `None` forgets the id (it reads as `false`
    /// afterwards), and returns, once it has committed, a number that follows the order in which
    /// writes commit, which is what lets the hub apply acknowledged writes in commit order
    /// ([`crate::alarm::hub::AlarmHub::write_through`]). A store that holds a lock across its
    /// commit (SQLite) calls `order` exactly once under that lock and returns its number; one
    /// that numbers its writes itself returns its own (Redis: an `INCR` in the same script as
    /// the write) and never calls `order`.
    fn write(
        &self,
        id: &str,
        alarm: Option<bool>,
        order: &dyn Fn() -> u64,
    ) -> Result<u64, StoreError>;
    /// Sets one id's alarm (a [`AlarmStore::write`] nobody orders; tests stand in for outside
    /// writers with it).
    #[cfg(test)]
    fn set(&self, id: &str, alarm: bool) -> Result<(), StoreError> {
        self.write(id, Some(alarm), &|| 0).map(drop)
    }
    /// Forgets one id (it reads as `false` afterwards).
    #[cfg(test)]
    fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.write(id, None, &|| 0).map(drop)
    }
    /// A value that stays the same between two reads only if nothing was committed to the
    /// store in between; `None` when it cannot be read or the store has none (the caller then
    /// queries anyway: the Redis store). The refresher reads it before each full query and
    /// skips the next one while it holds still.
    fn version(&self) -> Option<Version>;
    /// `Some(what happened)` when this connection no longer reaches the store at its location
    /// (the SQLite file was replaced or deleted): the caller drops it and opens a new one.
    fn moved(&self) -> Option<String>;
    /// Checks that the store answers, when no id is connected (for `/healthz`).
    fn check(&self) -> Result<(), StoreError> {
        self.load(&IdList::new(vec![Arc::from("")])).map(drop)
    }
}

/// What [`AlarmStore::version`] returns: comparable, and otherwise opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Version([i64; 6]);

/// Where the alarms are, and how to reach them.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    /// A SQLite file, and how long a statement waits for another writer's lock.
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The lock wait.
        busy: Duration,
    },
    /// The hash `<prefix>alarms` on the shared Redis.
    Redis(Arc<redis::Shared>),
}

impl Backend {
    /// The store `config` names; `link` is the Redis of `--redis` (there when `config.redis`
    /// is, which `--alarm-store redis` requires).
    pub(crate) fn of(config: &Config, link: Option<&Arc<Link>>) -> Backend {
        match (config.alarm_store, link) {
            (AlarmStoreKind::Redis, Some(link)) => {
                Backend::Redis(Arc::new(redis::Shared::new(link.clone())))
            }
            _ => Backend::Sqlite {
                path: config.db.clone(),
                busy: config.busy_timeout,
            },
        }
    }

    /// Creates the store if it does not exist yet (the file and its schema), at start: a bad
    /// location is then a start error, not a degraded run.
    pub(crate) fn create(&self) -> Result<(), StoreError> {
        match self {
            Backend::Sqlite { path, busy } => sqlite::Sqlite::open(path, *busy, true).map(drop),
            // Nothing to create: a hash exists once a field is set. Redis being unavailable at
            // start is a fault to run degraded through (it may start after syncast), not a
            // start error.
            Backend::Redis(_) => Ok(()),
        }
    }

    /// Tries a write that changes nothing, on a new connection: whether a `PUT` could commit
    /// now (the refresher's probe while writes fail; see `alarm::health`).
    pub(crate) fn probe_write(&self) -> Result<(), StoreError> {
        match self {
            Backend::Sqlite { path, busy } => {
                sqlite::Sqlite::open(path, *busy, false)?.probe_write()
            }
            Backend::Redis(shared) => redis::RedisAlarms::new(shared.clone()).probe_write(),
        }
    }

    /// Whether the store is shared with other nodes (Redis): the refresher then checks it at
    /// every tick, also with no id connected, so `/healthz` follows it.
    pub(crate) fn shared(&self) -> bool {
        matches!(self, Backend::Redis(_))
    }

    /// A new connection to the store, which must exist (a store deleted under a running server
    /// is a fault to report, not an empty store to recreate).
    pub(crate) fn open(&self) -> Result<Box<dyn AlarmStore>, StoreError> {
        match self {
            Backend::Sqlite { path, busy } => {
                Ok(Box::new(sqlite::Sqlite::open(path, *busy, false)?))
            }
            // No I/O: the link lends a connection to each call.
            Backend::Redis(shared) => Ok(Box::new(redis::RedisAlarms::new(shared.clone()))),
        }
    }
}

/// A batch of ids to load, sorted, with the JSON array the query takes. The refresher keeps one
/// across ticks while the connected ids stay the same. Sorted because SQLite then walks the
/// table's b-tree in order: in a probe with 10,000 of 100,000 ids (the bench's store), a
/// query in hash-map order took 8.0 ms, sorted 5.9 ms including the sort.
#[derive(Debug, Default, Clone)]
pub(crate) struct IdList {
    ids: Vec<Arc<str>>,
    json: String,
}

impl IdList {
    /// The list of `ids` (sorted, duplicates removed).
    pub(crate) fn new(mut ids: Vec<Arc<str>>) -> IdList {
        ids.sort_unstable();
        ids.dedup();
        let json = serde_json::to_string(&ids.iter().map(|s| &**s).collect::<Vec<_>>())
            .expect("a list of strings serialises");
        IdList { ids, json }
    }

    /// The ids, in the order of [`AlarmStore::load`]'s values.
    pub(crate) fn ids(&self) -> &[Arc<str>] {
        &self.ids
    }

    /// The ids as one JSON array of strings.
    pub(crate) fn json(&self) -> &str {
        &self.json
    }

    /// Whether the list is empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}
