//! Event records shared by the kernel programs (`tracer-ebpf`) and the collector (`tracer`).
//!
//! Every record starts with [`EventHeader`]; its `kind` says which record follows. All records
//! are `#[repr(C)]`, padding-free (explicit `_pad` fields) and checked for size at compile time,
//! so both sides agree on the layout byte for byte.
#![no_std]

/// Record kinds. Values are part of the ring-buffer ABI: never renumber.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// [`SwitchEvent`]: a context switch where the previous or the next task is a target thread.
    Switch = 1,
    /// [`WakeupEvent`]: a target thread was woken (by anyone, from any process or an interrupt).
    Wakeup = 2,
    /// [`SyscallEvent`]: a socket read or write of a target thread returned.
    Syscall = 3,
    /// [`EventHeader`] alone: a new thread appeared in the target (`hdr.tid`).
    ThreadNew = 4,
    /// [`ThreadEvent`]: a target thread exited.
    ThreadExit = 5,
    /// [`TlsEvent`]: a TLS library call on a connection still in its handshake began or
    /// returned.
    Tls = 6,
    /// [`GoSchedEvent`]: a goroutine of a Go target parked, became runnable, started running
    /// on a thread, or exited.
    GoSched = 7,
    /// [`SyscallPairEvent`]: a socket read of a target thread, held back on its CPU until
    /// the write that followed it, and that write: one record for a request and its response.
    SyscallPair = 8,
    /// [`SyscallPairBatch`]: pairs of target threads on one CPU, gathered into one record.
    SyscallPairBatch = 9,
    /// [`StretchRequestBatch`]: requests the kernel side delimited and timed itself, each
    /// served in one stretch of its thread on a CPU.
    StretchRequestBatch = 10,
    /// [`StretchHandover`]: requests kept in the kernel and left open, handed to the
    /// collector as the read that started each and its last write.
    StretchHandover = 11,
    /// [`SyscallEvent`] (its read): the kernel side keeps the connection's requests from
    /// now on; the request the collector has open there, answered, is over.
    StretchTakesConnection = 12,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Switch,
            2 => Self::Wakeup,
            3 => Self::Syscall,
            4 => Self::ThreadNew,
            5 => Self::ThreadExit,
            6 => Self::Tls,
            7 => Self::GoSched,
            8 => Self::SyscallPair,
            9 => Self::SyscallPairBatch,
            10 => Self::StretchRequestBatch,
            11 => Self::StretchHandover,
            12 => Self::StretchTakesConnection,
            _ => return None,
        })
    }
}

/// First 16 bytes of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event happened.
    pub ts_ns: u64,
    /// An [`EventKind`] value.
    pub kind: u32,
    /// The target thread the event is about.
    pub tid: u32,
}

/// `NO_SYSCALL` in [`SwitchEvent::syscall_nr`]: the thread was not inside a syscall.
pub const NO_SYSCALL: u32 = u32::MAX;

/// sched:sched_switch. `hdr.tid` is the previous task when it is a target thread, else 0;
/// `next_tid` is the next task when it is a target thread, else 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchEvent {
    pub hdr: EventHeader,
    pub next_tid: u32,
    /// The tracepoint's `prev_state` (0 = runnable; [`PREEMPT_STATE_BIT`] and above = preempted).
    pub prev_state: u32,
    /// The syscall the previous task is blocked in (read from its saved user registers),
    /// or [`NO_SYSCALL`].
    pub syscall_nr: u32,
    /// When the previous task blocks: its user stack's id ([`stack_id`]), else
    /// [`NO_STACK`].
    pub stack_id: i32,
    /// That syscall's first argument (an fd, or the futex address).
    pub syscall_arg0: u64,
    /// The steal time this CPU's run queue has accounted so far (`rq->prev_steal_time_rq`,
    /// brought up to date by `__schedule()` before this tracepoint), or 0 when unknown or
    /// when the hypervisor reports none.
    pub cpu_steal_ns: u64,
    /// When the next task (a target thread) became runnable, if it was woken since it last
    /// ran (sched_wakeup's time); 0 when it was not (it was preempted), or its wakeup was not
    /// seen. A wakeup is carried by the switch-in it leads to, not sent on its own: one ring
    /// record fewer per block.
    pub woken_at_ns: u64,
    /// Who woke it (with `woken_at_ns`).
    pub waker: WakerId,
    /// The previous task's total wait for a CPU so far (`sched_info.run_delay`, the
    /// scheduler's clock), when it blocks; 0 when unknown or not read.
    pub run_delay_ns: u64,
    /// The next task's total wait for a CPU, the wait that ends with this switch-in
    /// included, when its wakeup was not seen (`woken_at_ns` 0); 0 when unknown or not read.
    /// Its difference from the `run_delay_ns` it blocked with is how long it waited for its
    /// CPU since.
    pub next_run_delay_ns: u64,
}

/// A target thread's wakeup, from sched_waking (the waker) and sched_wakeup (when it became
/// runnable) until its switch-in reports it; per wakee in the `WAKERS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingWakeup {
    pub waker: WakerId,
    /// sched_wakeup's time; 0 until then, and again once a switch-in has reported it.
    pub runnable_at_ns: u64,
    /// 1: the thread blocked on a futex inside a request, and its stack was taken there; the
    /// target thread that wakes it takes its own (the unlocker's site). Set by its switch-out,
    /// cleared by the wakeup that reads it.
    pub unlocker_wanted: u32,
    pub _pad: u32,
}

/// In the sched_switch tracepoint, a preempted task reports `TASK_REPORT_MAX` as its state
/// (`__trace_sched_switch_state()`, include/trace/events/sched.h, Linux 6.18), which is 0x100
/// on every kernel since 4.14. Any state at or above it means "still runnable".
pub const PREEMPT_STATE_BIT: u32 = 0x100;
/// `TASK_UNINTERRUPTIBLE` as the tracepoint reports it (`D`).
pub const STATE_UNINTERRUPTIBLE: u32 = 0x2;

/// `TASK_DEAD`: set by `do_task_dead()` for an exiting task's last switch-out; only then
/// does its `exit_state` (set earlier in `exit_notify()`) change what is reported.
pub const TASK_DEAD: u32 = 0x80;

/// The previous task's state as the sched_switch tracepoint reports it, from what the raw
/// tracepoint passes (`preempt`, the raw `prev_state`) and the task's `exit_state`: what
/// `__trace_sched_switch_state()` computes (include/trace/events/sched.h, Linux 6.18).
/// A preempted task is `TASK_REPORT_MAX`; otherwise the highest reportable state bit, with
/// `TASK_IDLE` reported as `TASK_REPORT_IDLE` and `TASK_RTLOCK_WAIT` as uninterruptible.
pub fn switch_state_as_reported(preempt: bool, prev_state: u32, exit_state: u32) -> u32 {
    /// `TASK_REPORT`: the running, sleeping, stopped, traced and exit bits.
    const TASK_REPORT: u32 = 0x7f;
    /// `TASK_NOLOAD | TASK_UNINTERRUPTIBLE`.
    const TASK_IDLE: u32 = 0x402;
    const TASK_REPORT_IDLE: u32 = TASK_REPORT + 1;
    const TASK_RTLOCK_WAIT: u32 = 0x1000;
    if preempt {
        return PREEMPT_STATE_BIT;
    }
    let state = match prev_state {
        TASK_IDLE => TASK_REPORT_IDLE,
        TASK_RTLOCK_WAIT => STATE_UNINTERRUPTIBLE,
        _ => (prev_state | exit_state) & TASK_REPORT,
    };
    // `1 << (fls(state) - 1)`: the highest bit set.
    match state {
        0 => 0,
        _ => 1 << (31 - state.leading_zeros()),
    }
}

