//! `workload serve`: the HTTP/1.1 (or HTTPS) server, a thread per connection, and its
//! endpoints.

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Args;
use openssl::ssl::SslAcceptor;
use tracer_tests::http::{self, RequestLine};

use crate::backend::{BackendChild, BackendClient};
use crate::listener::accept_loop;
use crate::lock_holder::LockHolder;
use crate::measure::{on_cpu_ns, RunDelayMark, Span};
use crate::reply::Reply;
use crate::scratch::ScratchFile;
use crate::{announce, tls, MAX_MS};

/// Largest `kb` `/disk` accepts (1 GiB).
const MAX_KB: u64 = 1024 * 1024;

/// Options of `workload serve`. Every option may be repeated: the last one wins.
#[derive(Args)]
#[command(args_override_self = true)]
pub struct ServeArgs {
    /// Port on 127.0.0.1 (0: any free port)
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Where `/disk` writes its scratch files [default: the system's temp directory]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (goes with --tls-key)
    #[arg(long, value_name = "CERT", requires = "tls_key")]
    tls_cert: Option<String>,
    /// The PEM private key of --tls-cert
    #[arg(long, value_name = "KEY", requires = "tls_cert")]
    tls_key: Option<String>,
    /// Open each connection thread's perf task clock (what X-Cpu-Ns reads) as the connection
    /// starts, before its first request, rather than at its first measured request (the
    /// benchmark's `/` measures nothing and runs without one). The first per-task perf
    /// event on the machine takes milliseconds (`account_event()` enables the
    /// `perf_sched_events` static key and waits for an RCU grace period, kernel/events/core.c,
    /// Linux 6.18): in a request, that is time the tests would find in it and the server
    /// would not.
    #[arg(long)]
    task_clock: bool,
}

/// State shared by every connection of `serve`.
struct Server {
    /// `--task-clock`.
    task_clock: bool,
    lock_holder: LockHolder,
    backend: SocketAddr,
    data_dir: PathBuf,
    next_file: AtomicU64,
}

/// `workload serve`: prints `listening ADDR pid PID`, then serves until killed.
pub fn serve(args: &ServeArgs) -> Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    ensure!(
        data_dir.is_dir(),
        "data dir {} is not a directory",
        data_dir.display()
    );
    // Spawned from the main thread, which lives as long as the process:
    // PR_SET_PDEATHSIG fires when the spawning *thread* exits.
    let backend = BackendChild::spawn()?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, args.port)).context("bind")?;
    let server = Arc::new(Server {
        task_clock: args.task_clock,
        lock_holder: LockHolder::spawn()?,
        backend: backend.addr,
        data_dir,
        next_file: AtomicU64::new(0),
    });
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(tls::acceptor(cert, key)?)),
        _ => None, // clap has them go together
    };
    announce(&format!(
        "listening {} pid {}",
        listener.local_addr()?,
        std::process::id()
    ))?;
    accept_loop(&listener, "conn", move |stream| {
        serve_connection(&server, tls.as_deref(), stream)
    });
    drop(backend);
    Ok(())
}

/// Serves one accepted connection, after a TLS handshake when `tls` is given.
fn serve_connection(server: &Server, tls: Option<&SslAcceptor>, stream: TcpStream) -> Result<()> {
    if server.task_clock {
        on_cpu_ns().context("opening the thread's perf task clock")?;
    }
    stream.set_nodelay(true)?;
    let conn = Connection::new(server);
    match tls {
        None => conn.serve(stream).map(drop),
        Some(acceptor) => {
            let tls = acceptor.accept(stream).context("TLS handshake")?;
            let mut tls = conn.serve(tls)?;
            let _ = tls.shutdown(); // close_notify
            Ok(())
        }
    }
}

/// Per-connection state of `serve`.
struct Connection<'a> {
    server: &'a Server,
    backend: BackendClient,
    /// `/disk`'s file, unique to this connection.
    scratch: ScratchFile,
}

impl<'a> Connection<'a> {
    fn new(server: &'a Server) -> Self {
        let n = server.next_file.fetch_add(1, Ordering::Relaxed);
        let name = format!("workload-{}-{n}.dat", std::process::id());
        Self {
            server,
            backend: BackendClient::new(server.backend),
            scratch: ScratchFile::new(server.data_dir.join(name)),
        }
    }

    /// Serves keep-alive requests on `stream` until EOF, a closing reply or an error; returns
    /// the stream.
    fn serve<S: io::Read + Write>(mut self, mut stream: S) -> Result<S> {
        let mut buf = Vec::with_capacity(1024);
        let mut since_last_response = RunDelayMark::now();
        while let Some(end) = http::read_head(&mut stream, &mut buf).context("read request")? {
            let body = match receive_body(&mut stream, &mut buf, end)? {
                Ok(body) => body,
                Err(refusal) => {
                    stream.write_all(&refusal.to_bytes()).ok();
                    break;
                }
            };
            let reply = self.respond(&buf[..end], body.as_ref(), &since_last_response);
            buf.drain(..end + body.map_or(0, |body| body.len));
            stream
                .write_all(&reply.to_bytes())
                .context("write response")?;
            if reply.close {
                break;
            }
            since_last_response = RunDelayMark::now();
        }
        Ok(stream)
    }

