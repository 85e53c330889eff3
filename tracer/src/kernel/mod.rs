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
pub use probes::{names_wakers_only, Gathered, Probes};