/// No stack was taken (the event has none, stacks are off, or the kernel could not take it).
pub const NO_STACK: i32 = -1;
/// The kernel's stack maps, in the order a stack is tried in them. The kernel hashes a stack
/// to one bucket of a map (`hash & (buckets - 1)`, one fixed hash), and returns `EEXIST`
/// when another stack holds it (no `BPF_F_REUSE_STACKID`: an id must never change its
/// stack); the stack then goes to the next map, whose buckets only such stacks use. The two
/// spill maps have the same size, so the second is a second slot for each bucket of the
/// first. With k distinct stacks, a new one finds its `STACKS` bucket taken with odds about
/// k / [`MAX_STACKS`]; about k² / (2 × `MAX_STACKS`) stacks spill, and a spilled one is lost
/// only if two others spilled to its bucket before it.
pub const STACK_MAPS: [&str; 3] = ["STACKS", "SPILLED_STACKS", "SPILLED_STACKS_2"];
/// Buckets of `STACKS`.
pub const MAX_STACKS: u32 = 16384;
/// Buckets of each spill map.
pub const MAX_SPILLED_STACKS: u32 = 2048;
/// A stack id holds its map's index in [`STACK_MAPS`] from this bit on, and its id in that
/// map below it.
pub const STACK_MAP_SHIFT: u32 = 29;

/// The stack id of `index` in map `map` of [`STACK_MAPS`].
pub const fn stack_id(map: u32, index: u32) -> i32 {
    ((map << STACK_MAP_SHIFT) | index) as i32
}

/// The map (an index in [`STACK_MAPS`]) and the id in it of stack id `id`.
pub const fn stack_map_and_index(id: u32) -> (usize, u32) {
    (
        (id >> STACK_MAP_SHIFT) as usize,
        id & ((1 << STACK_MAP_SHIFT) - 1),
    )
}

/// `EAGAIN` (a syscall returns `-EAGAIN`): a non-blocking socket had nothing to move.
pub const EAGAIN: i64 = 11;

/// Who woke a thread: the task that called `try_to_wake_up()`, or the interrupt it ran in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WakerId {
    /// The waking task (`waker_context::TASK` only; 0 otherwise).
    pub tid: u32,
    pub pid: u32,
    /// A [`waker_context`] value.
    pub context: u32,
    /// The IRQ number (`HARDIRQ`); else 0.
    pub detail: u32,
    pub comm: [u8; 16],
    /// A target thread that woke another from a futex wake (a lock's release) that the wakee
    /// waited on inside a request (see [`PendingWakeup::unlocker_wanted`]): its user stack's
    /// id ([`stack_id`]), the unlocker's call site; else [`NO_STACK`].
    pub stack_id: i32,
    pub _pad: u32,
}

impl Default for WakerId {
    /// No waker seen yet (`UNKNOWN` is set where that matters), and no stack.
    fn default() -> Self {
        WakerId {
            tid: 0,
            pid: 0,
            context: 0,
            detail: 0,
            comm: [0; 16],
            stack_id: NO_STACK,
            _pad: 0,
        }
    }
}

/// Where a wakeup was done: `current` in `sched:sched_waking` is the waker only in task
/// context. Inside an interrupt it is whatever task the interrupt hit, so the kernel side
/// tracks interrupt nesting per CPU and reports the interrupt instead.
pub mod waker_context {
    /// A task's own context (a futex wake, a write to a pipe...): `tid`/`pid`/`comm` name it.
    pub const TASK: u32 = 0;
    /// A hardware interrupt handler (`detail`: the IRQ number).
    pub const HARDIRQ: u32 = 1;
    /// Another interrupt, recognised by its stack: a softirq (at irq exit or in
    /// `local_bh_enable()`: NET_RX, a timer-wheel timeout, RCU...), or rarely a system vector.
    pub const SOFTIRQ: u32 = 2;
    /// An hrtimer callback: a sleep or a timeout expired.
    pub const TIMER: u32 = 3;
    /// The wakeup's `sched_waking` was not seen: it happened before the programs attached,
    /// the kernel skipped the program (another tracing program was running on that CPU), or
    /// the waker map was full.
    pub const UNKNOWN: u32 = 4;
}

/// sched:sched_wakeup / sched_wakeup_new of a target thread (`hdr.tid`): the moment it became
/// runnable, with the waker recorded by sched:sched_waking.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WakeupEvent {
    pub hdr: EventHeader,
    pub waker: WakerId,
}

/// The interrupt nesting of one CPU (the `IRQ_NESTING` per-CPU array's value), kept by the
/// irq/softirq/hrtimer entry and exit tracepoints: `levels[depth - 1]` is the innermost one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqNesting {
    pub depth: u32,
    pub _pad: u32,
    pub levels: [IrqLevel; IRQ_LEVELS],
}
/// Interrupt levels remembered per CPU (device interrupts and hrtimer callbacks nest).
pub const IRQ_LEVELS: usize = 6;

/// One interrupt a CPU is in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqLevel {
    /// A [`waker_context`] value.
    pub context: u32,
    /// The IRQ number (0 for a timer).
    pub detail: u32,
    /// What its exit names: the IRQ number or the `struct hrtimer *`.
    pub key: u64,
}

/// A socket read or write of `hdr.tid` returned (sock:sock_recv_length / sock_send_length,
/// which fire inside the syscall that moved the bytes); `hdr.ts_ns` is the return time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallEvent {
    pub hdr: EventHeader,
    /// The syscall that moved the bytes (a read or a write family syscall).
    pub nr: u32,
    /// [`tls_record`] of the bytes transferred, or 0 when they do not start with a TLS record
    /// header.
    pub tls_record: u32,
    /// The syscall's first argument: the fd.
    pub fd: u32,
    /// A [`socket_origin`] value.
    pub origin: u32,
    /// The return value (bytes transferred, or -errno).
    pub ret: i64,
    /// The connection's identity: a TCP socket's [`TcpSocket::opened_ns`], else the socket's
    /// `struct sock *` (never read through). Another value behind the same fd is another
    /// connection (closes are not seen). Freed sockets' memory is reused at once, so an
    /// address alone would not tell two connections apart.
    pub connection: u64,
}

/// A socket read and the write of the same thread that came next, with nothing of that
/// thread's or CPU's in between (any other record emitted on the CPU first sends the held
/// read alone). `read.hdr.kind` is [`EventKind::SyscallPair`]; `write.hdr.kind` is
/// [`EventKind::Syscall`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallPairEvent {
    pub read: SyscallEvent,
    pub write: SyscallEvent,
}

/// How many read/write pairs a CPU gathers into one [`SyscallPairBatch`] (a power of two).
pub const PAIR_BATCH: usize = 8;

/// Read/write pairs of target threads on one CPU, gathered until there are [`PAIR_BATCH`]
/// of them, until the oldest has waited long enough, or until a target thread leaves the
/// CPU: a saturated request-response server emits one ring record per [`PAIR_BATCH`]
/// requests instead of one per request. `hdr.ts_ns` is the first pair's read; `hdr.tid` is 0.
/// Only `pairs[..count]` are pairs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallPairBatch {
    pub hdr: EventHeader,
    pub count: u32,
    pub _pad: u32,
    pub pairs: [SyscallPairEvent; PAIR_BATCH],
}

