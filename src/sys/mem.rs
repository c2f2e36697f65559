//! Giving memory back to the system: `malloc_trim` after many streams have ended.

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
}
