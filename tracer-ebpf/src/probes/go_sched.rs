//! Goroutine scheduling in a Go target (Go 1.17+, amd64 register ABI): uprobes on seven of
//! the Go runtime's functions, each attached to the target process only, at the
//! conditional jump of the function's stack check (an instruction the kernel emulates, and
//! before which no argument register has been touched; the collector finds it). Never a
//! uretprobe: Go moves goroutine stacks, and a rewritten return address on a moved stack
//! crashes the target.
//!
//! - `runtime.gopark(unlockf, lock, reason, ...)`: r14 is the parking goroutine's `g`, the
//!   wait reason is the third integer argument (rcx; a `uint8`, so its low byte);
//! - `runtime.ready(gp, traceskip, next)`: rax is the goroutine made runnable; it runs on
//!   the thread's g0 (through `systemstack`), so the waker is `g0.m.curg`, which is NULL when
//!   the thread runs no goroutine (a timer run by the scheduler);
//! - `runtime.execute(gp, inheritTime)`: rax is the goroutine about to run on this thread;
//! - `runtime.goexit1()`: r14 is the exiting goroutine;
//! - `runtime.semacquire1(addr, ...)`: r14 is the goroutine about to take (or wait for) the
//!   semaphore at `addr` (rax): the park that may follow is a wait on that address;
//! - `runtime.injectglist(glist *gList)`: the goroutines on the list (rax) become runnable
//!   together, with no `ready`: those the netpoller found ready (`netpoll`'s list, in
//!   `findRunnable`, `sysmon` and `startTheWorldWithSema`) and waiters the GC releases at
//!   once (assists, sweep waiters); each is reported as readied by no goroutine;
//! - `runtime.stopTheWorldWithSema` and `runtime.startTheWorldWithSema`: the world stops
//!   (every goroutine is preempted, for the GC most often) and starts again.
//!
//! Goroutines are reported by id (`g.goid`), not by `g` address: `g` structs are recycled.
//! The offsets of `g.goid`, `g.m` and `m.curg` change between Go releases; the collector
//! reads them from the binary and sets them at load time. Target memory is read with
//! `bpf_probe_read_user`; a failed read is a `read_failed` loss.
//!
//! A probe may fire twice for one call: when the goroutine's stack must grow, the stack
//! check jumps to `morestack`, which copies the stack and runs the function again from its
//! entry, through the probed jump once more. The record is then sent twice, with the same
//! goroutine and detail; userspace takes the repeat as one transition.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use tracer_common::{go_sched, Conversation, EventKind, GoSchedEvent, Loss, NO_STACK};

use crate::conversation::{forget_goroutine, goroutine_in_request, set_goroutine_conversation};
use crate::maps::{
    capture_stacks, current_target_tid, emit, finish, global, header, read_user, user_stack_id,
};

/// Byte offset of `runtime.g.goid` in the target's Go release (set at load time).
#[unsafe(no_mangle)]
static GO_G_GOID: u32 = 0;
/// Byte offset of `runtime.g.m`.
#[unsafe(no_mangle)]
static GO_G_M: u32 = 0;
/// Byte offset of `runtime.m.curg`.
#[unsafe(no_mangle)]
static GO_M_CURG: u32 = 0;
/// Byte offset of `runtime.g.schedlink` (the next `g` on a `gList`).
#[unsafe(no_mangle)]
static GO_G_SCHEDLINK: u32 = 0;

/// `waitReasonSyncCondWait`'s value in the target's Go release (0: unknown).
#[unsafe(no_mangle)]
static GO_COND_WAIT_REASON: u32 = 0;
/// The code of HTTP/2's body read (`(*http2pipe).Read`), as loaded: up to
/// two `[start, end)` ranges (0, 0: none).
#[unsafe(no_mangle)]
static GO_BODY_READ: [u64; 4] = [0; 4];

/// Return addresses looked at up a `sync.Cond` wait's stack for the body read: gopark's
/// caller `notifyListWait` (goparkunlock is inlined), `sync.(*Cond).Wait`, then the body
/// read (Go 1.19 and 1.27), and one more for a release that inlines differently.
const BODY_READ_DEPTH: usize = 4;

