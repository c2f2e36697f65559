//! The socket under a streaming tiny_http request, found by its peer address, and how a stream
//! tunes it.
//!
//! tiny_http 0.12 does not expose a request's socket. A streaming request needs it for three
//! things tiny_http cannot do:
//! - **free the pool thread**: after handing a request over, tiny_http's pool thread blocks
//!   reading the *next* request on the same socket (src/client.rs, `impl Iterator for
//!   ClientConnection`). `shutdown(SHUT_RD)` makes that read return EOF, so the pool thread lets go
//!   of the connection while our writer keeps working. Without this a stream costs two threads and
//!   a burst of streams can starve the pool (see ../shared/TINY_HTTP.md, "Measured").
//! - **see a vanished client at once**: the watcher ([`crate::http::watch`]) watches the socket,
//!   and after the peer's FIN it is in `CLOSE_WAIT`, seen through `TCP_INFO` without writing.
//! - **bound a blocked write**: `SO_SNDTIMEO`, so a client that never reads cannot pin a thread.
//!
//! The descriptors are found by [`crate::sys::fd::find_connection`]. The read one of
//! tiny_http's two is closed by its pool thread once it sees EOF, so a [`StreamSocket`]
//! re-checks the addresses of its descriptor before every use and never acts on a reused number.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::sys::fd::{self, FdSet};

/// One TCP connection's socket, identified by descriptor number and verified by its addresses.
#[derive(Debug, Clone)]
pub(crate) struct StreamSocket {
    fds: Vec<RawFd>,
    local: SocketAddr,
    peer: SocketAddr,
}

/// Is the peer still there, as far as the kernel knows without a write?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// Established.
    Open,
    /// The peer closed its side (FIN or RST seen) or the socket is gone.
    Gone,
    /// Could not tell (descriptor not found); rely on write errors.
    Unknown,
}

impl StreamSocket {
    /// Finds the socket of the connection `local` ⇄ `peer` among this process's descriptors.
    pub(crate) fn find(local: SocketAddr, peer: SocketAddr) -> Option<StreamSocket> {
        StreamSocket::find_skipping(local, peer, &FdSet::default())
    }

    /// Like [`StreamSocket::find`], but cheap with thousands of streams open: numbers in `skip`
    /// (descriptors of running streams) cost no system call (see
    /// [`crate::sys::fd::find_connection`]).
    pub(crate) fn find_skipping(
        local: SocketAddr,
        peer: SocketAddr,
        skip: &FdSet,
    ) -> Option<StreamSocket> {
        let fds = fd::find_connection(local, peer, skip);
        if fds.is_empty() {
            None
        } else {
            Some(StreamSocket { fds, local, peer })
        }
    }

    /// The descriptors that still belong to this connection (normally one once
    /// [`StreamSocket::release_reader`] has run).
    pub(crate) fn fds(&mut self) -> Vec<RawFd> {
        self.fd();
        self.fds.clone()
    }

    /// The descriptors as last verified (no system call).
    pub(crate) fn known_fds(&self) -> &[RawFd] {
        &self.fds
    }

    /// The first descriptor that still belongs to this connection.
    fn fd(&mut self) -> Option<RawFd> {
        let (local, peer) = (self.local, self.peer);
        self.fds.retain(|&fd| fd::addrs_match(fd, local, peer));
        self.fds.first().copied()
    }

    /// A descriptor of this connection's socket that is this process's own (see
    /// [`fd::own_connection`]: a checked `dup`, closed when the result is dropped), to act on.
    pub(crate) fn own(&mut self) -> Option<fd::OwnedSocket> {
        let (local, peer) = (self.local, self.peer);
        self.fds()
            .into_iter()
            .find_map(|fd| fd::own_connection(fd, local, Some(peer)))
    }

    /// Shuts the read half so tiny_http's pool thread, parked reading the next request on this
    /// connection, sees EOF and is freed; then waits (bounded) until that thread has closed its
    /// duplicate descriptor, so one verified descriptor remains: ours, the one every later call
    /// uses and the watcher watches. (On a loaded machine the pool thread can take a while to
    /// run: at 200 ms some streams kept both, and later the reader's number, reused.)
    pub(crate) fn release_reader(&mut self) {
        // Through a checked dup: tiny_http's pool thread closes its own number when it likes.
        if let Some(socket) = self.own() {
            socket.shutdown(std::net::Shutdown::Read);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.fds.len() > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
            self.fd();
        }
        if self.fds.len() > 1 {
            log::debug!("sse socket reader not released peer={}", self.peer);
        }
    }

