//! TLS handshakes in OpenSSL (shared `libssl` or linked into the executable), with uprobes on
//! its exported functions. A connection is keyed by its `SSL*`; once a call on it returns
//! success the handshake is over and later calls cost only a map lookup. Only the `SSL*` and
//! return values are read, never a buffer.

use aya_ebpf::{
    bindings::BPF_ANY,
    macros::{map, uprobe, uretprobe},
    maps::{HashMap, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{tls, EventKind, Loss, TlsEvent, MAX_TARGET_THREADS, MAX_TLS_CONNECTIONS_DONE};

use crate::maps::{count_loss, current_ids, emit, header, target_tgid};

/// `SSL*`s whose handshake has completed.
#[map]
static TLS_DONE: LruHashMap<u64, u8> = LruHashMap::with_max_entries(MAX_TLS_CONNECTIONS_DONE, 0);

/// The `SSL*` of the TLS call each thread is inside (for the return probe).
#[map]
static TLS_CALL: HashMap<u32, u64> = HashMap::with_max_entries(MAX_TARGET_THREADS, 0);

/// Entry of SSL_do_handshake / SSL_accept / SSL_connect.
#[uprobe]
pub fn ssl_handshake_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, tls::HANDSHAKE_ENTER);
    0
}

/// Entry of SSL_read / SSL_read_ex / SSL_peek.
#[uprobe]
pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, tls::READ_ENTER);
    0
}

/// Entry of SSL_write / SSL_write_ex.
#[uprobe]
pub fn ssl_write_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, tls::WRITE_ENTER);
    0
}

#[inline(always)]
fn enter(ctx: &ProbeContext, what: u32) {
    let (tgid, tid) = current_ids();
    if tgid != target_tgid() {
        return;
    }
    let Some(ssl) = ctx.arg::<u64>(0) else {
        count_loss(Loss::ReadFailed);
        return;
    };
    if unsafe { TLS_DONE.get(ssl) }.is_some() {
        return; // an established connection
    }
    if TLS_CALL.insert(tid, ssl, u64::from(BPF_ANY)).is_err() {
        count_loss(Loss::MapFull);
    }
    emit(TlsEvent {
        hdr: header(EventKind::Tls, tid),
        handle: ssl,
        what,
        _pad: 0,
        ret: 0,
    });
}

/// Return of every function above (a uretprobe: fine for C code, whose stack does not move).
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    let (tgid, tid) = current_ids();
    if tgid != target_tgid() {
        return 0;
    }
    let Some(ssl) = (unsafe { TLS_CALL.get(tid) }).copied() else {
        return 0; // not inside a call we reported (an established connection)
    };
    let _ = TLS_CALL.remove(tid);
    let ret = ctx.ret::<u64>() as i32 as i64; // all of them return an int
    if ret > 0 && TLS_DONE.insert(ssl, 1, u64::from(BPF_ANY)).is_err() {
        count_loss(Loss::MapFull);
    }
    emit(TlsEvent {
        hdr: header(EventKind::Tls, tid),
        handle: ssl,
        what: tls::RETURN,
        _pad: 0,
        ret,
    });
    0
}

/// Entry of SSL_free: the `SSL*` may be reused for a new connection.
#[uprobe]
pub fn ssl_free(ctx: ProbeContext) -> u32 {
    let (tgid, tid) = current_ids();
    if tgid != target_tgid() {
        return 0;
    }
    let Some(ssl) = ctx.arg::<u64>(0) else {
        return 0;
    };
    if TLS_DONE.remove(ssl).is_ok() {
        return 0; // a completed handshake: the collector holds nothing for it
    }
    emit(TlsEvent {
        hdr: header(EventKind::Tls, tid),
        handle: ssl,
        what: tls::FREE,
        _pad: 0,
        ret: 0,
    });
    0
}
