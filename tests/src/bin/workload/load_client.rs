//! The load generator's keep-alive connections, plain or HTTPS.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslStream};
use tracer_tests::http::{self, HttpClient};

/// Slack past the load deadline before a stuck request times out.
const LOAD_GRACE: Duration = Duration::from_secs(2);

/// A keep-alive load connection, plain or HTTPS.
pub trait LoadConnection {
    fn get(&mut self, path: &str) -> io::Result<http::Response>;
}

impl LoadConnection for HttpClient {
    fn get(&mut self, path: &str) -> io::Result<http::Response> {
        HttpClient::get(self, path)
    }
}

/// An HTTPS keep-alive connection.
struct TlsClient {
    stream: SslStream<TcpStream>,
    buf: Vec<u8>,
}

impl LoadConnection for TlsClient {
    fn get(&mut self, path: &str) -> io::Result<http::Response> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        self.stream.write_all(request.as_bytes())?;
        http::read_response(&mut self.stream, &mut self.buf)
    }
}

/// The server the load goes to.
pub struct Target {
    pub addr: SocketAddr,
    /// HTTPS, with this connector.
    pub tls: Option<SslConnector>,
}

impl Target {
    /// A new connection, handshaken for HTTPS, whose I/O times out [`LOAD_GRACE`] after
    /// `deadline`; `None` on failure.
    pub fn connect(&self, deadline: Instant) -> Option<Box<dyn LoadConnection>> {
        let timeout = deadline.saturating_duration_since(Instant::now()) + LOAD_GRACE;
        match &self.tls {
            None => {
                let client = HttpClient::connect_timeout(&self.addr, timeout).ok()?;
                client.set_timeout(Some(timeout)).ok()?;
                Some(Box::new(client))
            }
            Some(connector) => {
                let tcp = TcpStream::connect_timeout(&self.addr, timeout).ok()?;
                tcp.set_nodelay(true).ok()?;
                tcp.set_read_timeout(Some(timeout)).ok()?;
                tcp.set_write_timeout(Some(timeout)).ok()?;
                let stream = connector.connect("localhost", tcp).ok()?;
                Some(Box::new(TlsClient {
                    stream,
                    buf: Vec::with_capacity(1024),
                }))
            }
        }
    }
}
