//! What a new user types, end to end with the real `tracer` binary: a thread ID or a kernel
//! thread as `--pid`, out-of-range and negative numbers, reduced privileges, a target that
//! runs `exec`, and the live rows against the summary.
//!
//! The privilege tests run the tracer as user `nobody` with a chosen capability set
//! (`setpriv`, util-linux) and check that the message names what is really missing.
//!
//! Every wait is bounded and panics with what it saw. Run with `--test-threads=1` (as
//! `cargo xtask test` does).

use std::ffi::OsStr;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use tracer::output::summary::StoppedBy;
use tracer_tests::{
    run_load,
    session::{find_program, read_summary, Tracer},
    support::go::{build_go_program, go_service_source, GoBuild, Toolchain},
    wait_for, TempDir, Workload,
};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// `PF_KTHREAD` in the flags of /proc/PID/stat.
const PF_KTHREAD: u64 = 0x0020_0000;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `tracer --pid PID -d 2` as `nobody` with exactly the capabilities `caps`, writing into a
/// directory `nobody` may write to.
fn tracer_as_nobody(caps: &str, pid: u32) -> Tracer {
    Tracer::attach(pid)
        .output_open_to_all()
        .args(["-d", "2"])
        .as_nobody(caps)
}

/// The name of process `pid` (empty once it is gone).
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Waits until process `pid` is named `name`.
fn wait_comm(pid: u32, name: &str) {
    wait_for(STARTUP_TIMEOUT, || match comm(pid) {
        comm if comm == name => Ok(()),
        comm => Err(format!("comm is {comm:?}, not {name}")),
    });
}

// ---------------------------------------------------------------------------------------------
// --pid
// ---------------------------------------------------------------------------------------------

/// A thread ID is resolved to its process, said on stderr, and the process is traced.
#[test]
#[ignore = "needs root"]
fn thread_id_traces_its_process() {
    let workload = Workload::spawn();
    let mut load = run_load(workload.addr, &["/sleep?ms=1"], 2, 30.0, None);
    // A connection thread: the newest thread of the process, not its main thread.
    let tid = wait_for(STARTUP_TIMEOUT, || {
        let tids: Vec<u32> = std::fs::read_dir(format!("/proc/{}/task", workload.pid))
            .expect("list the workload's threads")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        match tids.iter().max() {
            Some(&newest) if tids.len() >= 3 => Ok(newest),
            _ => Err(format!("workload threads: {tids:?}")),
        }
    });
    assert_ne!(tid, workload.pid);

    let out = Tracer::attach(tid)
        .args(["-d", "2", "-i", "1"])
        .start()
        .wait_exit();
    let _ = load.kill();
    let _ = load.wait();
    let describe = out.describe();
    assert_eq!(out.status.code(), Some(0), "{describe}");
    let said = format!(
        "tracer: {tid} is a thread of process {} (workload)",
        workload.pid
    );
    let lines: Vec<&str> = out.stderr.lines().filter(|l| l.contains(&said)).collect();
    assert_eq!(lines.len(), 1, "one line saying {said:?}\n{describe}");
    let summary = out.summary();
    assert_eq!(summary.target.pid, workload.pid, "{summary:?}");
    assert!(summary.requests.count > 0, "no requests seen:\n{summary:?}");
}

/// A kernel thread serves no requests: refused before anything is attached.
#[test]
#[ignore = "needs root"]
fn kernel_thread_is_refused_up_front() {
    let stat = std::fs::read_to_string("/proc/2/stat").expect("read /proc/2/stat");
    let flags: u64 = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse().ok())
        .expect("flags in /proc/2/stat");
    assert!(flags & PF_KTHREAD != 0, "PID 2 is not a kernel thread here");
    let ran = Tracer::attach(2).args(["-d", "2"]).run();
    let line = ran.refusal(1);
    assert!(
        line.starts_with("tracer: error: PID 2 (") && line.contains("is a kernel thread"),
        "{line}"
    );
    assert!(line.contains("nothing was attached"), "{line}");
    assert!(
        !ran.out().exists(),
        "output directory created by a refused run"
    );
}

