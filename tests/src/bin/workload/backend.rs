//! The backend `/io` talks to: `workload backend`, a child process of the server that answers
//! `N\n` with `ok\n` after sleeping N ms; the server's handle on it and its client.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use clap::Args;

use crate::listener::accept_loop;
use crate::measure::Span;
use crate::{announce, MAX_MS};

/// Lets the backend check that the server that started it is still alive.
const PARENT_PID_ENV: &str = "WORKLOAD_PARENT_PID";

/// Options of `workload backend`.
#[derive(Args)]
#[command(args_override_self = true)]
pub struct BackendArgs {
    /// Port on 127.0.0.1 (0: any free port)
    #[arg(long, default_value_t = 0)]
    port: u16,
}

/// `workload backend`: prints its port, then answers `N\n` with `ok\n` after sleeping N ms.
pub fn serve(args: &BackendArgs) -> Result<()> {
    die_with_parent()?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, args.port)).context("bind")?;
    announce(&listener.local_addr()?.port().to_string())?;
    accept_loop(&listener, "backend-conn", answer_requests);
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
fn answer_requests(stream: TcpStream) -> Result<()> {
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

/// The `workload backend` child process; killed when dropped.
pub struct BackendChild {
    child: Child,
    pub addr: SocketAddr,
}

impl BackendChild {
    /// Starts `<this exe> backend --port 0` and reads its port.
    pub fn spawn() -> Result<Self> {
        let exe = std::env::current_exe().context("locate own executable")?;
        let mut child = Command::new(exe)
            .args(["backend", "--port", "0"])
            .env(PARENT_PID_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn backend")?;
        let stdout = child.stdout.take().context("backend stdout")?;
        // Owned from here on, so that an error below kills it.
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

/// A server connection's client of the backend: one backend connection, opened by the first
/// `/io` and kept for the server connection's life.
pub struct BackendClient {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl BackendClient {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, conn: None }
    }

    /// `/io`: one blocking `N\n` → `ok\n` round trip to the backend.
    pub fn round_trip(&mut self, d: Duration) -> Result<Span> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            slot => {
                let stream = TcpStream::connect(self.addr).context("connect backend")?;
                stream.set_nodelay(true)?;
                slot.insert(BufReader::new(stream))
            }
        };
        let request = format!("{}\n", d.as_millis());
        let mut reply = String::new();
        let (sent, span) = Span::measure(|| {
            conn.get_mut().write_all(request.as_bytes())?;
            conn.read_line(&mut reply)
        });
        sent?;
        if reply != "ok\n" {
            self.conn = None;
            bail!("backend replied {reply:?}");
        }
        Ok(span)
    }
}
