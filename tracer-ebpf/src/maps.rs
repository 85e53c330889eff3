//! Maps, load-time globals and helpers shared by the probes, and the one loss path: every
//! program's entry is `fn prog(ctx) -> u32 { finish(try_prog(&ctx)) }`, where `try_prog`
//! returns `Ok` when the event was handled or was not the target's, and the reason when it
//! was lost, which [`finish`] counts.

use aya_ebpf::{
    bindings::{pt_regs, BPF_ANY, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        bpf_task_pt_regs,
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
};
use tracer_common::{
    stack_id, syscall_in_progress, Conversation, EventHeader, IrqNesting, Loss, PendingWakeup,
    TcpSocket, LOSS_KINDS, MAX_GOROUTINE_CONVERSATIONS, MAX_SPILLED_STACKS, MAX_STACKS,
    MAX_TARGET_THREADS, MAX_TCP_SOCKETS, NO_STACK, RING_BYTES,
};

/// Set by the collector at load time (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static TARGET_TGID: u32 = 0;

/// 1: report whether read/write buffers start with a TLS record header (`--tls on`).
#[unsafe(no_mangle)]
static TLS_RECORDS: u32 = 0;

/// Byte offsets of `task_struct.pid` and `task_struct.exit_state`, found by the collector in
/// the kernel's BTF (the raw scheduler tracepoints pass tasks, not their fields).
#[unsafe(no_mangle)]
static TASK_PID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TASK_EXIT_STATE_OFFSET: u32 = 0;

/// A task's thread id.
#[inline(always)]
pub fn task_pid(task: u64) -> Result<u32, Loss> {
    read_kernel_at(task, global(&TASK_PID_OFFSET))
}

/// The current task's `exit_state` (`EXIT_ZOMBIE`, `EXIT_DEAD`, or 0).
#[inline(always)]
pub fn current_exit_state() -> Result<u32, Loss> {
    read_kernel_at(
        unsafe { bpf_get_current_task() },
        global(&TASK_EXIT_STATE_OFFSET),
    )
}

/// Byte offset of `task_struct.stack`, and the size of a task's kernel stack (THREAD_SIZE),
/// found by the collector in the kernel's BTF.
#[unsafe(no_mangle)]
static TASK_STACK_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static KERNEL_STACK_SIZE: u32 = 0;

/// Whether the raw tracepoint with context `ctx` fired on the current task's own kernel
/// stack, i.e. not in an interrupt. x86-64 runs device interrupt handlers, system vectors
/// and softirqs on the per-CPU IRQ stack, softirqs run from `local_bh_enable()` included
/// (`do_softirq_own_stack()`, arch/x86/include/asm/irq_stack.h), and NMIs and exceptions on
/// IST stacks (Linux 6.18).
///
/// Where the tracepoint fired: a raw tracepoint's context is its `u64 args[]`, a local of
/// the kernel's `bpf_trace_runN()` on the stack the tracepoint was hit on. (Not this
/// program's own stack: the JIT gives a program with a large frame a per-CPU private stack,
/// Linux 6.13+.)
#[inline(always)]
pub fn fired_on_task_stack(ctx: *mut core::ffi::c_void) -> Result<bool, Loss> {
    let stack: u64 = read_kernel_at(
        unsafe { bpf_get_current_task() },
        global(&TASK_STACK_OFFSET),
    )?;
    // The verifier allows no arithmetic on a context pointer, so its value is copied out as
    // plain bytes first.
    // SAFETY: a checked read of a local of this program.
    let args: u64 = unsafe { bpf_probe_read_kernel(&raw const ctx as *const u64) }
        .map_err(|_| Loss::ReadFailed)?;
    Ok(args.wrapping_sub(stack) < u64::from(global(&KERNEL_STACK_SIZE)))
}

/// The value at `base + offset` in kernel memory, where `offset` comes from the kernel's own
/// BTF (a NULL `base` fails the read).
#[inline(always)]
fn read_kernel_at<T>(base: u64, offset: u32) -> Result<T, Loss> {
    let address = base.wrapping_add(u64::from(offset)) as *const T;
    // SAFETY: a checked read; the helper fails on an unreadable address.
    unsafe { bpf_probe_read_kernel(address) }.map_err(|_| Loss::ReadFailed)
}

/// The value at `address` in the current task's user memory (the target's: a socket
/// buffer's first bytes, a Go goroutine's fields and frames).
#[inline(always)]
pub fn read_user<T>(address: u64) -> Result<T, Loss> {
    // SAFETY: a checked read; the helper fails on an unreadable address.
    unsafe { bpf_probe_read_user(address as *const T) }.map_err(|_| Loss::ReadFailed)
}

/// Byte offsets, found by the collector in the kernel's BTF, of `task_struct.se.cfs_rq`,
/// `cfs_rq.rq` and `rq.prev_steal_time_rq` (0: not found, steal not reported).
#[unsafe(no_mangle)]
static TASK_CFS_RQ_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static CFS_RQ_RQ_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static RQ_STEAL_OFFSET: u32 = 0;

/// Each CPU's run queue (`struct rq *`), once found: it never changes, so the two pointer
/// reads that find it are done once per CPU.
#[map]
static CPU_RQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The steal time the current CPU's run queue has accounted so far, in ns (0: unknown, or
/// none).
#[inline(always)]
pub fn cpu_steal_ns() -> u64 {
    let steal_at = global(&RQ_STEAL_OFFSET);
    if steal_at == 0 {
        return 0;
    }
    match this_cpu_rq() {
        0 => 0,
        rq => read_kernel_at(rq, steal_at).unwrap_or(0),
    }
}

/// This CPU's run queue, found once per CPU (0: not found).
#[inline(always)]
fn this_cpu_rq() -> u64 {
    let Some(cached) = CPU_RQ.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's own entry; programs on a CPU do not nest into this update.
    unsafe {
        if *cached == 0 {
            *cached = current_rq();
        }
        *cached
    }
}

/// Byte offsets, found by the collector in the kernel's BTF, of
/// `task_struct.sched_info.last_arrival` and `rq.clock` (0: not found).
#[unsafe(no_mangle)]
static TASK_LAST_ARRIVAL_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static RQ_CLOCK_OFFSET: u32 = 0;
/// Byte offset of `task_struct.sched_info.run_delay` (0: not found).
#[unsafe(no_mangle)]
static TASK_RUN_DELAY_OFFSET: u32 = 0;
/// Byte offset of `task_struct.nvcsw` (0: not found).
#[unsafe(no_mangle)]
static TASK_NVCSW_OFFSET: u32 = 0;

/// Byte offset of `task_struct.nivcsw` (0: not found).
#[unsafe(no_mangle)]
static TASK_NIVCSW_OFFSET: u32 = 0;

/// The current task's context switches so far.
#[derive(Clone, Copy)]
pub struct Switches {
    /// `nvcsw`: counted by `__schedule()` at each switch away from the task when it blocked
    /// (kernel/sched/core.c, Linux 6.18).
    pub voluntary: u64,
    /// `nivcsw`: its preemptions, counted there as `nvcsw` is.
    pub involuntary: u64,
}

impl Switches {
    /// Blocks and preemptions.
    #[inline(always)]
    pub fn all(&self) -> u64 {
        self.voluntary + self.involuntary
    }
}

/// The current task's [`Switches`]: one kernel read when `nivcsw` follows `nvcsw` in
/// `task_struct` (as in Linux 6.18, include/linux/sched.h), two otherwise; each 0 when
/// unknown or unreadable.
#[inline(always)]
pub fn current_switches() -> Switches {
    let (voluntary_at, involuntary_at) = (global(&TASK_NVCSW_OFFSET), global(&TASK_NIVCSW_OFFSET));
    let task = unsafe { bpf_get_current_task() };
    if voluntary_at != 0 && involuntary_at == voluntary_at + 8 {
        let [voluntary, involuntary] =
            read_kernel_at::<[u64; 2]>(task, voluntary_at).unwrap_or([0, 0]);
        return Switches {
            voluntary,
            involuntary,
        };
    }
    Switches {
        voluntary: task_u64(task, &TASK_NVCSW_OFFSET),
        involuntary: task_u64(task, &TASK_NIVCSW_OFFSET),
    }
}

/// The u64 at the byte offset `offset` (a global the collector set; 0: not found) of the
/// current task's `task_struct`; 0 when unknown or unreadable.
#[inline(always)]
fn current_task_u64(offset: &'static u32) -> u64 {
    task_u64(unsafe { bpf_get_current_task() }, offset)
}

/// The u64 at the byte offset `offset` (a global the collector set; 0: not found) of
/// `task`; 0 when unknown or unreadable.
#[inline(always)]
fn task_u64(task: u64, offset: &'static u32) -> u64 {
    let at = global(offset);
    if at == 0 {
        return 0;
    }
    read_kernel_at::<u64>(task, at).unwrap_or(0)
}

/// The current task's total wait for a CPU so far (`sched_info.run_delay`, grown by
/// `sched_info_arrive()` when a wait ends, kernel/sched/stats.h, Linux 6.18); 0 when unknown.
#[inline(always)]
pub fn current_run_delay_ns() -> u64 {
    current_task_u64(&TASK_RUN_DELAY_OFFSET)
}

/// The scheduler's clock when the current task last got its CPU (`sched_info.last_arrival`,
/// set by `sched_info_arrive()` at each switch-in, kernel/sched/stats.h, Linux 6.18): it
/// names the task's current stretch on the CPU. 0 when unknown.
#[inline(always)]
pub fn current_last_arrival() -> u64 {
    current_task_u64(&TASK_LAST_ARRIVAL_OFFSET)
}

/// How long the current task has been on this CPU, as far as the scheduler's clock says: its
/// run queue's clock less the task's `sched_info.last_arrival`, the run queue's clock when it
/// got the CPU (`sched_info_arrive()`, kernel/sched/stats.h, Linux 6.18). That clock is
/// brought up to date at each `__schedule()` before sched_switch fires, and otherwise only
/// at ticks and wakeups on this CPU, so elsewhere this is a lower bound. (Both are the
/// scheduler's clock, not CLOCK_MONOTONIC: only their difference is used.) 0 when unknown.
#[inline(always)]
pub fn current_on_cpu_for_ns() -> u64 {
    let task = unsafe { bpf_get_current_task() };
    rq_clock_since(task, &TASK_LAST_ARRIVAL_OFFSET).unwrap_or(0)
}

/// Byte offset of `task_struct.sched_info.last_queued` (0: not found).
#[unsafe(no_mangle)]
static TASK_LAST_QUEUED_OFFSET: u32 = 0;

/// The total wait for a CPU of `task`, about to get this CPU (sched_switch's `next`), the
/// wait that ends now included: its `sched_info.run_delay`, which `sched_info_arrive()`
/// grows only after sched_switch, plus its wait in this run queue, this run queue's clock
/// (brought up to date by `__schedule()` before sched_switch) less its
/// `sched_info.last_queued` (set from its run queue's clock by `sched_info_enqueue()`).
/// A task moved here from another CPU's queue had its wait there added to `run_delay` by
/// `sched_info_dequeue()` (kernel/sched/stats.h, Linux 6.18). 0 when unknown; without
/// `last_queued` (not in the kernel's BTF, or not set), the wait in this run queue is left
/// out, so the total is a lower bound.
#[inline(always)]
pub fn run_delay_through_now_ns(task: u64) -> u64 {
    let total = task_u64(task, &TASK_RUN_DELAY_OFFSET);
    if total == 0 {
        return 0;
    }
    total + rq_clock_since(task, &TASK_LAST_QUEUED_OFFSET).unwrap_or(0)
}

/// This CPU's run queue clock less the scheduler-clock timestamp at byte offset `offset` of
/// `task` (0 there: not set; `None` then, and when unknown or unreadable).
#[inline(always)]
fn rq_clock_since(task: u64, offset: &'static u32) -> Option<u64> {
    let (stamp_at, clock_at) = (global(offset), global(&RQ_CLOCK_OFFSET));
    if stamp_at == 0 || clock_at == 0 {
        return None;
    }
    let rq = this_cpu_rq();
    if rq == 0 {
        return None;
    }
    let stamp = read_kernel_at::<u64>(task, stamp_at)
        .ok()
        .filter(|&s| s != 0)?;
    let clock = read_kernel_at::<u64>(rq, clock_at).ok()?;
    Some(clock.saturating_sub(stamp))
}

/// The target thread the tracer last saw switched in on each CPU (0: the last switch seen
/// there switched in another task). A target thread that runs while its CPU's entry names
/// another had a switch-in the kernel did not report (see `probes::sched`).
#[map]
pub static ON_CPU: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's run queue, through the current task's CFS run queue, which is this CPU's (a
/// task's `se.cfs_rq` follows it to each CPU it runs on); 0 when unreadable.
#[inline(always)]
fn current_rq() -> u64 {
    let task = unsafe { bpf_get_current_task() };
    read_kernel_at::<u64>(task, global(&TASK_CFS_RQ_OFFSET))
        .and_then(|cfs_rq| read_kernel_at(cfs_rq, global(&CFS_RQ_RQ_OFFSET)))
        .unwrap_or(0)
}

/// `--sample N`: report the reads and writes of one socket in N (0 or 1: every socket's; see
/// `tracer_common::connection_sampled`).
#[unsafe(no_mangle)]
static SAMPLE_ONE_IN: u32 = 0;

#[inline(always)]
pub fn sample_one_in() -> u32 {
    global(&SAMPLE_ONE_IN)
}

#[inline(always)]
pub fn tls_records() -> bool {
    global(&TLS_RECORDS) != 0
}

/// 1: report reads and writes that returned EAGAIN (a Go crypto/tls target: a handshake's
/// goroutine parks in the netpoller after one, which is where its wait for the peer starts).
#[unsafe(no_mangle)]
static REPORT_EAGAIN: u32 = 0;

#[inline(always)]
pub fn report_eagain() -> bool {
    global(&REPORT_EAGAIN) != 0
}

/// 1: take the user stack where a target thread blocks or a goroutine parks (`--stacks on`).
#[unsafe(no_mangle)]
static CAPTURE_STACKS: u32 = 0;

#[inline(always)]
pub fn capture_stacks() -> bool {
    global(&CAPTURE_STACKS) != 0
}

/// 1: take the stacks only a thread's sites need (`--stacks on`, goroutines not followed):
/// a lock's unlocker (the target thread that wakes a futex waiter inside a request) and a
/// preemption inside a request.
#[unsafe(no_mangle)]
static NATIVE_SITES: u32 = 0;

#[inline(always)]
pub fn native_sites() -> bool {
    global(&NATIVE_SITES) != 0
}

/// User stacks (return addresses), deduplicated by the kernel: an event carries the id
/// (`tracer_common::STACK_MAPS`).
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(MAX_STACKS, 0);

/// The stacks whose bucket in [`STACKS`] holds another stack (see `tracer_common::STACK_MAPS`).
#[map]
pub static SPILLED_STACKS: StackTrace = StackTrace::with_max_entries(MAX_SPILLED_STACKS, 0);

/// The stacks whose buckets in [`STACKS`] and [`SPILLED_STACKS`] hold other stacks: a second
/// slot for each bucket of [`SPILLED_STACKS`], of the same size (the kernel's hash has a
/// fixed seed, so a stack has the same bucket index in both).
#[map]
pub static SPILLED_STACKS_2: StackTrace = StackTrace::with_max_entries(MAX_SPILLED_STACKS, 0);

/// `bpf_get_stackid()`'s errors after which the next stack map is tried: the stack's bucket
/// holds another stack (`EEXIST`), or the map had no free element for it (`ENOMEM`: while
/// the collector reads a bucket, `bpf_stackmap_copy()` holds its element out of the map, and
/// a one-bucket map then has none left; kernel/bpf/stackmap.c, Linux 6.18).
#[inline(always)]
fn stack_goes_to_next_map(error: i32) -> bool {
    const EEXIST: i32 = 17;
    const ENOMEM: i32 = 12;
    error == -EEXIST || error == -ENOMEM
}

/// The id of the current task's user stack in the first of [`STACKS`], [`SPILLED_STACKS`]
/// and [`SPILLED_STACKS_2`] that stores it (`tracer_common::stack_id`), or `NO_STACK` when
/// stacks are off or the kernel could not take it (no user stack, or no room in any of the
/// three: counted in [`STACKS_NOT_STORED`]). A stack that spills is walked again for each
/// map it is offered to.
#[inline(always)]
pub fn user_stack_id<C: aya_ebpf::programs::tracing::StackIdContext>(ctx: &C) -> i32 {
    if !capture_stacks() {
        return NO_STACK;
    }
    let user = u64::from(aya_ebpf::bindings::BPF_F_USER_STACK);
    match ctx.get_stackid(&STACKS, user) {
        Ok(id) => return stack_id(0, id as u32),
        Err(e) if !stack_goes_to_next_map(e) => return NO_STACK,
        Err(_) => {}
    }
    match ctx.get_stackid(&SPILLED_STACKS, user) {
        Ok(id) => return stack_id(1, id as u32),
        Err(e) if !stack_goes_to_next_map(e) => return NO_STACK,
        Err(_) => {}
    }
    match ctx.get_stackid(&SPILLED_STACKS_2, user) {
        Ok(id) => stack_id(2, id as u32),
        Err(e) => {
            if stack_goes_to_next_map(e) {
                count_stack_not_stored();
            }
            NO_STACK
        }
    }
}

/// Stacks the kernel took that no stack map had room for, per CPU (one slot).
#[map]
pub static STACKS_NOT_STORED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn count_stack_not_stored() {
    if let Some(slot) = STACKS_NOT_STORED.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; programs do not nest on a CPU.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn global(v: &'static u32) -> u32 {
    // Volatile so the compiler cannot fold the zero initial value into the code.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
pub fn target_tgid() -> u32 {
    global(&TARGET_TGID)
}

/// Ring buffer of event records to the collector.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// The target's thread ids: 1 at index `tid` for each. Filled by the collector from /proc at
/// attach time and kept current by the thread probes. An array indexed by tid, sized by the
/// collector to the kernel's `pid_max`: every context switch and wakeup on the host asks
/// whether its task is the target's, and an array load costs a fraction of a hash lookup.
#[map]
pub static TARGET_TIDS: Array<u8> = Array::with_max_entries(1, 0);

/// Whether thread `tid` is the target's.
#[inline(always)]
pub fn is_target_tid(tid: u32) -> bool {
    TARGET_TIDS.get(tid).is_some_and(|&member| member != 0)
}

/// Mark thread `tid` as the target's, or no longer.
#[inline(always)]
pub fn set_target_tid(tid: u32, member: bool) -> Result<(), Loss> {
    let slot = TARGET_TIDS.get_ptr_mut(tid).ok_or(Loss::MapFull)?;
    // SAFETY: a valid pointer into the array.
    unsafe { *slot = u8::from(member) };
    Ok(())
}

/// Each target thread's conversation (see [`Conversation`]) while it is off its CPU, keyed
/// by tid (`conversation.rs` keeps the running thread's in a per-CPU slot).
#[map]
pub static CONVERSATIONS: HashMap<u32, Conversation> =
    HashMap::with_max_entries(MAX_TARGET_THREADS, 0);

/// Each goroutine's conversation in a Go target, keyed by its `g` address (kept by
/// `conversation.rs`): a goroutine is what reads and answers a request there, on whichever
/// thread runs it.
#[map]
pub static GO_CONVERSATIONS: LruHashMap<u64, Conversation> =
    LruHashMap::with_max_entries(MAX_GOROUTINE_CONVERSATIONS, 0);

/// The host's TCP sockets by `struct sock *`, from their first state change to their close
/// (kept by `inet_sock_set_state`): a socket read or write says which connection it was on
/// and whether it is the server side, with no accept, connect or close hook.
#[map]
pub static TCP_SOCKETS: LruHashMap<u64, TcpSocket> =
    LruHashMap::with_max_entries(MAX_TCP_SOCKETS, 0);

/// The part of x86-64 `struct pt_regs` (arch/x86/include/asm/ptrace.h, Linux 6.18) from `ax`
/// to `orig_ax`: one read gets the syscall number and its first arguments.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallRegs {
    pub ax: u64,
    pub cx: u64,
    pub dx: u64,
    pub si: u64,
    pub di: u64,
    pub orig_ax: u64,
}

impl SyscallRegs {
    /// The syscall these registers say the task is inside, if any.
    #[inline(always)]
    pub fn syscall(&self) -> Option<u32> {
        syscall_in_progress(self.orig_ax, self.ax)
    }
}

/// The registers the current task entered the kernel with (saved at the top of its kernel
/// stack, `bpf_task_pt_regs()`): inside a syscall, its number and arguments, with no syscall
/// hook. Tracepoint and raw tracepoint programs may call both helpers
/// (`bpf_tracing_func_proto()`, kernel/trace/bpf_trace.c, Linux 6.18).
#[inline(always)]
pub fn current_syscall_regs() -> Result<SyscallRegs, Loss> {
    // SAFETY: the helpers return the current task and its saved registers; the read is
    // checked by the helper.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        bpf_probe_read_kernel(&raw const (*regs).rax as *const SyscallRegs)
    }
    .map_err(|_| Loss::ReadFailed)
}

/// The `g` of the goroutine the current thread of a Go target entered the kernel from: Go's
/// register ABI keeps the running goroutine's `g` in r14 (ABIInternal, Go 1.17+), and the
/// Go syscall path (`syscall.Syscall` -> `runtime/internal/syscall.Syscall6`, an
/// ABIInternal assembly function that leaves r14 alone; Go 1.19-1.27 read) reaches the
/// `SYSCALL` instruction with it. Outside Go code (cgo) r14 is whatever C left there: a key
/// no goroutine has.
#[inline(always)]
pub fn current_user_g() -> Result<u64, Loss> {
    // SAFETY: as in `current_syscall_regs`.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        bpf_probe_read_kernel(&raw const (*regs).r14)
    }
    .map_err(|_| Loss::ReadFailed)
}

