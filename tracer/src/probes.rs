//! Loading the kernel programs, attaching them to the target, and reading what the kernel side
//! counts (losses, per-program run time). Dropping [`Probes`] detaches and unloads everything.

use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd, RawFd},
};

use anyhow::{Context as _, Result};
use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        raw_trace_point::RawTracePointLink, trace_point::TracePointLink, RawTracePoint, TracePoint,
    },
    Ebpf, EbpfLoader,
};
use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_info, BPF_NOEXIST};
use tracer_common::{layout, InSyscall, LOSS_KINDS};

use crate::{
    go_tls,
    tls::{self, TlsStatus},
    tracefs,
};

/// The interrupt-nesting programs (tracer-ebpf `probes/interrupts.rs`), each attached to the
/// raw tracepoint of its name: exits first.
const INTERRUPT_NESTING_PROGRAMS: [&str; 6] = [
    "irq_handler_exit",
    "softirq_exit",
    "hrtimer_expire_exit",
    "irq_handler_entry",
    "softirq_entry",
    "hrtimer_expire_entry",
];

/// Whether a program only serves to name wakers: a skipped run of it costs a waker's name,
/// never a request's timeline.
pub fn names_wakers_only(program: &str) -> bool {
    program == "sched_waking" || INTERRUPT_NESTING_PROGRAMS.contains(&program)
}

/// Threads used to detach the links in parallel.
const DETACH_THREADS: usize = 16;

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

pub struct Probes {
    ebpf: Ebpf,
    _stats: Option<OwnedFd>,
    losses: PerCpuArray<MapData, u64>,
    links: Vec<TracePointLink>,
    raw_links: Vec<RawTracePointLink>,
    /// The interrupt-nesting programs: detached last, so the wakeup programs never run
    /// without them.
    interrupt_links: Vec<RawTracePointLink>,
    tls_links: Vec<aya::programs::uprobe::UProbeLink>,
    pub threads: usize,
}

/// Run time of one kernel program, from the kernel's BPF stats.
pub struct ProgramStat {
    pub name: String,
    pub run_count: u64,
    pub run_time_ns: u64,
}

/// The programs read tracepoint fields at fixed offsets (`tracer_common::layout`); refuse to
/// load them on a kernel whose tracefs format files say otherwise.
fn check_layout() -> Result<()> {
    for (category, event, field, expected) in layout::FIELDS {
        let actual = tracefs::field_offset(category, event, field)?;
        if actual as usize != *expected {
            anyhow::bail!(
                "unsupported kernel: tracepoint {category}:{event} has `{field}` at offset {actual}, the programs expect {expected}"
            );
        }
    }
    Ok(())
}

