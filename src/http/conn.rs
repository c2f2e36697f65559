//! The socket under a tiny_http request, found by its peer address.
//!
//! tiny_http 0.12 does not expose a request's socket. A streaming request needs it for three
//! things tiny_http cannot do:
//! - **free the pool thread**: after handing a request over, tiny_http's pool thread blocks
//!   reading the *next* request on the same socket (src/client.rs, `impl Iterator for
//!   ClientConnection`). `shutdown(SHUT_RD)` makes that read return EOF, so the pool thread lets go
//!   of the connection while our writer keeps working. Without this a stream costs two threads and
//!   a burst of streams can starve the pool (see ../shared/TINY_HTTP.md, "Measured").
//! - **see a vanished client at once**: after the peer's FIN the socket is in `CLOSE_WAIT`, seen
//!   through `TCP_INFO` without writing anything.
//! - **bound a blocked write**: `SO_SNDTIMEO`, so a client that never reads cannot pin a thread.
//!
//! The socket is found by scanning this process's file descriptors for a TCP socket whose local
//! address is the server's and whose peer is the request's `remote_addr()`. tiny_http keeps two
//! descriptors per connection (src/util/refined_tcp_stream.rs: the read half is a `try_clone`,
//! i.e. a `dup`); the read one is closed by the pool thread once it sees EOF, so a [`StreamSocket`]
//! re-checks the peer of its descriptor before every use and never acts on a reused number.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// One TCP connection's socket, identified by descriptor number and verified by its addresses.
#[derive(Debug, Clone)]
pub struct StreamSocket {
    fds: Vec<RawFd>,
    local: SocketAddr,
    peer: SocketAddr,
}

/// Is the peer still there, as far as the kernel knows without a write?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Established.
    Open,
    /// The peer closed its side (FIN or RST seen) or the socket is gone.
    Gone,
    /// Could not tell (descriptor not found); rely on write errors.
    Unknown,
}

impl StreamSocket {
    /// Finds the socket of the connection `local` ⇄ `peer` among this process's descriptors.
    pub fn find(local: SocketAddr, peer: SocketAddr) -> Option<StreamSocket> {
        let fds: Vec<RawFd> = list_fds()
            .into_iter()
            .filter(|&fd| addrs_match(fd, local, peer))
            .collect();
        if fds.is_empty() {
            None
        } else {
            Some(StreamSocket { fds, local, peer })
        }
    }

    /// The first descriptor that still belongs to this connection.
    fn fd(&mut self) -> Option<RawFd> {
        let (local, peer) = (self.local, self.peer);
        self.fds.retain(|&fd| addrs_match(fd, local, peer));
        self.fds.first().copied()
    }

    /// Shuts the read half so tiny_http's pool thread, parked reading the next request on this
    /// connection, sees EOF and is freed; then waits (briefly, bounded) until that thread has
    /// closed its duplicate descriptor, so one verified descriptor remains.
    pub fn release_reader(&mut self) {
        if let Some(fd) = self.fd() {
            // SAFETY: fd is open and verified to be this connection's socket just above.
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        }
        let deadline = Instant::now() + Duration::from_millis(200);
        while self.fds.len() > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
            self.fd();
        }
    }

    /// Sets `SO_SNDTIMEO`: a write blocked longer than `timeout` fails with `WouldBlock`.
    pub fn set_write_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        let Some(fd) = self.fd() else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "socket gone"));
        };
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: fd verified above; tv is a valid timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
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

    /// Sets `SO_SNDBUF` (best effort: the kernel clamps it).
    pub fn set_send_buffer(&mut self, bytes: usize) {
        let Some(fd) = self.fd() else { return };
        let value = bytes.min(i32::MAX as usize) as libc::c_int;
        // SAFETY: fd verified by fd(); value is a c_int of the size passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                &value as *const libc::c_int as *const libc::c_void,
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }

    /// Checks the TCP state: anything but `ESTABLISHED` means the client is gone.
    pub fn liveness(&mut self) -> Liveness {
        let Some(fd) = self.fd() else {
            return Liveness::Gone;
        };
        // struct tcp_info starts with `u8 tcpi_state`; read only what we need.
        let mut buf = [0u8; 256];
        let mut len = buf.len() as libc::socklen_t;
        // SAFETY: fd verified above; buf is writable for len bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                buf.as_mut_ptr() as *mut libc::c_void,
                &mut len,
            )
        };
        if rc != 0 || len < 1 {
            return Liveness::Unknown;
        }
        const TCP_ESTABLISHED: u8 = 1;
        if buf[0] == TCP_ESTABLISHED {
            Liveness::Open
        } else {
            Liveness::Gone
        }
    }

    /// The peer address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
}

/// Liveness of an optional socket (no socket: unknown).
pub fn liveness_of(socket: &mut Option<StreamSocket>) -> Liveness {
    socket
        .as_mut()
        .map_or(Liveness::Unknown, StreamSocket::liveness)
}

/// Shuts both halves of every accepted connection of the server listening on `local` (used at
/// shutdown so tiny_http's pool threads, parked reading keep-alive connections, see EOF and
/// end). Returns how many it shut.
pub fn shutdown_all(local: SocketAddr) -> usize {
    let mut n = 0;
    for fd in list_fds() {
        if sock_addr(fd, true) == Some(local) && sock_addr(fd, false).is_some() {
            // SAFETY: fd is an open socket of ours (checked just above); shutdown does not close it.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            n += 1;
        }
    }
    n
}

