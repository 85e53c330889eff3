//! A request sent with `Expect: 100-continue` is one request. Its client sends the head, waits
//! for the server's interim `HTTP/1.1 100 Continue`, then sends the body; the server writes
//! that interim response from inside the request, so it answers nothing: the request goes on
//! through the wait for the body to its final response. Taken as an answer, each upload would
//! be two requests (head to `100 Continue`, body to response), neither holding the wait for
//! the body, which would fall between them.
//!
//! Each server reports its own account of the upload: the `workload` (a thread per
//! connection, whose requests the kernel side times, the interim written with `send`, then
//! with `writev`) and the Go service (a goroutine per connection, net/http's interim written
//! with `write`).
//! The client pauses [`PAUSE`] between the `100 Continue` and the body, so the server waits
//! that long inside the request, blocked on its socket (`net_io`).

use std::{process::Command, time::Duration};

use tracer::{engine::Cause, output::jsonl::RequestRecord};
use tracer_support::go::{build_go_program, go_service_source, GoBuild, Toolchain};
use tracer_tests::{
    session::{Finished, Tracer},
    Response, TempDir, Workload,
};

const MS: u64 = 1_000_000;
/// Uploads, one after another on one keep-alive connection.
const UPLOADS: usize = 4;
/// The client's pause between the `100 Continue` and its body.
const PAUSE: Duration = Duration::from_millis(30);
const BODY: &[u8] = b"an upload's body";
/// What a request's figures may differ from the server's by: the clocks, and the server's
/// own code around its measurement.
const SLACK: u64 = MS;

fn cause(r: &RequestRecord, c: Cause) -> u64 {
    r.breakdown.get(&c).copied().unwrap_or(0)
}

/// Traces `server` while one connection sends [`UPLOADS`] uploads to `path`; returns the
/// responses and the traced requests in order.
fn trace_uploads(server: &Workload, path: &str) -> (Vec<Response>, Vec<RequestRecord>) {
    let tracer = Tracer::attach(server.pid).args(["--slow", "0"]).start();
    let mut client = server.client();
    let responses: Vec<Response> = (0..UPLOADS)
        .map(|_| {
            client
                .post_after_continue(path, BODY, PAUSE)
                .expect("upload")
        })
        .collect();
    drop(client); // the close ends the last request
    let done: Finished = tracer.stop();
    assert!(done.status.success(), "tracer failed: {}", done.describe());
    let mut traced = done.requests.clone();
    traced.sort_by_key(|r| r.start_ns);
    for response in &responses {
        assert_eq!(response.status, 200, "{response:?}");
    }
    assert_eq!(
        traced.len(),
        UPLOADS,
        "one request per upload, the 100 Continue answering nothing: {traced:#?}"
    );
    for r in &traced {
        assert!(!r.incomplete, "{r:?}");
        assert_eq!(
            r.latency_ns,
            r.breakdown.values().sum::<u64>(),
            "causes sum to the latency: {r:?}"
        );
    }
    (responses, traced)
}

/// The request holds the server's whole handler, the wait for the body with it, and that
/// wait is the request's time blocked on its socket, or waiting for a CPU (or on one) around
/// it: on a busy machine the server may be preempted between its `100 Continue` and its
/// block, so the block alone can be shorter than the client's pause.
fn assert_holds_the_wait_for_the_body(
    r: &RequestRecord,
    handler_ns: u64,
    body_wait_ns: u64,
    after_wait: &[Cause],
) {
    let pause = PAUSE.as_nanos() as u64;
    assert!(
        body_wait_ns >= pause,
        "the set-up: the server waited for the body ({body_wait_ns} ns)"
    );
    assert!(
        r.latency_ns + SLACK >= handler_ns,
        "the request holds its handler ({handler_ns} ns, with the wait for the body): {r:?}"
    );
    let net_io = cause(r, Cause::NetIo);
    let then: u64 = after_wait.iter().map(|&c| cause(r, c)).sum();
    assert!(
        net_io + then + SLACK >= body_wait_ns,
        "the wait for the body ({body_wait_ns} ns) is net_io {net_io} ns, then {then} ns of \
         {after_wait:?}: {r:?}"
    );
    assert!(
        net_io <= body_wait_ns + SLACK,
        "the request's time blocked on its socket is its wait for the body ({body_wait_ns} \
         ns), no wait before its head came: net_io {net_io} ns: {r:?}"
    );
}

/// The workload's `100 Continue` by `send` (as nginx and Python write it), then by `writev`
/// (as hyper does: the kernel side finds the bytes through the first `struct iovec`).
#[test]
#[ignore = "needs root"]
fn a_thread_per_connection_servers_upload_is_one_request() {
    let server = Workload::spawn();
    for path in ["/upload", "/upload?continue=writev"] {
        let (responses, traced) = trace_uploads(&server, path);
        assert_uploads_are_whole(&responses, &traced);
    }
    server.assert_serving();
}

fn assert_uploads_are_whole(responses: &[Response], traced: &[RequestRecord]) {
    for (response, r) in responses.iter().zip(traced) {
        // The workload's `/upload` measures the body's receipt only: `X-Handler-Ns` is the
        // interim write and the wait for the body, of which `X-Runqueue-Ns` for a CPU.
        let receipt = response.handler_ns();
        assert_holds_the_wait_for_the_body(
            r,
            receipt,
            receipt,
            &[Cause::Runqueue, Cause::OnCpu, Cause::Steal],
        );
    }
}

fn a_goroutines_upload_is_one_request(toolchain: Toolchain, build: GoBuild) {
    let dir = TempDir::new("go-upload");
    let exe = build_go_program(&go_service_source(), dir.path(), build, toolchain)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let service = Workload::start(Command::new(&exe));
    let (responses, traced) = trace_uploads(&service, "/upload");
    for (response, r) in responses.iter().zip(&traced) {
        assert_eq!(
            response.number("X-Body-Bytes"),
            BODY.len() as u64,
            "{response:?}"
        );
        assert_holds_the_wait_for_the_body(
            r,
            response.handler_ns(),
            response.number("X-Body-Ns"),
            &[
                Cause::GoRunqueue,
                Cause::Runqueue,
                Cause::OnCpu,
                Cause::Steal,
            ],
        );
    }
    service.assert_serving();
}

tracer_tests::go_tests! {
    check: a_goroutines_upload_is_one_request;
    /// Debian's Go 1.19.
    go_1_19_upload_is_one_request: Toolchain::System, GoBuild::default();
    /// The newest Go.
    go_1_27_upload_is_one_request: Toolchain::GoBin("1.27.3"), GoBuild::default();
}
