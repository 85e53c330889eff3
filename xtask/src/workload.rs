//! Driving the `workload` binary (an HTTP server to trace, and its load generator) and the
//! child processes of `demo` and `bench`.

use std::{
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tracer_support::read_listening_line;

use crate::cmdline;

/// How long `workload serve` may take to print its address.
const SERVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A child process that is killed (SIGKILL) and reaped when dropped, so that no error path
/// leaves a server or load generator running.
pub struct Proc {
    child: Child,
    line: String,
}

impl Proc {
    /// Print the command and start it.
    pub fn spawn(cmd: &mut Command) -> Result<Proc> {
        let line = cmdline(cmd);
        println!("$ {line}");
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start `{line}`"))?;
        Ok(Proc { child, line })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    pub fn cmdline(&self) -> &str {
        &self.line
    }

    /// Kill it (if still running) and reap it.
    pub fn stop(mut self) {
        self.kill();
    }

    /// Wait up to `timeout` for it to exit; then kill it. `None` when it had to be killed.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for `{}`", self.line))?
            {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Send a signal by name (e.g. `TERM`) with `kill(1)`.
pub fn signal(pid: u32, name: &str) -> Result<()> {
    let mut cmd = Command::new("kill");
    cmd.arg(format!("-{name}")).arg(pid.to_string());
    crate::check(
        cmd.status()
            .with_context(|| format!("could not start `{}`", cmdline(&cmd)))?,
        &cmdline(&cmd),
    )
}

/// A running `workload serve --port 0`.
pub struct Server {
    /// `127.0.0.1:<port>`, as printed by the server.
    pub addr: String,
    /// The server's pid, as printed by the server (the tracer's target).
    pub pid: u32,
    proc: Proc,
}

impl Server {
    pub fn start(workload: &Path) -> Result<Server> {
        Self::start_with(workload, &[])
    }

    /// `workload serve --port 0 EXTRA...` (e.g. `--tls-cert C --tls-key K`).
    pub fn start_with(workload: &Path, extra: &[&std::ffi::OsStr]) -> Result<Server> {
        let mut cmd = Command::new(workload);
        cmd.args(["serve", "--port", "0"]).args(extra);
        Self::start_command(cmd)
    }

    /// Any server that prints `listening 127.0.0.1:<port> pid <pid>` once ready.
    pub fn start_command(mut cmd: Command) -> Result<Server> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut proc = Proc::spawn(&mut cmd)?;
        let stdout = proc
            .child()
            .stdout
            .take()
            .context("workload stdout is not piped")?;
        let (addr, pid) = read_listening_line(stdout, SERVE_TIMEOUT)
            .with_context(|| format!("`{}` did not start", proc.cmdline()))?;
        let addr = addr.to_string();
        println!("serving on {addr} (pid {pid})");
        Ok(Server { addr, pid, proc })
    }

    /// Kill and reap the server.
    pub fn stop(self) {
        self.proc.stop();
    }
}

/// `workload load --addr <addr> --connections <n> --duration <s> --path <p>...`
pub fn load_command(
    workload: &Path,
    addr: &str,
    connections: u32,
    duration_s: u32,
    paths: &[&str],
) -> Command {
    let mut cmd = Command::new(workload);
    cmd.args(["load", "--addr", addr])
        .args(["--connections", &connections.to_string()])
        .args(["--duration", &duration_s.to_string()])
        .stdin(Stdio::null());
    for path in paths {
        cmd.args(["--path", path]);
    }
    cmd
}
