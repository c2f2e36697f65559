//! Many SSE clients on one thread: non-blocking sockets driven by `epoll`, so 10,000 streams
//! cost the bench 10,000 descriptors and no threads (the machine allows 32,768 pids in all).

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use syncast::kit::http::request_bytes;
use syncast::kit::sse::{ItemRef, Parser};

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// `connect` in progress.
    Connecting,
    /// Request written, waiting for the response head.
    Sent,
    /// Head read: status 200, events flowing.
    Streaming,
    /// Closed by us, by the peer, or refused (non-200).
    Closed,
}

/// One client connection.
pub struct Conn {
    fd: RawFd,
    /// Its state.
    pub state: State,
    request: Vec<u8>,
    buf: Vec<u8>,
    /// The event stream after the response head.
    parser: Parser,
    /// Events received (dispatched, as `EventSource` would).
    pub events: u64,
    /// HTTP status of the response head (0 until read).
    pub status: u16,
}

/// A complete event block received on connection `conn` at `at`.
pub struct Event<'a> {
    /// Index of the connection.
    pub conn: usize,
    /// The event type (`message` when the stream names none).
    pub name: &'a str,
    /// The last event ID, if any and numeric.
    pub id: Option<u64>,
    /// When it was read.
    pub at: Instant,
}

/// The client set.
pub struct Clients {
    ep: RawFd,
    addr: SocketAddr,
    /// All connections ever opened, by index.
    pub conns: Vec<Conn>,
    /// Whether to hand each event to the callback (chat); otherwise only count.
    pub parse: bool,
}

