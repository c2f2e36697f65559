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
        StreamSocket::find_skipping(local, peer, &FdSet::default())
    }

    /// Like [`StreamSocket::find`], but cheap with thousands of streams open: descriptor numbers
    /// are probed upwards from 0, numbers in `skip` (descriptors of running streams, known not to
    /// be the new connection) cost no system call, and the probe stops once tiny_http's two
    /// descriptors of the connection are found or [`PROBE_SLACK`] numbers past the highest open
    /// one. The kernel hands out the lowest free number (POSIX `open`/`accept`/`dup`), so a new
    /// connection sits in a hole left by a closed one or just above the highest open descriptor.
    /// If the probe finds nothing (a hole opened after the accept), the full `/proc/self/fd`
    /// scan, which skips nothing, decides. Before this, every new stream scanned every
    /// descriptor with two system calls each: O(N) per stream, O(N²) over a ramp (10,000
    /// streams took 99 s to open on the 2-core machine).
    pub fn find_skipping(
        local: SocketAddr,
        peer: SocketAddr,
        skip: &FdSet,
    ) -> Option<StreamSocket> {
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
        if fds.is_empty() {
            fds = list_fds()
                .unwrap_or_default()
                .into_iter()
                .filter(|&fd| addrs_match(fd, local, peer))
                .collect();
        }
        if fds.is_empty() {
            None
        } else {
            Some(StreamSocket { fds, local, peer })
        }
    }

    /// The descriptors that still belong to this connection (normally one once
    /// [`StreamSocket::release_reader`] has run).
    pub fn fds(&mut self) -> Vec<RawFd> {
        self.fd();
        self.fds.clone()
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
        match tcp_state(fd) {
            None => Liveness::Unknown,
            Some(TCP_ESTABLISHED) => Liveness::Open,
            Some(_) => Liveness::Gone,
        }
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
    for fd in list_fds().unwrap_or_default() {
        if listens_on(local, sock_addr(fd, true)) && sock_addr(fd, false).is_some() {
            // SAFETY: fd is an open socket of ours (checked just above); shutdown does not close it.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            n += 1;
        }
    }
    n
}

/// This process's open descriptors, from `/proc/self/fd` (which needs a descriptor of its own:
/// fails with `EMFILE` when none is free).
fn list_fds() -> io::Result<Vec<RawFd>> {
    Ok(std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect())
}

/// How far past the highest open descriptor [`StreamSocket::find_skipping`] probes.
pub const PROBE_SLACK: RawFd = 64;

/// Every this many sweeps, [`ConnTable::sweep`] lists `/proc/self/fd` instead of probing, so a
/// connection a probe cannot reach (above a gap of closed numbers) is still shut in bounded time.
pub const FULL_SCAN_EVERY: u32 = 5;

/// A set of descriptor numbers (a bitmap: a lookup is a shift and a mask).
#[derive(Debug, Clone, Default)]
pub struct FdSet(Vec<u64>);

