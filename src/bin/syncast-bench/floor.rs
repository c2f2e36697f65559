//! The floor of one-thread-per-member fan-out on this machine, without syncast: what waking
//! 1,000 parked threads and having each write one event to its own loopback TCP socket costs,
//! read back by one epoll loop. It runs inside the bench process (it measures the machine, not
//! the server) and is the yardstick for the chat target: if a wave of 1,000 wake-and-write
//! steps alone costs more CPU than the target leaves, no server built this way reaches it.
//!
//! Variants, each over the same sockets:
//! - `select`: each member thread parks in a `select!` over five channels, as a chat stream
//!   does (keepalive tick, wake, kick, the sweep's zero-capacity poke, the close channel);
//! - `loop`: no member threads; one thread writes all 1,000 sockets in turn while the reader
//!   reads (what an event-loop server pays for the same writes).

use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::epoll::cvt;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, tick, Sender};

/// One variant's result.
pub struct Floor {
    /// Wall time from the first wake to the last event read, per wave (ms), sorted.
    pub wave_ms: Vec<f64>,
    /// CPU of the member threads (or the writing loop) per delivery, µs.
    pub writer_us: f64,
    /// CPU of the waking and reading thread per delivery, µs.
    pub reader_us: f64,
}

/// Which way the members wait.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `select!` over five channels, as a chat stream.
    Select,
    /// One thread writes every socket.
    Loop,
}

/// A chat message event of the size the bench's chat scenario sends.
const EVENT: &[u8] = b"event: message\nid: 123456\ndata: {\"id\":123456,\"from\":\"p12\",\"text\":\"bench message 123\",\"at\":1764000000000}\n\n";

fn thread_cpu() -> f64 {
    // SAFETY: ru is a plain struct filled in by the call.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Wakes `members` threads (or loops over their sockets) `waves` times, `gap` apart.
pub fn measure(members: usize, waves: usize, gap: Duration, variant: Variant) -> io::Result<Floor> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    // Owned: closed on every return, the early error ones included.
    // SAFETY: plain syscall; a descriptor it returns is ours alone.
    let ep = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
    let mut readers: Vec<TcpStream> = Vec::new();
    let mut writers: Vec<TcpStream> = Vec::new();
    for i in 0..members {
        let c = TcpStream::connect(addr)?;
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        c.set_nonblocking(true)?;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: both descriptors are open; ev is valid for the call.
        cvt(unsafe {
            libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, c.as_raw_fd(), &mut ev)
        })?;
        readers.push(c);
        writers.push(s);
    }
    let mut wakes: Vec<Sender<()>> = Vec::new();
    let mut handles = Vec::new();
    let (cpu_tx, cpu_rx) = crossbeam_channel::unbounded::<f64>();
    match variant {
        Variant::Select => {
            for mut s in writers.drain(..) {
                let (wake, woken) = bounded::<()>(1);
                let cpu_tx = cpu_tx.clone();
                wakes.push(wake);
                let h = std::thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        // As the chat streams.
                        syncast::kit::batch_scheduling();
                        let ticker = tick(Duration::from_secs(25));
                        let (_kick_tx, kick) = bounded::<()>(1);
                        let (_poke_tx, poke) = bounded::<()>(0);
                        let (_close_tx, close) = bounded::<()>(0);
                        let c0 = thread_cpu();
                        loop {
                            let ok = select! {
                                recv(ticker) -> _ => true,
                                recv(woken) -> w => w.is_ok(),
                                recv(kick) -> _ => true,
                                recv(poke) -> _ => true,
                                recv(close) -> _ => true,
                            };
                            if !ok || s.write_all(EVENT).is_err() {
                                break;
                            }
                        }
                        let _ = cpu_tx.send(thread_cpu() - c0);
                    })?;
                handles.push(h);
            }
        }
        Variant::Loop => {
            // One writing thread, as an event-loop server in its own process would be: it
            // writes while the reader reads.
            let (wake, woken) = bounded::<()>(1);
            wakes.push(wake);
            let mut writers = std::mem::take(&mut writers);
            let h = std::thread::Builder::new().spawn(move || {
                let c0 = thread_cpu();
                'waves: while woken.recv().is_ok() {
                    for w in &mut writers {
                        if w.write_all(EVENT).is_err() {
                            break 'waves;
                        }
                    }
                }
                let _ = cpu_tx.send(thread_cpu() - c0);
            })?;
            handles.push(h);
        }
    }
    // Let every member park first.
    std::thread::sleep(Duration::from_millis(300));
    let fds: Vec<RawFd> = readers.iter().map(|r| r.as_raw_fd()).collect();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buf = vec![0u8; 64 * 1024];
    let mut wave_ms = Vec::with_capacity(waves);
    let per_wave = members * EVENT.len();
    let mut reader_cpu = 0.0;
    for _ in 0..waves {
        std::thread::sleep(gap);
        let t = Instant::now();
        let c0 = thread_cpu();
        for w in &wakes {
            let _ = w.try_send(());
        }
        let mut got = 0;
        while got < per_wave {
            // SAFETY: events is writable for its length.
            let n = unsafe {
                libc::epoll_wait(
                    ep.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    1000,
                )
            };
            if n <= 0 {
                return Err(io::Error::other("floor: a wave did not arrive within 1 s"));
            }
            for e in &events[..n as usize] {
                let fd = fds[e.u64 as usize];
                loop {
                    // SAFETY: buf is writable for its length.
                    let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                    if r <= 0 {
                        break;
                    }
                    got += r as usize;
                }
            }
        }
        wave_ms.push(t.elapsed().as_secs_f64() * 1e3);
        reader_cpu += thread_cpu() - c0;
    }
    drop(wakes);
    let mut writer_cpu = 0.0;
    for h in handles {
        let _ = h.join();
    }
    for c in cpu_rx.try_iter() {
        writer_cpu += c;
    }
    let deliveries = (members * waves) as f64;
    wave_ms.sort_by(|a, b| a.total_cmp(b));
    Ok(Floor {
        wave_ms,
        writer_us: writer_cpu / deliveries * 1e6,
        reader_us: reader_cpu / deliveries * 1e6,
    })
}
