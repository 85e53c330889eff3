//! A target that creates short-lived threads by the thousand every second
//! (`tests/python/thread_churn.py`), traced for real: the tracer's memory stays flat while
//! it traces and when it writes its files, and its output stays bounded (per-lock waiter and
//! waker lists, the summary's size, the console's lines).

use std::time::Duration;

use tracer_tests::{session::Tracer, workspace_root, Workload};

/// Growth allowed while tracing, between an early and a late sample of the tracer's RSS.
const MAX_GROWTH_KB: u64 = 16 * 1024;
/// Growth allowed from that early sample to the peak of the whole run (files written).
const MAX_PEAK_KB: u64 = 48 * 1024;
const MAX_SUMMARY_BYTES: u64 = 256 * 1024;
const MAX_LINE: usize = 4096;
/// What the lock detail lists per futex (`report.rs`).
const LISTED: usize = 10;

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
#[ignore = "needs root"]
fn memory_and_output_stay_bounded_with_many_short_lived_threads() {
    let churn = Workload::spawn_exe(&workspace_root().join("tests/python/thread_churn.py"), &[]);
    let tracer = Tracer::attach(churn.pid).args(["-i", "1"]).start();
    std::thread::sleep(Duration::from_secs(2));
    let early = rss_kb(tracer.pid());
    std::thread::sleep(Duration::from_secs(6));
    let late = rss_kb(tracer.pid());
    let done = tracer.stop();
    assert!(done.status.success(), "tracer failed: {}", done.stderr);

    assert!(
        late <= early + MAX_GROWTH_KB,
        "RSS grew from {early} kB to {late} kB while tracing"
    );
    let peak = u64::try_from(done.summary().collector.max_rss_kb).expect("an RSS in kB");
    // The true peak: not below what the tracer was seen to use while tracing (less 1 MiB:
    // VmRSS and the peak are read from the kernel's approximate per-CPU RSS counters).
    assert!(
        peak + 1024 >= late,
        "peak RSS {peak} kB reported, {late} kB seen while tracing"
    );
    assert!(
        peak <= early + MAX_PEAK_KB,
        "peak RSS {peak} kB against {early} kB while tracing"
    );

    let size = std::fs::metadata(done.out().join("summary.json"))
        .unwrap()
        .len();
    assert!(size <= MAX_SUMMARY_BYTES, "summary.json is {size} bytes");
    for line in done.stdout.lines() {
        assert!(
            line.len() <= MAX_LINE,
            "a console line of {} bytes",
            line.len()
        );
    }

    let locks = &done.summary().locks;
    for l in locks {
        assert!(l.waiters.len() <= LISTED, "{l:?}");
        assert!(l.wakers.len() <= LISTED, "{l:?}");
    }
    // The shared lock, the one with the most waits by threads it does not list: thousands
    // of threads waited on it; they are counted, not listed.
    let shared = locks
        .iter()
        .max_by_key(|l| l.waiters_not_listed.waits)
        .expect("a lock");
    assert!(
        shared.waiters_not_listed.waits >= 100,
        "the most contended lock lists no more than {LISTED} waiters and counts the others' waits: {shared:?}"
    );
    let listed_waits: u64 = shared.waiters.iter().map(|w| w.waits).sum();
    assert_eq!(
        listed_waits + shared.waiters_not_listed.waits,
        shared.waits,
        "every wait is counted: {shared:?}"
    );
}
