//! The tracer of one traced phase: started on the target, waited for until it has
//! attached, stopped with SIGTERM, and its `summary.json` read.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tracer::output::summary::Summary;

use super::scenarios::Variant;
use crate::workload::{signal, Proc};

/// How long a traced phase waits for the tracer to report `attached` before starting load
/// (attaching ~75 tracepoints takes seconds on a saturated 2-core machine).
const ATTACH_WAIT: Duration = Duration::from_secs(120);
/// How long the tracer gets to write its summary after SIGTERM.
const STOP_WAIT: Duration = Duration::from_secs(15);
/// How long a tracer that closed its stderr before attaching gets to exit.
const EARLY_EXIT_WAIT: Duration = Duration::from_secs(5);

/// What a traced phase runs: which tracer, on which PID, for how long, with BPF stats or not.
pub struct TracerSpec<'a> {
    pub tracer: &'a Path,
    pub pid: u32,
    pub seconds: u32,
    pub bpf_stats: bool,
    /// `--stacks on` (the default) or `off`.
    pub stacks: bool,
    /// Another way of running it than the default.
    pub variant: Option<Variant>,
    /// `TRACER_COST_FLOOR=1`: its socket programs do the least work any design could.
    pub cost_floor: bool,
}

/// A running tracer, its stderr echoed by a thread that reports when its `attached` line
/// came.
pub struct RunningTracer {
    proc: Proc,
    started: Instant,
    /// Taken when joined.
    echo: Option<JoinHandle<()>>,
    attached: Receiver<Instant>,
}

impl RunningTracer {
    /// Starts the tracer of `spec`, writing into `out_dir` (emptied first). It runs a second
    /// longer than the load, and is stopped at the load's end.
    pub fn start(spec: &TracerSpec, out_dir: &Path) -> Result<RunningTracer> {
        empty_dir(out_dir)?;
        let mut cmd = Command::new(spec.tracer);
        cmd.args(["--pid", &spec.pid.to_string()])
            .args(spec.bpf_stats.then_some("--bpf-stats"))
            .args(spec.variant.map(Variant::args).unwrap_or_default())
            .args(
                (!spec.stacks)
                    .then_some(["--stacks", "off"])
                    .into_iter()
                    .flatten(),
            )
            .args(["--duration", &(spec.seconds + 1).to_string()])
            .envs(spec.cost_floor.then_some(("TRACER_COST_FLOOR", "1")))
            .arg("--output")
            .arg(out_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut proc = Proc::spawn(&mut cmd)?;
        let stderr = proc
            .child()
            .stderr
            .take()
            .context("tracer stderr is not piped")?;
        let (attached_tx, attached) = mpsc::channel();
        let echo = thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("  {line}");
                if line.contains("attached to PID") {
                    let _ = attached_tx.send(Instant::now());
                }
            }
        });
        Ok(RunningTracer {
            proc,
            started,
            echo: Some(echo),
            attached,
        })
    }

    /// Waits until the tracer says it has attached, or [`ATTACH_WAIT`] has passed (then the
    /// load starts anyway); returns the time from its start to its `attached` line. Fails
    /// when it exits first.
    pub fn wait_until_attached(&mut self, phase: &str) -> Result<Option<Duration>> {
        let attach = match self.attached.recv_timeout(ATTACH_WAIT) {
            Ok(at) => Some(at - self.started),
            Err(RecvTimeoutError::Timeout) => {
                println!(
                    "{phase}: no `attached` from the tracer within {} s; starting the load anyway",
                    ATTACH_WAIT.as_secs()
                );
                None
            }
            // Its stderr closed: it is exiting.
            Err(RecvTimeoutError::Disconnected) => {
                self.join_echo();
                let status = self.proc.wait_timeout(EARLY_EXIT_WAIT)?;
                bail!(
                    "`{}` stopped before the load started ({})",
                    self.proc.cmdline(),
                    status.map_or("closed its stderr".to_string(), |s| s.to_string())
                );
            }
        };
        if let Some(status) = self.exit_status()? {
            // Even a clean exit is a failure: it ended before there was anything to trace.
            self.join_echo();
            bail!(
                "`{}` exited before the load started ({status})",
                self.proc.cmdline()
            );
        }
        Ok(attach)
    }

    /// Stops the tracer with SIGTERM (unless its `--duration` already stopped it) and waits
    /// for it to exit; a failure or a kill after [`STOP_WAIT`] goes into `failures`. Returns
    /// the time from SIGTERM to a clean exit (the ring drained, the programs detached, every
    /// file written), when it sent the signal.
    pub fn stop(mut self, phase: &str, failures: &mut Vec<String>) -> Result<Option<Duration>> {
        let signalled = if self.exit_status()?.is_none() {
            signal(self.proc.id(), "TERM").context("stopping the tracer")?;
            Some(Instant::now())
        } else {
            None
        };
        let stop = match self.proc.wait_timeout(STOP_WAIT)? {
            Some(status) if status.success() => signalled.map(|at| at.elapsed()),
            Some(status) => {
                failures.push(format!(
                    "{phase}: `{}` failed ({status})",
                    self.proc.cmdline()
                ));
                None
            }
            None => {
                failures.push(format!(
                    "{phase}: `{}` did not exit within {} s of SIGTERM and was killed",
                    self.proc.cmdline(),
                    STOP_WAIT.as_secs()
                ));
                None
            }
        };
        self.join_echo();
        Ok(stop)
    }

    /// Its exit status, if it has exited.
    fn exit_status(&mut self) -> Result<Option<ExitStatus>> {
        self.proc
            .child()
            .try_wait()
            .context("checking on the tracer")
    }

    /// Waits for the echo of its stderr to end (the tracer has exited or is exiting).
    fn join_echo(&mut self) {
        if let Some(echo) = self.echo.take() {
            let _ = echo.join();
        }
    }
}

/// Removes `dir` if it exists, then creates it empty.
fn empty_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// The tracer's `summary.json` in `out_dir`.
pub fn read_summary(out_dir: &Path) -> Result<Summary> {
    Summary::read(out_dir)
}
