//! Interrupt nesting per CPU, so that a wakeup done from a device interrupt or an hrtimer
//! callback is reported as such, with its IRQ or as `timer`, and not as the task the interrupt
//! happened to hit. (Any other interrupt, softirqs included, is recognised by the stack the
//! wakeup's tracepoint fired on: see `maps::fired_on_task_stack`.)
//!
//! Without kprobes or kfuncs there is no way to read the preempt count from a tracepoint, so
//! the entry and exit tracepoints of these contexts are followed instead, as raw tracepoints
//! (no tracefs, no record built by the kernel):
//! - `irq:irq_handler_entry/exit`: device interrupt handlers, `TP_PROTO(int irq, ...)`;
//! - `timer:hrtimer_expire_entry/exit`: hrtimer callbacks, which wake sleepers and expire
//!   timeouts, `TP_PROTO(struct hrtimer *hrtimer, ...)`.
//!
//! (include/trace/events/irq.h, include/trace/events/timer.h, Linux 6.18.) They fire on every
//! CPU for every process, but these interrupts are far rarer than syscalls or packets (a NIC
//! interrupt serves a batch of packets), and each program does one per-CPU array update.
//! `irq:softirq_entry/exit` are not followed: they fire for every packet of the host.
//!
//! Interrupts nest but never migrate, so a per-CPU stack of levels is exact, with two
//! subtleties:
//! - The kernel skips a raw tracepoint program that is already running on the CPU
//!   (`__bpf_trace_run()`, kernel/trace/bpf_trace.c: `prog->active`, counted as a miss). An
//!   interrupt that arrives while an exit program runs for an outer level loses its own exit
//!   if it is the same program. So every kind has its own programs, and an exit pops down to
//!   the level it names (its IRQ or hrtimer): a level left behind by a lost exit goes
//!   with the exit of the level around it. A lost entry is harmless: its exit names no level.
//! - No interrupt is ever in progress across a context switch (`schedule()` is never called
//!   from interrupt context; on PREEMPT_RT, where interrupts run in threads, this does not
//!   hold), so `sched_switch` empties this CPU's stack (see [`forget_interrupts`]):
//!   whatever a lost exit left behind lasts at most until then.
//! - An entry program can be interrupted between its two stores; see [`enter`].
//! - x86 system vectors (irq_work, call-function IPIs) fire none of these tracepoints: a
//!   wakeup from an irq_work callback is recognised by its stack, like a softirq's.
//!
//! The collector attaches the exit programs before the entry programs.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use tracer_common::{waker_context, IrqLevel, IrqNesting, Loss, IRQ_LEVELS};

use crate::maps::{finish, IRQ_NESTING};

#[raw_tracepoint(tracepoint = "irq_handler_entry")]
pub fn irq_handler_entry(ctx: RawTracePointContext) -> u32 {
    let irq = ctx.arg::<u64>(0) as u32;
    finish(enter(waker_context::HARDIRQ, irq, u64::from(irq)))
}

#[raw_tracepoint(tracepoint = "irq_handler_exit")]
pub fn irq_handler_exit(ctx: RawTracePointContext) -> u32 {
    finish(exit(
        waker_context::HARDIRQ,
        ctx.arg::<u64>(0) as u32 as u64,
    ))
}

#[raw_tracepoint(tracepoint = "hrtimer_expire_entry")]
pub fn hrtimer_expire_entry(ctx: RawTracePointContext) -> u32 {
    finish(enter(waker_context::TIMER, 0, ctx.arg::<u64>(0)))
}

#[raw_tracepoint(tracepoint = "hrtimer_expire_exit")]
pub fn hrtimer_expire_exit(ctx: RawTracePointContext) -> u32 {
    finish(exit(waker_context::TIMER, ctx.arg::<u64>(0)))
}

/// This CPU's entry (index 0 of a one-entry per-CPU array: the lookup only fails if the
/// map is broken, but the verifier wants the check, and it is counted like any failed read).
#[inline(always)]
fn nesting() -> Result<*mut IrqNesting, Loss> {
    IRQ_NESTING.get_ptr_mut(0).ok_or(Loss::ReadFailed)
}

// An entry or exit program can itself be interrupted (softirqs and soft hrtimers run with
// interrupts on), and the nested program updates the same per-CPU entry. Every access is
// volatile, so the compiler neither caches nor reorders them, and a push writes its level,
// then the depth, then its level again: a nested interrupt that lands before the depth moved
// pushes and pops at the same index (the second write restores ours); one that lands after
// it pushes one level further up.
#[inline(always)]
fn depth(n: *mut IrqNesting) -> usize {
    unsafe { read_volatile(addr_of!((*n).depth)) as usize }
}

#[inline(always)]
fn set_depth(n: *mut IrqNesting, depth: usize) {
    unsafe { write_volatile(addr_of_mut!((*n).depth), depth as u32) }
}

#[inline(always)]
fn level(n: *mut IrqNesting, i: usize) -> IrqLevel {
    unsafe { read_volatile(addr_of!((*n).levels[i])) }
}

#[inline(always)]
fn set_level(n: *mut IrqNesting, i: usize, level: IrqLevel) {
    unsafe { write_volatile(addr_of_mut!((*n).levels[i]), level) }
}

#[inline(always)]
fn enter(context: u32, detail: u32, key: u64) -> Result<(), Loss> {
    let n = nesting()?;
    let d = depth(n);
    if d < IRQ_LEVELS {
        let pushed = IrqLevel {
            context,
            detail,
            key,
        };
        set_level(n, d, pushed);
        set_depth(n, d + 1);
        set_level(n, d, pushed);
    }
    // Deeper than that: the innermost level recorded stands for the ones beyond it.
    Ok(())
}

/// Pop down to the innermost level this exit names, and it; nothing if none does.
#[inline(always)]
fn exit(context: u32, key: u64) -> Result<(), Loss> {
    let n = nesting()?;
    let d = depth(n).min(IRQ_LEVELS);
    for i in (0..IRQ_LEVELS).rev() {
        if i < d {
            let l = level(n, i);
            if l.context == context && l.key == key {
                set_depth(n, i);
                break;
            }
        }
    }
    Ok(())
}

/// Called from sched_switch, which never runs inside an interrupt on a non-RT kernel: this
/// CPU is in none.
#[inline(always)]
pub fn forget_interrupts() -> Result<(), Loss> {
    let n = nesting()?;
    if depth(n) != 0 {
        set_depth(n, 0);
    }
    Ok(())
}

/// The innermost interrupt this CPU is in, or `None` in task context.
#[inline(always)]
pub fn innermost_interrupt() -> Result<Option<IrqLevel>, Loss> {
    let n = nesting()?;
    let d = depth(n).min(IRQ_LEVELS);
    if d == 0 {
        return Ok(None);
    }
    let i = d - 1;
    Ok((i < IRQ_LEVELS).then(|| level(n, i)))
}
