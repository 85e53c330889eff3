//! syscalls:sys_enter_* / sys_exit_*: one generic program each, attached by the collector to
//! every syscall in its list, so syscalls the tracer does not need cost nothing.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use tracer_common::{
    futex_op_waits, layout, nr, reports_exit, EventKind, InSyscall, Loss, SyscallEvent, NO_SYSCALL,
};

use super::sched::field;
use crate::maps::{count_loss, current_ids, emit, header, target_tgid, IN_SYSCALL};

const EAGAIN: i64 = 11;

/// Every traced syscall but futex. It reads no further than the first argument: the kernel
/// refuses to attach a program that reads past the end of a tracepoint's record, and some
/// traced syscalls (close) have one argument.
#[tracepoint]
pub fn sys_enter(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    if tgid == target_tgid() {
        let syscall_nr = field::<i32>(&ctx, layout::SYSCALL_NR) as u32;
        enter(tid, syscall_nr, field(&ctx, layout::SYSCALL_ARG0), 0);
    }
    0
}

/// sys_enter_futex: also keeps the op, to tell waits from wakes at exit.
#[tracepoint]
pub fn sys_enter_futex(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    if tgid == target_tgid() {
        let op = field::<u64>(&ctx, layout::SYSCALL_ARG1) as u32;
        enter(tid, nr::FUTEX, field(&ctx, layout::SYSCALL_ARG0), op);
    }
    0
}

#[inline(always)]
fn enter(tid: u32, syscall_nr: u32, arg0: u64, arg1: u32) {
    let inside = InSyscall {
        nr: syscall_nr,
        arg1,
        arg0,
        enter_ns: unsafe { bpf_ktime_get_ns() },
    };
    // Overwrite the thread's slot in place when it has one: cheaper than a hash insert
    // (no bucket lock, no allocation). Slots are freed when the thread exits.
    match IN_SYSCALL.get_ptr_mut(&tid) {
        Some(slot) => unsafe { *slot = inside },
        None => {
            if IN_SYSCALL.insert(&tid, &inside, 0).is_err() {
                count_loss(Loss::MapFull);
            }
        }
    }
}

#[tracepoint]
pub fn sys_exit(ctx: TracePointContext) -> u32 {
    let _ = try_sys_exit(&ctx);
    0
}

fn try_sys_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let (tgid, tid) = current_ids();
    if tgid != target_tgid() {
        return Ok(());
    }
    let Some(slot) = IN_SYSCALL.get_ptr_mut(&tid) else {
        return Ok(()); // entered before the tracer attached
    };
    // SAFETY: a valid map value pointer; only this thread's own programs write its slot.
    let inside = unsafe { *slot };
    if inside.nr == NO_SYSCALL {
        return Ok(());
    }
    unsafe { (*slot).nr = NO_SYSCALL };
    if !reports_exit(inside.nr) {
        return Ok(());
    }
    if inside.nr == nr::FUTEX && !futex_op_waits(inside.arg1) {
        return Ok(()); // wakes and requeues are not waits
    }
    let ret: i64 = field(ctx, layout::SYSCALL_RET);
    if ret == -EAGAIN && inside.nr != nr::FUTEX {
        return Ok(()); // a non-blocking socket with nothing to do: no request boundary
    }
    emit(SyscallEvent {
        hdr: header(EventKind::Syscall, tid),
        nr: inside.nr,
        arg1: inside.arg1,
        arg0: inside.arg0,
        ret,
        enter_ns: inside.enter_ns,
    });
    Ok(())
}