impl FdSet {
    /// Whether `fd` is in the set.
    pub fn contains(&self, fd: RawFd) -> bool {
        let i = fd as usize;
        fd >= 0 && self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Adds `fd`.
    pub fn insert(&mut self, fd: RawFd) {
        if fd < 0 {
            return;
        }
        let i = fd as usize;
        if self.0.len() <= i / 64 {
            self.0.resize(i / 64 + 1, 0);
        }
        self.0[i / 64] |= 1 << (i % 64);
    }

    /// One past the highest number the set can hold now.
    pub fn bits(&self) -> RawFd {
        (self.0.len() * 64) as RawFd
    }

    /// Removes `fd`.
    pub fn remove(&mut self, fd: RawFd) {
        let i = fd as usize;
        if let Some(w) = self.0.get_mut(i / 64) {
            *w &= !(1 << (i % 64));
        }
    }
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

fn addrs_match(fd: RawFd, local: SocketAddr, peer: SocketAddr) -> bool {
    sock_addr(fd, false) == Some(peer) && listens_on(local, sock_addr(fd, true))
}

/// Whether a socket whose own address is `actual` was accepted by a listener bound to `listen`.
/// A listener on a wildcard address (`0.0.0.0`, `::`) accepts on whatever address the client
/// reached, so only the port can be compared; `::` also accepts IPv4 clients (as `::ffff:a.b.c.d`).
fn listens_on(listen: SocketAddr, actual: Option<SocketAddr>) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Held by the tests that depend on where the kernel puts new descriptors: one of them
    /// opens and closes 200 descriptors, and a gap that wide below another test's sockets would
    /// stop that test's probing sweep short of them (unit tests share one process).
    static FD_LAYOUT: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn fd_layout() -> std::sync::MutexGuard<'static, ()> {
        FD_LAYOUT.lock().unwrap_or_else(|e| e.into_inner())
    }
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
    fn a_fd_set_holds_numbers() {
        let mut set = FdSet::default();
        assert!(!set.contains(3));
        set.insert(3);
        set.insert(200);
        assert!(set.contains(3) && set.contains(200) && !set.contains(4));
        assert!(set.bits() > 200);
        set.remove(3);
        assert!(!set.contains(3) && !set.contains(-1));
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
    fn a_known_connection_above_a_gap_is_probed_and_an_unknown_one_found_by_the_full_scan() {
        let _layout = fd_layout();
        use std::os::fd::AsRawFd;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        // 200 descriptors (more than PROBE_SLACK) below the connection, closed once it is open:
        // numbers the kernel will not hand out again until something else opens.
        let fillers: Vec<std::fs::File> = (0..200)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let _client = TcpStream::connect(local).unwrap();
        let (side, _) = listener.accept().unwrap();
        drop(fillers);
        let table = ConnTable::new(local);
        let none = FdSet::default();
        let has =
            |found: Vec<(SocketAddr, RawFd)>| found.iter().any(|&(_, fd)| fd == side.as_raw_fd());
        assert!(
            has(table.connections(&none, true, -1)),
            "the listing sees it"
        );
        assert!(
            has(table.connections(&none, false, side.as_raw_fd())),
            "a probe reaches a connection an earlier sweep saw, whatever the gap below it"
        );
        // A table that never saw it: found by the first full scan at the latest.
        let pending: Vec<usize> = (0..FULL_SCAN_EVERY)
            .map(|_| table.sweep(Duration::from_secs(60), 100).pending)
            .collect();
        assert_eq!(pending.last(), Some(&1), "pending per sweep: {pending:?}");
    }

    #[test]
    fn a_sweep_never_takes_a_stream_or_a_foreign_descriptor_for_a_connection() {
        let _layout = fd_layout();
        use std::os::fd::AsRawFd;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let table = ConnTable::new(local);
        // A running stream, both of its descriptors known.
        let _stream_client = TcpStream::connect(local).unwrap();
        let (stream_side, _) = listener.accept().unwrap();
        let stream_dup = stream_side.try_clone().unwrap();
        let (gone, _gone_rx) = crossbeam_channel::bounded(1);
        table.stream_fds_opened(&[stream_side.as_raw_fd(), stream_dup.as_raw_fd()], gone);
        // Other descriptors: a file, an accepted socket of another listener, the listener itself
        // and our own client sockets (their local address is not the server's).
        let _file = std::fs::File::open("/dev/null").unwrap();
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let _other_client = TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let _other_side = other.accept().unwrap();
        let streams = table.stream_fds();
        for full in [false, true] {
            assert!(
                table.connections(&streams, full, -1).is_empty(),
                "full={full}"
            );
        }
        // One connection waiting for headers: the only one a zero cap shuts, in a probing
        // sweep (the first) and in the full scan (the FULL_SCAN_EVERY-th).
        let mut waiting = TcpStream::connect(local).unwrap();
        let (waiting_side, _) = listener.accept().unwrap();
        let first = table.sweep(Duration::from_secs(60), 0);
        assert_eq!((first.over_cap, first.pending), (1, 0));
        let mut buf = [0u8; 1];
        waiting
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            std::io::Read::read(&mut waiting, &mut buf).unwrap(),
            0,
            "shut"
        );
        drop(waiting_side);
        for _ in 1..FULL_SCAN_EVERY {
            assert_eq!(table.sweep(Duration::ZERO, 0), Sweep::default());
        }
        let mut stream_side = stream_side;
        assert!(
            std::io::Write::write_all(&mut stream_side, b"still open").is_ok(),
            "the stream's socket was never shut"
        );
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
    streams: parking_lot::Mutex<StreamFds>,
}

/// The descriptors of running streams: skipped by [`StreamSocket::find_skipping`] and by the
/// sweep's scan (no system call per stream), and checked in batches for a vanished peer.
#[derive(Default)]
struct StreamFds {
    set: FdSet,
    /// Each stream descriptor and the channel that tells its thread the peer may be gone.
    wake: std::collections::HashMap<RawFd, crossbeam_channel::Sender<()>>,
    /// The descriptor number where the next liveness batch starts (0: a new pass).
    cursor: RawFd,
    /// Sockets checked per sweep during this pass.
    batch: usize,
}

#[derive(Default)]
struct ConnInner {
    /// Last time a request arrived from each peer (keep-alive connections).
    last_request: std::collections::HashMap<SocketAddr, Instant>,
    /// When the sweep first saw a connection that has sent no request yet.
    first_seen: std::collections::HashMap<SocketAddr, Instant>,
    /// Peers whose connection is a running stream: never swept.
    streaming: std::collections::HashSet<SocketAddr>,
    /// Sweeps so far (every [`FULL_SCAN_EVERY`]th lists `/proc/self/fd`).
    sweeps: u32,
    /// The highest descriptor number of a non-stream connection the last sweep found (-1 or 0:
    /// none, or no sweep yet): the next probing sweep goes at least this far, so a known connection is not lost
    /// when a gap of closed numbers opens below it.
    ceiling: RawFd,
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
    /// Streams told their peer left (found by the batched `TCP_INFO` check).
    pub streams_gone: usize,
}

impl ConnTable {
    /// A table for the server listening on `local`.
    pub fn new(local: SocketAddr) -> ConnTable {
        ConnTable {
            local,
            inner: parking_lot::Mutex::new(ConnInner::default()),
            streams: parking_lot::Mutex::new(StreamFds::default()),
        }
    }

