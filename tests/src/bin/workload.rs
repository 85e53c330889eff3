//! `workload`: a deliberately simple thread-per-connection HTTP/1.1 server whose
//! endpoints each spend a known time in one latency cause, the backend it talks
//! to for `/io`, and a keep-alive load generator.
//!
//! ```text
//! workload serve   [--port P] [--data-dir D] [--tls-cert CERT --tls-key KEY]
//! workload backend [--port P]
//! workload load    --addr HOST:PORT --path PATH [--path PATH ...]
//!                  [--connections C] [--duration SECS] [--requests N] [--tls on|off]
//! ```
//!
//! Endpoints of `serve` (each response carries `X-Cpu-Ns`, the thread CPU time the handler
//! used, and `X-Handler-Ns`, the time spent in the endpoint's characteristic work; `/cpu`,
//! `/sleep`, `/lock` and `/io` also carry `X-Runqueue-Ns`, the part of that time the thread spent
//! waiting for a CPU, from the kernel's own account):
//! `/` (nothing), `/cpu?ms=N` (busy spin), `/sleep?ms=N` (nanosleep),
//! `/lock?ms=N` (futex wait on a mutex held by another thread),
//! `/io?ms=N` (blocking round trip to the backend, which sleeps N ms),
//! `/disk?kb=N` (N KiB of writes plus fsync; also `X-Fsync-Ns`).
//!
//! With `--tls-cert`/`--tls-key` it serves HTTPS instead: each connection does an explicit
//! `SSL_accept`, then `SSL_read`/`SSL_write` (the system's libssl.so.3, through the
//! `openssl` crate). An `HTTP/1.0` request closes its connection
//! after the response (what `openssl s_time -www` expects).

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use openssl::ssl::{SslAcceptor, SslConnector, SslFiletype, SslMethod, SslStream, SslVerifyMode};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Seek, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};
use tracer_tests::http::{self, HttpClient, RequestLine};
use tracer_tests::LoadResult;

/// Largest `ms` any endpoint accepts.
const MAX_MS: u64 = 60_000;
/// Largest `kb` `/disk` accepts (1 GiB).
const MAX_KB: u64 = 1024 * 1024;
/// Size of each `write()` made by `/disk`.
const DISK_CHUNK: usize = 64 * 1024;
/// Non-zero data written by `/disk`.
static DISK_DATA: [u8; DISK_CHUNK] = [0xa5; DISK_CHUNK];
/// Lets the backend check that the server that started it is still alive.
const PARENT_PID_ENV: &str = "WORKLOAD_PARENT_PID";
/// Pause before a load connection reconnects after an error.
const RECONNECT_DELAY: Duration = Duration::from_millis(10);
/// Slack past the load deadline before a stuck request times out.
const LOAD_GRACE: Duration = Duration::from_secs(2);

