//! One record per request and response instead of two: a target thread's socket read is held
//! back on its CPU, and the socket write that follows it on the same thread goes out with it as
//! one [`SyscallPairEvent`] (a request-response server reads a request and writes its response:
//! one ring record and one decode instead of two).
//!
//! The read is held in a per-CPU slot and sent, alone or paired, by the next of these on its
//! CPU: a socket read or write of a target thread, a target thread's switch-out or exit, or its
//! new thread. The thread that read is the CPU's current task until its switch-out, so a held
//! read never outlives its thread's time on the CPU. Its record then reaches the ring later
//! than the records other programs emitted meanwhile (wakeups, TLS and Go uprobes, which
//! cannot take part: see below); the collector's reorder window puts it back in timestamp
//! order unless the thread ran longer than the window with no socket I/O.
//!
//! Only programs that cannot interleave on a CPU use the slot: tracepoint programs, which run
//! with preemption disabled and are never run from an interrupt here (socket I/O and thread
//! life in task context, `sched_switch` with interrupts off). Uprobe programs may be
//! preempted and `sched_wakeup` runs from interrupts, so they never touch it. Go targets whose
//! goroutines are followed do not hold reads at all (`HOLD_READS` 0): which goroutine a read
//! belongs to depends on its exact place among the Go scheduler's uprobe records.
//!
//! A read still held when the tracer stops is a request with no response yet: an incomplete
//! request, which is not reported anyway.
//!
//! The pairs themselves are gathered on their CPU too, [`PAIR_BATCH`] to a record
//! ([`SyscallPairBatch`]): on this VM a ring record cost a saturated nginx about 3% of its
//! throughput, more than the collector's work for it. A batch goes out when it is full, when
//! its oldest pair has waited [`PAIR_BATCH_MAX_WAIT_NS`] (checked at each socket read or write
//! on the CPU), and when a target thread leaves the CPU (switch-out, exit), so no pair waits
//! longer than its thread stays on the CPU, as with a held read. A thread-per-connection
//! server, which blocks between requests, sends each pair alone as before. What is gathered
//! when the tracer detaches is read from the map by the collector.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use tracer_common::{
    EventKind, Loss, SyscallEvent, SyscallPairBatch, SyscallPairEvent, PAIR_BATCH,
};

use crate::maps::{count_loss, count_losses, emit, global, EVENTS, RING_FLAGS};

/// How long a gathered pair may wait for its batch to fill: well inside the collector's
/// reorder window (5 ms), so the batch is never too late to be put in order.
const PAIR_BATCH_MAX_WAIT_NS: u64 = 1_000_000;

/// 1: hold socket reads (set by the collector at load time).
#[unsafe(no_mangle)]
static HOLD_READS: u32 = 0;

/// The read held on a CPU (`held` 0: none).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HeldRead {
    held: u64,
    read: SyscallEvent,
}

#[map]
static HELD_READ: PerCpuArray<HeldRead> = PerCpuArray::with_max_entries(1, 0);

/// The pairs gathered on a CPU (read by the collector once detached).
#[map]
static PAIR_BATCHES: PerCpuArray<SyscallPairBatch> = PerCpuArray::with_max_entries(1, 0);

/// A target thread leaves the CPU (or is created): everything held on it goes out, the
/// gathered pairs, then the held read.
#[inline(always)]
pub fn send_held() {
    send_pairs();
    release_held_read();
}

