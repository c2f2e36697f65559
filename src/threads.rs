//! Named, tracked, joinable threads: the only place syncast spawns a thread.
//!
//! Every thread the project starts goes through [`Threads::spawn`], which names it, sets its stack
//! size, registers it by role (so `/debug/threads` can list it), catches a panic in its body (logged
//! with its cause and counted) and keeps its `JoinHandle`. A thread that ends on its own moves its
//! handle to a "finished" list that [`Threads::reap`] joins; [`Threads::join_all`] joins everything
//! at shutdown and says how many threads it joined.

use std::collections::HashMap;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Stack of the dispatcher, refresher and request threads (SQLite wants more than a stream).
pub(crate) const SERVICE_STACK: usize = 256 * 1024;

/// What a thread is for; `/debug/threads` and `/metrics` group threads by this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Role {
    /// Takes requests from tiny_http and routes them.
    Dispatcher,
    /// Polls the alarm store for the connected ids.
    Refresher,
    /// Serves one alarm stream.
    AlarmStream,
    /// Serves one chat stream.
    ChatStream,
    /// Serves one short request that reads a body or touches the store.
    Request,
    /// Sees streams' clients leave (one, while any stream runs), and reads the chat's TCP
    /// clients' lines.
    Watcher,
    /// The chat on Redis: follows the room's stream into this node's mirror (one).
    ChatReader,
    /// The chat on Redis: presence, expiry, grace and leases, every 250 ms (one).
    ChatKeeper,
    /// Accepts the chat's plain-TCP connections (one, with `--chat-tcp`).
    TcpAccept,
    /// Serves one chat member over plain TCP.
    ChatTcp,
    /// Runs the chat room's wake rounds (one, while a chat stream is attached).
    ChatWaker,
}

impl Role {
    /// The stable lower-case name used in logs, JSON and metric labels.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Dispatcher => "dispatcher",
            Role::Refresher => "refresher",
            Role::AlarmStream => "alarm-stream",
            Role::ChatStream => "chat-stream",
            Role::Request => "request",
            Role::Watcher => "watcher",
            Role::ChatReader => "chat-reader",
            Role::ChatKeeper => "chat-keeper",
            Role::TcpAccept => "tcp-accept",
            Role::ChatTcp => "chat-tcp",
            Role::ChatWaker => "chat-waker",
        }
    }

    /// The first part of a stream thread's name (`sse-17`, `chat-18`).
    pub(crate) fn stream_prefix(self) -> &'static str {
        match self {
            Role::ChatStream => "chat",
            Role::ChatTcp => "tcp",
            _ => "sse",
        }
    }

    /// Every role, in a fixed order (for metrics with zero counts).
    pub(crate) const ALL: [Role; 11] = [
        Role::Dispatcher,
        Role::Refresher,
        Role::AlarmStream,
        Role::ChatStream,
        Role::Request,
        Role::Watcher,
        Role::ChatReader,
        Role::ChatKeeper,
        Role::TcpAccept,
        Role::ChatTcp,
        Role::ChatWaker,
    ];
}

/// A live thread as `/debug/threads` shows it.
#[derive(Clone, Debug)]
pub(crate) struct ThreadInfo {
    /// The OS thread name (at most 15 bytes are visible to the OS).
    pub(crate) name: String,
    /// Its role.
    pub(crate) role: Role,
    /// When it was spawned.
    pub(crate) started: Instant,
}

struct Entry {
    info: ThreadInfo,
    handle: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Inner {
    live: HashMap<u64, Entry>,
    finished: Vec<JoinHandle<()>>,
}

/// The registry of every thread syncast spawned. Cheap to clone (shared).
#[derive(Clone, Default)]
pub(crate) struct Threads {
    inner: Arc<Mutex<Inner>>,
    next_id: Arc<AtomicU64>,
    panics: Arc<AtomicU64>,
    joined: Arc<AtomicU64>,
}

impl Threads {
    /// An empty registry.
    pub(crate) fn new() -> Threads {
        Threads::default()
    }

