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
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tracer_tests::{bin_path, is_root, run_load, session::TracerSession, Workload};

/// A run refused before attaching exits at once; a run that (wrongly) attached is stopped by
/// the `-d` these tests pass, so this only bounds a hang.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);
/// The unprivileged user the privilege tests run as.
const NOBODY: &str = "65534";
/// `PF_KTHREAD` in the flags of /proc/PID/stat.
const PF_KTHREAD: u64 = 0x0020_0000;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A fresh directory under the temp dir that every user may write (the tracer may run as
/// `nobody`); removed when dropped.
struct OpenDir(PathBuf);

impl OpenDir {
    fn new(name: &str) -> OpenDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "tracer-cli-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).expect("create the output directory");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
            .expect("open the output directory to all users");
        OpenDir(path)
    }

    /// A path inside the temp dir that does not exist yet.
    fn absent(name: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("tracer-cli-{name}-{}-absent", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        path
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for OpenDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A finished command and everything it printed.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn describe(&self) -> String {
        format!(
            "status: {}\n--- stderr ---\n{}--- stdout ---\n{}",
            self.status, self.stderr, self.stdout
        )
    }

    /// A refusal: exit status `code` and exactly one stderr line, `tracer: error: ...`.
    fn refusal(&self, code: i32) -> &str {
        assert_eq!(self.status.code(), Some(code), "{}", self.describe());
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "one stderr line expected\n{}",
            self.describe()
        );
        assert!(
            lines[0].starts_with("tracer: error: "),
            "{}",
            self.describe()
        );
        lines[0]
    }
}

/// Runs `cmd` to completion, killing it after [`RUN_TIMEOUT`].
fn run(mut cmd: Command) -> Ran {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not exit within {RUN_TIMEOUT:?}; stderr:\n{}",
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(POLL);
    };
    Ran {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

fn tracer<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(bin_path("tracer"));
    cmd.args(args);
    cmd
}

fn setpriv() -> Option<PathBuf> {
    ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// `setpriv` running `program` as `nobody` with exactly the capabilities `caps` (e.g.
/// `+bpf,+perfmon`; empty for none), effective through the ambient set.
fn as_nobody(setpriv: &Path, caps: &str, program: &Path) -> Command {
    let set = if caps.is_empty() {
        "-all".to_string()
    } else {
        format!("-all,{caps}")
    };
    let mut cmd = Command::new(setpriv);
    cmd.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(format!("--bounding-set={set}"))
        .arg(program);
    cmd
}

/// `tracer --pid PID -d 2 -o OUT` as `nobody` with exactly the capabilities `caps`.
fn tracer_as_nobody(setpriv: &Path, caps: &str, pid: u32, out: &Path) -> Command {
    let mut cmd = as_nobody(setpriv, caps, &bin_path("tracer"));
    cmd.args(["--pid", &pid.to_string(), "-d", "2", "-o"])
        .arg(out);
    cmd
}

/// The workload server running as `nobody`, without capabilities.
fn workload_as_nobody(setpriv: &Path) -> Workload {
    let child = as_nobody(setpriv, "", &bin_path("workload"))
        .args(["serve", "--port", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the workload as nobody");
    Workload::from_started(child, "workload as nobody")
}

/// The checks below are about tracefs being mounted but unreadable: mount it if a test (or
/// a fresh machine) left it unmounted.
fn ensure_tracefs_mounted() {
    let tracefs = Path::new("/sys/kernel/tracing");
    if tracefs.join("events").is_dir() {
        return;
    }
    let out = Command::new("mount")
        .args(["-t", "tracefs", "nodev"])
        .arg(tracefs)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "cannot mount tracefs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn count(summary: &Value) -> u64 {
    summary
        .pointer("/requests/count")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no requests.count in summary.json:\n{summary:#}"))
}

fn read_summary(dir: &Path) -> Value {
    let path = dir.join("summary.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()))
}

macro_rules! needs_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (loads eBPF programs)");
            return;
        }
    };
}

macro_rules! needs_setpriv {
    () => {
        match setpriv() {
            Some(setpriv) => setpriv,
            None => {
                eprintln!("skipped: setpriv (util-linux) is not installed");
                return;
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// --pid
// ---------------------------------------------------------------------------------------------

/// A thread ID is resolved to its process, said on stderr, and the process is traced.
#[test]
fn thread_id_traces_its_process() {
    needs_root!();
    let workload = Workload::spawn();
    let mut load = run_load(workload.addr, &["/sleep?ms=1"], 2, 30.0, None);
    // A connection thread: the newest thread of the process, not its main thread.
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let tid = loop {
        let tids: Vec<u32> = std::fs::read_dir(format!("/proc/{}/task", workload.pid))
            .expect("list the workload's threads")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        if tids.len() >= 3 {
            break *tids.iter().max().unwrap();
        }
        assert!(Instant::now() < deadline, "workload threads: {tids:?}");
        std::thread::sleep(POLL);
    };
    assert_ne!(tid, workload.pid);

    let mut session = TracerSession::start(tid, "cli-thread", &["-d", "2", "-i", "1"]);
    let out = session.wait_exit();
    let _ = load.kill();
    let _ = load.wait();
    let describe = format!("stderr:\n{}\nstdout:\n{}", out.stderr, out.stdout);
    assert_eq!(out.status.code(), Some(0), "{describe}");
    let said = format!(
        "tracer: {tid} is a thread of process {} (workload)",
        workload.pid
    );
    let lines: Vec<&str> = out.stderr.lines().filter(|l| l.contains(&said)).collect();
    assert_eq!(lines.len(), 1, "one line saying {said:?}\n{describe}");
    assert_eq!(
        out.summary["target"]["pid"].as_u64(),
        Some(u64::from(workload.pid)),
        "{:#}",
        out.summary
    );
    assert!(
        count(&out.summary) > 0,
        "no requests seen:\n{:#}",
        out.summary
    );
}

/// A kernel thread serves no requests: refused before anything is attached.
#[test]
fn kernel_thread_is_refused_up_front() {
    needs_root!();
    let stat = std::fs::read_to_string("/proc/2/stat").expect("read /proc/2/stat");
    let flags: u64 = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse().ok())
        .expect("flags in /proc/2/stat");
    assert!(flags & PF_KTHREAD != 0, "PID 2 is not a kernel thread here");
    let out_dir = OpenDir::absent("kthread");
    let ran = run(tracer([
        OsStr::new("--pid"),
        OsStr::new("2"),
        OsStr::new("-d"),
        OsStr::new("2"),
        OsStr::new("-o"),
        out_dir.as_os_str(),
    ]));
    let line = ran.refusal(1);
    assert!(
        line.starts_with("tracer: error: PID 2 (") && line.contains("is a kernel thread"),
        "{line}"
    );
    assert!(line.contains("nothing was attached"), "{line}");
    assert!(
        !out_dir.exists(),
        "output directory created by a refused run"
    );
}

// ---------------------------------------------------------------------------------------------
// Numbers
// ---------------------------------------------------------------------------------------------

/// Seconds out of range (too large for a timer, or rows too fast to read) are refused by the
/// parser, with the range, before anything is attached.
#[test]
fn out_of_range_seconds_are_refused_before_attaching() {
    needs_root!();
    let workload = Workload::spawn();
    let pid = workload.pid.to_string();
    for (flag, value) in [("-d", "1e300"), ("-i", "1e300"), ("-i", "0.0001")] {
        let out_dir = OpenDir::absent("range");
        // `-d 3` stops a run that wrongly attached.
        let mut args = vec!["--pid", &pid, flag, value, "-o", out_dir.to_str().unwrap()];
        if flag == "-i" {
            args.extend(["-d", "3"]);
        }
        let ran = run(tracer(&args));
        let line = ran.refusal(2);
        assert!(
            line.contains(&format!("invalid value '{value}'"))
                && line.contains("SECS must be from 0.1 to 2592000 (30 days)"),
            "{flag} {value}: {line}"
        );
        assert!(
            !out_dir.exists(),
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
        let ran = run(tracer(args));
        let line = ran.refusal(2);
        assert!(line.contains(says), "{args:?}: {line}");
        assert!(!line.contains("unexpected argument"), "{args:?}: {line}");
    }
}

// ---------------------------------------------------------------------------------------------
// Privileges
// ---------------------------------------------------------------------------------------------

/// As a non-root user with CAP_BPF + CAP_PERFMON, tracefs is mounted but unreadable (mode
/// 0700): the error names CAP_DAC_READ_SEARCH rather than saying tracefs is not mounted.
#[test]
fn unreadable_tracefs_names_cap_dac_read_search() {
    needs_root!();
    let setpriv = needs_setpriv!();
    ensure_tracefs_mounted();
    let workload = workload_as_nobody(&setpriv);
    let out_dir = OpenDir::new("tracefs");
    let cmd = tracer_as_nobody(&setpriv, "+bpf,+perfmon", workload.pid, out_dir.path());
    let ran = run(cmd);
    let line = ran.refusal(1);
    assert!(line.contains("CAP_DAC_READ_SEARCH"), "{line}");
    assert!(!line.contains("not mounted"), "{line}");
}

/// tracefs not mounted, and no CAP_SYS_ADMIN to mount it: the error names CAP_SYS_ADMIN.
/// Run in a private mount namespace without tracefs, so the machine's mount is untouched.
#[test]
fn unmountable_tracefs_names_cap_sys_admin() {
    needs_root!();
    let setpriv = needs_setpriv!();
    let Some(unshare) = ["/usr/bin/unshare", "/bin/unshare"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        eprintln!("skipped: unshare (util-linux) is not installed");
        return;
    };
    let workload = workload_as_nobody(&setpriv);
    let out_dir = OpenDir::new("mount");
    let traced = tracer_as_nobody(
        &setpriv,
        "+bpf,+perfmon,+dac_read_search",
        workload.pid,
        out_dir.path(),
    );
    let mut cmd = Command::new(unshare);
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("umount /sys/kernel/tracing 2>/dev/null; exec \"$@\"")
        .arg("sh")
        .arg(traced.get_program())
        .args(traced.get_args());
    let ran = run(cmd);
    let line = ran.refusal(1);
    assert!(
        line.contains("not mounted") && line.contains("CAP_SYS_ADMIN"),
        "{line}"
    );
}

/// With CAP_BPF + CAP_PERFMON + CAP_DAC_READ_SEARCH the tracer traces a process of its own
/// user; the kernel refuses the TLS uprobes (CAP_SYS_ADMIN), and the TLS line says so rather
/// than that the SSL functions were not found.
#[test]
fn refused_uprobes_name_cap_sys_admin() {
    needs_root!();
    let setpriv = needs_setpriv!();
    ensure_tracefs_mounted();
    let workload = workload_as_nobody(&setpriv);
    let mut load = run_load(workload.addr, &["/"], 1, 30.0, None);
    let out_dir = OpenDir::new("uprobes");
    let cmd = tracer_as_nobody(
        &setpriv,
        "+bpf,+perfmon,+dac_read_search",
        workload.pid,
        out_dir.path(),
    );
    let ran = run(cmd);
    let _ = load.kill();
    let _ = load.wait();
    assert_eq!(ran.status.code(), Some(0), "{}", ran.describe());
    let tls = ran
        .stderr
        .lines()
        .find(|l| l.starts_with("tracer: TLS:"))
        .unwrap_or_else(|| panic!("no TLS line\n{}", ran.describe()));
    assert!(
        tls.contains("libssl") && tls.contains("CAP_SYS_ADMIN"),
        "the TLS line names the missing capability: {tls}"
    );
    assert!(!tls.contains("none of the SSL_* functions found"), "{tls}");
    assert!(
        count(&read_summary(out_dir.path())) > 0,
        "no requests traced with CAP_BPF + CAP_PERFMON + CAP_DAC_READ_SEARCH\n{}",
        ran.describe()
    );
}

/// Another user's process: its /proc files are closed to the tracer without CAP_SYS_PTRACE.
/// Refused up front (it used to attach and count no request at all).
#[test]
fn another_users_process_names_cap_sys_ptrace() {
    needs_root!();
    let setpriv = needs_setpriv!();
    ensure_tracefs_mounted();
    let workload = Workload::spawn(); // root's
    let out_dir = OpenDir::new("ptrace");
    let cmd = tracer_as_nobody(
        &setpriv,
        "+bpf,+perfmon,+dac_read_search",
        workload.pid,
        out_dir.path(),
    );
    let ran = run(cmd);
    let line = ran.refusal(1);
    assert!(line.contains("CAP_SYS_PTRACE"), "{line}");
    assert!(line.contains(&workload.pid.to_string()), "{line}");
}

/// `--bpf-stats` turns on BPF_ENABLE_STATS, which needs CAP_SYS_ADMIN: refused up front with
/// that name.
#[test]
fn bpf_stats_without_cap_sys_admin_is_refused() {
    needs_root!();
    let setpriv = needs_setpriv!();
    ensure_tracefs_mounted();
    let workload = workload_as_nobody(&setpriv);
    let out_dir = OpenDir::new("bpf-stats");
    let mut cmd = tracer_as_nobody(
        &setpriv,
        "+bpf,+perfmon,+dac_read_search",
        workload.pid,
        out_dir.path(),
    );
    cmd.arg("--bpf-stats");
    let ran = run(cmd);
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
fn name_after_exec_is_reported() {
    needs_root!();
    let mut sh = Command::new("sh")
        .args(["-c", "read line; exec sleep 60"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start sh");
    let pid = sh.id();
    let comm = || std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let wait_comm = |name: &str| {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while comm().trim() != name {
            assert!(
                Instant::now() < deadline,
                "comm is {:?}, not {name}",
                comm()
            );
            std::thread::sleep(POLL);
        }
    };
    wait_comm("sh"); // the fork has run exec
    let session = TracerSession::start(pid, "cli-exec", &["-i", "1"]);
    sh.stdin
        .take()
        .expect("piped")
        .write_all(b"go\n")
        .expect("tell sh to exec");
    wait_comm("sleep");
    let out = session.stop();
    let _ = sh.kill();
    let _ = sh.wait();
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let target = &out.summary["target"];
    assert_eq!(target["comm"], "sleep", "{target}");
    assert_eq!(target["comm_at_start"], "sh", "{target}");
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
fn name_after_exec_and_exit_is_reported() {
    needs_root!();
    let mut sh = Command::new("sh")
        .args(["-c", "read line; exec sleep 1.5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start sh");
    let pid = sh.id();
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        != "sh"
    {
        assert!(Instant::now() < deadline, "sh did not start");
        std::thread::sleep(POLL);
    }
    let mut session = TracerSession::start(pid, "cli-exec-exit", &["-i", "1"]);
    sh.stdin
        .take()
        .expect("piped")
        .write_all(b"go\n")
        .expect("tell sh to exec");
    let out = session.wait_exit();
    let _ = sh.wait();
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.summary["stopped_by"], "target_exit", "{}", out.summary);
    let target = &out.summary["target"];
    assert_eq!(target["comm"], "sleep", "{target}");
    assert_eq!(target["comm_at_start"], "sh", "{target}");
}

/// The live rows, including a last one for the partial interval and what the final drain
/// settled, add up to the summary's request count.
#[test]
fn live_rows_add_up_to_the_summary() {
    needs_root!();
    let workload = Workload::spawn();
    let mut load = run_load(workload.addr, &["/sleep?ms=2"], 2, 30.0, None);
    let mut session = TracerSession::start(workload.pid, "cli-rows", &["-d", "2.5", "-i", "1"]);
    let out = session.wait_exit();
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
    let total = count(&out.summary);
    assert!(total > 0, "{}", out.stdout);
    assert_eq!(
        rows.iter().sum::<u64>(),
        total,
        "live rows {rows:?} against summary.json requests.count\n{}",
        out.stdout
    );
}
