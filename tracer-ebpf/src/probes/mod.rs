//! One module per probe family.
mod go_sched;
mod go_tls;
mod interrupts;
mod sched;
mod sockets;
mod threads;
mod tls;
