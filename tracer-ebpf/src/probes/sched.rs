//! Scheduler tracepoints: the per-thread timeline (running / runnable / blocked).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext, EbpfContext as _};
use tracer_common::{
    layout, waker_context, EventKind, Loss, SwitchEvent, WakerId, WakeupEvent, NO_STACK,
    NO_SYSCALL, PREEMPT_STATE_BIT,
};

use super::interrupts::{forget_interrupts, innermost_interrupt};
use crate::maps::{
    cpu_steal_ns, current_comm, current_ids, current_syscall_regs, current_target_tid, emit,
    finish, header, is_target_tid, set, user_stack_id, CONVERSATIONS, WAKERS,
};

/// sched:sched_switch. The current task is `prev` (the tracepoint fires in `__schedule()`
/// before `context_switch()`, kernel/sched/core.c, Linux 6.18), so a target `prev` is
/// recognised by its tgid without a map lookup; `next` needs the thread-id set.
#[tracepoint]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    finish(try_sched_switch(&ctx))
}

fn try_sched_switch(ctx: &TracePointContext) -> Result<(), Loss> {
    forget_interrupts()?;
    let prev_tid = current_target_tid().filter(|&tid| tid != 0);
    let next_pid: i32 = field(ctx, layout::SWITCH_NEXT_PID);
    let next_is_target = is_target_tid(next_pid as u32);
    if prev_tid.is_none() && !next_is_target {
        return Ok(());
    }
    let mut event = SwitchEvent {
        hdr: header(EventKind::Switch, 0),
        next_tid: if next_is_target { next_pid as u32 } else { 0 },
        syscall_nr: NO_SYSCALL,
        stack_id: NO_STACK,
        cpu_steal_ns: cpu_steal_ns(),
        ..Default::default()
    };
    if let Some(prev_tid) = prev_tid {
        event.hdr.tid = prev_tid;
        // `prev_state` is a `long` in the format file; only the low bits carry the state.
        let state: u64 = field(ctx, layout::SWITCH_PREV_STATE);
        event.prev_state = state as u32;
        let blocked = event.prev_state != 0 && event.prev_state < PREEMPT_STATE_BIT;
        if !blocked {
            return emit(event); // preempted or yielding: runnable, whatever it was doing
        }
        // `prev` is current: the syscall it blocks in is in the user registers it entered
        // the kernel with (unreadable ones name none: a block outside a syscall).
        if let Ok(regs) = current_syscall_regs() {
            if let Some(syscall_nr) = regs.syscall() {
                event.syscall_nr = syscall_nr;
                event.syscall_arg0 = regs.di;
            }
        }
        // Blocked inside a request: where, in its own code. A thread waiting for its next
        // request takes none (most blocks of a busy server, and no request's time).
        let between_requests = unsafe { CONVERSATIONS.get(prev_tid) }
            .is_some_and(|c| c.between_requests(event.syscall_nr, event.syscall_arg0 as u32));
        if !between_requests {
            event.stack_id = user_stack_id(ctx);
        }
    }
    emit(event)
}

/// sched:sched_waking fires in `try_to_wake_up()` on the waker's CPU, in the waker's context
/// (kernel/sched/core.c, Linux 6.18). sched_wakeup cannot name the waker: with TTWU_QUEUE
/// (on by default) it often runs on the wakee's CPU from the wakelist IPI or the idle loop,
/// where `current` is swapper or an unrelated task. So the waker is noted here, per wakee,
/// and sched_wakeup, which marks the moment the wakee became runnable, reports it.
#[tracepoint]
pub fn sched_waking(ctx: TracePointContext) -> u32 {
    finish(try_sched_waking(&ctx))
}

fn try_sched_waking(ctx: &TracePointContext) -> Result<(), Loss> {
    let Some(pid) = target_wakee(ctx) else {
        return Ok(());
    };
    // In place when the wakee has an entry (every wakeup after its first).
    set(&WAKERS, pid, current_waker()?)
}

/// sched:sched_wakeup: the wakee (often woken by another process or from an interrupt) is
/// matched against the thread-id set; the waker is the one sched_waking noted.
#[tracepoint]
pub fn sched_wakeup(ctx: TracePointContext) -> u32 {
    finish(try_sched_wakeup(&ctx))
}

fn try_sched_wakeup(ctx: &TracePointContext) -> Result<(), Loss> {
    let Some(pid) = target_wakee(ctx) else {
        return Ok(());
    };
    let waker = match WAKERS.get_ptr_mut(pid) {
        Some(noted) => unsafe {
            let waker = *noted;
            // Used once: a later wakeup whose sched_waking was missed must not reuse it.
            (*noted).context = waker_context::UNKNOWN;
            waker
        },
        // Not a loss here: its sched_waking ran before the tracer attached, was skipped (the
        // kernel counts those runs), or found the map full (counted there).
        None => WakerId {
            context: waker_context::UNKNOWN,
            ..Default::default()
        },
    };
    emit_wakeup(pid, waker)
}

/// sched:sched_wakeup_new: a new thread's first wakeup, in `wake_up_new_task()`, called by
/// its creator in `clone()`: the current task is the waker.
#[tracepoint]
pub fn sched_wakeup_new(ctx: TracePointContext) -> u32 {
    finish(try_sched_wakeup_new(&ctx))
}

fn try_sched_wakeup_new(ctx: &TracePointContext) -> Result<(), Loss> {
    let Some(pid) = target_wakee(ctx) else {
        return Ok(());
    };
    emit_wakeup(pid, current_waker()?)
}

#[inline(always)]
fn emit_wakeup(pid: u32, waker: WakerId) -> Result<(), Loss> {
    emit(WakeupEvent {
        hdr: header(EventKind::Wakeup, pid),
        waker,
    })
}

/// The woken task of sched_waking, sched_wakeup or sched_wakeup_new, when it is one of the
/// target's threads.
#[inline(always)]
fn target_wakee(ctx: &TracePointContext) -> Option<u32> {
    let pid: i32 = field(ctx, layout::WAKEUP_PID);
    is_target_tid(pid as u32).then_some(pid as u32)
}

/// The current task, or the interrupt this CPU is in (see `probes::interrupts`).
#[inline(always)]
fn current_waker() -> Result<WakerId, Loss> {
    if let Some(level) = innermost_interrupt()? {
        return Ok(WakerId {
            context: level.context,
            detail: level.detail,
            ..Default::default()
        });
    }
    let (pid, tid) = current_ids();
    Ok(WakerId {
        tid,
        pid,
        context: waker_context::TASK,
        detail: 0,
        comm: current_comm()?,
    })
}

/// Read a tracepoint field with a direct context load. `OFFSET` must be one of the
/// [`layout`] constants, which the collector checks against tracefs before loading.
#[inline(always)]
pub fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: the offset lies inside the event record (checked against the format file), and
    // the verifier checks every context access.
    unsafe { *(ctx.as_ptr().add(offset) as *const T) }
}
