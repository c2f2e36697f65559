//! Unit tests of `watch` (beside it, so the module itself stays short).

use super::*;
use crossbeam_channel::{bounded, Receiver};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};

/// Epoll alone, no sweep.
const EPOLL: Paths = Paths {
    epoll_state: true,
    sweep: SweepBy::Off,
};
/// The sweep alone, by `sock_diag`.
const DIAG: Paths = Paths {
    epoll_state: false,
    sweep: SweepBy::Auto,
};
/// The sweep alone, by `TCP_INFO`.
const TCP_INFO: Paths = Paths {
    epoll_state: false,
    sweep: SweepBy::TcpInfo,
};

/// Long enough for any one way to have seen a socket: a whole `TCP_INFO` round and a bit.
fn a_while(paths: Paths) -> Duration {
    if paths.epoll_state {
        RETELL * 2
    } else {
        SWEEP * (TCP_INFO_ROUND as u32 + 1)
    }
}

struct Rig {
    listener: TcpListener,
    watcher: Arc<Watcher>,
    threads: Threads,
    metrics: Arc<Metrics>,
}

fn rig(paths: Paths) -> Rig {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let threads = Threads::new();
    let metrics = Arc::new(Metrics::default());
    let watcher = Watcher::new(
        listener.local_addr().unwrap(),
        threads.clone(),
        metrics.clone(),
        paths,
    )
    .unwrap();
    Rig {
        listener,
        watcher,
        threads,
        metrics,
    }
}

/// A connection whose accepted side is watched with its read half shut, like a stream's.
/// (`watched` first: fields drop in order, and a socket is unregistered before it closes.)
struct Conn {
    watched: Option<Watched>,
    client: TcpStream,
    side: TcpStream,
    gone: Receiver<()>,
}

impl Rig {
    fn conn(&self) -> Conn {
        let client = TcpStream::connect(self.listener.local_addr().unwrap()).unwrap();
        let (side, _) = self.listener.accept().unwrap();
        fd::shut_read(side.as_raw_fd());
        let (tx, gone) = bounded(0);
        let watched = Some(self.watcher.watch(side.as_raw_fd(), tx).unwrap());
        Conn {
            watched,
            client,
            side,
            gone,
        }
    }

    fn counts(&self) -> Vec<u64> {
        How::ALL.iter().map(|&h| self.metrics.gone(h)).collect()
    }
}

/// Told within a generous bound: the `TCP_INFO` sweep reaches a socket within 10 s.
fn told(gone: &Receiver<()>) -> bool {
    gone.recv_timeout(Duration::from_secs(60)).is_ok()
}

