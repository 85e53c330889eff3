//! Requests the kernel side delimits and times itself, with no record per read or write: those
//! a target thread serves in one stretch on its CPU, from the read that starts the request to
//! the read that starts the connection's next one. A saturated event loop (one nginx worker
//! here) leaves its CPU once every few thousand requests, so almost all its requests are these,
//! and the collector receives each as 32 bytes of a batch instead of decoding and replaying a
//! read and a write ([`StretchRequest`]).
//!
//! Such a request's time is all on its CPU: its thread ran from its first read to its last
//! write with no switch (any switch-out ends the stretch), so its latency is its CPU time
//! (see [`StretchRequest`] for the steal). Every other case goes
//! to the collector as before, with its exact meaning kept:
//! - A thread's first socket read or write in a stretch goes to the collector, unless it is a
//!   read and the thread has not blocked since its last stretch began (it was preempted), or
//!   it is the read the thread blocked in, woken by its bytes (a thread per connection,
//!   between requests): that request starts at the wakeup, as the collector would start it,
//!   and its wait for the CPU from there to the stretch's switch-in is its run-queue time
//!   ([`woken_by_its_bytes`]). A read that blocked in any other way goes to the collector,
//!   which starts its request at the wakeup that ended the block.
//! - When the thread blocks in a read of the connection whose request it last started, that
//!   request, answered, is over: finished here ([`end_answered`]), not handed over.
//! - When the thread leaves its CPU (switch-out, exit), the requests its stretch still keeps
//!   are handed to the collector in one record, each as the read that started it and its last
//!   write so far ([`StretchHandover`]), before the switch-out's own record: it may still write
//!   more of a response, or take another read to be over, in a later stretch. The handover's
//!   reads are older than the collector's reorder window when the stretch was long; they
//!   concern only the running thread, whose timeline has not moved since its switch-in, so
//!   they are still replayed right.
//! - A request that another thread (or the same thread on another CPU) reads or writes is
//!   handed over the same way, first: a worker pool's reader and writer are two threads.
//! - A connection whose request the collector holds (handed over, or begun by a first read) is
//!   taken back when its next request begins in a stretch, with one record that tells the
//!   collector its request there is over ([`EventKind::StretchTakesConnection`]).
//! - A connection that closes with a request kept ends it here (`inet_sock_set_state`).
//!
//! Only plaintext server-side TCP connections the kernel side saw open, of targets that are
//! not Go (whose requests are their goroutines'), are kept here (with `--sample`, those of
//! the picked connections: the others' reads and writes return before).
//!
//! Each kept request lives in its connection's `TCP_SOCKETS` entry, which every read and write
//! looks up anyway; the CPU's stretch table lists the connections its thread keeps, for the
//! handover. The table is per CPU and used only by tracepoint programs, which cannot interleave
//! on it (as `held_read.rs`). Finished requests are gathered [`STRETCH_BATCH`] to a record,
//! sent when full, when the CPU switches to its idle task, or when the next request finished
//! on that CPU, or a target thread's switch-out there, finds the oldest older than
//! [`STRETCH_BATCH_MAX_WAIT_NS`] (a CPU that only runs other tasks from then on keeps them
//! until one of those, or the detach); those still gathered, and the requests still kept,
//! when the tracer detaches are read from their maps.

use core::mem::size_of;

use aya_ebpf::{
    helpers::bpf_get_smp_processor_id,
    macros::map,
    maps::{Array, PerCpuArray},
};
use tracer_common::{
    nr, request_keeper, socket_origin, socket_plain, stretch_flags, EventHeader, EventKind, Loss,
    StretchHandedOver, StretchHandover, StretchRequest, StretchRequestBatch, StretchTable,
    SyscallEvent, TcpSocket, NO_FD, STRETCH_BATCH, STRETCH_SLOTS,
};

use crate::conversation::{
    blocked_in_this_read, note_blocked_reading, unblocked_since_last_stretch,
};
use crate::held_read::{release_read_held_since_before, send_held, send_pairs_waiting_since};
use crate::maps::{
    count_loss, count_losses, current_last_arrival, current_switches, emit, global, tls_records,
    EVENTS, RING_FLAGS, TCP_SOCKETS,
};

