//! What the kernel side cannot see for itself at attach time, read from /proc: the target's
//! threads, and the syscall each one is already blocked in.

use std::fs;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, MapData};
use tracer_common::InSyscall;

use procfs::process::Process;

use super::probes::Probes;

/// `BPF_NOEXIST` map update flag (include/uapi/linux/bpf.h).
const BPF_NOEXIST: u64 = aya_obj::generated::BPF_NOEXIST as u64;

impl Probes {
    /// Threads already blocked in a syscall when the tracer attached (an idle
    /// keep-alive read, a pending accept) entered it unseen. Their syscall is read from
    /// /proc/PID/task/TID/syscall and entered into `IN_SYSCALL` unless the kernel side has
    /// seen a newer entry (BPF_NOEXIST). A thread that leaves the syscall between the read and
    /// the insert leaves a stale entry until its next traced syscall.
    pub(super) fn seed_in_syscall(&mut self, pid: u32) {
        let Some(map) = self.ebpf.map_mut("IN_SYSCALL") else {
            return;
        };
        let Ok(mut in_syscall) = BpfHashMap::<&mut MapData, u32, InSyscall>::try_from(map) else {
            return;
        };
        let now = monotonic_ns();
        for tid in target_threads(pid).unwrap_or_default() {
            let Ok(text) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")) else {
                continue;
            };
            let Some((nr, arg0, arg1)) = parse_proc_syscall(&text) else {
                continue;
            };
            let inside = InSyscall {
                nr,
                arg1: arg1 as u32,
                arg0,
                enter_ns: now,
                buf: 0,
                conversation: Default::default(),
            };
            let _ = in_syscall.insert(tid, inside, BPF_NOEXIST);
        }
    }

    /// Put the target's current threads into the thread-id set; returns how many.
    pub(super) fn add_threads(&mut self, pid: u32) -> Result<usize> {
        let mut tids: BpfHashMap<&mut MapData, u32, u8> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("TARGET_TIDS")
                .context("map TARGET_TIDS")?,
        )?;
        let threads =
            target_threads(pid).with_context(|| format!("listing the threads of PID {pid}"))?;
        for tid in &threads {
            tids.insert(tid, 1, 0)
                .context("adding a thread to TARGET_TIDS")?;
        }
        let count = threads.len();
        Ok(count)
    }
}

/// Parse /proc/PID/task/TID/syscall: `NR ARG1 .. ARG6 SP PC` (hex args) while in a syscall,
/// `running`, or `-1 SP PC` when blocked outside one (fs/proc/base.c `proc_pid_syscall`).
/// Returns the number and the first two arguments.
pub fn parse_proc_syscall(text: &str) -> Option<(u32, u64, u64)> {
    let mut words = text.split_whitespace();
    let nr: i64 = words.next()?.parse().ok()?;
    let hex = |w: Option<&str>| u64::from_str_radix(w?.trim_start_matches("0x"), 16).ok();
    let (arg0, arg1) = (hex(words.next())?, hex(words.next())?);
    u32::try_from(nr).ok().map(|nr| (nr, arg0, arg1))
}

/// The thread ids of process `pid` now.
pub(super) fn target_threads(pid: u32) -> procfs::ProcResult<Vec<u32>> {
    Ok(Process::new(pid as i32)?
        .tasks()?
        .flatten()
        .map(|task| task.tid as u32)
        .collect())
}

/// CLOCK_MONOTONIC in ns, the clock of `bpf_ktime_get_ns()`.
fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_syscall_lines() {
        assert_eq!(
            parse_proc_syscall("0 0x5 0x7ffd1000 0x2000 0x0 0x0 0x0 0x7ffd0f00 0x7f00aa\n"),
            Some((0, 5, 0x7ffd1000))
        );
        assert_eq!(parse_proc_syscall("running\n"), None);
        assert_eq!(parse_proc_syscall("-1 0x7ffd0f00 0x7f00aa\n"), None);
    }
}
