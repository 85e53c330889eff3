//! The kernel programs' map sizes are named limits in `tracer_common` (`MAX_TARGET_THREADS`,
//! `MAX_TLS_CONNECTIONS_DONE`, ...). They are checked once the object is loaded, before
//! anything is attached: a kernel object whose maps were built with other sizes than this
//! collector's, and a target with more threads than the per-thread maps hold, are refused with a
//! one-line error.

use super::seed::target_threads;
use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Map, MapData},
    Ebpf,
};
use tracer_common::{
    LOSS_KINDS, MAX_GOROUTINE_CONVERSATIONS, MAX_TARGET_THREADS, MAX_TCP_SOCKETS,
    MAX_TLS_CONNECTIONS_DONE, RING_BYTES,
};

/// Each map whose size the collector relies on, and that size (`max_entries`; bytes for the
/// ring buffer). `TARGET_TIDS` and the stack maps are sized by the collector when it loads
/// the object.
const MAP_SIZES: [(&str, u32); 8] = [
    ("EVENTS", RING_BYTES),
    ("LOSSES", LOSS_KINDS),
    ("CONVERSATIONS", MAX_TARGET_THREADS),
    ("GO_CONVERSATIONS", MAX_GOROUTINE_CONVERSATIONS),
    ("WAKERS", MAX_TARGET_THREADS),
    ("TLS_CALL", MAX_TARGET_THREADS),
    ("TLS_DONE", MAX_TLS_CONNECTIONS_DONE),
    ("TCP_SOCKETS", MAX_TCP_SOCKETS),
];

/// Refuse a loaded kernel object whose maps differ in size from the `tracer_common` limits,
/// or a target (`pid`) that already has more threads than `TARGET_TIDS` holds.
pub fn check(ebpf: &Ebpf, pid: u32) -> Result<()> {
    for (name, expected) in MAP_SIZES {
        let map = ebpf
            .map(name)
            .with_context(|| format!("map {name} missing from the kernel programs"))?;
        let info = map_data(map)
            .with_context(|| format!("map {name} has an unexpected type"))?
            .info()
            .with_context(|| format!("reading the size of map {name}"))?;
        same_size(name, info.max_entries(), expected)?;
    }
    let threads = target_threads(pid)
        .with_context(|| format!("listing the threads of PID {pid}"))?
        .len();
    threads_fit(pid, threads)
}

/// The map types the kernel programs use.
fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::RingBuf(m)
        | Map::StackTraceMap(m) => Some(m),
        _ => None,
    }
}

fn same_size(name: &str, actual: u32, expected: u32) -> Result<()> {
    if actual != expected {
        bail!(
            "the kernel programs do not match this tracer: map {name} has max_entries {actual}, tracer-common says {expected}; rebuild both with `cargo xtask build`"
        );
    }
    Ok(())
}

fn threads_fit(pid: u32, threads: usize) -> Result<()> {
    if threads > MAX_TARGET_THREADS as usize {
        bail!(
            "PID {pid} has {threads} threads, more than the {MAX_TARGET_THREADS} the kernel programs can follow: raise MAX_TARGET_THREADS in tracer-common and rebuild with `cargo xtask build`"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_of_another_size_is_refused_in_one_line() {
        assert!(same_size("CONVERSATIONS", MAX_TARGET_THREADS, MAX_TARGET_THREADS).is_ok());
        let e = same_size("CONVERSATIONS", 1024, MAX_TARGET_THREADS).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("CONVERSATIONS has max_entries 1024"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn a_target_with_more_threads_than_the_map_holds_is_refused() {
        let limit = MAX_TARGET_THREADS as usize;
        assert!(threads_fit(7, limit).is_ok());
        let msg = format!("{:#}", threads_fit(7, limit + 1).unwrap_err());
        assert!(
            msg.starts_with(&format!("PID 7 has {} threads", limit + 1)),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }
}