/// 1: keep requests in the kernel (set by the collector at load time).
#[unsafe(no_mangle)]
static STRETCH_REQUESTS: u32 = 0;

/// How long a finished request may wait for its batch to fill (the live view's freshness;
/// the requests are complete, so their order does not matter).
const STRETCH_BATCH_MAX_WAIT_NS: u64 = 50_000_000;

#[map]
static STRETCH_TABLES: PerCpuArray<StretchTable> = PerCpuArray::with_max_entries(1, 0);

/// Where a CPU builds its handover record.
#[map]
static STRETCH_HANDOVERS: PerCpuArray<StretchHandover> = PerCpuArray::with_max_entries(1, 0);

#[map]
static STRETCH_DONE: PerCpuArray<StretchRequestBatch> = PerCpuArray::with_max_entries(1, 0);

/// A read or write was kept at `now`: the pairs this CPU gathered for the collector go out if
/// the oldest has waited long enough (as at a read or write that goes to the collector), and
/// so does a read held as long.
#[inline(always)]
pub fn kept(now: u64) {
    release_read_held_since_before(now);
    send_pairs_waiting_since(now);
}

/// Whether requests are kept in the kernel at all.
#[inline(always)]
pub fn keeps_requests() -> bool {
    global(&STRETCH_REQUESTS) != 0
}

/// A read or write that moved bytes (`ret` > 0) or ended (`ret` <= 0) on `tcp` (`sock`), of
/// target thread `tid`, the current task, at `now`. Returns whether the kernel side kept it:
/// `false`, it goes to the collector as a record.
///
/// `tcp` is `sock`'s `TCP_SOCKETS` entry: a handover writes the entries it lists, this one
/// among them maybe, so no reference to it is held across one.
#[inline(always)]
pub fn serve(tcp: *mut TcpSocket, sock: u64, tid: u32, received: bool, ret: i64, now: u64) -> bool {
    // SAFETY (every dereference of `tcp`): a valid map value pointer; only the target's
    // threads write its request fields, a stale value costs one request's attribution.
    // Plaintext server-side connections only: a TLS connection's records are the
    // collector's to read (its handshake, and reads that start mid-record).
    let (origin, plain) = unsafe { ((*tcp).origin, (*tcp).plain) };
    if origin != socket_origin::TCP_SERVER || (plain != socket_plain::PLAIN && tls_records()) {
        return false;
    }
    let Some(table) = STRETCH_TABLES.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's table, used only by programs that cannot interleave on it.
    let table = unsafe { &mut *table };
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let (keeper, kept_by, kept_on) =
        unsafe { ((*tcp).keeper, (*tcp).stretch_tid, (*tcp).stretch_cpu) };
    if keeper == request_keeper::STRETCH && (kept_by != tid || kept_on != cpu) {
        // Kept by another thread's stretch, or this thread's on another CPU: the collector
        // takes it, then this read or write.
        hand_over_one(unsafe { &mut *tcp }, now);
    }
    // The thread's first socket read or write in this stretch (or the last owner's switch-out
    // went unseen): the table's requests go to the collector now, and so does this one. A
    // read checks the stretch, by the scheduler's clock when the thread last got the CPU, in
    // case its switch-out went unseen: a request finishes only at a read, so one that spanned
    // such a switch is handed over, never finished here.
    let mut woken = Woken::NOT;
    let new_stretch = if table.owner_tid != tid {
        Some(current_last_arrival())
    } else if received {
        let arrival = current_last_arrival();
        (arrival != table.owner_arrival).then_some(arrival)
    } else {
        None
    };
    if let Some(arrival) = new_stretch {
        hand_over_out_of_line(table, cpu, now);
        table.owner_tid = tid;
        table.owner_arrival = arrival;
        // A read that begins the stretch is kept if it did not block: the thread has not
        // blocked since its last stretch began (it was preempted, or woke a task that took
        // its CPU). Or if it is the read that blocked, woken by its bytes: its request
        // starts at that wakeup, as the collector would start it, and its wait for the CPU
        // is known (a thread per connection, blocking in its read between requests). Any
        // other goes to the collector.
        let switches = current_switches();
        let unblocked = unblocked_since_last_stretch(tid, switches.voluntary);
        let read_request = received && ret > 0;
        if read_request && !unblocked {
            let fd = unsafe { (*tcp).fd };
            woken = woken_by_its_bytes(table, tid, fd, switches.all());
        }
        if !(read_request && (unblocked || woken.at_ns != 0)) {
            note_sent(unsafe { &mut *tcp }, received, ret);
            return false;
        }
    }
    let tcp = unsafe { &mut *tcp };
    match (tcp.keeper == request_keeper::STRETCH, received) {
        (true, true) => read_kept(table, tcp, sock, ret, now),
        (true, false) => {
            if ret > 0 {
                answer(table, tcp, ret, now);
            }
            true // a failed write changes nothing (as for the collector)
        }
        (false, true) if ret > 0 => open(table, tcp, sock, tid, cpu, ret, now, woken),
        (false, _) => {
            note_sent(tcp, received, ret);
            false
        }
    }
}