    /// Sets `SO_SNDTIMEO`: a write blocked longer than `timeout` fails with `WouldBlock`.
    pub(crate) fn set_write_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        let Some(fd) = self.fd() else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "socket gone"));
        };
        fd::set_send_timeout(fd, timeout)
    }

    /// Sets `SO_SNDBUF` (best effort: the kernel clamps it).
    pub(crate) fn set_send_buffer(&mut self, bytes: usize) {
        let Some(fd) = self.fd() else { return };
        let value = bytes.min(i32::MAX as usize) as libc::c_int;
        fd::set_int_option(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, value);
    }

    /// Makes the kernel find a peer that vanished without a FIN or RST (see
    /// [`set_keepalive_fd`]).
    pub(crate) fn set_keepalive(&mut self, user_timeout: Duration) {
        let Some(fd) = self.fd() else { return };
        set_keepalive_fd(fd, user_timeout);
    }

    /// Checks the TCP state: anything but `ESTABLISHED` means the client is gone.
    pub(crate) fn liveness(&mut self) -> Liveness {
        let Some(fd) = self.fd() else {
            return Liveness::Gone;
        };
        match fd::established(fd) {
            None => Liveness::Unknown,
            Some(true) => Liveness::Open,
            Some(false) => Liveness::Gone,
        }
    }
}

/// Makes the kernel find a peer that vanished without a FIN or RST, so the connection is
/// dropped (the watcher sees `EPOLLERR`/`EPOLLHUP`) and its writes fail:
/// - `TCP_USER_TIMEOUT` = `user_timeout`: sent data unacknowledged this long drops the
///   connection. This is the one that matters for a stream: it writes a heartbeat at least
///   every `--heartbeat`, so there is nearly always data in flight, and keepalive only probes
///   a socket with nothing in flight. Measured before this was set (server in a network
///   namespace, the client's ACKs black-holed, 15 s heartbeat): the socket stayed
///   `ESTABLISHED` with the retransmission timer backing off to its 120 s cap, never a
///   keepalive probe, and the stream closed only after 935 s (`tcp_retries2` = 15).
/// - keepalive (idle 30 s, then 3 probes 10 s apart) for the rare idle moment; with
///   `TCP_USER_TIMEOUT` set, the kernel also gives up on unanswered probes after that time.
pub(crate) fn set_keepalive_fd(fd: RawFd, user_timeout: Duration) {
    set_keepalive_probes(fd, Duration::from_secs(30), user_timeout);
}

/// [`set_keepalive_fd`] with the first probe after `idle` without traffic (whole seconds, at
/// least 1; then up to 3 probes `idle` apart, at most 10 s). For a connection that may stay
/// silent for long, such as a chat member over TCP: with nothing in flight only keepalive can
/// find a peer that vanished, and with `TCP_USER_TIMEOUT` set the kernel gives up on the first
/// probe left unanswered that long.
pub(crate) fn set_keepalive_probes(fd: RawFd, idle: Duration, user_timeout: Duration) {
    let idle_s = idle.as_secs().clamp(1, i32::MAX as u64) as libc::c_int;
    fd::set_int_option(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    fd::set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle_s);
    fd::set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, idle_s.min(10));
    fd::set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3);
    let ms = user_timeout.as_millis().min(libc::c_int::MAX as u128) as libc::c_int;
    fd::set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms);
}

