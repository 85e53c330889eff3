//! Scheduler tracepoints: the per-thread timeline (running / runnable / blocked).

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext, EbpfContext as _};
use tracer_common::{
    futex_op_waits, is_read, nr, switch_state_as_reported, waker_context, EventHeader, EventKind,
    Loss, PendingWakeup, SwitchEvent, WakerId, WakeupEvent, NO_FD, NO_STACK, NO_SYSCALL,
    PREEMPT_STATE_BIT, TASK_DEAD,
};

use super::go_sched::goroutines_followed;
use super::interrupts::{forget_interrupts, innermost_interrupt};
use crate::conversation::{
    goroutine_in_request, has_conversation, store_running_conversation, stored_conversation,
};
use crate::held_read::send_held;
use crate::maps::{
    count_loss, cpu_steal_ns, current_comm, current_exit_state, current_ids, current_on_cpu_for_ns,
    current_run_delay_ns, current_syscall_regs, current_target_tid, current_user_g, emit, finish,
    fired_on_task_stack, header, insert, is_target_tid, native_sites, now_ns,
    run_delay_through_now_ns, sample_one_in, target_tgid, task_pid, user_stack_id, ON_CPU, WAKERS,
};
use crate::stretch::{cpu_goes_idle, note_arrival, switch_out_of_stretch};

/// sched:sched_switch, as a raw tracepoint: `TP_PROTO(bool preempt, struct task_struct *prev,
/// struct task_struct *next, unsigned int prev_state)` (include/trace/events/sched.h, Linux
/// 5.18+). A raw tracepoint costs less than the perf-event tracepoint (no trace record is
/// built before the program runs), and leaves that tracepoint to other tools: a tracepoint
/// program returning 0 would drop their samples too. The current task is `prev` (it fires
/// in `__schedule()` before `context_switch()`, kernel/sched/core.c, Linux 6.18), so a
/// target `prev` is recognised by its tgid without a map lookup; `next` needs the thread-id
/// set.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch(ctx: RawTracePointContext) -> u32 {
    finish(try_sched_switch(&ctx))
}