/// The one mutex `/lock` contends on.
static GLOBAL_LOCK: Mutex<()> = Mutex::new(());

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help goes to stdout and succeeds; a bad command line fails like any other error.
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Cmd::Serve(args) => serve(&args),
        Cmd::Backend(args) => backend(&args),
        Cmd::Load(args) => load(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("workload: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------- options --

/// A thread-per-connection HTTP/1.1 server whose endpoints each spend a known time in one
/// latency cause, the backend it talks to for `/io`, and a keep-alive load generator.
#[derive(Parser)]
#[command(name = "workload")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve HTTP (or HTTPS) on 127.0.0.1; prints `listening ADDR pid PID` once ready
    Serve(ServeArgs),
    /// The backend of `/io`: answers `N\n` with `ok\n` after N ms; prints its port
    Backend(BackendArgs),
    /// Keep-alive load against a loopback server; prints one JSON line of results
    Load(LoadArgs),
}

/// Options of `workload serve`. Every option may be repeated: the last one wins.
#[derive(Args)]
#[command(args_override_self = true)]
struct ServeArgs {
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
}

/// Options of `workload backend`.
#[derive(Args)]
#[command(args_override_self = true)]
struct BackendArgs {
    /// Port on 127.0.0.1 (0: any free port)
    #[arg(long, default_value_t = 0)]
    port: u16,
}

/// Options of `workload load`. Every option but `--path` may be repeated: the last one wins.
#[derive(Args)]
#[command(args_override_self = true)]
struct LoadArgs {
    /// The server: a loopback IP:PORT (127.0.0.0/8, [::1]) or localhost:PORT
    #[arg(long, value_name = "HOST:PORT", value_parser = loopback_addr)]
    addr: SocketAddr,
    /// A path to request, with its query; repeat it to cycle through several
    #[arg(long = "path", value_name = "PATH", required = true, value_parser = request_path)]
    paths: Vec<String>,
    /// Keep-alive connections, each sending its requests back to back
    #[arg(long, value_name = "C", default_value_t = 4, value_parser = connection_count)]
    connections: usize,
    /// Seconds of load
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = load_duration)]
    duration: Duration,
    /// Stop after N requests over all connections
    #[arg(long, value_name = "N")]
    requests: Option<u64>,
    /// HTTPS (the server's certificate is not verified: it is a throw-away one)
    #[arg(long, value_enum, default_value_t = Switch::Off)]
    tls: Switch,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

/// `--path`: starts with '/' and has no spaces (it goes into the request line as is).
fn request_path(path: &str) -> Result<String, String> {
    if path.starts_with('/') && !path.contains(' ') {
        Ok(path.to_string())
    } else {
        Err("must start with '/' and contain no spaces".to_string())
    }
}

/// `--connections`: at least 1.
fn connection_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// `--duration`: seconds, more than zero.
fn load_duration(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "must be a number of seconds above zero".to_string())
}

/// Saturating `Duration` to whole nanoseconds.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Prints one line to stdout and flushes it (readiness handshakes).
fn announce(line: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush().context("flush stdout")
}

/// Runs `f(stream)` on a new named thread, logging its error if it fails.
fn spawn_connection(
    name: &str,
    stream: TcpStream,
    f: impl FnOnce(TcpStream) -> Result<()> + Send + 'static,
) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let thread_peer = peer.clone();
    let spawned = thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            if let Err(e) = f(stream) {
                eprintln!("workload: connection from {thread_peer}: {e:#}");
            }
        });
    if let Err(e) = spawned {
        eprintln!("workload: cannot spawn a thread for {peer}: {e}");
    }
}

/// Accepts connections forever, handing each to `handle` on its own thread.
fn accept_loop(
    listener: &TcpListener,
    name: &str,
    handle: impl Fn(TcpStream) -> Result<()> + Clone + Send + 'static,
) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => spawn_connection(name, stream, handle.clone()),
            Err(e) => {
                eprintln!("workload: accept: {e}");
                thread::sleep(RECONNECT_DELAY);
            }
        }
    }
}

// ----------------------------------------------------------------- server --

/// State shared by every connection of `serve`.
struct Server {
    lock_holder: mpsc::Sender<HoldRequest>,
    backend: SocketAddr,
    data_dir: PathBuf,
    next_file: AtomicU64,
}

/// Asks the lock holder to take [`GLOBAL_LOCK`] for `hold`, replying once it has it.
struct HoldRequest {
    hold: Duration,
    locked: mpsc::Sender<()>,
}