/// A read on a connection whose request this stretch keeps: the next request when that one
/// was answered (the answered one is finished), more of it when not, or the connection's end.
#[inline(always)]
fn read_kept(table: &mut StretchTable, tcp: &mut TcpSocket, sock: u64, ret: i64, now: u64) -> bool {
    let answered = tcp.last_write_ns != 0;
    if ret > 0 {
        if answered {
            gather(tcp, now);
            start(table, tcp, sock, ret, now, Woken::NOT);
        }
        return true;
    }
    if ret == 0 {
        // The peer closed: a request answered is complete, one not answered aborted.
        if !answered {
            table.unanswered = table.unanswered.saturating_sub(1);
        }
        gather(tcp, now);
        tcp.keeper = request_keeper::NONE;
        tcp.answered = 0;
    }
    true // a failed read changes nothing (as for the collector)
}

/// Where a kept request's first read blocked for its bytes: the wakeup that ended the block,
/// and the wait for a CPU from there to the thread's switch-in.
#[derive(Clone, Copy)]
struct Woken {
    /// 0: the read did not block.
    at_ns: u64,
    runqueue_ns: u32,
}

impl Woken {
    const NOT: Woken = Woken {
        at_ns: 0,
        runqueue_ns: 0,
    };
}

/// Thread `tid`, at the first read of its stretch, with `switches` context switches (blocks
/// and preemptions), reads bytes of `fd`: when that read is the one it blocked in, with no
/// switch since (see `blocked_in_this_read`: the stretch's switch-in is the block's first,
/// so a wakeup it carries is the one that ended the block, not one that came while the
/// thread was preempted after it), and the switch-in that began the stretch carried the
/// wakeup that ended the block, that wakeup. [`Woken::NOT`] otherwise (the wakeup or the
/// switch-in went unseen, or the wakeup came as the thread went to sleep, before its
/// switch-out: the collector then starts the request at the switch-out).
#[inline(always)]
fn woken_by_its_bytes(table: &StretchTable, tid: u32, fd: u32, switches: u64) -> Woken {
    let Some(blocked_at) = blocked_in_this_read(tid, fd, switches) else {
        return Woken::NOT;
    };
    let woken = table.arrived_woken_ns;
    if table.arrived_tid != tid || woken < blocked_at || woken == 0 {
        return Woken::NOT;
    }
    match table
        .arrived_ns
        .checked_sub(woken)
        .and_then(|runqueue| u32::try_from(runqueue).ok())
    {
        Some(runqueue_ns) => Woken {
            at_ns: woken,
            runqueue_ns,
        },
        None => Woken::NOT,
    }
}

