//! Thread lifecycle: keeps `TARGET_TIDS` equal to the target's live threads.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use tracer_common::{EventKind, Loss, ThreadEvent};

use super::sched::switches_followed;
use crate::conversation::forget_conversation;
use crate::held_read::{release_held_read, send_held};
use crate::maps::{
    current_comm, current_target_tid, emit, finish, header, now_ns, set_target_tid, task_pid,
    WAKERS,
};
use crate::stretch::leave_stretch;

/// include/uapi/linux/sched.h
const CLONE_THREAD: u64 = 0x0001_0000;

/// task:task_newtask, as a raw tracepoint: `TP_PROTO(struct task_struct *task, u64
/// clone_flags)` (include/trace/events/task.h, Linux 6.18). It fires in `copy_process()` with
/// the parent as the current task, once the child has its pid and before it can run
/// (kernel/fork.c), so the new thread is in the set before its first sched_wakeup_new. A raw
/// tracepoint needs no tracefs, and leaves the tracepoint's perf events to other tools.
#[raw_tracepoint(tracepoint = "task_newtask")]
pub fn task_newtask(ctx: RawTracePointContext) -> u32 {
    finish(try_task_newtask(&ctx))
}

fn try_task_newtask(ctx: &RawTracePointContext) -> Result<(), Loss> {
    let task = ctx.arg::<u64>(0);
    let flags = ctx.arg::<u64>(1);
    if current_target_tid().is_none() {
        return Ok(());
    }
    if flags & CLONE_THREAD == 0 {
        return Ok(()); // a child process, not one of the target's threads
    }
    let tid = task_pid(task)?;
    // A reused tid must not inherit a waker its previous owner left behind (usually there is
    // none to remove, which is no failure).
    let _ = WAKERS.remove(tid);
    set_target_tid(tid, true)?;
    if !switches_followed(tid) {
        // Connections sampled: a thread is followed from its first read or write of a picked
        // connection, and the collector first sees it then.
        return Ok(());
    }
    // The parent's held read goes before this record. The collector needs only the tid: a
    // header alone, no name to copy.
    release_held_read();
    emit(header(EventKind::ThreadNew, tid))
}

/// sched:sched_process_exit, as a raw tracepoint (`TP_PROTO(struct task_struct *p, bool
/// group_dead)`, include/trace/events/sched.h, Linux 6.18): fires in `do_exit()` for every
/// exiting thread, with `p` the current task.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> u32 {
    finish(try_sched_process_exit())
}

fn try_sched_process_exit() -> Result<(), Loss> {
    let Some(tid) = current_target_tid() else {
        return Ok(());
    };
    // A missing entry is no failure: a thread that never moved socket bytes or was never woken
    // since the tracer attached has none.
    let _ = set_target_tid(tid, false);
    forget_conversation(tid);
    let _ = WAKERS.remove(tid);
    leave_stretch(now_ns(), None); // an exiting thread blocks in no read
    send_held();
    emit(ThreadEvent {
        hdr: header(EventKind::ThreadExit, tid),
        comm: current_comm()?,
    })
}