// ---------------------------------------------------------------------------------------------
// Numbers
// ---------------------------------------------------------------------------------------------

/// Seconds out of range (too large for a timer, or rows too fast to read) are refused by the
/// parser, with the range, before anything is attached.
#[test]
#[ignore = "needs root"]
fn out_of_range_seconds_are_refused_before_attaching() {
    let workload = Workload::spawn();
    for (flag, value) in [("-d", "1e300"), ("-i", "1e300"), ("-i", "0.0001")] {
        let mut tracer = Tracer::attach(workload.pid).args([flag, value]);
        if flag == "-i" {
            // Stops a run that wrongly attached.
            tracer = tracer.args(["-d", "3"]);
        }
        let ran = tracer.run();
        let line = ran.refusal(2);
        assert!(
            line.contains(&format!("invalid value '{value}'"))
                && line.contains("SECS must be from 0.1 to 2592000 (30 days)"),
            "{flag} {value}: {line}"
        );
        assert!(
            !ran.out().exists(),
            "output directory created by a refused run"
        );
    }
}

/// `--pid -1`, `--duration -5` and `--slow -1` are values, refused with the value's message
/// (as `--slow=-1` always was), not read as unknown flags.
#[test]
fn negative_numbers_get_the_value_message() {
    for (args, says) in [
        (&["--pid", "-1"][..], "invalid value '-1' for '--pid <PID>'"),
        (
            &["--pid", "1", "--duration", "-5"],
            "invalid value '-5' for '--duration <SECS>'",
        ),
        (
            &["--pid", "1", "--slow", "-1"],
            "invalid value '-1' for '--slow <MS>'",
        ),
    ] {
        let ran = Tracer::command_line(args).run();
        let line = ran.refusal(2);
        assert!(line.contains(says), "{args:?}: {line}");
        assert!(!line.contains("unexpected argument"), "{args:?}: {line}");
    }
}

// ---------------------------------------------------------------------------------------------
// Privileges
// ---------------------------------------------------------------------------------------------

/// No tracefs is needed: every program is a raw tracepoint (attached by name) or a uprobe.
/// As user `nobody` with CAP_BPF + CAP_PERFMON only, in a private mount namespace without
/// tracefs (so the machine's mount is untouched), the tracer traces a process of its own user.
#[test]
#[ignore = "needs root"]
fn traces_without_tracefs_with_cap_bpf_and_cap_perfmon() {
    let unshare =
        find_program("unshare").expect("unshare (Debian package util-linux) is installed");
    let workload = Workload::spawn_as_nobody();
    let mut load = run_load(workload.addr, &["/"], 1, 30.0, None);
    let ran = tracer_as_nobody("+bpf,+perfmon", workload.pid)
        .wrapped_in(
            [unshare.as_os_str()].into_iter().chain(
                [
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    // Exit 97 if tracefs is still there: then this test would prove nothing.
                    "umount /sys/kernel/tracing 2>/dev/null; \
                     test -e /sys/kernel/tracing/events && exit 97; exec \"$@\"",
                    "sh",
                ]
                .map(OsStr::new),
            ),
        )
        .run();
    let _ = load.kill();
    let _ = load.wait();
    assert_ne!(
        ran.status.code(),
        Some(97),
        "tracefs could not be unmounted in the test's mount namespace"
    );
    assert_eq!(ran.status.code(), Some(0), "{}", ran.describe());
    assert!(
        read_summary(ran.out()).requests.count > 0,
        "no requests traced without tracefs\n{}",
        ran.describe()
    );
}

