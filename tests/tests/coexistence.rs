//! The tracer shares the host with other tools. A perf-event tracepoint program that returns
//! 0 drops the samples and counts of every perf event on that tracepoint
//! (`perf_trace_run_bpf_submit()`, kernel/events/core.c), so while a tracer built that way
//! is attached, `perf record -e sched:sched_switch` or `perf stat` sees nothing. Every program
//! is a raw tracepoint, which leaves the tracepoint's perf events alone: this test counts
//! `sched:sched_switch`, `task:task_newtask` and `sched:sched_process_exit` with its own perf
//! events while the tracer is attached.

use std::time::Duration;

use tracer_tests::{session::Tracer, support::ensure_tracefs_mounted, Workload};

/// `PERF_TYPE_TRACEPOINT` (include/uapi/linux/perf_event.h).
const PERF_TYPE_TRACEPOINT: u32 = 2;
/// A `perf_event_attr` of the first published size (`PERF_ATTR_SIZE_VER0`): type, size,
/// config, then fields left zero (counting, enabled, kernel included).
const ATTR_SIZE: u32 = 64;
const SLEEPS: u64 = 100;
/// Threads this test starts and joins while counting.
const THREADS: u64 = 20;

/// A system-wide counter of tracepoint `id` on `cpu`.
fn count_tracepoint(id: u64, cpu: i32) -> std::fs::File {
    let mut attr = [0u64; ATTR_SIZE as usize / 8];
    attr[0] = u64::from(PERF_TYPE_TRACEPOINT) | u64::from(ATTR_SIZE) << 32;
    attr[1] = id;
    // SAFETY: perf_event_open(attr, pid = -1 (every task), cpu, group = -1, flags = 0).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1i32,
            cpu,
            -1i32,
            0u64,
        )
    };
    assert!(
        fd >= 0,
        "perf_event_open: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new fd this process owns.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) }
}

fn read_count(mut counter: &std::fs::File) -> u64 {
    use std::io::Read as _;
    let mut bytes = [0u8; 8];
    counter.read_exact(&mut bytes).expect("read counter");
    u64::from_ne_bytes(bytes)
}

/// The tracepoint `category:name`'s id (tracefs is this test's own need: perf names
/// tracepoints by it; the tracer needs none).
fn tracepoint_id(category: &str, name: &str) -> u64 {
    let path = format!("/sys/kernel/tracing/events/{category}/{name}/id");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .parse()
        .expect("a number")
}

/// A counter of the tracepoint on every CPU.
fn count_everywhere(id: u64) -> Vec<std::fs::File> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i32;
    (0..cpus).map(|cpu| count_tracepoint(id, cpu)).collect()
}

fn total(counters: &[std::fs::File]) -> u64 {
    counters.iter().map(read_count).sum()
}

#[test]
#[ignore = "needs root"]
fn perf_still_counts_the_tracers_tracepoints_while_it_is_attached() {
    ensure_tracefs_mounted().expect("tracefs, to name the tracepoints to perf");
    let mut workload = Workload::spawn();
    let session = Tracer::attach(workload.pid).start();
    let switches = count_everywhere(tracepoint_id("sched", "sched_switch"));
    let new_tasks = count_everywhere(tracepoint_id("task", "task_newtask"));
    let exits = count_everywhere(tracepoint_id("sched", "sched_process_exit"));
    // Each sleep switches this thread out at least once, and each thread started is one new
    // task and one exit: floors that hold however busy the host is meanwhile.
    for _ in 0..SLEEPS {
        std::thread::sleep(Duration::from_millis(1));
    }
    for _ in 0..THREADS {
        std::thread::spawn(|| ())
            .join()
            .expect("a thread that does nothing");
    }
    let (switches, new_tasks, exits) = (total(&switches), total(&new_tasks), total(&exits));
    let done = session.stop();
    workload.child.kill().ok();
    assert!(
        switches >= SLEEPS,
        "perf counted {switches} sched_switch events during {SLEEPS} sleeps with the tracer attached: {}",
        done.describe()
    );
    assert!(
        new_tasks >= THREADS && exits >= THREADS,
        "perf counted {new_tasks} task_newtask and {exits} sched_process_exit events for {THREADS} threads with the tracer attached: {}",
        done.describe()
    );
}
