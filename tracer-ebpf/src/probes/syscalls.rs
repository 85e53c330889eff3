//! raw_syscalls:sys_enter / sys_exit as raw tracepoints: two attachments in all, no tracefs,
//! no per-event record built by the kernel. They run for every syscall on the machine, so the
//! target filter (one helper call and a compare) comes first. Every syscall of the target is
//! remembered while the thread is inside it (so a block in any syscall is named); only the
//! traced ones have their arguments read, and only some report their return.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use tracer_common::{
    futex_op_waits, is_change_cipher_spec, is_traced, layout, nr, recv_flags_reg, reports_exit,
    tls_record, tls_record_and_next, EventKind, InSyscall, Loss, SyscallEvent, EAGAIN, MSG_PEEK,
    NO_SYSCALL,
};

use crate::maps::{
    count_loss, current_ids, emit, header, report_eagain, target_tgid, tls_records, IN_SYSCALL,
};

/// `TP_PROTO(struct pt_regs *regs, long id)` (include/trace/events/syscalls.h, Linux 6.18).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    let (tgid, tid) = current_ids();
    if tgid != target_tgid() {
        return 0;
    }
    let syscall_nr = ctx.arg::<u64>(1) as u32;
    if !is_traced(syscall_nr) {
        // Only the number: if the thread blocks in it, the switch-out names it (`other`).
        enter(tid, syscall_nr, 0, 0, 0);
        return 0;
    }
    let regs = ctx.arg::<u64>(0) as *const u8;
    let Some(arg0) = reg(regs, layout::PT_REGS_DI) else {
        return 0;
    };
    let (arg1, buf) = match syscall_nr {
        nr::FUTEX => (reg(regs, layout::PT_REGS_SI).unwrap_or(0) as u32, 0),
        nr::READ | nr::RECVFROM | nr::WRITE | nr::SENDTO if tls_records() => {
            (0, reg(regs, layout::PT_REGS_SI).unwrap_or(0))
        }
        _ => (0, 0),
    };
    enter(tid, syscall_nr, arg0, arg1, buf);
    0
}

/// A saved user register of the syscall's entry.
#[inline(always)]
fn reg(regs: *const u8, offset: usize) -> Option<u64> {
    match unsafe { bpf_probe_read_kernel(regs.add(offset) as *const u64) } {
        Ok(v) => Some(v),
        Err(_) => {
            count_loss(Loss::ReadFailed);
            None
        }
    }
}

#[inline(always)]
fn enter(tid: u32, syscall_nr: u32, arg0: u64, arg1: u32, buf: u64) {
    let inside = InSyscall {
        nr: syscall_nr,
        arg1,
        arg0,
        enter_ns: unsafe { bpf_ktime_get_ns() },
        buf,
    };
    // Overwrite the thread's slot in place when it has one: cheaper than a hash insert
    // (no bucket lock, no allocation). Slots are freed when the thread exits.
    match IN_SYSCALL.get_ptr_mut(tid) {
        Some(slot) => unsafe { *slot = inside },
        None => {
            if IN_SYSCALL.insert(tid, inside, 0).is_err() {
                count_loss(Loss::MapFull);
            }
        }
    }
}

/// `TP_PROTO(struct pt_regs *regs, long ret)`.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    let (tgid, tid) = current_ids();
    if tgid != target_tgid() {
        return 0;
    }
    let Some(slot) = IN_SYSCALL.get_ptr_mut(tid) else {
        return 0; // no traced syscall since the tracer attached
    };
    // SAFETY: a valid map value pointer; only this thread's own programs write its slot.
    let inside = unsafe { *slot };
    if inside.nr == NO_SYSCALL {
        return 0;
    }
    unsafe { (*slot).nr = NO_SYSCALL };
    if !reports_exit(inside.nr) {
        return 0;
    }
    if inside.nr == nr::FUTEX && !futex_op_waits(inside.arg1) {
        return 0; // wakes and requeues are not waits
    }
    let ret = ctx.arg::<u64>(1) as i64;
    if ret == -EAGAIN && inside.nr != nr::FUTEX && !report_eagain() {
        return 0; // a non-blocking socket with nothing to do: no request boundary
    }
    if let Some(flags) = recv_flags_reg(inside.nr) {
        // The argument registers still hold the caller's values at sys_exit.
        let regs = ctx.arg::<u64>(0) as *const u8;
        if reg(regs, flags).is_some_and(|f| f & MSG_PEEK != 0) {
            return 0; // a peek moved nothing: the receive that takes the bytes reports them
        }
    }
    let arg1 = if inside.buf != 0 && ret >= 5 {
        record_header(inside.buf, ret)
    } else {
        inside.arg1
    };
    emit(SyscallEvent {
        hdr: header(EventKind::Syscall, tid),
        nr: inside.nr,
        arg1,
        arg0: inside.arg0,
        ret,
        enter_ns: inside.enter_ns,
    });
    0
}

/// Whether the bytes just read or written at `buf` start with a TLS record header (see
/// `tracer_common::tls_record`): only the classification leaves the kernel, never the bytes.
#[inline(always)]
fn record_header(buf: u64, len: i64) -> u32 {
    let first = match unsafe { bpf_probe_read_user::<[u8; 5]>(buf as *const [u8; 5]) } {
        Ok(header) => tls_record(header),
        Err(_) => return 0,
    };
    // After a change_cipher_spec (6 bytes), the next record's header says TLS 1.2 or 1.3.
    if !is_change_cipher_spec(first) || len < 11 {
        return first;
    }
    match unsafe { bpf_probe_read_user::<[u8; 5]>((buf + 6) as *const [u8; 5]) } {
        Ok(next) => tls_record_and_next(first, next),
        Err(_) => first,
    }
}