impl SyscallPairBatch {
    /// The pairs it holds.
    pub fn pairs(&self) -> &[SyscallPairEvent] {
        &self.pairs[..(self.count as usize).min(PAIR_BATCH)]
    }
}

/// How a socket came to be, as the `TCP_SOCKETS` map knows it.
pub mod socket_origin {
    /// Not a TCP socket the kernel side saw open (a Unix or UDP socket, or a TCP socket
    /// opened before the tracer attached or evicted from the map).
    pub const UNKNOWN: u32 = 0;
    /// A TCP socket that connected out.
    pub const TCP_CLIENT: u32 = 1;
    /// The server side of a TCP connection (created by a listener for an incoming
    /// handshake): a connection to serve.
    pub const TCP_SERVER: u32 = 2;
}

/// A TCP socket of the host as the `TCP_SOCKETS` map keeps it, from its first state change
/// to its close.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpSocket {
    /// When it was created (a listener's child) or started connecting.
    pub opened_ns: u64,
    /// A [`socket_origin`] value.
    pub origin: u32,
    /// The target's fd for it, once a read or write of the target read it from the
    /// registers ([`NO_FD`] before).
    pub fd: u32,
    /// A [`socket_plain`] value, from its first bytes read: a plaintext socket's reads and
    /// writes need no record classification.
    pub plain: u32,
    /// 1: a response was written since its last request began (its request was answered).
    /// Kept when requests are kept in the kernel: whoever keeps the request, once the
    /// kernel side has kept any of its requests.
    pub answered: u32,
    /// Who keeps its current request: a [`request_keeper`] value.
    pub keeper: u32,
    /// [`request_keeper::STRETCH`]: the thread whose stretch on a CPU keeps its request, and
    /// that CPU; the request below.
    pub stretch_tid: u32,
    pub stretch_cpu: u32,
    /// [`stretch_flags`] of the request so far.
    pub flags: u32,
    /// Its stretch table's `opened` count once it was opened.
    pub opened_as: u32,
    /// The `opened` count of the stretch table that last started its request or counted it
    /// among its unanswered ones: a connection listed twice in a table is counted once.
    pub counted_at: u32,
    /// When its first read returned.
    pub start_ns: u64,
    /// When its last response write so far returned (0: not answered).
    pub last_write_ns: u64,
    pub read_ret: i32,
    pub write_ret: i32,
    /// When its request's first read blocked for the bytes: the wakeup that ended the block,
    /// where the request starts (0: its read did not block).
    pub woken_ns: u64,
    /// Of that, the wait for a CPU from the wakeup to the thread's switch-in.
    pub runqueue_ns: u32,
    pub _pad: u32,
}

impl TcpSocket {
    /// Its request, kept in the kernel, over at `end_ns` (the next request's read, the
    /// reader's block for it, or the connection's end).
    pub fn finished_request(&self, end_ns: u64) -> StretchRequest {
        let answered = self.last_write_ns != 0;
        let end = if answered { self.last_write_ns } else { end_ns };
        let start = if self.read_blocked() {
            self.woken_ns
        } else {
            self.start_ns
        };
        StretchRequest {
            start_ns: start,
            latency_ns: end.saturating_sub(start),
            tid: self.stretch_tid,
            fd: self.fd,
            flags: if answered {
                self.flags
            } else {
                self.flags | stretch_flags::ABORTED
            },
            runqueue_ns: if self.read_blocked() {
                self.runqueue_ns
            } else {
                0
            },
        }
    }

    /// Its request's first read blocked for its bytes (it starts at `woken_ns`).
    pub fn read_blocked(&self) -> bool {
        self.woken_ns != 0
    }

    /// Its request, kept in the kernel, as handed to the collector.
    pub fn handed_over(&self) -> StretchHandedOver {
        StretchHandedOver {
            connection: self.opened_ns,
            start_ns: self.start_ns,
            last_write_ns: self.last_write_ns,
            fd: self.fd,
            read_ret: self.read_ret,
            write_ret: self.write_ret,
            woken: u32::from(self.read_blocked()),
        }
    }
}

/// Who keeps a connection's current request (see tracer-ebpf's `stretch.rs`).
pub mod request_keeper {
    /// Nobody: no request was seen on it since the tracer attached.
    pub const NONE: u32 = 0;
    /// The collector: its reads and writes are sent as records.
    pub const COLLECTOR: u32 = 1;
    /// The kernel side, in a CPU's stretch table (unless that table's generation moved on).
    pub const STRETCH: u32 = 2;
}

/// How many connections a thread's stretch on a CPU can keep requests of (a power of two).
pub const STRETCH_SLOTS: usize = 64;

/// A CPU's stretch table: the connections whose requests its running target thread
/// (`owner_tid`) kept since it got the CPU (each connection's request is in its
/// [`TcpSocket`]); `socks[..len]` are their `struct sock *`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StretchTable {
    pub owner_tid: u32,
    pub len: u32,
    /// The owner's `sched_info.last_arrival` when it took the table: another value, and the
    /// owner has left the CPU since, unseen.
    pub owner_arrival: u64,
    /// Its requests not yet answered, and how many it opened.
    pub unanswered: u32,
    pub opened: u32,
    /// The count of kept requests that left their stretch unseen by its table (from another
    /// CPU, or by their connection's close) when `unanswered` was last counted again (see
    /// tracer-ebpf's `stretch.rs`, `STRETCH_DEPARTURES`).
    pub departures_seen: u64,
    /// The target thread last switched in on this CPU (0: none since a target thread left
    /// it), and (`arrived_ns`, `arrived_woken_ns` below) when, and the wakeup it carried
    /// (0: none seen, or preempted): a request read after a block starts at that wakeup.
    pub arrived_tid: u32,
    /// 1: `hand_over` found a request to hand over (its scratch, kept here for the
    /// verifier).
    pub any_handed: u32,
    pub arrived_ns: u64,
    pub arrived_woken_ns: u64,
    /// The connection whose request the owner last started (its `struct sock *`): the one
    /// whose reader blocks for the next, in a thread per connection.
    pub last_started: u64,
    pub socks: [u64; STRETCH_SLOTS],
}

impl StretchTable {
    pub fn socks(&self) -> &[u64] {
        &self.socks[..(self.len as usize).min(STRETCH_SLOTS)]
    }
}

/// A request kept in the kernel, handed to the collector: the read that started it and its
/// last write so far, as the collector would have had them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StretchHandedOver {
    /// [`TcpSocket::opened_ns`]
    pub connection: u64,
    pub start_ns: u64,
    /// 0: not answered.
    pub last_write_ns: u64,
    pub fd: u32,
    pub read_ret: i32,
    pub write_ret: i32,
    /// 1: its read blocked for its bytes, and it starts at the wakeup that ended the block
    /// (the collector's, too); 0: at its read, whatever wakeup the collector last saw.
    pub woken: u32,
}

/// The requests a thread's stretch kept and left open when it left its CPU, or one that
/// another thread (or CPU) went on with: `hdr.tid` is the thread that kept them. Only
/// `requests[..count]` are requests, those whose `start_ns` is not 0, and the record is no
/// longer than `count` requests.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StretchHandover {
    pub hdr: EventHeader,
    pub count: u32,
    pub _pad: u32,
    pub requests: [StretchHandedOver; STRETCH_SLOTS],
}

