//! Thread lifecycle: keeps `TARGET_TIDS` equal to the target's live threads.

use aya_ebpf::{
    bindings::BPF_ANY, helpers::bpf_get_current_comm, macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{layout, EventKind, Loss, ThreadEvent};

use super::sched::field;
use crate::maps::{
    count_loss, current_ids, emit, header, target_tgid, IN_SYSCALL, TARGET_TIDS, WAKERS,
};

/// include/uapi/linux/sched.h
const CLONE_THREAD: u64 = 0x0001_0000;

/// task:task_newtask fires in `copy_process()` with the parent as the current task, before
/// the child can run (kernel/fork.c, Linux 6.18), so the new thread is in the set before its
/// first sched_wakeup_new.
#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let _ = try_task_newtask(&ctx);
    0
}

fn try_task_newtask(ctx: &TracePointContext) -> Result<(), i64> {
    let (tgid, _) = current_ids();
    if tgid != target_tgid() {
        return Ok(());
    }
    let flags: u64 = field(ctx, layout::NEWTASK_CLONE_FLAGS);
    if flags & CLONE_THREAD == 0 {
        return Ok(()); // a child process, not one of the target's threads
    }
    let pid: i32 = field(ctx, layout::NEWTASK_PID);
    if TARGET_TIDS
        .insert(pid as u32, 1, u64::from(BPF_ANY))
        .is_err()
    {
        count_loss(Loss::MapFull);
    }
    // A reused tid must not inherit a waker its previous owner left behind.
    let _ = WAKERS.remove(pid as u32);
    // The collector needs only the tid: a header alone, no name to copy.
    emit(header(EventKind::ThreadNew, pid as u32));
    Ok(())
}

/// sched:sched_process_exit fires in `do_exit()` for every exiting thread, as the current task.
#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    if tgid != target_tgid() {
        return 0;
    }
    let _ = TARGET_TIDS.remove(tid);
    let _ = IN_SYSCALL.remove(tid);
    let _ = WAKERS.remove(tid);
    emit(ThreadEvent {
        hdr: header(EventKind::ThreadExit, tid),
        comm: bpf_get_current_comm().unwrap_or_default(),
    });
    0
}
