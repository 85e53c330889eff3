//! `tracer --pid PID`: attach kernel programs to a running process and attribute each
//! request's latency to a cause: on_cpu, runqueue, lock, net_io, disk_io, sleep, other or
//! tls_handshake.
//!
//! The data flow, one folder per stage:
//!
//! ```text
//!  tracer-ebpf programs ──ring buffer──▶ kernel::ring ──▶ collector ──▶ engine ──▶ output
//!  (sched, sockets,       (records,       (decode to     (drain, reorder (timelines,  (aggregates,
//!   interrupts, uprobes)   losses)         engine events) window, feed)   requests,    live table,
//!         ▲                                                              locks, TLS)  console, files)
//!         └── kernel::Probes loads and attaches them; target:: says what the process is
//! ```
//!
//! - [`kernel`]: load, attach and detach the programs; decode ring-buffer records; read the
//!   kernel's counters (losses, skipped runs, run time); privileges. A request a thread
//!   serves in one stretch on its CPU is delimited and timed by the programs themselves
//!   (tracer-ebpf's `stretch.rs`): it arrives finished, and the collector hands it to the
//!   engine's requests without the reorder window.
//! - [`target`]: what the traced process is: its threads and fds (from /proc), its TLS
//!   libraries (OpenSSL, Go's crypto/tls found in its executable).
//! - [`engine`]: the attribution engine, pure logic fed with time-ordered events: every
//!   execution context's timeline (running, runnable, blocked with a cause), requests
//!   delimited on connections, lock contention, TLS handshakes.
//! - [`collector`]: the pump between the ring buffer and the engine, and from the engine
//!   into the aggregates and the per-request log.
//! - [`output`]: aggregates, the live table and console summary, and the files
//!   (`summary.json`, whose contract is [`output::summary::Summary`]; `latency.hlog`;
//!   `requests.jsonl`).
//! - [`run`]: one trace from the pre-flight checks to the last file; [`cli`]: its options.

pub mod cli;
pub mod collector;
pub mod engine;
pub mod kernel;
pub mod output;
pub mod run;
pub mod symbols;
pub mod target;
