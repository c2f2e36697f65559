//! The Redis store (`--alarm-store redis`): the alarm of id X is the field X of the hash
//! `<prefix>alarms` (default `syncast:alarms`), `1` or `0` (`true`/`false` read too). A field
//! that is missing is `false`; any other value reads as `false` and is logged once. Any
//! program may write it: `redis-cli HSET syncast:alarms 42 1`.
//!
//! The refresher reads the connected ids with `HMGET`, [`BATCH`] fields a command, every
//! command of a refresh in one pipeline: one round trip however many ids. It has no
//! [`AlarmStore::version`]: Redis keeps no per-key version that an outside `HSET` moves (see
//! [`RedisAlarms::version`]), so every tick with ids connected reads them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{AlarmStore, IdList, StoreError, Version};
use crate::redis::{Link, Retry};

/// Fields per `HMGET` in a refresh's pipeline. Measured with 10,000 connected ids of a hash of
/// 100,000 fields (`make bench`, `--only redis-refresh`: loopback, Redis 7.0, a loaded 2-core
/// machine, so provisional): the whole pipeline took about the same (5-8 ms median) for
/// batches of 100 to 10,000, within the noise, while the time Redis spends on one command,
/// during which it serves nobody else, grew with the batch: ~15 µs for 100 fields, ~170 µs for
/// 1,000, ~1.1 ms for 10,000. 1,000 keeps that wait for the other clients (the other nodes'
/// chat posts) under ~0.2 ms in 10 round-trip-free commands.
pub(crate) const BATCH: usize = 1000;

/// Ids whose unreadable value was logged and is still unreadable, at most this many (beyond
/// it, more such ids are read as `false` without a line).
const WARNED_MAX: usize = 1024;

/// What every connection of the Redis store shares: the link, the hash's name, and which
/// unreadable values were logged already.
pub(crate) struct Shared {
    link: Arc<Link>,
    key: String,
    /// `<prefix>writes`: the write counter (see [`RedisAlarms`]'s `write`).
    writes: String,
    warned: Mutex<HashSet<String>>,
    /// `warned.len()`, read without the lock: a refresh of 10,000 readable values then takes
    /// no lock at all.
    warned_count: AtomicUsize,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redis hash {}", self.key)
    }
}

impl Shared {
    /// The store on `link`: the hash `<prefix>alarms`.
    pub(crate) fn new(link: Arc<Link>) -> Shared {
        let key = link.key("alarms");
        let writes = link.key("writes");
        Shared {
            link,
            key,
            writes,
            warned: Mutex::new(HashSet::new()),
            warned_count: AtomicUsize::new(0),
        }
    }

    /// A field's value as an alarm: `1`/`true` on, `0`/`false`/missing off; anything else is
    /// off, logged once per id while it stays unreadable.
    fn value(&self, id: &str, raw: Option<&[u8]>) -> bool {
        match raw {
            None | Some(b"0") | Some(b"false") => {
                self.readable(id);
                false
            }
            Some(b"1") | Some(b"true") => {
                self.readable(id);
                true
            }
            Some(other) => {
                let mut warned = self.warned.lock();
                if warned.len() < WARNED_MAX && warned.insert(id.to_string()) {
                    self.warned_count.store(warned.len(), Ordering::Relaxed);
                    drop(warned);
                    let shown = String::from_utf8_lossy(&other[..other.len().min(64)]);
                    log::warn!(
                        "redis alarm unreadable key={} id={id} value={shown:?}; read as false",
                        self.key
                    );
                }
                false
            }
        }
    }

    /// `id` reads well again: a later bad value is logged again.
    fn readable(&self, id: &str) {
        if self.warned_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut warned = self.warned.lock();
        if warned.remove(id) {
            self.warned_count.store(warned.len(), Ordering::Relaxed);
        }
    }
}

/// One write and its number: `HSET` (or `HDEL` when the value is empty) then `INCR` of the
/// write counter, atomically (see [`RedisAlarms`]'s `write`).
static WRITE_SCRIPT: std::sync::LazyLock<::redis::Script> = std::sync::LazyLock::new(|| {
    ::redis::Script::new(
        "if ARGV[2] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) \
         else redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end \
         return redis.call('INCR', KEYS[2])",
    )
});

/// A handle on the Redis store (connections come from the link, one per call).
pub(crate) struct RedisAlarms {
    shared: Arc<Shared>,
}

impl RedisAlarms {
    /// A handle; no I/O.
    pub(crate) fn new(shared: Arc<Shared>) -> RedisAlarms {
        RedisAlarms { shared }
    }

    /// A write that changes nothing: `INCRBY <prefix>writes 0`. Redis refuses it exactly when it
    /// refuses a `PUT`'s write (out of memory, a failed save with `stop-writes-on-bgsave-error`,
    /// a read-only replica), and accepts it once writes are taken again.
    pub(crate) fn probe_write(&self) -> Result<(), StoreError> {
        let s = &self.shared;
        s.link.run(Retry::Idempotent, |c| {
            ::redis::cmd("INCRBY")
                .arg(&s.writes)
                .arg(0)
                .query::<i64>(c)
                .map(drop)
        })?;
        Ok(())
    }
}

impl From<crate::redis::RedisError> for StoreError {
    fn from(e: crate::redis::RedisError) -> StoreError {
        StoreError::Redis(Box::new(e))
    }
}

type Raw = Option<Vec<u8>>;

