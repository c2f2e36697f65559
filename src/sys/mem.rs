//! Giving memory back to the system: `malloc_trim` after many streams have ended, and the
//! pages of code and read-only data that starting up touched and idling does not need.

use std::time::Instant;

/// Makes glibc's malloc give memory back as it is freed: fixed trim and mmap thresholds (128 KiB,
/// glibc's starting values). By default both grow whenever a large block (over 128 KiB: a table
/// sized for 10,000 streams) is freed, after which every arena keeps up to twice that in free
/// memory on top of its heap: measured, RSS 10 s after 10,000 streams closed was 19.1 MiB
/// with the default, 15.7 MiB with these. Called once, at start.
///
/// And at most [`ARENAS`] malloc arenas (unless `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` chooses):
/// `malloc_trim` gives back the free pages inside an arena and the top of the main one, but never
/// the free top of another arena, and freeing the last blocks of a mass close often leaves each
/// arena's top at its whole heap (free blocks merged into it by the trim's own consolidation).
/// glibc's default of 8 arenas a core gave 16 here: measured, 10 s after 10,000 streams closed
/// (one `/metrics` read during the hold), 14 arenas kept 1.0-1.6 MiB of free top each resident,
/// 20.1 MiB in all; with 2 arenas 4.1 MiB. Two cores rarely run more than two allocating
/// threads at once; the fan-out run's futex calls were the same (646k and 632k).
pub(crate) fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let chosen = std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var_os("GLIBC_TUNABLES")
                .is_some_and(|t| t.to_string_lossy().contains("glibc.malloc.arena_max"));
        // SAFETY: mallopt only sets glibc's malloc parameters.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
            if !chosen {
                libc::mallopt(libc::M_ARENA_MAX, ARENAS);
            }
        }
    }
}

/// The malloc arenas syncast allows (see [`tune_malloc`]).
pub(crate) const ARENAS: libc::c_int = 2;

/// The glibc tunable that bounds the cache of exited threads' stacks.
pub(crate) const STACK_CACHE_TUNABLE: &str = "glibc.pthread.stack_cache_size";

/// The bound syncast runs with: 1 MiB, about 15 stream stacks (glibc's default is 40 MiB).
///
/// Why: glibc keeps the stacks of joined threads, up to 40 MiB of them, for the next threads to
/// reuse, and leaves the top 16 KiB of each resident (its `madvise` at thread exit spares that
/// much below the frame; the thread's descriptor and TLS sit there). With 64 KiB stream stacks
/// that is ~600 stacks of 8-12 KiB each: measured 10 s after 10,000 chat members closed, 598
/// cached stacks held 7.2 MiB, a third of what the process then held. Which stacks stay cached
/// depends on which threads are joined last (after alarm streams, tiny_http's 2 MiB pool stacks
/// often pushed them out): the cause of runs differing by 10 MiB. A cache of 1 MiB keeps the
/// reuse for a few threads coming and going; a burst of thousands costs an `mmap` and an
/// `munmap` per thread, a few microseconds.
pub(crate) const STACK_CACHE_BYTES: usize = 1024 * 1024;

/// The glibc tunable that bounds the sizes of freed blocks each thread caches (its tcache).
pub(crate) const TCACHE_MAX_TUNABLE: &str = "glibc.malloc.tcache_max";

/// The bound syncast runs with: blocks of up to 24 bytes (glibc's smallest chunk class) instead
/// of up to 1,032.
///
/// Why: every thread keeps up to 7 freed blocks of each of 64 sizes for itself, for good: a
/// parked chat member's thread held what setting up its stream freed (read from its tcache in
/// a live server: 4 blocks of 32 bytes, 2 of 48, 5 of 160, 1 of 208, 1.2 KiB) besides the cache's
/// own 656 bytes. The one allocation a stream makes per wake-up (crossbeam's 3-byte packet for
/// each zero-capacity channel in a blocking `select!`, 2 per delivery) stays in the cache and
/// fast; blocks of other sizes go back to their arena. Measured, `chat-idle` at 5,000 members,
/// the same binary: 16.2/16.7 KiB per member with glibc's bound, 14.4/14.6 with this one (and
/// 4.7/4.8 against 2.8/3.7 MiB 10 s after they close). `tcache_count=0` (no cache at all) gave
/// 14.5-14.8, but then those 2 packets per delivery take the arena's lock: a malloc/free pair
/// measured 9 ns with the cache, 197 ns without it with 2 threads on 2 arenas.
pub(crate) const TCACHE_MAX_BYTES: usize = 24;

