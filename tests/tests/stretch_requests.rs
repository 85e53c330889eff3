//! Requests a thread serves without leaving its CPU are delimited and timed in the kernel
//! (tracer-ebpf's `stretch.rs`); those that leave it (a sleep inside the request, or a
//! preemption) are handed to the collector mid-way, and the connection is taken back for the
//! next. Traced for real: a server (`tests/python/pipelined_server.py`) answers pipelined
//! requests on one keep-alive connection, none of whose reads wait, some spinning, some
//! sleeping, some doing nothing, and measures each itself. Every request must be counted once
//! and agree with the server's own measurement, whichever side delimited it; and the kernel
//! side must have kept some.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::Command,
    time::Duration,
};

use tracer::{
    engine::Cause,
    output::{jsonl::RequestRecord, summary::Requests},
};
use tracer_tests::{
    http::{read_response, Response},
    last_cpu, median, near, pin_process_to_cpu, pin_this_thread_to_cpu,
    session::Tracer,
    workspace_root, CpuHog, Workload,
};

const MS: u64 = 1_000_000;
/// The requests, in the order sent, four times: a spin, one that does nothing, a sleep (its
/// request handed over mid-way), one that does nothing (its connection taken back). The last
/// is still kept in the kernel when the tracer stops, and read from its map.
const KINDS: [&str; 4] = ["spin", "none", "sleep", "none"];
const ROUNDS: usize = 4;

fn cause(r: &RequestRecord, cause: Cause) -> u64 {
    r.breakdown.get(&cause).copied().unwrap_or(0)
}

/// The kernel side kept at least `kept` of the requests, all answered; each traced request's
/// causes sum to its latency, with no event lost.
fn assert_kept_and_whole(requests: &Requests, traced: &[RequestRecord], kept: u64) {
    assert!(
        requests.in_kernel >= kept && requests.aborted == 0,
        "the kernel side kept some requests, all answered: {requests:?}"
    );
    for r in traced {
        assert_eq!(
            r.latency_ns,
            r.breakdown.values().sum::<u64>(),
            "causes sum to the latency: {r:?}"
        );
        assert!(!r.incomplete, "no events lost: {r:?}");
    }
}

#[test]
#[ignore = "needs root"]
fn requests_kept_in_the_kernel_agree_with_the_servers_own_timing() {
    let script = workspace_root().join("tests/python/pipelined_server.py");
    let requests = KINDS.len() * ROUNDS;
    // The server alone on the last CPU, this thread (the client) and the tracer it spawns on
    // the first: a response that wakes the client on the server's CPU would preempt the
    // server at each write, and every request would be handed over before the next read
    // could finish it in the kernel.
    let mut server = Command::new("taskset");
    server
        .arg("-c")
        .arg(last_cpu().to_string())
        .arg(&script)
        .args([
            "serve",
            "--port",
            "0",
            "--requests",
            &requests.to_string(),
            "--spin-ms",
            "5",
            "--sleep-ms",
            "20",
        ]);
    let server = Workload::start(server);
    pin_this_thread_to_cpu(0);
    let tracer = Tracer::attach(server.pid).args(["--slow", "0"]).start();

    let kinds: Vec<&str> = KINDS.iter().copied().cycle().take(requests).collect();
    let mut client = TcpStream::connect(server.addr).expect("connect");
    let all: String = kinds
        .iter()
        .map(|k| format!("GET /{k} HTTP/1.1\r\n\r\n"))
        .collect();
    client.write_all(all.as_bytes()).expect("send");
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = Vec::new();
    let responses: Vec<Response> = kinds
        .iter()
        .map(|_| read_response(&mut client, &mut buf).expect("a response"))
        .collect();
    let mut rest = [0u8; 1];
    client.set_nonblocking(true).unwrap();
    assert!(client.read(&mut rest).is_err(), "one response per request");

    // The server now spins on its CPU; its last request still kept in the kernel.
    let done = tracer.stop();
    assert!(done.status.success(), "{}", done.describe());
    let mut traced = done.requests.clone();
    traced.sort_by_key(|r| r.start_ns);
    assert_eq!(
        traced.len(),
        requests,
        "one traced request per request sent: {traced:#?}\n{}",
        done.describe()
    );
    let summary = done.summary();
    assert_eq!(
        summary.requests.count,
        requests as u64,
        "{}",
        done.describe()
    );
    assert_kept_and_whole(&summary.requests, &traced, 1);

    let rows = |kind: &str| -> Vec<(&Response, &RequestRecord)> {
        kinds
            .iter()
            .zip(responses.iter().zip(&traced))
            .filter(|(k, _)| **k == kind)
            .map(|(_, pair)| pair)
            .collect()
    };
    let describe = |rows: &[(&Response, &RequestRecord)]| format!("{rows:#?}");

    // spin: on a CPU (or stolen by the hypervisor), as the server's thread clock says. Its
    // waits for a CPU on a busy machine are not compared: one after the handler's last clock
    // read, before its write, is in the request but not in the server's account.
    let spins = rows("spin");
    let on_cpu = median(
        spins
            .iter()
            .map(|(_, r)| cause(r, Cause::OnCpu) + cause(r, Cause::Steal))
            .collect(),
    );
    let cpu = median(spins.iter().map(|(s, _)| s.cpu_ns()).collect());
    assert!(
        near(on_cpu, cpu, 0.10, MS),
        "spin: traced on_cpu + steal median {on_cpu} ns, server's thread clock {cpu} ns: {}",
        describe(&spins)
    );

    // sleep: its handler's time off a CPU and off the run queue is the sleep.
    let sleeps = rows("sleep");
    let slept = median(sleeps.iter().map(|(_, r)| cause(r, Cause::Sleep)).collect());
    let blocked = median(
        sleeps
            .iter()
            .map(|(s, _)| {
                s.handler_ns()
                    .saturating_sub(s.cpu_ns())
                    .saturating_sub(s.runqueue_ns())
            })
            .collect(),
    );
    assert!(
        near(slept, blocked, 0.10, MS),
        "sleep: traced sleep median {slept} ns, server blocked {blocked} ns: {}",
        describe(&sleeps)
    );

    // none: no blocked time at all, and no longer than the server's handler and its write.
    for (s, r) in rows("none") {
        for blocked in [Cause::Sleep, Cause::Lock, Cause::NetIo, Cause::Other] {
            assert_eq!(cause(r, blocked), 0, "none: {} in {r:?}", blocked.name());
        }
        assert!(
            cause(r, Cause::OnCpu) <= s.handler_ns() + MS,
            "none: on_cpu beyond the server's handler: {s:?} {r:?}"
        );
    }
}

