//! Fault handling of the `tracer` binary, end to end: real processes, real kernel programs.
//!
//! - refusals before anything is attached (no such PID, unwritable output, not root);
//! - clean stops (SIGTERM, SIGINT, the target exiting) that detach, write every output file
//!   and leave the traced process serving;
//! - nothing stays loaded in the kernel once the tracer has exited;
//! - `latency.hlog` loads in another HdrHistogram implementation (Python's `hdrh`).
//!
//! Every wait is a poll with a deadline that panics with what it saw; nothing here measures
//! speed. Run with `--test-threads=1` (as `cargo xtask test` does) to keep the machine quiet,
//! though the tests do not depend on it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use tracer::{
    engine::Cause,
    output::{
        aggregate::bucket_top,
        summary::{StoppedBy, Summary},
    },
};
use tracer_tests::{
    session::{find_program, read_summary, run, Tracer},
    wait_for, TempDir, Workload,
};

/// For the client to complete the requests a test waits for.
const REQUESTS_TIMEOUT: Duration = Duration::from_secs(30);
/// For the kernel to drop programs and links whose last reference was closed.
const UNLOAD_TIMEOUT: Duration = Duration::from_secs(15);
/// For helper commands (bpftool, python3).
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// The tracer's kernel programs, by function name.
const PROGRAM_NAMES: [&str; 13] = [
    "sched_switch",
    "sched_waking",
    "sched_wakeup",
    "sched_wakeup_new",
    "irq_handler_entry",
    "irq_handler_exit",
    "hrtimer_expire_entry",
    "hrtimer_expire_exit",
    "sock_recv_length",
    "sock_send_length",
    "inet_sock_set_state",
    "task_newtask",
    "sched_process_exit",
];
/// The TLS uprobe programs, loaded when the target maps an OpenSSL or is a Go program (the
/// workload links libssl.so.3 for its HTTPS mode).
const TLS_PROGRAM_NAMES: [&str; 8] = [
    "ssl_handshake_enter",
    "ssl_read_enter",
    "ssl_write_enter",
    "ssl_return",
    "ssl_free",
    "go_server_handshake_enter",
    "go_client_handshake_enter",
    "go_handshake_return",
];
/// The kernel keeps at most this many characters of a program's name (BPF_OBJ_NAME_LEN - 1).
const KERNEL_NAME_LEN: usize = 15;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Keep-alive client in a thread issuing `GET path` until stopped, counting 200 responses.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Load {
    fn start(workload: &Workload, path: &'static str) -> Load {
        let mut client = workload.client();
        client
            .set_timeout(Some(Duration::from_secs(10)))
            .expect("set client timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (s, d) = (Arc::clone(&stop), Arc::clone(&done));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match client.get(path) {
                    Ok(r) if r.status == 200 => {
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => return Err(format!("GET {path} answered {}", r.status)),
                    Err(e) => return Err(format!("GET {path} failed: {e}")),
                }
            }
            Ok(())
        });
        Load {
            stop,
            done,
            thread: Some(thread),
        }
    }

    fn completed(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests have completed.
    fn wait_for_more(&mut self, n: u64) {
        let target = self.completed() + n;
        wait_for(REQUESTS_TIMEOUT, || {
            if self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
                let result = self.thread.take().unwrap().join();
                panic!(
                    "the client stopped after {} requests: {result:?}",
                    self.completed()
                );
            }
            match self.completed() {
                done if done >= target => Ok(()),
                done => Err(format!("only {done} of {target} requests completed")),
            }
        });
    }

    /// Stops the client; returns how many requests completed, or its first error.
    fn finish(mut self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        let result = self
            .thread
            .take()
            .expect("client thread")
            .join()
            .map_err(|_| "client thread panicked".to_string())?;
        result.map(|()| self.completed())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // The thread ends after its current request (bounded by the client timeout).
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A PID no process or thread has.
fn unused_pid() -> u32 {
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (2..pid_max)
        .rev()
        .find(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        .expect("some PID below pid_max is free")
}

/// The fields of summary.json these tests rely on are present (reading it into a [`Summary`]
/// checked their types): every cause, with a share from 0 to 1, and events received.
fn check_summary_shape(s: &Summary) {
    for cause in Cause::ALL {
        let base = format!("breakdown.{}", cause.name());
        let c = s
            .breakdown
            .get(&cause)
            .unwrap_or_else(|| panic!("no {base}:\n{s:#?}"));
        assert!((0.0..=1.0).contains(&c.share), "{base}.share = {}", c.share);
    }
    assert!(s.events.received > 0, "no events received:\n{s:#?}");
}

/// latency.hlog has request and sleep histograms; requests.jsonl exists.
fn check_output_files(dir: &Path) {
    let hlog_path = dir.join("latency.hlog");
    let hlog = std::fs::read_to_string(&hlog_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", hlog_path.display()));
    for tag in ["Tag=request,", "Tag=sleep,"] {
        assert!(
            hlog.lines().any(|l| l.starts_with(tag)),
            "no line starting with {tag:?} in latency.hlog:\n{hlog}"
        );
    }
    assert!(
        dir.join("requests.jsonl").is_file(),
        "requests.jsonl missing in {}",
        dir.display()
    );
}

// --- kernel objects --------------------------------------------------------------------------

fn bpftool_json(bpftool: &Path, object: &str) -> Value {
    let mut cmd = Command::new(bpftool);
    cmd.args(["--json", object, "show"]);
    let out = run(cmd, HELPER_TIMEOUT);
    assert!(
        out.status.success(),
        "bpftool {object} show failed\n{}",
        out.describe()
    );
    // No objects at all prints nothing on some versions.
    if out.stdout.trim().is_empty() {
        return Value::Array(Vec::new());
    }
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("bpftool {object} show: bad JSON ({e}): {}", out.stdout))
}

/// Whether a loaded program's name is one of ours (possibly cut by the kernel).
fn is_our_program(name: &str) -> bool {
    PROGRAM_NAMES
        .iter()
        .chain(&TLS_PROGRAM_NAMES)
        .any(|n| *n == name || (name.len() >= KERNEL_NAME_LEN && n.starts_with(name)))
}

/// Loaded programs named like ours: id -> name.
fn our_named_programs(bpftool: &Path) -> BTreeMap<u32, String> {
    let list = bpftool_json(bpftool, "prog");
    list.as_array()
        .expect("bpftool prog show --json prints an array")
        .iter()
        .filter_map(|p| {
            let id = u32::try_from(p["id"].as_u64()?).ok()?;
            let name = p["name"].as_str()?;
            is_our_program(name).then(|| (id, name.to_string()))
        })
        .collect()
}

fn link_ids(bpftool: &Path) -> BTreeSet<u32> {
    bpftool_json(bpftool, "link")
        .as_array()
        .expect("bpftool link show --json prints an array")
        .iter()
        .filter_map(|l| u32::try_from(l["id"].as_u64()?).ok())
        .collect()
}

/// The values of `key:` lines in the fdinfo of every fd of `pid` (all processes if `None`):
/// `prog_id` names the program a prog or link fd holds, `link_id` the link.
fn fdinfo_ids(pid: Option<u32>, key: &str) -> BTreeSet<u32> {
    let pids: Vec<String> = match pid {
        Some(pid) => vec![pid.to_string()],
        None => std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let prefix = format!("{key}:");
    let mut ids = BTreeSet::new();
    for pid in pids {
        // Processes come and go while we look: unreadable entries are skipped.
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            ids.extend(
                info.lines()
                    .filter_map(|l| l.strip_prefix(&prefix))
                    .filter_map(|v| v.trim().parse::<u32>().ok()),
            );
        }
    }
    ids
}

/// Programs named like ours that were not loaded at `before`, are still loaded, and that no
/// running process holds (by a program or link fd): leaked ones. Another tracer running at
/// the same time (another test binary) holds its programs, so it is not counted.
fn orphaned_programs(bpftool: &Path, before: &BTreeMap<u32, String>) -> BTreeMap<u32, String> {
    let mut new: BTreeMap<u32, String> = our_named_programs(bpftool)
        .into_iter()
        .filter(|(id, _)| !before.contains_key(id))
        .collect();
    if new.is_empty() {
        return new;
    }
    let held = fdinfo_ids(None, "prog_id");
    new.retain(|id, _| !held.contains(id));
    new
}

/// Waits (bounded) until no program loaded since `before` is left without an owner.
fn assert_no_orphaned_programs(bpftool: &Path, before: &BTreeMap<u32, String>) {
    wait_for(UNLOAD_TIMEOUT, || {
        let orphans = orphaned_programs(bpftool, before);
        if orphans.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "programs still loaded after the tracer exited, held by no running process: \
                 {orphans:?}"
            ))
        }
    });
}