/// The tunables syncast sets unless `GLIBC_TUNABLES` already does: [`STACK_CACHE_TUNABLE`] and
/// [`TCACHE_MAX_TUNABLE`].
fn our_tunables() -> [(&'static str, usize); 2] {
    [
        (STACK_CACHE_TUNABLE, STACK_CACHE_BYTES),
        (TCACHE_MAX_TUNABLE, TCACHE_MAX_BYTES),
    ]
}

/// `GLIBC_TUNABLES` as it should be: `old` plus each of [`our_tunables`] that `old` does not set
/// (the user's choice wins); `None` when `old` sets them all (the user's choice, or this program's
/// own second start).
fn with_our_tunables(old: &str) -> Option<String> {
    let set = |name: &str| {
        old.split(':')
            .any(|t| t.split_once('=').map_or(t, |(n, _)| n) == name)
    };
    let added: Vec<String> = our_tunables()
        .iter()
        .filter(|(name, _)| !set(name))
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    if added.is_empty() {
        return None;
    }
    let mut all: Vec<&str> = old.split(':').filter(|t| !t.is_empty()).collect();
    all.extend(added.iter().map(String::as_str));
    Some(all.join(":"))
}

/// Runs this program again, at once, with [`our_tunables`] added to `GLIBC_TUNABLES`: glibc
/// reads its tunables only when a process starts. Returns (having done nothing) when the variable
/// already sets them all (the user's choice, or this program's own second start), in a
/// set-user-id start (glibc ignores the variable there), or when the exec fails (the error).
/// Must be called first thing in `main`, before any thread or descriptor of ours exists.
pub(crate) fn exec_with_tunables() -> Option<std::io::Error> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        let old = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
        let tunables = with_our_tunables(&old.to_string_lossy())?;
        // SAFETY: getauxval only reads the auxiliary vector.
        if unsafe { libc::getauxval(libc::AT_SECURE) } != 0 {
            return None;
        }
        // The program's own path, not `/proc/self/exe`: the process's name is the last part of
        // the path it was started from (`exe` would be what `ps`, `pgrep` and `top` show).
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => return Some(e),
        };
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new(exe);
        if let Some(arg0) = args.next() {
            command.arg0(arg0);
        }
        return Some(command.args(args).env("GLIBC_TUNABLES", tunables).exec());
    }
    #[allow(unreachable_code)]
    None
}

/// Shrinks `map` if it holds under a quarter of what it has room for: a table sized for a peak
/// of 10,000 streams stays allocated (and resident) after they all left otherwise.
pub(crate) fn shrink_map<K: std::hash::Hash + Eq, V, S: std::hash::BuildHasher>(
    map: &mut std::collections::HashMap<K, V, S>,
) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to_fit();
    }
}

/// [`shrink_map`] for a set.
pub(crate) fn shrink_set<T: std::hash::Hash + Eq, S: std::hash::BuildHasher>(
    set: &mut std::collections::HashSet<T, S>,
) {
    if set.capacity() > 64 && set.len() < set.capacity() / 4 {
        set.shrink_to_fit();
    }
}

