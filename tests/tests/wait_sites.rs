//! Wait sites against a real Go service (`tests/go/go_service.go`) and the bundled workload:
//! each endpoint waits in one place of its own code, and the tracer must name that code as
//! the call site of the matching cause (and a lock wait's unlocker), in `summary.json` and in
//! the flame graph (`waits.folded`, `waits.svg`); for Go, with a plain build with symbols and
//! a stripped one (names from `.gopclntab`, inlined frames expanded), on the oldest and the
//! newest Go supported.

use std::collections::BTreeMap;

use tracer::engine::Cause;
use tracer_support::go::{build_go_program, go_service_source, GoBuild, Toolchain};
use tracer_tests::{
    pin_process_to_cpu,
    session::{trace_requests_with_env, Finished, Tracer},
    CpuHog, TempDir, Workload,
};

const ROUNDS: usize = 3;

/// Each endpoint, the cause it waits in, and frames its heaviest site must hold: the
/// handler's own function and the library call it waits in.
const PLAN: [(&str, Cause, &[&str]); 4] = [
    (
        "/lock?ms=20",
        Cause::Lock,
        &["main.waitLock", "sync.(*Mutex).Lock"],
    ),
    ("/chan?ms=20", Cause::Chan, &["runtime.chanrecv1", "main."]),
    ("/sleep?ms=20", Cause::Sleep, &["time.Sleep", "main."]),
    (
        "/io?ms=20",
        Cause::NetIo,
        &["main.callBackend", "net.(*conn).Read"],
    ),
];

fn names_each_wait_site(toolchain: Toolchain, build: GoBuild) {
    let dir = TempDir::new("wait-sites");
    let exe = build_go_program(&go_service_source(), dir.path(), build, toolchain)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let service = Workload::spawn_exe(&exe, &[]);
    let tracer = Tracer::attach(service.pid).start();
    let mut client = service.client();
    for _ in 0..ROUNDS {
        for (path, _, _) in PLAN {
            assert_eq!(client.get(path).expect("request").status, 200, "{path}");
        }
    }
    drop(client);
    let done = tracer.stop();
    assert!(done.status.success(), "tracer failed: {}", done.describe());
    let summary = done.summary();

    for (path, cause, wanted) in PLAN {
        let sites = summary.wait_sites.get(&cause).unwrap_or_else(|| {
            panic!(
                "{path}: no {} sites: {:#?}",
                cause.name(),
                summary.wait_sites
            )
        });
        let top = sites
            .sites
            .first()
            .unwrap_or_else(|| panic!("{path}: {sites:#?}"));
        for frame in wanted {
            assert!(
                top.frames.iter().any(|f| f.starts_with(frame)),
                "{path}: {frame} in the heaviest {} site {top:#?}",
                cause.name()
            );
        }
        assert!(!top.truncated, "Go keeps frame pointers: {top:#?}");
        assert!(top.count >= ROUNDS as u64, "{path}: {top:#?}");
        // The site holds most of the cause's request time (the rest: short waits elsewhere,
        // such as the dial before /io's read).
        let total = summary.breakdown[&cause].total_ns;
        assert!(
            top.total_ns * 10 >= total * 9 && top.total_ns <= total,
            "{path}: the site's {} ns of the cause's {total} ns: {top:#?}",
            top.total_ns
        );
    }

    // Stacks only where a request waits: a park between requests (net/http's connection
    // goroutine waiting for its next request, or for its background reader after each
    // answer) or of a goroutine serving none takes none. Each request here parks once or
    // twice inside it, and the lock holder's release and the backend's own request take one
    // more; when every park took a stack, it was about 20 a request.
    let requests = (ROUNDS * PLAN.len()) as u64;
    assert!(
        summary.stacks.taken <= 4 * requests,
        "{} stacks for {requests} requests: taken between requests",
        summary.stacks.taken
    );

    // The unlocker: the holder goroutine's function, where it unlocks.
    let lock = &summary.wait_sites[&Cause::Lock].sites[0];
    let unlocker = lock
        .woken_by
        .first()
        .unwrap_or_else(|| panic!("who woke the /lock waits: {lock:#?}"));
    for frame in ["main.holdLock", "sync.(*Mutex).Unlock"] {
        assert!(
            unlocker.frames.iter().any(|f| f.starts_with(frame)),
            "{frame} in the unlocker's site {unlocker:#?}"
        );
    }

    // waits.folded: `cause;root;...;leaf MICROSECONDS`; each cause weighs its total.
    let folded = std::fs::read_to_string(done.out().join("waits.folded")).expect("waits.folded");
    let mut by_cause: BTreeMap<String, u64> = BTreeMap::new();
    for line in folded.lines() {
        let (frames, weight) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not `frames weight`: {line:?}"));
        let weight: u64 = weight
            .parse()
            .unwrap_or_else(|_| panic!("weight in {line:?}"));
        let cause = frames.split(';').next().unwrap();
        assert!(Cause::from_name(cause).is_some(), "root frame {cause}");
        *by_cause.entry(cause.to_string()).or_default() += weight;
    }
    for (cause, total) in &summary.breakdown {
        let us = total.total_ns / 1_000;
        let folded_us = by_cause.get(cause.name()).copied().unwrap_or(0);
        assert!(
            folded_us.abs_diff(us) <= us / 100 + 1,
            "{}: folded {folded_us} µs, summary {us} µs",
            cause.name()
        );
    }
    assert!(
        folded.contains(";main.waitLock;sync.(*Mutex).Lock;"),
        "{folded}"
    );

    let svg = std::fs::read_to_string(done.out().join("waits.svg")).expect("waits.svg");
    assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"));
    for name in ["main.waitLock", "time.Sleep", "main.callBackend"] {
        assert!(svg.contains(name), "{name} in waits.svg");
    }
    service.assert_serving();
}

