//! Loading the kernel programs, attaching them to the target, and reading what the kernel side
//! counts (losses, per-program run time). Dropping [`Probes`] detaches and unloads everything.

use std::os::fd::OwnedFd;

use super::{
    stacks::{StackMapSizes, UserStacks},
    uprobe_multi::MultiUprobes,
    uprobes::UprobeLink,
};
use crate::target::go::runtime::{BodyReadWaits, GOffsets, GoProbeFacts};
use anyhow::{Context as _, Result};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{raw_trace_point::RawTracePointLink, Program, ProgramError, RawTracePoint, UProbe},
    Ebpf, EbpfLoader,
};
use tracer_common::{
    request_keeper, StretchHandedOver, StretchRequestBatch, StretchTable, SyscallPairBatch,
    TcpSocket,
};

/// The interrupt-nesting programs (tracer-ebpf `probes/interrupts.rs`), each attached to the
/// raw tracepoint of its name: exits first.
const INTERRUPT_NESTING_PROGRAMS: [&str; 4] = [
    "irq_handler_exit",
    "hrtimer_expire_exit",
    "irq_handler_entry",
    "hrtimer_expire_entry",
];

/// Whether a program only serves to name wakers: a skipped run of it costs a waker's name,
/// never a request's timeline.
pub fn names_wakers_only(program: &str) -> bool {
    program == "sched_waking" || INTERRUPT_NESTING_PROGRAMS.contains(&program)
}

/// Threads used to detach the links in parallel.
const DETACH_THREADS: usize = 16;

pub(super) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

pub struct Probes {
    pub(super) ebpf: Ebpf,
    _stats: Option<OwnedFd>,
    pub(super) losses: PerCpuArray<MapData, u64>,
    /// The socket read/write pairs each CPU gathers (tracer-ebpf's `held_read.rs`), read
    /// once detached.
    pair_batches: PerCpuArray<MapData, SyscallPairBatch>,
    /// The finished requests each CPU gathers, each CPU's stretch table (the connections its
    /// running thread keeps requests of), and the TCP sockets, whose entries hold those
    /// requests (tracer-ebpf's `stretch.rs`), read once detached.
    stretch_done: PerCpuArray<MapData, StretchRequestBatch>,
    stretch_tables: PerCpuArray<MapData, StretchTable>,
    tcp_sockets: HashMap<MapData, u64, TcpSocket>,
    /// Taken by [`Probes::take_stacks`] before detaching, to be read after.
    stacks: Option<UserStacks>,
    pub(super) stacks_not_stored: PerCpuArray<MapData, u64>,
    raw_links: Vec<RawTracePointLink>,
    /// The interrupt-nesting programs: detached last, so the wakeup programs never run
    /// without them.
    interrupt_links: Vec<RawTracePointLink>,
    /// The TLS and Go scheduler uprobes.
    pub(super) uprobe_links: Vec<UprobeLink>,
    /// Loads and attaches the uprobes as `uprobe_multi` links, while the kernel takes them.
    pub(super) multi: Option<MultiUprobes>,
    pub threads: usize,
    /// `--sample N` picks a connection by its socket's port pair too (BTF gave its offset),
    /// not by its address alone.
    pub picks_by_ports: bool,
}