/// Target thread `tid` gets this CPU at `now`, woken at `woken_ns` (0: no wakeup seen, or
/// preempted), for a read that blocked (see [`woken_by_its_bytes`]).
#[inline(always)]
pub fn note_arrival(tid: u32, woken_ns: u64, now: u64) {
    if !keeps_requests() {
        return;
    }
    if let Some(table) = STRETCH_TABLES.get_ptr_mut(0) {
        // SAFETY: as in `serve`.
        let table = unsafe { &mut *table };
        table.arrived_tid = tid;
        table.arrived_ns = now;
        table.arrived_woken_ns = woken_ns;
    }
}

/// A read of request bytes on a connection no stretch keeps: a new request kept here, unless
/// it continues one the collector holds, or the table is full. `woken`: the read blocked
/// for them.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn open(
    table: &mut StretchTable,
    tcp: &mut TcpSocket,
    sock: u64,
    tid: u32,
    cpu: u32,
    ret: i64,
    now: u64,
    woken: Woken,
) -> bool {
    let collector_holds = tcp.keeper != request_keeper::NONE;
    if collector_holds && tcp.answered == 0 {
        return false; // more of the request the collector has open
    }
    let len = table.len as usize;
    if len >= STRETCH_SLOTS {
        note_sent(tcp, true, ret);
        return false;
    }
    if collector_holds {
        take_from_collector(tcp, now);
    }
    // Listed once per stretch: the connection's next requests in it reuse the entry.
    table.socks[len & (STRETCH_SLOTS - 1)] = sock;
    table.len = len as u32 + 1;
    tcp.keeper = request_keeper::STRETCH;
    tcp.stretch_tid = tid;
    tcp.stretch_cpu = cpu;
    start(table, tcp, sock, ret, now, woken);
    true
}

/// `tcp`'s (`sock`'s) next request starts with a read that returned `ret` at `now` (after
/// blocking for its bytes: `woken`).
#[inline(always)]
fn start(
    table: &mut StretchTable,
    tcp: &mut TcpSocket,
    sock: u64,
    ret: i64,
    now: u64,
    woken: Woken,
) {
    table.opened = table.opened.wrapping_add(1);
    table.last_started = sock;
    if table.unanswered > 0 {
        // Another request would share the thread: counted again if the running count may
        // be too high (see `count_unanswered_besides`), which only a kept request leaving
        // its stretch unseen makes it (`STRETCH_DEPARTURES`), rarely. A sequential server
        // answers each request before it reads the next, and never gets here.
        let departures = departures_from_elsewhere();
        if departures != table.departures_seen {
            table.departures_seen = departures;
            count_unanswered_besides(table, sock);
        }
    }
    table.unanswered += 1;
    // Marked as counted by this CPU's table now, so that no later count of it here, with a
    // newer mark, mistakes a mark another CPU left (or a fresh entry's 0) for its own.
    tcp.counted_at = table.opened;
    tcp.start_ns = now;
    tcp.woken_ns = woken.at_ns;
    tcp.runqueue_ns = woken.runqueue_ns;
    tcp.last_write_ns = 0;
    tcp.read_ret = ret as i32;
    tcp.write_ret = 0;
    tcp.opened_as = table.opened;
    // Another request of the thread was waiting for its response.
    tcp.flags = if table.unanswered > 1 {
        stretch_flags::SHARED
    } else {
        0
    };
    tcp.answered = 0;
}

/// Count again, into the table, the requests its stretch keeps and has not answered,
/// `sock`'s aside. The running count only errs high: a kept request that another CPU's
/// thread goes on with (`hand_over_one`), or whose connection closes on another CPU
/// (`end_on_close`), leaves this CPU's count as it was, since no CPU writes another's table.
/// Counted by each listed connection's entry, once (a connection handed over and kept again
/// is listed twice): each counted entry is marked with the table's `opened` count, new at
/// each call (and set on the entry as its request starts, see `start`). The count is kept
/// in the table, not in a register, so that every pass through the loop ends in the same
/// state for the verifier (as in `hand_over`).
#[inline(always)]
fn count_unanswered_besides(table: &mut StretchTable, sock: u64) {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let (owner, mark, len) = (
        table.owner_tid,
        table.opened,
        (table.len as usize).min(STRETCH_SLOTS),
    );
    table.unanswered = 0;
    for i in 0..STRETCH_SLOTS {
        if i >= len {
            break;
        }
        let listed = table.socks[i];
        if listed == sock {
            continue;
        }
        let Some(tcp) = TCP_SOCKETS.get_ptr_mut(listed) else {
            continue;
        };
        // SAFETY: a valid map value pointer; only entries this stretch keeps are marked.
        let tcp = unsafe { &mut *tcp };
        if tcp.keeper == request_keeper::STRETCH
            && tcp.stretch_tid == owner
            && tcp.stretch_cpu == cpu
            && tcp.last_write_ns == 0
            && tcp.counted_at != mark
        {
            tcp.counted_at = mark;
            table.unanswered += 1;
        }
    }
}