/// Goroutines of one `injectglist` list reported (a netpoll returns at most 128 events; a
/// longer list's rest end their parks when they run, as without the probe).
const MAX_INJECTED: u32 = 32;

/// Goroutines are followed (the scheduler probes are attached): the goid offset, never 0 in
/// `runtime.g`, is set.
#[inline(always)]
pub fn goroutines_followed() -> bool {
    global(&GO_G_GOID) != 0
}

/// `runtime.gopark`: the goroutine running on this thread parks; its stack is taken only
/// inside a request it read (or an HTTP/2 stream it serves): most parks of a busy server
/// are between requests (net/http's connection goroutine waits for its background reader
/// after each answer, and for the next request) or of goroutines serving none.
#[uprobe]
pub fn go_park(ctx: ProbeContext) -> u32 {
    finish(try_go_park(&ctx))
}

fn try_go_park(ctx: &ProbeContext) -> Result<(), Loss> {
    let Some(tid) = current_target_tid() else {
        return Ok(());
    };
    // SAFETY: direct loads from the probe context (the user registers at the probe).
    let (g, reason, sp, fp) = unsafe {
        let regs = &*ctx.regs;
        (regs.r14, regs.rcx, regs.rsp, regs.rbp)
    };
    let goid = goid(g)?;
    let (stack_id, caller) = if goroutine_in_request(g) {
        stack_at_entry(ctx, sp)
    } else {
        (NO_STACK, 0)
    };
    let reason = reason & 0xff;
    let detail = if waits_for_request_body(reason, sp, fp) {
        reason | go_sched::PARK_REQUEST_BODY
    } else {
        reason
    };
    emit_record(tid, go_sched::PARK, goid, detail, stack_id, caller)
}

/// Whether a park for `reason`, at gopark's probe with the stack at `sp` and the caller's
/// frame at `fp`, is a wait for an HTTP/2 body from the peer (a handler's request body, or a
/// Go client's response body): a `sync.Cond` wait inside HTTP/2's body read, which waits on
/// the pipe's Cond until the connection's reader goroutine brings the peer's DATA. Told by
/// one of the first [`BODY_READ_DEPTH`] return addresses up the stack (the one at `sp`, then
/// each frame's, Go keeping frame pointers).
#[inline(always)]
fn waits_for_request_body(reason: u64, sp: u64, fp: u64) -> bool {
    let cond_wait = u64::from(global(&GO_COND_WAIT_REASON));
    if cond_wait == 0 || reason != cond_wait {
        return false;
    }
    // SAFETY: a volatile read of a global the collector sets at load time.
    let code = unsafe { core::ptr::read_volatile(&raw const GO_BODY_READ) };
    let in_body_read = |address: u64| {
        (code[0] <= address && address < code[1]) || (code[2] <= address && address < code[3])
    };
    let Ok(mut returns_to) = read(sp, 0) else {
        return false;
    };
    let mut frame = fp;
    for _ in 0..BODY_READ_DEPTH {
        if in_body_read(returns_to) {
            return true;
        }
        // A frame: the caller's frame pointer, then the return address into the caller.
        if frame == 0 {
            return false;
        }
        let Ok([caller_frame, address]) = read_user::<[u64; 2]>(frame) else {
            return false;
        };
        (frame, returns_to) = (caller_frame, address);
    }
    in_body_read(returns_to)
}

/// `runtime.ready`: a goroutine becomes runnable, readied by this thread's goroutine.
#[uprobe]
pub fn go_ready(ctx: ProbeContext) -> u32 {
    finish(try_go_ready(&ctx))
}

