//! This process's descriptors and the sockets behind them: addresses, TCP state, socket
//! options, `shutdown(2)`, and finding an accepted connection's descriptors by its addresses.
//!
//! tiny_http 0.12 does not expose a request's socket, so the layers above find it here by
//! scanning this process's descriptors for a TCP socket whose local address is the server's and
//! whose peer is the request's `remote_addr()`. tiny_http keeps two descriptors per connection
//! (src/util/refined_tcp_stream.rs: the read half is a `try_clone`, i.e. a `dup`). A descriptor
//! number can be reused the moment it is closed, so callers re-check a descriptor's addresses
//! ([`addrs_match`]) right before every use and never act on a number they have not verified.
//! A check and a system call on a number are two steps, though: tiny_http can close the number
//! between them and a new connection get it. So what *acts* on a socket (shutdown, options that
//! change it, sending) goes through [`own_connection`]: a `dup` of our own, checked after it is
//! made, so the check and the action are about the same socket whatever happens to the number.

use std::collections::HashSet;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// How far past the highest open descriptor [`find_connection`] and [`connections`] probe.
pub(crate) const PROBE_SLACK: RawFd = 64;

/// A set of descriptor numbers (a bitmap: a lookup is a shift and a mask).
#[derive(Debug, Clone, Default)]
pub(crate) struct FdSet(Vec<u64>);

impl FdSet {
    /// Whether `fd` is in the set.
    pub(crate) fn contains(&self, fd: RawFd) -> bool {
        let i = fd as usize;
        fd >= 0 && self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Adds `fd`.
    pub(crate) fn insert(&mut self, fd: RawFd) {
        if fd < 0 {
            return;
        }
        let i = fd as usize;
        if self.0.len() <= i / 64 {
            self.0.resize(i / 64 + 1, 0);
        }
        self.0[i / 64] |= 1 << (i % 64);
    }

    /// Removes `fd`.
    pub(crate) fn remove(&mut self, fd: RawFd) {
        let i = fd as usize;
        if let Some(w) = self.0.get_mut(i / 64) {
            *w &= !(1 << (i % 64));
        }
    }
}

/// A connection's socket held by a descriptor of our own (see [`own_connection`]).
#[derive(Debug)]
pub(crate) enum OwnedSocket {
    /// Our `dup`: can never turn into another connection's socket; closed on drop.
    Owned(OwnedFd),
    /// The checked number itself, because no descriptor was free for a dup (`EMFILE`): the one
    /// case that still acts on a number another part of the process may close (see
    /// [`own_connection`]).
    Borrowed(RawFd),
}

impl OwnedSocket {
    pub(crate) fn raw(&self) -> RawFd {
        match self {
            OwnedSocket::Owned(fd) => fd.as_raw_fd(),
            OwnedSocket::Borrowed(fd) => *fd,
        }
    }

    /// `shutdown(2)` of one or both halves (the socket stays open for its other holders).
    pub(crate) fn shutdown(&self, how: std::net::Shutdown) {
        let how = match how {
            std::net::Shutdown::Read => libc::SHUT_RD,
            std::net::Shutdown::Write => libc::SHUT_WR,
            std::net::Shutdown::Both => libc::SHUT_RDWR,
        };
        // SAFETY: shutdown(2) on a descriptor touches no memory, and does not close it.
        unsafe { libc::shutdown(self.raw(), how) };
    }

    /// Sets `SO_RCVBUF` (best effort: the kernel clamps it, and doubles it for bookkeeping).
    pub(crate) fn set_receive_buffer(&self, bytes: usize) {
        let value = bytes.min(i32::MAX as usize) as libc::c_int;
        set_int_option(self.raw(), libc::SOL_SOCKET, libc::SO_RCVBUF, value);
    }

