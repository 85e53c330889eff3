//! Socket reads and writes, from `sock:sock_recv_length` and `sock:sock_send_length` as raw
//! tracepoints. They fire inside the syscall that moved the bytes, at its end, on every read
//! and write path of a socket (read/readv/recvfrom/recvmsg, write/writev/sendto/sendmsg,
//! sendfile into a socket: `sock_recvmsg_nosec()`, `sock_sendmsg_nosec()`, net/socket.c,
//! Linux 6.18), so the tracer needs no syscall hook: `raw_syscalls` hooks run for every
//! syscall of every process on the host, and turn on the syscall slow path for all of them.
//! The syscall and its fd come from the thread's saved user registers.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint},
    maps::Array,
    programs::RawTracePointContext,
};
use tracer_common::{
    connection_sampled, is_change_cipher_spec, is_continue_response, is_read, is_write, nr,
    socket_origin, socket_plain, tcp_state, tls_record, tls_record_and_next, EventHeader,
    EventKind, Loss, SyscallEvent, TcpSocket, CONTINUE_RESPONSE_LEN, EAGAIN, FIBONACCI_HASH,
    MSG_PEEK, NO_FD, TLS_RECORD_HEADER,
};

use super::{go_sched::goroutines_followed, sched::report_unseen_switch_in};
use crate::conversation::{note_goroutine_returned, note_returned};
use crate::held_read::{send_read, send_write};
use crate::maps::{
    count_loss, current_syscall_regs, current_target_tid, finish, global, now_ns, read_user,
    report_eagain, sample_one_in, tls_records, TCP_SOCKETS,
};
use crate::stretch::{self, keeps_requests};

/// Which way the bytes went.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Received,
    Sent,
}

/// `TP_PROTO(struct sock *sk, int ret, int flags)` (include/trace/events/sock.h, Linux 6.18).
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> u32 {
    sock_io::<RECEIVED>(&ctx)
}

/// Same prototype as `sock_recv_length`.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> u32 {
    sock_io::<SENT>(&ctx)
}

/// A read or write the kernel side kept (`stretch.rs`), at this time: no record went out.
struct KeptAt(u64);

/// [`sock_io`]'s direction, a constant of each program: each has only its own direction's
/// code for the verifier to follow (a run-time argument of `handle_sock_io` had it follow
/// both in each, at twice the load time).
const RECEIVED: bool = true;
const SENT: bool = false;

#[inline(always)]
fn sock_io<const RECEIVE: bool>(ctx: &RawTracePointContext) -> u32 {
    // What the CPU holds for the collector is looked at after the read or write is handled,
    // in a function of its own: inside the handling, or inline here, the held read's copy
    // overflowed the combined stack of the program's calls (512 bytes). So the handling
    // returns one register, not a `Result` in the caller's stack.
    let kept_at = handle_sock_io::<RECEIVE>(ctx);
    if kept_at != 0 {
        stretch::kept(kept_at);
    }
    0
}

/// Handle a socket read or write, counting a loss if it failed: when the kernel side kept
/// it, the time (0: it went to the collector, or was not the target's to report).
#[inline(never)]
fn handle_sock_io<const RECEIVE: bool>(ctx: &RawTracePointContext) -> u64 {
    let direction = if RECEIVE {
        Direction::Received
    } else {
        Direction::Sent
    };
    match try_sock_io(ctx, direction) {
        Ok(Some(KeptAt(now))) => now,
        Ok(None) => 0,
        Err(loss) => {
            count_loss(loss);
            0
        }
    }
}