    /// The descriptors of running streams now (a copy: callers probe without the lock).
    pub fn stream_fds(&self) -> FdSet {
        self.streams.lock().set.clone()
    }

    /// `fds` are the socket of a running stream; `gone` is told (`try_send`) when a sweep sees
    /// the connection leave `ESTABLISHED`, so the stream's thread can end without waiting for
    /// its next keepalive. Undone by [`ConnTable::stream_fds_closed`], which must run before
    /// the descriptors are closed.
    pub fn stream_fds_opened(&self, fds: &[RawFd], gone: crossbeam_channel::Sender<()>) {
        let mut st = self.streams.lock();
        for &fd in fds {
            st.set.insert(fd);
            st.wake.insert(fd, gone.clone());
        }
    }

    /// The stream owning `fds` is about to close them.
    pub fn stream_fds_closed(&self, fds: &[RawFd]) {
        let mut st = self.streams.lock();
        for &fd in fds {
            st.set.remove(fd);
            st.wake.remove(&fd);
        }
    }

    /// Checks `TCP_INFO` of a quarter of the stream sockets (round robin, so each is checked
    /// every four sweeps) and wakes the streams whose peer left. One `getsockopt` per socket:
    /// far cheaper than waking every stream thread to check its own socket. Returns how many
    /// it woke.
    fn check_streams(&self) -> usize {
        let batch: Vec<(RawFd, crossbeam_channel::Sender<()>)> = {
            let mut guard = self.streams.lock();
            let st = &mut *guard;
            if st.wake.is_empty() {
                return 0;
            }
            // The batch size is fixed for a whole pass over the descriptors (in number order),
            // so a pass ends within four sweeps even while streams are leaving.
            if st.cursor == 0 {
                st.batch = st.wake.len().div_ceil(4);
            }
            let end = st.set.bits();
            let mut fd = st.cursor;
            let mut batch = Vec::with_capacity(st.batch);
            while batch.len() < st.batch && fd < end {
                if st.set.contains(fd) {
                    if let Some(tx) = st.wake.get(&fd) {
                        batch.push((fd, tx.clone()));
                    }
                }
                fd += 1;
            }
            st.cursor = if fd >= end { 0 } else { fd };
            batch
        };
        let mut woken = 0;
        for (fd, tx) in batch {
            // A stale number (stream just closed) at worst wakes a stream that re-checks its
            // own, verified socket and carries on.
            if tcp_state(fd).is_some_and(|s| s != TCP_ESTABLISHED) && tx.try_send(()).is_ok() {
                woken += 1;
            }
        }
        woken
    }

