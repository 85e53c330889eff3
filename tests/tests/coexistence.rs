//! The tracer shares the host with other tools. A perf-event tracepoint program that returns
//! 0 drops the samples and counts of every perf event on that tracepoint
//! (`perf_trace_run_bpf_submit()`, kernel/events/core.c), so while a tracer built that way
//! is attached, `perf record -e sched:sched_switch` or `perf stat` sees nothing. The
//! scheduler programs are raw tracepoints, which leave the tracepoint's perf events alone:
//! this test counts `sched:sched_switch` with its own perf event while the tracer is
//! attached.

use std::time::Duration;

use tracer_tests::{session::Tracer, Workload};

/// `PERF_TYPE_TRACEPOINT` (include/uapi/linux/perf_event.h).
const PERF_TYPE_TRACEPOINT: u32 = 2;
/// A `perf_event_attr` of the first published size (`PERF_ATTR_SIZE_VER0`): type, size,
/// config, then fields left zero (counting, enabled, kernel included).
const ATTR_SIZE: u32 = 64;
const SLEEPS: u64 = 100;

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

#[test]
#[ignore = "needs root"]
fn perf_still_counts_the_scheduler_tracepoints_while_the_tracer_is_attached() {
    let mut workload = Workload::spawn();
    let session = Tracer::attach(workload.pid).start();
    // The tracer has mounted tracefs if it was not.
    let id: u64 = std::fs::read_to_string("/sys/kernel/tracing/events/sched/sched_switch/id")
        .expect("sched_switch id")
        .trim()
        .parse()
        .expect("a number");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i32;
    let counters: Vec<_> = (0..cpus).map(|cpu| count_tracepoint(id, cpu)).collect();
    // Each sleep switches this thread out at least once: a floor that holds however the
    // CPUs are busy (how many more switches the host makes meanwhile varies).
    for _ in 0..SLEEPS {
        std::thread::sleep(Duration::from_millis(1));
    }
    let switches: u64 = counters.iter().map(read_count).sum();
    let done = session.stop();
    workload.child.kill().ok();
    assert!(
        switches >= SLEEPS,
        "perf counted {switches} sched_switch events during {SLEEPS} sleeps with the tracer attached: {}",
        done.describe()
    );
}