/// `workload serve`.
fn serve(args: &ServeArgs) -> Result<()> {
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
    let server = std::sync::Arc::new(Server {
        lock_holder: spawn_lock_holder()?,
        backend: backend.addr,
        data_dir,
        next_file: AtomicU64::new(0),
    });
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(std::sync::Arc::new(tls_acceptor(cert, key)?)),
        _ => None, // clap has them go together
    };
    announce(&format!(
        "listening {} pid {}",
        listener.local_addr()?,
        std::process::id()
    ))?;
    accept_loop(&listener, "conn", move |stream| {
        stream.set_nodelay(true)?;
        let conn = Connection::new(&server);
        match &tls {
            None => conn.serve(stream).map(drop),
            Some(acceptor) => {
                let tls = acceptor.accept(stream).context("TLS handshake")?;
                let mut tls = conn.serve(tls)?;
                let _ = tls.shutdown(); // close_notify
                Ok(())
            }
        }
    });
    drop(backend);
    Ok(())
}

fn tls_acceptor(cert: &str, key: &str) -> Result<SslAcceptor> {
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())?;
    builder
        .set_certificate_chain_file(cert)
        .with_context(|| format!("TLS certificate {cert}"))?;
    builder
        .set_private_key_file(key, SslFiletype::PEM)
        .with_context(|| format!("TLS key {key}"))?;
    Ok(builder.build())
}

/// Starts the thread that takes [`GLOBAL_LOCK`] on behalf of `/lock`.
fn spawn_lock_holder() -> Result<mpsc::Sender<HoldRequest>> {
    let (tx, rx) = mpsc::channel::<HoldRequest>();
    thread::Builder::new()
        .name("lock-holder".into())
        .spawn(move || {
            for req in rx {
                let guard = GLOBAL_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
                // A requester that went away will not contend; skip the hold.
                if req.locked.send(()).is_ok() {
                    thread::sleep(req.hold);
                }
                drop(guard);
            }
        })
        .context("spawn lock holder")?;
    Ok(tx)
}

/// The `workload backend` child process; killed when dropped.
struct BackendChild {
    child: Child,
    addr: SocketAddr,
}

impl BackendChild {
    /// Starts `<this exe> backend --port 0` and reads its port.
    fn spawn() -> Result<Self> {
        let exe = std::env::current_exe().context("locate own executable")?;
        let mut child = Command::new(exe)
            .args(["backend", "--port", "0"])
            .env(PARENT_PID_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn backend")?;
        let stdout = child.stdout.take().context("backend stdout")?;
        let mut backend = Self {
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        };
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("read backend port")?;
        let port: u16 = line
            .trim()
            .parse()
            .with_context(|| format!("backend printed {line:?} instead of its port"))?;
        backend.addr.set_port(port);
        Ok(backend)
    }
}

impl Drop for BackendChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a handler produced; serialised by [`Reply::to_bytes`].
struct Reply {
    status: u16,
    handler_ns: u64,
    fsync_ns: Option<u64>,
    /// CPU time this thread used in the handler (CLOCK_THREAD_CPUTIME_ID), for `X-Cpu-Ns`.
    cpu_ns: u64,
    /// Of `handler_ns`, the time spent runnable, waiting for a CPU (`X-Runqueue-Ns`).
    runqueue_ns: Option<u64>,
    /// Close the connection after sending this reply.
    close: bool,
}

impl Reply {
    fn ok(handler: Duration) -> Self {
        Self {
            status: 200,
            handler_ns: nanos(handler),
            fsync_ns: None,
            cpu_ns: 0,
            runqueue_ns: None,
            close: false,
        }
    }

    fn spanned(span: Span) -> Self {
        Self {
            runqueue_ns: Some(span.runqueue_ns),
            ..Self::ok(span.wall)
        }
    }

    fn status(status: u16) -> Self {
        Self {
            status,
            handler_ns: 0,
            fsync_ns: None,
            cpu_ns: 0,
            runqueue_ns: None,
            close: false,
        }
    }

    fn closing(status: u16) -> Self {
        Self {
            close: true,
            ..Self::status(status)
        }
    }

