//! Thread lifecycle: keeps `TARGET_TIDS` equal to the target's live threads.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext, EbpfContext as _};
use tracer_common::{layout, EventKind, Loss, ThreadEvent};

use crate::held_read::release_held_read;
use crate::maps::{
    current_comm, current_target_tid, emit, finish, header, set_target_tid, CONVERSATIONS, WAKERS,
};

/// include/uapi/linux/sched.h
const CLONE_THREAD: u64 = 0x0001_0000;

/// task:task_newtask fires in `copy_process()` with the parent as the current task, before
/// the child can run (kernel/fork.c, Linux 6.18), so the new thread is in the set before its
/// first sched_wakeup_new.
#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    finish(try_task_newtask(&ctx))
}

fn try_task_newtask(ctx: &TracePointContext) -> Result<(), Loss> {
    if current_target_tid().is_none() {
        return Ok(());
    }
    let flags: u64 = field(ctx, layout::NEWTASK_CLONE_FLAGS);
    if flags & CLONE_THREAD == 0 {
        return Ok(()); // a child process, not one of the target's threads
    }
    let tid = field::<i32>(ctx, layout::NEWTASK_PID) as u32;
    // A reused tid must not inherit a waker its previous owner left behind (usually there is
    // none to remove, which is no failure).
    let _ = WAKERS.remove(tid);
    set_target_tid(tid, true)?;
    release_held_read(); // the parent's, before this record
                         // The collector needs only the tid: a header alone, no name to copy.
    emit(header(EventKind::ThreadNew, tid))
}

/// sched:sched_process_exit fires in `do_exit()` for every exiting thread, as the current task.
#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    finish(try_sched_process_exit())
}

fn try_sched_process_exit() -> Result<(), Loss> {
    let Some(tid) = current_target_tid() else {
        return Ok(());
    };
    // A missing entry is no failure: a thread that never moved socket bytes or was never woken
    // since the tracer attached has none.
    let _ = set_target_tid(tid, false);
    let _ = CONVERSATIONS.remove(tid);
    let _ = WAKERS.remove(tid);
    release_held_read();
    emit(ThreadEvent {
        hdr: header(EventKind::ThreadExit, tid),
        comm: current_comm()?,
    })
}

/// Read a tracepoint field with a direct context load. `OFFSET` must be one of the
/// [`layout`] constants, which the collector checks against tracefs before loading.
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: the offset lies inside the event record (checked against the format file), and
    // the verifier checks every context access.
    unsafe { *(ctx.as_ptr().add(offset) as *const T) }
}
