//! What the kernel side counts: events lost (by reason and CPU), stacks its maps had no
//! room for, program runs the kernel skipped, and per-program run time (`--bpf-stats`).

use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_info};
use tracer_common::LOSS_KINDS;

use super::probes::Probes;

/// Run time of one kernel program, from the kernel's BPF stats.
pub struct ProgramStat {
    pub name: String,
    pub run_count: u64,
    pub run_time_ns: u64,
}

impl Probes {
    /// Events lost in the kernel so far: per reason, summed over CPUs; and per CPU.
    pub fn losses(&self) -> ([u64; LOSS_KINDS as usize], Vec<u64>) {
        let mut by_reason = [0; LOSS_KINDS as usize];
        let mut by_cpu = Vec::new();
        for (reason, slot) in by_reason.iter_mut().enumerate() {
            if let Ok(values) = self.losses.get(&(reason as u32), 0) {
                by_cpu.resize(by_cpu.len().max(values.len()), 0);
                for (cpu, v) in values.iter().enumerate() {
                    *slot += v;
                    by_cpu[cpu] += v;
                }
            }
        }
        (by_reason, by_cpu)
    }

    /// Stacks the kernel took that none of its stack maps had room for (see tracer-ebpf
    /// `maps::user_stack_id`), summed over CPUs.
    pub fn stacks_not_stored(&self) -> u64 {
        self.stacks_not_stored
            .get(&0, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    /// Runs of each program the kernel skipped (`bpf_prog_info.recursion_misses`, Linux 5.12+):
    /// a tracepoint program does not run while another tracing program runs on the same CPU
    /// (`bpf_prog_active`), nor a raw tracepoint program while it already runs there (an
    /// interrupt arriving during it): those events were never seen. Programs with none are
    /// left out.
    pub fn skipped_runs(&self) -> Vec<(String, u64)> {
        self.loaded_programs()
            .filter_map(|(name, fd)| {
                let misses = prog_info(fd)?.recursion_misses;
                (misses > 0).then(|| (name.to_string(), misses))
            })
            .collect()
    }

    /// Per-program run counts and times (non-zero only with `--bpf-stats`).
    pub fn program_stats(&self) -> Vec<ProgramStat> {
        self.loaded_programs()
            .filter_map(|(name, fd)| {
                let info = prog_info(fd)?;
                Some(ProgramStat {
                    name: name.to_string(),
                    run_count: info.run_cnt,
                    run_time_ns: info.run_time_ns,
                })
            })
            .collect()
    }

    /// Every program loaded, by aya or for `uprobe_multi` links, with its fd.
    fn loaded_programs(&self) -> impl Iterator<Item = (&str, RawFd)> {
        let by_aya = self.ebpf.programs().filter_map(|(name, prog)| {
            let fd = prog.fd().ok()?.as_fd().as_raw_fd();
            Some((name, fd))
        });
        let for_multi = self
            .multi
            .iter()
            .flat_map(|multi| multi.programs())
            .map(|(name, fd)| (name, fd.as_raw_fd()));
        by_aya.chain(for_multi)
    }
}

/// `BPF_OBJ_GET_INFO_BY_FD` for a program (aya 0.14's `ProgramInfo` does not expose
/// `recursion_misses`).
fn prog_info(fd: RawFd) -> Option<bpf_prog_info> {
    // SAFETY: plain-old-data kernel ABI structs, zero is a valid value for both.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.info.bpf_fd = fd as u32;
    attr.info.info_len = std::mem::size_of::<bpf_prog_info>() as u32;
    attr.info.info = std::ptr::addr_of_mut!(info) as u64;
    // SAFETY: `attr` names a valid program fd and an out-buffer of `info_len` bytes.
    let read = unsafe { super::bpf_syscall(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr) };
    read.ok().map(|_| info)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `prog_info` reads the kernel's own struct: with run-time stats on, its run count of
    /// `task_newtask` lies between two reads by aya around it (other processes may fork
    /// meanwhile), and counts the threads this test created.
    #[test]
    #[ignore = "needs root"]
    fn prog_info_reads_the_kernels_program_counters() {
        let (probes, _ring) =
            Probes::attach(std::process::id(), true, false, false, None, false, 1)
                .expect("attach to ourselves");
        for _ in 0..3 {
            std::thread::spawn(|| ()).join().unwrap();
        }
        let prog = probes.ebpf.program("task_newtask").expect("task_newtask");
        let fd = prog.fd().unwrap().as_fd().as_raw_fd();
        let before = prog.info().unwrap().run_count();
        let ours = prog_info(fd).expect("BPF_OBJ_GET_INFO_BY_FD").run_cnt;
        let after = prog.info().unwrap().run_count();
        assert!(
            before <= ours && ours <= after,
            "{before} <= {ours} <= {after}"
        );
        assert!(ours >= 3, "three threads created, {ours} runs");
        probes.detach().expect("detach, reading the gathered pairs");
    }
}