/// [`StretchRequest::flags`] bits.
pub mod stretch_flags {
    /// Another request of its thread was waiting for its response while it did.
    pub const SHARED: u32 = 1;
    /// The peer closed before it was answered.
    pub const ABORTED: u32 = 2;
}

/// A request the kernel side delimited and timed itself: read and answered by a thread that
/// never left its CPU from its first read to its last write, so its time was all on that CPU
/// (the steal the hypervisor took meanwhile too: the collector counts a stretch's steal only
/// in the requests still open when it ends, and this one ended before). A request whose
/// first read blocked for its bytes starts at the wakeup that ended the block, and its time
/// from there to the thread's switch-in is its wait for a CPU (`runqueue_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StretchRequest {
    pub start_ns: u64,
    pub latency_ns: u64,
    pub tid: u32,
    pub fd: u32,
    /// [`stretch_flags`] bits.
    pub flags: u32,
    /// Of `latency_ns`, the wait for a CPU (the rest is on its CPU).
    pub runqueue_ns: u32,
}

impl StretchRequest {
    /// Answered before its connection ended (not [`stretch_flags::ABORTED`]).
    pub fn completed(&self) -> bool {
        self.flags & stretch_flags::ABORTED == 0
    }

    /// [`stretch_flags::SHARED`]
    pub fn shared_context(&self) -> bool {
        self.flags & stretch_flags::SHARED != 0
    }

    /// Its wait for a CPU (no longer than it).
    pub fn waiting_for_cpu_ns(&self) -> u64 {
        u64::from(self.runqueue_ns).min(self.latency_ns)
    }

    /// Its time on its CPU.
    pub fn on_cpu_ns(&self) -> u64 {
        self.latency_ns - self.waiting_for_cpu_ns()
    }
}

/// How many finished stretch requests a CPU gathers into one record.
pub const STRETCH_BATCH: usize = 16;

/// Finished stretch requests of one CPU; only `requests[..count]` are requests, and the
/// record is no longer than those.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StretchRequestBatch {
    pub hdr: EventHeader,
    pub count: u32,
    pub _pad: u32,
    pub requests: [StretchRequest; STRETCH_BATCH],
}

impl StretchRequestBatch {
    pub fn requests(&self) -> &[StretchRequest] {
        &self.requests[..(self.count as usize).min(STRETCH_BATCH)]
    }
}

/// A thread left the target (`ThreadExit`). A new thread (`ThreadNew`) is reported by an
/// [`EventHeader`] alone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadEvent {
    pub hdr: EventHeader,
    /// The exiting thread's name.
    pub comm: [u8; 16],
}

/// What a [`TlsEvent`] reports.
pub mod tls {
    /// A handshake function (`SSL_do_handshake`, `SSL_accept`, `SSL_connect`) was entered.
    pub const HANDSHAKE_ENTER: u32 = 1;
    /// A data function (`SSL_read`, `SSL_read_ex`, `SSL_peek`, `SSL_write`, `SSL_write_ex`)
    /// was entered on a connection whose handshake has not completed: it will drive the
    /// handshake first.
    pub const READ_ENTER: u32 = 2;
    pub const WRITE_ENTER: u32 = 3;
    /// The call returned; `ret > 0` means the handshake is complete (and, for a read, that
    /// application data was returned).
    pub const RETURN: u32 = 4;
    /// `SSL_free`: the `SSL*` is gone (its address may be reused).
    pub const FREE: u32 = 5;
    /// Go `crypto/tls.(*Conn).serverHandshake` was entered; the event's `handle` is the
    /// goroutine's `g` pointer.
    pub const GO_SERVER_ENTER: u32 = 6;
    /// Go `crypto/tls.(*Conn).clientHandshake` was entered (`handle`: the goroutine's `g`).
    pub const GO_CLIENT_ENTER: u32 = 7;
    /// One of the Go handshake functions reached a RET instruction (`handle`: the `g`;
    /// `ret`: the returned error's type word, 0 when the handshake succeeded).
    pub const GO_RETURN: u32 = 8;
}

/// A TLS library call on a connection that has not finished its handshake. Only an opaque
/// key for the handshake and the return value are read: never a buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsEvent {
    pub hdr: EventHeader,
    /// What the handshake is keyed by: the `SSL*` for OpenSSL calls, the goroutine's
    /// `runtime.g` address (Go's r14) for Go's (the `tls::GO_*` calls).
    pub handle: u64,
    /// One of the [`tls`] constants.
    pub what: u32,
    pub _pad: u32,
    /// The return value (for [`tls::RETURN`]).
    pub ret: i64,
}

/// What a [`GoSchedEvent`] reports: one of Go's scheduler functions was entered, on thread
/// `hdr.tid` (uprobes on `runtime.gopark`, `runtime.ready`, `runtime.execute`,
/// `runtime.goexit1`, `runtime.semacquire1` and the stop/start-the-world pair, each at the
/// stack check's conditional jump).
pub mod go_sched {
    /// `runtime.gopark`: goroutine `goid` (the one running on the thread) parks; `detail` is
    /// its wait reason (Go's `waitReason` value, whose numbering changes between releases).
    pub const PARK: u32 = 1;
    /// Set in a [`PARK`]'s `detail` above the wait reason: the goroutine waits for an
    /// HTTP/2 body from the peer (a `sync.Cond` wait inside HTTP/2's body read, told by its
    /// return addresses): a handler's request body, or a Go client's response body.
    pub const PARK_REQUEST_BODY: u64 = 1 << 8;
    /// `runtime.ready`: goroutine `goid` becomes runnable; `detail` is the goid of the
    /// goroutine that readied it (the thread's current goroutine), 0 when the thread ran
    /// none (a timer or the scheduler itself: no goroutine has id 0), or
    /// [`WAKER_UNREADABLE`].
    pub const READY: u32 = 2;
    /// `runtime.execute`: goroutine `goid` starts running on the thread; `detail` is 0.
    pub const EXECUTE: u32 = 3;
    /// `runtime.goexit1`: goroutine `goid` (the one running on the thread) is done; `detail`
    /// is 0.
    pub const EXIT: u32 = 4;
    /// `runtime.semacquire1`: goroutine `goid` is about to wait for the semaphore at address
    /// `detail` (a `sync.Mutex`'s `sema` field, ...) if it cannot take it at once; a park
    /// that follows is that wait.
    pub const SEMACQUIRE: u32 = 5;
    /// `runtime.stopTheWorldWithSema`: the runtime stops every goroutine (for the GC, most
    /// often); `goid` and `detail` are 0.
    pub const STOP_THE_WORLD: u32 = 6;
    /// `runtime.startTheWorldWithSema`: the goroutines may run again; `goid` and `detail`
    /// are 0.
    pub const START_THE_WORLD: u32 = 7;
    /// `runtime.semrelease1`: goroutine `goid` releases the semaphore at address `detail`
    /// (a `sync.Mutex`'s Unlock with waiters), readying a waiter next; `stack_id` and
    /// `caller` say where in its code (the unlocker's call site).
    pub const SEMRELEASE: u32 = 8;
    /// net/http's HTTP/2 server, `(*http2serverConn).serve` or `.readFrames`: goroutine
    /// `goid` serves an HTTP/2 connection (it reads or writes its frames for every stream:
    /// its socket I/O delimits no request); `detail` is 0.
    pub const HTTP2_CONNECTION: u32 = 9;
    /// `(*http2serverConn).runHandler`: goroutine `goid` starts to run one HTTP/2 stream's
    /// handler (it exits when the handler is done); `detail` is 0.
    pub const HTTP2_HANDLER: u32 = 10;
    /// In a [`READY`] record: the thread's current goroutine could not be read.
    pub const WAKER_UNREADABLE: u64 = u64::MAX;
}