/// Send the pairs gathered on this CPU, if any; their loss is counted here (two events each).
#[inline(always)]
fn send_pairs() {
    let Some(batch) = PAIR_BATCHES.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, used only by programs that cannot interleave on it (see the
    // module's documentation).
    unsafe {
        let count = (*batch).count;
        if count == 0 {
            return;
        }
        let sent = if count == 1 {
            EVENTS
                .output::<SyscallPairEvent>(&(*batch).pairs[0], RING_FLAGS)
                .map_err(|_| Loss::RingFull)
        } else {
            EVENTS
                .output::<SyscallPairBatch>(&*batch, RING_FLAGS)
                .map_err(|_| Loss::RingFull)
        };
        (*batch).count = 0;
        if let Err(loss) = sent {
            count_losses(loss, 2 * u64::from(count));
        }
    }
}

/// Gather `read` and the `write` that followed it on this CPU, as a pair, written straight
/// into the batch (a pair on the stack would not fit beside the socket program's own); the
/// batch goes out when full or when its oldest pair has waited long enough.
#[inline(always)]
fn gather_pair(read: &SyscallEvent, write: &SyscallEvent) -> Result<(), Loss> {
    let Some(batch) = PAIR_BATCHES.get_ptr_mut(0) else {
        // Never (a per-CPU array's slot 0): the two go out alone, the write's loss is the
        // caller's to count.
        if let Err(loss) = emit(*read) {
            count_loss(loss);
        }
        return emit(*write);
    };
    // SAFETY: as in `send_pairs`.
    let full = unsafe {
        let count = (*batch).count as usize;
        if count == 0 {
            (*batch).hdr.ts_ns = read.hdr.ts_ns;
            (*batch).hdr.kind = EventKind::SyscallPairBatch as u32;
            (*batch).hdr.tid = 0;
        }
        // The mask keeps the verifier's bound; a full batch has always been sent already.
        let pair = &mut (*batch).pairs[count & (PAIR_BATCH - 1)];
        pair.read = *read;
        pair.read.hdr.kind = EventKind::SyscallPair as u32;
        pair.write = *write;
        (*batch).count = count as u32 + 1;
        count + 1 >= PAIR_BATCH
    };
    if full {
        send_pairs();
    } else {
        send_pairs_waiting_since(write.hdr.ts_ns);
    }
    Ok(())
}

/// Send the gathered pairs if the oldest has waited too long at `now`.
#[inline(always)]
pub fn send_pairs_waiting_since(now: u64) {
    let Some(batch) = PAIR_BATCHES.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in `send_pairs`.
    let stale = unsafe {
        (*batch).count != 0
            && now.saturating_sub((*batch).pairs[0].write.hdr.ts_ns) > PAIR_BATCH_MAX_WAIT_NS
    };
    if stale {
        send_pairs();
    }
}

/// A read or write at `now` that the kernel side kept (`stretch.rs`: no record): a read
/// held since before a gathered pair may wait goes out, with the pairs gathered before it.
/// Otherwise a thread serving only kept requests after it (a reader that hands requests to
/// a pool of writers, on new connections) would hold it past the collector's reorder
/// window, and a writer's response to it would reach the collector first. (A BPF function
/// of its own: its copy of the read on the stack must not add to the socket program's.)
#[inline(never)]
pub fn release_read_held_since_before(now: u64) {
    let Some(slot) = HELD_READ.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in `release_held_read`.
    let stale = unsafe {
        (*slot).held != 0 && now.saturating_sub((*slot).read.hdr.ts_ns) > PAIR_BATCH_MAX_WAIT_NS
    };
    if stale {
        send_held();
    }
}

/// Send the read held on this CPU, if any. Its loss is counted here: the caller's own record
/// goes on.
#[inline(always)]
pub fn release_held_read() {
    let Some(slot) = HELD_READ.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a valid pointer to this CPU's slot, used only by programs that cannot
    // interleave on it (see the module's documentation).
    unsafe {
        if (*slot).held == 0 {
            return;
        }
        (*slot).held = 0;
        if let Err(loss) = emit((*slot).read) {
            count_loss(loss);
        }
    }
}

/// Send the current thread's socket read, or hold it until its thread's next record.
#[inline(always)]
pub fn send_read(read: SyscallEvent) -> Result<(), Loss> {
    if global(&HOLD_READS) == 0 {
        return emit(read); // nothing is ever held or gathered: no slot to look at
    }
    release_held_read();
    send_pairs_waiting_since(read.hdr.ts_ns);
    let Some(slot) = HELD_READ.get_ptr_mut(0) else {
        return emit(read);
    };
    // SAFETY: as in `release_held_read`.
    unsafe {
        (*slot).read = read;
        (*slot).held = 1;
    }
    Ok(())
}

/// Send the current thread's socket write, with the read it holds on this CPU if any.
#[inline(always)]
pub fn send_write(write: SyscallEvent) -> Result<(), Loss> {
    if global(&HOLD_READS) == 0 {
        return emit(write); // no read is held to pair it with
    }
    let Some(slot) = HELD_READ.get_ptr_mut(0) else {
        return emit(write);
    };
    // SAFETY: as in `release_held_read`.
    let paired = unsafe { (*slot).held != 0 && (*slot).read.hdr.tid == write.hdr.tid };
    if !paired {
        // None held, or another thread's, left by a switch-out whose program failed before
        // its record: that one goes out alone first.
        release_held_read();
        return emit(write);
    }
    // SAFETY: as in `release_held_read`; the slot's read stays there until the next one.
    let read = unsafe {
        (*slot).held = 0;
        &(*slot).read
    };
    gather_pair(read, &write)
}