fn rst(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: linger is a valid struct of the size passed.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn epoll_alone_tells_a_fin_and_a_reset_and_the_thread_lives_only_while_needed() {
    let r = rig(EPOLL);
    assert!(
        !r.watcher.running(),
        "no thread before the first registration"
    );
    let fin = r.conn();
    let reset = r.conn();
    let open = r.conn();
    assert!(r.watcher.running());
    drop(fin.client);
    assert!(told(&fin.gone), "a FIN is told");
    rst(&reset.client);
    drop(reset.client);
    assert!(told(&reset.gone), "a reset is told");
    // A poke missed is sent again: the FIN'd stream is told again until it unregisters.
    assert!(told(&fin.gone), "told again");
    assert!(
        open.gone.recv_timeout(a_while(EPOLL)).is_err(),
        "an open one is never told"
    );
    assert_eq!(r.counts(), vec![1, 1, 0], "each once: fin, hangup");
    drop((fin.watched, reset.watched, fin.side, reset.side));
    assert_eq!(r.watcher.watched(), 1);
    // The last one leaves: the thread ends by itself and is joined.
    drop(open);
    wait_until("the watcher thread to end", || r.threads.live() == 0);
    assert!(!r.watcher.running());
    assert_eq!(r.threads.reap(), 1);
    // And starts again with the next registration.
    let again = r.conn();
    assert!(r.watcher.running());
    drop(again.client);
    assert!(told(&again.gone));
    assert_eq!(r.counts(), vec![2, 1, 0]);
}

fn the_sweep_alone_tells_a_fin(paths: Paths, sock_diag: u64) {
    let r = rig(paths);
    let fin = r.conn();
    let open = r.conn();
    drop(fin.client);
    assert!(told(&fin.gone), "the sweep tells a FIN");
    assert!(open.gone.recv_timeout(a_while(paths)).is_err());
    assert_eq!(r.counts(), vec![0, 0, 1], "found by the sweep");
    assert_eq!(r.metrics.watcher_sock_diag.get(), sock_diag);
    drop((fin.watched, open));
}

#[test]
fn the_sweep_alone_tells_a_fin_with_sock_diag() {
    the_sweep_alone_tells_a_fin(DIAG, 1);
}

#[test]
fn the_sweep_alone_tells_a_fin_by_reading_tcp_info() {
    the_sweep_alone_tells_a_fin(TCP_INFO, 0);
}

/// A stream leaves (unregistered first, as `SseWriter` does) while its socket stays open
/// elsewhere and its client then closes; a new stream's socket takes over its descriptor
/// number. The watcher tells neither: not the old token (gone), not the new stream (its
/// socket is another, with another inode, and established).
fn a_reused_descriptor_number_is_not_confused(paths: Paths) {
    let r = rig(paths);
    let old = r.conn();
    let Conn {
        client: old_client,
        side: old_side,
        watched,
        gone: old_gone,
    } = old;
    drop(watched);
    let number = old_side.into_raw_fd();
    // SAFETY: `number` is ours; dup keeps the old socket open under another number.
    let old_keep = unsafe { TcpStream::from_raw_fd(libc::dup(number)) };
    let new_client = TcpStream::connect(r.listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = r.listener.accept().unwrap();
    // SAFETY: dup2 onto our own number replaces the old socket there with the new one in
    // one step (no other thread can take the number meanwhile); `number` is then owned
    // by `new_side` alone.
    assert_eq!(unsafe { libc::dup2(accepted.as_raw_fd(), number) }, number);
    drop(accepted);
    let new_side = unsafe { TcpStream::from_raw_fd(number) };
    fd::shut_read(number);
    let (tx, new_gone) = bounded(0);
    let new_watched = r.watcher.watch(number, tx).unwrap();
    drop(old_client);
    wait_until("the old socket in CLOSE_WAIT", || {
        fd::established(old_keep.as_raw_fd()) == Some(false)
    });
    assert!(
        new_gone.recv_timeout(a_while(paths)).is_err(),
        "the old connection's FIN is not the new stream's"
    );
    assert!(old_gone.try_recv().is_err());
    assert_eq!(r.counts(), vec![0, 0, 0]);
    drop(new_client);
    assert!(told(&new_gone));
    drop((new_watched, new_side, old_keep));
}

#[test]
fn a_reused_descriptor_number_is_not_confused_by_epoll() {
    a_reused_descriptor_number_is_not_confused(EPOLL);
}

#[test]
fn a_reused_descriptor_number_is_not_confused_by_sock_diag() {
    a_reused_descriptor_number_is_not_confused(DIAG);
}

#[test]
fn a_reused_descriptor_number_is_not_confused_by_tcp_info() {
    a_reused_descriptor_number_is_not_confused(TCP_INFO);
}

#[test]
fn shutdown_wakes_the_thread_and_it_is_joined() {
    let r = rig(Paths::ALL);
    let c = r.conn();
    assert!(r.watcher.running());
    r.watcher.shutdown();
    let (joined, left) = r.threads.join_all(Instant::now() + Duration::from_secs(20));
    assert_eq!((joined, left), (1, 0));
    assert!(!r.watcher.running());
    // No thread starts after shutdown; unregistering still works.
    let late = r.conn();
    assert!(!r.watcher.running());
    drop((c, late));
    assert_eq!(r.watcher.watched(), 0);
}

/// A client and the accepted side, read by the watcher into a channel of `capacity`.
fn lines_conn(r: &Rig, capacity: usize) -> (TcpStream, Watched, Receiver<Input>) {
    let client = TcpStream::connect(r.listener.local_addr().unwrap()).unwrap();
    let (side, _) = r.listener.accept().unwrap();
    let (tx, rx) = bounded(capacity);
    let watched = r.watcher.read_lines(Arc::new(side), tx).unwrap();
    (client, watched, rx)
}

fn next_input(rx: &Receiver<Input>) -> Input {
    rx.recv_timeout(Duration::from_secs(20))
        .expect("an input in time")
}

#[test]
fn lines_come_in_order_then_eof_and_the_thread_ends_with_the_last_reader() {
    use std::io::Write;
    let r = rig(EPOLL);
    let (mut client, watched, rx) = lines_conn(&r, 16);
    client.write_all(b"/name bob\r\nhel").unwrap();
    assert_eq!(next_input(&rx), Input::Line(b"/name bob"[..].into()));
    client.write_all(b"lo\n").unwrap();
    assert_eq!(next_input(&rx), Input::Line(b"hello"[..].into()));
    // The last line and the FIN in one go: the line first, then EOF.
    client.write_all(b"bye").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(next_input(&rx), Input::Line(b"bye"[..].into()));
    assert_eq!(next_input(&rx), Input::Eof);
    assert!(rx.recv_timeout(RETELL * 2).is_err(), "nothing after EOF");
    assert_eq!(r.metrics.chat_tcp_lines.get(), 3);
    assert_eq!(r.counts(), vec![0, 0, 0], "not counted as a stream gone");
    drop(watched);
    wait_until("the watcher thread to end", || r.threads.live() == 0);
}

#[test]
fn a_full_channel_pauses_reading_and_a_resume_reads_on_with_nothing_lost() {
    use std::io::Write;
    let r = rig(EPOLL);
    let (mut client, watched, rx) = lines_conn(&r, 2);
    let writer = std::thread::spawn(move || {
        for i in 0..2000 {
            client.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        client
    });
    let mut got = 0;
    while got < 2000 {
        match next_input(&rx) {
            Input::Line(l) => assert_eq!(&*l, format!("line {got}").as_bytes()),
            other => panic!("{other:?}"),
        }
        got += 1;
        watched.resume();
    }
    assert!(r.metrics.chat_tcp_paused.get() > 0, "it did pause");
    // A reset after the lines: EOF.
    let client = writer.join().unwrap();
    rst(&client);
    drop(client);
    assert_eq!(next_input(&rx), Input::Eof);
}

#[test]
fn a_false_alarm_stops_being_told() {
    let r = rig(EPOLL);
    let c = r.conn();
    // As if a read of a reused number had marked it.
    let t = c.watched.as_ref().unwrap().token;
    assert_eq!(r.watcher.inner.mark(&[t], How::Sweep).len(), 1);
    assert!(told(&c.gone), "told again while marked");
    c.watched.as_ref().unwrap().still_open();
    assert!(c.gone.recv_timeout(RETELL * 3).is_err());
}