fn try_sched_switch(ctx: &RawTracePointContext) -> Result<(), Loss> {
    forget_interrupts()?;
    // The arguments first, into locals: the verifier must not see a context load merged
    // with a map value's.
    let preempt = ctx.arg::<u64>(0) as u8 != 0;
    let next = ctx.arg::<u64>(2);
    let prev_state = ctx.arg::<u64>(3) as u32;
    let prev_tid = current_target_tid().filter(|&tid| tid != 0 && switches_followed(tid));
    // A target thread going to sleep: the syscall it blocks in, read once, for its stretch
    // and for its record.
    let blocked_in = match prev_tid {
        Some(_) if !preempt && prev_state != 0 => blocked_syscall(),
        _ => BlockedIn::NONE,
    };
    // One clock read for a target's switch-out: its record and the stretch it ends agree on
    // when the thread left (a switch-in alone reads it below, past the filter).
    let switched_out_at = prev_tid.map(|_| now_ns());
    // Before this switch-out's record, and whatever fails below: the gathered pairs and the
    // held read go out, and the thread's conversation back to its map (it may next run on
    // another CPU).
    let running_conversation = prev_tid.and_then(|tid| {
        // A switch-in the kernel did not report goes first: the records below may be older
        // than the reorder window, and replay the thread's time since that switch-in. It is
        // placed no later than this switch's own record, whose time was read before it.
        let switched_out_at = switched_out_at.unwrap_or(0);
        report_unseen_switch_in(tid, switched_out_at);
        switch_out_of_stretch(tid, blocked_in.read_fd(), switched_out_at);
        send_held();
        store_running_conversation(tid)
    });
    let next_pid = task_pid(next)?;
    if next_pid == 0 {
        cpu_goes_idle();
    }
    let next_is_target = is_target_tid(next_pid) && switches_followed(next_pid);
    if prev_tid.is_none() && !next_is_target {
        return Ok(());
    }
    // (A target `prev`'s unseen switch-in was reported above.)
    if let Some(on_cpu) = ON_CPU.get_ptr_mut(0) {
        // SAFETY: this CPU's own entry; programs on a CPU do not nest into this update.
        unsafe { *on_cpu = if next_is_target { next_pid } else { 0 } };
    }
    let mut event = SwitchEvent {
        hdr: EventHeader {
            ts_ns: switched_out_at.unwrap_or_else(now_ns),
            kind: EventKind::Switch as u32,
            tid: 0,
        },
        next_tid: if next_is_target { next_pid } else { 0 },
        syscall_nr: NO_SYSCALL,
        stack_id: NO_STACK,
        cpu_steal_ns: cpu_steal_ns(),
        ..Default::default()
    };
    if next_is_target {
        match take_wakeup(next_pid) {
            Some(woken) => {
                event.woken_at_ns = woken.runnable_at_ns;
                event.waker = woken.waker;
            }
            // Rarely (about one switch-in in a few thousand after a `nanosleep` on this VM,
            // both cores busy) a blocked thread's wakeup was not seen, though no program run
            // was skipped and nothing was lost; or it was preempted, with no wakeup. Its
            // total wait for a CPU: against the total it blocked with (its switch-out's),
            // the collector finds how long it waited since its wakeup. Without this, that
            // wait would count as the cause it blocked on.
            None => event.next_run_delay_ns = run_delay_through_now_ns(next),
        }
        note_arrival(next_pid, event.woken_at_ns, event.hdr.ts_ns);
    }
    if let Some(prev_tid) = prev_tid {
        event.hdr.tid = prev_tid;
        let exit_state = if !preempt && prev_state & TASK_DEAD != 0 {
            current_exit_state()?
        } else {
            0 // no difference to the state reported, and one read fewer on most switches
        };
        event.prev_state = switch_state_as_reported(preempt, prev_state, exit_state);
        let blocked = event.prev_state != 0 && event.prev_state < PREEMPT_STATE_BIT;
        if !blocked {
            // Preempted (or yielding) inside a request it read: where its code was, for the
            // wait in the run queue that follows (user registers: the interrupted
            // instruction, or the syscall it was in). A preemption on the way back to user
            // space, the usual one, is a plain `schedule()` of a running task (`preempt`
            // false, state 0); only a preemption inside the kernel passes `preempt`. Not for
            // a thread that read no request (a Go runtime's threads yield in their scheduler
            // all the time), nor between requests, nor where goroutines are followed.
            if native_sites()
                && running_conversation
                    .or_else(|| stored_conversation(prev_tid))
                    .is_some_and(|c| c.in_request())
            {
                event.stack_id = user_stack_id(ctx);
            }
            return emit(event); // runnable, whatever it was doing
        }
        // Its total wait for a CPU so far: should the switch-in that ends this block go
        // unreported, with its wakeup, the difference tells how long it waited for its CPU.
        event.run_delay_ns = current_run_delay_ns();
        event.syscall_nr = blocked_in.syscall_nr;
        event.syscall_arg0 = blocked_in.arg0;
        // Blocked inside a request: where, in its own code. A thread waiting for its next
        // request takes none (most blocks of a busy server, and no request's time).
        // (The map is looked up only here, for a block: most switch-outs are not.)
        // In a Go target, the goroutine the thread blocked for: the one whose `g` its
        // syscall entered the kernel with (the runtime's own blocks, on g0, serve none).
        let between_requests = if goroutines_followed() {
            current_user_g().is_ok_and(|g| !goroutine_in_request(g))
        } else {
            // (No conversation: a pool's worker, whose blocks may be inside a request
            // another thread read. With connections sampled, such a thread's switches are
            // not reported at all: see `switches_followed`.)
            running_conversation
                .or_else(|| stored_conversation(prev_tid))
                .is_some_and(|c| c.between_requests(event.syscall_nr, event.syscall_arg0 as u32))
        };
        if !between_requests {
            event.stack_id = user_stack_id(ctx);
            if event.stack_id != NO_STACK && event.syscall_nr == nr::FUTEX {
                want_unlocker(prev_tid);
            }
        }
    }
    emit(event)
}

