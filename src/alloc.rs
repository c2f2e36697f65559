//! [`LazyHuge`]: the global allocator syncast runs with, so that a body a client *declares* costs
//! only the bytes it *sends*.
//!
//! # Why it exists
//! When a request whose body was not read to its end is dropped, tiny_http 0.12.0 drains the rest
//! of the declared `Content-Length` with `let mut buf = vec![0; remaining_to_read];`
//! (src/util/equal_reader.rs:70, `impl Drop for EqualReader`), allocated *before* its first read.
//! A client that declares `Content-Length: 99999999999` and sends one byte makes that a 93 GiB
//! allocation; with the system allocator it is refused and the process aborts
//! (`memory allocation of 99999999999 bytes failed`), or, when it is granted, it is charged
//! against the machine's commit limit. Nothing syncast does before the drop can change the size:
//! the remainder only shrinks by bytes actually read.
//!
//! Allocations of at least [`HUGE`] bytes are therefore served here straight from the kernel, as
//! mappings that cost nothing until a page is written:
//! 1. `mmap(PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE)`: no swap reserved,
//!    nothing charged under the default heuristic overcommit (`vm.overcommit_memory` 0) or 1;
//! 2. if that fails (strict overcommit, `vm.overcommit_memory=2`, ignores `MAP_NORESERVE` and
//!    charges the whole size up front): a sparse `memfd_create` file of that size, `ftruncate`d
//!    and mapped `MAP_SHARED`. A memfd is created with `VM_NORESERVE` (mm/memfd.c), so its pages
//!    are charged one by one as they are written, in every overcommit mode; the descriptor is
//!    closed right after mapping (the mapping keeps the file alive, `munmap` frees it).
//!
//! Freeing is `munmap`, so the pages the drain wrote go back to the kernel at once. The drain
//! writes only what the client sent (syncast shuts the socket's read half first, see
//! `http::body`), so a 93 GiB declaration costs a few pages.
//!
//! Everything else — every allocation syncast makes in normal operation — goes to
//! [`std::alloc::System`] after one size comparison. So do huge allocations that need an
//! alignment larger than a page (a mapping is only page-aligned).
//!
//! # Limits
//! A mapping needs address space: x86-64 gives a process 128 TiB (47 bits), so a declared length
//! beyond roughly that cannot be mapped at all, by any allocator, and the allocation failure
//! aborts the process. `http::body` never lets such a request reach tiny_http's drain (see
//! `http::body::QUARANTINE_ABOVE`). A length beyond `isize::MAX` never reaches an allocator:
//! `vec!` panics with "capacity overflow", which `http::body` catches.
//!
//! # Embedding
//! A program that embeds [`crate::Server`] must declare the allocator itself (a library cannot),
//! or one hostile request can abort it:
//! ```
//! #[global_allocator]
//! static ALLOC: syncast::alloc::LazyHuge = syncast::alloc::LazyHuge;
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;

/// Allocations of at least this many bytes (1 GiB) are lazy kernel mappings.
pub const HUGE: usize = 1 << 30;

/// The largest alignment a mapping satisfies: every page size Linux uses is a multiple of this.
const MAP_ALIGN: usize = 4096;

/// The global allocator: [`System`], except that allocations of [`HUGE`] bytes or more are lazy
/// kernel mappings (see the module documentation).
#[derive(Debug, Default, Clone, Copy)]
pub struct LazyHuge;

/// Whether `layout` is served by a mapping. A pure function of the layout, so `dealloc` and
/// `realloc` always send a block back to the allocator that made it.
#[inline]
fn mapped(layout: &Layout) -> bool {
    layout.size() >= HUGE && layout.align() <= MAP_ALIGN
}

/// How a huge block is mapped (tried in this order by [`map`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    /// Private anonymous memory without swap reservation.
    NoReserve,
    /// A sparse memfd mapped shared (for strict overcommit).
    Memfd,
}

/// Maps `size` zeroed bytes, trying each strategy in turn; null if none works.
///
/// # Safety
/// `size` must be non-zero and at most `isize::MAX` (as for any `Layout`).
unsafe fn map(size: usize) -> *mut u8 {
    for strategy in [Strategy::NoReserve, Strategy::Memfd] {
        // SAFETY: forwarded from the caller.
        let p = unsafe { map_with(strategy, size) };
        if !p.is_null() {
            return p;
        }
    }
    ptr::null_mut()
}