/// `None`: the read or write went to the collector, or was not the target's to report.
#[inline(always)]
fn try_sock_io(ctx: &RawTracePointContext, direction: Direction) -> Result<Option<KeptAt>, Loss> {
    let Some(tid) = current_target_tid() else {
        return Ok(None);
    };
    // `int ret`, passed as a u64.
    let ret = ctx.arg::<u64>(1) as i32 as i64;
    if ret == -EAGAIN && !report_eagain() {
        // A non-blocking socket with nothing to do (an event loop's read after each
        // request): no request boundary, and nothing for the conversation, which only bytes
        // moved change. Returns before any other helper call.
        return Ok(None);
    }
    let flags = ctx.arg::<u64>(2);
    if direction == Direction::Received && flags & MSG_PEEK != 0 {
        return Ok(None); // a peek moved nothing: the receive that takes the bytes reports them
    }
    let sock = ctx.arg::<u64>(0);
    if cost_floor() {
        floor_work(sock);
        return Ok(None);
    }
    if !picked(sock) {
        return Ok(None); // `--sample N`: a connection whose requests are not reported
    }
    let tcp = TCP_SOCKETS.get_ptr_mut(sock);
    let io = match tcp {
        // SAFETY: a valid map value pointer; only the target's own threads write `fd` and
        // `plain`, and a stale value costs one record's fd or TLS classification at worst.
        Some(tcp) => unsafe { tcp_socket_io(&mut *tcp, direction, ret)? },
        None => syscall_io(direction, ret)?.map(|(nr, fd, record)| SocketIo {
            nr,
            fd,
            record,
            connection: sock,
            origin: socket_origin::UNKNOWN,
        }),
    };
    let Some(io) = io else {
        return Ok(None); // not a read or write syscall of the thread's own
    };
    if direction == Direction::Sent
        && ret == CONTINUE_RESPONSE_LEN
        && io.origin != socket_origin::TCP_CLIENT
        && writes_continue()
    {
        // An interim `100 Continue`: the request goes on (its body comes next), so this
        // write answers nothing, for the kernel side's requests or the collector's, and the
        // thread's wait for the body is inside the request.
        return Ok(None);
    }
    if goroutines_followed() {
        note_goroutine_returned(io.nr, io.fd, io.connection, io.origin, ret)?;
    } else {
        note_returned(tid, io.nr, io.fd, io.connection, ret)?;
    }
    let now = now_ns();
    if let Some(tcp) = tcp {
        let received = direction == Direction::Received;
        if keeps_requests() && io.record == 0 && stretch::serve(tcp, sock, tid, received, ret, now)
        {
            return Ok(Some(KeptAt(now)));
        }
    }
    report_unseen_switch_in(tid, now);
    let event = SyscallEvent {
        hdr: EventHeader {
            ts_ns: now,
            kind: EventKind::Syscall as u32,
            tid,
        },
        nr: io.nr,
        tls_record: io.record,
        fd: io.fd,
        origin: io.origin,
        ret,
        connection: io.connection,
    };
    match direction {
        Direction::Received => send_read(event),
        Direction::Sent => send_write(event),
    }
    .map(|()| None)
}

/// 1: the bench's cost floor (`TRACER_COST_FLOOR=1`, set by the collector at load time).
#[unsafe(no_mangle)]
static COST_FLOOR: u32 = 0;

#[inline(always)]
fn cost_floor() -> bool {
    global(&COST_FLOOR) != 0
}

/// The cost floor's work on a read or write of the target's: the least any design that times
/// every request does there (the socket's entry looked up, the clock read), then nothing.
/// Both are helper calls, which the compiler keeps though their results go unused.
#[inline(always)]
fn floor_work(sock: u64) {
    let _ = TCP_SOCKETS.get_ptr_mut(sock);
    let _ = now_ns();
}

/// `--sample N`: whether the target's socket at `sock` is a picked connection's (see
/// `tracer_common::connection_sampled`), from its address and its ports. The ports take a
/// kernel read, so the pick is kept in `PICKS` for the socket's next reads and writes.
#[inline(always)]
fn picked(sock: u64) -> bool {
    let one_in = sample_one_in();
    if one_in <= 1 {
        return true;
    }
    let Some(slot) = PICKS.get_ptr_mut(pick_slot(sock)) else {
        return pick(sock, one_in);
    };
    // SAFETY: a valid map value pointer; the entry is one aligned 8-byte word, read and
    // written whole, so no reader sees one socket's address with another's pick.
    unsafe {
        let kept = core::ptr::read_volatile(slot);
        if kept & !PICKED == sock {
            return kept & PICKED != 0;
        }
        let picked = pick(sock, one_in);
        core::ptr::write_volatile(slot, sock | if picked { PICKED } else { 0 });
        picked
    }
}