/// Whether target thread `tid`'s switches are reported. Always, unless connections are
/// sampled (`--sample N`): then only once it has read or written a picked connection's
/// bytes (it has a conversation). The others (threads of connections that were not picked,
/// a pool's workers) serve no reported request: their switches go unreported, and so does
/// their switch-in (the CPU's `ON_CPU` says no target thread), so that a thread's first read
/// of a picked connection reports its switch-in then (`report_unseen_switch_in`), and its
/// timeline starts there. A thread-per-connection server switches at every request: without
/// this, sampling would save little there.
#[inline(always)]
pub(crate) fn switches_followed(tid: u32) -> bool {
    sample_one_in() <= 1 || has_conversation(tid)
}

/// Target thread `tid` blocks on a futex inside a request, and its site was taken: the
/// target thread that wakes it is to take its own stack (see [`unlocker_stack_id`]). Only
/// with `NATIVE_SITES`; a full map leaves the unlocker unnamed.
#[inline(always)]
fn want_unlocker(tid: u32) {
    if !native_sites() {
        return;
    }
    match WAKERS.get_ptr_mut(tid) {
        // SAFETY: a valid map value pointer; the wakee's wakeup runs after this switch-out.
        Some(pending) => unsafe { (*pending).unlocker_wanted = 1 },
        None => {
            let pending = PendingWakeup {
                waker: WakerId {
                    context: waker_context::UNKNOWN,
                    ..Default::default()
                },
                runnable_at_ns: 0,
                unlocker_wanted: 1,
                _pad: 0,
            };
            let _ = insert(&WAKERS, tid, pending);
        }
    }
}

/// Target thread `tid`, the current task, runs on this CPU: if the tracer did not see it
/// switched in here, reports that switch-in now, placed where the scheduler's clock says it
/// got the CPU, with the wakeup it carried. The kernel sometimes fires no sched_switch for
/// a switch: on this project's VM, each switch away from one task of PID 1 (a nice -10
/// tokio worker, about once a second) goes unreported, and `perf` misses it too. Without
/// this, the thread's time from its wakeup to its first event would stay in the cause it
/// blocked on. Called by its switch-out and by its socket reads and writes, with the time of
/// the record the caller sends next (`not_after`): the switch-in is placed no later, so the
/// collector replays it first.
#[inline(always)]
pub fn report_unseen_switch_in(tid: u32, not_after: u64) {
    let Some(on_cpu) = ON_CPU.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's own entry; programs on a CPU do not nest into this update.
    unsafe {
        if *on_cpu == tid {
            return;
        }
        *on_cpu = tid;
    }
    if let Err(loss) = emit_unseen_switch_in(tid, not_after) {
        count_loss(loss);
    }
}

#[inline(always)]
fn emit_unseen_switch_in(tid: u32, not_after: u64) -> Result<(), Loss> {
    let mut event = SwitchEvent {
        hdr: header(EventKind::Switch, 0),
        next_tid: tid,
        syscall_nr: NO_SYSCALL,
        stack_id: NO_STACK,
        ..Default::default()
    };
    // The scheduler's clock may be a tick stale here, which places the switch-in too late:
    // after the socket read that reports it, that read would be replayed while the thread
    // still waited (its wait for a CPU counted in the cause it had blocked on).
    let mut at = event
        .hdr
        .ts_ns
        .saturating_sub(current_on_cpu_for_ns())
        .min(not_after);
    if let Some(woken) = take_wakeup(tid) {
        // Never before the wakeup it carries (the scheduler's clock may lag by a tick).
        at = at.max(woken.runnable_at_ns);
        event.woken_at_ns = woken.runnable_at_ns;
        event.waker = woken.waker;
    } else {
        // Its wakeup went unreported too (seen on this VM with the switch-in): the kernel's
        // own total of its waits for a CPU, the wait that just ended included.
        event.next_run_delay_ns = current_run_delay_ns();
    }
    event.hdr.ts_ns = at;
    note_arrival(tid, event.woken_at_ns, at);
    emit(event)
}