/// Kept requests, unanswered, that left their stretch unseen by its table: a thread on
/// another CPU went on with one (`hand_over_one`), or its connection closed
/// (`end_on_close`, on any CPU). Each leaves its table counting it, so a table counts again
/// when this has moved since it last did.
#[map]
static STRETCH_DEPARTURES: Array<u64> = Array::with_max_entries(1, 0);

#[inline(always)]
fn departures_from_elsewhere() -> u64 {
    STRETCH_DEPARTURES.get(0).copied().unwrap_or(0)
}

/// `tcp`'s kept request leaves its stretch from wherever this runs: counted when it was
/// unanswered (see [`STRETCH_DEPARTURES`]).
#[inline(always)]
fn note_departure(tcp: &TcpSocket) {
    if tcp.last_write_ns != 0 {
        return;
    }
    if let Some(departures) = STRETCH_DEPARTURES.get_ptr_mut(0) {
        atomic_add_one(departures);
    }
}

/// `*counter += 1`, atomically: any CPU may add to it at once. (`core`'s atomics have no
/// read-modify-write for this target; the instruction is BPF's atomic add.)
#[inline(always)]
fn atomic_add_one(counter: *mut u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: `counter` is a valid, aligned pointer to a map value.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {one}",
            p = in(reg) counter,
            one = in(reg) 1u64,
        );
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: as above.
    unsafe {
        *counter += 1;
    }
}

/// A response write of `tcp`'s kept request.
#[inline(always)]
fn answer(table: &mut StretchTable, tcp: &mut TcpSocket, ret: i64, now: u64) {
    if tcp.last_write_ns == 0 {
        table.unanswered = table.unanswered.saturating_sub(1);
        // Another request opened while it waited for its response.
        if table.opened != tcp.opened_as {
            tcp.flags |= stretch_flags::SHARED;
        }
    }
    tcp.last_write_ns = now;
    tcp.write_ret = ret as i32;
    tcp.answered = 1;
}

/// Tell the collector that the kernel side takes `tcp`'s requests back: its request there,
/// answered, is over. What this CPU holds for the collector goes first (its last write may
/// be among it). A function of its own, as `gather`.
#[inline(never)]
fn take_from_collector(tcp: &TcpSocket, now: u64) {
    send_held();
    if let Err(loss) = emit(taken_connection(tcp, now)) {
        count_loss(loss);
    }
}

/// The record telling the collector that the kernel side takes `tcp`'s requests back.
#[inline(always)]
fn taken_connection(tcp: &TcpSocket, now: u64) -> SyscallEvent {
    SyscallEvent {
        hdr: EventHeader {
            ts_ns: now,
            kind: EventKind::StretchTakesConnection as u32,
            tid: 0,
        },
        nr: nr::READ,
        fd: tcp.fd,
        origin: socket_origin::TCP_SERVER,
        connection: tcp.opened_ns,
        ..Default::default()
    }
}

/// A read or write of `tcp` that goes to the collector: what it tells the collector about the
/// connection's request.
#[inline(always)]
fn note_sent(tcp: &mut TcpSocket, received: bool, ret: i64) {
    match (received, ret) {
        (true, 0) => tcp.keeper = request_keeper::NONE, // the peer closed: the request is over
        (true, r) if r > 0 && (tcp.keeper != request_keeper::COLLECTOR || tcp.answered != 0) => {
            tcp.keeper = request_keeper::COLLECTOR;
            tcp.answered = 0;
        }
        (false, r) if r > 0 => tcp.answered = 1,
        _ => {}
    }
}

