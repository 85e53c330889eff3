//! A goroutine the netpoller readies waits for Go's scheduler from then on, not for the
//! network: against `go_service netpoll` (`tests/go/go_service.go`), one P
//! (GOMAXPROCS=1) and asynchronous preemption off. Its `/netpoll` handler calls a backend
//! that answers after [`BACKEND_MS`], and before reading the answer starts a goroutine that
//! keeps the only P [`HOG_MS`] longer, in a loop nothing can preempt. So the answer is there
//! long before the handler's goroutine can run: the netpoller finds it (sysmon polls the
//! network while every P is busy, and readies what it finds through `runtime.injectglist`,
//! not `runtime.ready`), and the goroutine is runnable, waiting for the P, until the loop
//! ends.
//!
//! The server measures when the backend wrote its answer (the backend's clock, the same
//! host's) and when its read returned. The traced network wait must end within
//! [`DISCOVERY`] of the answer, and the rest, up to the read's return, be `go_runqueue`.
//! Without the `injectglist` probe the whole wait is `net_io`.

use std::process::Command;

use tracer::{engine::Cause, output::jsonl::RequestRecord};
use tracer_support::go::{build_go_program, go_service_source, GoBuild, Toolchain};
use tracer_tests::{session::Tracer, Response, TempDir, Workload};

const MS: u64 = 1_000_000;
const BACKEND_MS: u64 = 10;
const HOG_MS: u64 = 100;
const REQUESTS: usize = 4;
/// How long after the answer the netpoller may find it: sysmon polls the network when it
/// was last polled over 10 ms ago and sleeps at most 10 ms between its rounds
/// (`runtime.sysmon`, Go 1.19 to 1.27), plus time for sysmon's thread to get a CPU.
const DISCOVERY: u64 = 25 * MS;
/// The handler's own code around the wait, and the clocks.
const SLACK: u64 = MS;

fn cause(r: &RequestRecord, c: Cause) -> u64 {
    r.breakdown.get(&c).copied().unwrap_or(0)
}

fn a_netpoll_wakeup_then_waits_for_the_scheduler(toolchain: Toolchain, build: GoBuild) {
    let dir = TempDir::new("go-netpoll");
    let exe = build_go_program(&go_service_source(), dir.path(), build, toolchain)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut cmd = Command::new(&exe);
    cmd.arg("netpoll").env("GODEBUG", "asyncpreemptoff=1");
    let service = Workload::start(cmd);
    let tracer = Tracer::attach(service.pid).args(["--slow", "0"]).start();
    let mut client = service.client();
    let path = format!("/netpoll?ms={BACKEND_MS}&hog={HOG_MS}");
    let responses: Vec<Response> = (0..REQUESTS)
        .map(|_| client.get(&path).expect("request"))
        .collect();
    drop(client);
    let done = tracer.stop();
    assert!(done.status.success(), "tracer failed: {}", done.describe());

    let mut traced: Vec<&RequestRecord> = done.requests.iter().collect();
    traced.sort_by_key(|r| r.start_ns);
    assert_eq!(traced.len(), REQUESTS, "{traced:#?}");
    for (response, r) in responses.iter().zip(traced) {
        assert_eq!(response.status, 200);
        assert_eq!(
            r.latency_ns,
            r.breakdown.values().sum::<u64>(),
            "causes sum to the latency: {r:?}"
        );
        // From the call's start: the backend's answer, and the read's return.
        let answered = response.number("X-Answered-Ns");
        let read = response.number("X-Io-Ns");
        assert!(
            read >= answered + HOG_MS * MS / 2,
            "the set-up: the answer waited for the P ({answered} ns, read at {read} ns)"
        );
        let (net_io, go_runqueue) = (cause(r, Cause::NetIo), cause(r, Cause::GoRunqueue));
        assert!(
            net_io <= answered + DISCOVERY + SLACK,
            "the network wait ends once the netpoller finds the answer: net_io {net_io} ns, \
             answered at {answered} ns: {r:?}"
        );
        assert!(
            go_runqueue + DISCOVERY + SLACK >= read - answered,
            "then the goroutine waits for Go's scheduler: go_runqueue {go_runqueue} ns of \
             {} ns from the answer to the read's return: {r:?}",
            read - answered
        );
    }
    service.assert_serving();
}

tracer_tests::go_tests! {
    check: a_netpoll_wakeup_then_waits_for_the_scheduler;
    /// Debian's Go 1.19, with its symbol table and DWARF.
    go_1_19_netpoll_wakeups_wait_for_the_scheduler: Toolchain::System, GoBuild::default();
    /// The newest Go, stripped: `g.schedlink`'s offset from the release's table.
    go_1_27_stripped_netpoll_wakeups_wait_for_the_scheduler:
        Toolchain::GoBin("1.27.3"), GoBuild::STRIPPED;
}
