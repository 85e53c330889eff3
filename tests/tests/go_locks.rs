//! The Go lock detail against a real Go service (`tests/go/go_service.go`): its `/lock`
//! endpoint waits for a `sync.Mutex` that a holder goroutine keeps, and reports the mutex's
//! address and the holder's goroutine id. The tracer must list that mutex among the contended
//! Go locks, with every wait of the requests on it, and name the holders as the goroutines
//! that woke the waiters.

use std::collections::BTreeSet;

use tracer::{engine::Cause, output::summary::GoLock};
use tracer_support::go::{build_go_program, go_service_source, GoBuild, Toolchain};
use tracer_tests::{session::trace_requests, Response, TempDir, Workload};

const REQUESTS: usize = 6;
const MS: u64 = 1_000_000;

fn header<'r>(response: &'r Response, name: &str) -> &'r str {
    response
        .header(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", response.headers))
}

fn lists_the_contended_mutex_and_its_wakers(toolchain: Toolchain, build: GoBuild) {
    let dir = TempDir::new("go-locks");
    let exe = build_go_program(&go_service_source(), dir.path(), build, toolchain)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let service = Workload::spawn_exe(&exe, &[]);
    let (responses, done) = trace_requests(&service, "/lock?ms=20", REQUESTS);
    let summary = done.summary();

    let address = header(&responses[0], "X-Lock-Addr");
    let mutex = u64::from_str_radix(address.trim_start_matches("0x"), 16).unwrap();
    // sync.Mutex{state int32; sema uint32}: the semaphore waited on is 4 bytes in.
    let semaphore = format!("{:#x}", mutex + 4);
    let lock: &GoLock = summary
        .go_locks
        .iter()
        .find(|l| l.semaphore == semaphore)
        .unwrap_or_else(|| panic!("the mutex {address} in {:#?}", summary.go_locks));
    // Go 1.20+ names the wait `sync.Mutex.Lock`, which gives the mutex itself; before, the
    // wait is `semacquire`, and the address listed is the semaphore's.
    match lock.kind.as_str() {
        "sync.Mutex" => assert_eq!(lock.address, address, "{lock:?}"),
        "semacquire" => assert_eq!(lock.address, semaphore, "{lock:?}"),
        other => panic!("a sync.Mutex listed as {other}: {lock:?}"),
    }

    // One request at a time: each handler's Lock waits once, for its own holder.
    assert!(lock.waits >= REQUESTS as u64, "{lock:?}");
    assert!(!lock.waiters.is_empty(), "{lock:?}");
    let measured: u64 = responses
        .iter()
        .map(|r| header(r, "X-Lock-Ns").parse::<u64>().unwrap())
        .sum();
    let traced: u64 = done
        .requests
        .iter()
        .map(|r| r.breakdown.get(&Cause::Lock).copied().unwrap_or(0))
        .sum();
    assert_eq!(done.requests.len(), REQUESTS, "{}", done.describe());
    // Only the handlers wait on this mutex (one request at a time, so each holder takes it
    // free), inside their requests: its waits are part of the requests' lock time (which
    // also holds net/http's own short sync.Cond waits), and part of what the server
    // measured (which adds the wait for a CPU after each wakeup); most of the latter.
    assert!(
        lock.wait_ns <= traced + MS
            && lock.wait_ns <= measured + REQUESTS as u64 * MS
            && lock.wait_ns * 2 >= measured,
        "requests' lock {traced} ns, the mutex's waits {} ns, measured {measured} ns: {lock:?}",
        lock.wait_ns
    );
    let holders: BTreeSet<u64> = responses
        .iter()
        .map(|r| header(r, "X-Holder-Goid").parse().unwrap())
        .collect();
    let wakers: BTreeSet<u64> = lock.wakers.iter().filter_map(|w| w.goid).collect();
    assert!(
        holders.is_subset(&wakers),
        "the holders {holders:?} woke the waiters: {lock:#?}"
    );
    assert!(
        lock.wakers.iter().all(|w| w.tid != 0),
        "each waker's thread: {lock:#?}"
    );
    service.assert_serving();
}

tracer_tests::go_tests! {
    check: lists_the_contended_mutex_and_its_wakers;
    /// Debian's Go 1.19: every semaphore wait is `semacquire`.
    go_1_19_lists_the_contended_mutex: Toolchain::System, GoBuild::default();
    /// The newest Go, stripped: `sync.Mutex.Lock` names the mutex.
    go_1_27_stripped_lists_the_contended_mutex: Toolchain::GoBin("1.27.3"), GoBuild::STRIPPED;
}