/// `tcp`'s kept request, finished at `now`, into this CPU's batch. A function of its own:
/// inlined into the socket programs, with the handover's, its locals overflowed the stack of
/// their calls (512 bytes).
#[inline(never)]
fn gather(tcp: &TcpSocket, now: u64) {
    let Some(batch) = STRETCH_DONE.get_ptr_mut(0) else {
        return count_losses(Loss::MapFull, 2);
    };
    // SAFETY: this CPU's batch, used only by programs that cannot interleave on it.
    let batch = unsafe { &mut *batch };
    let count = batch.count as usize;
    if count == 0 {
        batch.hdr.ts_ns = now;
        batch.hdr.kind = EventKind::StretchRequestBatch as u32;
    }
    batch.requests[count & (STRETCH_BATCH - 1)] = tcp.finished_request(now);
    batch.count = count as u32 + 1;
    if count + 1 >= STRETCH_BATCH || waited_long(batch, now) {
        send_done(batch);
    }
}

/// The oldest request gathered in `batch` has waited longer than
/// [`STRETCH_BATCH_MAX_WAIT_NS`] at `now` (an empty batch's time is its last one's).
#[inline(always)]
fn waited_long(batch: &StretchRequestBatch, now: u64) -> bool {
    now.saturating_sub(batch.hdr.ts_ns) > STRETCH_BATCH_MAX_WAIT_NS
}

/// Send the finished requests gathered in `batch` (a record as long as its requests).
#[inline(always)]
fn send_done(batch: &mut StretchRequestBatch) {
    let count = (batch.count as usize).min(STRETCH_BATCH);
    if count == 0 {
        return;
    }
    let bytes =
        head_bytes::<StretchRequestBatch>(batch, RECORD_HEAD + size_of::<StretchRequest>() * count);
    if EVENTS.output::<[u8]>(bytes, RING_FLAGS).is_err() {
        count_losses(Loss::RingFull, 2 * count as u64);
    }
    batch.count = 0;
}

/// The bytes of a batch or handover record before its requests: the header and the count.
const RECORD_HEAD: usize = size_of::<EventHeader>() + 8;

/// The first `len` bytes of `value` (no more than its size).
#[inline(always)]
fn head_bytes<T>(value: &T, len: usize) -> &[u8] {
    let len = at_most(len as u64, core::mem::size_of::<T>() as u64) as usize;
    // SAFETY: `len` bytes of `value`, which is that long at least.
    unsafe { core::slice::from_raw_parts((value as *const T).cast::<u8>(), len) }
}

/// `value`, no more than `max`, in a way the verifier follows: the compiler turned a plain
/// `min` into a compare of the low 32 bits and passed on the unbounded 64-bit register.
#[inline(always)]
fn at_most(value: u64, max: u64) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        let mut value = value;
        // SAFETY: two register instructions, no memory access.
        unsafe {
            core::arch::asm!(
                "if {v} <= {max} goto +1",
                "{v} = {max}",
                v = inout(reg) value,
                max = in(reg) max,
            );
        }
        value
    }
    #[cfg(not(target_arch = "bpf"))]
    value.min(max)
}

/// Target thread `tid`, the current task, switches out at `now` (the time its switch-out's
/// record carries): blocked in a read of `blocked_reading` ([`NO_FD`]: not). Its block is noted in its conversation (see
/// `woken_by_its_bytes`), and its stretch left (see [`leave_stretch`]).
#[inline(always)]
pub fn switch_out_of_stretch(tid: u32, blocked_reading: u32, now: u64) {
    if !keeps_requests() {
        return;
    }
    if blocked_reading != NO_FD {
        // Counting this block (`__schedule()` counts a switch before sched_switch fires).
        note_blocked_reading(tid, blocked_reading, current_switches().all(), now);
    }
    let reader = (blocked_reading != NO_FD).then_some(BlockedReader {
        tid,
        fd: blocked_reading,
    });
    leave_stretch(now, reader);
}