    /// Head and body in one buffer, for a single `write_all`.
    fn to_bytes(&self) -> Vec<u8> {
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

/// Per-connection state of `serve`.
struct Connection<'a> {
    server: &'a Server,
    /// Lazily opened connection to the backend, kept for this connection's life.
    backend: Option<BufReader<TcpStream>>,
    /// Scratch file for `/disk`, unique to this connection; created by the first `/disk` and
    /// overwritten in place by the next ones (no truncate or unlink inside a request: those
    /// would block in syscalls that are not disk writes), removed with the connection.
    disk_file: PathBuf,
    disk: Option<File>,
}

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        if self.disk.take().is_some() {
            let _ = fs::remove_file(&self.disk_file);
        }
    }
}

impl<'a> Connection<'a> {
    fn new(server: &'a Server) -> Self {
        let n = server.next_file.fetch_add(1, Ordering::Relaxed);
        let name = format!("workload-{}-{n}.dat", std::process::id());
        Self {
            server,
            backend: None,
            disk_file: server.data_dir.join(name),
            disk: None,
        }
    }

    /// Serves keep-alive requests on `stream` until EOF, a closing reply or an error; returns
    /// the stream.
    fn serve<S: io::Read + Write>(mut self, mut stream: S) -> Result<S> {
        let mut buf = Vec::with_capacity(1024);
        while let Some(end) = http::read_head(&mut stream, &mut buf).context("read request")? {
            let reply = self.respond(&buf[..end]);
            buf.drain(..end);
            stream
                .write_all(&reply.to_bytes())
                .context("write response")?;
            if reply.close {
                break;
            }
        }
        Ok(stream)
    }

    /// Parses one request head and runs its handler; failures become error replies.
    fn respond(&mut self, head: &[u8]) -> Reply {
        let Some(req) = std::str::from_utf8(head)
            .ok()
            .and_then(http::parse_request_line)
        else {
            eprintln!("workload: malformed request head, closing connection");
            return Reply::closing(400);
        };
        if req.method != "GET" {
            return Reply::closing(405);
        }
        // The thread CPU clock costs a syscall: `/`, the benchmark's endpoint, goes without.
        let measure_cpu = req.path != "/";
        let cpu_start = if measure_cpu { thread_cpu_ns() } else { 0 };
        let mut reply = self.route(&req).unwrap_or_else(|e| {
            eprintln!("workload: {} failed: {e:#}", req.path);
            Reply::closing(500)
        });
        if measure_cpu {
            reply.cpu_ns = thread_cpu_ns().saturating_sub(cpu_start);
        }
        reply.close |= req.http10;
        reply
    }

    fn route(&mut self, req: &RequestLine) -> Result<Reply> {
        let ms = || {
            http::query_param(req.query, "ms")
                .filter(|&ms| ms <= MAX_MS)
                .map(Duration::from_millis)
        };
        let reply = match (req.path, ms()) {
            ("/", _) => Reply::ok(Duration::ZERO),
            ("/cpu", Some(d)) => Reply::spanned(Span::measure(|| spin(d)).1),
            ("/sleep", Some(d)) => Reply::spanned(Span::measure(|| thread::sleep(d)).1),
            ("/lock", Some(d)) => Reply::spanned(self.server.lock_wait(d)?),
            ("/io", Some(d)) => Reply::spanned(self.backend_round_trip(d)?),
            ("/disk", _) => match http::query_param(req.query, "kb").filter(|&kb| kb <= MAX_KB) {
                Some(kb) => self.disk(kb)?,
                None => Reply::status(400),
            },
            ("/cpu" | "/sleep" | "/lock" | "/io", None) => Reply::status(400),
            _ => Reply::status(404),
        };
        Ok(reply)
    }