tracer_tests::go_tests! {
    check: names_each_wait_site;
    /// Debian's Go 1.19, with its symbol table and DWARF.
    go_1_19_wait_sites_are_named: Toolchain::System, GoBuild::default();
    /// The newest Go, stripped: names, lines and inlined frames from `.gopclntab`.
    go_1_27_stripped_wait_sites_are_named: Toolchain::GoBin("1.27.3"), GoBuild::STRIPPED;
}

/// The bundled workload (Rust, built with frame pointers in its own code, std without): the
/// `/lock` handler's futex wait is named at the workload function that takes the mutex, and
/// its unlocker at the lock holder's thread function, where it drops the guard. The futex
/// wake happens inside std, so both stacks reach the workload's code past frames the walk
/// cannot see, and are marked `truncated` rather than guessed. Each request's largest wait
/// in `requests.jsonl` is that mutex wait, named the same way.
#[test]
#[ignore = "needs root"]
fn the_workloads_lock_wait_names_its_site_and_its_unlocker() {
    lock_wait_names_its_site_and_its_unlocker(&[]);
}

/// The same, with one bucket in the kernel's `STACKS` map: the waiter's stack and the
/// unlocker's cannot both be stored there (the first stack any of the workload's threads
/// takes holds it), so they must be kept in the spill maps (`SPILLED_STACKS`, then
/// `SPILLED_STACKS_2`) and named all the same.
#[test]
#[ignore = "needs root"]
fn a_stack_whose_bucket_is_taken_is_named_from_the_spill_map() {
    let done = lock_wait_names_its_site_and_its_unlocker(&[("TRACER_STACK_BUCKETS", "1")]);
    assert!(
        done.stderr
            .contains("tracer: stack map buckets: 1 in STACKS, 2048 in each spill map"),
        "the tracer took the one-bucket setting: {}",
        done.describe()
    );
}

/// With one bucket in each stack map, at most three distinct stacks are stored, and the
/// workload takes more (its accept, its connection's waits, the lock holder's): the ones
/// with no room are counted in `summary.json` and said at the end.
#[test]
#[ignore = "needs root"]
fn stacks_no_map_has_room_for_are_counted() {
    let workload = Workload::spawn();
    let (_, done) = trace_requests_with_env(
        &workload,
        "/lock?ms=5",
        ROUNDS,
        &[("TRACER_STACK_BUCKETS", "1,1")],
    );
    let stacks = &done.summary().stacks;
    assert!(stacks.not_stored >= 1, "{stacks:?}\n{}", done.describe());
    assert!(
        done.stdout.contains(&format!(
            "note: {} stacks not stored (the kernel's stack maps had no room)",
            stacks.not_stored
        )),
        "{}",
        done.describe()
    );
}

