//! A small blocking HTTP/1.1 client over `std::net::TcpStream`: one request on its own
//! connection, and event streams read with the kit's SSE parser.
//!
//! [`request`] sends `Connection: close`: a keep-alive connection would park one of
//! tiny_http's pool threads per idle client and blur the server's thread count, which the tools
//! measure. Streams are read until EOF (syncast writes SSE bodies raw, without chunked
//! encoding, and closes the connection when a stream ends). The pieces ([`connect`],
//! [`request_bytes`], [`read_head`], [`read_body`]) are public for clients that write their own
//! requests on raw sockets (an epoll loop, a test that sends a malformed request).

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::sse::{self, Item};

/// Largest response head read; anything longer is a `bad-response`.
const MAX_HEAD: usize = 64 * 1024;
/// Largest short body read.
const MAX_BODY: usize = 1024 * 1024;

/// Why a request failed; [`HttpError::kind`] is the word the stress tool counts it under.
#[derive(Debug)]
pub enum HttpError {
    /// Nothing listens (ECONNREFUSED).
    Refused,
    /// Connect, read or write timed out.
    Timeout,
    /// Any other socket error.
    Io(io::Error),
    /// The response could not be parsed.
    BadResponse(String),
}

impl HttpError {
    /// The stable word this error is counted under.
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Refused => "refused",
            HttpError::Timeout => "timeout",
            HttpError::Io(_) => "io",
            HttpError::BadResponse(_) => "bad-response",
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Refused => f.write_str("connection refused"),
            HttpError::Timeout => f.write_str("timed out"),
            HttpError::Io(e) => write!(f, "{e}"),
            HttpError::BadResponse(m) => write!(f, "bad response: {m}"),
        }
    }
}

impl std::error::Error for HttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HttpError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for HttpError {
    fn from(e: io::Error) -> HttpError {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => HttpError::Refused,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => HttpError::Timeout,
            _ => HttpError::Io(e),
        }
    }
}

/// Where the server is: an address and the `Host` header value.
#[derive(Debug, Clone)]
pub struct Target {
    /// The resolved address.
    pub addr: SocketAddr,
    /// The `Host` header value.
    pub host: String,
}

impl Target {
    /// Parses `http://HOST[:PORT][/]` (default port 80) and resolves it.
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("--url {url:?}: only http:// URLs are supported"))?;
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            return Err(format!(
                "--url {url:?}: use http://HOST:PORT without a path"
            ));
        }
        let with_port = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("--url {url:?}: cannot resolve: {e}"))?
            .next()
            .ok_or_else(|| format!("--url {url:?}: no address"))?;
        Ok(Target {
            addr,
            host: host.to_string(),
        })
    }

    /// The server at `addr` (its `Host` is the address).
    pub fn of(addr: SocketAddr) -> Target {
        Target {
            addr,
            host: addr.to_string(),
        }
    }
}

/// A response's status line and headers.
#[derive(Debug, Clone)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// The status line, then each header line, as received (without CRLF).
    pub lines: Vec<String>,
}

impl Head {
    /// The first header called `name` (compared case-insensitively), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.lines.iter().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// `Retry-After` in seconds, if present and numeric.
    pub fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs)
    }
}

/// A short response, body read in full.
#[derive(Debug)]
pub struct Response {
    /// The status code (the head's).
    pub status: u16,
    /// The status line and headers.
    pub head: Head,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// `Retry-After` in seconds, if present and numeric.
    pub fn retry_after(&self) -> Option<Duration> {
        self.head.retry_after()
    }
}

