//! One module per probe family.
mod sched;
mod syscalls;
mod threads;
mod tls;