    /// `/io`: one blocking `N\n` → `ok\n` round trip to the backend.
    fn backend_round_trip(&mut self, d: Duration) -> Result<Span> {
        let backend = match &mut self.backend {
            Some(b) => b,
            slot => {
                let stream = TcpStream::connect(self.server.backend).context("connect backend")?;
                stream.set_nodelay(true)?;
                slot.insert(BufReader::new(stream))
            }
        };
        let request = format!("{}\n", d.as_millis());
        let mut reply = String::new();
        let (sent, span) = Span::measure(|| {
            backend.get_mut().write_all(request.as_bytes())?;
            backend.read_line(&mut reply)
        });
        sent?;
        if reply != "ok\n" {
            self.backend = None;
            bail!("backend replied {reply:?}");
        }
        Ok(span)
    }

    /// `/disk`: writes `kb` KiB at the start of this connection's file, then fsyncs.
    fn disk(&mut self, kb: u64) -> Result<Reply> {
        let path = self.disk_file.clone();
        if self.disk.is_none() {
            let file = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("open {}", path.display()))?;
            self.disk = Some(file);
        }
        let file = self.disk.as_mut().expect("opened above");
        let (total, fsync) =
            write_and_sync(file, kb).with_context(|| format!("write {}", path.display()))?;
        Ok(Reply {
            fsync_ns: Some(nanos(fsync)),
            ..Reply::ok(total)
        })
    }
}

impl Server {
    /// `/lock`: has the holder take the lock for `hold`, then times our own `lock()`.
    fn lock_wait(&self, hold: Duration) -> Result<Span> {
        let (locked_tx, locked_rx) = mpsc::channel();
        let req = HoldRequest {
            hold,
            locked: locked_tx,
        };
        self.lock_holder
            .send(req)
            .ok()
            .context("lock holder is gone")?;
        locked_rx.recv().context("lock holder is gone")?;
        let (guard, waited) =
            Span::measure(|| GLOBAL_LOCK.lock().unwrap_or_else(PoisonError::into_inner));
        drop(guard);
        Ok(waited)
    }
}

/// CPU time used so far by the calling thread.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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

/// `/sleep`: sleeps for `d`.
/// A handler's own account of a stretch of its thread's time: the wall time, and how much of
/// it the thread spent runnable, waiting for a CPU (the kernel's schedstat `run_delay`, which
/// covers every completed wait). So what the thread spent blocked is `wall - runqueue` (less
/// a few µs of CPU), whatever else the machine is doing.
struct Span {
    wall: Duration,
    runqueue_ns: u64,
}

impl Span {
    fn measure<T>(work: impl FnOnce() -> T) -> (T, Span) {
        let (delay_before, start) = run_delay_at(Instant::now);
        let out = work();
        let (delay_after, end) = run_delay_at(Instant::now);
        let span = Span {
            wall: end - start,
            runqueue_ns: delay_after.saturating_sub(delay_before),
        };
        (out, span)
    }
}

/// `clock()` and the thread's run delay at that instant. `run_delay` grows when a wait for a
/// CPU ends, so a preemption between reading it and reading the clock would put that wait
/// on the wrong side: read it on both sides of the clock until no wait ended in between.
fn run_delay_at(clock: impl Fn() -> Instant) -> (u64, Instant) {
    loop {
        let before = run_delay_ns();
        let now = clock();
        if run_delay_ns() == before {
            return (before, now);
        }
    }
}

/// This thread's total time spent runnable, waiting for a CPU: the second field of
/// /proc/thread-self/schedstat (`sched_info.run_delay`, fs/proc/base.c `proc_pid_schedstat`).
fn run_delay_ns() -> u64 {
    fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Truncates `path`, writes `kb` KiB in [`DISK_CHUNK`] writes and fsyncs.
/// Returns (writes + fsync time, fsync time).
fn write_and_sync(file: &mut File, kb: u64) -> io::Result<(Duration, Duration)> {
    file.seek(io::SeekFrom::Start(0))?;
    let mut remaining = usize::try_from(kb * 1024).map_err(io::Error::other)?;
    let start = Instant::now();
    while remaining > 0 {
        let n = remaining.min(DISK_CHUNK);
        file.write_all(&DISK_DATA[..n])?;
        remaining -= n;
    }
    let fsync_start = Instant::now();
    file.sync_all()?;
    Ok((start.elapsed(), fsync_start.elapsed()))
}

// ---------------------------------------------------------------- backend --

/// `workload backend`: answers `N\n` with `ok\n` after sleeping N ms.
fn backend(args: &BackendArgs) -> Result<()> {
    die_with_parent()?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, args.port)).context("bind")?;
    announce(&listener.local_addr()?.port().to_string())?;
    accept_loop(&listener, "backend-conn", backend_connection);
    Ok(())
}

