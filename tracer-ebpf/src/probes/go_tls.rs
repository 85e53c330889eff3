//! TLS handshakes in Go's `crypto/tls`: uprobes on the entry of `(*Conn).serverHandshake` and
//! `(*Conn).clientHandshake`, and on every RET instruction of them (the collector decodes the
//! functions to find those). Never a uretprobe: a uretprobe rewrites the return address on
//! the stack, and Go moves goroutine stacks, which crashes the target.
//!
//! A goroutine is identified by its `g` pointer, which Go's register ABI (Go 1.17+, amd64)
//! keeps in r14 in all Go code. At a RET, rax holds the first word of the returned `error`
//! (its type: zero means nil, the handshake succeeded). Nothing else is read.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use tracer_common::{tls, Loss};

use super::tls::emit_tls;
use crate::maps::{current_target_tid, finish};

/// Entry of `crypto/tls.(*Conn).serverHandshake`.
#[uprobe]
pub fn go_server_handshake_enter(ctx: ProbeContext) -> u32 {
    finish(report(&ctx, tls::GO_SERVER_ENTER))
}

/// Entry of `crypto/tls.(*Conn).clientHandshake`.
#[uprobe]
pub fn go_client_handshake_enter(ctx: ProbeContext) -> u32 {
    finish(report(&ctx, tls::GO_CLIENT_ENTER))
}

/// A RET instruction of either function.
#[uprobe]
pub fn go_handshake_return(ctx: ProbeContext) -> u32 {
    finish(report(&ctx, tls::GO_RETURN))
}

#[inline(always)]
fn report(ctx: &ProbeContext, what: u32) -> Result<(), Loss> {
    let Some(tid) = current_target_tid() else {
        return Ok(());
    };
    // SAFETY: direct loads from the probe context (the user registers at the probe).
    let (g, rax) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rax) };
    // At a RET: 0 when the returned error is nil. At an entry: not meaningful.
    let ret = if what == tls::GO_RETURN {
        rax as i64
    } else {
        0
    };
    emit_tls(tid, g, what, ret)
}