/// Each target thread's wakeup in progress: the waker, noted by sched_waking in the waker's
/// context, and when it became runnable (sched_wakeup), until its switch-in reports them;
/// keyed by the wakee's tid.
#[map]
pub static WAKERS: HashMap<u32, PendingWakeup> = HashMap::with_max_entries(MAX_TARGET_THREADS, 0);

/// Each CPU's interrupt nesting (one entry per CPU), kept by `probes::interrupts`.
#[map]
pub static IRQ_NESTING: PerCpuArray<IrqNesting> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU loss counters, indexed by [`Loss`].
#[map]
pub static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_KINDS, 0);

/// A program's end: 0 for the kernel, and a loss counted in [`LOSSES`], the only place
/// where losses are counted.
#[inline(always)]
pub fn finish(result: Result<(), Loss>) -> u32 {
    match result {
        Ok(()) => 0,
        Err(loss) => {
            count_loss(loss);
            0
        }
    }
}

pub fn count_loss(loss: Loss) {
    count_losses(loss, 1);
}

/// `n` events lost for the same reason (a record that carried several).
#[inline(always)]
pub fn count_losses(loss: Loss, n: u64) {
    if let Some(slot) = LOSSES.get_ptr_mut(loss as u32) {
        unsafe { *slot += n };
    }
}

