//! The `chat-keeper` thread: the local room's housekeeping, for the chat on Redis, off the
//! dispatcher (it waits for Redis). Every 250 ms:
//!
//! - the sessions of streams that ended here get their grace (`now + --grace`), in one script;
//! - every renewal period (`--grace`/2, within 250 ms..10 s) the sessions streaming here get
//!   their lease moved (`now + grace + 2 renewal periods`): a node that dies stops renewing, and
//!   its members expire about `--grace` later, with their `timeout` leaves;
//! - the tick script: expired sessions claimed (at most 256 a tick; the claim is atomic, so with
//!   any number of nodes each expiry is one leave) and the joins and leaves noted so far
//!   announced as one `presence` event (whichever node ticks first).
//!
//! After Redis was unavailable to it, a node renews at once and claims nothing for two renewal
//! periods: deadlines may have passed while no node could renew them, and every node that came
//! back renews within that window.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, tick, Receiver};

use super::{SharedChat, DETACH_QUEUE, TICK};
use crate::chat::room::Room;
use crate::metrics::Metrics;

/// How long a shutting-down keeper waits for this node's streams to end, to give their
/// sessions their grace (a member then resumes on another node with its session, or it
/// expires a grace later instead of a lease later).
const FAREWELL: Duration = Duration::from_millis(500);

/// The keeper: what it keeps, and when to stop.
pub(crate) struct Keeper {
    pub(crate) room: Arc<Room>,
    pub(crate) shared: Arc<SharedChat>,
    pub(crate) metrics: Arc<Metrics>,
    /// Disconnected at shutdown.
    pub(crate) shutdown: Receiver<()>,
}

/// What the keeper carries from one tick to the next.
struct Rounds {
    /// Ended streams whose sessions' grace is not in Redis yet.
    ended: Vec<(u64, u64)>,
    next_renewal: Instant,
    /// Since when every call succeeded (`None`: the last one failed, or none was made).
    up_since: Option<Instant>,
}

impl Keeper {
    /// Runs until shutdown.
    pub(crate) fn run(self) {
        let ticker = tick(TICK);
        let mut r = Rounds {
            ended: Vec::new(),
            next_renewal: Instant::now(),
            up_since: None,
        };
        loop {
            select! {
                recv(self.shutdown) -> _ => break,
                recv(ticker) -> _ => self.round(&mut r),
            }
        }
        self.farewell(&mut r);
    }

    fn take_ended(&self, r: &mut Rounds) {
        while r.ended.len() < DETACH_QUEUE {
            match self.shared.detach_rx.try_recv() {
                Ok(p) => r.ended.push(p),
                Err(_) => break,
            }
        }
    }

    fn round(&self, r: &mut Rounds) {
        let sh = &self.shared;
        let mut ok = true;
        self.take_ended(r);
        if !r.ended.is_empty() {
            match sh.detach_all(&r.ended) {
                Ok(()) => r.ended.clear(),
                Err(_) => ok = false,
            }
        }
        let now = Instant::now();
        if ok && (r.up_since.is_none() || now >= r.next_renewal) {
            let running = self.room.attachments();
            match sh.renew(&running) {
                Ok(()) => r.next_renewal = now + sh.renew_every,
                Err(_) => ok = false,
            }
        }
        let sweep = ok
            && r.up_since
                .is_some_and(|t| t.elapsed() >= 2 * sh.renew_every);
        if ok {
            match sh.tick(sweep) {
                Ok((members, expired)) => {
                    self.metrics.chat_members.set(members);
                    for name in &expired {
                        log::info!("chat expired name={name}");
                    }
                    sh.figures.expired.add(expired.len() as u64);
                }
                Err(_) => ok = false,
            }
        }
        // The link logs each change of Redis's state once.
        r.up_since = match (ok, r.up_since) {
            (true, Some(t)) => Some(t),
            (true, None) => Some(now),
            (false, _) => None,
        };
    }

    /// At shutdown: the sessions of this node's streams get their grace now, not a lease later.
    fn farewell(&self, r: &mut Rounds) {
        let until = Instant::now() + FAREWELL;
        while !self.room.attachments().is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.take_ended(r);
        // A Redis known to be unavailable would only hold the shutdown up to --redis-timeout.
        if !r.ended.is_empty() && self.shared.link().health().is_none() {
            let _ = self.shared.detach_all(&r.ended);
        }
    }
}