/// The syscall a thread blocks in, and its first argument.
#[derive(Clone, Copy)]
struct BlockedIn {
    /// [`NO_SYSCALL`]: none (not blocked, or its registers unreadable).
    syscall_nr: u32,
    arg0: u64,
}

impl BlockedIn {
    const NONE: BlockedIn = BlockedIn {
        syscall_nr: NO_SYSCALL,
        arg0: 0,
    };

    /// The fd it reads ([`NO_FD`]: not a read).
    #[inline(always)]
    fn read_fd(&self) -> u32 {
        if is_read(self.syscall_nr) {
            self.arg0 as u32
        } else {
            NO_FD
        }
    }
}

/// The syscall the current task blocks in, from the user registers it entered the kernel
/// with (unreadable ones name none: a block outside a syscall).
#[inline(always)]
fn blocked_syscall() -> BlockedIn {
    match current_syscall_regs() {
        Ok(regs) => match regs.syscall() {
            Some(syscall_nr) => BlockedIn {
                syscall_nr,
                arg0: regs.di,
            },
            None => BlockedIn::NONE,
        },
        Err(_) => BlockedIn::NONE,
    }
}

/// The wakeup that made target thread `tid` runnable since it last ran, if its sched_wakeup
/// was seen; taken once (a later switch-in whose wakeup was missed must not report it again).
/// The wakee's wakeup and switch-in both run under its run queue's lock, so they never race.
#[inline(always)]
fn take_wakeup(tid: u32) -> Option<PendingWakeup> {
    let noted = WAKERS.get_ptr_mut(tid)?;
    unsafe {
        let woken = *noted;
        if woken.runnable_at_ns == 0 {
            return None;
        }
        (*noted).runnable_at_ns = 0;
        (*noted).waker.context = waker_context::UNKNOWN;
        (*noted).waker.stack_id = NO_STACK;
        Some(woken)
    }
}

/// sched:sched_waking fires in `try_to_wake_up()` on the waker's CPU, in the waker's context
/// (kernel/sched/core.c, Linux 6.18). sched_wakeup cannot name the waker: with TTWU_QUEUE
/// (on by default) it often runs on the wakee's CPU from the wakelist IPI or the idle loop,
/// where `current` is swapper or an unrelated task. So the waker is noted here, per wakee;
/// sched_wakeup adds the moment the wakee became runnable, and the wakee's switch-in reports
/// both. (Every sched_waking is followed by a sched_wakeup in the same `try_to_wake_up()`.)
#[raw_tracepoint(tracepoint = "sched_waking")]
pub fn sched_waking(ctx: RawTracePointContext) -> u32 {
    finish(try_sched_waking(&ctx))
}

fn try_sched_waking(ctx: &RawTracePointContext) -> Result<(), Loss> {
    let Some(pid) = target_wakee(ctx) else {
        return Ok(());
    };
    let mut waker = current_waker(ctx)?;
    // In place when the wakee has an entry (every wakeup after its first).
    let Some(pending) = WAKERS.get_ptr_mut(pid) else {
        let noted = PendingWakeup {
            waker,
            ..Default::default()
        };
        return insert(&WAKERS, pid, noted);
    };
    // SAFETY: a valid map value pointer; a thread's wakeups are serialized by its
    // `pi_lock` in `try_to_wake_up()`.
    unsafe {
        if (*pending).unlocker_wanted != 0 && waker.context == waker_context::TASK {
            waker.stack_id = unlocker_stack_id(ctx, waker.pid);
        }
        *pending = PendingWakeup {
            waker,
            ..Default::default()
        };
    }
    Ok(())
}

/// sched:sched_wakeup: the moment the wakee became runnable, noted for its switch-in. Only a
/// thread sched_waking noted has an entry (a target thread), so no thread-id set lookup is
/// needed. Its sched_waking missed (before the tracer attached, skipped by the kernel, or the
/// map full, counted there): no entry, and the switch-in reports no wakeup.
#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup(ctx: RawTracePointContext) -> u32 {
    finish(try_sched_wakeup(&ctx))
}

