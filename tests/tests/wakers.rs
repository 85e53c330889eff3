//! Who woke a blocked thread, checked on a third-party threaded server (CPython's
//! `threading` and `http.server`, in `tests/python/lock_server.py`), traced for real.
//!
//! - A lock handed between the server's threads can only be released by one of them, so every
//!   thread named as a waker of any of its futexes belongs to the server process: a waker from
//!   another process (`swapper`, the load generator, a kworker) means the tracer named the
//!   task that happened to be running, not the one that woke.
//! - The `ticker` thread waits with a timeout on a lock nobody ever releases, so only the
//!   timer can end its waits: its wakers are `(timer)` interrupts, never a thread.
//!
//! A waker may also be `unknown`: the kernel skips a tracepoint program while another tracing
//! program runs on the same CPU (a timer interrupt that lands while a thread is inside
//! `task_newtask` or `sched_process_exit`, or another tool's program), and then the wakeup's
//! `sched_waking` is not seen. That is an honest answer, not a wrong one; it must stay rare.

use std::path::PathBuf;

use tracer::output::summary::{Lock, LockWaker, WakerContext};
use tracer_tests::{session::Tracer, workspace_root, Workload};

const CLIENTS: usize = 4;
const REQUESTS_PER_CLIENT: usize = 8;

fn lock_server() -> PathBuf {
    workspace_root().join("tests/python/lock_server.py")
}

fn thread_wakers(lock: &Lock) -> impl Iterator<Item = &LockWaker> {
    lock.wakers
        .iter()
        .filter(|w| w.context == WakerContext::Thread)
}

#[test]
#[ignore = "needs root"]
fn lock_handoff_wakers_are_the_servers_own_threads_and_timeouts_are_the_timer() {
    let server = Workload::spawn_exe(&lock_server(), &[]);
    let tracer = Tracer::attach(server.pid).args(["-i", "1"]).start();

    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut client = tracer_tests::http::HttpClient::connect(addr).expect("connect");
                for _ in 0..REQUESTS_PER_CLIENT {
                    let response = client.get("/lock?ms=15").expect("request");
                    assert_eq!(response.status, 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    let done = tracer.stop();
    assert!(done.status.success(), "tracer failed: {}", done.stderr);
    let locks = &done.summary().locks;
    assert!(!locks.is_empty(), "no lock seen: {:?}", done.summary());

    for lock in locks {
        for w in &lock.wakers {
            match w.context {
                WakerContext::Thread => assert_eq!(
                    w.pid,
                    Some(server.pid),
                    "a waker outside the server woke {lock:?}"
                ),
                WakerContext::Interrupt | WakerContext::Unknown => {
                    assert!(w.tid.is_none(), "an interrupt named as a thread: {w:?}");
                    assert!(w.comm.starts_with('('), "{w:?}");
                }
            }
        }
    }

    // The handed-off lock (and the GIL): woken by several of the server's threads.
    assert!(
        locks.iter().any(|l| {
            let tids: std::collections::BTreeSet<u32> =
                thread_wakers(l).filter_map(|w| w.tid).collect();
            tids.len() >= 2
        }),
        "no lock woken by two server threads: {locks:?}"
    );

    // The ticker's lock: only ever woken by its timeout.
    let ticker = locks
        .iter()
        .find(|l| l.waiters.first().is_some_and(|w| w.comm == "ticker"))
        .unwrap_or_else(|| panic!("the ticker's lock is not listed: {locks:?}"));
    assert!(ticker.waits >= 10, "{ticker:?}");
    let wakers = &ticker.wakers;
    let count = |context: WakerContext| -> u64 {
        wakers
            .iter()
            .filter(|w| w.context == context)
            .map(|w| w.count)
            .sum()
    };
    for w in wakers {
        assert!(
            w.interrupt.as_deref() == Some("timer") || w.context == WakerContext::Unknown,
            "the ticker was woken by {w:?}: {ticker:?}"
        );
    }
    assert!(
        count(WakerContext::Interrupt) > 4 * count(WakerContext::Unknown),
        "the timer is named for most of the ticker's wakeups: {ticker:?}"
    );
}
