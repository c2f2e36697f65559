//! A naive thread-per-connection server, the bench's yardstick: std only (no tiny_http, no
//! crossbeam, no shared hub), one thread per connection with a 64 KiB stack, blocking accept,
//! read and write. It speaks just enough of syncast's wire format for the bench's own load
//! client to drive it unchanged, so syncast's CPU can be set beside what the simplest possible
//! server of the same shape costs on the same machine in the same run.
//!
//! `syncast-bench --naive-server tick|chat [--listen ADDR]` runs it (default `127.0.0.1:0`); its
//! first line on standard output is `naive server listening on http://ADDR`, as syncast's is,
//! and it runs until killed. [`crate::proc::ServerProc::start_naive`] starts it as the bench's
//! child. Both modes answer `GET /healthz` with 200.
//!
//! - **tick**: `GET /sse/call/{anything}` is a tick-mode alarm stream: the SSE head, `retry:`
//!   and `data: {"alarm":false}`, then every 500 ms the thread sleeps and writes the event
//!   again, until a write fails.
//! - **chat**: `GET /chat/stream?...` (any query: `name=` or `token=`) is a member: its thread
//!   blocks on its own bounded channel (std `sync_channel`, 1,024 events) and writes each event
//!   it receives. `POST /chat/join` answers 201 `{"token":"naive","name":"naive"}` (the bench's
//!   chat scenario joins first). `POST /chat/messages` (any body, read up to its
//!   `Content-Length`) gets the next id and 202 `{"id":N}`; one broadcaster thread encodes each
//!   message once as syncast does (`event: message`, `id: N`, `data:
//!   {"from":…,"text":…,"ts":…,"id":N}`) and sends it to every member's channel (a member whose
//!   channel is full or gone is dropped, as syncast cuts off a slow one).
//!
//! Every other request gets 404. One request per connection (`Connection: close`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Stack of every connection thread, as syncast's stream threads.
const STACK: usize = 64 * 1024;
/// Tick interval, as syncast's default `--tick`.
const TICK: Duration = Duration::from_millis(500);
/// Events a chat member may be behind before it is dropped.
const QUEUE: usize = 1024;
/// Longest request head read.
const MAX_HEAD: usize = 16 * 1024;

/// What the server serves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Tick-mode alarm streams.
    Tick,
    /// Chat members and messages.
    Chat,
}

impl Mode {
    /// `tick` or `chat`.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "tick" => Some(Mode::Tick),
            "chat" => Some(Mode::Chat),
            _ => None,
        }
    }
}

/// The chat side: each member's sender, and the broadcaster's inbox.
struct Room {
    members: Mutex<Vec<SyncSender<Arc<[u8]>>>>,
    next_id: AtomicU64,
    inbox: SyncSender<(u64, String)>,
}

/// Runs the server on `listen` until the process is killed.
pub fn run(mode: Mode, listen: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    let (inbox, posts) = sync_channel::<(u64, String)>(QUEUE);
    let room = Arc::new(Room {
        members: Mutex::new(Vec::new()),
        next_id: AtomicU64::new(0),
        inbox,
    });
    if mode == Mode::Chat {
        let r = room.clone();
        std::thread::Builder::new()
            .name("broadcaster".into())
            .stack_size(STACK)
            .spawn(move || broadcast(&r, posts))?;
    }
    println!("naive server listening on http://{addr}");
    io::stdout().flush()?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let room = room.clone();
        // A refused thread drops the connection: the client sees it closed.
        let _ = std::thread::Builder::new()
            .stack_size(STACK)
            .spawn(move || serve(mode, conn, &room));
    }
    Ok(())
}

fn broadcast(room: &Room, posts: Receiver<(u64, String)>) {
    for (id, text) in posts {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let data = format!(
            r#"{{"from":"naive","text":"{}","ts":{ts},"id":{id}}}"#,
            json_escape(&text)
        );
        let event: Arc<[u8]> = format!("event: message\nid: {id}\ndata: {data}\n\n")
            .into_bytes()
            .into();
        let mut members = room.members.lock().unwrap_or_else(|e| e.into_inner());
        members.retain(|m| match m.try_send(event.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        });
    }
}

fn serve(mode: Mode, mut conn: TcpStream, room: &Room) {
    let Some((method, path, body_len, rest)) = read_head(&mut conn) else {
        return;
    };
    let route = path.split('?').next().unwrap_or("");
    match (mode, method.as_str(), route) {
        (_, "GET", "/healthz") => reply(&mut conn, "200 OK", "ok"),
        (Mode::Tick, "GET", p) if p.starts_with("/sse/call/") => tick(conn),
        (Mode::Chat, "GET", "/chat/stream") => member(conn, room),
        (Mode::Chat, "POST", "/chat/join") => reply(
            &mut conn,
            "201 Created",
            r#"{"token":"naive","name":"naive"}"#,
        ),
        (Mode::Chat, "POST", "/chat/messages") => {
            let mut body = rest;
            while body.len() < body_len {
                let mut chunk = [0u8; 4096];
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => body.extend_from_slice(&chunk[..n]),
                }
            }
            let id = room.next_id.fetch_add(1, Ordering::Relaxed) + 1;
            let text = String::from_utf8_lossy(&body[..body_len]).into_owned();
            if room.inbox.send((id, text)).is_ok() {
                reply(&mut conn, "202 Accepted", &format!(r#"{{"id":{id}}}"#));
            }
        }
        _ => reply(&mut conn, "404 Not Found", r#"{"error":"not found"}"#),
    }
}

const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
    Cache-Control: no-cache\r\nConnection: close\r\n\r\nretry: 2000\n\n";

fn tick(mut conn: TcpStream) {
    const EVENT: &[u8] = b"data: {\"alarm\":false}\n\n";
    if conn.write_all(SSE_HEAD).is_err() || conn.write_all(EVENT).is_err() {
        return;
    }
    loop {
        std::thread::sleep(TICK);
        if conn.write_all(EVENT).is_err() {
            return;
        }
    }
}

fn member(mut conn: TcpStream, room: &Room) {
    let (tx, rx) = sync_channel::<Arc<[u8]>>(QUEUE);
    room.members
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(tx);
    if conn.write_all(SSE_HEAD).is_err() {
        return;
    }
    for event in rx {
        if conn.write_all(&event).is_err() {
            return;
        }
    }
}

fn reply(conn: &mut TcpStream, status: &str, body: &str) {
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Reads a request head: method, path, `Content-Length`, and the bytes read past the head.
fn read_head(conn: &mut TcpStream) -> Option<(String, String, usize, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let body_len = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    Some((method, path, body_len, buf[end + 4..].to_vec()))
}

/// `text` as the inside of a JSON string (std only, as the rest of this server).
fn json_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}