impl Probes {
    /// Load the programs for `pid` and attach them. Thread tracking is attached first and the
    /// thread set filled from /proc after, so no thread created meanwhile is missed.
    /// `tls`: classify read and write buffers as TLS records or not; `report_eagain`: report
    /// reads and writes that returned EAGAIN (a Go crypto/tls target's goroutines park there).
    pub fn attach(
        pid: u32,
        bpf_stats: bool,
        tls: bool,
        report_eagain: bool,
    ) -> Result<(Probes, RingBuf<MapData>)> {
        if EBPF_OBJECT.is_empty() {
            anyhow::bail!("this tracer binary was built without its kernel programs (AYA_BUILD_SKIP); rebuild with `cargo xtask build`");
        }
        let stats = if bpf_stats {
            Some(
                aya::sys::enable_stats(aya::sys::Stats::RunTime)
                    .context("enabling BPF run-time stats")?,
            )
        } else {
            None
        };
        check_layout()?;
        let tls_records = u32::from(tls);
        let report_eagain = u32::from(report_eagain);
        let mut loader = EbpfLoader::new();
        loader.override_global("TARGET_TGID", &pid, true);
        loader.override_global("TLS_RECORDS", &tls_records, true);
        loader.override_global("REPORT_EAGAIN", &report_eagain, true);
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the kernel programs (is BPF supported and are you root?)")?;
        crate::kernel_limits::check(&ebpf, pid)?;
        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("map EVENTS")?)?;
        let losses = PerCpuArray::try_from(ebpf.take_map("LOSSES").context("map LOSSES")?)?;
        let mut probes = Probes {
            ebpf,
            _stats: stats,
            losses,
            links: Vec::new(),
            raw_links: Vec::new(),
            interrupt_links: Vec::new(),
            tls_links: Vec::new(),
            threads: 0,
        };
        probes.attach_tp("task_newtask", "task", "task_newtask")?;
        probes.attach_tp("sched_process_exit", "sched", "sched_process_exit")?;
        probes.threads = probes.add_threads(pid)?;
        probes.attach_interrupt_nesting()?;
        // sched_waking notes the waker that sched_wakeup reports, so it goes first.
        probes.attach_tp("sched_waking", "sched", "sched_waking")?;
        probes.attach_tp("sched_wakeup", "sched", "sched_wakeup")?;
        probes.attach_tp("sched_wakeup_new", "sched", "sched_wakeup_new")?;
        probes.attach_tp("sched_switch", "sched", "sched_switch")?;
        probes.attach_raw("sys_exit", "sys_exit")?;
        probes.attach_raw("sys_enter", "sys_enter")?;
        probes.seed_in_syscall(pid);
        Ok((probes, ring))
    }

    /// Threads already blocked in a syscall when the tracer attached (an idle
    /// keep-alive read, a pending accept) entered it unseen. Their syscall is read from
    /// /proc/PID/task/TID/syscall and entered into `IN_SYSCALL` unless the kernel side has
    /// seen a newer entry (BPF_NOEXIST). A thread that leaves the syscall between the read and
    /// the insert leaves a stale entry until its next traced syscall.
    fn seed_in_syscall(&mut self, pid: u32) {
        let Some(map) = self.ebpf.map_mut("IN_SYSCALL") else {
            return;
        };
        let Ok(mut in_syscall) = BpfHashMap::<&mut MapData, u32, InSyscall>::try_from(map) else {
            return;
        };
        let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
            return;
        };
        let now = monotonic_ns();
        for entry in dir.flatten() {
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(text) = fs::read_to_string(entry.path().join("syscall")) else {
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
            };
            let _ = in_syscall.insert(tid, inside, u64::from(BPF_NOEXIST));
        }
    }

    fn attach_tp(&mut self, program: &str, category: &str, name: &str) -> Result<()> {
        let prog: &mut TracePoint = self
            .ebpf
            .program_mut(program)
            .with_context(|| format!("program {program} missing from the object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("loading program {program} (the verifier refused it?)"))?;
        }
        let id = prog
            .attach(category, name)
            .with_context(|| format!("attaching {program} to tracepoint {category}:{name}"))?;
        self.links.push(prog.take_link(id)?);
        Ok(())
    }

    fn attach_raw(&mut self, program: &str, tracepoint: &str) -> Result<()> {
        let prog: &mut RawTracePoint = self
            .ebpf
            .program_mut(program)
            .with_context(|| format!("program {program} missing from the object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("loading program {program} (the verifier refused it?)"))?;
        }
        let id = prog
            .attach(tracepoint)
            .with_context(|| format!("attaching {program} to raw tracepoint {tracepoint}"))?;
        self.raw_links.push(prog.take_link(id)?);
        Ok(())
    }

    /// The per-CPU interrupt nesting that tells a wakeup from an interrupt (a timer, a packet)
    /// from a task's own (see tracer-ebpf `probes/interrupts.rs`). Exits are attached before
    /// entries, so no entry is ever counted without its exit.
    fn attach_interrupt_nesting(&mut self) -> Result<()> {
        for tracepoint in INTERRUPT_NESTING_PROGRAMS {
            self.attach_raw(tracepoint, tracepoint)?;
            self.interrupt_links.extend(self.raw_links.pop());
        }
        Ok(())
    }

    /// Put the target's current threads into the thread-id set; returns how many.
    fn add_threads(&mut self, pid: u32) -> Result<usize> {
        let mut tids: BpfHashMap<&mut MapData, u32, u8> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("TARGET_TIDS")
                .context("map TARGET_TIDS")?,
        )?;
        let dir = fs::read_dir(format!("/proc/{pid}/task"))
            .with_context(|| format!("listing the threads of PID {pid}"))?;
        let mut count = 0;
        for entry in dir.flatten() {
            if let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            {
                tids.insert(tid, 1, 0)
                    .context("adding a thread to TARGET_TIDS")?;
                count += 1;
            }
        }
        Ok(count)
    }

    pub fn attached(&self) -> usize {
        self.links.len() + self.raw_links.len() + self.interrupt_links.len() + self.tls_links.len()
    }

    /// Find the target's TLS libraries (OpenSSL, Go's crypto/tls) and hook their handshakes.
    /// `go` is what [`go_tls::find_go_tls`] found in the target.
    /// `io_probes`: also probe OpenSSL's read and write functions (see `--tls-io-probes`).
    pub fn attach_tls(
        &mut self,
        pid: u32,
        go: Result<Option<go_tls::GoTls>>,
        io_probes: bool,
    ) -> TlsStatus {
        let mut status = TlsStatus::default();
        let mut not_hooked = Vec::new();
        match tls::find_openssl(pid) {
            None => not_hooked.push(
                "no OpenSSL (no libssl mapped, no SSL_* symbols in the executable)".to_string(),
            ),
            Some(ssl) => match tls::attach(&mut self.ebpf, pid, &ssl, io_probes) {
                Ok((links, hooked)) if !hooked.is_empty() => {
                    self.tls_links.extend(links);
                    status.found(format!("OpenSSL {}", ssl.library), hooked);
                }
                Ok(_) => not_hooked.push(format!(
                    "OpenSSL {}: none of the SSL_* functions found in {}",
                    ssl.library,
                    ssl.path.display()
                )),
                Err(e) => not_hooked.push(format!("OpenSSL {}: {}", ssl.library, why(&e))),
            },
        }
        match go {
            Ok(None) => not_hooked.push("no Go crypto/tls".to_string()),
            Ok(Some(go)) => match go_tls::attach(&mut self.ebpf, pid, &go) {
                Ok((links, hooked)) => {
                    self.tls_links.extend(links);
                    status.found(
                        format!("{} (found in its {})", go.library, go.found_in),
                        hooked,
                    );
                }
                Err(e) => not_hooked.push(format!("{}: {}", go.library, why(&e))),
            },
            Err(e) => not_hooked.push(format!("Go crypto/tls: {e:#}")),
        }
        if status.library.is_none() {
            status.reason = Some(not_hooked.join("; "));
        }
        status
    }

    /// Detach every program. Each tracepoint detach waits for an RCU grace period in the
    /// kernel (tens of ms here), so the links are dropped from several threads at once; the
    /// programs and maps are unloaded when `self` drops.
    pub fn detach(mut self) {
        drop(std::mem::take(&mut self.raw_links));
        // Uprobe links wait in the kernel too: 16 Go probes took 1.9 s one by one, 1.3 s in
        // parallel (the kernel serialises part of uprobe unregistration).
        let tracepoints = chunks(std::mem::take(&mut self.links));
        let uprobes = chunks(std::mem::take(&mut self.tls_links));
        std::thread::scope(|s| {
            for chunk in tracepoints {
                s.spawn(move || drop(chunk));
            }
            for chunk in uprobes {
                s.spawn(move || drop(chunk));
            }
        });
        // Entries before exits, and only once sched_waking is gone: a wakeup from an
        // interrupt is never taken for the task it hit.
        while let Some(link) = self.interrupt_links.pop() {
            drop(link);
        }
    }

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

    /// Runs of each program the kernel skipped (`bpf_prog_info.recursion_misses`, Linux 5.12+):
    /// a tracepoint program does not run while another tracing program runs on the same CPU
    /// (`bpf_prog_active`), nor a raw tracepoint program while it already runs there (an
    /// interrupt arriving during it): those events were never seen. Programs with none are
    /// left out.
    pub fn skipped_runs(&self) -> Vec<(String, u64)> {
        self.ebpf
            .programs()
            .filter_map(|(name, prog)| {
                let fd = prog.fd().ok()?.as_fd().as_raw_fd();
                let misses = prog_info(fd)?.recursion_misses;
                (misses > 0).then(|| (name.to_string(), misses))
            })
            .collect()
    }

    /// Per-program run counts and times (non-zero only with `--bpf-stats`).
    pub fn program_stats(&self) -> Vec<ProgramStat> {
        self.ebpf
            .programs()
            .filter_map(|(name, prog)| {
                let info = prog.info().ok()?;
                Some(ProgramStat {
                    name: name.to_string(),
                    run_count: info.run_count(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                })
            })
            .collect()
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
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            std::ptr::addr_of_mut!(attr),
            std::mem::size_of::<bpf_attr>(),
        )
    };
    (ret == 0).then_some(info)
}

