//! Per-thread tuning for stream threads: timer slack, `SCHED_BATCH`, and giving back the stack
//! pages a thread's setup touched; and the one per-process setting thousands of parked threads
//! need, the size of the kernel's futex hash.

/// Lets the kernel fire the calling thread's timed waits up to `slack` late (`PR_SET_TIMERSLACK`;
/// the default is 50 µs). For a thread whose only timer is a keepalive every `--heartbeat`:
/// expiries that fall within `slack` of each other are served by one timer interrupt, so
/// thousands of idle streams wake the CPU in groups instead of one at a time. A no-op where
/// unsupported; a failure keeps the default.
pub(crate) fn relax_timers(slack: std::time::Duration) {
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
pub(crate) fn keepalive_slack(heartbeat: std::time::Duration) -> std::time::Duration {
    (heartbeat / 50).min(std::time::Duration::from_millis(500))
}

/// [`relax_timers`] by [`keepalive_slack`]: for a stream thread whose only timer is the
/// keepalive every `heartbeat`.
pub(crate) fn relax_keepalive_timer(heartbeat: std::time::Duration) {
    relax_timers(keepalive_slack(heartbeat));
}

/// Marks the calling thread `SCHED_BATCH` (same priority, no wake-up preemption). A broadcast
/// wakes every member; at normal policy each woken stream thread preempts the thread still
/// waking the others (and the dispatcher reading the next message), so each stream runs once
/// per event. As batch threads they run right after, find several events waiting and write
/// them in one go; alarm streams and the dispatcher, at normal policy, get the CPU first.
/// Best effort: on failure (or off Linux) the thread keeps the normal policy.
pub(crate) fn batch_scheduling() {
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
pub(crate) fn release_unused_stack() {
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

/// Gives the process a futex hash of at least `slots` buckets (`PR_FUTEX_HASH`, Linux 6.16),
/// unless it has one that large already. Answers the buckets it has now (`None`: no private
/// hash on this kernel, or one the process chose itself, which is kept).
///
/// Why: since Linux 6.16 a process gets a private futex hash instead of the system's, sized at
/// 4 buckets per thread *up to the number of CPUs*: 16 buckets on a 2-core host, whatever the
/// thread count. Every parked thread (a stream waiting in its `select!`) waits in one bucket's
/// list, and every wake-up walks its bucket's list to find the waiter: with 10,000 streams,
/// ~600 waiters to a bucket, one cache miss each. Measured (perf, 10,000 tick streams whose
/// clients close at once): the watcher telling each stream's close channel spent most of its
/// time in `futex_wake` itself, ~50 µs a wake-up. Sized for the stream cap (a few waiters a
/// bucket at the cap), a wake-up walks a few entries. A bucket is 64 bytes of kernel memory:
/// 256 KiB for the default `--max-clients` of 10,000.
pub(crate) fn size_futex_hash(slots: usize) -> std::io::Result<Option<usize>> {
    #[cfg(target_os = "linux")]
    {
        let slots = power_of_two_slots(slots);
        let Some(now) = futex_hash_slots() else {
            // A kernel without private futex hashes: nothing to size.
            return Ok(None);
        };
        if now >= slots {
            return Ok(Some(now));
        }
        // SAFETY: PR_FUTEX_HASH takes integer arguments and touches no memory of ours.
        let rc = unsafe {
            libc::prctl(
                PR_FUTEX_HASH,
                PR_FUTEX_HASH_SET_SLOTS,
                slots as libc::c_ulong,
                0,
                0,
            )
        };
        if rc == 0 {
            return Ok(Some(slots));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            // The process chose the system's hash (slots 0), or this kernel cannot size it.
            Some(libc::EBUSY) | Some(libc::EINVAL) => Ok(None),
            _ => Err(e),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = slots;
        Ok(None)
    }
}

/// `prctl(PR_FUTEX_HASH, …)` and its two requests (Linux 6.16; not in the libc crate yet).
#[cfg(target_os = "linux")]
const PR_FUTEX_HASH: libc::c_int = 78;
#[cfg(target_os = "linux")]
const PR_FUTEX_HASH_SET_SLOTS: libc::c_ulong = 1;
#[cfg(target_os = "linux")]
const PR_FUTEX_HASH_GET_SLOTS: libc::c_ulong = 2;

/// The buckets of the process's private futex hash (0: none yet, or the system's table);
/// `None` on a kernel without private hashes.
#[cfg(target_os = "linux")]
fn futex_hash_slots() -> Option<usize> {
    // SAFETY: PR_FUTEX_HASH takes integer arguments and touches no memory of ours.
    let now = unsafe { libc::prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_GET_SLOTS, 0, 0, 0) };
    usize::try_from(now).ok()
}

/// The most futex hash buckets [`size_futex_hash`] asks for (4 MiB of kernel memory).
pub(crate) const MAX_FUTEX_SLOTS: usize = 1 << 16;

/// `n` buckets as the kernel takes them: a power of two, from 16 to [`MAX_FUTEX_SLOTS`].
fn power_of_two_slots(n: usize) -> usize {
    n.max(1).next_power_of_two().clamp(16, MAX_FUTEX_SLOTS)
}

/// The futex hash buckets for a server of up to `streams` streams: one per 4 streams.
pub(crate) fn futex_slots_for(streams: usize) -> usize {
    power_of_two_slots(streams / 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
    fn a_thread_keeps_working_after_releasing_its_unused_stack() {
        let (tx, rx) = crossbeam_channel::bounded::<u64>(1);
        let thread = std::thread::Builder::new()
            .name("t-s".into())
            .stack_size(256 * 1024)
            .spawn(move || {
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
        thread.join().unwrap();
    }

    #[test]
    fn futex_hash_slots_are_a_power_of_two_per_four_streams_within_bounds() {
        assert_eq!(futex_slots_for(0), 16);
        assert_eq!(futex_slots_for(10_000), 4096);
        assert_eq!(futex_slots_for(1_000_000), MAX_FUTEX_SLOTS);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_futex_hash_grows_to_the_size_asked_and_never_shrinks() {
        match size_futex_hash(8192).unwrap() {
            // A kernel without private futex hashes (before 6.16): nothing to see.
            None => assert!(
                futex_hash_slots().unwrap_or(0) == 0,
                "sized nothing, yet the kernel reports a size"
            ),
            Some(n) => {
                assert!(n >= 8192, "{n}");
                assert_eq!(
                    futex_hash_slots(),
                    Some(n),
                    "the kernel reports what was set"
                );
                assert_eq!(
                    size_futex_hash(64).unwrap(),
                    Some(n),
                    "a smaller ask keeps it"
                );
            }
        }
    }
}