/// Connects to `addr` within `timeout`, with `TCP_NODELAY` and `timeout` as the read and write
/// time-out.
pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, HttpError> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// A request as bytes: the request line, `Host`, `headers` in order, `Content-Length` when
/// there is a body or the method is `POST`/`PUT`, then the body.
pub fn request_bytes(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Reads a status line and headers.
pub fn read_head<R: BufRead>(reader: &mut R) -> Result<Head, HttpError> {
    let mut line = String::new();
    let mut total = 0;
    let mut status = None;
    let mut lines = Vec::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        total += n;
        if n == 0 {
            return Err(HttpError::BadResponse("connection closed in head".into()));
        }
        if total > MAX_HEAD {
            return Err(HttpError::BadResponse("head too long".into()));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        match status {
            None => {
                let mut parts = l.splitn(3, ' ');
                let version = parts.next().unwrap_or_default();
                let code = parts.next().and_then(|c| c.parse::<u16>().ok());
                match code {
                    Some(c) if version.starts_with("HTTP/1.") => status = Some(c),
                    _ => return Err(HttpError::BadResponse(format!("status line {l:?}"))),
                }
            }
            Some(status) if l.is_empty() => return Ok(Head { status, lines }),
            Some(_) => {}
        }
        lines.push(l.to_string());
    }
}

/// Reads the body that follows `head`: chunked, by `Content-Length`, or to EOF.
pub fn read_body<R: BufRead>(reader: &mut R, head: &Head) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    if head
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = size.trim().split(';').next().unwrap_or_default();
            let n = usize::from_str_radix(size, 16)
                .map_err(|_| HttpError::BadResponse(format!("chunk size {size:?}")))?;
            if n == 0 {
                break;
            }
            if body.len() + n > MAX_BODY {
                return Err(HttpError::BadResponse("body too long".into()));
            }
            let start = body.len();
            body.resize(start + n, 0);
            reader.read_exact(&mut body[start..])?;
            let mut crlf = String::new();
            reader.read_line(&mut crlf)?;
        }
    } else if let Some(len) = head.header("content-length") {
        let n: usize = len
            .parse()
            .map_err(|_| HttpError::BadResponse(format!("content-length {len:?}")))?;
        if n > MAX_BODY {
            return Err(HttpError::BadResponse("body too long".into()));
        }
        body.resize(n, 0);
        reader.read_exact(&mut body)?;
    } else {
        reader.take(MAX_BODY as u64 + 1).read_to_end(&mut body)?;
        if body.len() > MAX_BODY {
            return Err(HttpError::BadResponse("body too long".into()));
        }
    }
    Ok(body)
}

/// One request on its own connection (`Connection: close`), the response read in full.
pub fn request(
    target: &Target,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response, HttpError> {
    let mut stream = connect(target.addr, timeout)?;
    let mut h: Vec<(&str, &str)> = vec![("Connection", "close"), ("User-Agent", "syncast-kit")];
    h.extend_from_slice(headers);
    stream.write_all(&request_bytes(&target.host, method, path, &h, body))?;
    let mut reader = BufReader::new(stream);
    let head = read_head(&mut reader)?;
    let body = read_body(&mut reader, &head)?;
    Ok(Response {
        status: head.status,
        head,
        body,
    })
}

/// How opening a stream went.
pub enum Opened {
    /// `200` with an event-stream body: read it with [`EventStream::next_item`].
    Stream(EventStream),
    /// Any other answer (e.g. a 4xx), body read.
    Refused(Response),
    /// `200` whose first event is `refused`: the server asks to come back after `retry_ms`
    /// (at the client cap, out of threads, shutting down, the store failing, the room full).
    Retry(RetryLater),
}

/// A stream refused with `event: refused`: why, and when to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryLater {
    /// The `reason` of the event (`max-clients`, `thread-spawn`, `shutting-down`, ...).
    pub reason: String,
    /// The delay the server asked for (also sent as `retry:`).
    pub retry_ms: u64,
}

impl RetryLater {
    /// The delay asked for.
    pub fn after(&self) -> Duration {
        Duration::from_millis(self.retry_ms)
    }

    /// Reads a `refused` event's data; `None` if it is not one.
    pub fn parse(data: &str) -> Option<RetryLater> {
        let v: serde_json::Value = serde_json::from_str(data).ok()?;
        Some(RetryLater {
            reason: v.get("reason")?.as_str()?.to_string(),
            retry_ms: v.get("retry_ms")?.as_u64()?,
        })
    }
}