/// A goroutine transition seen by the Go scheduler probes. `hdr.tid` is the thread the probe
/// fired on. A probe can fire twice for one call (a `morestack` re-entry runs the stack check
/// again), so userspace must take a repeated event as one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoSchedEvent {
    pub hdr: EventHeader,
    /// The goroutine's id (`runtime.g.goid`: `g` structs are recycled, ids are not).
    pub goid: u64,
    /// What [`go_sched`] says for `what`: a wait reason, a waker's goid, or 0.
    pub detail: u64,
    /// One of the [`go_sched`] constants.
    pub what: u32,
    /// For [`go_sched::PARK`]: the parking goroutine's user stack's id ([`stack_id`]),
    /// else [`NO_STACK`]. Taken at `gopark`'s entry, before its frame is set up, so the
    /// frame-pointer walk skips `gopark`'s caller: that is [`GoSchedEvent::caller`].
    pub stack_id: i32,
    /// For [`go_sched::PARK`] and [`go_sched::SEMACQUIRE`]: the return address at the top of
    /// the stack (into the function that called `gopark` or `semacquire1`), else 0.
    pub caller: u64,
}

/// A target thread's conversation (the `CONVERSATIONS` map's value, keyed by tid), kept by
/// its socket reads and writes: the fd its last read that moved bytes was on ([`NO_FD`]
/// before any), and whether it has written to that fd since (answered). A thread blocked
/// waiting for the next request on the connection it answered, or idle in poll/epoll after
/// answering, is between requests: no stack is taken for that wait.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conversation {
    pub request_fd: u32,
    pub answered: u32,
    /// The connection behind `request_fd` (see [`SyscallEvent::connection`]).
    pub request_connection: u64,
    /// The thread's voluntary context switches when its last stretch on a CPU with socket
    /// I/O began (tracer-ebpf's `stretch.rs`): the same count at the next, and it has not
    /// blocked since.
    pub voluntary_switches: u64,
    /// Its last block in a read of a socket (tracer-ebpf's `stretch.rs`): the fd, when,
    /// and its context switches (blocks and preemptions) counting that block ([`NO_FD`]:
    /// none noted). The same count at a read of that fd, and that read is the one that
    /// blocked, and the thread has not been preempted since.
    pub blocked_read_fd: u32,
    pub _pad: u32,
    pub blocked_at_ns: u64,
    pub blocked_switches: u64,
}

impl Default for Conversation {
    fn default() -> Self {
        Conversation {
            request_fd: NO_FD,
            answered: 0,
            request_connection: 0,
            voluntary_switches: u64::MAX,
            blocked_read_fd: NO_FD,
            _pad: 0,
            blocked_at_ns: 0,
            blocked_switches: u64::MAX,
        }
    }
}

/// What a TCP socket's first bytes read were.
pub mod socket_plain {
    /// Nothing read yet.
    pub const UNKNOWN: u32 = 0;
    /// Not a TLS record header.
    pub const PLAIN: u32 = 1;
    /// A TLS record header.
    pub const TLS: u32 = 2;
}

/// Goroutines whose conversation is remembered at once (an LRU map: in a Go target with more
/// goroutines that read a socket, the least recently active are forgotten, and their parks
/// are then judged outside any request, with no stack taken, until their next read).
pub const MAX_GOROUTINE_CONVERSATIONS: u32 = 65536;

/// TCP sockets of the host remembered at once (an LRU map: on a host with more open TCP
/// sockets, the oldest are forgotten and their connections are no longer told apart).
pub const MAX_TCP_SOCKETS: u32 = 65536;

/// TCP states (include/net/tcp_states.h) that `sock:inet_sock_set_state` reports.
pub mod tcp_state {
    /// `connect()` sent its SYN.
    pub const SYN_SENT: u32 = 2;
    /// A listener's child socket, created when a handshake's SYN arrives.
    pub const SYN_RECV: u32 = 3;
    pub const CLOSE: u32 = 7;
}

/// No fd (an fd is an `int`, never this).
pub const NO_FD: u32 = u32::MAX;

/// `Conversation::answered` of a conversation never inside a request, whatever it reads and
/// writes.
const SERVES_NO_REQUEST: u32 = 2;

impl Conversation {
    /// The conversation of a goroutine that reads and writes for others and is never
    /// inside a request itself: an HTTP/2 connection's goroutines, which move every stream's
    /// frames (each stream's request is its handler goroutine's).
    pub fn serving_no_request() -> Self {
        Conversation {
            answered: SERVES_NO_REQUEST,
            ..Conversation::default()
        }
    }

    /// A read or write returned `ret` on `fd`, on `connection`. Only a write to the very
    /// connection the request came from answers it: a closed fd's number may come back as
    /// another connection (no close is seen), whose first write answers nothing.
    pub fn returned(&mut self, syscall_nr: u32, fd: u32, connection: u64, ret: i64) {
        if self.answered == SERVES_NO_REQUEST {
            return;
        }
        if is_read(syscall_nr) && ret > 0 {
            self.request_fd = fd;
            self.request_connection = connection;
            self.answered = 0;
        } else if is_write(syscall_nr) && ret > 0 && connection == self.request_connection {
            self.answered = 1;
        }
    }

    /// Its last request read is not answered yet: the thread is inside it.
    pub fn in_request(&self) -> bool {
        self.answered == 0
    }

    /// Blocked in `syscall_nr` on `fd`: waiting for the next request on the connection it
    /// answered, or idle in poll/epoll/select after answering.
    pub fn between_requests(&self, syscall_nr: u32, fd: u32) -> bool {
        self.answered != 0
            && ((is_read(syscall_nr) && fd == self.request_fd) || is_poll(syscall_nr))
    }
}

/// Why a kernel program gave up on an event; indexes of the `LOSSES` per-CPU array. Every
/// program returns one of these when it fails, and its entry counts it (tracer-ebpf
/// `maps::finish`, the one place losses are counted): the event it was handling is not
/// reported. A task or event that is not the target's is not a loss.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// The ring buffer was full.
    RingFull = 0,
    /// A map insert failed: the map was full (see [`MAX_TARGET_THREADS`]).
    MapFull = 1,
    /// A read failed: a probe's argument, a syscall's argument register, the first bytes of
    /// a read or write buffer (TLS record framing), the task's name, this CPU's
    /// interrupt-nesting entry, or a Go target's memory (a goroutine's id, its thread's
    /// current goroutine).
    ReadFailed = 2,
}
pub const LOSS_KINDS: u32 = 3;

/// Threads of the target the kernel side follows at once: the size of every map keyed by a
/// target thread's id (`TARGET_TIDS`, `IN_SYSCALL`, `WAKERS`, `TLS_CALL`), whose entries go
/// when the thread exits. When one is full, a `map_full` loss is counted and:
/// - `TARGET_TIDS`: a new thread is not added: its switch-ins and wakeups go unseen;
/// - `IN_SYSCALL`: the thread's syscall entry is not kept: a block in that syscall is not
///   named and its return is not reported;
/// - `WAKERS`: that wakeup's waker is `unknown`;
/// - `TLS_CALL`: that OpenSSL call's return is not reported.
///
/// The collector refuses a target that already has more threads than this.
pub const MAX_TARGET_THREADS: u32 = 65536;