/// A request kept in the kernel that a thread on another CPU answers leaves the stretch that
/// kept it; the next request that stretch keeps does not share its thread with it. Traced
/// for real: `handoff-server` (`tests/src/bin/handoff_server.rs`) has its event loop read a
/// request on connection A and a writer thread on the other CPU answer it, then read and
/// answer connection B's next two requests itself, in each round, without leaving its CPU.
/// None of B's requests waits for another's answer, so none may count as sharing its
/// thread (`summary.json` `requests.shared_context`): the kernel side counted the handed-over
/// request as unanswered for the rest of the stretch before, and flagged every later one.
#[test]
#[ignore = "needs root"]
fn a_request_answered_on_another_cpu_leaves_its_stretchs_unanswered_count() {
    const ROUNDS: usize = 8;
    let mut server = Command::new(tracer_tests::bin_path("handoff-server"));
    server.arg(ROUNDS.to_string());
    let server = Workload::start(server);
    pin_this_thread_to_cpu(0);
    let tracer = Tracer::attach(server.pid).start();

    let request = |connection: char, i: usize| {
        let request = format!("GET /{connection}{i:03} HTTP/1.1\r\n\r\n");
        assert_eq!(request.len(), 22, "handoff-server's REQUEST_LEN");
        request
    };
    let mut a = TcpStream::connect(server.addr).expect("connect A");
    let mut b = TcpStream::connect(server.addr).expect("connect B");
    let to_a: String = (0..ROUNDS + 1).map(|i| request('a', i)).collect();
    let to_b: String = (0..2 * ROUNDS).map(|i| request('b', i)).collect();
    a.write_all(to_a.as_bytes()).expect("send to A");
    b.write_all(to_b.as_bytes()).expect("send to B");
    let mut buf = Vec::new();
    for stream in [&mut a, &mut b] {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
    }
    for _ in 0..ROUNDS + 1 {
        read_response(&mut a, &mut buf).expect("a response on A");
    }
    let mut buf = Vec::new();
    let held = (0..2 * ROUNDS)
        .map(|_| read_response(&mut b, &mut buf).expect("a response on B"))
        .filter(|r| r.header("X-Stretch-Held") == Some("1"))
        .count();

    let done = tracer.stop();
    assert!(done.status.success(), "{}", done.describe());
    let summary = done.summary();
    // A round whose event loop left its CPU (preempted) ends its stretch, and with it the
    // count: the case is in the rounds that held.
    assert!(
        held >= 2,
        "the event loop kept its CPU in too few rounds ({held} of B's {} requests): {:?}",
        2 * ROUNDS,
        summary.requests
    );
    assert_eq!(
        summary.requests.count,
        (3 * ROUNDS + 1) as u64,
        "every request answered counted once: {:?}",
        summary.requests
    );
    assert!(
        summary.requests.in_kernel >= held as u64 / 2 && summary.requests.aborted == 0,
        "the kernel side kept B's requests, all answered: {:?}",
        summary.requests
    );
    assert_eq!(
        summary.requests.shared_context,
        0,
        "no request waited for another's answer: {:?}\n{}",
        summary.requests,
        done.describe()
    );
}