    /// Spawns `body` on a new thread named `name` with a stack of `stack` bytes, registered under
    /// `role`. A panic inside `body` is caught, logged (`thread panicked name=.. cause=..`) and
    /// counted; the thread then ends normally, so joining it never re-raises.
    ///
    /// Fails only when the OS refuses a thread (`EAGAIN`): callers answer 503.
    pub(crate) fn spawn<F>(
        &self,
        role: Role,
        name: String,
        stack: usize,
        body: F,
    ) -> io::Result<u64>
    where
        F: FnOnce() + Send + 'static,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let info = ThreadInfo {
            name: name.clone(),
            role,
            started: Instant::now(),
        };
        // Registered before the thread exists, so its own unregistering always finds the entry.
        // The lock is not held while the OS creates the thread (that can take long, or fail):
        // finishing threads, reaping, /metrics and /debug/threads never wait for a spawn.
        self.inner
            .lock()
            .live
            .insert(id, Entry { info, handle: None });
        let registry = self.clone();
        #[cfg(test)]
        if let Some(refused) = testing::before_spawn(role) {
            self.inner.lock().live.remove(&id);
            return Err(refused);
        }
        // Boxed, so that the closure std moves onto the new stack (twice: into its start
        // shim, then into its short-backtrace frame, both live for the thread's whole life) is
        // a pointer, not everything `body` captured.
        let body = Box::new(body);
        let spawned = thread::Builder::new()
            .name(name)
            .stack_size(stack)
            .spawn(move || {
                if let Err(cause) = panic::catch_unwind(AssertUnwindSafe(move || call(body))) {
                    registry.panicked(&*cause);
                }
                registry.finish(id);
            });
        let mut inner = self.inner.lock();
        match spawned {
            Ok(handle) => {
                match inner.live.get_mut(&id) {
                    Some(entry) => entry.handle = Some(handle),
                    // It has finished already and left `live`: its handle goes to be joined.
                    None => inner.finished.push(handle),
                }
                Ok(id)
            }
            Err(e) => {
                inner.live.remove(&id);
                Err(e)
            }
        }
    }

    // Cold and out of line, like `finish`: they would otherwise sit in the frame at the top of
    // every thread's stack for its whole life (a parked stream must fit in two stack pages).
    #[cold]
    #[inline(never)]
    fn panicked(&self, cause: &(dyn std::any::Any + Send)) {
        let cause = panic_message(cause);
        let current = thread::current();
        let name = current.name().unwrap_or("?");
        self.panics.fetch_add(1, Ordering::Relaxed);
        log::error!("thread panicked name={name} cause={cause:?}");
    }

    #[inline(never)]
    fn finish(&self, id: u64) {
        let mut inner = self.inner.lock();
        if let Some(mut entry) = inner.live.remove(&id) {
            if let Some(handle) = entry.handle.take() {
                inner.finished.push(handle);
            }
        }
    }

    /// Lets go of the registry's table if it is far larger than the threads now live (after a
    /// peak: see [`crate::sys::mem::shrink_map`]).
    pub(crate) fn shrink(&self) {
        let mut inner = self.inner.lock();
        crate::sys::mem::shrink_map(&mut inner.live);
        inner.finished.shrink_to_fit();
    }

    /// Joins the threads that have already ended; returns how many. Called periodically so
    /// finished handles do not pile up.
    pub(crate) fn reap(&self) -> usize {
        let finished = std::mem::take(&mut self.inner.lock().finished);
        let n = finished.len();
        for handle in finished {
            let _ = handle.join();
        }
        self.joined.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Threads joined since this registry was made (by `reap` or `join_all`, whoever ran it).
    pub(crate) fn joined_total(&self) -> u64 {
        self.joined.load(Ordering::Relaxed)
    }

    /// Joins every thread, live or finished, waiting at most until `deadline` for live ones;
    /// returns how many were joined and how many were still running at the deadline.
    /// The caller must first have told every thread to stop (dropped the shutdown sender).
    pub(crate) fn join_all(&self, deadline: Instant) -> (usize, usize) {
        self.join_until(deadline, &mut || false)
            .unwrap_or((0, self.live()))
    }

    /// Like [`Threads::join_all`], asking `interrupted` between joins (every few milliseconds
    /// while it waits); `None` as soon as it says yes, with the threads left as they are.
    pub(crate) fn join_until(
        &self,
        deadline: Instant,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Option<(usize, usize)> {
        let mut joined = 0;
        loop {
            if interrupted() {
                return None;
            }
            // Look at `live` and take `finished` under one lock: a thread moves itself from one
            // to the other under that lock, so none can slip between the two reads.
            let (finished, live) = {
                let mut inner = self.inner.lock();
                (std::mem::take(&mut inner.finished), inner.live.len())
            };
            let n = finished.len();
            for handle in finished {
                let _ = handle.join();
            }
            self.joined.fetch_add(n as u64, Ordering::Relaxed);
            joined += n;
            if live == 0 {
                return Some((joined, 0));
            }
            if Instant::now() >= deadline {
                return Some((joined, live));
            }
            if n == 0 {
                // Threads move themselves to `finished` as they end; give them a moment.
                thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// Live stream threads (alarm and chat), counted without copying anything.
    pub(crate) fn streams_live(&self) -> usize {
        let inner = self.inner.lock();
        inner
            .live
            .values()
            .filter(|e| {
                matches!(
                    e.info.role,
                    Role::AlarmStream | Role::ChatStream | Role::ChatTcp
                )
            })
            .count()
    }

    /// Live threads of each role.
    pub(crate) fn count_by_role(&self) -> Vec<(Role, usize)> {
        let inner = self.inner.lock();
        let mut counts: HashMap<Role, usize> = HashMap::new();
        for entry in inner.live.values() {
            *counts.entry(entry.info.role).or_default() += 1;
        }
        Role::ALL
            .iter()
            .map(|r| (*r, counts.get(r).copied().unwrap_or(0)))
            .collect()
    }

    /// All live threads (for `/debug/threads`), oldest first.
    pub(crate) fn list(&self) -> Vec<ThreadInfo> {
        let mut all: Vec<ThreadInfo> = self
            .inner
            .lock()
            .live
            .values()
            .map(|e| e.info.clone())
            .collect();
        all.sort_by_key(|t| t.started);
        all
    }

    /// Number of live threads.
    pub(crate) fn live(&self) -> usize {
        self.inner.lock().live.len()
    }

    /// Panics caught in project threads since start.
    pub(crate) fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }
}

/// The message of a caught panic payload.
pub(crate) fn panic_message(cause: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = cause.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = cause.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Test-only hooks into [`Threads::spawn`], per spawning thread (unit tests run in parallel).
#[cfg(test)]
pub(crate) mod testing {
    use std::cell::{Cell, RefCell};

    use super::Role;

    thread_local! {
        static REFUSE: Cell<Option<Role>> = const { Cell::new(None) };
        static BEFORE: RefCell<Option<Box<dyn Fn()>>> = const { RefCell::new(None) };
    }

    /// From now on, spawns of `role` from this thread fail as if the OS refused the thread
    /// (`None`: none do).
    pub(crate) fn refuse(role: Option<Role>) {
        REFUSE.with(|r| r.set(role));
    }

    /// Runs `hook` on this thread in each later spawn, right before the OS is asked for the
    /// thread (`None`: no hook).
    pub(crate) fn before_spawn_hook(hook: Option<Box<dyn Fn()>>) {
        BEFORE.with(|b| *b.borrow_mut() = hook);
    }

    /// Called by `spawn` right before the OS is asked: runs the hook; `Some` refuses.
    pub(super) fn before_spawn(role: Role) -> Option<std::io::Error> {
        BEFORE.with(|b| {
            if let Some(hook) = b.borrow().as_ref() {
                hook()
            }
        });
        (REFUSE.with(|r| r.get()) == Some(role))
            .then(|| std::io::Error::new(std::io::ErrorKind::WouldBlock, "refused by a test"))
    }
}

/// Runs a thread's boxed body: the body's captures are moved out of the box here, in one
/// frame, instead of in each of std's frames above it (see [`Threads::spawn`]).
#[inline(never)]
fn call<F: FnOnce()>(body: Box<F>) {
    body()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawned_threads_are_listed_then_joined() {
        let threads = Threads::new();
        let (tx, rx) = crossbeam_channel::bounded::<()>(0);
        threads
            .spawn(Role::AlarmStream, "t-a".into(), 64 * 1024, move || {
                let _ = rx.recv();
            })
            .unwrap();
        assert_eq!(threads.live(), 1);
        assert_eq!(threads.list()[0].name, "t-a");
        drop(tx);
        let (joined, left) = threads.join_all(Instant::now() + Duration::from_secs(5));
        assert_eq!((joined, left), (1, 0));
        assert_eq!(threads.live(), 0);
    }

    #[test]
    fn the_registry_is_not_locked_while_the_os_creates_a_thread() {
        use std::sync::atomic::AtomicBool;
        let threads = Threads::new();
        let free = Arc::new(AtomicBool::new(false));
        let (registry, seen) = (threads.clone(), free.clone());
        testing::before_spawn_hook(Some(Box::new(move || {
            seen.store(registry.inner.try_lock().is_some(), Ordering::SeqCst)
        })));
        let spawned = threads.spawn(Role::Request, "t-l".into(), 64 * 1024, || {});
        testing::before_spawn_hook(None);
        spawned.unwrap();
        assert!(
            free.load(Ordering::SeqCst),
            "a spawn (which can take long, or fail) must not hold the lock that finishing \
             threads, /metrics and /debug/threads need"
        );
        let (joined, left) = threads.join_all(Instant::now() + Duration::from_secs(5));
        assert_eq!((joined, left), (1, 0));
    }

    #[test]
    fn a_panic_is_caught_and_counted() {
        let threads = Threads::new();
        threads
            .spawn(Role::Request, "t-p".into(), 64 * 1024, || panic!("boom"))
            .unwrap();
        let (joined, _) = threads.join_all(Instant::now() + Duration::from_secs(5));
        assert_eq!(joined, 1);
        assert_eq!(threads.panics(), 1);
    }
}
