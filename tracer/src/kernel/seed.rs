//! What the kernel side cannot see for itself at attach time, read from /proc: the target's
//! threads. (The syscall a thread is blocked in needs no seeding: the switch-out reads it from
//! the thread's saved registers.)

use anyhow::{Context as _, Result};
use aya::maps::{Array, MapData};

use procfs::process::Process;

use super::probes::Probes;

impl Probes {
    /// Put the target's current threads into the thread-id set; returns how many.
    pub(super) fn add_threads(&mut self, pid: u32) -> Result<usize> {
        let mut tids: Array<&mut MapData, u8> = Array::try_from(
            self.ebpf
                .map_mut("TARGET_TIDS")
                .context("map TARGET_TIDS")?,
        )?;
        let threads =
            target_threads(pid).with_context(|| format!("listing the threads of PID {pid}"))?;
        for &tid in &threads {
            tids.set(tid, 1, 0)
                .context("adding a thread to TARGET_TIDS")?;
        }
        let count = threads.len();
        Ok(count)
    }
}

/// The thread ids of process `pid` now.
pub(super) fn target_threads(pid: u32) -> procfs::ProcResult<Vec<u32>> {
    Ok(Process::new(pid as i32)?
        .tasks()?
        .flatten()
        .map(|task| task.tid as u32)
        .collect())
}

/// The kernel's largest thread id plus one (`/proc/sys/kernel/pid_max`), which sizes the
/// `TARGET_TIDS` array; `PID_MAX_LIMIT` (include/linux/threads.h) when unreadable.
pub(super) fn pid_max() -> u32 {
    const PID_MAX_LIMIT: u32 = 4 * 1024 * 1024;
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(PID_MAX_LIMIT)
}