fn try_go_ready(ctx: &ProbeContext) -> Result<(), Loss> {
    let Some(tid) = current_target_tid() else {
        return Ok(());
    };
    // SAFETY: as above.
    let (wakee, g0) = unsafe { ((*ctx.regs).rax, (*ctx.regs).r14) };
    let wakee = goid(wakee)?;
    // The waker is best effort: a failed read of it still reports the wakeup.
    let waker = waker_goid(g0).unwrap_or(go_sched::WAKER_UNREADABLE);
    emit_sched(tid, go_sched::READY, wakee, waker)
}

/// The goid of the goroutine thread `g0` runs, 0 for none. r14 is g0 in `ready` (or the
/// waker itself, whose m.curg is itself): g0.m.curg is the goroutine the thread runs.
#[inline(always)]
fn waker_goid(g0: u64) -> Result<u64, Loss> {
    let m: u64 = read(g0, global(&GO_G_M))?;
    let curg: u64 = read(m, global(&GO_M_CURG))?;
    if curg == 0 {
        Ok(0)
    } else {
        goid(curg)
    }
}

/// `runtime.injectglist`: the goroutines on the list become runnable.
#[uprobe]
pub fn go_inject(ctx: ProbeContext) -> u32 {
    finish(try_go_inject(&ctx))
}

fn try_go_inject(ctx: &ProbeContext) -> Result<(), Loss> {
    let Some(tid) = current_target_tid() else {
        return Ok(());
    };
    // SAFETY: as above.
    let list = unsafe { (*ctx.regs).rax };
    // `gList.head` (a guintptr) is its first field in every release (1.17-1.27 read).
    let mut g = read(list, 0)?;
    for _ in 0..MAX_INJECTED {
        if g == 0 {
            break;
        }
        emit_sched(tid, go_sched::READY, goid(g)?, 0)?;
        g = read(g, global(&GO_G_SCHEDLINK))?;
    }
    Ok(())
}

/// `runtime.execute`: a goroutine starts running on this thread.
#[uprobe]
pub fn go_execute(ctx: ProbeContext) -> u32 {
    finish(try_go_execute(&ctx))
}

fn try_go_execute(ctx: &ProbeContext) -> Result<(), Loss> {
    let Some(tid) = current_target_tid() else {
        return Ok(());
    };
    // SAFETY: as above.
    let g = unsafe { (*ctx.regs).rax };
    emit_sched(tid, go_sched::EXECUTE, goid(g)?, 0)
}

/// `runtime.goexit1`: the goroutine running on this thread is done.
#[uprobe]
pub fn go_exit(ctx: ProbeContext) -> u32 {
    finish(try_go_exit(&ctx))
}

fn try_go_exit(ctx: &ProbeContext) -> Result<(), Loss> {
    let Some(tid) = current_target_tid() else {
        return Ok(());
    };
    // SAFETY: as above.
    let g = unsafe { (*ctx.regs).r14 };
    forget_goroutine(g);
    emit_sched(tid, go_sched::EXIT, goid(g)?, 0)
}

/// `runtime.semacquire1(addr, ...)`: the goroutine running on this thread takes the
/// semaphore at `addr` (rax), parking if it must wait.
#[uprobe]
pub fn go_semacquire(ctx: ProbeContext) -> u32 {
    finish(try_go_semacquire(&ctx))
}

fn try_go_semacquire(ctx: &ProbeContext) -> Result<(), Loss> {
    let Some(tid) = current_target_tid() else {
        return Ok(());
    };
    // SAFETY: as above.
    let (g, address, sp) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rax, (*ctx.regs).rsp) };
    // The return address into semacquire1's caller: the GC's own semaphores are taken from
    // a few runtime functions (best effort: 0 when unreadable).
    let caller = read(sp, 0).unwrap_or(0);
    emit_record(
        tid,
        go_sched::SEMACQUIRE,
        goid(g)?,
        address,
        NO_STACK,
        caller,
    )
}

/// `runtime.semrelease1(addr, ...)`: the goroutine running on this thread releases the
/// semaphore at `addr` (rax), readying a waiter if there is one: where in its code, for the
/// lock detail's unlocker site.
#[uprobe]
pub fn go_semrelease(ctx: ProbeContext) -> u32 {
    finish(try_go_semrelease(&ctx))
}

