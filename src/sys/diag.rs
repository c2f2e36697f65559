//! TCP sockets by state, from the kernel's socket table: one `NETLINK_SOCK_DIAG` dump
//! (`SOCK_DIAG_BY_FAMILY`, the interface `ss` uses) instead of a system call per socket.
//!
//! Why the server needs it: a stream's socket has its read half shut (`SHUT_RD`, to free
//! tiny_http's pool thread, see `crate::http::socket`), and from then on `poll`/`epoll` report
//! `EPOLLIN | EPOLLRDHUP` on it for good (tcp_poll: those follow `sk_shutdown & RCV_SHUTDOWN`),
//! so a peer's FIN cannot be seen through epoll. It shows as the TCP state `CLOSE_WAIT`, which a
//! dump filtered by state (`idiag_states`) lists for the whole host in well under a millisecond
//! (measured in docs/performance.md): the kernel walks its established-socket hash and builds
//! a message only for sockets in the asked states, so the cost hardly depends on how many
//! streams are open.
//!
//! Unprivileged (as `ss`); unavailable where `AF_NETLINK` sockets are refused (a seccomp or
//! systemd `RestrictAddressFamilies` sandbox without it, some containers): [`SockDiag::open`]
//! or the first dump fails, and the caller falls back to per-socket `TCP_INFO` reads.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// `idiag_states` bit of `TCP_CLOSE_WAIT` (8): the peer sent FIN, we have not closed.
pub(crate) const CLOSE_WAIT: u32 = 1 << 8;

// From <linux/netlink.h>, <linux/sock_diag.h> and <linux/inet_diag.h> (stable kernel ABI).
const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;

#[repr(C)]
#[derive(Clone, Copy)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagSockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

#[repr(C)]
struct Request {
    hdr: NlMsgHdr,
    req: InetDiagReqV2,
}

const HDR: usize = mem::size_of::<NlMsgHdr>();

/// One socket a dump listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DiagSocket {
    /// Its inode number: what `fstat` of a descriptor of it gives as `st_ino`.
    pub(crate) inode: u32,
    /// Its local address (a v4-mapped IPv6 address is given as IPv4, as std does).
    pub(crate) local: SocketAddr,
    /// Its peer's address (likewise).
    pub(crate) peer: SocketAddr,
    /// Its TCP state (`TCP_CLOSE_WAIT` is 8).
    pub(crate) state: u8,
}

/// A `NETLINK_SOCK_DIAG` socket and the buffer its answers are read into.
pub(crate) struct SockDiag {
    fd: OwnedFd,
    buf: Vec<u8>,
    seq: u32,
}

/// Reads up to this much of a dump per `recv` (the kernel fills what the buffer holds).
const BUF: usize = 32 * 1024;

impl SockDiag {
    /// Opens the socket. Fails where netlink sockets are refused (`EAFNOSUPPORT`, `EPERM`,
    /// `EACCES`), or the process is out of descriptors.
    pub(crate) fn open() -> io::Result<SockDiag> {
        // SAFETY: plain syscall; the descriptor it returns is ours alone.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A kernel that never answered must not hang the caller's thread: a receive time-out
        // turns that into an error (the caller then falls back).
        crate::sys::fd::set_recv_timeout(fd.as_raw_fd(), Duration::from_secs(1))?;
        Ok(SockDiag {
            fd,
            buf: vec![0; BUF],
            seq: 0,
        })
    }

    /// Calls `found` for every TCP socket of this network namespace in one of `states` (a
    /// bitmask such as [`CLOSE_WAIT`]) whose local port is `port`, of the IPv6 family if `v6`
    /// (which includes the v4-mapped connections of a `::` listener) or else IPv4. Returns how
    /// many the kernel listed in those states (of any port).
    pub(crate) fn dump(
        &mut self,
        v6: bool,
        states: u32,
        port: u16,
        mut found: impl FnMut(DiagSocket),
    ) -> io::Result<usize> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let request = Request {
            hdr: NlMsgHdr {
                len: mem::size_of::<Request>() as u32,
                kind: SOCK_DIAG_BY_FAMILY,
                flags: NLM_F_REQUEST | NLM_F_DUMP,
                seq,
                pid: 0,
            },
            req: InetDiagReqV2 {
                family: if v6 { libc::AF_INET6 } else { libc::AF_INET } as u8,
                protocol: libc::IPPROTO_TCP as u8,
                ext: 0,
                pad: 0,
                states,
                // SAFETY: plain data; all-zero is a valid value (a wildcard socket id).
                id: unsafe { mem::zeroed() },
            },
        };
        // SAFETY: sockaddr_nl is plain data; zeroed is valid (pid 0: the kernel).
        let mut kernel: libc::sockaddr_nl = unsafe { mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: request and kernel are valid for the lengths passed.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                &request as *const Request as *const libc::c_void,
                mem::size_of::<Request>(),
                0,
                &kernel as *const libc::sockaddr_nl as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut listed = 0;
        loop {
            // SAFETY: buf is writable for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            match parse(&self.buf[..n as usize], seq, port, &mut found, &mut listed)? {
                Parsed::More => {}
                Parsed::Done => return Ok(listed),
            }
        }
    }
}

enum Parsed {
    More,
    Done,
}

