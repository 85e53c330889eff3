//! The tracer's output files, end to end (real tracer, real workload, as root):
//!
//! - symlinks planted under the output names, or under the pre-flight write-check name, are
//!   never followed: the file they point to is unchanged and the outputs are regular files;
//! - a rerun replaces the previous run's files with new ones (a hard link to an old file
//!   keeps the old run's data);
//! - on a full filesystem the trace goes on: each failing file is reported once by name, the
//!   final summary is printed, and the exit status says the files are incomplete;
//! - after a SIGKILL, every line of the requests log (left under its `.partial` name) is
//!   whole JSON.

use std::{
    ffi::CString,
    os::unix::{
        ffi::OsStrExt as _,
        fs::{symlink, MetadataExt as _},
    },
    path::Path,
    process::Child,
    time::Duration,
};

use serde_json::Value;
use tracer_tests::{load_result, run_load, session::Tracer, wait_for, TempDir, Workload};

const OUTPUTS: [&str; 5] = [
    "summary.json",
    "requests.jsonl",
    "latency.hlog",
    "waits.folded",
    "waits.svg",
];
/// The pre-flight check's name (it now adds `.PID`, and never touches this one).
const WRITE_TEST: &str = ".tracer-write-test";
/// How long a test waits for the tracer to write something.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The user that plants the symlinks (nobody).
const OTHER_UID: u32 = 65534;

/// A small tmpfs, unmounted (and its mount point removed) when dropped.
struct SmallFs(TempDir);

impl SmallFs {
    fn mount(name: &str, size: &str) -> SmallFs {
        let dir = TempDir::new(name);
        let c = |s: &[u8]| CString::new(s).unwrap();
        let (target, options) = (
            c(dir.path().as_os_str().as_bytes()),
            c(format!("size={size}").as_bytes()),
        );
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c(b"tmpfs").as_ptr(),
                target.as_ptr(),
                c(b"tmpfs").as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount -t tmpfs -o size={size} on {}: {}",
            dir.path().display(),
            std::io::Error::last_os_error()
        );
        SmallFs(dir)
    }
}

impl SmallFs {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallFs {
    /// Unmounts it; the mount point goes with the [`TempDir`].
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.path().as_os_str().as_bytes()) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Keep-alive load for `secs` seconds: a few thousand requests a second at most, which even
/// a debug build of the tracer follows on a busy machine.
fn load(workload: &Workload, secs: f64) -> Child {
    run_load(workload.addr, &["/sleep?ms=1"], 2, secs, None)
}

/// The load saw no error and the target still answers: the tracer never disturbed it.
fn assert_target_unharmed(workload: &Workload, load: Child) {
    let result = load_result(load);
    assert_eq!(result.errors, 0, "the load saw errors: {result:?}");
    assert!(result.requests > 0, "{result:?}");
    workload.assert_serving();
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `dir` holds the tracer's output files ([`OUTPUTS`]) and `others`, and nothing else.
fn assert_only_outputs_and(dir: &Path, others: &[&str]) {
    let mut expected: Vec<&str> = OUTPUTS.iter().chain(others).copied().collect();
    expected.sort_unstable();
    assert_eq!(
        names_in(dir),
        expected,
        "left-over files in {}",
        dir.display()
    );
}

/// Every line of `path` is JSON, and the file ends with a newline (or is empty).
fn assert_whole_json_lines(path: &Path) -> usize {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} ends with a cut line: {:?}",
        path.display(),
        &text[text.len().saturating_sub(200)..]
    );
    assert_json_lines(path, &text)
}

