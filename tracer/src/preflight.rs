//! Checks made before anything is attached: privileges, the target, the output directory.

use std::{fs, path::Path};

use anyhow::{bail, Context as _, Result};

use crate::output::OutputDir;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Loading tracepoint programs needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN, which implies
/// both on kernels before 5.8).
pub fn check_privileges() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let caps = parse_cap_eff(&status).unwrap_or(0);
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(c, _)| !has(*c))
        .map(|(_, n)| n)
        .collect();
    bail!(
        "missing {} (and not CAP_SYS_ADMIN): run tracer as root, e.g. `sudo tracer --pid PID`",
        missing.join(" and ")
    )
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The target process as found in /proc.
pub struct Target {
    pub pid: u32,
    pub comm: String,
}

pub fn check_target(pid: u32) -> Result<Target> {
    if pid == 0 || pid == std::process::id() {
        bail!("PID {pid} cannot be traced: pass the PID of another process");
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|_| {
        anyhow::anyhow!("no process with PID {pid}: check the PID (e.g. `pgrep -f NAME`)")
    })?;
    if !is_alive(&stat) {
        bail!("process {pid} has exited (it is a zombie): nothing to trace");
    }
    let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Ok(Target { pid, comm })
}

/// Is the process still running (not gone, not a zombie)?
pub fn target_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| is_alive(&s))
}

/// The state letter follows the parenthesised comm, which may itself contain ") ".
fn is_alive(stat: &str) -> bool {
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, None | Some('Z') | Some('X') | Some('x'))
}

/// Create the output directory, open it for the run and prove files can be created in it
/// (under a fresh name, created exclusively and removed: nothing there is followed or
/// truncated), before attaching anything.
pub fn prepare_output(dir: &Path) -> Result<OutputDir> {
    let unwritable = |e: std::io::Error| {
        anyhow::anyhow!(
            "cannot write to output directory {} ({e}): choose another with --output DIR",
            dir.display()
        )
    };
    fs::create_dir_all(dir).map_err(unwritable)?;
    let out = OutputDir::open(dir).map_err(unwritable)?;
    out.check_writable(".tracer-write-test")
        .map_err(unwritable)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_mask_is_read_from_status() {
        let status = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
    }

    #[test]
    fn process_state_after_a_comm_with_parentheses() {
        assert!(is_alive("12 (a) b) S 1 2"));
        assert!(!is_alive("12 (a) b) Z 1 2"));
        assert!(!is_alive("garbage"));
    }

    #[test]
    fn no_such_pid_is_a_clear_error() {
        let err = check_target(u32::MAX - 1).err().unwrap().to_string();
        assert!(err.starts_with("no process with PID"), "{err}");
    }

    #[test]
    fn unwritable_output_is_a_clear_error() {
        let err = prepare_output(Path::new("/proc/version/x"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--output"), "{err}");
    }
}