impl AlarmStore for RedisAlarms {
    /// One pipeline of `HMGET`s of [`BATCH`] fields: one round trip.
    fn load(&self, ids: &IdList) -> Result<Vec<bool>, StoreError> {
        let s = &self.shared;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for chunk in ids.ids().chunks(BATCH) {
            let cmd = pipe.cmd("HMGET").arg(&s.key);
            for id in chunk {
                cmd.arg(&**id);
            }
        }
        let batches: Vec<Vec<Raw>> = s.link.run(Retry::Idempotent, |c| pipe.query(c))?;
        let mut values = Vec::with_capacity(ids.ids().len());
        for (chunk, raws) in ids.ids().chunks(BATCH).zip(&batches) {
            for (id, raw) in chunk.iter().zip(raws) {
                values.push(s.value(id, raw.as_deref()));
            }
        }
        if values.len() != ids.ids().len() {
            return Err(crate::redis::RedisError::Reply(format!(
                "HMGET answered {} values for {} ids",
                values.len(),
                ids.ids().len()
            ))
            .into());
        }
        Ok(values)
    }

    fn get(&self, id: &str) -> Result<bool, StoreError> {
        let s = &self.shared;
        let raw: Raw = s.link.run(Retry::Idempotent, |c| {
            ::redis::cmd("HGET").arg(&s.key).arg(id).query(c)
        })?;
        Ok(s.value(id, raw.as_deref()))
    }

    /// `HSET <prefix>alarms id 1|0` (or `HDEL`), and `INCR <prefix>writes` in the same script:
    /// Redis runs a script whole, so the counter numbers the writes of every node in the order
    /// they were applied. Sent again on a fresh connection if the pooled one was dead: the write
    /// is the same, and a counter moved twice only skips a number.
    fn write(
        &self,
        id: &str,
        alarm: Option<bool>,
        _order: &dyn Fn() -> u64,
    ) -> Result<u64, StoreError> {
        let s = &self.shared;
        let v = match alarm {
            Some(true) => "1",
            Some(false) => "0",
            None => "",
        };
        let n = s.link.run(Retry::Idempotent, |c| {
            WRITE_SCRIPT
                .key(&s.key)
                .key(&s.writes)
                .arg(id)
                .arg(v)
                .invoke::<u64>(c)
        })?;
        Ok(n)
    }

    /// None: every tick with ids connected reads them. Redis has no version of one key that
    /// every write to it moves: a counter syncast `INCR`s beside its own `HSET`s misses
    /// `redis-cli HSET` from other programs; keyspace notifications need the server configured
    /// for them (`notify-keyspace-events`, off by default) and a subscriber that loses what is
    /// published while it reconnects; `INFO`'s `rdb_changes_since_last_save` counts writes to
    /// the whole server (the chat's too, so it never holds still) and is reset by every save.
    /// What a read costs instead is measured: docs/performance.md.
    fn version(&self) -> Option<Version> {
        None
    }

    /// Never: the link reconnects by itself.
    fn moved(&self) -> Option<String> {
        None
    }

    /// `PING`, and that the hash is a hash (`HLEN` fails with `WRONGTYPE` otherwise).
    fn check(&self) -> Result<(), StoreError> {
        let s = &self.shared;
        s.link.run(Retry::Idempotent, |c| {
            ::redis::cmd("HLEN").arg(&s.key).query::<i64>(c).map(drop)
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kit::redis_server::RedisServer;
    use std::time::Duration;

    fn store(redis: &RedisServer) -> RedisAlarms {
        let link = Link::new(&redis.url(), "u:", Duration::from_secs(2)).unwrap();
        RedisAlarms::new(Arc::new(Shared::new(Arc::new(link))))
    }

    #[test]
    #[ignore = "needs redis-server: make unit runs it where installed (docs/testing.md)"]
    fn writes_are_numbered_in_the_order_redis_applied_them_and_the_probe_changes_nothing() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("cannot run: {e}"));
        let s = store(&redis);
        let never = || -> u64 { panic!("Redis numbers its writes itself") };
        let a = s.write("w", Some(true), &never).unwrap();
        let b = s.write("w", None, &never).unwrap();
        let c = s.write("w", Some(false), &never).unwrap();
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(!s.get("w").unwrap());
        s.probe_write().unwrap();
        assert_eq!(
            s.write("w", Some(true), &never).unwrap(),
            c + 1,
            "the probe added 0"
        );
        assert!(s.get("w").unwrap());
    }

    #[test]
    #[ignore = "needs redis-server: make unit runs it where installed (docs/testing.md)"]
    fn a_load_of_more_ids_than_a_batch_keeps_every_value_in_order() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("cannot run: {e}"));
        let s = store(&redis);
        let n = BATCH * 2 + 321;
        // Every third id on, every fifth written `true`, every seventh missing.
        let ids: Vec<Arc<str>> = (0..n).map(|i| Arc::from(format!("id{i:05}"))).collect();
        let mut want = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let on = i % 3 == 0;
            if i % 7 != 0 {
                s.set(id, on).unwrap();
            }
            want.push(on && i % 7 != 0);
        }
        s.shared
            .link
            .run(Retry::Idempotent, |c| {
                ::redis::cmd("HSET")
                    .arg("u:alarms")
                    .arg("id00005")
                    .arg("true")
                    .query::<i64>(c)
            })
            .unwrap();
        want[5] = true;
        let list = IdList::new(ids.clone());
        assert_eq!(s.load(&list).unwrap(), want);
        assert!(s.get("id00005").unwrap());
        s.delete("id00005").unwrap();
        assert!(!s.get("id00005").unwrap());
        s.check().unwrap();
        assert_eq!(s.version(), None);
        assert!(s.load(&IdList::default()).unwrap().is_empty());
    }
}