/// This CPU goes idle (any task's switch to its idle task): the finished requests it
/// gathered go out, so that a quiet server's requests reach the live view at once; a busy
/// CPU's wait for their batch to fill, or for [`STRETCH_BATCH_MAX_WAIT_NS`].
#[inline(always)]
pub fn cpu_goes_idle() {
    if !keeps_requests() {
        return;
    }
    if let Some(batch) = STRETCH_DONE.get_ptr_mut(0) {
        // SAFETY: as in `gather`.
        send_done(unsafe { &mut *batch });
    }
}

/// A target thread that leaves its CPU blocked in a read of `fd`.
#[derive(Clone, Copy)]
pub struct BlockedReader {
    pub tid: u32,
    pub fd: u32,
}

/// A target thread leaves its CPU (switch-out or exit) at `now`: the requests its stretch
/// keeps are handed over, but for an answered one whose reader now blocks for the next
/// request (`blocked_reader`: `None` when preempted, yielding, blocked elsewhere or
/// exiting): that one is over, finished here. The finished requests
/// gathered on the CPU go out if the oldest has waited long enough; otherwise they wait for
/// their batch to fill (a thread per connection finishes one at each of its blocks), or for
/// the CPU to go idle ([`cpu_goes_idle`]).
#[inline(always)]
pub fn leave_stretch(now: u64, blocked_reader: Option<BlockedReader>) {
    if !keeps_requests() {
        return;
    }
    let Some(table) = STRETCH_TABLES.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in `serve`.
    let table = unsafe { &mut *table };
    table.arrived_tid = 0;
    let cpu = unsafe { bpf_get_smp_processor_id() };
    if let Some(reader) = blocked_reader.filter(|r| r.tid == table.owner_tid) {
        end_answered(table, cpu, reader.fd, now);
    }
    // Another target thread's stretch still listed here: its owner left this CPU unseen, so
    // its stretch is over too.
    if table.owner_tid != 0 {
        hand_over(table, cpu, now);
    }
    if let Some(batch) = STRETCH_DONE.get_ptr_mut(0) {
        // SAFETY: as in `gather`.
        let batch = unsafe { &mut *batch };
        if waited_long(batch, now) {
            send_done(batch);
        }
    }
}

/// Hand the requests the table's stretch still keeps to the collector, in one record, and
/// empty the table for the CPU's next stretch. A listed connection no longer kept here (taken
/// by another thread, closed, or its entry's memory now another connection's) is left out.
#[inline(always)]
fn hand_over(table: &mut StretchTable, cpu: u32, now: u64) {
    let len = (table.len as usize).min(STRETCH_SLOTS);
    let owner = table.owner_tid;
    table.len = 0;
    table.owner_tid = 0;
    table.unanswered = 0;
    if len == 0 {
        return;
    }
    let Some(record) = STRETCH_HANDOVERS.get_ptr_mut(0) else {
        return count_losses(Loss::MapFull, 2 * len as u64);
    };
    // SAFETY: this CPU's record, used only by programs that cannot interleave on it.
    let record = unsafe { &mut *record };
    // Each listed connection has its place in the record, whether kept or left out (a
    // `start_ns` of 0), so that every pass through the loop ends in the same state for the
    // verifier (a running count of the kept ones multiplied its paths past its limit: a
    // flag in the table says whether any was kept).
    table.any_handed = 0;
    for i in 0..STRETCH_SLOTS {
        if i >= len {
            break;
        }
        record.requests[i].start_ns = 0;
        let Some(tcp) = TCP_SOCKETS.get_ptr_mut(table.socks[i]) else {
            continue;
        };
        // SAFETY: a valid map value pointer.
        let tcp = unsafe { &mut *tcp };
        if tcp.keeper == request_keeper::STRETCH
            && tcp.stretch_tid == owner
            && tcp.stretch_cpu == cpu
        {
            tcp.keeper = request_keeper::COLLECTOR;
            record.requests[i] = tcp.handed_over();
            table.any_handed = 1;
        }
    }
    // None when every listed request was over (see `end_answered`).
    if table.any_handed != 0 {
        send_held(); // older records of this CPU first
        send_handover(record, owner, len, now);
    }
}

