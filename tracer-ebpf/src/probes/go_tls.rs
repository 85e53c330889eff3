//! TLS handshakes in Go's `crypto/tls`: uprobes on the entry of `(*Conn).serverHandshake` and
//! `(*Conn).clientHandshake`, and on every RET instruction of them (the collector decodes the
//! functions to find those). Never a uretprobe: a uretprobe rewrites the return address on
//! the stack, and Go moves goroutine stacks, which crashes the target.
//!
//! A goroutine is identified by its `g` pointer, which Go's register ABI (Go 1.17+, amd64)
//! keeps in r14 in all Go code. At a RET, rax holds the first word of the returned `error`
//! (its type: zero means nil, the handshake succeeded). Nothing else is read.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use tracer_common::{tls, EventKind, TlsEvent};

use crate::maps::{current_ids, emit, header, target_tgid};

/// Entry of `crypto/tls.(*Conn).serverHandshake`.
#[uprobe]
pub fn go_server_handshake_enter(ctx: ProbeContext) -> u32 {
    report(&ctx, tls::GO_SERVER_ENTER);
    0
}

/// Entry of `crypto/tls.(*Conn).clientHandshake`.
#[uprobe]
pub fn go_client_handshake_enter(ctx: ProbeContext) -> u32 {
    report(&ctx, tls::GO_CLIENT_ENTER);
    0
}

/// A RET instruction of either function.
#[uprobe]
pub fn go_handshake_return(ctx: ProbeContext) -> u32 {
    report(&ctx, tls::GO_RETURN);
    0
}

#[inline(always)]
fn report(ctx: &ProbeContext, what: u32) {
    let (tgid, tid) = current_ids();
    if tgid != target_tgid() {
        return;
    }
    // A direct load from the probe context (the user registers at the probe).
    let (g, rax) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rax) };
    emit(TlsEvent {
        hdr: header(EventKind::Tls, tid),
        handle: g,
        what,
        _pad: 0,
        // At a RET: 0 when the returned error is nil. At an entry: not meaningful.
        ret: if what == tls::GO_RETURN {
            rax as i64
        } else {
            0
        },
    });
}
