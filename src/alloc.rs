//! [`LazyHuge`]: the global allocator syncast runs with, so that a body a client *declares* costs
//! only the bytes it *sends*, and no declared length can abort the process.
//!
//! # Why it exists
//! When a request whose body was not read to its end is dropped, tiny_http 0.12.0 drains the rest
//! of the declared `Content-Length` with `let mut buf = vec![0; remaining_to_read];`
//! (src/util/equal_reader.rs:70, `impl Drop for EqualReader`), allocated *before* its first read,
//! then `read(&mut buf)`s into it from the connection (through a 1 KiB `BufReader`, which hands a
//! buffer that large straight to the socket's `read`). A client that declares
//! `Content-Length: 99999999999` and sends one byte makes that a 93 GiB allocation; with the
//! system allocator it is refused and the process aborts (`memory allocation of 99999999999
//! bytes failed`), or, when it is granted, it is charged against the machine's commit limit.
//! Nothing syncast does before the drop can change the size: the remainder only shrinks by bytes
//! actually read.
//!
//! Allocations of at least [`HUGE`] bytes are therefore served here straight from the kernel, as
//! mappings that cost nothing until a page is written:
//! 1. `mmap(PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE)`: no swap reserved,
//!    nothing charged under the default heuristic overcommit (`vm.overcommit_memory` 0) or 1;
//! 2. if that fails (strict overcommit, `vm.overcommit_memory=2`, ignores `MAP_NORESERVE` and
//!    charges the whole size up front): a sparse `memfd_create` file of that size, `ftruncate`d
//!    and mapped `MAP_SHARED`. A memfd is created with `VM_NORESERVE` (mm/memfd.c), so its pages
//!    are charged one by one as they are written, in every overcommit mode; the descriptor is
//!    closed right after mapping (the mapping keeps the file alive, `munmap` frees it);
//! 3. if no mapping of that size can be made at all — the address space is too small: x86-64
//!    gives a process 128 TiB (47 bits), measured here 64 TiB maps and 127 TiB does not — a
//!    **window**, below.
//!
//! Every such block starts one page before the pointer handed out, with a `Header` (magic,
//! kind, mapped length, accessible length), so `dealloc` unmaps every kind the same way, by the
//! header. Freeing is `munmap`: the pages the drain wrote go back to the kernel at once.
//!
//! Everything else — every allocation syncast makes in normal operation — goes to
//! [`std::alloc::System`] after one size comparison. So do huge allocations that need an
//! alignment larger than a page (a mapping is only page-aligned).
//!
//! # The window: this breaks `GlobalAlloc`'s contract, on purpose
//! For a size no mapping can hold, [`LazyHuge`] returns a block that is **valid for only its
//! first [`WINDOW`] bytes (16 MiB)**, not for the `layout.size()` bytes `GlobalAlloc::alloc`
//! promises. It reserves the largest `PROT_NONE` + `MAP_NORESERVE` range it can get (halving from
//! the requested size down to [`MIN_RESERVATION`], 1 GiB), makes the header page and the window
//! at its start readable and writable, and leaves the rest inaccessible: any access past the
//! window, up to the end of the reservation, **faults** — `SIGSEGV` in user space, `EFAULT` from
//! a system call — instead of touching other memory. `realloc` copies at most the accessible part.
//!
//! That is only sound for a caller that never touches more than the window, and only one caller
//! makes such requests: tiny_http 0.12.0's drain (src/util/equal_reader.rs:70). It never reads or
//! writes the buffer itself (`vec![0; n]` is a fresh zeroed mapping here, not a `memset`); it
//! passes it to `read`, which makes the *kernel* write at most what the socket delivers, from the
//! start. What the socket can deliver is bounded because syncast shuts the read half and shrinks
//! `SO_RCVBUF` before it lets tiny_http drop any request whose body is still on the socket
//! (`http::body`, `close_read`): the drain reads what tiny_http buffered (1 KiB) and what the
//! kernel had queued (at most the receive buffer, far under 16 MiB), then EOF. Should more ever
//! arrive in one read, the kernel's copy stops at the window's end with `EFAULT` (or a short
//! count), the drain sees an error and stops — still no byte outside the block is touched.
//!
//! A program that allocates such a size and uses it (any allocator would have refused it) gets a
//! fault after 16 MiB instead of an abort at once. The alternatives for tiny_http's drain were
//! both worse: return null (the caller's `handle_alloc_error` aborts the process: one request
//! kills every client), or never drop such a request (tiny_http's thread, two descriptors and
//! ~2 KiB pinned per request *forever*: 30,000 of them exhaust the machine's pids).
//!
//! A length beyond `isize::MAX` never reaches an allocator: `vec!` panics with "capacity
//! overflow" first, which `http::body` catches.
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
use std::sync::atomic::{AtomicU64, Ordering};