/// Why a TLS library was not hooked: the privilege the kernel asked for, or the error.
fn why(e: &anyhow::Error) -> String {
    if tls::uprobe_refused(e) {
        tls::UPROBES_REFUSED.to_string()
    } else {
        format!("{e:#}")
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

/// CLOCK_MONOTONIC in ns, the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `links` in at most [`DETACH_THREADS`] groups, to drop in parallel.
fn chunks<T>(links: Vec<T>) -> Vec<Vec<T>> {
    let per_thread = links.len().div_ceil(DETACH_THREADS).max(1);
    let mut chunks = Vec::new();
    let mut links = links.into_iter().peekable();
    while links.peek().is_some() {
        chunks.push(links.by_ref().take(per_thread).collect());
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `prog_info` reads the kernel's own struct: with run-time stats on, its run count of
    /// `task_newtask` lies between two reads by aya around it (other processes may fork
    /// meanwhile), and counts the threads this test created.
    #[test]
    fn prog_info_reads_the_kernels_program_counters() {
        if unsafe { libc::geteuid() } != 0 || EBPF_OBJECT.is_empty() {
            eprintln!("skipped: needs root and the kernel programs (cargo xtask test)");
            return;
        }
        let (probes, _ring) =
            Probes::attach(std::process::id(), true, false, false).expect("attach to ourselves");
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
        probes.detach();
    }

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
