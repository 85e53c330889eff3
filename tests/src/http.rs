//! Minimal blocking HTTP/1.1 pieces shared by the `workload` server, its load
//! generator and the integration tests. Request bodies only with `Content-Length`
//! (`POST /upload`), responses always carry `Content-Length`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Largest request or response head accepted; anything bigger is an error.
pub const MAX_HEAD: usize = 16 * 1024;

/// Read/write timeout a fresh [`HttpClient`] starts with, so a stuck server
/// fails a test instead of hanging it.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Offset just past the first `\r\n\r\n` in `buf`, if there is one.
pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Reads from `stream`, appending to `buf`, until `buf` starts with a complete
/// head; returns the head's length (bytes after it stay in `buf`).
///
/// `Ok(None)` is a clean end of stream before the first byte of a message.
pub fn read_head(stream: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find_head_end(buf) {
            return Ok(Some(end));
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid_data("message head too large"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "end of stream inside a message head",
                ))
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The request line of a request, with the target split at `?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLine<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Everything after `?` (empty when there is none).
    pub query: &'a str,
    /// `HTTP/1.0`: the connection closes after the response.
    pub http10: bool,
}

/// Parses the first line of a request head (`GET /p?q HTTP/1.1`).
pub fn parse_request_line(head: &str) -> Option<RequestLine<'_>> {
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Some(RequestLine {
        method,
        path,
        query,
        http10: version == "HTTP/1.0",
    })
}

/// The interim response to a request sent with `Expect: 100-continue`: the server
/// asks for the body (RFC 9110 section 10.1.1).
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Value of the first header called `name` (case-insensitive) in a message head.
pub fn head_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// A request head's `Content-Length`, if it has a valid one.
pub fn content_length(head: &str) -> Option<usize> {
    head_header(head, "Content-Length").and_then(|v| v.parse().ok())
}

/// Whether a request head asks for a `100 Continue` before its body is sent.
pub fn expects_continue(head: &str) -> bool {
    head_header(head, "Expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
}

/// Value of `key` in a `a=1&b=2` query string parsed as `u64`; `None` when the
/// key is absent or its value is not a number.
pub fn query_param(query: &str, key: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

/// Reason phrase for the few status codes the workload uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

/// Serialises a complete response (head and body) into one buffer, so it can
/// be sent with a single `write_all`. `Content-Length` comes first, then
/// `headers` in order.
pub fn build_response(status: u16, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Header `name` as a number; panics when it is absent or not one (a test's contract
    /// with its server).
    pub fn number(&self, name: &str) -> u64 {
        self.header(name)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no number {name} in {:?}", self.headers))
    }

    /// `X-Handler-Ns` as a number; 0 when absent or malformed.
    pub fn handler_ns(&self) -> u64 {
        self.header("X-Handler-Ns")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// `X-Runqueue-Ns`: of the handler time, what the server thread spent waiting for a CPU
    /// (0 if absent).
    pub fn runqueue_ns(&self) -> u64 {
        self.header("X-Runqueue-Ns")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `X-Queued-After-Ns`: what the server thread waited for a CPU after the handler, before
    /// it wrote the response (0 if absent).
    pub fn queued_after_ns(&self) -> u64 {
        self.header("X-Queued-After-Ns")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `X-Queued-Before-Ns`: what the server thread waited for a CPU between the connection's
    /// previous response and the handler's start (0 if absent).
    pub fn queued_before_ns(&self) -> u64 {
        self.header("X-Queued-Before-Ns")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `X-Cpu-Ns`: the server thread's time on a CPU in the handler, as the server measured it
    /// (the workload: by its perf task clock; 0 if absent).
    pub fn cpu_ns(&self) -> u64 {
        self.header("X-Cpu-Ns")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Parses a response status line and header lines.
fn parse_response_head(head: &str) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| invalid_data(format!("bad status line {status_line:?}")))?;
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| invalid_data(format!("bad header line {l:?}")))
        })
        .collect::<io::Result<_>>()?;
    Ok((status, headers))
}

/// Reads one response from `stream`; `buf` carries bytes between calls.
pub fn read_response(stream: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<Response> {
    let end = read_head(stream, buf)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        )
    })?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| invalid_data("non-UTF-8 head"))?;
    let (status, headers) = parse_response_head(head)?;
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| invalid_data("response without a valid Content-Length"))?;
    buf.drain(..end);
    let mut chunk = [0u8; 4096];
    while buf.len() < len {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "end of stream inside a response body",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf.drain(..len).collect();
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// A keep-alive HTTP/1.1 client over one blocking `TcpStream`.
#[derive(Debug)]
pub struct HttpClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpClient {
    /// Connects (with [`DEFAULT_CLIENT_TIMEOUT`] as read/write timeout).
    pub fn connect(addr: impl ToSocketAddrs) -> io::Result<Self> {
        Self::from_stream(TcpStream::connect(addr)?)
    }

    /// Like [`HttpClient::connect`] but bounds the connect itself by `timeout`.
    pub fn connect_timeout(addr: &SocketAddr, timeout: Duration) -> io::Result<Self> {
        Self::from_stream(TcpStream::connect_timeout(addr, timeout)?)
    }

    fn from_stream(stream: TcpStream) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        let client = Self {
            stream,
            buf: Vec::with_capacity(1024),
        };
        client.set_timeout(Some(DEFAULT_CLIENT_TIMEOUT))?;
        Ok(client)
    }

    /// Sets both the read and the write timeout (`None` blocks forever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)
    }

    /// Sends `GET path` (one `write_all`) and reads the whole response.
    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        self.stream.write_all(request.as_bytes())?;
        read_response(&mut self.stream, &mut self.buf)
    }

    /// Sends `POST path` with `body` the way a client that asks first does: the head with
    /// `Expect: 100-continue` (one `write_all`), then, once the server's interim `100
    /// Continue` has come, `pause` (a client slow to send its body), then the body (one
    /// `write_all`); reads the final response.
    pub fn post_after_continue(
        &mut self,
        path: &str,
        body: &[u8],
        pause: Duration,
    ) -> io::Result<Response> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\
             Expect: 100-continue\r\n\r\n",
            body.len()
        );
        self.stream.write_all(head.as_bytes())?;
        let end = read_head(&mut self.stream, &mut self.buf)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "closed before 100 Continue")
        })?;
        if &self.buf[..end] != CONTINUE {
            return Err(invalid_data(format!(
                "expected a 100 Continue, got {:?}",
                String::from_utf8_lossy(&self.buf[..end])
            )));
        }
        self.buf.drain(..end);
        std::thread::sleep(pause);
        self.stream.write_all(body)?;
        read_response(&mut self.stream, &mut self.buf)
    }

    /// The underlying socket (e.g. to inspect the local port).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