/// Allocations of at least this many bytes (1 GiB) are lazy kernel mappings.
pub const HUGE: usize = 1 << 30;

/// The accessible part of a window (see the module documentation): more than a socket's receive
/// buffer can hold, so one `read` into it never reaches its end in practice.
pub const WINDOW: usize = 16 << 20;

/// The smallest inaccessible reservation a window is made in: below this, the allocation fails.
pub const MIN_RESERVATION: usize = 1 << 30;

/// The largest alignment a mapping satisfies: every page size Linux uses is a multiple of this.
const MAP_ALIGN: usize = 4096;

/// Written at the start of every lazy block's header ("syncLAZY").
const MAGIC: u64 = u64::from_be_bytes(*b"syncLAZY");

/// Windows made so far (allocations no mapping could hold), for `/metrics`.
static WINDOWS: AtomicU64 = AtomicU64::new(0);

/// How many allocations so far could not be mapped whole and got a window instead.
pub fn windows() -> u64 {
    WINDOWS.load(Ordering::Relaxed)
}

/// The global allocator: [`System`], except that allocations of [`HUGE`] bytes or more are lazy
/// kernel mappings, and those no mapping can hold a guarded window (see the module
/// documentation).
#[derive(Debug, Default, Clone, Copy)]
pub struct LazyHuge;

/// Whether `layout` is served by a mapping. A pure function of the layout, so `dealloc` and
/// `realloc` always send a block back to the allocator that made it.
#[inline]
fn mapped(layout: &Layout) -> bool {
    layout.size() >= HUGE && layout.align() <= MAP_ALIGN
}

/// How a lazy block is mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
enum Kind {
    /// Private anonymous memory without swap reservation, all of it accessible.
    NoReserve = 1,
    /// A sparse memfd mapped shared (for strict overcommit), all of it accessible.
    Memfd = 2,
    /// A window: the header page and [`WINDOW`] bytes accessible at the start of an
    /// inaccessible reservation.
    Window = 3,
}

/// The page before every lazy block's pointer.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct Header {
    /// [`MAGIC`].
    magic: u64,
    /// How the block was made.
    kind: Kind,
    /// Bytes mapped from the header's start: what `dealloc` unmaps.
    mapped: usize,
    /// Bytes valid from the block's pointer: the size asked for, or [`WINDOW`] for a window.
    accessible: usize,
}

/// The page size: the header's length, so the block after it stays page-aligned.
fn page() -> usize {
    // SAFETY: sysconf only reads a configuration value.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        (n as usize).max(MAP_ALIGN)
    } else {
        MAP_ALIGN
    }
}

/// `n` rounded down to a multiple of `page` (a power of two).
fn round_down(n: usize, page: usize) -> usize {
    n & !(page - 1)
}

/// A lazy block of `size` zeroed bytes (or a window, if no mapping can hold it); null if not
/// even a window can be made. Allocates nothing itself.
///
/// # Safety
/// `size` must be at least [`HUGE`] and at most `isize::MAX` (as for any `Layout`).
unsafe fn alloc_lazy(size: usize) -> *mut u8 {
    let head = page();
    if let Some(total) = size.checked_add(head).filter(|&t| t <= isize::MAX as usize) {
        for kind in [Kind::NoReserve, Kind::Memfd] {
            // SAFETY: total is non-zero and at most isize::MAX.
            let base = unsafe { map_with(kind, total) };
            if !base.is_null() {
                // SAFETY: base starts a fresh readable and writable mapping of total > head
                // bytes, page-aligned.
                return unsafe { finish(base, head, kind, total, size) };
            }
        }
    }
    // SAFETY: forwarded.
    unsafe { window(size, head) }
}

/// Writes the header at `base` and returns the block's pointer, `head` bytes on.
///
/// # Safety
/// `base` must start a mapping of `mapped` bytes whose first `head` bytes are writable and
/// page-aligned.
unsafe fn finish(
    base: *mut u8,
    head: usize,
    kind: Kind,
    mapped: usize,
    accessible: usize,
) -> *mut u8 {
    let header = Header {
        magic: MAGIC,
        kind,
        mapped,
        accessible,
    };
    // SAFETY: base is page-aligned (so aligned for a Header) and writable for a page, which
    // holds a Header; base + head is inside the mapping.
    unsafe {
        base.cast::<Header>().write(header);
        base.add(head)
    }
}

