//! The barriers of a TCP or mixed chat room: TCP lines carry no ids, so members wait until all
//! have joined before they send, and until all have sent before the check (kept apart from
//! `tcp.rs` and `chat.rs`, which both use them).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// What every member of a TCP or mixed room shares: the two barriers and the lines sent.
pub(crate) struct Barriers {
    /// Members that have a name.
    pub(crate) joined: AtomicUsize,
    /// Members that have sent all their lines, or given up.
    pub(crate) finished: AtomicUsize,
    /// Lines sent by each member.
    sent: Vec<AtomicU64>,
    /// The room-wide order of the lines sent (the checker's ids).
    next_id: AtomicU64,
    lock: Mutex<()>,
    changed: Condvar,
}

impl Barriers {
    pub(crate) fn new(clients: usize) -> Barriers {
        Barriers {
            joined: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            sent: (0..clients).map(|_| AtomicU64::new(0)).collect(),
            next_id: AtomicU64::new(0),
            lock: Mutex::new(()),
            changed: Condvar::new(),
        }
    }

    /// Member `i` sent a line: its id in the room-wide order.
    pub(crate) fn sent_one(&self, i: usize) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::AcqRel) + 1;
        self.sent[i].fetch_add(1, Ordering::AcqRel);
        id
    }

    /// Waits (at most `longest`) until all `clients` members have sent all their lines (or
    /// given up), then returns how many lines the members other than `i` sent: what `i` must
    /// receive (`u64::MAX` if the wait timed out).
    pub(crate) fn others_sent(&self, i: usize, clients: usize, longest: Duration) -> u64 {
        if !self.wait(&self.finished, clients, Instant::now() + longest) {
            return u64::MAX;
        }
        self.sent
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n.load(Ordering::Acquire))
            .sum()
    }

    pub(crate) fn bump(&self, counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::AcqRel);
        let _g = self.lock.lock();
        self.changed.notify_all();
    }

    /// Waits until `counter` reaches `n` or `deadline`; returns whether it did.
    pub(crate) fn wait(&self, counter: &AtomicUsize, n: usize, deadline: Instant) -> bool {
        let mut g = self.lock.lock();
        while counter.load(Ordering::Acquire) < n {
            if self.changed.wait_until(&mut g, deadline).timed_out() {
                return counter.load(Ordering::Acquire) >= n;
            }
        }
        true
    }
}

/// Counts a member as finished sending once, when told or when dropped (a member that gives
/// up early), so that nobody waits for it.
pub(crate) struct Finish<'a> {
    barriers: &'a Barriers,
    done: bool,
}

impl<'a> Finish<'a> {
    pub(crate) fn new(barriers: &'a Barriers) -> Finish<'a> {
        Finish {
            barriers,
            done: false,
        }
    }

    pub(crate) fn done(&mut self) {
        if !self.done {
            self.done = true;
            self.barriers.bump(&self.barriers.finished);
        }
    }
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.done();
    }
}