/// Asks the kernel to SIGKILL us when the parent dies.
fn die_with_parent() -> Result<()> {
    // SAFETY: PR_SET_PDEATHSIG only takes a signal number; no memory is touched.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    ensure!(
        rc == 0,
        "prctl(PR_SET_PDEATHSIG): {}",
        io::Error::last_os_error()
    );
    // The parent may have died before the prctl took effect.
    let expected = std::env::var(PARENT_PID_ENV).ok();
    if let Some(expected) = expected.and_then(|v| v.parse::<libc::pid_t>().ok()) {
        // SAFETY: getppid has no preconditions and cannot fail.
        let parent: libc::pid_t = unsafe { libc::getppid() };
        ensure!(parent == expected, "parent {expected} already exited");
    }
    Ok(())
}

/// Serves `N\n` lines on one backend connection until EOF.
fn backend_connection(stream: TcpStream) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let ms: u64 = line
            .trim()
            .parse()
            .with_context(|| format!("bad backend request {line:?}"))?;
        thread::sleep(Duration::from_millis(ms.min(MAX_MS)));
        writer.write_all(b"ok\n")?;
    }
}

// ------------------------------------------------------------------- load --

/// Settings of `workload load`.
struct LoadConfig {
    addr: SocketAddr,
    paths: Vec<String>,
    connections: usize,
    duration: Duration,
    max_requests: Option<u64>,
    /// HTTPS (certificates not verified: the server's is a throw-away one).
    tls: Option<SslConnector>,
}

impl LoadConfig {
    fn new(args: LoadArgs) -> Result<Self> {
        let tls = match args.tls {
            Switch::On => {
                let mut builder = SslConnector::builder(SslMethod::tls())?;
                builder.set_verify(SslVerifyMode::NONE);
                Some(builder.build())
            }
            Switch::Off => None,
        };
        Ok(Self {
            addr: args.addr,
            paths: args.paths,
            connections: args.connections,
            duration: args.duration,
            max_requests: args.requests,
            tls,
        })
    }
}

/// Parses `HOST:PORT`, accepting only loopback IPs (127.0.0.0/8, ::1) or `localhost`.
fn loopback_addr(s: &str) -> Result<SocketAddr, String> {
    let addr = match s.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            let port = s
                .strip_prefix("localhost:")
                .ok_or("want IP:PORT or localhost:PORT")?;
            let port: u16 = port
                .parse()
                .map_err(|e| format!("bad port {port:?}: {e}"))?;
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
        }
    };
    if !addr.ip().is_loopback() {
        return Err(format!(
            "refusing non-loopback address {addr}: load is only generated against 127.0.0.0/8 or ::1"
        ));
    }
    Ok(addr)
}

/// Latencies and errors seen by one load connection.
#[derive(Default)]
struct WorkerStats {
    latencies_ns: Vec<u64>,
    errors: u64,
}

