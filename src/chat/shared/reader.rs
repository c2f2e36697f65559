//! The `chat-reader` thread: one per node, on a Redis connection of its own, follows the
//! room's stream into the node's mirror.
//!
//! `XREAD BLOCK` with the last entry id read: Redis answers with everything after it, not only
//! what is new, so after a reconnect the events posted meanwhile come first, in order, then live
//! ones: no gap, no duplicate, one mechanism. The block time is short (250 ms) so a shutdown is
//! seen soon; an idle node costs Redis four cheap commands a second. The mirror's ids are
//! dense: an event after a hole (this node fell more than `--history` behind) starts the mirror
//! again there, and the streams attached are cut off to resume with `reset`.
//!
//! At start, and whenever Redis seems to have lost the room (its epoch changed, or its last id
//! went back: a restart without AOF), the mirror is filled anew from the kept history
//! (`XRANGE`, 1,000 entries a page). Streams attach only once it has been filled once.

use std::sync::Arc;
use std::time::Duration;

use ::redis::{Connection, Value};
use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::entry::{entries, Entry, EntryId};
use super::SharedChat;
use crate::chat::room::Room;
use crate::redis::RedisError;

/// How long one `XREAD` waits for new entries.
pub(crate) const BLOCK: Duration = Duration::from_millis(250);

/// Most entries one `XREAD` returns.
const COUNT: usize = 512;

/// Entries per `XRANGE` page while filling the mirror.
const PAGE: usize = 1000;

/// The reader: what it reads into, and when to stop.
pub(crate) struct Reader {
    pub(crate) room: Arc<Room>,
    pub(crate) shared: Arc<SharedChat>,
    /// Disconnected at shutdown.
    pub(crate) shutdown: Receiver<()>,
}

/// Where the reader stands.
#[derive(Default)]
struct Place {
    /// The last entry read (`None`: the mirror must be filled).
    last: Option<EntryId>,
    /// The room's epoch when the mirror was filled.
    epoch: Option<String>,
    /// The last failure that was not Redis being unavailable, logged once.
    failed: Option<String>,
}

impl Reader {
    /// Runs until shutdown.
    pub(crate) fn run(self) {
        let mut con: Option<Connection> = None;
        let mut place = Place::default();
        loop {
            if self.stopped(Duration::ZERO) {
                return;
            }
            match self.step(&mut con, &mut place) {
                Ok(()) => {
                    if place.failed.take().is_some() {
                        self.shared.set_reader_error(None);
                        log::info!("chat reader recovered");
                    }
                }
                // The link logged it (once) and backs off; try again soon.
                Err(RedisError::Unavailable(_)) => {
                    if self.stopped(Duration::from_millis(50)) {
                        return;
                    }
                }
                Err(RedisError::Reply(e)) => {
                    if place.failed.as_deref() != Some(e.as_str()) {
                        log::error!("chat reader failed error={e:?}");
                        self.shared
                            .set_reader_error(Some(format!("redis: chat reader: {e}")));
                        place.failed = Some(e);
                    }
                    con = None;
                    if self.stopped(Duration::from_millis(500)) {
                        return;
                    }
                }
            }
        }
    }

    /// Waits `d` for shutdown; whether it came.
    fn stopped(&self, d: Duration) -> bool {
        matches!(
            self.shutdown.recv_timeout(d),
            Err(RecvTimeoutError::Disconnected)
        )
    }