impl Probes {
    /// Load the programs for `pid` and attach them. Thread tracking is attached first and the
    /// thread set filled from /proc after, so no thread created meanwhile is missed.
    /// `tls`: classify read and write buffers as TLS records or not; `report_eagain`: report
    /// reads and writes that returned EAGAIN (a Go crypto/tls target's goroutines park there);
    /// `go`: the target Go release's struct offsets, which the Go scheduler probes read
    /// (attached later by [`Probes::attach_go_sched`]); `stacks`: take the user stack where a
    /// target thread blocks or a goroutine parks; `sample_one_in`: report the reads and
    /// writes of one connection in N (1: all).
    pub fn attach(
        pid: u32,
        bpf_stats: bool,
        tls: bool,
        report_eagain: bool,
        go: Option<GoProbeFacts>,
        stacks: bool,
        sample_one_in: u32,
    ) -> Result<(Probes, RingBuf<MapData>)> {
        if EBPF_OBJECT.is_empty() {
            anyhow::bail!("this tracer binary was built without its kernel programs (AYA_BUILD_SKIP, or without the `ebpf` feature); rebuild with `cargo xtask build`");
        }
        let stats = if bpf_stats {
            Some(
                aya::sys::enable_stats(aya::sys::Stats::RunTime)
                    .context("enabling BPF run-time stats")?,
            )
        } else {
            None
        };
        let tls_records = u32::from(tls);
        let report_eagain = u32::from(report_eagain);
        let mut loader = EbpfLoader::new();
        loader.map_max_entries("TARGET_TIDS", super::seed::pid_max());
        let stack_maps = StackMapSizes::for_trace(stacks)?;
        for (map, size) in stack_maps.by_map() {
            loader.map_max_entries(map, size);
        }
        loader.override_global("TARGET_TGID", &pid, true);
        loader.override_global("TLS_RECORDS", &tls_records, true);
        loader.override_global("REPORT_EAGAIN", &report_eagain, true);
        let offsets = super::btf::KernelOffsets::find()?;
        loader.override_global("TASK_PID_OFFSET", &offsets.task.pid, true);
        loader.override_global("TASK_EXIT_STATE_OFFSET", &offsets.task.exit_state, true);
        loader.override_global("TASK_STACK_OFFSET", &offsets.task.stack, true);
        loader.override_global("KERNEL_STACK_SIZE", &offsets.task.stack_size, true);
        // Zeros when unknown: switches then carry no steal time, and none is reported.
        let steal = offsets.steal.unwrap_or_default();
        loader.override_global("TASK_CFS_RQ_OFFSET", &steal.task_cfs_rq, true);
        loader.override_global("CFS_RQ_RQ_OFFSET", &steal.cfs_rq_rq, true);
        loader.override_global("RQ_STEAL_OFFSET", &steal.rq_steal, true);
        // Zeros when unknown: a switch-in the kernel did not report is then placed where the
        // thread is first seen running.
        let arrival = offsets.arrival.unwrap_or_default();
        loader.override_global("TASK_LAST_ARRIVAL_OFFSET", &arrival.task_last_arrival, true);
        loader.override_global("RQ_CLOCK_OFFSET", &arrival.rq_clock, true);
        loader.override_global("TASK_RUN_DELAY_OFFSET", &arrival.task_run_delay, true);
        loader.override_global("TASK_NVCSW_OFFSET", &arrival.task_nvcsw, true);
        loader.override_global("TASK_NIVCSW_OFFSET", &arrival.task_nivcsw, true);
        loader.override_global("TASK_LAST_QUEUED_OFFSET", &arrival.task_last_queued, true);
        // The cost floor takes no stack: with its socket programs cut short, no thread has a
        // conversation, so every block would count as inside a request and take one.
        let cost_floor = cost_floor_requested();
        let stacks = stacks && !cost_floor;
        let capture_stacks = u32::from(stacks);
        loader.override_global("CAPTURE_STACKS", &capture_stacks, true);
        // The sites only threads have (a lock's unlocker, a preemption's): not where
        // goroutines are followed, whose runtime threads wake and yield all the time.
        let native_sites = u32::from(stacks && go.is_none());
        loader.override_global("NATIVE_SITES", &native_sites, true);
        // A socket read waits on its CPU to go out with the thread's next write, one record
        // for both, except where goroutines are followed (see tracer-ebpf's held_read.rs).
        let hold_reads = u32::from(go.is_none());
        loader.override_global("HOLD_READS", &hold_reads, true);
        loader.override_global("SAMPLE_ONE_IN", &sample_one_in, true);
        let sock_portpair = offsets.sock_portpair.unwrap_or(0);
        loader.override_global("SOCK_PORTPAIR_OFFSET", &sock_portpair, true);
        // The requests a thread serves in one stretch on its CPU are delimited and timed in
        // the kernel (tracer-ebpf's stretch.rs), where reads are held and every request is
        // attributed. `TRACER_STRETCH_REQUESTS=0` sends every read and write instead (to
        // compare the two).
        // A stretch is told from the next by the thread's `sched_info.last_arrival`, and a
        // read that did not block by its `nvcsw`.
        // Not where EAGAIN reads are reported (Go's crypto/tls hooked): one ends an answered
        // request for the collector, and the kernel side does not keep that rule.
        let stretch_requests = u32::from(
            hold_reads == 1
                && report_eagain == 0
                && arrival.task_last_arrival != 0
                && arrival.task_nvcsw != 0
                && !stretch_requests_turned_off(),
        );
        loader.override_global("STRETCH_REQUESTS", &stretch_requests, true);
        let cost_floor = u32::from(cost_floor);
        loader.override_global("COST_FLOOR", &cost_floor, true);
        // Zero when the scheduler probes are not attached.
        let GoProbeFacts {
            offsets: go,
            body_reads,
        } = go.unwrap_or(GoProbeFacts {
            offsets: GOffsets {
                g_goid: 0,
                g_m: 0,
                m_curg: 0,
                g_schedlink: 0,
            },
            body_reads: BodyReadWaits::default(),
        });
        loader.override_global("GO_G_GOID", &go.g_goid, true);
        loader.override_global("GO_G_M", &go.g_m, true);
        loader.override_global("GO_M_CURG", &go.m_curg, true);
        loader.override_global("GO_G_SCHEDLINK", &go.g_schedlink, true);
        loader.override_global("GO_COND_WAIT_REASON", &body_reads.cond_wait_reason, true);
        loader.override_global("GO_BODY_READ", &body_reads.code, true);
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the kernel programs (is BPF supported and are you root?)")?;
        super::limits::check(&ebpf, pid)?;
        // Before any map is taken out of `ebpf`: it loads programs that use them all.
        let multi = if uprobe_multi_turned_off() {
            None
        } else {
            MultiUprobes::new(&ebpf)
                .inspect_err(super::uprobe_multi::say_unavailable)
                .ok()
        };
        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("map EVENTS")?)?;
        let losses = PerCpuArray::try_from(ebpf.take_map("LOSSES").context("map LOSSES")?)?;
        let stacks = UserStacks::take(&mut ebpf)?;
        let stacks_not_stored = PerCpuArray::try_from(
            ebpf.take_map("STACKS_NOT_STORED")
                .context("map STACKS_NOT_STORED")?,
        )?;
        let pair_batches =
            PerCpuArray::try_from(ebpf.take_map("PAIR_BATCHES").context("map PAIR_BATCHES")?)?;
        let stretch_done =
            PerCpuArray::try_from(ebpf.take_map("STRETCH_DONE").context("map STRETCH_DONE")?)?;
        let tcp_sockets =
            HashMap::try_from(ebpf.take_map("TCP_SOCKETS").context("map TCP_SOCKETS")?)?;
        let stretch_tables = PerCpuArray::try_from(
            ebpf.take_map("STRETCH_TABLES")
                .context("map STRETCH_TABLES")?,
        )?;
        let mut probes = Probes {
            ebpf,
            _stats: stats,
            losses,
            pair_batches,
            stretch_done,
            tcp_sockets,
            stretch_tables,
            stacks: Some(stacks),
            stacks_not_stored,
            raw_links: Vec::new(),
            interrupt_links: Vec::new(),
            uprobe_links: Vec::new(),
            multi,
            threads: 0,
            picks_by_ports: offsets.sock_portpair.is_some(),
        };
        probes.attach_raw("task_newtask", "task_newtask")?;
        probes.attach_raw("sched_process_exit", "sched_process_exit")?;
        probes.threads = probes.add_threads(pid)?;
        probes.attach_interrupt_nesting()?;
        // sched_waking notes the waker that sched_wakeup reports, so it goes first.
        probes.attach_raw("sched_waking", "sched_waking")?;
        probes.attach_raw("sched_wakeup", "sched_wakeup")?;
        probes.attach_raw("sched_wakeup_new", "sched_wakeup_new")?;
        probes.attach_raw("sched_switch", "sched_switch")?;
        // Server-side sockets are noted from their creation on, before their first read.
        probes.attach_raw("inet_sock_set_state", "inet_sock_set_state")?;
        probes.attach_raw("sock_recv_length", "sock_recv_length")?;
        probes.attach_raw("sock_send_length", "sock_send_length")?;
        Ok((probes, ring))
    }

    fn attach_raw(&mut self, program: &str, tracepoint: &str) -> Result<()> {
        let prog: &mut RawTracePoint = loaded(&mut self.ebpf, program, RawTracePoint::load)?;
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

    pub fn attached(&self) -> usize {
        let uprobes: usize = self.uprobe_links.iter().map(UprobeLink::points).sum();
        self.raw_links.len() + self.interrupt_links.len() + uprobes
    }

    /// The uprobes attached as perf events (OpenSSL's, and Go's where the kernel has no
    /// `uprobe_multi` links), which detaching removes one at a time.
    pub fn perf_event_uprobes(&self) -> usize {
        self.uprobe_links
            .iter()
            .filter(|link| matches!(link, UprobeLink::PerfEvent(_)))
            .count()
    }

    /// The user stacks the programs took, to read once they are detached.
    pub fn take_stacks(&mut self) -> Option<UserStacks> {
        self.stacks.take()
    }

    /// Detach every program, and return the pairs the CPUs had gathered and not sent (their
    /// target threads were still on their CPUs); the programs and maps are unloaded when
    /// `self` drops.
    pub fn detach(mut self) -> Result<Gathered> {
        drop(std::mem::take(&mut self.raw_links));
        // Uprobe links wait in the kernel for an RCU Tasks Trace grace period each (about
        // 0.1 s on this VM): a `uprobe_multi` link once for all its points, a perf event
        // uprobe under the global `event_mutex`, so one after the other (see
        // uprobe_multi.rs). 16 perf event Go probes took 1.9 s one by one, 1.3 s in parallel
        // (what is outside the mutex overlaps), so all are dropped from several threads at
        // once.
        let uprobes = chunks(std::mem::take(&mut self.uprobe_links));
        std::thread::scope(|s| {
            for chunk in uprobes {
                s.spawn(move || drop(chunk));
            }
        });
        // Entries before exits, and only once sched_waking is gone: a wakeup from an
        // interrupt is never taken for the task it hit.
        while let Some(link) = self.interrupt_links.pop() {
            drop(link);
        }
        let context = "reading the requests the CPUs had gathered";
        let pairs = self.pair_batches.get(&0, 0).context(context)?;
        let stretch_done = self.stretch_done.get(&0, 0).context(context)?;
        let stretch_kept = self.stretch_kept().context(context)?;
        Ok(Gathered {
            pairs: pairs.iter().filter(|b| b.count != 0).copied().collect(),
            stretch_done: stretch_done
                .iter()
                .filter(|b| b.count != 0)
                .copied()
                .collect(),
            stretch_kept,
        })
    }
}