fn list_fds() -> Vec<RawFd> {
    match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn addrs_match(fd: RawFd, local: SocketAddr, peer: SocketAddr) -> bool {
    sock_addr(fd, false) == Some(peer) && sock_addr(fd, true) == Some(local)
}

/// `getsockname` (local) or `getpeername` of a descriptor, if it is an IP socket.
fn sock_addr(fd: RawFd, local: bool) -> Option<SocketAddr> {
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
        return None;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
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
    fn an_unknown_peer_is_not_found() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let nobody = SocketAddr::from(([127, 0, 0, 1], 1));
        assert!(StreamSocket::find(local, nobody).is_none());
    }
}

/// What the server knows of its accepted connections, for the sweep that gives tiny_http the
/// header deadline, idle time-out and pending-connection cap it lacks (it reads a request line
/// and headers for as long as a client cares to send them, on a thread of its own).
pub struct ConnTable {
    local: SocketAddr,
    inner: parking_lot::Mutex<ConnInner>,
}

#[derive(Default)]
struct ConnInner {
    /// Last time a request arrived from each peer (keep-alive connections).
    last_request: std::collections::HashMap<SocketAddr, Instant>,
    /// When the sweep first saw a connection that has sent no request yet.
    first_seen: std::collections::HashMap<SocketAddr, Instant>,
    /// Peers whose connection is a running stream: never swept.
    streaming: std::collections::HashSet<SocketAddr>,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Connections that had sent no complete request within the deadline.
    pub header_timeouts: usize,
    /// Keep-alive connections idle past the deadline.
    pub idle: usize,
    /// Connections shut because more than the cap were waiting for headers.
    pub over_cap: usize,
    /// Connections waiting for headers after the sweep.
    pub pending: usize,
}

impl ConnTable {
    /// A table for the server listening on `local`.
    pub fn new(local: SocketAddr) -> ConnTable {
        ConnTable {
            local,
            inner: parking_lot::Mutex::new(ConnInner::default()),
        }
    }

    /// The server's listening address.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// A complete request arrived from `peer`.
    pub fn request_seen(&self, peer: SocketAddr) {
        let mut inner = self.inner.lock();
        inner.first_seen.remove(&peer);
        inner.last_request.insert(peer, Instant::now());
    }

    /// `peer`'s connection became a stream (until [`ConnTable::stream_ended`]).
    pub fn stream_started(&self, peer: SocketAddr) {
        self.inner.lock().streaming.insert(peer);
    }

    /// `peer`'s stream ended.
    pub fn stream_ended(&self, peer: SocketAddr) {
        let mut inner = self.inner.lock();
        inner.streaming.remove(&peer);
        inner.last_request.remove(&peer);
    }

    /// Shuts every connection that has not completed a request within `deadline` of being
    /// seen or of its previous request, and the oldest waiting ones beyond `max_pending`.
    /// Shutting (not closing) the socket makes tiny_http's blocked read end, so its thread is
    /// freed; the descriptor stays tiny_http's to close.
    pub fn sweep(&self, deadline: Duration, max_pending: usize) -> Sweep {
        let now = Instant::now();
        // Group descriptors by peer first (tiny_http holds two per connection).
        let mut conns: std::collections::HashMap<SocketAddr, Vec<RawFd>> = Default::default();
        {
            let streaming = self.inner.lock().streaming.clone();
            for fd in list_fds() {
                if sock_addr(fd, true) != Some(self.local) {
                    continue;
                }
                let Some(peer) = sock_addr(fd, false) else {
                    continue;
                };
                if !streaming.contains(&peer) {
                    conns.entry(peer).or_default().push(fd);
                }
            }
        }
        let mut result = Sweep::default();
        let mut pending: Vec<(Instant, SocketAddr)> = Vec::new();
        let mut shut: Vec<(SocketAddr, &'static str)> = Vec::new();
        {
            let mut inner = self.inner.lock();
            inner.first_seen.retain(|p, _| conns.contains_key(p));
            inner.last_request.retain(|p, _| conns.contains_key(p));
            for peer in conns.keys() {
                if inner.streaming.contains(peer) {
                    continue;
                }
                if let Some(&t) = inner.last_request.get(peer) {
                    if now.duration_since(t) > deadline {
                        shut.push((*peer, "idle"));
                    }
                    continue;
                }
                let t = *inner.first_seen.entry(*peer).or_insert(now);
                if now.duration_since(t) > deadline {
                    shut.push((*peer, "header-timeout"));
                } else {
                    pending.push((t, *peer));
                }
            }
        }
        if pending.len() > max_pending {
            pending.sort();
            let excess = pending.len() - max_pending;
            for (_, peer) in pending.drain(..excess) {
                shut.push((peer, "over-cap"));
            }
        }
        result.pending = pending.len();
        for (peer, reason) in shut {
            // Re-check each descriptor's addresses right before acting on it.
            for &fd in &conns[&peer] {
                if addrs_match(fd, self.local, peer) {
                    // SAFETY: fd verified to be this connection's socket just above.
                    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                }
            }
            log::info!("connection closed peer={peer} reason={reason}");
            match reason {
                "idle" => result.idle += 1,
                "header-timeout" => result.header_timeouts += 1,
                _ => result.over_cap += 1,
            }
            let mut inner = self.inner.lock();
            inner.first_seen.remove(&peer);
            inner.last_request.remove(&peer);
        }
        result
    }
}

/// Turns on TCP keepalive so a peer that vanished without a FIN is found by the kernel
/// (idle 30 s, then 3 probes 10 s apart): the socket leaves `ESTABLISHED` and writes fail.
pub fn set_keepalive(socket: &mut StreamSocket) {
    let Some(fd) = socket.fd() else { return };
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
        // SAFETY: fd verified by fd(); value is a c_int of the size passed.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                &value as *const libc::c_int as *const libc::c_void,
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 30);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3);
}
