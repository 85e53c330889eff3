//! `--sample N`: the requests of one connection in N are attributed, every one of them, and
//! timed as without sampling; the other connections' reads and writes never reach the
//! collector. The real programs pick the connections in the kernel, on the real workload
//! server.
//!
//! Many keep-alive connections are open at once (so each has its own fd in the server), and
//! each sends the same number of requests, which sleep. So the requests attributed, grouped
//! by their fd, must come in whole connections: a connection picked request by request, or
//! an unsampled connection's read or write reaching the collector, shows as a group of the
//! wrong size; none picked, or all of them, as a wrong number of groups. The workload
//! serves each connection on a thread of its own, which blocks at every request: the
//! switches of the threads of connections not picked must not be reported either, nor
//! their creation and first wakeup (the engine's events, `TRACER_EVENT_DUMP`, name only
//! threads that served a picked request).

use std::collections::{BTreeMap, BTreeSet};

use tracer::{engine::Cause, output::jsonl::RequestRecord};
use tracer_tests::{median, near, session::Tracer, Response, TempDir, Workload};

const ONE_IN: u32 = 3;
/// With 1 in 3, none picked or all picked each happen once in about 10^4 or 10^11 runs.
const CONNECTIONS: usize = 24;
const REQUESTS_PER_CONNECTION: usize = 3;
const MS: u64 = 1_000_000;
const PATH: &str = "/sleep?ms=10";

/// The thread of a switch, a new thread or its first wakeup in the event dump (`Event { ts:
/// 5, tid: Tid(7), kind: SwitchOut {...} }`, `SwitchIn`, `ThreadNew` and `Wakeup` the same).
fn followed_thread(line: &str) -> Option<u32> {
    let followed = [
        "kind: SwitchOut",
        "kind: SwitchIn",
        "kind: ThreadNew",
        "kind: Wakeup",
    ];
    if !followed.iter().any(|kind| line.contains(kind)) {
        return None;
    }
    let (_, rest) = line.split_once("tid: Tid(")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn sleep_ns(r: &RequestRecord) -> u64 {
    r.breakdown.get(&Cause::Sleep).copied().unwrap_or(0)
}

#[test]
#[ignore = "needs root"]
fn the_requests_of_one_connection_in_n_are_attributed() {
    let workload = Workload::spawn();
    let dump = TempDir::absent("sampling-dump");
    let tracer = Tracer::attach(workload.pid)
        .args(["--sample", &ONE_IN.to_string(), "--slow", "0", "-i", "1"])
        .env("TRACER_EVENT_DUMP", dump.path())
        .start();
    let mut clients: Vec<_> = (0..CONNECTIONS).map(|_| workload.client()).collect();
    let mut responses: Vec<Response> = Vec::new();
    for _ in 0..REQUESTS_PER_CONNECTION {
        for client in &mut clients {
            let response = client.get(PATH).expect("request");
            assert_eq!(response.status, 200);
            responses.push(response);
        }
    }
    drop(clients);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let done = tracer.stop();
    assert!(done.status.success(), "tracer failed: {}", done.describe());
    assert!(
        done.stderr.contains(&format!(
            "sampling: the requests of one connection in {ONE_IN} are attributed"
        )),
        "{}",
        done.describe()
    );
    let summary = done.summary();
    assert_eq!(summary.requests.sampled_one_in, ONE_IN);

    let mut by_connection: BTreeMap<u32, Vec<&RequestRecord>> = BTreeMap::new();
    for r in &done.requests {
        let fd =
            r.fd.unwrap_or_else(|| panic!("a request on no connection: {r:?}"));
        by_connection.entry(fd).or_default().push(r);
    }
    let sizes: Vec<usize> = by_connection.values().map(Vec::len).collect();
    assert!(
        sizes.iter().all(|&n| n == REQUESTS_PER_CONNECTION),
        "every request of a picked connection, none of the others: requests per fd {sizes:?}\n{}",
        done.describe()
    );
    assert!(
        (1..CONNECTIONS).contains(&by_connection.len()),
        "some connections picked, not all: {} of {CONNECTIONS}\n{}",
        by_connection.len(),
        done.describe()
    );
    assert_eq!(summary.requests.count, done.requests.len() as u64);

    let serving: BTreeSet<u32> = done.requests.iter().map(|r| r.tid).collect();
    let dumped = std::fs::read_to_string(dump.path()).expect("the event dump");
    // The connections were opened after the tracer attached, each with a new thread: a
    // thread not followed from its creation must not be reported new and woken either, or
    // the collector counts its wait for its first request as a wait for a CPU.
    let followed: BTreeSet<u32> = dumped.lines().filter_map(followed_thread).collect();
    assert!(
        !followed.is_empty() && followed.is_subset(&serving),
        "switches, new threads and their wakeups reported only of the threads that served \
         picked connections: threads reported {followed:?}, serving {serving:?}\n{}",
        done.describe()
    );

    for r in &done.requests {
        assert_eq!(
            r.latency_ns,
            r.breakdown.values().sum::<u64>(),
            "causes sum to the latency: {r:?}"
        );
        // (Not all 10 ms: a thread preempted in nanosleep before it blocks waits for a CPU,
        // `runqueue`, while its timer runs.)
        assert!(
            sleep_ns(r) >= 3 * MS,
            "a /sleep, attributed to sleep: {r:?}"
        );
    }
    let traced = median(done.requests.iter().map(sleep_ns).collect());
    let measured = median(
        responses
            .iter()
            .map(|s| s.handler_ns().saturating_sub(s.runqueue_ns()))
            .collect(),
    );
    assert!(
        near(traced, measured, 0.1, MS),
        "sleep median {traced} ns, server measured {measured} ns"
    );
}
