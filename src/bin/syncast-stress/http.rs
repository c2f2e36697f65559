//! A small blocking HTTP/1.1 client over `std::net::TcpStream`, and an SSE parser.
//!
//! Every request uses its own connection with `Connection: close`: a keep-alive connection would
//! park one of tiny_http's pool threads per idle client and blur the server's thread count, which
//! is what this tool measures. Streams are read until EOF (syncast writes SSE bodies raw, without
//! chunked encoding, and closes the connection when a stream ends).

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Largest response head or short body read; anything longer is a `bad-response`.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;

/// Why a request failed; [`HttpError::kind`] is the word counted in the summary's errors.
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

impl From<io::Error> for HttpError {
    fn from(e: io::Error) -> HttpError {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => HttpError::Refused,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => HttpError::Timeout,
            _ => HttpError::Io(e),
        }
    }
}

/// Where the server is: `http://host:port`, resolved once.
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
}

/// A short response, body read in full.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// `Retry-After` in seconds, if present and numeric.
    pub fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn connect(target: &Target, timeout: Duration) -> Result<TcpStream, HttpError> {
    let stream = TcpStream::connect_timeout(&target.addr, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

fn write_request(
    stream: &mut TcpStream,
    target: &Target,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), HttpError> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: syncast-stress\r\n",
        target.host
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes)?;
    Ok(())
}

/// Reads a status line and headers.
fn read_head<R: BufRead>(reader: &mut R) -> Result<(u16, Vec<(String, String)>), HttpError> {
    let mut line = String::new();
    let mut total = 0;
    let mut status = None;
    let mut headers = Vec::new();
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
            Some(code) => {
                if l.is_empty() {
                    return Ok((code, headers));
                }
                if let Some((n, v)) = l.split_once(':') {
                    headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
        }
    }
}

fn read_body<R: BufRead>(
    reader: &mut R,
    headers: &[(String, String)],
) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    if header(headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
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
    } else if let Some(len) = header(headers, "content-length") {
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

/// One request on its own connection, response read in full.
pub fn request(
    target: &Target,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response, HttpError> {
    let mut stream = connect(target, timeout)?;
    write_request(&mut stream, target, method, path, headers, body)?;
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader)?;
    let body = read_body(&mut reader, &headers)?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// How opening a stream went.
pub enum Opened {
    /// `200` with an event-stream body: read it with [`EventStream::next`].
    Stream(EventStream),
    /// Any other answer (e.g. 503 at the client cap), body read.
    Refused(Response),
}

/// An open SSE response.
pub struct EventStream {
    reader: BufReader<TcpStream>,
    parser: SseParser,
    pending: std::collections::VecDeque<SseItem>,
    closer: TcpStream,
}

/// A handle that ends a blocked [`EventStream::next`] from another thread (it then sees EOF).
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
    let mut stream = connect(target, timeout)?;
    let mut h: Vec<(&str, &str)> = vec![("Accept", "text/event-stream")];
    h.extend_from_slice(headers);
    write_request(&mut stream, target, "GET", path, &h, b"")?;
    let closer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    let (status, headers) = read_head(&mut reader)?;
    if status != 200 {
        let body = read_body(&mut reader, &headers)?;
        return Ok(Opened::Refused(Response {
            status,
            headers,
            body,
        }));
    }
    if header(&headers, "transfer-encoding").is_some() {
        return Err(HttpError::BadResponse(
            "chunked event streams are not supported".into(),
        ));
    }
    reader.get_ref().set_read_timeout(Some(idle))?;
    Ok(Opened::Stream(EventStream {
        reader,
        parser: SseParser::default(),
        pending: Default::default(),
        closer,
    }))
}

impl EventStream {
    /// A handle to close this stream from another thread.
    pub fn closer(&self) -> Result<Closer, HttpError> {
        Ok(Closer(self.closer.try_clone()?))
    }

    /// The next event or comment; `Ok(None)` at the end of the stream.
    pub fn next(&mut self) -> Result<Option<SseItem>, HttpError> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Ok(Some(item));
            }
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                return Ok(None);
            }
            let n = buf.len();
            self.pending.extend(self.parser.feed(buf));
            self.reader.consume(n);
        }
    }
}

/// One parsed item of an event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A dispatched event.
    Event(SseEvent),
    /// A comment line (`: keepalive`), without the colon and one leading space.
    Comment(String),
    /// A `retry:` field.
    Retry(u64),
}

/// A dispatched event, as `EventSource` would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name, `message` when absent.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last event ID buffer at dispatch (it persists across events, per the spec).
    pub id: Option<String>,
}