/// What a SIGKILL leaves (the README's contract): every line of `path` is JSON, but the
/// last may be cut where Linux cut the `write(2)` that SIGKILL interrupted, which is at a
/// page boundary of the file (`generic_perform_write()` copies page by page and stops
/// between pages on a fatal signal, mm/filemap.c, Linux 6.18): so a file that does not
/// end with a newline ends at a multiple of the page size, and only its text after the
/// last newline is cut.
fn assert_whole_json_lines_or_a_write_cut_at_a_page(path: &Path) -> usize {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    if text.is_empty() || text.ends_with('\n') {
        return assert_json_lines(path, &text);
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    assert!(
        text.len().is_multiple_of(page),
        "{} ends with a cut line, not at a page boundary ({} bytes): {:?}",
        path.display(),
        text.len(),
        &text[text.len().saturating_sub(200)..]
    );
    let whole = text.rfind('\n').map_or(0, |i| i + 1);
    assert_json_lines(path, &text[..whole])
}

/// Every line of `text` (read from `path`) is JSON; how many there are.
fn assert_json_lines(path: &Path, text: &str) -> usize {
    for (i, line) in text.lines().enumerate() {
        if let Err(e) = serde_json::from_str::<Value>(line) {
            panic!("{} line {}: {e}: {line:?}", path.display(), i + 1);
        }
    }
    text.lines().count()
}

fn assert_regular_file(path: &Path) {
    let meta = std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{} is missing: {e}", path.display()));
    assert!(
        meta.file_type().is_file(),
        "{} is not a regular file: {:?}",
        path.display(),
        meta.file_type()
    );
}

#[test]
#[ignore = "needs root"]
fn planted_symlinks_are_not_followed() {
    // An output directory other users can create files in, where one of them planted a
    // symlink under each name the tracer writes, all pointing to a file of root's.
    let scratch = TempDir::new("symlinks");
    let out = scratch.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let victim = scratch.path().join("victim");
    let original = "root's file: the tracer must not change it\n";
    std::fs::write(&victim, original).unwrap();
    for name in OUTPUTS.iter().chain(&[WRITE_TEST]) {
        let link = out.join(name);
        symlink(&victim, &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    }

    let workload = Workload::spawn();
    let load = load(&workload, 6.0);
    let finished = Tracer::attach(workload.pid)
        .output(&out)
        .args(["--slow", "0", "-i", "1", "-d", "2"])
        .start()
        .wait_exit();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.describe());
    assert_target_unharmed(&workload, load);

    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        original,
        "the file the planted symlinks point to was written"
    );
    assert_eq!(
        std::fs::metadata(&victim).unwrap().len() as usize,
        original.len()
    );
    for name in OUTPUTS {
        assert_regular_file(&out.join(name));
    }
    let requests = assert_whole_json_lines(&out.join("requests.jsonl"));
    assert!(
        requests > 0,
        "no requests logged with --slow 0: {}",
        finished.describe()
    );
    assert!(
        finished.summary().requests.count > 0,
        "{:?}",
        finished.summary()
    );
    // The write check used a fresh name and removed it; the planted one is left alone.
    assert_eq!(
        std::fs::read_link(out.join(WRITE_TEST)).ok().as_deref(),
        Some(victim.as_path()),
        "the planted {WRITE_TEST} symlink was touched"
    );
    assert_only_outputs_and(&out, &[WRITE_TEST]);
}