/// `workload load`: prints one JSON [`LoadResult`] line.
fn load(args: LoadArgs) -> Result<()> {
    let cfg = LoadConfig::new(args)?;
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let issued = AtomicU64::new(0);
    let stats: Vec<WorkerStats> = thread::scope(|s| {
        let workers: Vec<_> = (0..cfg.connections)
            .map(|i| {
                let (cfg, issued) = (&cfg, &issued);
                s.spawn(move || load_worker(cfg, i, deadline, issued))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("load worker panicked"))
            .collect()
    });
    let result = summarize(stats, start.elapsed());
    announce(&serde_json::to_string(&result)?)
}

/// Reserves one request slot; false once `--requests` is used up.
fn take_request(issued: &AtomicU64, max: Option<u64>) -> bool {
    let n = issued.fetch_add(1, Ordering::Relaxed);
    max.is_none_or(|max| n < max)
}

/// One load connection: requests back to back, cycling through the paths.
fn load_worker(
    cfg: &LoadConfig,
    index: usize,
    deadline: Instant,
    issued: &AtomicU64,
) -> WorkerStats {
    let mut stats = WorkerStats::default();
    let mut client: Option<Box<dyn LoadConnection>> = None;
    let mut next_path = index;
    while Instant::now() < deadline {
        let Some(conn) = load_connection(&mut client, cfg, deadline) else {
            stats.errors += 1;
            thread::sleep(RECONNECT_DELAY);
            continue;
        };
        if !take_request(issued, cfg.max_requests) {
            break;
        }
        let path = &cfg.paths[next_path % cfg.paths.len()];
        next_path += 1;
        let start = Instant::now();
        match conn.get(path) {
            Ok(resp) => {
                if (200..300).contains(&resp.status) {
                    stats.latencies_ns.push(nanos(start.elapsed()));
                } else {
                    stats.errors += 1;
                }
                if resp.header("Connection") == Some("close") {
                    client = None;
                }
            }
            Err(_) => {
                stats.errors += 1;
                client = None;
                thread::sleep(RECONNECT_DELAY);
            }
        }
    }
    stats
}

/// A keep-alive load connection, plain or HTTPS.
trait LoadConnection {
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

/// The worker's open connection, connecting (and, for HTTPS, handshaking) first if needed
/// (`None` on failure).
fn load_connection<'a>(
    slot: &'a mut Option<Box<dyn LoadConnection>>,
    cfg: &LoadConfig,
    deadline: Instant,
) -> Option<&'a mut Box<dyn LoadConnection>> {
    if slot.is_none() {
        let timeout = deadline.saturating_duration_since(Instant::now()) + LOAD_GRACE;
        let conn: Box<dyn LoadConnection> = match &cfg.tls {
            None => {
                let client = HttpClient::connect_timeout(&cfg.addr, timeout).ok()?;
                client.set_timeout(Some(timeout)).ok()?;
                Box::new(client)
            }
            Some(connector) => {
                let tcp = TcpStream::connect_timeout(&cfg.addr, timeout).ok()?;
                tcp.set_nodelay(true).ok()?;
                tcp.set_read_timeout(Some(timeout)).ok()?;
                tcp.set_write_timeout(Some(timeout)).ok()?;
                let stream = connector.connect("localhost", tcp).ok()?;
                Box::new(TlsClient {
                    stream,
                    buf: Vec::with_capacity(1024),
                })
            }
        };
        *slot = Some(conn);
    }
    slot.as_mut()
}

