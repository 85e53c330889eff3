//! The tracer's integration-test harness, and the pieces the `workload` server shares with
//! it:
//! - [`session`]: the real tracer run against a target (start, wait until attached, stop with
//!   a signal, wait for the exit, read the output files), and helper commands, with one
//!   timeout policy;
//! - [`Workload`]: a test server (the `workload` binary or any target that prints its
//!   listening line), and the `workload load` generator;
//! - [`TempDir`] and [`wait_for`]: scratch directories and bounded polling;
//! - [`http`]: a tiny HTTP client (and the server's parser).
//! - [`go_tests!`]: a check run as one test per Go toolchain and build.
//!
//! What xtask does too (certificates, the Go server) lives in the `tracer-support` crate,
//! re-exported here as [`support`].
//!
//! The tests that need root (they load kernel programs, mount, or switch users) are
//! `#[ignore = "needs root"]`; `cargo xtask test` runs them, as root, with
//! `--include-ignored`.

mod go;
pub mod http;
pub mod session;
mod temp;

pub use http::{HttpClient, Response};
pub use temp::TempDir;
pub use tracer_support::{self as support, is_root, load::LoadResult, workspace_root};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long [`Workload::start`] waits for the server's `listening` line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often [`wait_for`] checks.
const POLL: Duration = Duration::from_millis(20);

/// Path of a built binary: `$TRACER_BIN_DIR/<name>` when that variable is
/// set, else cargo's `CARGO_BIN_EXE_<name>` when running under `cargo test`
/// for a binary of this package, else `<workspace>/target/debug/<name>`.
///
/// Panics if the file does not exist.
pub fn bin_path(name: &str) -> PathBuf {
    let path = match std::env::var_os("TRACER_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => std::env::var_os(format!("CARGO_BIN_EXE_{name}"))
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target/debug").join(name)),
    };
    assert!(
        path.is_file(),
        "binary {name:?} not found at {}; build it first with `cargo xtask test` \
         (or point TRACER_BIN_DIR at the directory holding it)",
        path.display()
    );
    path
}

/// A running `workload serve` process; killed (and reaped) when dropped.
#[derive(Debug)]
pub struct Workload {
    pub child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
}

impl Workload {
    /// Starts `workload serve --port 0` found via [`bin_path`].
    pub fn spawn() -> Workload {
        Self::spawn_with_args(&[])
    }

    /// Starts `workload serve --port 0 --task-clock <args>` found via [`bin_path`]
    /// (a later `--port` in `args` wins). `--task-clock`: each connection's thread opens the
    /// perf task clock its measurements read before it reads a request (see the workload's
    /// `measure.rs`).
    pub fn spawn_with_args(args: &[&str]) -> Workload {
        let with_clock: Vec<&str> = ["--task-clock"].iter().chain(args).copied().collect();
        Self::spawn_exe(&bin_path("workload"), &with_clock)
    }

    /// Starts `<exe> serve --port 0 <args>` and waits for its `listening` line.
    pub fn spawn_exe(exe: &Path, args: &[&str]) -> Workload {
        let mut cmd = Command::new(exe);
        cmd.args(["serve", "--port", "0"]).args(args);
        Self::start(cmd)
    }

    /// The `workload` server running as user `nobody`, without capabilities.
    pub fn spawn_as_nobody() -> Workload {
        let mut cmd = session::as_nobody("", &bin_path("workload"));
        cmd.args(["serve", "--port", "0"]);
        Self::start(cmd)
    }

    /// Starts any server that prints `listening 127.0.0.1:<port> pid <pid>` once it accepts
    /// connections, and waits for that line.
    ///
    /// Panics (after killing it) if the line does not come within 30 s.
    pub fn start(mut cmd: Command) -> Workload {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        match support::read_listening_line(stdout, STARTUP_TIMEOUT) {
            Ok((addr, pid)) => Workload { child, pid, addr },
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not start: {e:#}");
            }
        }
    }

    /// Running, not a zombie.
    pub fn alive(&self) -> bool {
        process_running(self.pid)
    }

    /// The server is unharmed: running, and answering `GET /` on a new connection.
    pub fn assert_serving(&self) {
        assert!(
            self.alive(),
            "the traced server (PID {}) is no longer running",
            self.pid
        );
        let response = self
            .client()
            .get("/")
            .unwrap_or_else(|e| panic!("the traced server no longer answers: {e}"));
        assert_eq!(response.status, 200, "{response:?}");
    }