/// Maps `size` zeroed bytes with one strategy; null on failure. Allocates nothing itself.
///
/// # Safety
/// `size` must be non-zero and at most `isize::MAX`.
unsafe fn map_with(strategy: Strategy, size: usize) -> *mut u8 {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: plain system calls. A new mapping (address chosen by the kernel, NULL hint)
    // overlaps nothing that exists; the memfd is ours alone and closed on every path.
    unsafe {
        let p = match strategy {
            Strategy::NoReserve => libc::mmap(
                ptr::null_mut(),
                size,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            ),
            Strategy::Memfd => {
                let fd = libc::memfd_create(c"syncast-lazy-huge".as_ptr(), libc::MFD_CLOEXEC);
                if fd < 0 {
                    return ptr::null_mut();
                }
                // size <= isize::MAX == off_t::MAX on 64-bit Linux.
                if libc::ftruncate(fd, size as libc::off_t) != 0 {
                    libc::close(fd);
                    return ptr::null_mut();
                }
                let p = libc::mmap(ptr::null_mut(), size, prot, libc::MAP_SHARED, fd, 0);
                // The mapping holds the file; the descriptor is not needed any more.
                libc::close(fd);
                p
            }
        };
        if p == libc::MAP_FAILED {
            ptr::null_mut()
        } else {
            p.cast()
        }
    }
}

/// Unmaps a block made by [`map`].
///
/// # Safety
/// `p` and `size` must be exactly a block returned by [`map`] and not yet unmapped.
unsafe fn unmap(p: *mut u8, size: usize) {
    // SAFETY: forwarded from the caller: the range is one whole mapping of ours.
    unsafe { libc::munmap(p.cast(), size) };
}

// SAFETY: every block is either System's (handed back to System, decided by `mapped`, a pure
// function of the layout the caller must pass back unchanged) or a fresh kernel mapping of at
// least `layout.size()` bytes, page-aligned (so aligned for any `layout.align() <= MAP_ALIGN`),
// zero-filled by the kernel, and unmapped exactly once in `dealloc`. Nothing here unwinds or
// allocates.
unsafe impl GlobalAlloc for LazyHuge {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mapped(&layout) {
            // SAFETY: a Layout's size is at most isize::MAX; it is >= HUGE > 0 here.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded from our caller.
            unsafe { System.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mapped(&layout) {
            // SAFETY: as in alloc; a new mapping is already zero-filled.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded from our caller.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if mapped(&layout) {
            // SAFETY: the caller passes the layout it allocated with: `mapped` gave the same
            // answer then, so `p` is one of our mappings of exactly this size.
            unsafe { unmap(p, layout.size()) }
        } else {
            // SAFETY: as above, `p` came from System with this layout.
            unsafe { System.dealloc(p, layout) }
        }
    }