/// Traces `/lock` requests (with `tracer_env` for the tracer) and checks their sites;
/// returns the finished run.
fn lock_wait_names_its_site_and_its_unlocker(tracer_env: &[(&str, &str)]) -> Finished {
    let workload = Workload::spawn();
    let (responses, done) =
        trace_requests_with_env(&workload, "/lock?ms=20", ROUNDS * 2, tracer_env);
    let summary = done.summary();
    let sites = summary
        .wait_sites
        .get(&Cause::Lock)
        .unwrap_or_else(|| panic!("no lock sites: {:#?}", summary.wait_sites));
    let top = sites.sites.first().unwrap_or_else(|| panic!("{sites:#?}"));
    assert!(
        top.frames
            .iter()
            .any(|f| f.contains("LockHolder::wait_for_lock")),
        "the waiting function in the heaviest lock site {top:#?}"
    );
    assert!(top.count >= ROUNDS as u64 * 2, "{top:#?}");
    let unlocker = top
        .woken_by
        .first()
        .unwrap_or_else(|| panic!("who woke the /lock waits: {top:#?}"));
    assert!(
        unlocker
            .frames
            .iter()
            .any(|f| f.contains("LockHolder::spawn")),
        "the lock holder's thread function in the unlocker's site {unlocker:#?}"
    );
    assert!(
        !unlocker.frames.iter().any(|f| f.contains("wait_for_lock")),
        "the waiter is not its own unlocker: {unlocker:#?}"
    );
    assert!(unlocker.count >= ROUNDS as u64, "{unlocker:#?}");

    // requests.jsonl: each request's largest wait is its mutex wait, named at the same site,
    // as long as the server measured its `lock()` blocked: its time in the call less its
    // thread's wait for a CPU there (the kernel's schedstat, read by the server itself).
    let mut traced: Vec<_> = done.requests.iter().collect();
    traced.sort_by_key(|r| r.start_ns);
    assert_eq!(traced.len(), responses.len(), "{traced:#?}");
    for (r, response) in traced.iter().zip(&responses) {
        assert_eq!(response.status, 200);
        let wait = r
            .largest_wait
            .as_ref()
            .unwrap_or_else(|| panic!("no largest wait in {r:#?}"));
        assert_eq!(wait.cause, Cause::Lock, "{r:#?}");
        let blocked = response.handler_ns().saturating_sub(response.runqueue_ns());
        assert!(
            wait.wait_ns.abs_diff(blocked) <= blocked / 20 + 1_000_000,
            "the largest wait, {} ns, against the server's lock() blocked {blocked} ns: {r:#?}",
            wait.wait_ns
        );
        assert!(wait.wait_ns <= r.breakdown[&Cause::Lock], "{r:#?}");
        assert_eq!(wait.site.as_deref(), Some(top.site.as_str()), "{r:#?}");
        assert_eq!(wait.frames, top.frames, "{r:#?}");
    }
    done
}

/// The workload's `/cpu` spins while a busy process shares its CPU: the scheduler preempts
/// the handler again and again, and its time waiting for the CPU back is named at the
/// workload's spin loop, where it was preempted (in `waits.folded`, which holds every site).
#[test]
#[ignore = "needs root"]
fn a_preempted_request_waits_where_it_was_preempted() {
    let workload = Workload::spawn();
    // Every thread of the server, and the ones it starts, on CPU 0, with the hog.
    pin_process_to_cpu(workload.pid, 0);
    let _hog = CpuHog::on_cpu(0);
    let tracer = Tracer::attach(workload.pid).start();
    let mut client = workload.client();
    for _ in 0..ROUNDS {
        assert_eq!(client.get("/cpu?ms=50").expect("request").status, 200);
    }
    drop(client);
    let done = tracer.stop();
    assert!(done.status.success(), "tracer failed: {}", done.describe());
    let summary = done.summary();
    let runqueue = summary.breakdown[&Cause::Runqueue].total_ns;
    assert!(
        runqueue >= ROUNDS as u64 * 10_000_000,
        "the hog shares the CPU: {:#?}",
        summary.breakdown
    );
    let folded = std::fs::read_to_string(done.out().join("waits.folded")).expect("waits.folded");
    let at_spin_us: u64 = folded
        .lines()
        .filter(|l| l.starts_with("runqueue;") && l.contains(";workload::server::spin"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    assert!(
        at_spin_us * 1_000 * 2 >= runqueue,
        "{at_spin_us} µs of {runqueue} ns in the run queue at the spin loop:\n{folded}"
    );
}
