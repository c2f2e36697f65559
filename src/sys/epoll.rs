//! `epoll(7)` and `eventfd(2)`, as the watcher thread uses them (`crate::http::watch`).
//!
//! Epoll keys a registration by the open file *and* the descriptor number: closing one of two
//! duplicates leaves the registration in place, and a descriptor number reused by another file
//! is another key. So callers register one descriptor they own, remove it before closing it,
//! and check (by inode) that the number is still theirs before removing it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// One epoll set.
pub(crate) struct Epoll {
    fd: OwnedFd,
}

/// What a registration reports (besides `EPOLLHUP` and `EPOLLERR`, which epoll always reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interest {
    /// A TCP socket's state changes: `EPOLLOUT`, edge-triggered. Reported once when added
    /// (writable), then once per wake-up of the socket's wait queue that leaves it writable or
    /// hung up: a change of TCP state such as the peer's FIN (`tcp_fin` → `sk_state_change`,
    /// a wake-up with no event mask, so epoll polls the socket again), a reset or error, and a
    /// full send buffer draining. Not when data arrives (that wake-up carries `EPOLLIN`, which
    /// this does not ask for) nor when we write. Works on a socket whose read half is shut,
    /// where `EPOLLRDHUP` cannot tell a FIN (it is set from our own `SHUT_RD` on).
    StateChanges,
    /// Readable, level-triggered (the watcher's own wake-up descriptor).
    Readable,
    /// A socket the watcher reads itself (a chat TCP client's): `EPOLLIN | EPOLLRDHUP`,
    /// edge-triggered. Reported once when added if data is waiting, then once per arrival of
    /// data, the peer's FIN (readable: EOF) or a reset; the reader reads until `EAGAIN` (or
    /// until it stops on purpose and comes back by itself), so no report is needed in between.
    Lines,
}

/// One reported event: the token it was registered with, and whether it was a hang-up or an
/// error rather than plain readability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ready {
    /// The registration's token.
    pub(crate) token: u64,
    /// `EPOLLHUP` or `EPOLLERR` was set.
    pub(crate) hangup: bool,
}

impl Epoll {
    /// A new, empty set (close-on-exec).
    pub(crate) fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall; the descriptor it returns is ours alone.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor nobody else owns.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Adds `fd`, reported under `token`.
    pub(crate) fn add(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let events = match interest {
            // Edge-triggered: a socket that stays writable (or hung up) is reported once per
            // wake-up, not on every wait. (epoll_ctl adds EPOLLHUP | EPOLLERR itself:
            // fs/eventpoll.c, do_epoll_ctl.)
            Interest::StateChanges => (libc::EPOLLOUT | libc::EPOLLET) as u32,
            Interest::Readable => libc::EPOLLIN as u32,
            Interest::Lines => (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
        };
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: ev is a valid epoll_event; bad descriptors just fail.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Removes `fd` (the caller checked it is still the descriptor it added).
    pub(crate) fn delete(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: a null event is allowed for EPOLL_CTL_DEL since Linux 2.6.9.
        let rc = unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Waits up to `timeout` for events and appends them to `out` (at most 256 per call).
    /// Returns how many arrived; an interrupted wait returns 0.
    pub(crate) fn wait(&self, out: &mut Vec<Ready>, timeout: Duration) -> io::Result<usize> {
        const MAX: usize = 256;
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; MAX];
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: evs is writable for MAX entries.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                evs.as_mut_ptr(),
                MAX as libc::c_int,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let hup = (libc::EPOLLHUP | libc::EPOLLERR) as u32;
        for ev in &evs[..n as usize] {
            out.push(Ready {
                token: ev.u64,
                hangup: ev.events & hup != 0,
            });
        }
        Ok(n as usize)
    }
}

/// An `eventfd`: one thread wakes another blocked in `epoll_wait` on it.
pub(crate) struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new non-blocking eventfd (close-on-exec).
    pub(crate) fn new() -> io::Result<EventFd> {
        // SAFETY: plain syscall; the descriptor it returns is ours alone.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor nobody else owns.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Its descriptor, to add to an epoll set.
    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Makes it readable (wakes a waiter); never blocks.
    pub(crate) fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64. A full counter (EAGAIN) is readable already.
        unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }

    /// Makes it unreadable again.
    pub(crate) fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64; an empty counter just fails with EAGAIN.
        unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                &mut v as *mut u64 as *mut libc::c_void,
                8,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn wait_for(ep: &Epoll, what: &str) -> Vec<Ready> {
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while out.is_empty() {
            ep.wait(&mut out, Duration::from_millis(100)).unwrap();
            assert!(std::time::Instant::now() < deadline, "no report of {what}");
        }
        out
    }

    fn quiet(ep: &Epoll) -> Vec<Ready> {
        let mut out = Vec::new();
        ep.wait(&mut out, Duration::from_millis(100)).unwrap();
        out
    }

    #[test]
    fn a_shut_rd_socket_reports_a_fin_and_a_reset_but_not_data_or_writes() {
        use std::io::Write;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let ep = Epoll::new().unwrap();
        let mut pairs = Vec::new();
        for token in 1..=3 {
            let client = TcpStream::connect(addr).unwrap();
            let (side, _) = listener.accept().unwrap();
            // As every stream's socket: the read half shut.
            crate::sys::fd::shut_read(side.as_raw_fd());
            ep.add(side.as_raw_fd(), token, Interest::StateChanges)
                .unwrap();
            pairs.push((client, side));
        }
        let mut first = wait_for(&ep, "the sockets being added");
        first.extend(quiet(&ep));
        first.sort_by_key(|r| r.token);
        let writable = |token| Ready {
            token,
            hangup: false,
        };
        assert_eq!(
            first,
            vec![writable(1), writable(2), writable(3)],
            "once each"
        );
        // Our writes and the client's data wake nothing.
        for _ in 0..20 {
            (&pairs[0].1).write_all(b"data: {}\n\n").unwrap();
        }
        (&pairs[1].0).write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(quiet(&ep), vec![]);
        // A FIN: reported (writable), the socket in CLOSE_WAIT.
        pairs[2].0.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(wait_for(&ep, "a FIN"), vec![writable(3)]);
        assert_eq!(
            crate::sys::fd::established(pairs[2].1.as_raw_fd()),
            Some(false)
        );
        assert_eq!(quiet(&ep), vec![], "edge-triggered: once");
        // A client that closes with data unread (ours) sends a reset: a hang-up.
        let reset = pairs.remove(0);
        drop(reset.0);
        let got = wait_for(&ep, "a reset");
        assert_eq!(
            got,
            vec![Ready {
                token: 1,
                hangup: true
            }]
        );
        ep.delete(reset.1.as_raw_fd()).unwrap();
    }

    #[test]
    fn an_eventfd_wakes_a_wait_until_drained() {
        let ep = Epoll::new().unwrap();
        let wake = EventFd::new().unwrap();
        ep.add(wake.raw(), 9, Interest::Readable).unwrap();
        let mut out = Vec::new();
        wake.notify();
        ep.wait(&mut out, Duration::from_secs(5)).unwrap();
        assert_eq!(
            out,
            vec![Ready {
                token: 9,
                hangup: false
            }]
        );
        wake.drain();
        out.clear();
        ep.wait(&mut out, Duration::ZERO).unwrap();
        assert!(out.is_empty());
    }
}