/// Reads one `recv`'s worth of netlink messages. Messages of another sequence number (left
/// over from an earlier dump that failed half-way) are skipped.
fn parse(
    mut buf: &[u8],
    seq: u32,
    port: u16,
    found: &mut impl FnMut(DiagSocket),
    listed: &mut usize,
) -> io::Result<Parsed> {
    while buf.len() >= HDR {
        // SAFETY: buf holds at least HDR bytes; read_unaligned copes with any alignment.
        let hdr: NlMsgHdr = unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const NlMsgHdr) };
        let len = hdr.len as usize;
        if len < HDR || len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink message",
            ));
        }
        let body = &buf[HDR..len];
        if hdr.seq == seq {
            match hdr.kind {
                NLMSG_DONE => return Ok(Parsed::Done),
                NLMSG_ERROR => {
                    // The body starts with the negated errno.
                    let errno = body
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(0);
                    return Err(if errno < 0 {
                        io::Error::from_raw_os_error(-errno)
                    } else {
                        io::Error::new(io::ErrorKind::InvalidData, "netlink error")
                    });
                }
                SOCK_DIAG_BY_FAMILY if body.len() >= mem::size_of::<InetDiagMsg>() => {
                    // SAFETY: body holds a whole inet_diag_msg; read_unaligned as above.
                    let msg: InetDiagMsg =
                        unsafe { std::ptr::read_unaligned(body.as_ptr() as *const InetDiagMsg) };
                    *listed += 1;
                    if u16::from_be(msg.id.sport) == port {
                        if let Some(s) = socket_of(&msg) {
                            found(s);
                        }
                    }
                }
                _ => {}
            }
        }
        // Messages are padded to 4 bytes (NLMSG_ALIGN).
        let next = (len + 3) & !3;
        buf = buf.get(next..).unwrap_or(&[]);
    }
    Ok(Parsed::More)
}

fn socket_of(msg: &InetDiagMsg) -> Option<DiagSocket> {
    let addr = |words: &[u32; 4], port: u16| -> Option<SocketAddr> {
        let ip = match msg.family as libc::c_int {
            libc::AF_INET => IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes())),
            libc::AF_INET6 => {
                let mut b = [0u8; 16];
                for (i, w) in words.iter().enumerate() {
                    b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
                }
                let v6 = Ipv6Addr::from(b);
                match v6.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => IpAddr::V6(v6),
                }
            }
            _ => return None,
        };
        Some(SocketAddr::new(ip, u16::from_be(port)))
    };
    Some(DiagSocket {
        inode: msg.inode,
        local: addr(&msg.id.src, msg.id.sport)?,
        peer: addr(&msg.id.dst, msg.id.dport)?,
        state: msg.state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn inode(fd: std::os::fd::RawFd) -> u32 {
        crate::sys::fd::inode(fd).expect("fstat") as u32
    }

    #[test]
    fn a_dump_lists_exactly_the_connections_whose_peer_sent_fin() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let mut pairs = Vec::new();
        for _ in 0..4 {
            let client = TcpStream::connect(local).unwrap();
            let (side, peer) = listener.accept().unwrap();
            pairs.push((client, side, peer));
        }
        let mut diag = match SockDiag::open() {
            Ok(d) => d,
            Err(e) => panic!("sock_diag unavailable here: {e}"),
        };
        // The accepted sides stay open (in `pairs`): they are what sits in CLOSE_WAIT.
        let closed: Vec<(u32, SocketAddr)> = pairs
            .iter_mut()
            .take(2)
            .map(|(client, side, peer)| {
                client.shutdown(std::net::Shutdown::Both).unwrap();
                (inode(side.as_raw_fd()), *peer)
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut got = Vec::new();
            diag.dump(false, CLOSE_WAIT, local.port(), |s| got.push(s))
                .expect("dump");
            got.sort_by_key(|s| s.inode);
            let mut want: Vec<(u32, SocketAddr)> = closed.clone();
            want.sort();
            let seen: Vec<(u32, SocketAddr)> = got.iter().map(|s| (s.inode, s.peer)).collect();
            if seen == want {
                assert!(got.iter().all(|s| s.local == local && s.state == 8));
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "dump saw {got:?}, want {want:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Another port's sockets are never listed, and one dump after another works (the
        // sequence numbers keep them apart).
        let mut other = 0;
        diag.dump(false, CLOSE_WAIT, local.port().wrapping_add(1), |_| {
            other += 1
        })
        .unwrap();
        assert_eq!(other, 0);
    }

    #[test]
    fn v4_mapped_addresses_read_as_ipv4() {
        let mut msg: InetDiagMsg = unsafe { mem::zeroed() };
        msg.family = libc::AF_INET6 as u8;
        let mapped: Ipv6Addr = "::ffff:127.0.0.1".parse().unwrap();
        let o = mapped.octets();
        for i in 0..4 {
            msg.id.src[i] =
                u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]);
        }
        msg.id.dst = msg.id.src;
        msg.id.sport = 8080u16.to_be();
        msg.id.dport = 40000u16.to_be();
        let s = socket_of(&msg).unwrap();
        assert_eq!(s.local, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(s.peer, "127.0.0.1:40000".parse::<SocketAddr>().unwrap());
    }

    #[test]
    fn a_netlink_error_is_an_error_and_a_short_message_is_refused() {
        let mut buf = Vec::new();
        let hdr = NlMsgHdr {
            len: (HDR + 4) as u32,
            kind: NLMSG_ERROR,
            flags: 0,
            seq: 7,
            pid: 0,
        };
        // SAFETY: NlMsgHdr is plain data.
        buf.extend_from_slice(unsafe {
            std::slice::from_raw_parts(&hdr as *const NlMsgHdr as *const u8, HDR)
        });
        buf.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        let mut listed = 0;
        let err = parse(&buf, 7, 1, &mut |_| {}, &mut listed).err().unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        // The same message under another sequence number is skipped.
        assert!(matches!(
            parse(&buf, 8, 1, &mut |_| {}, &mut listed),
            Ok(Parsed::More)
        ));
        assert!(parse(&buf[..HDR + 2], 7, 1, &mut |_| {}, &mut listed).is_err());
    }
}