// --- Python hdrh -----------------------------------------------------------------------------

/// Reads every interval histogram of an HdrHistogram log with Python's `hdrh` and prints
/// `{"intervals", "total_count", "max", "by_tag": {tag: {"intervals", "count", "max"}}}`.
const HDRH_READER: &str = r#"
import json
import sys

from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader

# The reference histogram is only used by add_next_interval_histogram; decoded intervals
# take their parameters from their own payloads.
reader = HistogramLogReader(sys.argv[1], HdrHistogram(1, 3600 * 10**9, 3))
intervals, total, largest, by_tag = 0, 0, 0, {}
while True:
    h = reader.get_next_interval_histogram()
    if h is None:
        break
    tag = h.get_tag() or ""
    count, top = h.get_total_count(), h.get_max_value()
    intervals += 1
    total += count
    largest = max(largest, top)
    t = by_tag.setdefault(tag, {"intervals": 0, "count": 0, "max": 0})
    t["intervals"] += 1
    t["count"] += count
    t["max"] = max(t["max"], top)
reader.close()
print(json.dumps({"intervals": intervals, "total_count": total, "max": largest, "by_tag": by_tag}))
"#;

fn require_python_hdrh() {
    let Some(python) = find_program("python3") else {
        panic!("python3 is needed to load latency.hlog with hdrh: run `cargo xtask setup`");
    };
    let mut cmd = Command::new(python);
    cmd.args(["-c", "import hdrh"]);
    let out = run(cmd, HELPER_TIMEOUT);
    assert!(
        out.status.success(),
        "Python module `hdrh` is missing: run `cargo xtask setup` (or `python3 -m pip install \
         hdrhistogram`)\n{}",
        out.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
#[ignore = "needs root"]
fn bad_pid_fails_before_attaching() {
    let pid = unused_pid();
    let out = Tracer::attach(pid).run();
    let line = out.refused();
    assert!(
        line.starts_with(&format!("tracer: error: no process with PID {pid}")),
        "{}",
        out.describe()
    );
    assert!(
        !out.out().exists(),
        "the output directory {} was created although the PID check failed first",
        out.out().display()
    );
}

#[test]
#[ignore = "needs root"]
fn unwritable_output_fails_before_attaching() {
    let bpftool = find_program("bpftool");
    let before = bpftool.as_deref().map(our_named_programs);
    let workload = Workload::spawn();
    let out = Tracer::attach(workload.pid).output("/proc/version/x").run();
    let line = out.refused();
    assert!(
        line.starts_with("tracer: error:") && line.contains("--output"),
        "{}",
        out.describe()
    );
    assert!(!out.stderr.contains("attached"), "{}", out.describe());
    match (bpftool, before) {
        (Some(bpftool), Some(before)) => assert_no_orphaned_programs(&bpftool, &before),
        _ => eprintln!(
            "note: bpftool not found (`cargo xtask setup` installs it): not checking that \
             nothing stayed loaded"
        ),
    }
    workload.assert_serving();
}

#[test]
#[ignore = "needs root"]
fn not_root_is_a_clear_error() {
    let workload = Workload::spawn();
    let out = Tracer::attach(workload.pid).as_nobody("").run();
    let line = out.refused();
    assert!(
        line.starts_with("tracer: error:") && line.contains("CAP_BPF") && line.contains("root"),
        "{}",
        out.describe()
    );
    assert!(
        !out.out().exists(),
        "output directory created by a refused run"
    );
    workload.assert_serving();
}

/// Trace under load without a duration, stop with `sig` once `requests` more requests have
/// completed, and check the stop was clean.
fn signal_detaches_and_writes_files(sig: libc::c_int, requests: u64) {
    let workload = Workload::spawn();
    let mut load = Load::start(&workload, "/sleep?ms=2");
    let tracer = Tracer::attach(workload.pid).args(["-i", "1"]).start();
    load.wait_for_more(requests);
    let out = tracer.stop_with(sig);
    assert_eq!(
        out.status.code(),
        Some(0),
        "tracer did not exit 0\n{}",
        out.describe()
    );

    // The target was never disturbed: the keep-alive client saw no error during the whole
    // trace, including the detach, and keeps being served after it.
    load.wait_for_more(5);
    let sent = load
        .finish()
        .unwrap_or_else(|e| panic!("the client failed while traced: {e}"));
    workload.assert_serving();

    let s = read_summary(out.out());
    assert_eq!(s.stopped_by, StoppedBy::Signal, "{s:#?}");
    let count = s.requests.count;
    assert!(count > 0, "no requests counted:\n{s:#?}");
    assert!(
        count <= sent + 1,
        "{count} requests counted but the client completed only {sent}:\n{s:#?}"
    );
    check_summary_shape(&s);
    check_output_files(out.out());
}

#[test]
#[ignore = "needs root"]
fn sigterm_detaches_and_writes_files() {
    signal_detaches_and_writes_files(libc::SIGTERM, 40);
}

#[test]
#[ignore = "needs root"]
fn sigint_detaches_and_writes_files() {
    signal_detaches_and_writes_files(libc::SIGINT, 10);
}

#[test]
#[ignore = "needs root"]
fn target_exit_mid_trace_finishes_cleanly() {
    let mut workload = Workload::spawn();
    let mut load = Load::start(&workload, "/sleep?ms=2");
    let tracer = Tracer::attach(workload.pid).args(["-i", "1"]).start();
    load.wait_for_more(20);

    // Reaped at once, so it is gone rather than a zombie (both count as exited).
    workload.child.kill().expect("kill the workload");
    workload.child.wait().expect("reap the workload");
    let out = tracer.wait_exit();
    assert_eq!(
        out.status.code(),
        Some(0),
        "tracer did not exit 0 after its target exited\n{}",
        out.describe()
    );
    // The client loses its server, so its error is expected.
    let _ = load.finish();

    let s = read_summary(out.out());
    assert_eq!(s.stopped_by, StoppedBy::TargetExit, "{s:#?}");
    assert!(s.requests.count > 0, "no requests counted:\n{s:#?}");
    check_summary_shape(&s);
}

#[test]
#[ignore = "needs root"]
fn nothing_stays_loaded_after_exit() {
    let Some(bpftool) = find_program("bpftool") else {
        eprintln!(
            "skipped: bpftool not found on PATH (`cargo xtask setup` installs it); it lists \
             the kernel's BPF programs"
        );
        return;
    };
    let before = our_named_programs(&bpftool);
    let workload = Workload::spawn();
    let mut load = Load::start(&workload, "/sleep?ms=2");
    let tracer = Tracer::attach(workload.pid)
        .args(["--duration", "2"])
        .start();

    // What this tracer holds, read from its own fds while it runs (the duration starts after
    // the attached line): exact even if other tracers run on the machine at the same time.
    let progs = fdinfo_ids(Some(tracer.pid()), "prog_id");
    let links = fdinfo_ids(Some(tracer.pid()), "link_id");
    let loaded = our_named_programs(&bpftool);
    let names: BTreeSet<&str> = progs
        .iter()
        .map(|id| {
            loaded.get(id).map(String::as_str).unwrap_or_else(|| {
                panic!(
                    "the tracer holds program {id}, not listed under one of our names: {loaded:?}"
                )
            })
        })
        .collect();
    for name in PROGRAM_NAMES {
        assert!(
            names.iter().any(|n| name.starts_with(n)),
            "program {name} not loaded by the tracer; it holds {progs:?} = {names:?}"
        );
    }
    assert!(!links.is_empty(), "the tracer holds no BPF links");
    load.wait_for_more(10);

    let out = tracer.wait_exit();
    assert_eq!(out.status.code(), Some(0), "{}", out.describe());
    assert_eq!(read_summary(out.out()).stopped_by, StoppedBy::Duration);

    // Its programs and links are gone from the kernel...
    wait_for(UNLOAD_TIMEOUT, || {
        let still_progs: Vec<u32> = our_named_programs(&bpftool)
            .into_keys()
            .filter(|id| progs.contains(id))
            .collect();
        let still_links: Vec<u32> = link_ids(&bpftool).intersection(&links).copied().collect();
        if still_progs.is_empty() && still_links.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "after the tracer exited, still loaded: programs {still_progs:?}, links \
                 {still_links:?}"
            ))
        }
    });
    // ...and no program named like ours appeared without an owner.
    assert_no_orphaned_programs(&bpftool, &before);
    let _ = load.finish();
    workload.assert_serving();
}