/// The WHATWG event-stream parser ("9.2.6 Interpreting an event stream"), fed raw bytes.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
    last_id: Option<String>,
    started: bool,
}

impl SseParser {
    /// Feeds bytes; returns the items completed by them. Lines end at CRLF, LF or CR, also when
    /// the CR and LF arrive in different calls.
    ///
    /// The stress client runs on the same cores as the server, so this is kept cheap: whole
    /// line pieces are copied at once, and the line, name and id buffers are reused (the only
    /// allocations per event are the dispatched event's own strings).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseItem> {
        let mut out = Vec::new();
        let mut rest = bytes;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&rest[..end]);
            self.end_line(&mut out);
            let cr = rest[end] == b'\r';
            rest = &rest[end + 1..];
            if cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.line.extend_from_slice(rest);
        out
    }

    fn end_line(&mut self, out: &mut Vec<SseItem>) {
        let mut skip = 0;
        if !self.started {
            self.started = true;
            // A leading UTF-8 BOM is skipped.
            if self.line.starts_with(&[0xEF, 0xBB, 0xBF]) {
                skip = 3;
            }
        }
        let raw = std::mem::take(&mut self.line);
        self.line_done(&String::from_utf8_lossy(&raw[skip..]), out);
        // Give the buffer back, keeping its capacity for the next line.
        self.line = raw;
        self.line.clear();
    }

    fn line_done(&mut self, line: &str, out: &mut Vec<SseItem>) {
        if line.is_empty() {
            if self.has_data {
                let mut data = std::mem::take(&mut self.data);
                if data.ends_with('\n') {
                    data.pop();
                }
                out.push(SseItem::Event(SseEvent {
                    event: if self.event.is_empty() {
                        "message".into()
                    } else {
                        self.event.clone()
                    },
                    data,
                    id: self.last_id.clone(),
                }));
            }
            self.event.clear();
            self.has_data = false;
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            out.push(SseItem::Comment(
                comment.strip_prefix(' ').unwrap_or(comment).to_string(),
            ));
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => {
                self.event.clear();
                self.event.push_str(value);
            }
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "id" if !value.contains('\0') => match &mut self.last_id {
                Some(id) => {
                    id.clear();
                    id.push_str(value);
                }
                None => self.last_id = Some(value.to_string()),
            },
            "retry" if !value.is_empty() && value.bytes().all(|c| c.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    out.push(SseItem::Retry(ms));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(items: Vec<SseItem>) -> Vec<SseEvent> {
        items
            .into_iter()
            .filter_map(|i| match i {
                SseItem::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn parses_named_events_with_ids_and_comments() {
        let mut p = SseParser::default();
        let items = p.feed(
            b"retry: 2000\n\n: keepalive\n\nevent: message\nid: 7\ndata: {\"a\":1}\n\ndata: x\n\n",
        );
        assert_eq!(items[0], SseItem::Retry(2000));
        assert_eq!(items[1], SseItem::Comment("keepalive".into()));
        let ev = events(items);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].event, "message");
        assert_eq!(ev[0].id.as_deref(), Some("7"));
        assert_eq!(ev[0].data, "{\"a\":1}");
        // The last event ID persists; an unnamed event is a `message`.
        assert_eq!(ev[1].id.as_deref(), Some("7"));
        assert_eq!(ev[1].data, "x");
    }

    #[test]
    fn joins_data_lines_and_handles_every_line_ending_split_anywhere() {
        let text = b"event: e\r\ndata: a\rdata:b\r\ndata\n\n";
        for cut in 0..text.len() {
            let mut p = SseParser::default();
            let mut items = p.feed(&text[..cut]);
            items.extend(p.feed(&text[cut..]));
            let ev = events(items);
            assert_eq!(ev.len(), 1, "cut at {cut}");
            assert_eq!(ev[0].event, "e");
            assert_eq!(ev[0].data, "a\nb\n");
        }
    }

    #[test]
    fn an_event_without_data_is_not_dispatched_and_its_name_is_reset() {
        let mut p = SseParser::default();
        let ev = events(p.feed(b"event: lonely\n\ndata: y\n\n"));
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].event, "message");
    }

    #[test]
    fn an_unfinished_event_is_not_dispatched() {
        let mut p = SseParser::default();
        assert!(events(p.feed(b"data: half\n")).is_empty());
    }

    #[test]
    fn targets_parse_with_and_without_port() {
        let t = Target::parse("http://127.0.0.1:18181/").unwrap();
        assert_eq!(t.addr.port(), 18181);
        assert_eq!(t.host, "127.0.0.1:18181");
        assert!(Target::parse("https://x").is_err());
        assert!(Target::parse("http://127.0.0.1:1/path").is_err());
    }
}