/// [`shrink_map`] for a vector.
pub(crate) fn shrink_vec<T>(v: &mut Vec<T>) {
    if v.capacity() > 64 && v.len() < v.capacity() / 4 {
        v.shrink_to_fit();
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
///
/// A mass leave goes on freeing memory for seconds after the last stream thread is gone: the
/// closing marks of the streams' connections live [`crate::http::sweep::CLOSING_KEPT`] (5 s)
/// until a sweep drops them, tiny_http's surplus pool threads exit 5 s after their last request,
/// and the code pages the leave touched stay mapped. So a trim for streams that left is
/// followed by a few more at [`Trim::FOLLOW_UPS`] after it, the last one also unmapping the clean
/// file pages ([`release_clean_file_pages`]). Measured, 10 s after 10,000 change streams closed:
/// 20-36 MiB resident before the follow-ups, of which `malloc_trim` alone (run by hand) gave
/// back 8-21 MiB.
#[derive(Debug, Default)]
pub(crate) struct Trim {
    /// The most streams seen since the last trim.
    peak: usize,
    /// The last call found none left while some had been: the next one trims (by then the
    /// threads that were still exiting have been reaped).
    all_gone: bool,
    /// After a trim for streams that left: when it ran, the streams then, and how many of
    /// [`Trim::FOLLOW_UPS`] have run.
    follow: Option<(Instant, usize, usize)>,
}

/// What a call to [`Trim::after_streams_left`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trimmed {
    /// Nothing.
    No,
    /// A trim.
    Trim,
    /// The last follow-up trim after a leave: the caller unmaps clean file pages too.
    Settled,
}

impl Trim {
    /// Streams that must have ended before a trim is worth its cost (a few milliseconds).
    pub(crate) const AFTER_LEFT: usize = 1000;

    /// When the follow-up trims run after a trim for streams that left (each costs 5-30 ms,
    /// once per mass leave): past the closing marks' 5 s and a sweep, inside 10 s.
    pub(crate) const FOLLOW_UPS: [std::time::Duration; 4] = [
        std::time::Duration::from_millis(1000),
        std::time::Duration::from_millis(3000),
        std::time::Duration::from_millis(6500),
        std::time::Duration::from_millis(8000),
    ];

    /// Called with the number of streams now, at `at`; trims when the rule above says so (and
    /// once the last stream has gone: the threads that ended after the previous trim freed
    /// theirs too, and at the follow-ups), calling `shrink` first (the tables sized for the peak).
    pub(crate) fn after_streams_left(
        &mut self,
        now: usize,
        at: Instant,
        shrink: impl FnOnce(),
    ) -> Trimmed {
        self.peak = self.peak.max(now);
        let final_due = std::mem::take(&mut self.all_gone) && now == 0;
        let regular = self.peak - now >= Self::AFTER_LEFT && now <= self.peak / 2;
        let mut follow_up = None;
        if let Some((since, level, done)) = self.follow {
            if now > level + Self::AFTER_LEFT {
                // Busy again: the regular rule covers the next leave.
                self.follow = None;
            } else if at.saturating_duration_since(since) >= Self::FOLLOW_UPS[done] {
                follow_up = Some(done + 1);
            }
        }
        if !final_due && !regular && follow_up.is_none() {
            self.all_gone = now == 0 && self.peak > 0;
            return Trimmed::No;
        }
        // A trim that found none left: one more at the next call, once the threads that were
        // still exiting have been reaped.
        self.all_gone = regular && now == 0;
        let mut settled = false;
        if regular {
            self.follow = Some((at, now, 0));
        } else if let (Some(done), Some(f)) = (follow_up, self.follow.as_mut()) {
            f.2 = done;
            if done == Self::FOLLOW_UPS.len() {
                self.follow = None;
                settled = true;
            }
        }
        shrink();
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
        if settled {
            Trimmed::Settled
        } else {
            Trimmed::Trim
        }
    }
}

/// Unmaps the pages of clean, read-only file mappings (the binary's code and read-only data, and
/// the shared libraries'), so that what stays resident is what the process touches from here on.
/// Returns how many bytes of mappings it went over (not how many were resident).
///
/// Why: nearly all of an idle server's RSS is file-backed code, and starting up touches code all
/// over the binary (flag parsing, SQLite's schema set-up, tiny_http's start, the Redis and JWT
/// code paths that check their configuration); the kernel maps the pages around each one
/// touched (fault-around, 64 KiB), so after start nearly the whole `.text` was resident (1,676
/// of 1,802 KiB measured) and idle RSS followed the binary's size past 4 MiB. Once started, the
/// dispatcher's and refresher's loops touch far less; what they touch is faulted back in from
/// the page cache (a minor fault, no I/O) the next time it runs.
///
/// Only mappings that cannot hold data of ours are touched: file-backed, not writable, and with
/// no anonymous (copy-on-write) page — the read-only-after-relocation pages (`.data.rel.ro`,
/// RELRO) were written before they were made read-only and must keep their copies
/// (`MADV_DONTNEED` would bring back the file's unrelocated bytes; measured: a segfault). For
/// the rest `MADV_DONTNEED` only drops our page-table entries: the pages stay in the page cache
/// and reading them again gives the same bytes.
pub(crate) fn release_clean_file_pages() -> std::io::Result<usize> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for (start, end) in clean_file_mappings(&smaps) {
        // SAFETY: the range is one whole mapping of this process, file-backed, read-only and
        // with no private (anonymous) pages, so dropping its page-table entries loses nothing:
        // the next access maps the same page-cache pages again.
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if rc == 0 {
            released += end - start;
        }
    }
    Ok(released)
}

