//! Each target thread's [`Conversation`] (which connection it answers, and whether it has
//! answered it), kept by its socket reads and writes and read when it blocks, to decide
//! whether that wait is inside a request (a stack is taken) or between requests.
//!
//! A thread's conversation lives in `CONVERSATIONS`, a hash map keyed by tid, while the
//! thread is off its CPU, and in its CPU's slot (`CPU_CONVERSATION`) while it runs: a busy
//! server makes several socket reads and writes per time on the CPU, and a per-CPU array
//! access costs a fraction of a hash-map update (about 80 ns a read or write on the nginx
//! bench). The slot is loaded from the map at the thread's first socket read or write on the
//! CPU, and stored back, if changed, at its switch-out, exit or when another target thread
//! takes the slot. The thread that owns the slot is the CPU's current task until its
//! switch-out, so the map is current whenever the thread can run elsewhere.
//!
//! Only tracepoint programs use the slot (socket I/O, `sched_switch`, thread exit): they run
//! with preemption disabled and never from an interrupt here, so they cannot interleave on it
//! (as `held_read.rs`).
//!
//! In a Go target the conversation is a goroutine's, not a thread's: the goroutine reads the
//! request and writes its answer, on whichever threads run it, and waits by parking, with no
//! kernel event. `GO_CONVERSATIONS` holds each goroutine's, keyed by its `g` (read from the
//! registers its socket syscall entered the kernel with), and the park probe asks it whether
//! the park is inside a request. A goroutine that never read a request (net/http's background
//! reader, a lock holder, the runtime's workers) is never inside one: its parks take no
//! stack, the engine's goroutine requests being the reading goroutine's (an HTTP/2 stream's
//! handler is marked inside one by its probe).

use aya_ebpf::{macros::map, maps::PerCpuArray};
use tracer_common::{socket_origin, Conversation, Loss, NO_FD};

use crate::maps::{current_user_g, set, CONVERSATIONS, GO_CONVERSATIONS};

/// A CPU's running target thread's conversation (`tid` 0: none).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CachedConversation {
    tid: u32,
    /// 1: changed since loaded from `CONVERSATIONS`.
    dirty: u32,
    conversation: Conversation,
}

#[map]
static CPU_CONVERSATION: PerCpuArray<CachedConversation> = PerCpuArray::with_max_entries(1, 0);

/// Thread `tid` (the current task) moved socket bytes: see [`Conversation::returned`].
#[inline(always)]
pub fn note_returned(
    tid: u32,
    syscall_nr: u32,
    fd: u32,
    connection: u64,
    ret: i64,
) -> Result<(), Loss> {
    let slot = CPU_CONVERSATION.get_ptr_mut(0).ok_or(Loss::MapFull)?;
    // SAFETY: this CPU's slot, used only by programs that cannot interleave on it (see the
    // module's documentation).
    unsafe {
        if (*slot).tid != tid {
            store_back(&mut *slot);
            (*slot).conversation = CONVERSATIONS.get(tid).copied().unwrap_or_default();
            (*slot).tid = tid;
        }
        (*slot)
            .conversation
            .returned(syscall_nr, fd, connection, ret);
        (*slot).dirty = 1;
    }
    Ok(())
}

/// Thread `tid` (the current task), which just moved socket bytes (its conversation is in
/// this CPU's slot), starts a stretch on its CPU with `switches` voluntary context switches so
/// far: whether it had as many when its last such stretch began, so that it has not blocked
/// since (a read that starts this stretch did not wait for its bytes).
#[inline(always)]
pub fn unblocked_since_last_stretch(tid: u32, switches: u64) -> bool {
    let Some(slot) = CPU_CONVERSATION.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: as in `note_returned`.
    unsafe {
        if (*slot).tid != tid {
            return false;
        }
        let conversation = &mut (*slot).conversation;
        let same = conversation.voluntary_switches == switches;
        conversation.voluntary_switches = switches;
        (*slot).dirty = 1;
        same
    }
}

/// Thread `tid` (the current task) blocks in a read of `fd` at `now`, with `switches`
/// context switches (blocks and preemptions) counting this one: noted in its conversation,
/// in this CPU's slot when it holds it (the thread moved socket bytes in this time on the
/// CPU), else in
/// `CONVERSATIONS` in place (it was preempted after its last socket write, and got the CPU
/// back only to block). A thread that never moved socket bytes has none: the read that ends
/// this block is then judged as any other (see [`blocked_in_this_read`]).
#[inline(always)]
pub fn note_blocked_reading(tid: u32, fd: u32, switches: u64, now: u64) {
    let Some(slot) = CPU_CONVERSATION.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in `note_returned`; an entry of the map is written only by its thread,
    // which is this CPU's current task.
    unsafe {
        let conversation = if (*slot).tid == tid {
            (*slot).dirty = 1;
            &mut (*slot).conversation
        } else {
            let Some(stored) = CONVERSATIONS.get_ptr_mut(tid) else {
                return;
            };
            &mut *stored
        };
        conversation.blocked_read_fd = fd;
        conversation.blocked_at_ns = now;
        conversation.blocked_switches = switches;
    }
}