#[test]
#[ignore = "needs root"]
fn hlog_loads_in_another_hdrhistogram_implementation() {
    require_python_hdrh();
    let workload = Workload::spawn();
    let mut load = Load::start(&workload, "/sleep?ms=2");
    let tracer = Tracer::attach(workload.pid)
        .args(["-d", "2", "-i", "1"])
        .start();
    load.wait_for_more(20);
    let out = tracer.wait_exit();
    assert_eq!(out.status.code(), Some(0), "{}", out.describe());
    let _ = load.finish();

    let summary = read_summary(out.out());
    let count = summary.requests.count;
    let max = summary.requests.latency_ns.max;
    assert!(count > 0, "no requests counted:\n{summary:#?}");

    let script_dir = TempDir::new("hdrh-script");
    let script = script_dir.path().join("read_hlog.py");
    std::fs::write(&script, HDRH_READER).expect("write the Python script");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg(out.out().join("latency.hlog"));
    let py = run(cmd, HELPER_TIMEOUT);
    assert!(
        py.status.success(),
        "Python hdrh could not read latency.hlog\n{}",
        py.describe()
    );
    let decoded: Value = serde_json::from_str(py.stdout.trim())
        .unwrap_or_else(|e| panic!("bad output from the Python reader ({e})\n{}", py.describe()));

    let intervals = decoded["intervals"].as_u64().unwrap_or(0);
    assert!(intervals > 0, "hdrh read no interval: {decoded:#}");
    let by_tag = decoded["by_tag"]
        .as_object()
        .unwrap_or_else(|| panic!("{decoded:#}"));
    let mut expected_tags: Vec<&str> = Cause::ALL.iter().map(|c| c.name()).collect();
    expected_tags.push("request");
    expected_tags.sort_unstable();
    let tags: Vec<&str> = by_tag.keys().map(String::as_str).collect();
    assert_eq!(tags, expected_tags, "tags read by hdrh: {decoded:#}");
    // Every request is recorded once in the request histogram and once per cause.
    for (tag, t) in by_tag {
        assert_eq!(
            t["count"].as_u64(),
            Some(count),
            "hdrh counts {tag} values {}, summary.json has {count} requests: {decoded:#}",
            t["count"]
        );
        assert_eq!(
            t["intervals"], by_tag["request"]["intervals"],
            "tag {tag} has another number of intervals: {decoded:#}"
        );
    }
    assert_eq!(
        decoded["total_count"].as_u64(),
        Some((Cause::ALL.len() as u64 + 1) * count),
        "{decoded:#}"
    );
    // summary.json's max is the longest request, exactly; a histogram holds its bucket.
    assert_eq!(
        by_tag["request"]["max"].as_u64(),
        Some(bucket_top(max)),
        "request max decoded by hdrh is not the top of the bucket of summary.json's \
         latency_ns.max {max}: {decoded:#}"
    );
}