/// Writes a whole short response (`bytes`, a few hundred bytes at most) straight onto the socket
/// of the connection `local` ⇄ `peer` and ends the connection (`SHUT_RDWR`: the peer gets our
/// bytes, then FIN; tiny_http's pool thread, parked reading the next request, sees EOF).
///
/// It never blocks, whatever the client does: the send is non-blocking. A fresh connection's
/// send buffer is empty and at least 4.6 KiB (the kernel's floor for `SO_SNDBUF`), so the bytes
/// always fit unless the client left earlier responses on this connection unread; such a client
/// gets what fitted and the FIN. Returns whether every byte was taken; `false` too when the
/// socket was not found (the peer has gone).
///
/// The caller has taken the request's writer (`into_writer`) and writes nothing through it: no
/// earlier response of this connection may be pending in tiny_http's writer (admission makes
/// sure: a connection with a request in flight has its later requests queued behind it).
pub(crate) fn answer_and_close(
    local: SocketAddr,
    peer: SocketAddr,
    skip: &FdSet,
    bytes: &[u8],
) -> bool {
    // Acted on through checked dups (fd::own_connection): tiny_http may close a number and a
    // new connection get it between a check and an action.
    let owned: Vec<fd::OwnedSocket> = fd::find_connection(local, peer, skip)
        .into_iter()
        .filter_map(|fd| fd::own_connection(fd, local, Some(peer)))
        .collect();
    let Some(first) = owned.first() else {
        return false;
    };
    let sent = match fd::send_nonblocking(first.raw(), bytes) {
        Ok(n) => n == bytes.len(),
        Err(_) => false,
    };
    for s in &owned {
        s.shutdown(std::net::Shutdown::Both);
    }
    sent
}

/// Liveness of an optional socket (no socket: unknown).
pub(crate) fn liveness_of(socket: &mut Option<StreamSocket>) -> Liveness {
    socket
        .as_mut()
        .map_or(Liveness::Unknown, StreamSocket::liveness)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fd::fd_layout;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn finds_an_accepted_socket_and_sees_its_peer_leave() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let client = TcpStream::connect(local).unwrap();
        let (_server_side, peer) = listener.accept().unwrap();
        let mut sock = StreamSocket::find(local, peer).expect("socket found");
        assert_eq!(sock.liveness(), Liveness::Open);
        sock.set_write_timeout(Duration::from_secs(1)).unwrap();
        drop(client);
        let deadline = Instant::now() + Duration::from_secs(5);
        while sock.liveness() == Liveness::Open && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sock.liveness(), Liveness::Gone);
    }

    #[test]
    fn the_probing_find_skips_stream_fds_and_still_finds_the_new_socket() {
        let _layout = fd_layout();
        use std::os::fd::AsRawFd;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let _a = TcpStream::connect(local).unwrap();
        let (a_side, a_peer) = listener.accept().unwrap();
        let _b = TcpStream::connect(local).unwrap();
        let (b_side, b_peer) = listener.accept().unwrap();
        let b_dup = b_side.try_clone().unwrap();
        let mut skip = FdSet::default();
        skip.insert(a_side.as_raw_fd());
        let mut found = StreamSocket::find_skipping(local, b_peer, &skip).expect("found");
        let mut want = vec![b_side.as_raw_fd(), b_dup.as_raw_fd()];
        want.sort();
        let mut got = found.fds();
        got.sort();
        assert_eq!(
            got, want,
            "both descriptors of the connection, like tiny_http's two"
        );
        // A skipped descriptor is not probed, but the full scan still finds it as a fallback.
        assert!(StreamSocket::find_skipping(local, a_peer, &skip).is_some());
    }

    #[test]
    fn a_wildcard_listen_address_matches_by_port() {
        // A server told to listen on 0.0.0.0 sees its accepted sockets as 127.0.0.1:port (or
        // any other address of the host); this test's listener stays on 127.0.0.1.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let _client = TcpStream::connect(local).unwrap();
        let (_side, peer) = listener.accept().unwrap();
        let any4 = SocketAddr::from(([0, 0, 0, 0], local.port()));
        let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, local.port()));
        assert!(StreamSocket::find(any4, peer).is_some());
        assert!(StreamSocket::find(any6, peer).is_some());
        let other_port = SocketAddr::from(([0, 0, 0, 0], local.port().wrapping_add(1)));
        assert!(StreamSocket::find(other_port, peer).is_none());
        let other_ip = SocketAddr::from(([127, 0, 0, 2], local.port()));
        assert!(StreamSocket::find(other_ip, peer).is_none());
    }

    #[test]
    fn an_unknown_peer_is_not_found() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let nobody = SocketAddr::from(([127, 0, 0, 1], 1));
        assert!(StreamSocket::find(local, nobody).is_none());
    }
}
