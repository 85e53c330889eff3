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

use crate::maps::{current_target_tid, emit, finish, header, insert};

/// `SSL*`s whose handshake has completed.
#[map]
static TLS_DONE: LruHashMap<u64, u8> = LruHashMap::with_max_entries(MAX_TLS_CONNECTIONS_DONE, 0);

/// The `SSL*` of the TLS call each thread is inside (for the return probe).
#[map]
static TLS_CALL: HashMap<u32, u64> = HashMap::with_max_entries(MAX_TARGET_THREADS, 0);

/// Entry of SSL_do_handshake / SSL_accept / SSL_connect.
#[uprobe]
pub fn ssl_handshake_enter(ctx: ProbeContext) -> u32 {
    finish(enter(&ctx, tls::HANDSHAKE_ENTER))
}

/// Entry of SSL_read / SSL_read_ex / SSL_peek.
#[uprobe]
pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
    finish(enter(&ctx, tls::READ_ENTER))
}

/// Entry of SSL_write / SSL_write_ex.
#[uprobe]
pub fn ssl_write_enter(ctx: ProbeContext) -> u32 {
    finish(enter(&ctx, tls::WRITE_ENTER))
}

#[inline(always)]
fn enter(ctx: &ProbeContext, what: u32) -> Result<(), Loss> {
    let Some(tid) = current_target_tid() else {
        return Ok(());
    };
    let ssl = ctx.arg::<u64>(0).ok_or(Loss::ReadFailed)?;
    if unsafe { TLS_DONE.get(ssl) }.is_some() {
        return Ok(()); // an established connection
    }
    insert(&TLS_CALL, tid, ssl)?;
    emit_tls(tid, ssl, what, 0)
}

/// Return of every function above (a uretprobe: fine for C code, whose stack does not move).
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    finish(try_ssl_return(&ctx))
}

fn try_ssl_return(ctx: &RetProbeContext) -> Result<(), Loss> {
    let Some(tid) = current_target_tid() else {
        return Ok(());
    };
    let Some(ssl) = (unsafe { TLS_CALL.get(tid) }).copied() else {
        return Ok(()); // not inside a call we reported (an established connection)
    };
    let _ = TLS_CALL.remove(tid); // just found: only this thread's programs touch its entry
    let ret = ctx.ret::<u64>() as i32 as i64; // all of them return an int
    if ret > 0 {
        TLS_DONE
            .insert(ssl, 1, u64::from(BPF_ANY))
            .map_err(|_| Loss::MapFull)?;
    }
    emit_tls(tid, ssl, tls::RETURN, ret)
}

/// Entry of SSL_free: the `SSL*` may be reused for a new connection.
#[uprobe]
pub fn ssl_free(ctx: ProbeContext) -> u32 {
    finish(try_ssl_free(&ctx))
}

fn try_ssl_free(ctx: &ProbeContext) -> Result<(), Loss> {
    let Some(tid) = current_target_tid() else {
        return Ok(());
    };
    let ssl = ctx.arg::<u64>(0).ok_or(Loss::ReadFailed)?;
    if TLS_DONE.remove(ssl).is_ok() {
        return Ok(()); // a completed handshake: the collector holds nothing for it
    }
    emit_tls(tid, ssl, tls::FREE, 0)
}

/// Report a TLS call of thread `tid` (OpenSSL's here, Go's in `go_tls`).
#[inline(always)]
pub(super) fn emit_tls(tid: u32, handle: u64, what: u32, ret: i64) -> Result<(), Loss> {
    emit(TlsEvent {
        hdr: header(EventKind::Tls, tid),
        handle,
        what,
        _pad: 0,
        ret,
    })
}