/// A thread per connection blocks in its read between requests: a request it reads after that
/// block starts at the wakeup its bytes brought, and the kernel side keeps it from there (its
/// wait for the CPU, then its time on it, to its response) and finishes it when the thread
/// blocks for the next. Traced for real: the workload's server, every thread on one CPU with
/// a process spinning there, so that each wakeup waits for the CPU; its `/cpu` requests, one
/// at a time with pauses between, so that each one's read blocks. The traced run queue and
/// on-CPU times must agree with the server's own (its scheduler statistics and its thread
/// clock), whichever side delimited each request, and the kernel side must have kept some.
#[test]
#[ignore = "needs root"]
fn a_request_read_after_blocking_starts_at_the_wakeup_its_bytes_brought() {
    const REQUESTS: usize = 40;
    let workload = Workload::spawn_with_args(&["--task-clock"]);
    pin_process_to_cpu(workload.pid, last_cpu());
    let _hog = CpuHog::niced(last_cpu(), -10);
    pin_this_thread_to_cpu(0);
    let tracer = Tracer::attach(workload.pid).args(["--slow", "0"]).start();
    let mut client = workload.client();
    let responses: Vec<Response> = (0..REQUESTS)
        .map(|_| {
            let response = client.get("/cpu?ms=1").expect("request");
            assert_eq!(response.status, 200);
            std::thread::sleep(Duration::from_millis(3));
            response
        })
        .collect();
    drop(client);
    std::thread::sleep(Duration::from_millis(200)); // the server sees the close
    let done = tracer.stop();
    assert!(done.status.success(), "{}", done.describe());
    let summary = done.summary();
    let mut traced = done.requests.clone();
    traced.sort_by_key(|r| r.start_ns);
    assert_eq!(
        traced.len(),
        REQUESTS,
        "one traced request per request sent: {:?}\n{}",
        summary.requests,
        done.describe()
    );
    assert_kept_and_whole(&summary.requests, &traced, REQUESTS as u64 / 4);
    let pairs: Vec<(&Response, &RequestRecord)> = responses.iter().zip(&traced).collect();
    let describe = || format!("{pairs:#?}");
    // The run queue: the server's waits for its CPU from its previous response to this one's
    // write, of which the wait after the wakeup that delivered this request's bytes.
    let queued = median(
        pairs
            .iter()
            .map(|(_, r)| cause(r, Cause::Runqueue))
            .collect(),
    );
    let measured = median(
        pairs
            .iter()
            .map(|(s, _)| s.queued_before_ns() + s.runqueue_ns() + s.queued_after_ns())
            .collect(),
    );
    assert!(
        measured >= MS,
        "the spinning process made the server wait for its CPU: {measured} ns: {}",
        describe()
    );
    assert!(
        near(queued, measured, 0.15, MS / 2),
        "traced runqueue median {queued} ns, the server waited {measured} ns: {}",
        describe()
    );
    // On its CPU (or stolen from it by the hypervisor, which its thread clock counts too).
    let on_cpu = median(
        pairs
            .iter()
            .map(|(_, r)| cause(r, Cause::OnCpu) + cause(r, Cause::Steal))
            .collect(),
    );
    let cpu = median(pairs.iter().map(|(s, _)| s.cpu_ns()).collect());
    assert!(
        near(on_cpu, cpu, 0.15, MS / 2),
        "traced on_cpu + steal median {on_cpu} ns, the server's thread clock {cpu} ns: {}",
        describe()
    );
}