/// The current task's (tgid, tid).
#[inline(always)]
pub fn current_ids() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

/// The current thread's id when it belongs to the target: the first check of every program
/// whose subject is the current task.
#[inline(always)]
pub fn current_target_tid() -> Option<u32> {
    let (tgid, tid) = current_ids();
    (tgid == target_tgid()).then_some(tid)
}

/// The current task's name.
#[inline(always)]
pub fn current_comm() -> Result<[u8; 16], Loss> {
    bpf_get_current_comm().map_err(|_| Loss::ReadFailed)
}

/// Insert or replace `map[key]`; fails when the map is full.
#[inline(always)]
pub fn insert<K, V>(map: &HashMap<K, V>, key: K, value: V) -> Result<(), Loss> {
    map.insert(key, value, u64::from(BPF_ANY))
        .map_err(|_| Loss::MapFull)
}

/// Set `map[key]`: in place when the key has an entry (cheaper than an insert: no bucket
/// lock, no allocation), else by an insert.
#[inline(always)]
pub fn set<K, V>(map: &HashMap<K, V>, key: K, value: V) -> Result<(), Loss> {
    match map.get_ptr_mut(&key) {
        // SAFETY: a valid pointer to the map's value.
        Some(slot) => unsafe { *slot = value },
        None => insert(map, key, value)?,
    }
    Ok(())
}

pub fn header(kind: tracer_common::EventKind, tid: u32) -> EventHeader {
    EventHeader {
        ts_ns: now_ns(),
        kind: kind as u32,
        tid,
    }
}

/// The events' clock (CLOCK_MONOTONIC).
#[inline(always)]
pub fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// The flags every record is submitted or output with: no wakeup. The collector drains the
/// ring on a timer and never waits on it, and a wakeup (the default when the collector has
/// caught up) queues an irq_work on the CPU (`bpf_ringbuf_commit()`, kernel/bpf/ringbuf.c,
/// Linux 6.18): a self-interrupt for nobody.
pub const RING_FLAGS: u64 = BPF_RB_NO_WAKEUP as u64;

/// Copy `event` into the ring buffer; fails when it is full. Submitted without waking the
/// collector: it drains the ring on a timer.
#[inline(always)]
pub fn emit<T: 'static>(event: T) -> Result<(), Loss> {
    let mut entry = EVENTS.reserve::<T>(0).ok_or(Loss::RingFull)?;
    entry.write(event);
    entry.submit(RING_FLAGS);
    Ok(())
}
