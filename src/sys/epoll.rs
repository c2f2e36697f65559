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
    /// Only `EPOLLHUP`/`EPOLLERR` (the connection was reset or dropped by the kernel), once
    /// (`EPOLLONESHOT`: after one report the registration stays, disabled, until removed).
    HangupOnce,
    /// Readable, level-triggered (the watcher's own wake-up descriptor).
    Readable,
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
            // An empty mask with EPOLLONESHOT: epoll_ctl adds EPOLLHUP | EPOLLERR to every
            // registration (fs/eventpoll.c, do_epoll_ctl), and a one-shot one is disabled after
            // its first report, so a socket that stays hung up is reported once, not on every
            // wait.
            Interest::HangupOnce => libc::EPOLLONESHOT as u32,
            Interest::Readable => libc::EPOLLIN as u32,
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

    /// Waits up to `timeout` for events and appends them to `out` (at most its spare capacity,
    /// at least one slot). Returns how many arrived; an interrupted wait returns 0.
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

    #[test]
    fn a_reset_is_reported_once_and_a_fin_after_shut_rd_not_at_all() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let ep = Epoll::new().unwrap();
        let mut out = Vec::new();
        // A FIN on a socket whose read half we shut (as every stream's is): not reported.
        let fin = TcpStream::connect(addr).unwrap();
        let (fin_side, _) = listener.accept().unwrap();
        crate::sys::fd::shut_read(fin_side.as_raw_fd());
        ep.add(fin_side.as_raw_fd(), 1, Interest::HangupOnce)
            .unwrap();
        drop(fin);
        // A reset (SO_LINGER 0 then close sends RST): reported, once.
        let rst = TcpStream::connect(addr).unwrap();
        let (rst_side, _) = listener.accept().unwrap();
        ep.add(rst_side.as_raw_fd(), 2, Interest::HangupOnce)
            .unwrap();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: linger is a valid struct of the size passed.
        unsafe {
            libc::setsockopt(
                rst.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        drop(rst);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while out.is_empty() {
            ep.wait(&mut out, Duration::from_millis(100)).unwrap();
            assert!(std::time::Instant::now() < deadline, "no hang-up reported");
        }
        assert_eq!(
            out,
            vec![Ready {
                token: 2,
                hangup: true
            }]
        );
        out.clear();
        ep.wait(&mut out, Duration::from_millis(50)).unwrap();
        assert!(out.is_empty(), "one-shot: reported once, then {out:?}");
        ep.delete(rst_side.as_raw_fd()).unwrap();
        ep.delete(fin_side.as_raw_fd()).unwrap();
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