/// The largest `PROT_NONE` reservation from `size + head` bytes down to [`MIN_RESERVATION`]
/// (halving), with its header page and first [`WINDOW`] bytes made readable and writable; null
/// if none can be made.
///
/// # Safety
/// As for [`alloc_lazy`].
unsafe fn window(size: usize, head: usize) -> *mut u8 {
    let open = head + WINDOW.min(size);
    let mut reserve = round_down(size.saturating_add(head).min(isize::MAX as usize), head);
    while reserve >= MIN_RESERVATION.max(open) {
        // SAFETY: a new inaccessible mapping (address chosen by the kernel) overlaps nothing.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                reserve,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base != libc::MAP_FAILED {
            let rw = libc::PROT_READ | libc::PROT_WRITE;
            // SAFETY: the first `open` bytes of our own fresh mapping.
            if unsafe { libc::mprotect(base, open, rw) } != 0 {
                // SAFETY: the whole mapping just made, unmapped once.
                unsafe { libc::munmap(base, reserve) };
                return ptr::null_mut();
            }
            WINDOWS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: base starts a mapping of `reserve` bytes whose first `open > head` bytes
            // are writable; it is page-aligned.
            return unsafe { finish(base.cast(), head, Kind::Window, reserve, WINDOW.min(size)) };
        }
        reserve = round_down(reserve / 2, head);
    }
    ptr::null_mut()
}