/// `PICKS`: the pick of a few thousand sockets of the host, each in the slot its address
/// hashes to, as its address (a `struct sock` is aligned, so bit 0 is free) with bit 0 set
/// when picked. Two live sockets in one slot take turns (the pick is the same function of
/// each, so they only cost a read more). A new TCP connection's entry is cleared
/// (`inet_sock_set_state` to SYN_RECV or SYN_SENT), as its `struct sock` may be a closed
/// connection's, with other ports; not at the close, since a read or write may follow it
/// (a read of the reset, or of the end of a connection closed in TIME_WAIT), when the port
/// pair is already cleared (`__inet_put_port()` zeroes the local port, Linux 6.18).
#[map]
static PICKS: Array<u64> = Array::with_max_entries(PICK_SLOTS, 0);

const PICK_SLOTS: u32 = 4096;
const PICKED: u64 = 1;

#[inline(always)]
fn pick_slot(sock: u64) -> u32 {
    (sock.wrapping_mul(FIBONACCI_HASH) >> 52) as u32 & (PICK_SLOTS - 1)
}

/// A new connection's socket forgets the pick kept for an earlier one at its address.
#[inline(always)]
fn forget_pick(sock: u64) {
    if sample_one_in() <= 1 {
        return;
    }
    if let Some(slot) = PICKS.get_ptr_mut(pick_slot(sock)) {
        // SAFETY: as in `picked`.
        unsafe {
            if core::ptr::read_volatile(slot) & !PICKED == sock {
                core::ptr::write_volatile(slot, 0);
            }
        }
    }
}

/// The pick of `sock`, from its address and its ports (one kernel read; an unreadable port
/// pair counts as 0).
#[inline(always)]
fn pick(sock: u64, one_in: u32) -> bool {
    let offset = global(&SOCK_PORTPAIR_OFFSET);
    let ports = if offset == 0 {
        0
    } else {
        // SAFETY: the helper checks the address; a bad one fails the read.
        unsafe { bpf_probe_read_kernel((sock + u64::from(offset)) as *const u32) }.unwrap_or(0)
    };
    connection_sampled(sock, ports, one_in)
}

/// Byte offset of `skc_portpair` in `struct sock` (from BTF; 0: unknown, the address alone).
#[unsafe(no_mangle)]
static SOCK_PORTPAIR_OFFSET: u32 = 0;

/// What a socket read or write reports.
struct SocketIo {
    nr: u32,
    fd: u32,
    /// `tls_record` of its first bytes.
    record: u32,
    connection: u64,
    origin: u32,
}

/// A read or write on a TCP socket the kernel side saw open. The first one of the target
/// reads the syscall from the registers and keeps the fd with the socket; once the socket is
/// known to carry no TLS (its first bytes read were no record header, or `--tls off`),
/// later ones need neither the registers (two helper calls and a read: about 200 ns a run
/// here) nor the record header.
#[inline(always)]
fn tcp_socket_io(
    tcp: &mut TcpSocket,
    direction: Direction,
    ret: i64,
) -> Result<Option<SocketIo>, Loss> {
    let (connection, origin) = (tcp.opened_ns, tcp.origin);
    if tcp.fd != NO_FD && (tcp.plain == socket_plain::PLAIN || !tls_records()) {
        let nr = match direction {
            Direction::Received => nr::READ,
            Direction::Sent => nr::WRITE,
        };
        let fd = tcp.fd;
        return Ok(Some(SocketIo {
            nr,
            fd,
            record: 0,
            connection,
            origin,
        }));
    }
    let Some((nr, fd, record)) = syscall_io(direction, ret)? else {
        return Ok(None);
    };
    tcp.fd = fd;
    // Decided once, by the first bytes read (a TLS peer's reads may later start mid-record:
    // OpenSSL reads a record's header, then its body).
    if direction == Direction::Received
        && ret >= TLS_RECORD_HEADER as i64
        && tcp.plain == socket_plain::UNKNOWN
    {
        tcp.plain = if record == 0 {
            socket_plain::PLAIN
        } else {
            socket_plain::TLS
        };
    }
    Ok(Some(SocketIo {
        nr,
        fd,
        record,
        connection,
        origin,
    }))
}