    /// Parses one request head and runs its handler; failures become error replies.
    /// `since_last_response` was marked after this connection's previous response.
    fn respond(
        &mut self,
        head: &[u8],
        body: Option<&Body>,
        since_last_response: &RunDelayMark,
    ) -> Reply {
        let Some(req) = std::str::from_utf8(head)
            .ok()
            .and_then(http::parse_request_line)
        else {
            eprintln!("workload: malformed request head, closing connection");
            return Reply::closing(400);
        };
        if req.method != "GET" && (req.method, req.path) != ("POST", "/upload") {
            return Reply::closing(405);
        }
        // The clock reads cost syscalls: `/`, the benchmark's endpoint, goes without.
        let measure_cpu = req.path != "/";
        let cpu_start = match measure_cpu.then(on_cpu_ns).transpose() {
            Ok(start) => start,
            Err(e) => return clock_failed(&e),
        };
        let queued_before = measure_cpu.then(|| since_last_response.since());
        let mut reply = self.route(&req, body).unwrap_or_else(|e| {
            eprintln!("workload: {} failed: {e:#}", req.path);
            Reply::closing(500)
        });
        // The request's waits for a CPU after the handler (on a busy machine, a thread that
        // spun for its slice is preempted at its next tick or syscall) are measured from a
        // mark taken before the clock is read until the response is composed: what is left
        // before its write is a few µs.
        let after_handler = measure_cpu.then(RunDelayMark::now);
        if let Some(start) = cpu_start {
            match on_cpu_ns() {
                Ok(end) => reply.cpu_ns = end.saturating_sub(start),
                Err(e) => return clock_failed(&e),
            }
        }
        reply.queued_before_ns = queued_before;
        reply.queued_after_ns = after_handler.map(|mark| mark.since());
        reply.close |= req.http10;
        reply
    }

    /// Runs the endpoint `req` names.
    fn route(&mut self, req: &RequestLine, body: Option<&Body>) -> Result<Reply> {
        let ms = || {
            http::query_param(req.query, "ms")
                .filter(|&ms| ms <= MAX_MS)
                .map(Duration::from_millis)
        };
        let reply = match (req.path, ms()) {
            ("/", _) => Reply::ok(Duration::ZERO),
            ("/upload", _) => match body {
                Some(body) => Reply::spanned(body.receipt),
                None => Reply::status(411),
            },
            ("/cpu", Some(d)) => Reply::spanned(Span::measure(|| spin(d)).1),
            ("/sleep", Some(d)) => Reply::spanned(Span::measure(|| thread::sleep(d)).1),
            ("/lock", Some(d)) => Reply::spanned(self.server.lock_holder.wait_for_lock(d)?),
            ("/io", Some(d)) => Reply::spanned(self.backend.round_trip(d)?),
            ("/disk", _) => match http::query_param(req.query, "kb").filter(|&kb| kb <= MAX_KB) {
                Some(kb) => self.disk(kb)?,
                None => Reply::status(400),
            },
            ("/cpu" | "/sleep" | "/lock" | "/io", None) => Reply::status(400),
            _ => Reply::status(404),
        };
        Ok(reply)
    }

    /// `/disk`: writes `kb` KiB at the start of this connection's file (opening it first,
    /// on the connection's first request), then fsyncs.
    fn disk(&mut self, kb: u64) -> Result<Reply> {
        let (fsync, span) = Span::measure(|| self.scratch.write_and_sync(kb));
        Ok(Reply::synced(span, fsync?))
    }
}

/// Largest request body accepted (`/upload`).
const MAX_BODY: usize = 1024 * 1024;

/// A request's body, read.
struct Body {
    len: usize,
    /// Its receipt, as `/upload` reports it: the `100 Continue` written when the client asked
    /// for one, and the wait for the bytes.
    receipt: Span,
}

/// Reads the body of the request whose head ends at `head_end` of `buf` into `buf`, when the
/// head has a `Content-Length`; when it also has `Expect: 100-continue` and the body has not
/// come yet, it first writes the interim `100 Continue` that asks for it, in one `send`, or
/// one `writev` when the query has `continue=writev` (as hyper writes). An oversized body is
/// refused with the reply to send before closing.
fn receive_body<S: io::Read + Write>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    head_end: usize,
) -> Result<std::result::Result<Option<Body>, Reply>> {
    let head = std::str::from_utf8(&buf[..head_end]).unwrap_or_default();
    let Some(len) = http::content_length(head) else {
        return Ok(Ok(None));
    };
    if len > MAX_BODY {
        return Ok(Err(Reply::closing(413)));
    }
    let ask = http::expects_continue(head) && buf.len() < head_end + len;
    let vectored = http::parse_request_line(head)
        .is_some_and(|req| req.query.split('&').any(|kv| kv == "continue=writev"));
    let (received, receipt) = Span::measure(|| -> io::Result<()> {
        if ask && vectored {
            let written = stream.write_vectored(&[io::IoSlice::new(http::CONTINUE)])?;
            if written != http::CONTINUE.len() {
                return Err(io::Error::other("100 Continue written in part"));
            }
        } else if ask {
            stream.write_all(http::CONTINUE)?;
        }
        let mut chunk = [0u8; 4096];
        while buf.len() < head_end + len {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    });
    received.context("read request body")?;
    Ok(Ok(Some(Body { len, receipt })))
}

/// `/cpu`: spins on the CPU for `d` of wall time.
fn spin(d: Duration) -> Duration {
    let start = Instant::now();
    let mut x: u64 = 1;
    while start.elapsed() < d {
        for _ in 0..1000 {
            x = std::hint::black_box(
                x.wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407),
            );
        }
    }
    std::hint::black_box(x);
    start.elapsed()
}

/// The reply when the thread's task clock cannot be read: the tests need the figure.
fn clock_failed(e: &io::Error) -> Reply {
    eprintln!("workload: the perf task clock failed: {e} (the tests run as root)");
    Reply::closing(500)
}
