//! Goroutine attribution against a real Go net/http service (`tests/go/go_service.go`), which
//! measures its own waits: each endpoint parks its request's goroutine in one of Go's ways (a
//! sync.Mutex, a channel, a sleep, the netpoller), and the tracer must put that time in the
//! matching cause.
//!
//! The server measures a wait from before the park to after the goroutine runs again, so its
//! figure is the park itself plus the wait for Go's scheduler and for a CPU afterwards, which
//! the tracer counts as `go_runqueue` and `runqueue`. So each request must satisfy, with the
//! traced park `park` and the server's measurement `measured`:
//! `park <= measured + slack` and `measured <= park + go_runqueue + runqueue + on_cpu + slack`,
//! whatever the load on the machine.

use tracer::{engine::Cause, output::jsonl::RequestRecord};
use tracer_support::go::{build_go_program, go_service_source, GoBuild, Toolchain};
use tracer_tests::{session::Tracer, Response, TempDir, Workload};

const MS: u64 = 1_000_000;
const ROUNDS: usize = 5;
/// What a measurement may differ by beyond the decomposition: the handler's own code around
/// the wait (time.Now, a header), and the clocks.
const SLACK: u64 = MS;

struct Endpoint {
    path: &'static str,
    /// The cause the request's time is mostly in.
    dominant: Cause,
    /// Each wait the server measures: its header, and the cause the tracer must give it.
    waits: &'static [(&'static str, Cause)],
}

const PLAN: [Endpoint; 5] = [
    Endpoint {
        path: "/lock?ms=30",
        dominant: Cause::Lock,
        waits: &[("X-Lock-Ns", Cause::Lock)],
    },
    Endpoint {
        path: "/chan?ms=20",
        dominant: Cause::Chan,
        waits: &[("X-Chan-Ns", Cause::Chan)],
    },
    Endpoint {
        path: "/sleep?ms=20",
        dominant: Cause::Sleep,
        waits: &[("X-Sleep-Ns", Cause::Sleep)],
    },
    Endpoint {
        path: "/io?ms=20",
        dominant: Cause::NetIo,
        waits: &[("X-Io-Ns", Cause::NetIo)],
    },
    // The auth middleware of the issue: most of the request waits for the mutex, a tenth
    // sleeps, a tenth waits for a backend.
    Endpoint {
        path: "/auth?ms=60",
        dominant: Cause::Lock,
        waits: &[
            ("X-Lock-Ns", Cause::Lock),
            ("X-Sleep-Ns", Cause::Sleep),
            ("X-Io-Ns", Cause::NetIo),
        ],
    },
];

fn cause(r: &RequestRecord, c: Cause) -> u64 {
    r.breakdown.get(&c).copied().unwrap_or(0)
}

fn header_ns(response: &Response, name: &str) -> u64 {
    response
        .header(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {:?}", response.headers))
}

/// `tests/go/go_service.go` built by `toolchain` (`build`: plain or stripped), traced.
fn attributes_each_wait_to_its_cause(toolchain: Toolchain, build: GoBuild) {
    let dir = TempDir::new("go-attribution");
    let exe = build_go_program(&go_service_source(), dir.path(), build, toolchain)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let service = Workload::spawn_exe(&exe, &[]);
    let tracer = Tracer::attach(service.pid)
        .args(["--slow", "0", "-i", "1"])
        .start();
    let mut client = service.client();
    let mut sent = Vec::new();
    for _ in 0..ROUNDS {
        for endpoint in &PLAN {
            let response = client.get(endpoint.path).expect("request");
            assert_eq!(response.status, 200, "{}", endpoint.path);
            sent.push((endpoint, response));
        }
    }
    drop(client);
    let done = tracer.stop();
    assert!(done.status.success(), "tracer failed: {}", done.describe());
    let summary = done.summary();
    assert_eq!(
        summary.attribution.context,
        "goroutine",
        "{}",
        done.describe()
    );
    for reason in ["chan receive", "sleep", "IO wait"] {
        assert!(
            summary.go_wait_reasons_ns.contains_key(reason),
            "{reason} in {:?}",
            summary.go_wait_reasons_ns
        );
    }

    let mut traced: Vec<&RequestRecord> = done.requests.iter().collect();
    traced.sort_by_key(|r| r.start_ns);
    assert_eq!(
        traced.len(),
        sent.len(),
        "one traced request per request sent\n{}",
        done.describe()
    );
    for ((endpoint, response), r) in sent.iter().zip(&traced) {
        assert_eq!(r.latency_ns, r.breakdown.values().sum::<u64>(), "{r:?}");
        assert!(!r.incomplete, "no events lost: {r:?}");
        let (&dominant, _) = r.breakdown.iter().max_by_key(|(_, &ns)| ns).unwrap();
        assert_eq!(dominant, endpoint.dominant, "{}: {r:?}", endpoint.path);
        let scheduling =
            cause(r, Cause::GoRunqueue) + cause(r, Cause::Runqueue) + cause(r, Cause::OnCpu);
        for &(header, want) in endpoint.waits {
            let measured = header_ns(response, header);
            let park = cause(r, want);
            assert!(
                park <= measured + SLACK && measured <= park + scheduling + SLACK,
                "{} {header}: server measured {measured} ns; traced {} {park} ns, scheduling and CPU {scheduling} ns: {r:?}",
                endpoint.path,
                want.name()
            );
        }
    }
    service.assert_serving();
}

/// Debian's Go 1.19 (wait reasons: `semacquire` for a sync.Mutex).
#[test]
#[ignore = "needs root"]
fn go_1_19_waits_are_attributed_per_goroutine() {
    attributes_each_wait_to_its_cause(Toolchain::System, GoBuild::default());
}

/// The newest Go, stripped (`-s -w`: functions from `.gopclntab`, struct offsets and wait
/// reasons from the release's table and the binary's own array).
#[test]
#[ignore = "needs root"]
fn go_1_27_stripped_waits_are_attributed_per_goroutine() {
    let stripped = GoBuild {
        stripped: true,
        pie: false,
    };
    attributes_each_wait_to_its_cause(Toolchain::GoBin("1.27.3"), stripped);
}