    #[inline]
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees new_size, rounded up to the alignment, fits an isize.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !mapped(&layout) && !mapped(&new_layout) {
            // SAFETY: both sides are System's: forwarded.
            return unsafe { System.realloc(p, layout, new_size) };
        }
        // Across the threshold (or between two mappings): a new block, a copy, the old block
        // freed. The copy writes min(old, new) bytes into the new block, so growing a huge block
        // makes its old size resident; nothing in syncast reallocates a huge block.
        // SAFETY: new_layout is valid (above); on success both blocks are live and distinct, and
        // each holds at least the bytes copied.
        unsafe {
            let q = self.alloc(new_layout);
            if !q.is_null() {
                ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                self.dealloc(p, layout);
            }
            q
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The library's unit tests run with it too, so `vec!` below goes through it.
    #[global_allocator]
    static ALLOC: LazyHuge = LazyHuge;

    const TIB: usize = 1 << 40;

    /// One line of `/proc/self/status`, in KiB.
    fn status_kib(field: &str) -> usize {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    /// Whether some mapping of this process starts at `p` (from `/proc/self/maps`).
    fn mapping_starts_at(p: *const u8) -> bool {
        let start = format!("{:x}-", p as usize);
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .any(|l| l.starts_with(&start))
    }

    #[test]
    fn a_one_tib_zeroed_vec_is_allocated_lazily_and_unmapped_on_drop() {
        let rss_before = status_kib("VmRSS:");
        let mut v = vec![0u8; TIB];
        let p = v.as_ptr();
        assert_eq!(v.len(), TIB);
        assert!(mapping_starts_at(p), "a mapping of its own");
        // Touch one byte in the first page and one in the last.
        v[0] = 1;
        v[TIB - 1] = 2;
        assert_eq!((v[0], v[TIB / 2], v[TIB - 1]), (1, 0, 2));
        let rss_touched = status_kib("VmRSS:");
        // Two pages written (other tests run in this process too: allow 32 MiB of noise).
        assert!(
            rss_touched < rss_before + 32 * 1024,
            "RSS {rss_before} -> {rss_touched} KiB"
        );
        drop(v);
        assert!(!mapping_starts_at(p), "unmapped on drop");
    }

    #[test]
    fn the_memfd_fallback_is_lazy_zeroed_and_freed() {
        // The path strict overcommit takes (it cannot be switched on for one test).
        // SAFETY: a valid size; the block is used within its bounds and unmapped once.
        unsafe {
            let p = map_with(Strategy::Memfd, TIB);
            assert!(!p.is_null());
            assert!(mapping_starts_at(p));
            let shmem_before = status_kib("RssShmem:");
            *p.add(12345) = 7;
            assert_eq!((*p.add(12345), *p.add(TIB - 1)), (7, 0));
            assert!(status_kib("RssShmem:") < shmem_before + 1024);
            unmap(p, TIB);
            assert!(!mapping_starts_at(p));
        }
        // The descriptor was closed: no memfd left open.
        let open_memfds = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|t| t.to_string_lossy().contains("syncast-lazy-huge"))
            .count();
        assert_eq!(open_memfds, 0);
    }

    #[test]
    fn small_and_over_aligned_blocks_go_to_the_system_allocator() {
        assert!(!mapped(&Layout::from_size_align(HUGE - 1, 1).unwrap()));
        assert!(mapped(&Layout::from_size_align(HUGE, 1).unwrap()));
        assert!(mapped(&Layout::from_size_align(HUGE, 4096).unwrap()));
        let over = Layout::from_size_align(HUGE, 1 << 16).unwrap();
        assert!(!mapped(&over));
        // SAFETY: a valid layout; the block is checked, then freed with the same layout.
        unsafe {
            let p = LazyHuge.alloc(over);
            if !p.is_null() {
                assert_eq!(p as usize % (1 << 16), 0);
                LazyHuge.dealloc(p, over);
            }
        }
    }

    #[test]
    fn realloc_across_the_threshold_keeps_the_bytes() {
        let small = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: every block is used within its current size and freed with its layout.
        unsafe {
            let p = LazyHuge.alloc(small);
            assert!(!p.is_null());
            for i in 0..64 {
                *p.add(i) = i as u8;
            }
            let q = LazyHuge.realloc(p, small, 2 * HUGE);
            assert!(!q.is_null());
            assert!(mapping_starts_at(q), "grown past the threshold: a mapping");
            assert!((0..64).all(|i| *q.add(i) == i as u8));
            assert_eq!(*q.add(2 * HUGE - 1), 0);
            let huge = Layout::from_size_align(2 * HUGE, 8).unwrap();
            let r = LazyHuge.realloc(q, huge, 32);
            assert!(!r.is_null());
            assert!(!mapping_starts_at(q), "the mapping was freed");
            assert!((0..32).all(|i| *r.add(i) == i as u8));
            LazyHuge.dealloc(r, Layout::from_size_align(32, 8).unwrap());
        }
    }

    #[test]
    fn a_size_no_address_space_holds_fails_cleanly() {
        // 2^62 bytes: more than x86-64 (47 bits) or aarch64 (48 bits) can map. Null, no abort.
        let layout = Layout::from_size_align(1 << 62, 1).unwrap();
        // SAFETY: a valid layout; a null result is not used.
        let p = unsafe { LazyHuge.alloc(layout) };
        assert!(p.is_null());
    }
}