/// Maps `size` zeroed, readable and writable bytes with one strategy (`NoReserve` or `Memfd`);
/// null on failure. Allocates nothing itself.
///
/// # Safety
/// `size` must be non-zero and at most `isize::MAX`.
unsafe fn map_with(kind: Kind, size: usize) -> *mut u8 {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: plain system calls. A new mapping (address chosen by the kernel, NULL hint)
    // overlaps nothing that exists; the memfd is ours alone and closed on every path.
    unsafe {
        let p = match kind {
            Kind::NoReserve => libc::mmap(
                ptr::null_mut(),
                size,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            ),
            Kind::Memfd => {
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
            Kind::Window => return ptr::null_mut(),
        };
        if p == libc::MAP_FAILED {
            ptr::null_mut()
        } else {
            p.cast()
        }
    }
}

/// The header of the lazy block at `p`.
///
/// # Safety
/// `p` must be a live block returned by [`alloc_lazy`].
unsafe fn header(p: *mut u8) -> Header {
    // SAFETY: alloc_lazy wrote a Header one page before every block it returns, in the same
    // (still mapped, writable) mapping.
    unsafe { p.sub(page()).cast::<Header>().read() }
}

/// Unmaps a block made by [`alloc_lazy`], by its header.
///
/// # Safety
/// `p` must be a live block returned by [`alloc_lazy`]; it is gone afterwards.
unsafe fn dealloc_lazy(p: *mut u8) {
    // SAFETY: forwarded.
    let h = unsafe { header(p) };
    if h.magic != MAGIC {
        // Not ours after all (impossible: `mapped` is a pure function of the layout the caller
        // must pass back): leaking is the only safe answer, there is nobody to report to.
        return;
    }
    // SAFETY: the header describes exactly the one mapping the block lives in.
    unsafe { libc::munmap(p.sub(page()).cast(), h.mapped) };
}

/// How many bytes from `p` a block of `layout` may be read from: all of them, except a window's.
///
/// # Safety
/// `p` must be a live block allocated by [`LazyHuge`] with `layout`.
unsafe fn accessible(p: *mut u8, layout: &Layout) -> usize {
    if mapped(layout) {
        // SAFETY: forwarded: a mapped layout means an alloc_lazy block.
        unsafe { header(p) }.accessible.min(layout.size())
    } else {
        layout.size()
    }
}

// SAFETY: every block is either System's (handed back to System, decided by `mapped`, a pure
// function of the layout the caller must pass back unchanged) or a fresh kernel mapping, one
// page past its header, page-aligned (so aligned for any `layout.align() <= MAP_ALIGN`),
// zero-filled by the kernel, and unmapped exactly once in `dealloc`. A NoReserve or Memfd block
// is valid for `layout.size()` bytes. A window is valid for only `WINDOW` of them: that breaks
// the trait's contract, deliberately and for sizes no allocator could honour at all (see the
// module documentation for the one caller and why it stays within the window). Nothing here
// unwinds or allocates.
unsafe impl GlobalAlloc for LazyHuge {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mapped(&layout) {
            // SAFETY: a Layout's size is at most isize::MAX; it is >= HUGE here.
            unsafe { alloc_lazy(layout.size()) }
        } else {
            // SAFETY: forwarded from our caller.
            unsafe { System.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mapped(&layout) {
            // SAFETY: as in alloc; a new mapping is already zero-filled.
            unsafe { alloc_lazy(layout.size()) }
        } else {
            // SAFETY: forwarded from our caller.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if mapped(&layout) {
            // SAFETY: the caller passes the layout it allocated with: `mapped` gave the same
            // answer then, so `p` is one of our lazy blocks.
            unsafe { dealloc_lazy(p) }
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
        // Across the threshold (or between two lazy blocks): a new block, a copy, the old block
        // freed. The copy writes what both blocks can hold and the old one can be read for (a
        // window only its window), so growing a huge block makes that much resident; nothing in
        // syncast reallocates a huge block.
        // SAFETY: new_layout is valid (above); on success both blocks are live and distinct, and
        // each is accessible for at least the bytes copied.
        unsafe {
            let q = self.alloc(new_layout);
            if !q.is_null() {
                let n = accessible(p, &layout).min(accessible(q, &new_layout));
                ptr::copy_nonoverlapping(p, q, n);
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

    /// Whether the lazy block `p` has its own mapping (which starts at its header, a page before).
    fn lazy_block(p: *const u8) -> bool {
        mapping_starts_at(p.wrapping_sub(page()))
    }

    /// Held by every test here: the kernel merges adjacent mappings of the same kind into one,
    /// so two tests' lazy blocks made side by side at once would hide where each one starts.
    fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[test]
    fn a_one_tib_zeroed_vec_is_allocated_lazily_and_unmapped_on_drop() {
        let _serial = one_at_a_time();
        let rss_before = status_kib("VmRSS:");
        let mut v = vec![0u8; TIB];
        let p = v.as_ptr();
        assert_eq!(v.len(), TIB);
        assert!(lazy_block(p), "a mapping of its own");
        // SAFETY: p is a live lazy block.
        let h = unsafe { header(p.cast_mut()) };
        assert!(matches!(h.kind, Kind::NoReserve | Kind::Memfd), "{h:?}");
        assert_eq!(h.accessible, TIB);
        // Touch one byte in the first page and one in the last.
        v[0] = 1;
        v[TIB - 1] = 2;
        assert_eq!((v[0], v[TIB / 2], v[TIB - 1]), (1, 0, 2));
        let rss_touched = status_kib("VmRSS:");
        // Three pages written (other tests run in this process too: allow 32 MiB of noise).
        assert!(
            rss_touched < rss_before + 32 * 1024,
            "RSS {rss_before} -> {rss_touched} KiB"
        );
        drop(v);
        assert!(!lazy_block(p), "unmapped on drop");
    }

    #[test]
    fn the_memfd_fallback_is_lazy_zeroed_and_freed() {
        let _serial = one_at_a_time();
        // The path strict overcommit takes (it cannot be switched on for one test).
        // SAFETY: a valid size; the block is used within its bounds and freed once.
        unsafe {
            let base = map_with(Kind::Memfd, TIB + page());
            assert!(!base.is_null());
            let p = finish(base, page(), Kind::Memfd, TIB + page(), TIB);
            assert!(lazy_block(p));
            let shmem_before = status_kib("RssShmem:");
            *p.add(12345) = 7;
            assert_eq!((*p.add(12345), *p.add(TIB - 1)), (7, 0));
            assert!(status_kib("RssShmem:") < shmem_before + 1024);
            dealloc_lazy(p);
            assert!(!lazy_block(p));
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
        let _serial = one_at_a_time();
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
        let _serial = one_at_a_time();
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
            assert!(lazy_block(q), "grown past the threshold: a mapping");
            assert!((0..64).all(|i| *q.add(i) == i as u8));
            assert_eq!(*q.add(2 * HUGE - 1), 0);
            let huge = Layout::from_size_align(2 * HUGE, 8).unwrap();
            let r = LazyHuge.realloc(q, huge, 32);
            assert!(!r.is_null());
            assert!(!lazy_block(q), "the mapping was freed");
            assert!((0..32).all(|i| *r.add(i) == i as u8));
            LazyHuge.dealloc(r, Layout::from_size_align(32, 8).unwrap());
        }
    }

    /// `read(2)` of one byte from a pipe into `dst`: the byte count, or the errno.
    fn read_one_into(dst: *mut u8) -> Result<isize, i32> {
        let mut fds = [0; 2];
        // SAFETY: fds is writable for two descriptors; both are closed below.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: a one-byte write from a valid buffer into our pipe; the read goes to `dst`,
        // which the kernel checks (EFAULT) rather than this process touching it.
        let n = unsafe {
            assert_eq!(libc::write(fds[1], b"x".as_ptr().cast(), 1), 1);
            libc::read(fds[0], dst.cast(), 1)
        };
        let err = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        // SAFETY: our two descriptors, closed once.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        if n < 0 {
            Err(err)
        } else {
            Ok(n)
        }
    }

    #[test]
    fn a_size_no_address_space_holds_gets_a_window_that_faults_past_its_end() {
        let _serial = one_at_a_time();
        // 2^62 bytes: more than x86-64 (47 bits) or aarch64 (48 bits) can map. Before the window
        // this was null, and tiny_http's `vec!` aborted the process.
        let layout = Layout::from_size_align(1 << 62, 1).unwrap();
        let windows_before = windows();
        // SAFETY: a valid layout; the block is used only inside its window and freed once.
        unsafe {
            let p = LazyHuge.alloc_zeroed(layout);
            assert!(!p.is_null(), "a window, not a failure");
            assert!(lazy_block(p));
            let h = header(p);
            assert_eq!(
                (h.magic, h.kind, h.accessible),
                (MAGIC, Kind::Window, WINDOW)
            );
            assert!(h.mapped >= MIN_RESERVATION, "reserved {} bytes", h.mapped);
            assert!(windows() > windows_before);
            // Zeroed, and writable from the first byte to the last of the window.
            assert_eq!((*p, *p.add(WINDOW - 1)), (0, 0));
            *p = 1;
            // A system call writing inside the window succeeds...
            assert_eq!(read_one_into(p.add(WINDOW - 1)), Ok(1));
            assert_eq!(*p.add(WINDOW - 1), b'x');
            // ...and one byte past it faults: the kernel refuses, nothing else is touched.
            assert_eq!(read_one_into(p.add(WINDOW)), Err(libc::EFAULT));
            // So does the far end of the reservation.
            assert_eq!(
                read_one_into(p.add(h.mapped - page() - 1)),
                Err(libc::EFAULT)
            );
            // realloc copies only what can be read: into a small block, its first bytes.
            let q = LazyHuge.realloc(p, layout, 64);
            assert!(!q.is_null());
            assert!(!lazy_block(p), "the window was unmapped");
            assert_eq!(*q, 1);
            LazyHuge.dealloc(q, Layout::from_size_align(64, 1).unwrap());
        }
        // The way tiny_http's drain makes it: `vec![0; n]`, then dropped.
        let v = vec![0u8; 1 << 62];
        let p = v.as_ptr();
        assert_eq!(v.len(), 1 << 62);
        assert!(lazy_block(p));
        drop(v);
        assert!(!lazy_block(p), "unmapped by its header");
    }

    #[test]
    fn touching_a_window_past_its_end_is_a_segfault_not_a_write_elsewhere() {
        let _serial = one_at_a_time();
        let layout = Layout::from_size_align(1 << 62, 1).unwrap();
        // SAFETY: the block is written inside its window here; the write past it happens in a
        // forked child, which does nothing else (no allocation, no lock) before it dies or
        // _exits; the block is freed once, by the parent.
        unsafe {
            let p = LazyHuge.alloc(layout);
            assert!(!p.is_null());
            *p.add(WINDOW - 1) = 1;
            let child = libc::fork();
            assert!(child >= 0, "fork");
            if child == 0 {
                let no_core = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                ptr::write_volatile(p.add(WINDOW), 1);
                libc::_exit(0);
            }
            let mut status = 0;
            assert_eq!(libc::waitpid(child, &mut status, 0), child);
            assert!(
                libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV,
                "the child was not killed by SIGSEGV: status {status:#x}"
            );
            LazyHuge.dealloc(p, layout);
        }
    }

    #[test]
    fn a_window_grown_into_a_full_mapping_copies_only_its_window() {
        let _serial = one_at_a_time();
        let layout = Layout::from_size_align(1 << 62, 1).unwrap();
        // SAFETY: each block is used within what it can be accessed for and freed once.
        unsafe {
            let p = LazyHuge.alloc(layout);
            assert!(!p.is_null());
            *p.add(WINDOW - 1) = 9;
            // A mappable size: all of it accessible; the window's 16 MiB copied, no more.
            let q = LazyHuge.realloc(p, layout, 2 * HUGE);
            assert!(!q.is_null());
            assert_ne!(header(q).kind, Kind::Window);
            assert_eq!((*q.add(WINDOW - 1), *q.add(WINDOW)), (9, 0));
            LazyHuge.dealloc(q, Layout::from_size_align(2 * HUGE, 1).unwrap());
            assert!(!lazy_block(q));
        }
    }
}