    /// `SO_RCVBUF` as the kernel keeps it (twice what was set), if it can be read.
    #[cfg(test)]
    pub(crate) fn receive_buffer(&self) -> Option<usize> {
        let mut value: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: value is a writable c_int of the size passed; a bad fd just fails.
        let rc = unsafe {
            libc::getsockopt(
                self.raw(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &mut value as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        (rc == 0).then_some(value.max(0) as usize)
    }

    /// The socket's inode: the same for every descriptor of it, and never another socket's
    /// while this one is open.
    pub(crate) fn inode(&self) -> Option<u64> {
        inode(self.raw())
    }

    /// Whether the connection is `ESTABLISHED`: the peer has not closed its side, and nobody has
    /// shut ours (`TCP_INFO`).
    pub(crate) fn established(&self) -> bool {
        established(self.raw()) == Some(true)
    }
}

/// The one way to act on a socket whose descriptor number someone else owns (tiny_http closes
/// its numbers when it likes): `dup` the number, check the *dup*'s addresses — a connection
/// accepted by the listener on `local`, with `peer` as its peer if given (any peer otherwise) —
/// and hand back the dup, which the caller acts on and drops (closing it). Whatever happens to
/// the number after the dup, the dup stays the socket that was checked; without it, a number
/// closed between a check and a `shutdown` and handed to a new connection gets that connection
/// shut (seen: 3 of 1000 new streams got EOF in one version).
///
/// `None` if the number is closed or is not that connection now. When no descriptor is free for
/// the dup (`EMFILE`) the number itself is checked and returned as [`OwnedSocket::Borrowed`]:
/// under descriptor exhaustion the sweep must still be able to shut connections (that is how
/// descriptors come back), so that one case keeps the old check-then-act window.
pub(crate) fn own_connection(
    fd: RawFd,
    local: SocketAddr,
    peer: Option<SocketAddr>,
) -> Option<OwnedSocket> {
    let is_it = |fd: RawFd| match peer {
        Some(peer) => addrs_match(fd, local, peer),
        None => listens_on(local, sock_addr(fd, true)) && sock_addr(fd, false).is_some(),
    };
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a number touches no memory; a closed one just fails.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup >= 0 {
        // SAFETY: dup is a new descriptor nobody else owns; OwnedFd closes it once.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        return is_it(dup.as_raw_fd()).then_some(OwnedSocket::Owned(dup));
    }
    if io::Error::last_os_error().raw_os_error() == Some(libc::EMFILE) && is_it(fd) {
        return Some(OwnedSocket::Borrowed(fd));
    }
    None
}

/// The descriptors of the connection `local` ⇄ `peer` among this process's descriptors (at
/// most the two tiny_http keeps), or none.
///
/// Cheap with thousands of streams open: descriptor numbers are probed upwards from 0, numbers
/// in `skip` (descriptors of running streams, known not to be the new connection) cost no
/// system call, and the probe stops once two descriptors of the connection are found or
/// [`PROBE_SLACK`] numbers past the highest open one. The kernel hands out the lowest free
/// number (POSIX `open`/`accept`/`dup`), so a new connection sits in a hole left by a closed
/// one or just above the highest open descriptor. If the probe finds fewer than two (a hole
/// opened after the accept, or a number in `skip` that is no longer a stream's), the full
/// `/proc/self/fd` scan, which skips nothing, decides. Before this,
/// every new stream scanned every descriptor with two system calls each: O(N) per stream,
/// O(N²) over a ramp (10,000 streams took 99 s to open on the 2-core machine).
pub(crate) fn find_connection(local: SocketAddr, peer: SocketAddr, skip: &FdSet) -> Vec<RawFd> {
    let mut fds = Vec::new();
    let mut highest: RawFd = -1;
    let mut fd: RawFd = 0;
    while fd <= highest.saturating_add(PROBE_SLACK) && fds.len() < 2 {
        if skip.contains(fd) {
            highest = fd;
        } else {
            match probe(fd) {
                Probe::Closed => {}
                Probe::Open(None) => highest = fd,
                Probe::Open(Some(p)) => {
                    highest = fd;
                    if p == peer && listens_on(local, sock_addr(fd, true)) {
                        fds.push(fd);
                    }
                }
            }
        }
        fd += 1;
    }
    if fds.len() < 2 {
        // tiny_http holds two descriptors of a connection it hands over; finding fewer means
        // the probe skipped one or stopped short: a number still in `skip` after tiny_http
        // closed it under a running stream (whose reader it was) and the kernel gave it to
        // this connection, or a hole opened after the accept. Taking the one found could be
        // taking tiny_http's reader, which closes once released: the full listing decides.
        let all = socket_fds(local, peer);
        if !all.is_empty() {
            fds = all;
        }
    }
    fds
}

/// Every descriptor of this process that is the connection `local` ⇄ `peer`, from the full
/// `/proc/self/fd` listing. Without a descriptor to list it with (`EMFILE`), every number up to
/// the descriptor limit is probed instead: slower, but a connection is never missed.
pub fn socket_fds(local: SocketAddr, peer: SocketAddr) -> Vec<RawFd> {
    all_fds()
        .into_iter()
        .filter(|&fd| addrs_match(fd, local, peer))
        .collect()
}

/// This process's open descriptors from `/proc/self/fd`, or, when that cannot be listed (it needs
/// a descriptor of its own: `EMFILE`), every number below the descriptor limit (closed ones
/// just fail the calls made on them).
fn all_fds() -> Vec<RawFd> {
    list_fds().unwrap_or_else(|_| (0..fd_limit()).collect())
}

/// The soft `RLIMIT_NOFILE`: no descriptor number reaches it (capped at 1 << 20).
fn fd_limit() -> RawFd {
    // SAFETY: rlimit is plain data; zeroed is a valid value.
    let mut lim: libc::rlimit = unsafe { mem::zeroed() };
    // SAFETY: a valid pointer to an rlimit; getrlimit only writes it.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    if ok {
        lim.rlim_cur.min(1 << 20) as RawFd
    } else {
        1 << 20
    }
}

/// The accepted connections of the server listening on `local` that are not in `streams`, as
/// (peer, descriptor), tiny_http's two descriptors per connection listed separately.
/// Descriptors in `streams` cost no system call. `full` lists `/proc/self/fd`, which misses
/// nothing but reads every descriptor's entry (10,000 of them with 10,000 streams: 70 % of the
/// sweep's time); otherwise, and whenever the listing fails (`EMFILE` too: it needs a
/// descriptor of its own), numbers are probed upwards from 0 as in [`find_connection`], past
/// `ceiling` and until [`PROBE_SLACK`] numbers past the highest open one, one `getsockname`
/// each. The kernel hands out the lowest free number, so a probe misses only a connection whose
/// lower neighbours all closed, before any sweep saw it, leaving a gap wider than the slack; a
/// full listing finds it. The listener (no peer), files, pipes and sockets with another local
/// address are not listed.
///
/// Accepted connections that have *ended* (TCP state `CLOSE`, no peer any more) while their
/// descriptors are still open go into `dead`, by socket inode (tiny_http holds two descriptors
/// of each): tiny_http never closes them when the pool thread that owns them waits forever.
pub(crate) fn connections(
    local: SocketAddr,
    streams: &FdSet,
    full: bool,
    ceiling: RawFd,
    dead: &mut HashSet<u64>,
) -> Vec<(SocketAddr, RawFd)> {
    let mut found = Vec::new();
    let mut ours = |fd: RawFd, own: Option<SocketAddr>| {
        if listens_on(local, own) {
            match sock_addr(fd, false) {
                Some(peer) => found.push((peer, fd)),
                // No peer: the listener, or a connection that has ended.
                None if tcp_state(fd) == Some(TCP_CLOSE) => {
                    if let Some(inode) = inode(fd) {
                        dead.insert(inode);
                    }
                }
                None => {}
            }
        }
    };
    let listed = if full { list_fds().ok() } else { None };
    if let Some(fds) = listed {
        for fd in fds {
            if !streams.contains(fd) {
                ours(fd, sock_addr(fd, true));
            }
        }
        return found;
    }
    let mut highest: RawFd = -1;
    let mut fd: RawFd = 0;
    while fd <= highest.max(ceiling).saturating_add(PROBE_SLACK) {
        if streams.contains(fd) {
            highest = fd;
        } else {
            match sock_addr_raw(fd, true) {
                Err(e) if e == libc::EBADF => {}
                Err(_) => highest = fd,
                Ok(own) => {
                    highest = fd;
                    ours(fd, own);
                }
            }
        }
        fd += 1;
    }
    found
}

/// Shuts both halves of every accepted connection of the server listening on `local`; returns
/// how many it shut. The descriptors stay open (their owners close them); each is shut through
/// a checked dup ([`own_connection`]), so a number closed and reused meanwhile is left alone.
/// Without a descriptor to list `/proc/self/fd` with, every number is probed.
pub(crate) fn shutdown_accepted(local: SocketAddr) -> usize {
    let mut n = 0;
    for fd in all_fds() {
        // The cheap check first (two system calls), the dup only for a candidate.
        if !(listens_on(local, sock_addr(fd, true)) && sock_addr(fd, false).is_some()) {
            continue;
        }
        if let Some(socket) = own_connection(fd, local, None) {
            socket.shutdown(std::net::Shutdown::Both);
            n += 1;
        }
    }
    n
}

/// `recv(fd, buf, MSG_DONTWAIT)`: what is waiting, at most `buf.len()` bytes, without blocking
/// (`WouldBlock` when nothing is); 0 at EOF.
pub(crate) fn recv_nonblocking(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is writable for buf.len() bytes; a bad fd just fails.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `shutdown(fd, SHUT_RD)` of a descriptor the caller owns (tests). A number someone else owns
/// is shut through [`own_connection`].
#[cfg(test)]
pub(crate) fn shut_read(fd: RawFd) {
    // SAFETY: shutdown(2) on a number touches no memory; the caller owns the descriptor.
    unsafe { libc::shutdown(fd, libc::SHUT_RD) };
}

/// Sends `bytes` on socket `fd` without ever blocking (`MSG_DONTWAIT`, and `MSG_NOSIGNAL` so a
/// closed peer is an `EPIPE`, not a signal); returns how many the kernel took (fewer when the
/// send buffer is full).
pub(crate) fn send_nonblocking(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: bytes is a valid buffer of the length passed; a bad fd just fails.
    let n = unsafe {
        libc::send(
            fd,
            bytes.as_ptr() as *const libc::c_void,
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A TCP connection to `addr` begun without waiting for the handshake: the socket is
/// non-blocking, and a write before the connection is up fails with `WouldBlock`.
pub(crate) fn connect_nonblocking(addr: SocketAddr) -> io::Result<TcpStream> {
    // SAFETY: sockaddr_storage is plain data; zeroed is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let (family, len) = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: storage is large and aligned enough for a sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            (libc::AF_INET, mem::size_of::<libc::sockaddr_in>())
        }
        SocketAddr::V6(a) => {
            // SAFETY: storage is large and aligned enough for a sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            (libc::AF_INET6, mem::size_of::<libc::sockaddr_in6>())
        }
    };
    // SAFETY: plain syscall; the descriptor it returns is ours alone.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new socket nobody else owns; the stream closes it on every return.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    // SAFETY: storage holds a sockaddr of `len` bytes for `family`.
    let rc = unsafe {
        libc::connect(
            fd,
            &storage as *const libc::sockaddr_storage as *const libc::sockaddr,
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(stream)
}

/// Sets `SO_SNDTIMEO`: a write blocked longer than `timeout` fails with `WouldBlock`.
pub(crate) fn set_send_timeout(fd: RawFd, timeout: Duration) -> io::Result<()> {
    set_timeout(fd, libc::SO_SNDTIMEO, timeout)
}

/// Sets `SO_RCVTIMEO`: a read blocked longer than `timeout` fails with `WouldBlock`.
pub(crate) fn set_recv_timeout(fd: RawFd, timeout: Duration) -> io::Result<()> {
    set_timeout(fd, libc::SO_RCVTIMEO, timeout)
}

fn set_timeout(fd: RawFd, which: libc::c_int, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: tv is a valid timeval of the size passed; a bad fd just fails.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            which,
            &tv as *const libc::timeval as *const libc::c_void,
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets an integer socket option, best effort (the result is not reported).
pub(crate) fn set_int_option(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: value is a c_int of the size passed; a bad fd just fails.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// The inode number of what `fd` refers to (`fstat`'s `st_ino`): for a socket, the number the
/// kernel's socket table (sock_diag) lists it under, the same for every duplicate of it.
pub(crate) fn inode(fd: RawFd) -> Option<u64> {
    // SAFETY: stat is plain data; zeroed is a valid value.
    let mut st: libc::stat = unsafe { mem::zeroed() };
    // SAFETY: st is writable; a bad fd just fails.
    let rc = unsafe { libc::fstat(fd, &mut st) };
    (rc == 0).then_some(st.st_ino)
}

/// Whether `fd` is a TCP socket in state `ESTABLISHED`, from `TCP_INFO` (`None`: not a TCP
/// socket, or closed).
pub(crate) fn established(fd: RawFd) -> Option<bool> {
    tcp_state(fd).map(|s| s == TCP_ESTABLISHED)
}

/// TCP state of `fd` from `TCP_INFO` (`None`: not a TCP socket or closed).
fn tcp_state(fd: RawFd) -> Option<u8> {
    // struct tcp_info starts with `u8 tcpi_state`; read only what we need.
    let mut buf = [0u8; 8];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf is writable for len bytes; a bad fd just fails.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0 && len >= 1).then_some(buf[0])
}

const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE: u8 = 7;

/// This process's open descriptors, from `/proc/self/fd` (which needs a descriptor of its own:
/// fails with `EMFILE` when none is free).
fn list_fds() -> io::Result<Vec<RawFd>> {
    Ok(std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect())
}

enum Probe {
    /// No such descriptor.
    Closed,
    /// Open; the peer address if it is a connected IP socket.
    Open(Option<SocketAddr>),
}

fn probe(fd: RawFd) -> Probe {
    match sock_addr_raw(fd, false) {
        Ok(peer) => Probe::Open(peer),
        Err(e) if e == libc::EBADF => Probe::Closed,
        Err(_) => Probe::Open(None),
    }
}

/// Whether `fd` is the connection `local` ⇄ `peer` now.
pub(crate) fn addrs_match(fd: RawFd, local: SocketAddr, peer: SocketAddr) -> bool {
    sock_addr(fd, false) == Some(peer) && listens_on(local, sock_addr(fd, true))
}

/// Whether a socket whose own address is `actual` was accepted by a listener bound to `listen`.
/// A listener on a wildcard address (`0.0.0.0`, `::`) accepts on whatever address the client
/// reached, so only the port can be compared; `::` also accepts IPv4 clients (as `::ffff:a.b.c.d`).
pub(crate) fn listens_on(listen: SocketAddr, actual: Option<SocketAddr>) -> bool {
    actual.is_some_and(|a| {
        a.port() == listen.port() && (listen.ip().is_unspecified() || a.ip() == listen.ip())
    })
}

/// `getsockname` (local) or `getpeername` of a descriptor, if it is an IP socket.
fn sock_addr(fd: RawFd, local: bool) -> Option<SocketAddr> {
    sock_addr_raw(fd, local).ok().flatten()
}

/// Like [`sock_addr`], telling a failed call (with its errno) from a non-IP socket.
fn sock_addr_raw(fd: RawFd, local: bool) -> Result<Option<SocketAddr>, libc::c_int> {
    // SAFETY: sockaddr_storage is plain data; zeroed is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let ptr = &mut storage as *mut libc::sockaddr_storage as *mut libc::sockaddr;
    // SAFETY: ptr/len describe a writable sockaddr_storage; a non-socket fd just fails.
    let rc = unsafe {
        if local {
            libc::getsockname(fd, ptr, &mut len)
        } else {
            libc::getpeername(fd, ptr, &mut len)
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    Ok(ip_addr(&storage))
}

fn ip_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    let ptr = storage as *const libc::sockaddr_storage as *const libc::sockaddr;
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: family says this is a sockaddr_in.
            let a: libc::sockaddr_in = unsafe { *(ptr as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: family says this is a sockaddr_in6.
            let a: libc::sockaddr_in6 = unsafe { *(ptr as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            let v6 = SocketAddrV6::new(ip, u16::from_be(a.sin6_port), 0, a.sin6_scope_id);
            // Normalise v4-mapped addresses the way std reports them for v4 listeners.
            match ip.to_ipv4_mapped() {
                Some(v4) => Some(SocketAddr::new(IpAddr::V4(v4), v6.port())),
                None => Some(SocketAddr::V6(v6)),
            }
        }
        _ => None,
    }
}

/// Held by the tests that depend on where the kernel puts new descriptors: one of them opens
/// and closes 200 descriptors, and a gap that wide below another test's sockets would stop that
/// test's probing sweep short of them (unit tests share one process).
#[cfg(test)]
pub(crate) fn fd_layout() -> std::sync::MutexGuard<'static, ()> {
    static FD_LAYOUT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    FD_LAYOUT.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