impl Probes {
    /// The requests still kept in the kernel (their thread, and each as handed over): those
    /// of the connections each CPU's stretch table lists, whose `TCP_SOCKETS` entry says that
    /// CPU's thread keeps them (a connection can be listed twice, or no longer kept there),
    /// looked up one by one rather than by a pass over every TCP socket of the host.
    fn stretch_kept(&self) -> Result<Vec<(u32, StretchHandedOver)>> {
        let tables = self.stretch_tables.get(&0, 0)?;
        let mut kept = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (cpu, table) in tables.iter().enumerate() {
            for &sock in table.socks() {
                let Ok(tcp) = self.tcp_sockets.get(&sock, 0) else {
                    continue; // closed since (its request ended then)
                };
                let here = tcp.keeper == request_keeper::STRETCH
                    && tcp.stretch_tid == table.owner_tid
                    && tcp.stretch_cpu as usize == cpu;
                if here && seen.insert(sock) {
                    kept.push((tcp.stretch_tid, tcp.handed_over()));
                }
            }
        }
        Ok(kept)
    }
}

/// What the CPUs still held when the programs were detached: records like the ring's, read
/// from their maps.
pub struct Gathered {
    pub pairs: Vec<SyscallPairBatch>,
    pub stretch_done: Vec<StretchRequestBatch>,
    /// The requests still kept in the kernel: their thread, and each as handed over.
    pub stretch_kept: Vec<(u32, StretchHandedOver)>,
}