/// The address ranges of the mappings in `smaps` (the text of `/proc/self/smaps`) that are
/// file-backed, not writable and have no anonymous page.
fn clean_file_mappings(smaps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    // The mapping whose fields are being read, if it is a candidate so far.
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                // A mapping's header: range perms offset dev inode [path].
                let perms = words.next().unwrap_or("");
                let path = words.nth(3).unwrap_or("");
                let read_only = perms.as_bytes().get(1) == Some(&b'-');
                current = (read_only && path.starts_with('/')).then_some((a, b));
                continue;
            }
        }
        if first == "Anonymous:" {
            if let Some(range) = current.take() {
                if words.next() == Some("0") {
                    out.push(range);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Trim {
        /// Whether it trimmed, every call at the same instant (no follow-up is ever due).
        fn after_streams_left_(&mut self, now: usize) -> bool {
            static AT: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
            let at = *AT.get_or_init(Instant::now);
            self.after_streams_left(now, at, || {}) != Trimmed::No
        }
    }

    #[test]
    fn our_tunables_are_added_to_the_users_and_never_replace_theirs() {
        let ours = "glibc.pthread.stack_cache_size=1048576:glibc.malloc.tcache_max=24";
        assert_eq!(with_our_tunables("").as_deref(), Some(ours));
        assert_eq!(
            with_our_tunables("glibc.malloc.arena_max=4").as_deref(),
            Some(format!("glibc.malloc.arena_max=4:{ours}").as_str())
        );
        // The user's value of one of ours stays, the other is added.
        assert_eq!(
            with_our_tunables("glibc.malloc.tcache_max=1032").as_deref(),
            Some("glibc.malloc.tcache_max=1032:glibc.pthread.stack_cache_size=1048576")
        );
        // All set (the user's choice, or our own second start): no restart.
        assert_eq!(with_our_tunables(ours), None);
        assert_eq!(
            with_our_tunables(
                "glibc.malloc.tcache_max=0:x=1:glibc.pthread.stack_cache_size=41943040"
            ),
            None
        );
        // A name that only starts like ours is another tunable.
        assert_eq!(
            with_our_tunables("glibc.malloc.tcache_maxx=1:glibc.pthread.stack_cache_size=1")
                .as_deref(),
            Some(
                "glibc.malloc.tcache_maxx=1:glibc.pthread.stack_cache_size=1:\
                 glibc.malloc.tcache_max=24"
            )
        );
    }

    #[test]
    fn memory_is_trimmed_only_after_many_streams_left() {
        let mut t = Trim::default();
        assert!(!t.after_streams_left_(0), "nothing ever ran");
        assert!(!t.after_streams_left_(5000));
        assert!(
            !t.after_streams_left_(4000),
            "1,000 left but 4,000 still run"
        );
        assert!(
            t.after_streams_left_(2000),
            "3,000 left, under half the peak"
        );
        assert!(
            !t.after_streams_left_(1500),
            "only 500 left since the last trim"
        );
        assert!(t.after_streams_left_(0));
        assert!(t.after_streams_left_(0), "once more when all are gone");
        assert!(!t.after_streams_left_(0), "nothing new left");
        // Churn at a steady level never trims.
        for _ in 0..100 {
            assert!(!t.after_streams_left_(900));
            assert!(!t.after_streams_left_(400));
        }
        // The last few leaving after a trim: once all are gone (seen twice: the threads still
        // exiting the first time have been reaped by the next), one more.
        let mut shrunk = false;
        let mut t = Trim::default();
        let at = Instant::now();
        assert_eq!(t.after_streams_left(3, at, || {}), Trimmed::No);
        assert_eq!(t.after_streams_left(0, at, || shrunk = true), Trimmed::No);
        assert!(!shrunk);
        assert_eq!(t.after_streams_left(0, at, || shrunk = true), Trimmed::Trim);
        assert!(shrunk, "the tables are shrunk before the trim");
        assert!(!t.after_streams_left_(0), "nothing new left");
        assert!(!t.after_streams_left_(2));
        assert!(!t.after_streams_left_(1), "not all gone");
    }

    #[test]
    fn a_mass_leave_is_trimmed_again_at_each_follow_up_then_settles() {
        use std::time::Duration;
        let mut t = Trim::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(t.after_streams_left(10_000, at(0), || {}), Trimmed::No);
        assert_eq!(t.after_streams_left(0, at(250), || {}), Trimmed::Trim);
        assert_eq!(
            t.after_streams_left(0, at(500), || {}),
            Trimmed::Trim,
            "once more when all are gone"
        );
        let mut trims = Vec::new();
        let mut shrunk = 0;
        for ms in (750..20_000).step_by(250) {
            match t.after_streams_left(0, at(ms), || shrunk += 1) {
                Trimmed::No => {}
                done => trims.push((ms - 250, done)),
            }
        }
        // Counted from the trim at 250 ms.
        assert_eq!(
            trims,
            vec![
                (1000, Trimmed::Trim),
                (3000, Trimmed::Trim),
                (6500, Trimmed::Trim),
                (8000, Trimmed::Settled),
            ]
        );
        assert_eq!(shrunk, 4, "the tables are shrunk at each follow-up too");
        // Streams coming back in numbers cancel the follow-ups; a small steady level does not
        // trim at all.
        let mut t = Trim::default();
        assert_eq!(t.after_streams_left(5000, at(0), || {}), Trimmed::No);
        assert_eq!(t.after_streams_left(0, at(250), || {}), Trimmed::Trim);
        assert_eq!(t.after_streams_left(0, at(500), || {}), Trimmed::Trim);
        assert_eq!(t.after_streams_left(1200, at(750), || {}), Trimmed::No);
        for ms in (1000..20_000).step_by(250) {
            assert_eq!(t.after_streams_left(900, at(ms), || {}), Trimmed::No);
        }
    }

    #[test]
    fn only_clean_read_only_file_mappings_are_picked() {
        let smaps = "\
55d0c0a00000-55d0c0b00000 r--p 00000000 fe:01 123 /usr/bin/syncast
Size:               1024 kB
Anonymous:             0 kB
55d0c0b00000-55d0c0c00000 r-xp 00100000 fe:01 123 /usr/bin/syncast
Anonymous:             0 kB
55d0c0c00000-55d0c0c10000 r--p 00200000 fe:01 123 /usr/bin/syncast
Anonymous:            64 kB
55d0c0c10000-55d0c0c20000 rw-p 00210000 fe:01 123 /usr/bin/syncast
Anonymous:             0 kB
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Anonymous:          1024 kB
7f0000100000-7f0000101000 r--p 00000000 00:00 0 [vvar]
Anonymous:             0 kB
7f0000200000-7f0000300000 r-xp 00000000 fe:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
";
        assert_eq!(
            clean_file_mappings(smaps),
            vec![
                (0x55d0c0a00000, 0x55d0c0b00000),
                (0x55d0c0b00000, 0x55d0c0c00000),
                (0x7f0000200000, 0x7f0000300000),
            ],
            "the RELRO page (anonymous copies), the writable and anonymous mappings and [vvar] stay"
        );
    }

    #[test]
    fn releasing_the_clean_pages_of_this_process_keeps_it_running() {
        use crate::sys::proc::{status, Proc};
        let released = release_clean_file_pages().expect("smaps readable");
        assert!(released > 0, "this test binary has code mapped from a file");
        // Code, read-only data and the relocated pointers (RELRO, kept) are used right away:
        // calls into libc through its relocated entries, formatting, reading a file. Had a
        // RELRO page been dropped, its unrelocated bytes would send these calls astray.
        let text = std::fs::read_to_string("/proc/self/status").expect("status readable");
        assert!(text.contains("VmRSS"), "{text}");
        assert!(status(Proc::This).rss_bytes > 0);
        assert!(format!("{released:x}").len() > 1);
    }
}