    /// One `XREAD` (after checking the room on a new connection).
    fn step(&self, con: &mut Option<Connection>, place: &mut Place) -> Result<(), RedisError> {
        let link = self.shared.link();
        let read_timeout = BLOCK + link.timeout();
        if con.is_none() || place.last.is_none() {
            let (epoch, seq) = self.epoch(con, read_timeout)?;
            let head = self.room.head();
            let lost = place.last.is_some()
                && (place.epoch.as_ref().is_some_and(|e| *e != epoch) || seq < head);
            if lost {
                log::error!(
                    "chat redis lost the room epoch={epoch} last_id={seq} mirror_last_id={head}; \
                     the mirror starts again"
                );
            }
            if place.last.is_none() || lost {
                self.fill(con, read_timeout, seq, place)?;
                self.shared.set_synced();
            }
            place.epoch = Some(epoch);
        }
        let last = place.last.unwrap_or_default().to_string();
        let key = self.shared.key("chat:events");
        let reply = link.run_own(con, read_timeout, |c| {
            ::redis::cmd("XREAD")
                .arg("COUNT")
                .arg(COUNT)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&key)
                .arg(&last)
                .query::<Value>(c)
        })?;
        let batch = entries(&reply, true)
            .ok_or_else(|| RedisError::Reply("XREAD: a reply of an unexpected shape".into()))?;
        self.feed(&batch, place);
        Ok(())
    }

    /// The room's epoch (set if it has none) and last id.
    fn epoch(
        &self,
        con: &mut Option<Connection>,
        read_timeout: Duration,
    ) -> Result<(String, u64), RedisError> {
        let reply = self.shared.link().run_own(con, read_timeout, |c| {
            self.shared
                .invocation(&super::lua::EPOCH)
                .invoke::<Value>(c)
        })?;
        let items = super::items(reply);
        Ok((super::text(items.first()), super::number(items.get(1))))
    }

    /// Fills the mirror anew with the kept history (`seq`: the room's last id).
    fn fill(
        &self,
        con: &mut Option<Connection>,
        read_timeout: Duration,
        seq: u64,
        place: &mut Place,
    ) -> Result<(), RedisError> {
        let key = self.shared.key("chat:events");
        let first = seq.saturating_sub(self.shared.history as u64) + 1;
        let mut from = format!("{first}-0");
        let mut started = false;
        let mut read = 0usize;
        loop {
            let reply = self.shared.link().run_own(con, read_timeout, |c| {
                ::redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(&from)
                    .arg("+")
                    .arg("COUNT")
                    .arg(PAGE)
                    .query::<Value>(c)
            })?;
            let batch = entries(&reply, false).ok_or_else(|| {
                RedisError::Reply("XRANGE: a reply of an unexpected shape".into())
            })?;
            if !started {
                // After the event before the first one kept (a node with a smaller --history
                // may have trimmed more), or after the last id if nothing is kept.
                let base = batch
                    .iter()
                    .find_map(|(_, e)| match e {
                        Entry::Event { id, .. } => Some(id - 1),
                        _ => None,
                    })
                    .unwrap_or(seq);
                let cut = self.room.restart_mirror(base);
                self.shared.figures.resyncs.inc();
                if cut > 0 {
                    log::warn!("chat reader restarted the mirror cut={cut}");
                }
                place.last = Some(EntryId { id: base, sub: 0 });
                started = true;
            }
            let full = batch.len() == PAGE;
            read += batch.len();
            self.feed(&batch, place);
            match (&place.last, full) {
                (Some(last), true) => from = format!("({last}"),
                _ => break,
            }
        }
        log::info!(
            "chat reader synced last_id={} entries={read}",
            self.room.head()
        );
        if place.last.is_some_and(|l| l.id < seq) {
            // Nothing kept up to the last id (not written by syncast): follow from there.
            place.last = Some(EntryId { id: seq, sub: 0 });
        }
        Ok(())
    }

    /// Feeds `batch` into the mirror; `place` moves past it.
    fn feed(&self, batch: &[(EntryId, Entry)], place: &mut Place) {
        let Some((last, _)) = batch.last() else {
            return;
        };
        let fed = self.room.feed(&self.shared.node, batch);
        place.last = Some(*last);
        self.shared.seen(fed.head);
        self.shared.figures.entries_read.add(batch.len() as u64);
        for (missing, next) in &fed.holes {
            self.shared.figures.resyncs.inc();
            log::warn!(
                "chat reader fell behind the history missing_from={missing} next={next} cut={}",
                fed.cut
            );
        }
    }
}
