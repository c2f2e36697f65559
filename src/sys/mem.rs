//! Giving memory back to the system: `malloc_trim` after many streams have ended, and the
//! pages of code and read-only data that starting up touched and idling does not need.

use std::time::Instant;

/// Makes glibc's malloc give memory back as it is freed: fixed trim and mmap thresholds (128 KiB,
/// glibc's starting values). By default both grow whenever a large block (over 128 KiB: a table
/// sized for 10,000 streams) is freed, after which every arena keeps up to twice that in free
/// memory on top of its heap: measured, RSS 10 s after 10,000 streams closed was 19.1 MiB
/// with the default, 15.7 MiB with these. Called once, at start.
pub(crate) fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc's malloc parameters.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
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

/// Gives memory freed by many stream threads back to the system once they are gone.
///
/// Each stream thread allocates in one of glibc's per-thread malloc arenas; when thousands of
/// streams end, their blocks are free but the arenas keep the pages (10 s after 10,000 idle
/// streams closed the server still held ~80 MiB of its 157 MiB). `malloc_trim(0)` returns the
/// free pages of every arena. It runs on the dispatcher, only once the stream count has fallen
/// by at least [`Trim::AFTER_LEFT`] from its peak since the last trim and to half of that peak
/// or less, so a busy server with streams coming and going at a steady level never pays for it.
#[derive(Debug, Default)]
pub(crate) struct Trim {
    /// The most streams seen since the last trim.
    peak: usize,
    /// The last call found none left while some had been: the next one trims (by then the
    /// threads that were still exiting have been reaped).
    all_gone: bool,
}

impl Trim {
    /// Streams that must have ended before a trim is worth its cost (a few milliseconds).
    pub(crate) const AFTER_LEFT: usize = 1000;

    /// Called with the number of streams now; trims when the rule above says so (and once the
    /// last stream has gone: the threads that ended after the previous trim freed theirs too),
    /// calling `shrink` first (the tables sized for the peak). Returns whether it trimmed.
    pub(crate) fn after_streams_left(&mut self, now: usize, shrink: impl FnOnce()) -> bool {
        self.peak = self.peak.max(now);
        let final_due = std::mem::take(&mut self.all_gone) && now == 0;
        let regular = self.peak - now >= Self::AFTER_LEFT && now <= self.peak / 2;
        if !final_due && !regular {
            self.all_gone = now == 0 && self.peak > 0;
            return false;
        }
        // A trim that found none left: one more at the next call, once the threads that were
        // still exiting have been reaped.
        self.all_gone = regular && now == 0;
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
        true
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
        fn after_streams_left_(&mut self, now: usize) -> bool {
            self.after_streams_left(now, || {})
        }
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
        assert!(!t.after_streams_left(3, || {}));
        assert!(!t.after_streams_left(0, || shrunk = true));
        assert!(!shrunk);
        assert!(t.after_streams_left(0, || shrunk = true));
        assert!(shrunk, "the tables are shrunk before the trim");
        assert!(!t.after_streams_left_(0), "nothing new left");
        assert!(!t.after_streams_left_(2));
        assert!(!t.after_streams_left_(1), "not all gone");
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