fn invalid_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        assert_eq!(query_param("ms=20", "ms"), Some(20));
        assert_eq!(query_param("kb=256&ms=5", "ms"), Some(5));
        assert_eq!(query_param("kb=256&ms=5", "kb"), Some(256));
        assert_eq!(query_param("", "ms"), None);
        assert_eq!(query_param("ms", "ms"), None);
        assert_eq!(query_param("ms=abc", "ms"), None);
        assert_eq!(query_param("ms=-1", "ms"), None);
        assert_eq!(query_param("xms=3", "ms"), None);
    }

    #[test]
    fn request_heads_with_a_body() {
        let head = "POST /upload HTTP/1.1\r\nHost: x\r\ncontent-length: 12\r\n\
                    Expect: 100-Continue\r\n\r\n";
        assert_eq!(content_length(head), Some(12));
        assert!(expects_continue(head));
        let plain = "POST /upload HTTP/1.1\r\nContent-Length: x\r\n\r\n";
        assert_eq!(content_length(plain), None);
        assert!(!expects_continue(plain));
        assert_eq!(
            head_header("GET /Expect: 1 HTTP/1.1\r\n\r\n", "Expect"),
            None
        );
    }

    #[test]
    fn request_lines() {
        let head = "GET /sleep?ms=20 HTTP/1.1\r\nHost: x\r\n\r\n";
        let line = parse_request_line(head).unwrap();
        assert_eq!(
            line,
            RequestLine {
                method: "GET",
                path: "/sleep",
                query: "ms=20",
                http10: false,
            }
        );
        let line = parse_request_line("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!((line.path, line.query, line.http10), ("/", "", true));
        assert!(parse_request_line("GET /\r\n\r\n").is_none());
        assert!(parse_request_line("GET / HTTP/1.1 x\r\n\r\n").is_none());
        assert!(parse_request_line("GET nope HTTP/1.1\r\n\r\n").is_none());
        assert!(parse_request_line("").is_none());
    }

    #[test]
    fn head_detection() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n"), None);
        let mut buf = Vec::new();
        assert_eq!(read_head(&mut &b""[..], &mut buf).unwrap(), None);
        assert!(read_head(&mut &b"GET /"[..], &mut buf).is_err());
    }

    #[test]
    fn response_round_trip() {
        let mut wire = build_response(200, &[("X-Handler-Ns", "42".into())], b"ok\n");
        wire.extend(build_response(404, &[], b"not found\n"));
        assert!(wire
            .starts_with(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Handler-Ns: 42\r\n\r\nok\n"));
        let (mut reader, mut buf) = (&wire[..], Vec::new());
        let first = read_response(&mut reader, &mut buf).unwrap();
        assert_eq!((first.status, first.body.as_slice()), (200, &b"ok\n"[..]));
        assert_eq!(first.header("x-handler-ns"), Some("42"));
        assert_eq!(first.handler_ns(), 42);
        let second = read_response(&mut reader, &mut buf).unwrap();
        assert_eq!((second.status, second.handler_ns()), (404, 0));
        assert_eq!(second.body, b"not found\n");
        assert!(read_response(&mut reader, &mut buf).is_err());
    }
}
