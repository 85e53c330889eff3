//! What a CPU holds for the collector when the tracer stops all reaches the summary, traced
//! for real: a server (`tests/python/answer_then_spin.py`) answers a few pipelined requests
//! without leaving its CPU, then keeps the CPU spinning while the tracer stops. Nothing was
//! sent to the ring (no switch-out came to send it), so the collector must read it from the
//! kernel's maps after detaching: the requests kept in the kernel (tracer-ebpf's
//! `stretch.rs`, from `TCP_SOCKETS`), and, with those turned off, the request/response pairs
//! the CPU gathered into one record (`held_read.rs`, from `PAIR_BATCHES`).
//!
//! The server runs on the last CPU and the tracer and the client on the first, so that
//! nothing of the test preempts the server (a preemption sends what the CPU holds through the
//! ring, which must give the same count).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::Command,
    time::Duration,
};

use tracer_tests::{
    last_cpu, pin_this_thread_to_cpu,
    session::{Finished, Tracer},
    workspace_root, Workload,
};

const REQUESTS: usize = 5;
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";

#[test]
#[ignore = "needs root"]
fn requests_kept_in_the_kernel_reach_the_summary_when_the_tracer_stops() {
    let done = answer_then_stop(&[]);
    assert!(
        done.summary().requests.in_kernel >= 1,
        "the kernel side kept requests: {}",
        done.describe()
    );
}

#[test]
#[ignore = "needs root"]
fn requests_gathered_on_a_cpu_reach_the_summary_when_the_tracer_stops() {
    let done = answer_then_stop(&[("TRACER_STRETCH_REQUESTS", "0")]);
    assert_eq!(done.summary().requests.in_kernel, 0, "{}", done.describe());
}

/// Trace the server (with `env` for the tracer) while it answers [`REQUESTS`] pipelined
/// requests, then stop the tracer: every request is in the summary.
fn answer_then_stop(env: &[(&str, &str)]) -> Finished {
    let script = workspace_root().join("tests/python/answer_then_spin.py");
    let mut server = Command::new("taskset");
    server
        .arg("-c")
        .arg(last_cpu().to_string())
        .arg(&script)
        .args(["serve", "--port", "0", "--requests", &REQUESTS.to_string()]);
    let server = Workload::start(server);
    // This thread, the client, and the tracer it spawns (which inherits it) on the first CPU.
    pin_this_thread_to_cpu(0);
    let tracer = Tracer::attach(server.pid).envs(env).start();

    let mut client = TcpStream::connect(server.addr).expect("connect");
    client.write_all(&REQUEST.repeat(REQUESTS)).expect("send");
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answers = vec![0; RESPONSE.len() * REQUESTS];
    client.read_exact(&mut answers).expect("the answers");
    assert_eq!(answers, RESPONSE.repeat(REQUESTS));

    // The server now spins on its CPU, its answered requests still held there.
    let done = tracer.stop();
    assert!(done.status.success(), "{}", done.describe());
    assert_eq!(
        done.summary().requests.count,
        REQUESTS as u64,
        "{}",
        done.describe()
    );
    done
}
