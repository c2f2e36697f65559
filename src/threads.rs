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

/// What a thread is for; `/debug/threads` and `/metrics` group threads by this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
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
}

impl Role {
    /// The stable lower-case name used in logs, JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Dispatcher => "dispatcher",
            Role::Refresher => "refresher",
            Role::AlarmStream => "alarm-stream",
            Role::ChatStream => "chat-stream",
            Role::Request => "request",
        }
    }

    /// Every role, in a fixed order (for metrics with zero counts).
    pub const ALL: [Role; 5] = [
        Role::Dispatcher,
        Role::Refresher,
        Role::AlarmStream,
        Role::ChatStream,
        Role::Request,
    ];
}

/// A live thread as `/debug/threads` shows it.
#[derive(Clone, Debug)]
pub struct ThreadInfo {
    /// The OS thread name (at most 15 bytes are visible to the OS).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// When it was spawned.
    pub started: Instant,
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
pub struct Threads {
    inner: Arc<Mutex<Inner>>,
    next_id: Arc<AtomicU64>,
    panics: Arc<AtomicU64>,
    joined: Arc<AtomicU64>,
}

impl Threads {
    /// An empty registry.
    pub fn new() -> Threads {
        Threads::default()
    }

    /// Spawns `body` on a new thread named `name` with a stack of `stack` bytes, registered under
    /// `role`. A panic inside `body` is caught, logged (`thread panicked name=.. cause=..`) and
    /// counted; the thread then ends normally, so joining it never re-raises.
    ///
    /// Fails only when the OS refuses a thread (`EAGAIN`): callers answer 503.
    pub fn spawn<F>(&self, role: Role, name: String, stack: usize, body: F) -> io::Result<u64>
    where
        F: FnOnce() + Send + 'static,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let info = ThreadInfo {
            name: name.clone(),
            role,
            started: Instant::now(),
        };
        // Register before the thread can finish, so its own unregistering always finds the entry.
        let mut inner = self.inner.lock();
        let registry = self.clone();
        let spawned = thread::Builder::new()
            .name(name)
            .stack_size(stack)
            .spawn(move || {
                if let Err(cause) = panic::catch_unwind(AssertUnwindSafe(body)) {
                    registry.panicked(&*cause);
                }
                registry.finish(id);
            });
        match spawned {
            Ok(handle) => {
                inner.live.insert(
                    id,
                    Entry {
                        info,
                        handle: Some(handle),
                    },
                );
                Ok(id)
            }
            Err(e) => Err(e),
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

    /// Joins the threads that have already ended; returns how many. Called periodically so
    /// finished handles do not pile up.
    pub fn reap(&self) -> usize {
        let finished = std::mem::take(&mut self.inner.lock().finished);
        let n = finished.len();
        for handle in finished {
            let _ = handle.join();
        }
        self.joined.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Threads joined since this registry was made (by `reap` or `join_all`, whoever ran it).
    pub fn joined_total(&self) -> u64 {
        self.joined.load(Ordering::Relaxed)
    }

    /// Joins every thread, live or finished, waiting at most until `deadline` for live ones;
    /// returns how many were joined and how many were still running at the deadline.
    /// The caller must first have told every thread to stop (dropped the shutdown sender).
    pub fn join_all(&self, deadline: Instant) -> (usize, usize) {
        let mut joined = 0;
        loop {
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
                return (joined, 0);
            }
            if Instant::now() >= deadline {
                return (joined, live);
            }
            if n == 0 {
                // Threads move themselves to `finished` as they end; give them a moment.
                thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// Live threads of each role.
    pub fn count_by_role(&self) -> Vec<(Role, usize)> {
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
    pub fn list(&self) -> Vec<ThreadInfo> {
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
    pub fn live(&self) -> usize {
        self.inner.lock().live.len()
    }

    /// Panics caught in project threads since start.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }
}

/// The message of a caught panic payload.
pub fn panic_message(cause: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = cause.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = cause.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Gives memory freed by many stream threads back to the system once they are gone.
///
/// Each stream thread allocates in one of glibc's per-thread malloc arenas; when thousands of
/// streams end, their blocks are free but the arenas keep the pages (10 s after 10,000 idle
/// streams closed the server still held ~80 MiB of its 157 MiB). `malloc_trim(0)` returns the
/// free pages of every arena. It runs on the dispatcher, only once the stream count has fallen
/// by at least [`Trim::AFTER_LEFT`] from its peak since the last trim and to half of that peak
/// or less, so a busy server with streams coming and going at a steady level never pays for it.
#[derive(Debug, Default)]
pub struct Trim {
    /// The most streams seen since the last trim.
    peak: usize,
}

impl Trim {
    /// Streams that must have ended before a trim is worth its cost (a few milliseconds).
    pub const AFTER_LEFT: usize = 1000;

    /// Called with the number of streams now; trims when the rule above says so. Returns
    /// whether it trimmed.
    pub fn after_streams_left(&mut self, now: usize) -> bool {
        self.peak = self.peak.max(now);
        if self.peak - now < Self::AFTER_LEFT || now > self.peak / 2 {
            return false;
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let t = Instant::now();
            // SAFETY: malloc_trim only walks glibc's own arenas.
            unsafe { libc::malloc_trim(0) };
            log::debug!(
                "memory trimmed after streams left peak={} now={now} took_us={}",
                self.peak,
                t.elapsed().as_micros()
            );
        }
        self.peak = now;
        true
    }
}

/// Lets the kernel fire the calling thread's timed waits up to `slack` late (`PR_SET_TIMERSLACK`;
/// the default is 50 µs). For a thread whose only timer is a keepalive every `--heartbeat`:
/// expiries that fall within `slack` of each other are served by one timer interrupt, so
/// thousands of idle streams wake the CPU in groups instead of one at a time. A no-op where
/// unsupported; a failure keeps the default.
pub fn relax_timers(slack: std::time::Duration) {
    #[cfg(target_os = "linux")]
    {
        let ns = slack.as_nanos().clamp(1, libc::c_ulong::MAX as u128) as libc::c_ulong;
        // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches no memory.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns, 0, 0, 0) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = slack;
}

/// The timer slack for a stream whose timer is the keepalive: a 50th of the heartbeat, at most
/// 500 ms (25 s heartbeat: keepalives up to 0.5 s late).
pub fn keepalive_slack(heartbeat: std::time::Duration) -> std::time::Duration {
    (heartbeat / 50).min(std::time::Duration::from_millis(500))
}

/// [`relax_timers`] by [`keepalive_slack`]: for a stream thread whose only timer is the
/// keepalive every `heartbeat`.
pub fn relax_keepalive_timer(heartbeat: std::time::Duration) {
    relax_timers(keepalive_slack(heartbeat));
}

/// Marks the calling thread `SCHED_BATCH` (same priority, no wake-up preemption). A broadcast
/// wakes every member; at normal policy each woken stream thread preempts the thread still
/// waking the others (and the dispatcher reading the next message), so each stream runs once
/// per event. As batch threads they run right after, find several events waiting and write
/// them in one go; alarm streams and the dispatcher, at normal policy, get the CPU first.
/// Best effort: on failure (or off Linux) the thread keeps the normal policy.
pub fn batch_scheduling() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `sched_setscheduler` reads the parameter struct only; pid 0 is this thread.
        let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    }
}

/// Gives the kernel back the pages of the calling thread's stack that lie below the current
/// frame, so that a thread which went deep once (while setting up) and then loops shallowly only
/// keeps the pages its loop uses resident. Call it from a long-lived loop's function, after the
/// deep calls have returned. A no-op where unsupported.
///
/// Why: a stream thread's setup (taking the socket, registering, the first write) touches a
/// third page of stack that its `select!` loop never uses again; the kernel keeps a touched
/// page resident until the thread exits. Measured with 10,000 idle streams: 3 resident stack
/// pages per thread before, 2 after (4 KiB less per stream).
///
/// Safe because everything below the stack pointer is dead by the ABI (x86-64 keeps a 128-byte
/// red zone, left alone here with a margin); `MADV_DONTNEED` on private anonymous memory makes
/// the pages read back as zeros if the thread ever goes that deep again.
pub fn release_unused_stack() {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    release_unused_stack_linux();
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[inline(never)]
fn release_unused_stack_linux() {
    let sp: usize;
    // SAFETY: only copies the stack pointer into a register.
    unsafe {
        std::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    // SAFETY: `attr` is initialised by pthread_getattr_np for the calling thread and destroyed
    // after use; for threads other than the main one glibc answers from the thread descriptor.
    let low = unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 {
            return;
        }
        addr as usize
    };
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => return,
    };
    // Below the red zone plus room for the madvise call itself, rounded down to a page.
    let end = sp.saturating_sub(512) & !(page - 1);
    if end > low {
        // SAFETY: [low, end) is this thread's own stack strictly below the live frames.
        unsafe { libc::madvise(low as *mut libc::c_void, end - low, libc::MADV_DONTNEED) };
    }
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
    fn a_thread_keeps_working_after_releasing_its_unused_stack() {
        let threads = Threads::new();
        let (tx, rx) = crossbeam_channel::bounded::<u64>(1);
        threads
            .spawn(Role::AlarmStream, "t-s".into(), 256 * 1024, move || {
                // Go deep, come back, release, then go deep again: the released pages read
                // back as zeros and are simply faulted in anew.
                fn deep(n: u64) -> u64 {
                    let buf = [n as u8; 512];
                    if n == 0 {
                        buf[7] as u64
                    } else {
                        deep(n - 1) + std::hint::black_box(buf)[n as usize % 512] as u64
                    }
                }
                let a = deep(20);
                release_unused_stack();
                let b = deep(20);
                let _ = tx.send(a + b);
            })
            .unwrap();
        let sum = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(sum, 2 * (0..=20u64).map(|n| n % 256).sum::<u64>());
        threads.join_all(Instant::now() + Duration::from_secs(5));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn relaxed_timers_set_the_calling_threads_slack_only() {
        let slack = keepalive_slack(Duration::from_secs(25));
        assert_eq!(slack, Duration::from_millis(500));
        assert_eq!(
            keepalive_slack(Duration::from_secs(5)),
            Duration::from_millis(100)
        );
        // SAFETY: PR_GET_TIMERSLACK takes no pointer.
        let get = || unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) } as u128;
        let before = get();
        let inside = std::thread::spawn(move || {
            relax_timers(slack);
            get()
        })
        .join()
        .unwrap();
        assert_eq!(inside, slack.as_nanos());
        assert_eq!(get(), before, "other threads keep theirs");
    }

    #[test]
    fn memory_is_trimmed_only_after_many_streams_left() {
        let mut t = Trim::default();
        assert!(!t.after_streams_left(0), "nothing ever ran");
        assert!(!t.after_streams_left(5000));
        assert!(
            !t.after_streams_left(4000),
            "1,000 left but 4,000 still run"
        );
        assert!(
            t.after_streams_left(2000),
            "3,000 left, under half the peak"
        );
        assert!(
            !t.after_streams_left(1500),
            "only 500 left since the last trim"
        );
        assert!(t.after_streams_left(0));
        assert!(!t.after_streams_left(0), "nothing new left");
        // Churn at a steady level never trims.
        for _ in 0..100 {
            assert!(!t.after_streams_left(900));
            assert!(!t.after_streams_left(400));
        }
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
