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

use aya_ebpf::{macros::map, maps::PerCpuArray};
use tracer_common::{EventKind, Loss, SyscallEvent, SyscallPairEvent};

use crate::maps::{count_loss, emit, global};

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
    release_held_read();
    if global(&HOLD_READS) == 0 {
        return emit(read);
    }
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
    // SAFETY: as in `release_held_read`.
    let mut read = unsafe {
        (*slot).held = 0;
        (*slot).read
    };
    read.hdr.kind = EventKind::SyscallPair as u32;
    emit(SyscallPairEvent { read, write }).inspect_err(|&loss| {
        count_loss(loss); // two events in one lost record: the read's loss, then the write's
    })
}
