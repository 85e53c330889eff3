//! Kernel programs of the tracer. One file per probe family under `probes/`; maps, load-time
//! globals and the event-emitting helpers in `maps.rs`.
//!
//! Every program filters to the target first thing: either the current task belongs to the
//! target's thread group (`TARGET_TGID`), or the task the event is about is in `TARGET_TIDS`.
#![no_std]
#![no_main]

mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
