//! The kernel side, seen from userspace: loading the programs (`tracer-ebpf`) and attaching
//! them to the target ([`Probes`]), the records they send through the ring buffer decoded and
//! put back in time order ([`ring`]), and what the kernel counts for us (losses, skipped runs,
//! per-program run time).

mod btf;
mod counters;
mod limits;
pub mod privileges;
mod probes;
pub mod ring;
mod seed;
pub mod stacks;
mod uprobe_multi;
pub mod uprobes;

pub use counters::ProgramStat;
pub use probes::{cost_floor_requested, names_wakers_only, Gathered, Probes};

/// The `bpf()` syscall: its non-negative result (a new fd, or 0), or the error.
///
/// # Safety
/// `attr` must be a valid `bpf_attr` for `cmd`, and every pointer in it live for the call.
unsafe fn bpf_syscall(
    cmd: aya_obj::generated::bpf_cmd,
    attr: &mut aya_obj::generated::bpf_attr,
) -> std::io::Result<libc::c_long> {
    // SAFETY: the caller's promise.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            std::mem::size_of::<aya_obj::generated::bpf_attr>(),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