    /// The accepted connections of this server that are not running streams, as (peer,
    /// descriptor), tiny_http's two descriptors per connection listed separately. Descriptors in
    /// `streams` cost no system call. `full` lists `/proc/self/fd`, which misses nothing but reads
    /// every descriptor's entry (10,000 of them with 10,000 streams: 70 % of the sweep's time);
    /// otherwise, and whenever the listing fails (`EMFILE` too: it needs a descriptor of its
    /// own), numbers are probed upwards from 0 as in [`StreamSocket::find_skipping`], past
    /// `ceiling` and until [`PROBE_SLACK`] numbers past the highest open one, one `getsockname`
    /// each. The kernel hands out the lowest free number, so a probe misses only a connection
    /// whose lower neighbours all closed, before any sweep saw it, leaving a gap wider than the
    /// slack; the next full listing finds it, at most [`FULL_SCAN_EVERY`] sweeps later. The
    /// listener (no peer), files, pipes and sockets with another local address are not listed.
    fn connections(&self, streams: &FdSet, full: bool, ceiling: RawFd) -> Vec<(SocketAddr, RawFd)> {
        let mut found = Vec::new();
        let mut ours = |fd: RawFd, local: Option<SocketAddr>| {
            if listens_on(self.local, local) {
                if let Some(peer) = sock_addr(fd, false) {
                    found.push((peer, fd));
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
                    Ok(local) => {
                        highest = fd;
                        ours(fd, local);
                    }
                }
            }
            fd += 1;
        }
        found
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
        let woken = self.check_streams();
        {
            let stream_fds = self.stream_fds();
            let (full, ceiling) = {
                let mut inner = self.inner.lock();
                inner.sweeps = inner.sweeps.wrapping_add(1);
                (inner.sweeps.is_multiple_of(FULL_SCAN_EVERY), inner.ceiling)
            };
            let found = self.connections(&stream_fds, full, ceiling);
            let mut inner = self.inner.lock();
            inner.ceiling = found.iter().map(|&(_, fd)| fd).max().unwrap_or(-1);
            for (peer, fd) in found {
                if !inner.streaming.contains(&peer) {
                    conns.entry(peer).or_default().push(fd);
                }
            }
        }
        let mut result = Sweep {
            streams_gone: woken,
            ..Sweep::default()
        };
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

/// Makes the kernel find a peer that vanished without a FIN or RST, so the stream's socket
/// leaves `ESTABLISHED` (seen by the sweep's `TCP_INFO` check) and its writes fail:
/// - `TCP_USER_TIMEOUT` = `user_timeout`: sent data unacknowledged this long drops the
///   connection. This is the one that matters for a stream: it writes a heartbeat at least
///   every `--heartbeat`, so there is nearly always data in flight, and keepalive only probes a
///   socket with nothing in flight. Measured before this was set (server in a network
///   namespace, the client's ACKs black-holed, 15 s heartbeat): the socket stayed
///   `ESTABLISHED` with the retransmission timer backing off to its 120 s cap, never a
///   keepalive probe, and the stream closed only after 935 s (`tcp_retries2` = 15).
/// - keepalive (idle 30 s, then 3 probes 10 s apart) for the rare idle moment; with
///   `TCP_USER_TIMEOUT` set, the kernel also gives up on unanswered probes after that time.
pub fn set_keepalive(socket: &mut StreamSocket, user_timeout: Duration) {
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
    let ms = user_timeout.as_millis().min(libc::c_int::MAX as u128) as libc::c_int;
    set(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms);
}
