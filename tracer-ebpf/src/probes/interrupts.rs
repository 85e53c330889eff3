//! Interrupt nesting per CPU, so that a wakeup done from an interrupt is reported as such and
//! not as the task the interrupt happened to hit.
//!
//! Without kprobes or kfuncs there is no way to read the preempt count from a tracepoint, so
//! the entry and exit tracepoints of the contexts that wake tasks are followed instead, as raw
//! tracepoints (no tracefs, no record built by the kernel):
//! - `irq:irq_handler_entry/exit`: device interrupt handlers, `TP_PROTO(int irq, ...)`;
//! - `irq:softirq_entry/exit`: softirqs (NET_RX delivering a packet, TIMER, RCU...),
//!   `TP_PROTO(unsigned int vec_nr)`, whether run at irq exit, in `local_bh_enable()` or by
//!   ksoftirqd;
//! - `timer:hrtimer_expire_entry/exit`: hrtimer callbacks, which wake sleepers and expire
//!   timeouts, `TP_PROTO(struct hrtimer *hrtimer, ...)`.
//!
//! (include/trace/events/irq.h, include/trace/events/timer.h, Linux 6.18.) They fire on every
//! CPU for every process, but interrupts are far rarer than syscalls and each program does
//! one per-CPU array update.
//!
//! Interrupts nest but never migrate, so a per-CPU stack of levels is exact, with two
//! subtleties:
//! - The kernel skips a raw tracepoint program that is already running on the CPU
//!   (`__bpf_trace_run()`, kernel/trace/bpf_trace.c: `prog->active`, counted as a miss). An
//!   interrupt that arrives while an exit program runs for an outer level loses its own exit
//!   if it is the same program. So every kind has its own programs, and an exit pops down to
//!   the level it names (its IRQ, vector or hrtimer): a level left behind by a lost exit goes
//!   with the exit of the level around it. A lost entry is harmless: its exit names no level.
//! - No interrupt is ever in progress across a context switch (`schedule()` is never called
//!   from interrupt context), so `sched_switch` empties this CPU's stack (see
//!   [`forget_interrupts`]): whatever a lost exit left behind lasts at most until then.
//!
//! The collector attaches the exit programs before the entry programs.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use tracer_common::{waker_context, IrqLevel, IrqNesting, IRQ_LEVELS};

use crate::maps::IRQ_NESTING;

#[raw_tracepoint(tracepoint = "irq_handler_entry")]
pub fn irq_handler_entry(ctx: RawTracePointContext) -> i32 {
    let irq = ctx.arg::<u64>(0) as u32;
    enter(waker_context::HARDIRQ, irq, u64::from(irq));
    0
}

#[raw_tracepoint(tracepoint = "irq_handler_exit")]
pub fn irq_handler_exit(ctx: RawTracePointContext) -> i32 {
    exit(waker_context::HARDIRQ, ctx.arg::<u64>(0) as u32 as u64);
    0
}

#[raw_tracepoint(tracepoint = "softirq_entry")]
pub fn softirq_entry(ctx: RawTracePointContext) -> i32 {
    let vec = ctx.arg::<u64>(0) as u32;
    enter(waker_context::SOFTIRQ, vec, u64::from(vec));
    0
}

#[raw_tracepoint(tracepoint = "softirq_exit")]
pub fn softirq_exit(ctx: RawTracePointContext) -> i32 {
    exit(waker_context::SOFTIRQ, ctx.arg::<u64>(0) as u32 as u64);
    0
}

#[raw_tracepoint(tracepoint = "hrtimer_expire_entry")]
pub fn hrtimer_expire_entry(ctx: RawTracePointContext) -> i32 {
    enter(waker_context::TIMER, 0, ctx.arg::<u64>(0));
    0
}

#[raw_tracepoint(tracepoint = "hrtimer_expire_exit")]
pub fn hrtimer_expire_exit(ctx: RawTracePointContext) -> i32 {
    exit(waker_context::TIMER, ctx.arg::<u64>(0));
    0
}

#[inline(always)]
fn nesting() -> Option<&'static mut IrqNesting> {
    IRQ_NESTING.get_ptr_mut(0).map(|n| unsafe { &mut *n })
}

#[inline(always)]
fn enter(context: u32, detail: u32, key: u64) {
    let Some(n) = nesting() else { return };
    let depth = n.depth as usize;
    if depth < IRQ_LEVELS {
        n.levels[depth] = IrqLevel {
            context,
            detail,
            key,
        };
        n.depth = depth as u32 + 1;
    }
    // Deeper than that: the innermost level recorded stands for the ones beyond it.
}

/// Pop down to the innermost level this exit names, and it; nothing if none does.
#[inline(always)]
fn exit(context: u32, key: u64) {
    let Some(n) = nesting() else { return };
    let depth = (n.depth as usize).min(IRQ_LEVELS);
    for i in (0..IRQ_LEVELS).rev() {
        if i < depth && n.levels[i].context == context && n.levels[i].key == key {
            n.depth = i as u32;
            return;
        }
    }
}

/// Called from sched_switch, which never runs inside an interrupt: this CPU is in none.
#[inline(always)]
pub fn forget_interrupts() {
    if let Some(n) = nesting() {
        if n.depth != 0 {
            n.depth = 0;
        }
    }
}

/// The innermost interrupt this CPU is in, or `None` in task context.
#[inline(always)]
pub fn innermost_interrupt() -> Option<IrqLevel> {
    let n = nesting()?;
    let depth = (n.depth as usize).min(IRQ_LEVELS);
    if depth == 0 {
        return None;
    }
    let i = depth - 1;
    (i < IRQ_LEVELS).then(|| n.levels[i])
}