fn try_sched_wakeup(ctx: &RawTracePointContext) -> Result<(), Loss> {
    let Ok(pid) = task_pid(ctx.arg::<u64>(0)) else {
        return Ok(()); // as for a thread that is not a target's
    };
    if let Some(noted) = WAKERS.get_ptr_mut(pid) {
        unsafe { (*noted).runnable_at_ns = now_ns() };
    }
    Ok(())
}

/// sched:sched_wakeup_new: a new thread's first wakeup, in `wake_up_new_task()`, called by
/// its creator in `clone()`: the current task is the waker.
#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: RawTracePointContext) -> u32 {
    finish(try_sched_wakeup_new(&ctx))
}

fn try_sched_wakeup_new(ctx: &RawTracePointContext) -> Result<(), Loss> {
    let Some(pid) = target_wakee(ctx).filter(|&pid| switches_followed(pid)) else {
        // (With connections sampled, a new thread is not followed yet: the collector first
        // sees it at its first read or write of a picked connection, as a thread that ran.)
        return Ok(());
    };
    emit_wakeup(pid, current_waker(ctx)?)
}

#[inline(always)]
fn emit_wakeup(pid: u32, waker: WakerId) -> Result<(), Loss> {
    emit(WakeupEvent {
        hdr: header(EventKind::Wakeup, pid),
        waker,
    })
}

/// The woken task of sched_waking, sched_wakeup or sched_wakeup_new (`TP_PROTO(struct
/// task_struct *p)`), when it is one of the target's threads.
#[inline(always)]
fn target_wakee(ctx: &RawTracePointContext) -> Option<u32> {
    let pid = task_pid(ctx.arg::<u64>(0)).ok()?;
    is_target_tid(pid).then_some(pid)
}

/// The current task, or the interrupt this CPU is in: a device interrupt or an hrtimer
/// callback by the levels `probes::interrupts` keeps, any other by the stack the tracepoint
/// fired on.
#[inline(always)]
fn current_waker(ctx: &RawTracePointContext) -> Result<WakerId, Loss> {
    if let Some(level) = innermost_interrupt()? {
        return Ok(WakerId {
            context: level.context,
            detail: level.detail,
            ..Default::default()
        });
    }
    if !fired_on_task_stack(ctx.as_ptr())? {
        // A softirq (NET_RX delivering a packet, a timer-wheel timeout, RCU, a tasklet), or
        // rarely a system vector (irq_work): which one is not known here. Softirqs are not
        // followed like device interrupts: they run for every packet of the host, and an
        // entry and an exit program on each were a sixth of the tracer's BPF time on the
        // nginx bench.
        return Ok(WakerId {
            context: waker_context::SOFTIRQ,
            ..Default::default()
        });
    }
    let (pid, tid) = current_ids();
    Ok(WakerId {
        tid,
        pid,
        context: waker_context::TASK,
        comm: current_comm()?,
        ..Default::default()
    })
}

/// Where a target thread that wakes a lock waiter releases the lock: its user stack when it
/// is in a futex call that does not wait (FUTEX_WAKE, FUTEX_WAKE_OP, FUTEX_UNLOCK_PI, a
/// requeue), so that the wait's site can name its unlocker's. Asked for by the waiter's
/// switch-out ([`want_unlocker`]), only with `NATIVE_SITES` (stacks on, goroutines not
/// followed: a goroutine's unlocker is taken by the `semrelease` probe instead).
#[inline(always)]
fn unlocker_stack_id(ctx: &RawTracePointContext, pid: u32) -> i32 {
    if pid != target_tgid() {
        return NO_STACK;
    }
    let Ok(regs) = current_syscall_regs() else {
        return NO_STACK;
    };
    match regs.syscall() {
        Some(nr::FUTEX) if !futex_op_waits(regs.si as u32) => user_stack_id(ctx),
        _ => NO_STACK,
    }
}