/// A libc return code as a result (negative: the OS error).
pub fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Clients {
    /// An empty set connecting to `addr` (IPv4 only).
    pub fn new(addr: SocketAddr) -> io::Result<Clients> {
        // SAFETY: plain syscall.
        let ep = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Clients {
            ep,
            addr,
            conns: Vec::new(),
            parse: false,
        })
    }

    /// Connections opened from now on go to `addr` (another node); open ones stay where they are.
    pub fn retarget(&mut self, addr: SocketAddr) {
        self.addr = addr;
    }

    fn connect(&mut self, request: Vec<u8>) -> io::Result<()> {
        let SocketAddr::V4(v4) = self.addr else {
            return Err(io::Error::other("IPv4 only"));
        };
        // SAFETY: plain syscalls on a descriptor we own; sockaddr_in is fully initialised.
        unsafe {
            let fd = cvt(libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            ))?;
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = v4.port().to_be();
            sa.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            let rc = libc::connect(
                fd,
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINPROGRESS) {
                    libc::close(fd);
                    return Err(e);
                }
            }
            let idx = self.conns.len();
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLOUT | libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                u64: idx as u64,
            };
            if let Err(e) = cvt(libc::epoll_ctl(self.ep, libc::EPOLL_CTL_ADD, fd, &mut ev)) {
                libc::close(fd);
                return Err(e);
            }
            self.conns.push(Conn {
                fd,
                state: State::Connecting,
                request,
                buf: Vec::new(),
                parser: Parser::new(),
                events: 0,
                status: 0,
            });
        }
        Ok(())
    }

    /// Opens one stream per request, at most `inflight` waiting for their head at once, until
    /// all are streaming or `timeout` passes. Returns how many are streaming.
    pub fn open<F>(
        &mut self,
        requests: Vec<Vec<u8>>,
        inflight: usize,
        timeout: Duration,
        on_event: &mut F,
    ) -> io::Result<usize>
    where
        F: FnMut(Event<'_>),
    {
        let deadline = Instant::now() + timeout;
        let mut todo = requests.into_iter();
        let mut waiting = 0usize;
        let mut left = todo.len();
        while (left > 0 || waiting > 0) && Instant::now() < deadline {
            while waiting < inflight {
                match todo.next() {
                    Some(rq) => {
                        self.connect(rq)?;
                        waiting += 1;
                        left -= 1;
                    }
                    None => break,
                }
            }
            let before = self.pending();
            self.poll(Duration::from_millis(50), on_event)?;
            let _ = before;
            waiting = self.pending();
        }
        Ok(self.streaming())
    }

    /// Opens one stream per request at `rate` connections a second (the offered load of a
    /// ramp), then polls until every connection has received at least one event (its first:
    /// a chat member's `welcome`) or `timeout` passes since the first connect. Returns how many
    /// got their first event and the time from the first connect to the last first event.
    pub fn open_paced<F>(
        &mut self,
        requests: Vec<Vec<u8>>,
        rate: u32,
        timeout: Duration,
        on_event: &mut F,
    ) -> io::Result<(usize, Duration)>
    where
        F: FnMut(Event<'_>),
    {
        let t0 = Instant::now();
        let deadline = t0 + timeout;
        let first = self.conns.len();
        let n = requests.len();
        let every = Duration::from_secs(1) / rate.max(1);
        let mut todo = requests.into_iter().enumerate().peekable();
        let mut last_first_event = t0;
        let mut done = vec![false; n];
        let mut welcomed = 0usize;
        let mut last_scan = t0;
        while welcomed < n && Instant::now() < deadline {
            let now = Instant::now();
            while let Some((i, _)) = todo.peek() {
                if t0 + every * (*i as u32) > now {
                    break;
                }
                let (_, rq) = todo.next().expect("peeked");
                self.connect(rq)?;
            }
            let wait = match todo.peek() {
                Some((i, _)) => (t0 + every * (*i as u32)).saturating_duration_since(now),
                None => Duration::from_millis(20),
            };
            self.poll(wait.min(Duration::from_millis(20)), on_event)?;
            let now = Instant::now();
            // A scan of every connection, at most every 5 ms (the ramp time is read to that).
            if now.duration_since(last_scan) < Duration::from_millis(5) {
                continue;
            }
            last_scan = now;
            for (k, c) in self.conns[first..].iter().enumerate() {
                if !done[k] && (c.events > 0 || c.state == State::Closed) {
                    done[k] = true;
                    if c.events > 0 {
                        welcomed += 1;
                        last_first_event = now;
                    }
                }
            }
            if todo.peek().is_none() && done.iter().all(|d| *d) {
                break;
            }
        }
        Ok((welcomed, last_first_event.duration_since(t0)))
    }

    fn pending(&self) -> usize {
        self.conns
            .iter()
            .filter(|c| matches!(c.state, State::Connecting | State::Sent))
            .count()
    }

    /// Connections streaming now.
    pub fn streaming(&self) -> usize {
        self.conns
            .iter()
            .filter(|c| c.state == State::Streaming)
            .count()
    }

    /// Data events received on all connections.
    pub fn events(&self) -> u64 {
        self.conns.iter().map(|c| c.events).sum()
    }

    /// Waits up to `wait` for socket activity and handles it.
    pub fn poll<F>(&mut self, wait: Duration, on_event: &mut F) -> io::Result<()>
    where
        F: FnMut(Event<'_>),
    {
        let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        // SAFETY: evs is writable for its length.
        let n = unsafe {
            libc::epoll_wait(
                self.ep,
                evs.as_mut_ptr(),
                evs.len() as libc::c_int,
                wait.as_millis() as libc::c_int,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        for ev in &evs[..n as usize] {
            let idx = ev.u64 as usize;
            let flags = ev.events;
            self.handle(idx, flags, on_event);
        }
        Ok(())
    }

    /// Polls until `until` returns true or `timeout` passes.
    pub fn run_until<F, U>(&mut self, timeout: Duration, on_event: &mut F, mut until: U)
    where
        F: FnMut(Event<'_>),
        U: FnMut(&Clients) -> bool,
    {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !until(self) {
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(20));
            if self.poll(wait, on_event).is_err() {
                return;
            }
        }
    }

    fn handle<F: FnMut(Event<'_>)>(&mut self, idx: usize, flags: u32, on_event: &mut F) {
        let ep = self.ep;
        let parse = self.parse;
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        if c.state == State::Closed {
            return;
        }
        if c.state == State::Connecting && flags & libc::EPOLLOUT as u32 != 0 {
            let mut err: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: err is a writable c_int of the size passed.
            unsafe {
                libc::getsockopt(
                    c.fd,
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    &mut err as *mut libc::c_int as *mut libc::c_void,
                    &mut len,
                )
            };
            // A request of a few hundred bytes fits the empty send buffer in one write.
            // SAFETY: request is readable for its length.
            let w = unsafe {
                libc::write(
                    c.fd,
                    c.request.as_ptr() as *const libc::c_void,
                    c.request.len(),
                )
            };
            if err != 0 || w != c.request.len() as isize {
                close(ep, c);
                return;
            }
            c.state = State::Sent;
            c.request = Vec::new();
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                u64: idx as u64,
            };
            // SAFETY: fd registered above.
            unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_MOD, c.fd, &mut ev) };
        }
        if flags & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 == 0
        {
            return;
        }
        let mut chunk = [0u8; 16 * 1024];
        let mut eof = false;
        loop {
            // SAFETY: chunk is writable for its length.
            let r =
                unsafe { libc::read(c.fd, chunk.as_mut_ptr() as *mut libc::c_void, chunk.len()) };
            if r > 0 {
                c.buf.extend_from_slice(&chunk[..r as usize]);
                if (r as usize) < chunk.len() {
                    break;
                }
            } else if r == 0 {
                eof = true;
                break;
            } else {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock {
                    eof = true;
                }
                break;
            }
        }
        let at = Instant::now();
        if c.state == State::Sent {
            if let Some(end) = find(&c.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&c.buf[..end]).to_string();
                c.status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                c.buf.drain(..end + 4);
                if c.status == 200 {
                    c.state = State::Streaming;
                } else {
                    close(ep, c);
                    return;
                }
            }
        }
        if c.state == State::Streaming {
            // The bench shares the cores with the server it measures: the kit's parser, driven
            // incrementally, allocates nothing per event, and no JSON is read (the event's `id:`
            // field identifies a chat message).
            let events = &mut c.events;
            c.parser.feed_with(&c.buf, |item| {
                if let ItemRef::Event { event, id, .. } = item {
                    *events += 1;
                    if parse {
                        on_event(Event {
                            conn: idx,
                            name: event,
                            id: id.and_then(|id| id.parse().ok()),
                            at,
                        });
                    }
                }
            });
            c.buf.clear();
        }
        if eof {
            close(ep, c);
        }
    }

    /// Sends FIN on every open connection (`shutdown(SHUT_WR)`), as a closing browser tab does,
    /// whatever is still unread (closing a socket with unread data sends RST instead). Each is
    /// closed once the server closes its side (read returns 0 in [`Clients::poll`]).
    pub fn fin_all(&mut self) {
        for c in &self.conns {
            if c.state != State::Closed {
                // SAFETY: fd is ours and open (state not Closed).
                unsafe { libc::shutdown(c.fd, libc::SHUT_WR) };
            }
        }
    }

    /// Closes every connection (FIN, as a browser tab closing).
    pub fn close_all(&mut self) {
        let ep = self.ep;
        for c in &mut self.conns {
            close(ep, c);
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.close_all();
        // SAFETY: ep is ours.
        unsafe { libc::close(self.ep) };
    }
}

fn close(ep: RawFd, c: &mut Conn) {
    if c.state != State::Closed {
        // SAFETY: fd is ours and open (state not Closed); closing also removes it from epoll.
        unsafe {
            libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, c.fd, std::ptr::null_mut());
            libc::close(c.fd);
        }
        c.state = State::Closed;
        c.buf = Vec::new();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A GET request for an SSE stream.
pub fn get(addr: SocketAddr, path: &str) -> Vec<u8> {
    request_bytes(
        &addr.to_string(),
        "GET",
        path,
        &[("Accept", "text/event-stream")],
        b"",
    )
}