/// With CAP_BPF + CAP_PERFMON the tracer traces a process of its own user and hooks its
/// OpenSSL: its uprobes are `uprobe_multi` links, whose creation this kernel checks by the
/// program's load. As perf events (`TRACER_UPROBE_MULTI=0`, as on a kernel without those
/// links) the kernel refuses them (CAP_SYS_ADMIN), and the TLS line says so rather than that
/// the SSL functions were not found.
#[test]
#[ignore = "needs root"]
fn refused_uprobes_name_cap_sys_admin() {
    let workload = Workload::spawn_as_nobody();
    let mut load = run_load(workload.addr, &["/"], 1, 30.0, None);
    for multi in ["1", "0"] {
        let ran = tracer_as_nobody("+bpf,+perfmon", workload.pid)
            .env("TRACER_UPROBE_MULTI", multi)
            .run();
        assert_eq!(ran.status.code(), Some(0), "{}", ran.describe());
        let tls = ran.stderr_line("tracer: TLS:");
        if multi == "1" {
            assert!(
                tls.contains("libssl") && tls.contains("hooked SSL_do_handshake"),
                "the TLS uprobes are attached: {tls}"
            );
        } else {
            assert!(
                tls.contains("libssl") && tls.contains("CAP_SYS_ADMIN"),
                "the TLS line names the missing capability: {tls}"
            );
            assert!(!tls.contains("none of the SSL_* functions found"), "{tls}");
        }
        assert!(
            read_summary(ran.out()).requests.count > 0,
            "no requests traced with CAP_BPF + CAP_PERFMON\n{}",
            ran.describe()
        );
    }
    let _ = load.kill();
    let _ = load.wait();
}