    /// A new keep-alive client connected to this server.
    pub fn client(&self) -> HttpClient {
        HttpClient::connect(self.addr)
            .unwrap_or_else(|e| panic!("cannot connect to workload at {}: {e}", self.addr))
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Running, not a zombie (as the tracer itself judges it).
pub fn process_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        !matches!(state, None | Some('Z' | 'X' | 'x'))
    })
}

/// Calls `check` every 20 ms until it returns `Ok`, and returns that value; panics with its
/// last `Err` (what it was waiting for, or what it saw) once `timeout` has passed.
pub fn wait_for<T, E: std::fmt::Display>(
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(e) if Instant::now() >= deadline => panic!("not within {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Starts `workload load` against `addr` with stdout piped; finish it with
/// [`load_result`]. Uses `workload` found via [`bin_path`].
pub fn run_load(
    addr: SocketAddr,
    paths: &[&str],
    connections: usize,
    duration_s: f64,
    max_requests: Option<u64>,
) -> Child {
    run_load_exe(
        &bin_path("workload"),
        addr,
        paths,
        connections,
        duration_s,
        max_requests,
    )
}

/// [`run_load`] with an explicit `workload` executable.
pub fn run_load_exe(
    exe: &Path,
    addr: SocketAddr,
    paths: &[&str],
    connections: usize,
    duration_s: f64,
    max_requests: Option<u64>,
) -> Child {
    let mut cmd = Command::new(exe);
    cmd.arg("load").arg("--addr").arg(addr.to_string());
    for path in paths {
        cmd.args(["--path", path]);
    }
    cmd.args(["--connections", &connections.to_string()])
        .args(["--duration", &duration_s.to_string()]);
    if let Some(n) = max_requests {
        cmd.args(["--requests", &n.to_string()]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} load: {e}", exe.display()))
}

/// Waits for a [`run_load`] child and parses its JSON summary.
///
/// Panics if it failed or printed something else.
pub fn load_result(child: Child) -> LoadResult {
    let output = child.wait_with_output().expect("wait for workload load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "workload load failed ({}); stdout: {stdout}",
        output.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("bad workload load output {stdout:?}: {e}"))
}

/// Run the calling thread, and what it spawns from now on, on `cpu` alone.
pub fn pin_this_thread_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity(0 = this
    // thread) get valid pointers to it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A test server's listener on a free loopback port, announced on stdout as
/// [`Workload::start`] waits for it: `listening 127.0.0.1:PORT pid PID`.
pub fn listen_and_announce() -> std::io::Result<std::net::TcpListener> {
    use std::io::Write as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    println!(
        "listening {} pid {}",
        listener.local_addr()?,
        std::process::id()
    );
    std::io::stdout().flush()?;
    Ok(listener)
}

/// A process that spins on one CPU until dropped.
pub struct CpuHog(Child);

impl CpuHog {
    pub fn on_cpu(cpu: usize) -> CpuHog {
        Self::niced(cpu, 0)
    }

    /// At nice `nice` (below 0: it weighs more than the tasks it shares its CPU with, which
    /// then wait for it rather than preempting it as they wake).
    pub fn niced(cpu: usize, nice: i32) -> CpuHog {
        let child = Command::new("taskset")
            .args(["-c", &cpu.to_string(), "nice", "-n", &nice.to_string()])
            .args(["sh", "-c", "while :; do :; done"])
            .spawn()
            .expect("spawn taskset");
        CpuHog(child)
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run every thread of process `pid`, and those it starts later, on `cpu` alone.
pub fn pin_process_to_cpu(pid: u32, cpu: usize) {
    let pinned = Command::new("taskset")
        .args(["-a", "-c", "-p", &cpu.to_string(), &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("taskset");
    assert!(pinned.success(), "taskset -p {cpu} {pid}");
}

/// The last CPU of the machine.
pub fn last_cpu() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
}

/// The median of `v` (its upper middle for an even count).
pub fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Within `rel` (relative) plus `abs` ns of `want`.
pub fn near(got: u64, want: u64, rel: f64, abs: u64) -> bool {
    let slack = (want as f64 * rel) as u64 + abs;
    got + slack >= want && got <= want + slack
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_returns_the_value() {
        let mut calls = 0;
        let got = wait_for(Duration::from_secs(30), || {
            calls += 1;
            if calls < 3 {
                Err("not yet")
            } else {
                Ok(calls)
            }
        });
        assert_eq!(got, 3);
    }

    #[test]
    #[should_panic(expected = "not within 50ms: never")]
    fn wait_for_is_bounded() {
        wait_for(Duration::from_millis(50), || Err::<(), _>("never"));
    }
}
