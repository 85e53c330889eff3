//! raw_syscalls:sys_enter / sys_exit as raw tracepoints: two attachments in all, no tracefs,
//! no per-event record built by the kernel. They run for every syscall on the machine, so the
//! target filter (one helper call and a compare) comes first. Every syscall of the target is
//! remembered while the thread is inside it (so a block in any syscall is named); only the
//! traced ones have their arguments read, and only some report their return.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use tracer_common::{
    futex_op_waits, is_change_cipher_spec, is_traced, nr, recv_flags_arg, reports_exit, tls_record,
    tls_record_and_next, Conversation, EventKind, InSyscall, Loss, SyscallEvent, EAGAIN, MSG_PEEK,
    NO_SYSCALL, TLS_RECORD_HEADER,
};

use crate::maps::{
    current_target_tid, emit, finish, header, report_eagain, set, tls_records, IN_SYSCALL,
};

/// `TP_PROTO(struct pt_regs *regs, long id)` (include/trace/events/syscalls.h, Linux 6.18).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> u32 {
    finish(try_sys_enter(&ctx))
}

fn try_sys_enter(ctx: &RawTracePointContext) -> Result<(), Loss> {
    let Some(tid) = current_target_tid() else {
        return Ok(());
    };
    let syscall_nr = ctx.arg::<u64>(1) as u32;
    if !is_traced(syscall_nr) {
        // Only the number: if the thread blocks in it, the switch-out names it (`other`).
        return enter(tid, syscall_nr, 0, 0, 0);
    }
    let regs = ctx.arg::<*const pt_regs>(0);
    let arg0 = syscall_arg(regs, 0)?;
    let (arg1, buf) = match syscall_nr {
        nr::FUTEX => (syscall_arg(regs, 1)? as u32, 0),
        nr::READ | nr::RECVFROM | nr::WRITE | nr::SENDTO if tls_records() => {
            (0, syscall_arg(regs, 1)?)
        }
        _ => (0, 0),
    };
    enter(tid, syscall_nr, arg0, arg1, buf)
}

/// Argument `n` (0 to 3) of the syscall whose entry registers `regs` holds, in the x86-64
/// syscall ABI: rdi, rsi, rdx, r10 (arch/x86/entry/entry_64.S, Linux 6.18). The raw_syscalls
/// tracepoints pass the entry registers, and at sys_exit they still hold the caller's values
/// (only `rax` is rewritten).
#[inline(always)]
fn syscall_arg(regs: *const pt_regs, n: usize) -> Result<u64, Loss> {
    // SAFETY: only the field's address is computed here; the helper does the read.
    let reg = unsafe {
        match n {
            0 => &raw const (*regs).rdi,
            1 => &raw const (*regs).rsi,
            2 => &raw const (*regs).rdx,
            _ => &raw const (*regs).r10,
        }
    };
    unsafe { bpf_probe_read_kernel(reg) }.map_err(|_| Loss::ReadFailed)
}

/// Note the syscall the thread is inside, in place (its conversation is kept): slots are
/// freed when the thread exits.
#[inline(always)]
fn enter(tid: u32, syscall_nr: u32, arg0: u64, arg1: u32, buf: u64) -> Result<(), Loss> {
    let enter_ns = unsafe { bpf_ktime_get_ns() };
    match IN_SYSCALL.get_ptr_mut(tid) {
        // SAFETY: a valid map value pointer; only this thread's own programs write its slot.
        Some(slot) => unsafe {
            (*slot).nr = syscall_nr;
            (*slot).arg1 = arg1;
            (*slot).arg0 = arg0;
            (*slot).enter_ns = enter_ns;
            (*slot).buf = buf;
            Ok(())
        },
        None => set(
            &IN_SYSCALL,
            tid,
            InSyscall {
                nr: syscall_nr,
                arg1,
                arg0,
                enter_ns,
                buf,
                conversation: Conversation::default(),
            },
        ),
    }
}

/// `TP_PROTO(struct pt_regs *regs, long ret)`.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> u32 {
    finish(try_sys_exit(&ctx))
}

fn try_sys_exit(ctx: &RawTracePointContext) -> Result<(), Loss> {
    let Some(tid) = current_target_tid() else {
        return Ok(());
    };
    let Some(slot) = IN_SYSCALL.get_ptr_mut(tid) else {
        return Ok(()); // no traced syscall since the tracer attached
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
    let ret = ctx.arg::<u64>(1) as i64;
    // SAFETY: as above.
    unsafe {
        (*slot)
            .conversation
            .returned(inside.nr, inside.arg0 as u32, ret)
    };
    if ret == -EAGAIN && inside.nr != nr::FUTEX && !report_eagain() {
        return Ok(()); // a non-blocking socket with nothing to do: no request boundary
    }
    if let Some(flags) = recv_flags_arg(inside.nr) {
        // The argument registers still hold the caller's values at sys_exit.
        let regs = ctx.arg::<*const pt_regs>(0);
        if syscall_arg(regs, flags)? & MSG_PEEK != 0 {
            return Ok(()); // a peek moved nothing: the receive that takes the bytes reports them
        }
    }
    let arg1 = if inside.buf != 0 && ret >= TLS_RECORD_HEADER as i64 {
        record_header(inside.buf, ret)?
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
    })
}

/// Whether the bytes just read or written at `buf` start with a TLS record header (see
/// `tracer_common::tls_record`): only the classification leaves the kernel, never the bytes.
#[inline(always)]
fn record_header(buf: u64, len: i64) -> Result<u32, Loss> {
    let first = tls_record(read_header(buf)?);
    // After a change_cipher_spec (a header and a one-byte body), the next record's header
    // says TLS 1.2 or 1.3.
    let next = TLS_RECORD_HEADER + 1;
    if !is_change_cipher_spec(first) || len < (next + TLS_RECORD_HEADER) as i64 {
        return Ok(first);
    }
    Ok(tls_record_and_next(first, read_header(buf + next as u64)?))
}

/// The first bytes of a record at `addr` in the target's memory.
#[inline(always)]
fn read_header(addr: u64) -> Result<[u8; TLS_RECORD_HEADER], Loss> {
    unsafe { bpf_probe_read_user(addr as *const [u8; TLS_RECORD_HEADER]) }
        .map_err(|_| Loss::ReadFailed)
}