/// Nearest-rank percentile `p` (0..=1) of sorted `values`; 0 when empty.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summarize(stats: Vec<WorkerStats>, elapsed: Duration) -> LoadResult {
    let errors = stats.iter().map(|s| s.errors).sum();
    let mut latencies: Vec<u64> = stats.into_iter().flat_map(|s| s.latencies_ns).collect();
    latencies.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    let duration_s = elapsed.as_secs_f64();
    LoadResult {
        requests: latencies.len() as u64,
        errors,
        duration_s,
        rps: latencies.len() as f64 / duration_s.max(f64::MIN_POSITIVE),
        p50_us: us(percentile(&latencies, 0.50)),
        p99_us: us(percentile(&latencies, 0.99)),
        max_us: us(latencies.last().copied().unwrap_or(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("workload").chain(args.iter().copied()))
    }

    fn load_args(args: &[&str]) -> LoadArgs {
        match parse(&[&["load"], args].concat()) {
            Ok(Cli {
                command: Cmd::Load(args),
            }) => args,
            Ok(_) => unreachable!("not `load`"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn load_options() {
        let args = load_args(&["--addr", "127.0.0.1:80", "--path", "/a", "--path=/b"]);
        assert_eq!(args.paths, ["/a", "/b"]);
        assert_eq!(args.connections, 4);
        assert_eq!(args.duration, Duration::from_secs(10));
        assert_eq!(args.requests, None);
        assert!(args.tls == Switch::Off);
        let args = load_args(&[
            "--addr=localhost:9",
            "--path",
            "/",
            "--connections",
            "3",
            "--connections",
            "5",
            "--duration",
            "0.5",
            "--requests",
            "20",
            "--tls",
            "on",
        ]);
        assert_eq!(args.addr.port(), 9);
        assert_eq!(args.connections, 5, "the last one wins");
        assert_eq!(args.duration, Duration::from_millis(500));
        assert_eq!(args.requests, Some(20));
        assert!(args.tls == Switch::On);
    }

    #[test]
    fn bad_command_lines() {
        let load = |rest: &[&str]| parse(&[&["load", "--addr", "127.0.0.1:80"], rest].concat());
        assert!(load(&["--path", "/"]).is_ok());
        assert!(load(&[]).is_err(), "--path is required");
        assert!(load(&["--path"]).is_err());
        assert!(load(&["--path", "x"]).is_err());
        assert!(load(&["--path", "/a b"]).is_err());
        assert!(load(&["--path", "/", "--connections", "0"]).is_err());
        assert!(load(&["--path", "/", "--duration", "0"]).is_err());
        assert!(load(&["--path", "/", "--tls", "maybe"]).is_err());
        assert!(load(&["--path", "/", "--bogus", "1"]).is_err());
        assert!(load(&["--path", "/", "stray"]).is_err());
        assert!(parse(&["serve", "--port", "x"]).is_err());
        assert!(parse(&["serve", "--tls-cert", "c"]).is_err());
        assert!(parse(&["serve", "--tls-key", "k"]).is_err());
        assert!(parse(&["serve", "--tls-cert", "c", "--tls-key", "k"]).is_ok());
        assert!(parse(&["backend", "--port", "0", "--port", "1"]).is_ok());
        assert!(parse(&["bogus"]).is_err());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn loopback_only() {
        assert_eq!(
            loopback_addr("127.0.0.1:80").unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert!(loopback_addr("127.3.4.5:80").is_ok());
        assert!(loopback_addr("[::1]:80").is_ok());
        assert_eq!(loopback_addr("localhost:9").unwrap().port(), 9);
        assert!(loopback_addr("10.0.0.1:80").is_err());
        assert!(loopback_addr("[::ffff:127.0.0.1]:80").is_err());
        assert!(loopback_addr("example.com:80").is_err());
        assert!(loopback_addr("127.0.0.1").is_err());
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&[7], 0.5), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn request_cap() {
        let issued = AtomicU64::new(0);
        assert!(take_request(&issued, Some(2)));
        assert!(take_request(&issued, Some(2)));
        assert!(!take_request(&issued, Some(2)));
        assert!(take_request(&issued, None));
    }

    #[test]
    fn reply_format() {
        let reply = Reply {
            fsync_ns: Some(7),
            ..Reply::ok(Duration::from_nanos(1500))
        };
        assert_eq!(
            reply.to_bytes(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Handler-Ns: 1500\r\nX-Cpu-Ns: 0\r\nX-Fsync-Ns: 7\r\n\r\nok\n"
        );
        let not_found = String::from_utf8(Reply::status(404).to_bytes()).unwrap();
        assert!(not_found.starts_with("HTTP/1.1 404 Not Found\r\n"));
    }
}
