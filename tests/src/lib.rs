//! Helpers for the tracer's integration tests: locating built binaries,
//! running the `workload` server and load generator, and a tiny HTTP client.

pub mod http;
pub mod session;

pub use http::{HttpClient, Response};

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long [`Workload::spawn`] waits for the server's `listening` line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether the current process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The cargo workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

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

    /// Starts `workload serve --port 0 <args>` found via [`bin_path`]
    /// (a later `--port` in `args` wins).
    pub fn spawn_with_args(args: &[&str]) -> Workload {
        Self::spawn_exe(&bin_path("workload"), args)
    }

    /// Starts `<exe> serve --port 0 <args>` and waits for its `listening` line.
    ///
    /// Panics if the server does not start within 30 s.
    pub fn spawn_exe(exe: &Path, args: &[&str]) -> Workload {
        let child = Command::new(exe)
            .args(["serve", "--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        Self::from_started(child, &exe.display().to_string())
    }

    /// A server started with its stdout piped: waits for its `listening` line.
    ///
    /// Panics (after killing it) if the line does not come within 30 s.
    pub fn from_started(mut child: Child, what: &str) -> Workload {
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(STARTUP_TIMEOUT).unwrap_or_default();
        match parse_listening_line(&line) {
            Some((addr, pid)) => Workload { child, pid, addr },
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not start; its first stdout line was {line:?}");
            }
        }
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

/// Parses `listening 127.0.0.1:<port> pid <pid>`.
pub fn parse_listening_line(line: &str) -> Option<(SocketAddr, u32)> {
    let mut words = line.split_whitespace();
    if words.next()? != "listening" {
        return None;
    }
    let addr = words.next()?.parse().ok()?;
    if words.next()? != "pid" {
        return None;
    }
    let pid = words.next()?.parse().ok()?;
    words.next().is_none().then_some((addr, pid))
}

/// Summary printed (as one JSON line) by `workload load`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadResult {
    /// Requests answered with a 2xx status.
    pub requests: u64,
    /// Connect failures, I/O errors and non-2xx responses.
    pub errors: u64,
    pub duration_s: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line() {
        let line = "listening 127.0.0.1:8080 pid 42\n";
        assert_eq!(
            parse_listening_line(line),
            Some(("127.0.0.1:8080".parse().unwrap(), 42))
        );
        assert_eq!(parse_listening_line(""), None);
        assert_eq!(parse_listening_line("listening 127.0.0.1:8080"), None);
        assert_eq!(parse_listening_line("listening x pid 1"), None);
        assert_eq!(
            parse_listening_line("listening 127.0.0.1:1 pid 1 extra"),
            None
        );
    }

    #[test]
    fn load_result_json() {
        let json = r#"{"requests":10,"errors":0,"duration_s":1.0,"rps":10.0,"p50_us":5.5,"p99_us":9.0,"max_us":9.5}"#;
        let r: LoadResult = serde_json::from_str(json).unwrap();
        assert_eq!((r.requests, r.errors), (10, 0));
        assert_eq!(serde_json::to_string(&r).unwrap(), json);
    }

    #[test]
    fn workspace_root_has_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
    }
}
