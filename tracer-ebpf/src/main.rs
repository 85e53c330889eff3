//! Kernel programs of the tracer. One file per probe family under `probes/`; maps, load-time
//! globals and the event-emitting helpers in `maps.rs`; the held socket read that pairs a
//! request's read with its response's write in one record in `held_read.rs`; each running
//! target thread's conversation, kept per CPU, in `conversation.rs`; the requests a thread
//! serves in one stretch on its CPU, delimited and timed in the kernel, in `stretch.rs`.
//!
//! Every program filters to the target first thing: either the current task belongs to the
//! target's thread group (`TARGET_TGID`), or the task the event is about is in `TARGET_TIDS`.
// Built for the BPF target by aya-build; a host build (`cargo build --workspace`) compiles the
// same code as an empty program.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Inline assembly where the verifier must see a bound the compiler would otherwise lose.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod conversation;
mod held_read;
mod maps;
mod probes;
mod stretch;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
