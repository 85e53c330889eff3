//! A handler's reply and its bytes on the wire: the `X-*` headers are a contract with the
//! tests.

use std::time::Duration;

use tracer_tests::http;

use crate::measure::Span;
use crate::nanos;

/// What a handler produced; serialised by [`Reply::to_bytes`].
pub struct Reply {
    status: u16,
    handler_ns: u64,
    fsync_ns: Option<u64>,
    /// Time this thread spent on a CPU in the handler (the perf task clock), for `X-Cpu-Ns`.
    pub cpu_ns: u64,
    /// Of `handler_ns`, the time spent runnable, waiting for a CPU (`X-Runqueue-Ns`).
    runqueue_ns: Option<u64>,
    /// Time the thread waited for a CPU after the connection's previous response and before
    /// the handler began (`X-Queued-Before-Ns`).
    pub queued_before_ns: Option<u64>,
    /// Time the thread waited for a CPU after the handler, before its response was written
    /// (`X-Queued-After-Ns`).
    pub queued_after_ns: Option<u64>,
    /// Close the connection after sending this reply.
    pub close: bool,
}

impl Reply {
    /// 200, after `handler` of work.
    pub fn ok(handler: Duration) -> Self {
        Self {
            status: 200,
            handler_ns: nanos(handler),
            fsync_ns: None,
            cpu_ns: 0,
            runqueue_ns: None,
            queued_before_ns: None,
            queued_after_ns: None,
            close: false,
        }
    }

    /// 200, after the work measured by `span`.
    pub fn spanned(span: Span) -> Self {
        Self {
            runqueue_ns: Some(span.runqueue_ns),
            ..Self::ok(span.wall)
        }
    }

    /// 200, after `/disk`'s writes and fsync, measured by `span` (of which `fsync` in the
    /// fsync).
    pub fn synced(span: Span, fsync: Duration) -> Self {
        Self {
            fsync_ns: Some(nanos(fsync)),
            ..Self::spanned(span)
        }
    }

    /// `status` without work; the connection stays open.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            ..Self::ok(Duration::ZERO)
        }
    }

    /// `status` without work; the connection closes after it.
    pub fn closing(status: u16) -> Self {
        Self {
            close: true,
            ..Self::status(status)
        }
    }

    /// Head and body in one buffer, for a single `write_all`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut headers = vec![
            ("X-Handler-Ns", self.handler_ns.to_string()),
            ("X-Cpu-Ns", self.cpu_ns.to_string()),
        ];
        if let Some(ns) = self.fsync_ns {
            headers.push(("X-Fsync-Ns", ns.to_string()));
        }
        if let Some(ns) = self.runqueue_ns {
            headers.push(("X-Runqueue-Ns", ns.to_string()));
        }
        if let Some(ns) = self.queued_before_ns {
            headers.push(("X-Queued-Before-Ns", ns.to_string()));
        }
        if let Some(ns) = self.queued_after_ns {
            headers.push(("X-Queued-After-Ns", ns.to_string()));
        }
        if self.close {
            headers.push(("Connection", "close".to_string()));
        }
        let body = match self.status {
            200 => "ok\n".to_string(),
            s => format!("{}\n", http::reason(s).to_ascii_lowercase()),
        };
        http::build_response(self.status, &headers, body.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_format() {
        let span = Span {
            wall: Duration::from_nanos(1500),
            runqueue_ns: 40,
        };
        let reply = Reply::synced(span, Duration::from_nanos(7));
        assert_eq!(
            reply.to_bytes(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Handler-Ns: 1500\r\nX-Cpu-Ns: 0\r\nX-Fsync-Ns: 7\r\nX-Runqueue-Ns: 40\r\n\r\nok\n"
        );
        let not_found = String::from_utf8(Reply::status(404).to_bytes()).unwrap();
        assert!(not_found.starts_with("HTTP/1.1 404 Not Found\r\n"));
    }

    #[test]
    fn closing_reply_format() {
        let span = Span {
            wall: Duration::from_nanos(20),
            runqueue_ns: 5,
        };
        let reply = Reply {
            cpu_ns: 9,
            queued_before_ns: Some(3),
            close: true,
            ..Reply::spanned(span)
        };
        assert_eq!(
            reply.to_bytes(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Handler-Ns: 20\r\nX-Cpu-Ns: 9\r\nX-Runqueue-Ns: 5\r\nX-Queued-Before-Ns: 3\r\nConnection: close\r\n\r\nok\n"
        );
        assert_eq!(
            Reply::closing(400).to_bytes(),
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 12\r\nX-Handler-Ns: 0\r\nX-Cpu-Ns: 0\r\nConnection: close\r\n\r\nbad request\n"
        );
    }
}
