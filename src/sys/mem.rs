//! Giving memory back to the system: `malloc_trim` after many streams have ended.

use std::time::Instant;

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
}

impl Trim {
    /// Streams that must have ended before a trim is worth its cost (a few milliseconds).
    pub(crate) const AFTER_LEFT: usize = 1000;

    /// Called with the number of streams now; trims when the rule above says so. Returns
    /// whether it trimmed.
    pub(crate) fn after_streams_left(&mut self, now: usize) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