/// OpenSSL connections (`SSL*`) whose handshake has completed, remembered so that later
/// calls on them cost one lookup and report nothing (`TLS_DONE`, an LRU map). When full, the
/// least recently used one is forgotten, without a loss: its next hooked call (with
/// `--tls-io-probes`, its next `SSL_read`/`SSL_write`) is reported like a first call on a
/// connection established before the tracer attached, and it is remembered again.
pub const MAX_TLS_CONNECTIONS_DONE: u32 = 65536;

/// x86-64 syscall numbers the programs care about (arch/x86/entry/syscalls/syscall_64.tbl).
pub mod nr {
    pub const READ: u32 = 0;
    pub const WRITE: u32 = 1;
    pub const CLOSE: u32 = 3;
    pub const POLL: u32 = 7;
    pub const PREAD64: u32 = 17;
    pub const PWRITE64: u32 = 18;
    pub const READV: u32 = 19;
    pub const WRITEV: u32 = 20;
    pub const SELECT: u32 = 23;
    pub const NANOSLEEP: u32 = 35;
    pub const SENDFILE: u32 = 40;
    pub const CONNECT: u32 = 42;
    pub const ACCEPT: u32 = 43;
    pub const SENDTO: u32 = 44;
    pub const RECVFROM: u32 = 45;
    pub const SENDMSG: u32 = 46;
    pub const RECVMSG: u32 = 47;
    pub const FSYNC: u32 = 74;
    pub const FDATASYNC: u32 = 75;
    pub const FUTEX: u32 = 202;
    pub const EPOLL_WAIT: u32 = 232;
    pub const CLOCK_NANOSLEEP: u32 = 230;
    pub const PSELECT6: u32 = 270;
    pub const PPOLL: u32 = 271;
    pub const SYNC_FILE_RANGE: u32 = 277;
    pub const EPOLL_PWAIT: u32 = 281;
    pub const ACCEPT4: u32 = 288;
    pub const PREADV: u32 = 295;
    pub const PWRITEV: u32 = 296;
    pub const RECVMMSG: u32 = 299;
    pub const SENDMMSG: u32 = 307;
    pub const PREADV2: u32 = 327;
    pub const PWRITEV2: u32 = 328;
    pub const EPOLL_PWAIT2: u32 = 441;
    pub const FUTEX_WAITV: u32 = 449;
}

/// `--sample N`: whether the socket whose kernel `struct sock` is at `sock`, with the port
/// pair `ports` (`skc_portpair`: the remote and local ports; 0 when unknown), is one of the
/// one in N whose reads and writes are reported. Decided from these alone, the same way for
/// every read and write of the connection's life on any thread, before any map lookup: the
/// lookup is most of what a read or write costs a server, so an unpicked socket costs only
/// the first checks. The ports matter: the slab allocator hands a closed connection's
/// `struct sock` to the next one, so connections one after another often share an address.
/// Fibonacci hashing: the multiply's high bits depend on every bit of the key.
#[inline(always)]
pub fn connection_sampled(sock: u64, ports: u32, one_in: u32) -> bool {
    one_in <= 1
        || ((sock ^ u64::from(ports)).wrapping_mul(FIBONACCI_HASH) >> 32)
            .is_multiple_of(u64::from(one_in))
}

/// 2^64 divided by the golden ratio: a key multiplied by it has high bits that depend on
/// every bit of the key (Fibonacci hashing).
pub const FIBONACCI_HASH: u64 = 0x9E37_79B9_7F4A_7C15;

/// Read-family syscalls: their first argument is the fd read from.
pub fn is_read(syscall_nr: u32) -> bool {
    use nr::*;
    matches!(
        syscall_nr,
        READ | READV | PREAD64 | PREADV | PREADV2 | RECVFROM | RECVMSG | RECVMMSG
    )
}

/// Write-family syscalls: their first argument is the fd written to (sendfile's `out_fd`).
pub fn is_write(syscall_nr: u32) -> bool {
    use nr::*;
    matches!(
        syscall_nr,
        WRITE | WRITEV | PWRITE64 | PWRITEV | PWRITEV2 | SENDTO | SENDMSG | SENDMMSG | SENDFILE
    )
}

/// Futex syscalls: a thread blocked in one waits for a futex (a wake never blocks).
pub fn is_futex(syscall_nr: u32) -> bool {
    matches!(syscall_nr, nr::FUTEX | nr::FUTEX_WAITV)
}

/// Waits for readiness: poll, select and epoll.
pub fn is_poll(syscall_nr: u32) -> bool {
    use nr::*;
    matches!(
        syscall_nr,
        POLL | PPOLL | SELECT | PSELECT6 | EPOLL_WAIT | EPOLL_PWAIT | EPOLL_PWAIT2
    )
}

/// `MSG_PEEK` (include/linux/socket.h): the receive returns the queued bytes and leaves them
/// queued, so the next receive returns them again.
pub const MSG_PEEK: u64 = 2;

/// The syscall a task's saved user registers say it is inside: `orig_ax` is the syscall
/// number (or -1 / an error code after an interrupt or exception), and `ax` holds `-ENOSYS`
/// until the syscall returns (arch/x86/entry/entry_64.S, `do_syscall_64()`, Linux 6.18).
pub fn syscall_in_progress(orig_ax: u64, ax: u64) -> Option<u32> {
    const ENOSYS: i64 = 38;
    (ax as i64 == -ENOSYS && orig_ax < 1024).then_some(orig_ax as u32)
}

/// The length of HTTP/1.1's interim `100 Continue` response as servers write it, its status
/// line and the blank line, `HTTP/1.1 100 Continue\r\n\r\n` (Go's net/http, nginx, Python's
/// http.server, hyper). The kernel side looks at the first bytes of a server's write of exactly
/// this length, and of no other.
pub const CONTINUE_RESPONSE_LEN: i64 = 25;

/// Whether a write's first 16 bytes (`first`, as two little-endian words) are an HTTP/1.x
/// `100 Continue` status line: a server's answer to a client's `Expect: 100-continue` (RFC
/// 9110 section 10.1.1), which asks for the request's body and does not answer the request.
/// Only this verdict leaves the kernel, never the bytes.
pub fn is_continue_response(first: [u64; 2]) -> bool {
    const VERSION: u64 = u64::from_le_bytes(*b"HTTP/1.\0");
    const STATUS: u64 = u64::from_le_bytes(*b" 100 \0\0\0");
    first[0] & 0x00ff_ffff_ffff_ffff == VERSION && first[1] & 0xff_ffff_ffff == STATUS
}

/// A TLS record header's length: content type, version, body length (RFC 8446 section 5.1).
pub const TLS_RECORD_HEADER: usize = 5;

/// Classify the first 5 bytes a read or write transferred: when they are a TLS record header
/// (content type 20..=23 — change_cipher_spec, alert, handshake, application_data — and
/// version 3.x), `content_type << 16 | length`; else 0. The kernel side reports only this
/// classification, never the bytes, so plaintext payloads never leave the kernel.
pub fn tls_record(header: [u8; TLS_RECORD_HEADER]) -> u32 {
    let [content_type, major, minor, len_hi, len_lo] = header;
    let length = u16::from_be_bytes([len_hi, len_lo]);
    let plausible =
        (20..=23).contains(&content_type) && major == 3 && minor <= 4 && length <= 18432;
    if plausible {
        (content_type as u32) << 16 | length as u32
    } else {
        0
    }
}