/// `TRACER_UPROBE_MULTI=0`: every uprobe is a perf event of its own, as on kernels without
/// `uprobe_multi` links.
fn uprobe_multi_turned_off() -> bool {
    std::env::var_os("TRACER_UPROBE_MULTI").is_some_and(|v| v == "0")
}

/// `TRACER_STRETCH_REQUESTS=0`: no request is kept in the kernel.
fn stretch_requests_turned_off() -> bool {
    std::env::var_os("TRACER_STRETCH_REQUESTS").is_some_and(|v| v == "0")
}

/// `TRACER_COST_FLOOR=1`, for `cargo xtask bench`: the socket programs stop after the least
/// any design that times every request does on each read and write of the target's (its
/// socket's entry looked up, the clock read), no stack is taken, and no request is
/// attributed (the scheduler programs still send the target's switches and wakeups). The bench's
/// `tracer floor` row: what the tracer cannot cost less than with every request timed.
pub fn cost_floor_requested() -> bool {
    std::env::var_os("TRACER_COST_FLOOR").is_some_and(|v| v == "1")
}

/// The program `name` of the object, as type `P`.
pub(super) fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?;
    Ok(program.try_into()?)
}

/// The program `name`, loaded into the kernel (once: `load` is its type's load function).
pub(super) fn loaded<'a, P: HasFd>(
    ebpf: &'a mut Ebpf,
    name: &str,
    load: fn(&mut P) -> Result<(), ProgramError>,
) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let program = program_mut::<P>(ebpf, name)?;
    if !program.is_loaded() {
        load(program)
            .with_context(|| format!("loading program {name} (the verifier refused it?)"))?;
    }
    Ok(program)
}

/// What tells whether a program is loaded (its fd exists once it is).
pub(super) trait HasFd {
    fn is_loaded(&self) -> bool;
}

macro_rules! has_fd {
    ($($program:ty),*) => {$(
        impl HasFd for $program {
            fn is_loaded(&self) -> bool {
                self.fd().is_ok()
            }
        }
    )*};
}

has_fd!(RawTracePoint, UProbe);

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