/// The syscall moving the bytes, from the thread's saved registers: its number, its fd and
/// the TLS classification of the bytes; `None` when it is not a read or write syscall of the
/// thread's own (a kernel-internal socket user, splice, io_uring).
#[inline(always)]
fn syscall_io(direction: Direction, ret: i64) -> Result<Option<(u32, u32, u32)>, Loss> {
    let regs = current_syscall_regs()?;
    let Some(syscall_nr) = regs.syscall() else {
        return Ok(None);
    };
    let matches = match direction {
        Direction::Received => is_read(syscall_nr),
        Direction::Sent => is_write(syscall_nr),
    };
    if !matches {
        return Ok(None);
    }
    let buf = match syscall_nr {
        nr::READ | nr::RECVFROM | nr::WRITE | nr::SENDTO if tls_records() => regs.si,
        _ => 0,
    };
    let record = if buf != 0 && ret >= TLS_RECORD_HEADER as i64 {
        record_header(buf, ret)?
    } else {
        0
    };
    Ok(Some((syscall_nr, regs.di as u32, record)))
}

/// Whether the current write syscall (of [`CONTINUE_RESPONSE_LEN`] bytes) writes an HTTP/1.x
/// `100 Continue` (see `tracer_common::is_continue_response`): its buffer from the saved
/// registers (write and sendto: the second argument; writev and sendmsg: the first
/// `struct iovec`, when it holds the status line). Anything unreadable is no `100 Continue`.
#[inline(always)]
fn writes_continue() -> bool {
    let Ok(regs) = current_syscall_regs() else {
        return false;
    };
    let buf = match regs.syscall() {
        Some(nr::WRITE | nr::SENDTO) => regs.si,
        Some(nr::WRITEV) => first_iov_base(regs.si),
        // `struct msghdr`: `msg_name`, `msg_namelen` (padded to 8), then `msg_iov`.
        Some(nr::SENDMSG) => read_user::<u64>(regs.si + 16).map_or(0, first_iov_base),
        _ => 0,
    };
    buf != 0 && read_user::<[u64; 2]>(buf).is_ok_and(is_continue_response)
}

/// The base of the `struct iovec` at `iov` when it holds at least 16 bytes (0 otherwise).
#[inline(always)]
fn first_iov_base(iov: u64) -> u64 {
    match read_user::<[u64; 2]>(iov) {
        Ok([base, len]) if len >= 16 => base,
        _ => 0,
    }
}

/// `TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)`
/// (include/trace/events/sock.h, Linux 6.18). A listener's child socket enters SYN_RECV when
/// it is created for an incoming handshake (`inet_csk_clone_lock()`), before `accept()` can
/// return it; a connecting socket enters SYN_SENT in `connect()`; every TCP socket ends in
/// CLOSE. It fires a few times per TCP connection of the host, often in softirq context (so
/// no target filter is possible here).
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> u32 {
    finish(try_inet_sock_set_state(&ctx))
}

fn try_inet_sock_set_state(ctx: &RawTracePointContext) -> Result<(), Loss> {
    let sock = ctx.arg::<u64>(0);
    let origin = match ctx.arg::<u64>(2) as u32 {
        tcp_state::SYN_RECV => socket_origin::TCP_SERVER,
        tcp_state::SYN_SENT => socket_origin::TCP_CLIENT,
        tcp_state::CLOSE => {
            if keeps_requests() {
                // SAFETY: a valid map value, read before its removal.
                if let Some(tcp) = unsafe { TCP_SOCKETS.get(sock) } {
                    stretch::end_on_close(tcp, now_ns());
                }
            }
            let _ = TCP_SOCKETS.remove(sock); // none when it opened before the tracer
            return Ok(());
        }
        _ => return Ok(()),
    };
    // A new connection: its `struct sock` may be a closed one's, whose pick it must not take.
    forget_pick(sock);
    let socket = TcpSocket {
        opened_ns: unsafe { bpf_ktime_get_ns() },
        origin,
        fd: NO_FD,
        plain: socket_plain::UNKNOWN,
        ..Default::default()
    };
    // An LRU map: full, it forgets its oldest socket instead of failing.
    TCP_SOCKETS
        .insert(sock, socket, 0)
        .map_err(|_| Loss::MapFull)
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
    read_user(addr)
}