/// An open SSE response.
pub struct EventStream {
    items: sse::Reader<BufReader<TcpStream>>,
    /// Items read ahead by [`open_stream`] (up to the first event), handed out first.
    pending: std::collections::VecDeque<Item>,
    closer: TcpStream,
}

/// A handle that ends a blocked [`EventStream::next_item`] from another thread (it then sees EOF).
pub struct Closer(TcpStream);

impl Closer {
    /// Shuts the connection down both ways; idempotent.
    pub fn close(&self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

/// `GET path` expecting `text/event-stream`. `idle` bounds the wait for any byte (keepalives
/// included) once streaming.
pub fn open_stream(
    target: &Target,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
    idle: Duration,
) -> Result<Opened, HttpError> {
    let mut stream = connect(target.addr, timeout)?;
    let mut h: Vec<(&str, &str)> = vec![
        ("Connection", "close"),
        ("User-Agent", "syncast-kit"),
        ("Accept", "text/event-stream"),
    ];
    h.extend_from_slice(headers);
    stream.write_all(&request_bytes(&target.host, "GET", path, &h, b""))?;
    let closer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    let head = read_head(&mut reader)?;
    if head.status != 200 {
        let body = read_body(&mut reader, &head)?;
        return Ok(Opened::Refused(Response {
            status: head.status,
            head,
            body,
        }));
    }
    if head.header("transfer-encoding").is_some() {
        return Err(HttpError::BadResponse(
            "chunked event streams are not supported".into(),
        ));
    }
    reader.get_ref().set_read_timeout(Some(idle))?;
    let mut es = EventStream {
        items: sse::Reader::new(reader),
        pending: Default::default(),
        closer,
    };
    // A refusal is a 200 whose first event is `refused`: read up to the first event to tell.
    loop {
        match es.items.next_item()? {
            None => break,
            Some(Item::Event { event, data, .. }) if event == "refused" => {
                return match RetryLater::parse(&data) {
                    Some(r) => Ok(Opened::Retry(r)),
                    None => Err(HttpError::BadResponse(format!("bad refused event: {data}"))),
                };
            }
            Some(item) => {
                let first_event = matches!(item, Item::Event { .. });
                es.pending.push_back(item);
                if first_event {
                    break;
                }
            }
        }
    }
    Ok(Opened::Stream(es))
}

impl EventStream {
    /// A handle to close this stream from another thread.
    pub fn closer(&self) -> Result<Closer, HttpError> {
        Ok(Closer(self.closer.try_clone()?))
    }

    /// The next event, comment or retry; `Ok(None)` at the end of the stream.
    pub fn next_item(&mut self) -> Result<Option<Item>, HttpError> {
        if let Some(item) = self.pending.pop_front() {
            return Ok(Some(item));
        }
        Ok(self.items.next_item()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_and_without_port() {
        let t = Target::parse("http://127.0.0.1:18181/").unwrap();
        assert_eq!(t.addr.port(), 18181);
        assert_eq!(t.host, "127.0.0.1:18181");
        assert!(Target::parse("https://x").is_err());
        assert!(Target::parse("http://127.0.0.1:1/path").is_err());
    }

    #[test]
    fn a_head_is_read_and_its_body_by_length_or_chunks() {
        let mut raw: &[u8] =
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 2\r\n\r\nno";
        let head = read_head(&mut raw).unwrap();
        assert_eq!(head.status, 503);
        assert_eq!(head.lines[0], "HTTP/1.1 503 Service Unavailable");
        assert_eq!(head.header("retry-after"), Some("1"));
        assert_eq!(head.retry_after(), Some(Duration::from_secs(1)));
        assert_eq!(read_body(&mut raw, &head).unwrap(), b"no");
        let mut raw: &[u8] =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let head = read_head(&mut raw).unwrap();
        assert_eq!(read_body(&mut raw, &head).unwrap(), b"abcde");
        assert!(read_head(&mut &b"SSH-2.0\r\n"[..]).is_err());
    }
}
