//! One module per probe family.
mod go_tls;
mod sched;
mod syscalls;
mod threads;
mod tls;