fn try_go_semrelease(ctx: &ProbeContext) -> Result<(), Loss> {
    let Some(tid) = current_target_tid() else {
        return Ok(());
    };
    // SAFETY: as above.
    let (g, address, sp) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rax, (*ctx.regs).rsp) };
    let goid = goid(g)?;
    let (stack_id, caller) = stack_at_entry(ctx, sp);
    emit_record(tid, go_sched::SEMRELEASE, goid, address, stack_id, caller)
}

/// net/http's HTTP/2 server: `(*http2serverConn).serve` and `.readFrames` (r14: the
/// goroutine that will read or write the connection's frames).
#[uprobe]
pub fn go_http2_connection(ctx: ProbeContext) -> u32 {
    finish(current_goroutine_is(
        &ctx,
        go_sched::HTTP2_CONNECTION,
        Conversation::serving_no_request(),
    ))
}

/// `(*http2serverConn).runHandler` (r14: the goroutine started for one stream's handler).
#[uprobe]
pub fn go_http2_handler(ctx: ProbeContext) -> u32 {
    finish(current_goroutine_is(
        &ctx,
        go_sched::HTTP2_HANDLER,
        Conversation::default(),
    ))
}

/// Reports `what` of the goroutine the probe fired on, whose conversation it sets.
#[inline(always)]
fn current_goroutine_is(
    ctx: &ProbeContext,
    what: u32,
    conversation: Conversation,
) -> Result<(), Loss> {
    let Some(tid) = current_target_tid() else {
        return Ok(());
    };
    // SAFETY: as above.
    let g = unsafe { (*ctx.regs).r14 };
    set_goroutine_conversation(g, conversation);
    emit_sched(tid, what, goid(g)?, 0)
}

/// The user stack at a probe on a function's entry (`NO_STACK` when stacks are off), and
/// the return address at the top of the stack: the function's frame is not set up yet, so
/// the frame-pointer walk from rbp starts at its caller's frame and misses the caller.
#[inline(always)]
fn stack_at_entry(ctx: &ProbeContext, sp: u64) -> (i32, u64) {
    if !capture_stacks() {
        return (NO_STACK, 0);
    }
    (user_stack_id(ctx), read(sp, 0).unwrap_or(0))
}

/// `runtime.stopTheWorldWithSema`: the world stops (runs on g0: no goroutine is read).
#[uprobe]
pub fn go_stop_the_world(_ctx: ProbeContext) -> u32 {
    finish(world(go_sched::STOP_THE_WORLD))
}

/// `runtime.startTheWorldWithSema`: the world starts again.
#[uprobe]
pub fn go_start_the_world(_ctx: ProbeContext) -> u32 {
    finish(world(go_sched::START_THE_WORLD))
}

fn world(what: u32) -> Result<(), Loss> {
    let Some(tid) = current_target_tid() else {
        return Ok(());
    };
    emit_sched(tid, what, 0, 0)
}

/// The id of the goroutine whose `g` is at `g`.
#[inline(always)]
fn goid(g: u64) -> Result<u64, Loss> {
    read(g, global(&GO_G_GOID))
}

/// The 8-byte word at `base + offset` in the target's memory (a NULL `base` fails the read).
#[inline(always)]
fn read(base: u64, offset: u32) -> Result<u64, Loss> {
    if base == 0 {
        return Err(Loss::ReadFailed);
    }
    read_user(base.wrapping_add(u64::from(offset)))
}

#[inline(always)]
fn emit_sched(tid: u32, what: u32, goid: u64, detail: u64) -> Result<(), Loss> {
    emit_record(tid, what, goid, detail, NO_STACK, 0)
}

#[inline(always)]
fn emit_record(
    tid: u32,
    what: u32,
    goid: u64,
    detail: u64,
    stack_id: i32,
    caller: u64,
) -> Result<(), Loss> {
    emit(GoSchedEvent {
        hdr: header(EventKind::GoSched, tid),
        goid,
        detail,
        what,
        stack_id,
        caller,
    })
}