/// Thread `tid` (the current task, its conversation in this CPU's slot) read bytes of `fd`
/// with `switches` context switches (blocks and preemptions) so far: when its last block
/// noted was in a read of `fd` and it has not left its CPU since, this read is the one that
/// blocked, and this is when it blocked.
#[inline(always)]
pub fn blocked_in_this_read(tid: u32, fd: u32, switches: u64) -> Option<u64> {
    let slot = CPU_CONVERSATION.get_ptr(0)?;
    // SAFETY: as in `note_returned`.
    unsafe {
        let conversation = &(*slot).conversation;
        ((*slot).tid == tid
            && conversation.blocked_read_fd == fd
            && conversation.blocked_switches == switches)
            .then_some(conversation.blocked_at_ns)
    }
}

/// Thread `tid` (the current task) is switching out: when this CPU's slot holds its
/// conversation, it is stored back to `CONVERSATIONS` (the thread may next run elsewhere) and
/// returned. `None`: it moved no socket bytes in this time on the CPU; its conversation, if
/// any, is the stored one ([`stored_conversation`]).
#[inline(always)]
pub fn store_running_conversation(tid: u32) -> Option<Conversation> {
    let slot = CPU_CONVERSATION.get_ptr_mut(0)?;
    // SAFETY: as in `note_returned`.
    unsafe {
        if (*slot).tid != tid {
            return None;
        }
        let conversation = (*slot).conversation;
        store_back(&mut *slot);
        Some(conversation)
    }
}

/// Thread `tid` has moved socket bytes since the tracer attached: its conversation is in
/// this CPU's slot (it is the current task) or in `CONVERSATIONS`.
#[inline(always)]
pub fn has_conversation(tid: u32) -> bool {
    let in_slot = CPU_CONVERSATION
        .get_ptr(0)
        // SAFETY: this CPU's slot, read once (see the module's documentation).
        .is_some_and(|slot| unsafe { (*slot).tid } == tid);
    in_slot || stored_conversation(tid).is_some()
}

/// The conversation of thread `tid`, off its CPU. `None`: it has moved no socket bytes since
/// the tracer attached.
#[inline(always)]
pub fn stored_conversation(tid: u32) -> Option<Conversation> {
    unsafe { CONVERSATIONS.get(tid) }.copied()
}

/// Thread `tid` (the current task) is exiting: its conversation goes with it (a reused tid
/// starts with none).
#[inline(always)]
pub fn forget_conversation(tid: u32) {
    if let Some(slot) = CPU_CONVERSATION.get_ptr_mut(0) {
        // SAFETY: as in `note_returned`.
        unsafe {
            if (*slot).tid == tid {
                (*slot).tid = 0;
                (*slot).dirty = 0;
            }
        }
    }
    // None when the thread never moved socket bytes since the tracer attached.
    let _ = CONVERSATIONS.remove(tid);
}

/// Empty the slot, storing its conversation back to the map if it changed. The map holds an
/// entry per target thread (`MAX_TARGET_THREADS`, the bound of the thread-id set too), so a
/// failed store is a thread beyond that bound: its later waits are judged with no
/// conversation (a stack taken between requests at worst), and no event is lost.
#[inline(always)]
fn store_back(slot: &mut CachedConversation) {
    let (tid, dirty) = (slot.tid, slot.dirty);
    slot.tid = 0;
    slot.dirty = 0;
    if tid != 0 && dirty != 0 {
        let _ = set(&CONVERSATIONS, tid, slot.conversation);
    }
}

/// The current thread of a Go target moved socket bytes for the goroutine it runs: see
/// [`Conversation::returned`]. A write by a goroutine with no conversation answers nothing,
/// and is not stored. The bytes of a connection the target opened (`origin`
/// `TCP_CLIENT`: a backend call inside the request) leave the conversation as it was: the
/// request is still the one read from its client.
#[inline(always)]
pub fn note_goroutine_returned(
    syscall_nr: u32,
    fd: u32,
    connection: u64,
    origin: u32,
    ret: i64,
) -> Result<(), Loss> {
    if origin == socket_origin::TCP_CLIENT {
        return Ok(());
    }
    let g = current_user_g()?;
    match GO_CONVERSATIONS.get_ptr_mut(g) {
        // SAFETY: a valid map value pointer; only the goroutine's own (running) thread writes it.
        Some(conversation) => unsafe { (*conversation).returned(syscall_nr, fd, connection, ret) },
        None => {
            let mut conversation = Conversation::default();
            conversation.returned(syscall_nr, fd, connection, ret);
            if conversation.request_fd != NO_FD {
                // A full map evicts its least recently used goroutine: never a loss.
                let _ = GO_CONVERSATIONS.insert(g, conversation, 0);
            }
        }
    }
    Ok(())
}

/// The goroutine whose `g` is `g` has read a request it has not answered yet.
#[inline(always)]
pub fn goroutine_in_request(g: u64) -> bool {
    // SAFETY: a valid map value pointer, read once.
    unsafe { GO_CONVERSATIONS.get(g) }.is_some_and(|c| c.in_request())
}

/// The goroutine `g`'s conversation is `conversation` from now, whatever it had: an HTTP/2
/// stream's handler is inside the stream's request (with no socket read of its own), and a
/// connection's goroutines, which move every stream's frames, are never inside one.
#[inline(always)]
pub fn set_goroutine_conversation(g: u64, conversation: Conversation) {
    let _ = GO_CONVERSATIONS.insert(g, conversation, 0);
}

/// The goroutine `g` exits: its `g` will be reused by a goroutine that has read nothing yet.
#[inline(always)]
pub fn forget_goroutine(g: u64) {
    let _ = GO_CONVERSATIONS.remove(g);
}