#[test]
#[ignore = "needs root"]
fn a_rerun_replaces_the_previous_files() {
    let scratch = TempDir::new("rerun");
    let out = scratch.path().join("out");
    let workload = Workload::spawn();

    let load1 = load(&workload, 5.0);
    let first = Tracer::attach(workload.pid)
        .output(&out)
        .args(["--slow", "0", "-i", "1", "-d", "2"])
        .start()
        .wait_exit();
    assert_eq!(first.status.code(), Some(0), "{}", first.describe());
    assert!(!first.requests.is_empty(), "first run logged no request");
    let _ = load_result(load1);
    // A user keeps the first run's files under other names, as hard links.
    let keep = scratch.path().join("keep");
    std::fs::create_dir(&keep).unwrap();
    let mut kept = Vec::new();
    for name in OUTPUTS {
        std::fs::hard_link(out.join(name), keep.join(name)).unwrap();
        kept.push(std::fs::read(out.join(name)).unwrap());
    }

    // The second run logs no request (no --slow) and traces one second.
    let load2 = load(&workload, 5.0);
    let second = Tracer::attach(workload.pid)
        .output(&out)
        .args(["-i", "1", "-d", "1"])
        .start()
        .wait_exit();
    assert_eq!(second.status.code(), Some(0), "{}", second.describe());
    assert_target_unharmed(&workload, load2);

    for (name, old) in OUTPUTS.iter().zip(&kept) {
        let path = out.join(name);
        assert_regular_file(&path);
        assert_ne!(
            std::fs::metadata(&path).unwrap().ino(),
            std::fs::metadata(keep.join(name)).unwrap().ino(),
            "{name} was rewritten in place instead of replaced"
        );
        assert_eq!(
            &std::fs::read(keep.join(name)).unwrap(),
            old,
            "the rerun changed the previous run's {name} (through a hard link to it)"
        );
    }
    assert_eq!(
        std::fs::read_to_string(out.join("requests.jsonl")).unwrap(),
        "",
        "requests.jsonl is not the second run's"
    );
    let s = second.summary();
    assert_eq!(s.requests.slow_logged, 0, "{s:?}");
    assert!(s.incomplete_files.is_empty(), "{s:?}");
    assert_ne!(s, first.summary());
    let hlog = std::fs::read_to_string(out.join("latency.hlog")).unwrap();
    assert!(hlog.contains("Tag=request,"), "{hlog}");
    assert_only_outputs_and(&out, &[]);
}

#[test]
#[ignore = "needs root"]
fn a_full_filesystem_loses_only_the_files() {
    // 64 KiB: `--slow 0` under load fills it with requests.jsonl within a second, and
    // latency.hlog's next interval then finds no room either.
    let fs = SmallFs::mount("fullfs", "64k");
    let workload = Workload::spawn();
    let load = load(&workload, 30.0);
    let tracer = Tracer::attach(workload.pid)
        .output(fs.path())
        .args(["--slow", "0", "-i", "1"])
        .start();
    // Until the filesystem is nearly full, then three more intervals.
    wait_for(WRITE_TIMEOUT, || {
        (bytes_in(fs.path(), "") > 40 * 1024)
            .then_some(())
            .ok_or("the tmpfs to fill up")
    });
    std::thread::sleep(Duration::from_secs(3));
    let finished = tracer.stop();
    let what = finished.describe();

    assert!(!what.contains("panicked"), "the tracer panicked\n{what}");
    assert!(
        !finished.stderr.contains("IoError("),
        "a debug dump instead of a message\n{what}"
    );
    assert_eq!(finished.status.code(), Some(1), "{what}");
    // Each failing file is reported on one line, once, by name, with what to do.
    let reports: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|l| l.contains("requests.jsonl") && l.contains("No space left on device"))
        .filter(|l| !l.starts_with("tracer: error:"))
        .collect();
    assert_eq!(
        reports.len(),
        1,
        "requests.jsonl's failure not reported once\n{what}"
    );
    let report = reports[0];
    assert!(
        report.starts_with("tracer: ")
            && report.contains(&fs.path().join("requests.jsonl").display().to_string())
            && report.contains("Free space")
            && report.contains("tracing goes on"),
        "{report}"
    );
    for name in ["latency.hlog", "summary.json"] {
        let n = finished
            .stderr
            .lines()
            .filter(|l| !l.starts_with("tracer: error:") && l.contains(name))
            .count();
        assert!(n <= 1, "{name} reported {n} times\n{what}");
    }
    // Tracing went on to the end: the console summary is printed, with the whole trace.
    assert!(
        finished.stdout.contains("=== tracer: PID")
            && finished.stdout.contains("stopped by signal"),
        "no final summary\n{what}"
    );
    let live_rows = finished
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()) && l.contains('|'))
        .count();
    assert!(
        live_rows >= 3,
        "tracing stopped early ({live_rows} live rows)\n{what}"
    );
    // The last line says the files are incomplete, and which.
    let last = finished.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("tracer: error: the files in")
            && last.contains("incomplete")
            && last.contains("requests.jsonl stops early (No space left on device"),
        "final line: {last}\n{what}"
    );
    assert_target_unharmed(&workload, load);

    // What did reach the disk is whole lines, under the final name.
    assert!(
        assert_whole_json_lines(&fs.path().join("requests.jsonl")) > 0,
        "{what}"
    );
    if let Some(summary) = finished.summary_if_written() {
        let incomplete = &summary.incomplete_files;
        assert!(
            incomplete.iter().any(|f| f.file == "requests.jsonl"),
            "{incomplete:?}"
        );
    } else {
        assert!(last.contains("summary.json was not written"), "{last}");
    }
    assert!(
        !names_in(fs.path()).iter().any(|n| n.ends_with(".partial")),
        "left-over partial files: {:?}",
        names_in(fs.path())
    );
}

