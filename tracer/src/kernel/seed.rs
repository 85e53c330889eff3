//! What the kernel side cannot see for itself at attach time, read from /proc: the target's
//! threads. (The syscall a thread is blocked in needs no seeding: the switch-out reads it from
//! the thread's saved registers.)

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, MapData};

use procfs::process::Process;

use super::probes::Probes;

impl Probes {
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

/// The thread ids of process `pid` now.
pub(super) fn target_threads(pid: u32) -> procfs::ProcResult<Vec<u32>> {
    Ok(Process::new(pid as i32)?
        .tasks()?
        .flatten()
        .map(|task| task.tid as u32)
        .collect())
}
