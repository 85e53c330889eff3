//! Other tools attached to the same target in the same rounds, for comparison: libbpf-tools'
//! `runqlat` (scheduler tracepoints only) and `syscount -L` (raw_syscalls enter and exit,
//! with latency): what a scheduler-only tool and a syscall tool cost on this machine, side by
//! side with the tracer.

use std::{
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

use super::load::Load;
use crate::workload::{signal, Proc};

/// How long a tool gets to attach before the load starts (they print nothing when ready).
const ATTACH_WAIT: Duration = Duration::from_secs(2);

/// A comparison tool.
pub struct Tool {
    pub name: &'static str,
    /// Its command line, to which the target's pid is added.
    args: &'static [&'static str],
}

/// The tools every comparing scenario runs, in order (Debian's libbpf-tools, in /usr/sbin).
pub const TOOLS: [Tool; 2] = [
    Tool {
        name: "runqlat",
        args: &["runqlat", "-p"],
    },
    Tool {
        name: "syscount -L",
        args: &["syscount", "-L", "-p"],
    },
];

impl Tool {
    /// Runs `load` with the tool attached to `pid`, then stops the tool with SIGINT.
    pub fn measure(&self, pid: u32, load: &mut dyn FnMut() -> Result<Load>) -> Result<Load> {
        // syscount attaches its tracepoints by their tracefs id.
        tracer_support::ensure_tracefs_mounted()?;
        let mut cmd = Command::new(self.args[0]);
        cmd.args(&self.args[1..])
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut tool = Proc::spawn(&mut cmd)
            .with_context(|| format!("{} (package libbpf-tools)", self.name))?;
        thread::sleep(ATTACH_WAIT);
        if let Some(status) = tool.child().try_wait()? {
            anyhow::bail!("`{}` exited before the load ({status})", tool.cmdline());
        }
        let measured = load();
        signal(tool.id(), "INT").context("stopping the tool")?;
        let _ = tool.wait_timeout(Duration::from_secs(10))?;
        measured
    }
}