#[test]
#[ignore = "needs root"]
fn sigkill_leaves_whole_lines_under_the_partial_name() {
    let scratch = TempDir::new("sigkill");
    let out = scratch.path().join("out");
    let workload = Workload::spawn();
    let load = load(&workload, 30.0);
    // No interval ends before the kill: the lines must reach the file whole without the
    // interval's bookkeeping (a buffer flushed when full cuts lines).
    let tracer = Tracer::attach(workload.pid)
        .output(&out)
        .args(["--slow", "0", "-i", "3600"])
        .start();
    let tracer_pid = tracer.pid();
    // Wherever the tracer writes, wait for many lines (many buffer-fulls: a line that names
    // its wait's call site is a few kB), then kill it.
    wait_for(WRITE_TIMEOUT, || {
        (bytes_in(&out, "requests.jsonl") > 200_000 && newlines_in(&out, "requests.jsonl") > 100)
            .then_some(())
            .ok_or("requests logged")
    });
    let finished = tracer.stop_with(libc::SIGKILL);
    assert_eq!(
        finished.status.code(),
        None,
        "not killed\n{}",
        finished.describe()
    );
    assert_target_unharmed(&workload, load);

    let names = names_in(&out);
    let mut lines = 0;
    for name in names.iter().filter(|n| n.starts_with("requests.jsonl")) {
        lines += assert_whole_json_lines_or_a_write_cut_at_a_page(&out.join(name));
    }
    assert!(lines > 100, "only {lines} lines in {names:?}");
    // A killed run leaves its files under their partial names, for the user to find; the
    // final names are an earlier run's (none here).
    let partial = |name: &str| out.join(format!("{name}.{tracer_pid}.partial"));
    assert!(
        partial("requests.jsonl").is_file(),
        "no requests.jsonl.{tracer_pid}.partial after SIGKILL: {names:?}"
    );
    let hlog = partial("latency.hlog");
    let text = std::fs::read_to_string(&hlog)
        .unwrap_or_else(|e| panic!("{}: {e} ({names:?})", hlog.display()));
    assert!(text.starts_with('#') && text.ends_with('\n'), "{text}");
    assert!(
        !names.iter().any(|n| OUTPUTS.contains(&n.as_str())),
        "final names written by a killed run: {names:?}"
    );
}

/// The files named `prefix...` in `dir` (none if it cannot be read).
fn files_named<'a>(dir: &Path, prefix: &'a str) -> impl Iterator<Item = std::fs::DirEntry> + 'a {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(move |e| e.file_name().to_string_lossy().starts_with(prefix))
}

/// The lines the files named `prefix...` in `dir` end so far.
fn newlines_in(dir: &Path, prefix: &str) -> usize {
    files_named(dir, prefix)
        .filter_map(|e| std::fs::read(e.path()).ok())
        .map(|bytes| bytes.iter().filter(|&&b| b == b'\n').count())
        .sum()
}

/// Bytes in the files of `dir` whose names start with `prefix`.
fn bytes_in(dir: &Path, prefix: &str) -> u64 {
    files_named(dir, prefix)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}
