//! Unit tests of `fd` (beside it, so the module itself stays short).

use super::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::IntoRawFd;

/// Whether the peer of `client` has shut its side: a read gives EOF (within a generous
/// time-out) rather than timing out.
fn sees_eof(client: &mut TcpStream) -> bool {
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 16];
    matches!(client.read(&mut buf), Ok(0))
}

/// The race the old code had, made deterministic: a number is checked, then closed by its
/// owner and handed to a new connection, then acted on. Acting through the checked dup
/// shuts the connection that was checked, and never the one that took the number.
#[test]
fn acting_through_the_checked_dup_never_reaches_a_reused_number() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let local = listener.local_addr().unwrap();
    let mut client_a = TcpStream::connect(local).unwrap();
    let (side_a, peer_a) = listener.accept().unwrap();
    let number = side_a.into_raw_fd();
    // The check (and the dup it acts on later).
    let checked = own_connection(number, local, Some(peer_a)).expect("connection A");
    assert!(matches!(checked, OwnedSocket::Owned(_)));
    // Between check and action, the owner closes the number and a new connection gets it
    // (dup2 does both in one step, so no other thread can take the number meanwhile).
    let mut client_b = TcpStream::connect(local).unwrap();
    let (side_b, _) = listener.accept().unwrap();
    // SAFETY: `number` is ours (taken from side_a); dup2 closes A's descriptor there and
    // makes it B's socket; `side_b_there` then owns it.
    let side_b_there = unsafe {
        assert_eq!(libc::dup2(side_b.as_raw_fd(), number), number);
        TcpStream::from_raw_fd(number)
    };
    drop(side_b);
    assert!(
        !addrs_match(number, local, peer_a),
        "the number is another connection's now: acting on it would shut B"
    );
    // The action.
    checked.shutdown(std::net::Shutdown::Both);
    drop(checked);
    assert!(sees_eof(&mut client_a), "the checked connection is shut");
    assert!(
        !sees_eof(&mut client_b),
        "the one that took the number is not"
    );
    client_b.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    let mut side_b_there = side_b_there;
    side_b_there.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    // And a check on the reused number now refuses it for A.
    assert!(own_connection(number, local, Some(peer_a)).is_none());
}

/// What freeing tiny_http's reader depends on: after `SHUT_RD` a read on the socket returns
/// EOF at once, and writes still reach the client.
#[test]
fn a_socket_shut_for_reading_reads_eof_and_still_writes() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut side, _) = listener.accept().unwrap();
    shut_read(side.as_raw_fd());
    side.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(side.read(&mut buf).unwrap(), 0);
    side.write_all(b"data").unwrap();
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"data");
}

#[test]
fn only_accepted_connections_of_the_listener_are_owned() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let local = listener.local_addr().unwrap();
    let client = TcpStream::connect(local).unwrap();
    let (side, peer) = listener.accept().unwrap();
    assert!(own_connection(side.as_raw_fd(), local, Some(peer)).is_some());
    assert!(
        own_connection(side.as_raw_fd(), local, None).is_some(),
        "any peer"
    );
    let someone = SocketAddr::from(([127, 0, 0, 1], 1));
    assert!(own_connection(side.as_raw_fd(), local, Some(someone)).is_none());
    // The listener (no peer), our client's side (another local address), a file, a closed
    // number.
    assert!(own_connection(listener.as_raw_fd(), local, None).is_none());
    assert!(own_connection(client.as_raw_fd(), local, None).is_none());
    let file = std::fs::File::open("/dev/null").unwrap();
    assert!(own_connection(file.as_raw_fd(), local, None).is_none());
    let closed = file.into_raw_fd();
    // SAFETY: our own descriptor, closed once.
    unsafe { libc::close(closed) };
    assert!(own_connection(closed, local, None).is_none());
}

#[test]
fn a_fd_set_holds_numbers() {
    let mut set = FdSet::default();
    assert!(!set.contains(3));
    set.insert(3);
    set.insert(200);
    assert!(set.contains(3) && set.contains(200) && !set.contains(4));
    set.remove(3);
    assert!(!set.contains(3) && !set.contains(-1));
}