/// A [`tls_record`] classification, plus, for a change_cipher_spec record, the content type
/// of the record after it in bits 24..31 when the same buffer holds that record's header
/// (`next_header`). TLS 1.2 sends its Finished as a handshake record, TLS 1.3 as
/// application_data (RFC 8446 section 5), so this tells the versions apart from record
/// headers alone.
pub fn tls_record_and_next(first: u32, next_header: [u8; TLS_RECORD_HEADER]) -> u32 {
    first | record_content(tls_record(next_header)) << 24
}

/// Whether a classification is a change_cipher_spec record (its body is one byte): the
/// only record after which the kernel side looks at the next header.
pub fn is_change_cipher_spec(record: u32) -> bool {
    record == tls_content::CHANGE_CIPHER_SPEC << 16 | 1
}

/// The content type of a classified record (0: not a record).
pub fn record_content(record: u32) -> u32 {
    (record >> 16) & 0xff
}

/// The length of a classified record's body.
pub fn record_len(record: u32) -> u32 {
    record & 0xffff
}

/// The content type of the record after a change_cipher_spec (0: not seen).
pub fn record_next_content(record: u32) -> u32 {
    record >> 24
}

/// TLS record content types (RFC 8446 section 5.1).
pub mod tls_content {
    pub const CHANGE_CIPHER_SPEC: u32 = 20;
    pub const ALERT: u32 = 21;
    pub const HANDSHAKE: u32 = 22;
    pub const APPLICATION_DATA: u32 = 23;
}

/// Futex ops that wait (`op & FUTEX_CMD_MASK`; include/uapi/linux/futex.h).
pub fn futex_op_waits(op: u32) -> bool {
    // FUTEX_WAIT 0, FUTEX_LOCK_PI 6, FUTEX_WAIT_BITSET 9, FUTEX_WAIT_REQUEUE_PI 11, FUTEX_LOCK_PI2 13
    matches!(op & 0x7f, 0 | 6 | 9 | 11 | 13)
}

/// Ring-buffer size in bytes (a power of two, a multiple of the page size).
pub const RING_BYTES: u32 = 32 << 20;

/// One list of the shared records: each one's size, the sum of its fields' (no implicit
/// padding), is checked at compile time, and each is `aya::Pod` for the collector.
macro_rules! records {
    ($($record:ty = $size:expr,)*) => {
        $(const _: () = assert!(core::mem::size_of::<$record>() == $size);)*

        #[cfg(feature = "user")]
        mod pod {
            use super::*;
            $(unsafe impl aya::Pod for $record {})*
        }
    };
}