/// [`hand_over`] as a function of its own, for the socket programs: inlined there, its locals
/// overflowed the stack of their calls (512 bytes). (Inlined into `sched_switch`, whose load
/// it made twice as long as a function of its own.)
#[inline(never)]
fn hand_over_out_of_line(table: &mut StretchTable, cpu: u32, now: u64) {
    hand_over(table, cpu, now);
}

/// The table's owner blocks in a read of `fd`: when that is the connection whose request it
/// last started, kept here and answered, that request is over (its reader waits for the
/// next one), finished here rather than handed over.
#[inline(always)]
fn end_answered(table: &mut StretchTable, cpu: u32, fd: u32, now: u64) {
    let Some(tcp) = TCP_SOCKETS.get_ptr_mut(table.last_started) else {
        return;
    };
    // SAFETY: a valid map value pointer.
    let tcp = unsafe { &mut *tcp };
    if tcp.keeper != request_keeper::STRETCH
        || tcp.stretch_tid != table.owner_tid
        || tcp.stretch_cpu != cpu
        || tcp.fd != fd
        || tcp.last_write_ns == 0
    {
        return;
    }
    gather(tcp, now);
    tcp.keeper = request_keeper::NONE;
    tcp.answered = 0;
    if table.len == 1 {
        // It was the only connection listed (a thread per connection): nothing is left for
        // the handover, which need not look it up again.
        table.len = 0;
    }
}

/// Hand `tcp`'s kept request to the collector alone (another thread or CPU goes on with it).
#[inline(always)]
fn hand_over_one(tcp: &mut TcpSocket, now: u64) {
    note_departure(tcp);
    tcp.keeper = request_keeper::COLLECTOR;
    send_held(); // older records of this CPU first
    let Some(record) = STRETCH_HANDOVERS.get_ptr_mut(0) else {
        return count_losses(Loss::MapFull, 2);
    };
    // SAFETY: as in `hand_over`.
    let record = unsafe { &mut *record };
    record.requests[0] = tcp.handed_over();
    send_handover(record, tcp.stretch_tid, 1, now);
}

/// Send the first `count` requests of `record`, kept by thread `tid` (a record as long as
/// its requests).
#[inline(always)]
fn send_handover(record: &mut StretchHandover, tid: u32, count: usize, now: u64) {
    let count = count.min(STRETCH_SLOTS);
    if count == 0 {
        return;
    }
    record.hdr = EventHeader {
        ts_ns: now,
        kind: EventKind::StretchHandover as u32,
        tid,
    };
    record.count = count as u32;
    let bytes =
        head_bytes::<StretchHandover>(record, RECORD_HEAD + size_of::<StretchHandedOver>() * count);
    if EVENTS.output::<[u8]>(bytes, RING_FLAGS).is_err() {
        count_losses(Loss::RingFull, 2 * count as u64);
    }
}

/// A connection closed (`inet_sock_set_state` to CLOSE) with a request kept: over now. Called
/// on any CPU, often in softirq context, so its record goes straight to the ring.
#[inline(always)]
pub fn end_on_close(tcp: &TcpSocket, now: u64) {
    if tcp.keeper != request_keeper::STRETCH {
        return;
    }
    note_departure(tcp);
    let mut record = StretchRequestBatchOfOne {
        hdr: EventHeader {
            ts_ns: now,
            kind: EventKind::StretchRequestBatch as u32,
            tid: 0,
        },
        count: 1,
        _pad: 0,
        request: tcp.finished_request(now),
    };
    record.request.tid = tcp.stretch_tid;
    if emit(record).is_err() {
        count_losses(Loss::RingFull, 2);
    }
}

/// A [`StretchRequestBatch`] record of one request (as long as it).
#[repr(C)]
#[derive(Clone, Copy)]
struct StretchRequestBatchOfOne {
    hdr: EventHeader,
    count: u32,
    _pad: u32,
    request: StretchRequest,
}
