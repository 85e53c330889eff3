//! `--sample N`: one request in N on each connection is attributed, the first of every N, and
//! the ones attributed are timed as without sampling. The real programs count the requests
//! in the kernel, on the real workload server.
//!
//! Two keep-alive connections send requests one after another. The requests the sampling
//! must pick (each connection's 1st, N+1th, ...) sleep 20 ms; the others spin 2 ms. So a
//! wrong count, a count shared by the connections, or unsampled reads and writes that still
//! reach the collector all show as requests of the wrong kind or number.

use tracer::{engine::Cause, output::jsonl::RequestRecord};
use tracer_tests::{session::Tracer, HttpClient, Response, Workload};

const ONE_IN: usize = 3;
const MS: u64 = 1_000_000;
const SAMPLED_PATH: &str = "/sleep?ms=20";
const OTHER_PATH: &str = "/cpu?ms=2";

/// Sends `count` requests on `client`: the `i`th (from 0) is a sampled one when `i` is a
/// multiple of [`ONE_IN`]. Returns the sampled ones' responses.
fn send(client: &mut HttpClient, count: usize) -> Vec<Response> {
    let mut sampled = Vec::new();
    for i in 0..count {
        let path = if i % ONE_IN == 0 {
            SAMPLED_PATH
        } else {
            OTHER_PATH
        };
        let response = client.get(path).expect("request");
        assert_eq!(response.status, 200, "{path}");
        if path == SAMPLED_PATH {
            sampled.push(response);
        }
    }
    sampled
}

fn cause(r: &RequestRecord, cause: Cause) -> u64 {
    r.breakdown.get(&cause).copied().unwrap_or(0)
}

#[test]
#[ignore = "needs root"]
fn one_request_in_n_per_connection_is_attributed() {
    let workload = Workload::spawn();
    let tracer = Tracer::attach(workload.pid)
        .args(["--sample", &ONE_IN.to_string(), "--slow", "0", "-i", "1"])
        .start();
    // Connected once the tracer is attached: the kernel side counts requests on connections
    // it saw open.
    let (mut first, mut second) = (workload.client(), workload.client());
    let mut sampled = send(&mut first, 3 * ONE_IN + 1);
    sampled.extend(send(&mut second, ONE_IN + 1));
    drop((first, second)); // the closes end the last requests
    std::thread::sleep(std::time::Duration::from_millis(300));
    let done = tracer.stop();
    assert!(done.status.success(), "tracer failed: {}", done.describe());
    assert!(
        done.stderr
            .contains("sampling: one request in 3 on each plaintext connection"),
        "{}",
        done.describe()
    );

    let summary = done.summary();
    assert_eq!(summary.requests.sampled_one_in, ONE_IN as u32);
    // Connection 1: requests 1, 4, 7 and 10 of 10; connection 2: 1 and 4 of 4 (a count
    // shared by the connections would pick its 3rd, a spin).
    assert_eq!(
        done.requests.len(),
        sampled.len(),
        "one traced request per sampled request: {:?}\n{}",
        done.requests,
        done.describe()
    );
    assert_eq!(summary.requests.count, sampled.len() as u64);
    for r in &done.requests {
        assert_eq!(
            r.latency_ns,
            r.breakdown.values().sum::<u64>(),
            "causes sum to the latency: {r:?}"
        );
        // A 20 ms sleep, not a 2 ms spin, which never sleeps. (Not all 20 ms: a thread
        // preempted in nanosleep before it blocks waits for a CPU, `runqueue`, while its timer
        // runs.)
        assert!(
            cause(r, Cause::Sleep) >= 5 * MS,
            "a sampled request is a /sleep, attributed to sleep: {r:?}"
        );
    }
    let mut traced: Vec<u64> = done
        .requests
        .iter()
        .map(|r| cause(r, Cause::Sleep))
        .collect();
    let mut measured: Vec<u64> = sampled
        .iter()
        .map(|s| s.handler_ns().saturating_sub(s.runqueue_ns()))
        .collect();
    traced.sort_unstable();
    measured.sort_unstable();
    let (got, want) = (traced[traced.len() / 2], measured[measured.len() / 2]);
    assert!(
        got.abs_diff(want) <= want / 10 + MS,
        "sleep median {got} ns, server measured {want} ns"
    );
}