records! {
    EventHeader = 16,
    SwitchEvent = 112,
    PendingWakeup = 56,
    WakeupEvent = 56,
    WakerId = 40,
    IrqNesting = 8 + 16 * IRQ_LEVELS,
    IrqLevel = 16,
    SyscallEvent = 48,
    SyscallPairEvent = 96,
    SyscallPairBatch = 24 + 96 * PAIR_BATCH,
    TcpSocket = 88,
    StretchTable = 64 + 8 * STRETCH_SLOTS,
    StretchHandedOver = 40,
    StretchHandover = 24 + 40 * STRETCH_SLOTS,
    StretchRequest = 32,
    StretchRequestBatch = 24 + 32 * STRETCH_BATCH,
    ThreadEvent = 32,
    Conversation = 48,
    TlsEvent = 40,
    GoSchedEvent = 48,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request kept in the kernel ends at its last write, or aborted when the connection
    /// ended before any.
    #[test]
    fn a_kept_request_ends_at_its_last_write() {
        let kept = TcpSocket {
            fd: 4,
            stretch_tid: 9,
            start_ns: 1_000,
            last_write_ns: 1_400,
            flags: stretch_flags::SHARED,
            ..Default::default()
        };
        let r = kept.finished_request(5_000);
        assert_eq!(
            (r.start_ns, r.latency_ns, r.tid, r.fd, r.flags),
            (1_000, 400, 9, 4, stretch_flags::SHARED)
        );
        let unanswered = TcpSocket {
            last_write_ns: 0,
            ..kept
        };
        let r = unanswered.finished_request(5_000);
        assert_eq!(r.latency_ns, 4_000);
        assert_ne!(r.flags & stretch_flags::ABORTED, 0);
        let handed = kept.handed_over();
        assert_eq!(
            (handed.start_ns, handed.last_write_ns, handed.fd),
            (1_000, 1_400, 4)
        );
    }

    /// A kept request whose read blocked for its bytes starts at the wakeup that ended the
    /// block, its wait for a CPU from there reported; one whose read did not block reports
    /// none, whatever its entry held. Handed over, it is its read, as the collector would
    /// have had it (the collector starts it at the same wakeup).
    #[test]
    fn a_kept_request_woken_by_its_bytes_starts_at_the_wakeup() {
        let woken = TcpSocket {
            fd: 4,
            start_ns: 1_000,
            last_write_ns: 1_400,
            woken_ns: 700,
            runqueue_ns: 250,
            ..Default::default()
        };
        let r = woken.finished_request(5_000);
        assert_eq!((r.start_ns, r.latency_ns, r.runqueue_ns), (700, 700, 250));
        assert_eq!((r.waiting_for_cpu_ns(), r.on_cpu_ns()), (250, 450));
        assert_eq!(
            (woken.handed_over().start_ns, woken.handed_over().woken),
            (1_000, 1)
        );
        let not_woken = TcpSocket {
            woken_ns: 0,
            ..woken
        };
        let r = not_woken.finished_request(5_000);
        assert_eq!((r.start_ns, r.latency_ns, r.runqueue_ns), (1_000, 400, 0));
        // A wait longer than the request (never sent so) is cut to it.
        let r = StretchRequest {
            latency_ns: 100,
            runqueue_ns: 250,
            ..r
        };
        assert_eq!((r.waiting_for_cpu_ns(), r.on_cpu_ns()), (100, 0));
    }

    #[test]
    fn switch_states_are_reported_as_the_tracepoint_does() {
        // R+ (preempted), R (yield), S, D, I (TASK_IDLE), an rtlock wait, X and Z.
        assert_eq!(switch_state_as_reported(true, 0x1, 0), PREEMPT_STATE_BIT);
        assert_eq!(switch_state_as_reported(false, 0, 0), 0);
        assert_eq!(switch_state_as_reported(false, 0x1, 0), 0x1);
        assert_eq!(switch_state_as_reported(false, 0x2, 0), 0x2);
        assert_eq!(switch_state_as_reported(false, 0x402, 0), 0x80);
        assert_eq!(switch_state_as_reported(false, 0x1000, 0), 0x2);
        // TASK_DEAD (0x80) is not reportable: an exiting task reports its exit state.
        assert_eq!(switch_state_as_reported(false, 0x80, 0x10), 0x10);
        assert_eq!(switch_state_as_reported(false, 0x80, 0x20), 0x20);
        // TASK_WAKEKILL | TASK_UNINTERRUPTIBLE (killable) is D.
        assert_eq!(switch_state_as_reported(false, 0x102, 0), 0x2);
    }

    #[test]
    fn a_thread_is_between_requests_once_it_answered_the_connection_it_read() {
        let (conn, backend) = (5, 9);
        let mut c = Conversation::default();
        assert!(!c.between_requests(nr::READ, conn), "nothing read yet");
        let (conn_id, backend_id) = (0xa000, 0xb000);
        c.returned(nr::READ, conn, conn_id, 100); // the request
        c.returned(nr::WRITE, backend, backend_id, 10); // a backend call
        assert!(
            !c.between_requests(nr::READ, backend),
            "waiting for the backend"
        );
        assert!(!c.between_requests(nr::FUTEX, 0));
        c.returned(nr::WRITE, conn, conn_id, 50); // the response
        assert!(
            c.between_requests(nr::READ, conn),
            "waiting for the next request"
        );
        assert!(c.between_requests(nr::EPOLL_WAIT, 0), "an event loop, idle");
        assert!(!c.between_requests(nr::FUTEX, 0), "a lock after answering");
        c.returned(nr::READ, conn, conn_id, 80); // the next request
        assert!(!c.between_requests(nr::READ, conn));
    }

    /// Two backend calls in a row on the same fd number: the second connection's request
    /// write answers nothing, so the wait for its reply keeps its stack.
    #[test]
    fn a_new_connection_behind_the_same_fd_answers_nothing() {
        let backend = 9;
        let mut c = Conversation::default();
        c.returned(nr::READ, backend, 0xb000, 5); // the first call's reply
        c.returned(nr::WRITE, backend, 0xc000, 3); // the second call, on a new connection
        assert!(!c.between_requests(nr::READ, backend));
    }

    /// An HTTP/2 connection's goroutine reads and writes every stream's frames, and is
    /// inside no request, whatever it moves.
    #[test]
    fn a_conversation_serving_no_request_stays_out_of_requests() {
        let conn = 5;
        let mut c = Conversation::serving_no_request();
        assert!(!c.in_request());
        c.returned(nr::READ, conn, 0xa000, 100);
        assert!(!c.in_request(), "a frame read");
        c.returned(nr::WRITE, conn, 0xa000, 50);
        c.returned(nr::READ, conn, 0xa000, 80);
        assert!(!c.in_request());
    }

    #[test]
    fn only_a_syscall_in_progress_is_named() {
        let enosys = (-38i64) as u64;
        assert_eq!(syscall_in_progress(nr::READ as u64, enosys), Some(nr::READ));
        assert_eq!(syscall_in_progress(nr::READ as u64, 5), None, "it returned");
        assert_eq!(syscall_in_progress(u64::MAX, enosys), None, "an interrupt");
    }

    #[test]
    fn the_record_after_a_change_cipher_spec_is_classified() {
        let ccs = tls_record([20, 3, 3, 0, 1]);
        assert!(is_change_cipher_spec(ccs));
        let tls13 = tls_record_and_next(ccs, [23, 3, 3, 0, 53]);
        assert_eq!(record_content(tls13), tls_content::CHANGE_CIPHER_SPEC);
        assert_eq!(record_len(tls13), 1);
        assert_eq!(record_next_content(tls13), tls_content::APPLICATION_DATA);
        let tls12 = tls_record_and_next(ccs, [22, 3, 3, 0, 40]);
        assert_eq!(record_next_content(tls12), tls_content::HANDSHAKE);
        assert_eq!(record_next_content(tls_record_and_next(ccs, *b"GET /")), 0);
        assert!(!is_change_cipher_spec(tls_record([22, 3, 3, 0, 1])));
    }

    #[test]
    fn tls_record_headers_are_recognised_and_plaintext_is_not() {
        assert_eq!(
            tls_record([22, 3, 1, 0x02, 0x00]),
            22 << 16 | 512,
            "a ClientHello"
        );
        assert_eq!(tls_record([23, 3, 3, 0x00, 0x35]), 23 << 16 | 53);
        assert_eq!(tls_record(*b"GET /"), 0);
        assert_eq!(tls_record(*b"HTTP/"), 0);
        assert_eq!(tls_record([22, 2, 0, 0, 1]), 0, "SSLv2-era version");
        assert_eq!(
            tls_record([22, 3, 3, 0xff, 0xff]),
            0,
            "longer than any record"
        );
    }

    /// The first 16 bytes of `text` as [`is_continue_response`] gets them.
    fn first_words(text: &[u8]) -> [u64; 2] {
        let mut first = [0u8; 16];
        first.copy_from_slice(&text[..16]);
        [
            u64::from_le_bytes(first[..8].try_into().unwrap()),
            u64::from_le_bytes(first[8..].try_into().unwrap()),
        ]
    }

    #[test]
    fn a_100_continue_is_recognised_and_final_responses_are_not() {
        let continue_11 = b"HTTP/1.1 100 Continue\r\n\r\n";
        assert_eq!(continue_11.len() as i64, CONTINUE_RESPONSE_LEN);
        assert!(is_continue_response(first_words(continue_11)));
        assert!(is_continue_response(first_words(
            b"HTTP/1.0 100 Continue\r\n\r\n"
        )));
        for other in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.1 103 Early Hints\r\n",
            b"HTTP/1.1 1000 Continue\r\n\r\n",
            b"HTTP/2.0 100 Continue\r\n\r\n",
            b"POST /x HTTP/1.1\r\n\r\n xxxxxx",
            b"\x17\x03\x03\x00\x14 encrypted bytes",
        ] {
            assert!(!is_continue_response(first_words(other)), "{other:?}");
        }
    }

    #[test]
    fn a_stack_id_names_its_map_and_its_bucket() {
        for map in 0..STACK_MAPS.len() as u32 {
            for index in [0, 1, MAX_SPILLED_STACKS - 1, MAX_STACKS - 1] {
                let id = stack_id(map, index);
                assert!(id >= 0, "{map} {index}");
                assert_eq!(stack_map_and_index(id as u32), (map as usize, index));
            }
        }
    }

    /// `--sample N` picks about one socket in N, whatever the spacing of the kernel's
    /// `struct sock` objects (a slab's objects are a fixed size apart, slabs a page order
    /// apart), and every socket with N = 1.
    #[test]
    fn about_one_socket_in_n_is_sampled() {
        for object_size in [1_024u64, 2_304, 2_432] {
            let sockets = || {
                (0..4_000u64).map(move |i| {
                    0xffff_8881_0400_0000 + (i / 13) * 0x8000 + (i % 13) * object_size
                })
            };
            for one_in in [2u32, 3, 10] {
                let picked = sockets().filter(|&sock| connection_sampled(sock, 0, one_in));
                assert_about_one_in(one_in, picked.count(), 4_000, object_size);
            }
            assert!(sockets().all(|sock| connection_sampled(sock, 0, 1)));
            assert!(sockets().all(|sock| connection_sampled(sock, 0, 0)));
        }
    }

    /// Connections one after another often get the same `struct sock` (the slab's freed
    /// object is handed out next): their ports still pick about one in N of them.
    #[test]
    fn connections_sharing_a_socket_address_are_picked_by_their_ports() {
        const SOCK: u64 = 0xffff_8881_0400_2300;
        const SERVER_PORT: u32 = 443 << 16; // `skc_num`, above the remote port
        for one_in in [2u32, 3, 10] {
            let picked = (32_768u32..36_768).filter(|&client| {
                connection_sampled(SOCK, SERVER_PORT | client.swap_bytes() >> 16, one_in)
            });
            assert_about_one_in(one_in, picked.count(), 4_000, SOCK);
        }
    }

    /// `picked` of `of` is one in `one_in`, within a fifth.
    fn assert_about_one_in(one_in: u32, picked: usize, of: usize, case: u64) {
        let share = picked as f64 / of as f64;
        let expected = 1.0 / f64::from(one_in);
        assert!(
            (share - expected).abs() < expected / 5.0,
            "case {case:#x}, 1 in {one_in}: {share}"
        );
    }
}