/// A Go target's probes are `uprobe_multi` links, which this kernel lets CAP_BPF + CAP_PERFMON
/// create (the BPF program's load is what it checks): as `nobody` with those two, the tracer
/// follows the goroutines of a Go service of its own user. The same probes as perf events
/// (`TRACER_UPROBE_MULTI=0`) are refused for lack of CAP_SYS_ADMIN, and the line says so.
#[test]
#[ignore = "needs root"]
fn go_probes_need_no_cap_sys_admin() {
    let dir = TempDir::open_to_all("go-as-nobody");
    let exe = build_go_program(
        &go_service_source(),
        dir.path(),
        GoBuild::default(),
        Toolchain::System,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let service = Workload::start(tracer_tests::session::as_nobody("", &exe));
    for (multi, followed) in [("1", true), ("0", false)] {
        let tracer = Tracer::attach(service.pid)
            .output_open_to_all()
            .as_nobody("+bpf,+perfmon")
            .env("TRACER_UPROBE_MULTI", multi)
            .start();
        let mut client = service.client();
        for _ in 0..3 {
            let response = client.get("/chan?ms=1").expect("GET /chan");
            assert_eq!(response.status, 200, "{response:?}");
        }
        let ran = tracer.stop();
        assert_eq!(ran.status.code(), Some(0), "{}", ran.describe());
        let line = ran.stderr_line("tracer: Go runtime:");
        let summary = read_summary(ran.out());
        assert_eq!(summary.requests.count, 3, "{}", ran.describe());
        if followed {
            assert!(line.contains("goroutines followed"), "{line}");
            assert_eq!(summary.attribution.context, "goroutine", "{line}");
        } else {
            assert!(
                line.contains("goroutine attribution is off") && line.contains("CAP_SYS_ADMIN"),
                "{line}"
            );
            assert_eq!(summary.attribution.context, "thread", "{line}");
        }
    }
    assert!(service.alive(), "the Go service is gone");
}

/// Another user's process: its /proc files are closed to the tracer without CAP_SYS_PTRACE.
/// Refused up front (it used to attach and count no request at all).
#[test]
#[ignore = "needs root"]
fn another_users_process_names_cap_sys_ptrace() {
    let workload = Workload::spawn(); // root's
    let ran = tracer_as_nobody("+bpf,+perfmon", workload.pid).run();
    let line = ran.refusal(1);
    assert!(line.contains("CAP_SYS_PTRACE"), "{line}");
    assert!(line.contains(&workload.pid.to_string()), "{line}");
}

/// `--bpf-stats` turns on BPF_ENABLE_STATS, which needs CAP_SYS_ADMIN: refused up front with
/// that name.
#[test]
#[ignore = "needs root"]
fn bpf_stats_without_cap_sys_admin_is_refused() {
    let workload = Workload::spawn_as_nobody();
    let ran = tracer_as_nobody("+bpf,+perfmon", workload.pid)
        .args(["--bpf-stats"])
        .run();
    let line = ran.refusal(1);
    assert!(
        line.contains("--bpf-stats") && line.contains("CAP_SYS_ADMIN"),
        "{line}"
    );
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

/// A target that runs `exec` while traced is named by its new name at the end, and its
/// name at the start is kept.
#[test]
#[ignore = "needs root"]
fn name_after_exec_is_reported() {
    let mut sh = Command::new("sh")
        .args(["-c", "read line; exec sleep 60"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start sh");
    let pid = sh.id();
    wait_comm(pid, "sh"); // the fork has run exec
    let session = Tracer::attach(pid).args(["-i", "1"]).start();
    sh.stdin
        .take()
        .expect("piped")
        .write_all(b"go\n")
        .expect("tell sh to exec");
    wait_comm(pid, "sleep");
    let out = session.stop();
    let _ = sh.kill();
    let _ = sh.wait();
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let target = &out.summary().target;
    assert_eq!(target.comm, "sleep", "{target:?}");
    assert_eq!(target.comm_at_start, "sh", "{target:?}");
    assert!(
        out.stdout
            .contains(&format!("PID {pid} (sleep, was sh at the start)")),
        "{}",
        out.stdout
    );
}

/// A target that runs `exec` and then exits while traced is named by the name it exited
/// with (its main thread's exit event), not the one it started with.
#[test]
#[ignore = "needs root"]
fn name_after_exec_and_exit_is_reported() {
    let mut sh = Command::new("sh")
        .args(["-c", "read line; exec sleep 1.5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start sh");
    let pid = sh.id();
    wait_comm(pid, "sh");
    let session = Tracer::attach(pid).args(["-i", "1"]).start();
    sh.stdin
        .take()
        .expect("piped")
        .write_all(b"go\n")
        .expect("tell sh to exec");
    let out = session.wait_exit();
    let _ = sh.wait();
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let summary = out.summary();
    assert_eq!(summary.stopped_by, StoppedBy::TargetExit, "{summary:?}");
    let target = &summary.target;
    assert_eq!(target.comm, "sleep", "{target:?}");
    assert_eq!(target.comm_at_start, "sh", "{target:?}");
}

/// The live rows, including a last one for the partial interval and what the final drain
/// settled, add up to the summary's request count.
#[test]
#[ignore = "needs root"]
fn live_rows_add_up_to_the_summary() {
    let workload = Workload::spawn();
    let mut load = run_load(workload.addr, &["/sleep?ms=2"], 2, 30.0, None);
    let out = Tracer::attach(workload.pid)
        .args(["-d", "2.5", "-i", "1"])
        .start()
        .wait_exit();
    let _ = load.kill();
    let _ = load.wait();
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let rows: Vec<u64> = out
        .stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("time"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty() && !l.contains("==="))
        .map(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not a live row: {l:?}\n{}", out.stdout))
        })
        .collect();
    assert_eq!(
        rows.len(),
        3,
        "rows at 1 s, 2 s and the last, partial one\n{}",
        out.stdout
    );
    let total = out.summary().requests.count;
    assert!(total > 0, "{}", out.stdout);
    assert_eq!(
        rows.iter().sum::<u64>(),
        total,
        "live rows {rows:?} against summary.json requests.count\n{}",
        out.stdout
    );
}
