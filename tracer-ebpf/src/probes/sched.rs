//! Scheduler tracepoints: the per-thread timeline (running / runnable / blocked).

use aya_ebpf::{
    helpers::bpf_get_current_comm, macros::tracepoint, programs::TracePointContext,
    EbpfContext as _,
};
use tracer_common::{layout, EventKind, SwitchEvent, WakeupEvent, NO_SYSCALL};

use crate::maps::{current_ids, emit, header, target_tgid, IN_SYSCALL, TARGET_TIDS};

/// sched:sched_switch. The current task is `prev` (the tracepoint fires in `__schedule()`
/// before `context_switch()`, kernel/sched/core.c, Linux 6.18), so a target `prev` is
/// recognised by its tgid without a map lookup; `next` needs the thread-id set.
#[tracepoint]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    let _ = try_sched_switch(&ctx);
    0
}

fn try_sched_switch(ctx: &TracePointContext) -> Result<(), i64> {
    let (tgid, prev_tid) = current_ids();
    let prev_is_target = tgid == target_tgid() && prev_tid != 0;
    let next_pid: i32 = field(ctx, layout::SWITCH_NEXT_PID);
    let next_is_target = unsafe { TARGET_TIDS.get(next_pid as u32) }.is_some();
    if !prev_is_target && !next_is_target {
        return Ok(());
    }
    let mut event = SwitchEvent {
        hdr: header(EventKind::Switch, 0),
        next_tid: if next_is_target { next_pid as u32 } else { 0 },
        syscall_nr: NO_SYSCALL,
        cpu: unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() },
        ..Default::default()
    };
    if prev_is_target {
        event.hdr.tid = prev_tid;
        // `prev_state` is a `long` in the format file; only the low bits carry the state.
        let state: u64 = field(ctx, layout::SWITCH_PREV_STATE);
        event.prev_state = state as u32;
        if let Some(inside) = unsafe { IN_SYSCALL.get(prev_tid) } {
            event.syscall_nr = inside.nr; // NO_SYSCALL when its last syscall returned
            event.syscall_arg0 = inside.arg0;
        }
    }
    emit(event);
    Ok(())
}

/// sched:sched_wakeup and sched:sched_wakeup_new (same program, attached to both). The wakee
/// is often woken by another process or from interrupt context, so it is matched against the
/// thread-id set, and the waker is whatever task is current.
#[tracepoint]
pub fn sched_wakeup(ctx: TracePointContext) -> u32 {
    let _ = try_sched_wakeup(&ctx);
    0
}

fn try_sched_wakeup(ctx: &TracePointContext) -> Result<(), i64> {
    let pid: i32 = field(ctx, layout::WAKEUP_PID);
    if unsafe { TARGET_TIDS.get(pid as u32) }.is_none() {
        return Ok(());
    }
    let (waker_pid, waker_tid) = current_ids();
    emit(WakeupEvent {
        hdr: header(EventKind::Wakeup, pid as u32),
        waker_tid,
        waker_pid,
        waker_comm: bpf_get_current_comm().unwrap_or_default(),
    });
    Ok(())
}

/// Read a tracepoint field with a direct context load. `OFFSET` must be one of the
/// [`layout`] constants, which the collector checks against tracefs before loading.
#[inline(always)]
pub fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: the offset lies inside the event record (checked against the format file), and
    // the verifier checks every context access.
    unsafe { *(ctx.as_ptr().add(offset) as *const T) }
}
