//! Running the real tracer against a process: build its command line ([`Tracer`]), start it
//! and wait until it is attached ([`Session`]), stop it with a signal or let it end, and
//! collect what it left ([`Finished`]: exit status, stdout, stderr, and its output files read
//! into the tracer's own types, [`Summary`] and [`RequestRecord`]). Helper commands (bpftool,
//! python3) run through the same machinery ([`run`]).
//!
//! Every wait is bounded, by one policy:
//! - [`ATTACH_TIMEOUT`] from the start until the tracer says it is attached;
//! - [`EXIT_TIMEOUT`] from the stop (a signal, the end of `--duration`, the target's exit)
//!   until it has exited; a run left to end on its own (`--duration`) is waited for as long,
//!   so keep test durations short;
//! - a run waited for from its start ([`Tracer::run`]: refusals, short `--duration` runs)
//!   gets both.
//!
//! A wait that runs out panics with everything the process printed; a process the test did not
//! wait for is stopped when dropped (the tracer with SIGTERM, so it detaches, and SIGKILL
//! after [`EXIT_TIMEOUT`]; helper commands with SIGKILL).

use std::{
    ffi::{OsStr, OsString},
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tracer::output::{jsonl::RequestRecord, summary::Summary};

use crate::{bin_path, Response, TempDir, Workload};

/// Attaching loads and verifies the programs and opens ~75 tracepoints: seconds, on a busy
/// machine. This only bounds a hang.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// Detaching waits for an RCU grace period per tracepoint, then the files are written.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the output readers may take, after the exit, to reach the end of the pipes.
const PIPE_GRACE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);
/// The line the tracer prints on stderr once every program is attached.
const ATTACHED: &str = "attached to PID";
/// User and group `nobody`.
pub const NOBODY: u32 = 65534;

// ---------------------------------------------------------------------------------------------
// What a finished process left
// ---------------------------------------------------------------------------------------------

/// How a process ended, with everything it printed; for a tracer run with an output
/// directory, also its `summary.json` and `requests.jsonl`, read when it exited.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The lines of `requests.jsonl` (none when there is no such file).
    pub requests: Vec<RequestRecord>,
    summary: Option<Summary>,
    out: Option<PathBuf>,
    /// The temp output directory, removed with this.
    _temp: Option<TempDir>,
}

impl Finished {
    /// The first stderr line that starts with `prefix` (`tracer: TLS:`); panics with
    /// everything the tracer printed when there is none.
    pub fn stderr_line(&self, prefix: &str) -> &str {
        self.stderr
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?}\n{}", self.describe()))
    }

    /// Status, stderr and stdout, for a failed assertion's message.
    pub fn describe(&self) -> String {
        format!(
            "status: {}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            self.status, self.stderr, self.stdout
        )
    }

    /// A refusal: a failing exit status (not a signal) and exactly one stderr line,
    /// `tracer: error: ...`, which it returns.
    pub fn refused(&self) -> &str {
        assert!(
            !self.status.success() && self.status.code().is_some(),
            "expected a failing exit code\n{}",
            self.describe()
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected exactly one line on stderr\n{}",
            self.describe()
        );
        assert!(
            lines[0].starts_with("tracer: error: "),
            "{}",
            self.describe()
        );
        lines[0]
    }

    /// A refusal ([`Finished::refused`]) with exit status `code`.
    pub fn refusal(&self, code: i32) -> &str {
        assert_eq!(self.status.code(), Some(code), "{}", self.describe());
        self.refused()
    }

    /// `summary.json`; panics when the run wrote none.
    pub fn summary(&self) -> &Summary {
        self.summary
            .as_ref()
            .unwrap_or_else(|| panic!("no summary.json\n{}", self.describe()))
    }

    /// `summary.json`, if the run wrote one.
    pub fn summary_if_written(&self) -> Option<&Summary> {
        self.summary.as_ref()
    }

    /// The tracer's output directory.
    pub fn out(&self) -> &Path {
        self.out
            .as_deref()
            .expect("this run was given no output directory")
    }
}

/// `summary.json` in `dir`; panics if it is missing or does not hold a [`Summary`].
pub fn read_summary(dir: &Path) -> Summary {
    Summary::read(dir).unwrap_or_else(|e| {
        let text = std::fs::read_to_string(dir.join("summary.json")).unwrap_or_default();
        panic!("{e:#}:\n{text}")
    })
}

/// `summary.json` (if there is one) and the lines of `requests.jsonl` in `dir`.
fn read_outputs(dir: &Path) -> (Option<Summary>, Vec<RequestRecord>) {
    let summary = dir.join("summary.json").exists().then(|| read_summary(dir));
    let requests = std::fs::read_to_string(dir.join("requests.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("requests.jsonl line is not a request ({e}): {l:?}"))
        })
        .collect();
    (summary, requests)
}

// ---------------------------------------------------------------------------------------------
// Any child process, its output collected
// ---------------------------------------------------------------------------------------------

/// What a reader thread has read from a pipe so far.
type Output = Arc<Mutex<Vec<u8>>>;

/// A child whose stdout and stderr are read by threads, so it never blocks on a full pipe,
/// and whose stderr lines can be waited for. Killed when dropped.
struct Proc {
    child: Child,
    what: String,
    stderr_lines: mpsc::Receiver<String>,
    stdout: Output,
    stderr: Output,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let (stdout, stderr) = (Output::default(), Output::default());
        let (tx, stderr_lines) = mpsc::channel();
        let mut out_pipe = child.stdout.take().expect("stdout is piped");
        let out_buf = Arc::clone(&stdout);
        let stdout_reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n @ 1..) = out_pipe.read(&mut chunk) {
                out_buf.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        let mut err_pipe = BufReader::new(child.stderr.take().expect("stderr is piped"));
        let err_buf = Arc::clone(&stderr);
        let stderr_reader = std::thread::spawn(move || {
            let mut line = Vec::new();
            while let Ok(1..) = err_pipe.read_until(b'\n', &mut line) {
                err_buf.lock().unwrap().extend_from_slice(&line);
                let _ = tx.send(String::from_utf8_lossy(&line).trim_end().to_string());
                line.clear();
            }
        });
        Proc {
            child,
            what,
            stderr_lines,
            stdout,
            stderr,
            readers: vec![stdout_reader, stderr_reader],
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits for a stderr line containing `needle`; panics after `timeout`, or when stderr
    /// closes first (then with everything the process printed).
    fn wait_stderr_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "{} printed no line containing {needle:?} within {timeout:?}; stderr so \
                     far:\n{}",
                    self.what,
                    self.stderr_so_far()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let (status, stdout, stderr) = self.wait_exit(EXIT_TIMEOUT);
                    panic!(
                        "{} closed stderr without a line containing {needle:?}\nstatus: \
                         {status}\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}",
                        self.what,
                    );
                }
            }
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with the PID of our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// The exit status, if the process exits within `timeout`.
    fn exited_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits for the process to exit (killing it and panicking after `timeout`): its status,
    /// stdout and stderr.
    fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, String, String) {
        let Some(status) = self.exited_within(timeout) else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!(
                "{} (PID {}) did not exit within {timeout:?}; stderr so far:\n{}",
                self.what,
                self.pid(),
                self.stderr_so_far()
            );
        };
        // The pipes close with the process, unless a child it left behind holds them.
        let deadline = Instant::now() + PIPE_GRACE;
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        let text = |buf: &Mutex<Vec<u8>>| String::from_utf8_lossy(&buf.lock().unwrap()).into();
        (status, text(&self.stdout), text(&self.stderr))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a helper command to completion within `timeout` (killing it and panicking after).
pub fn run(cmd: Command, timeout: Duration) -> Finished {
    let (status, stdout, stderr) = Proc::spawn(cmd).wait_exit(timeout);
    Finished {
        status,
        stdout,
        stderr,
        summary: None,
        requests: Vec::new(),
        out: None,
        _temp: None,
    }
}

// ---------------------------------------------------------------------------------------------
// The tracer
// ---------------------------------------------------------------------------------------------

/// A tracer command line, as root by default.
pub struct Tracer {
    pid: Option<u32>,
    out: Option<PathBuf>,
    temp: Option<TempDir>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    /// Programs (with their arguments) that run the tracer, outermost first.
    wrapper: Vec<OsString>,
}

impl Tracer {
    /// `tracer --pid PID --output DIR`, where DIR is a fresh path in the temp dir (the tracer
    /// creates it), removed with the [`Finished`].
    pub fn attach(pid: u32) -> Tracer {
        let temp = TempDir::absent(&test_name());
        Tracer {
            pid: Some(pid),
            out: Some(temp.path().to_path_buf()),
            temp: Some(temp),
            ..Self::command_line::<_, &str>([])
        }
    }

    /// `tracer ARGS...`, nothing added: for command lines the tracer refuses.
    pub fn command_line<I, S>(args: I) -> Tracer
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Tracer {
            pid: None,
            out: None,
            temp: None,
            args: args.into_iter().map(|a| a.as_ref().to_owned()).collect(),
            env: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    /// More arguments.
    pub fn args<I, S>(mut self, args: I) -> Tracer
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Creates the temp output directory, writable by every user (mode 0777), for a tracer
    /// run as another user ([`Tracer::as_nobody`]). Without it the tracer creates the
    /// directory itself.
    pub fn output_open_to_all(mut self) -> Tracer {
        let dir = TempDir::open_to_all(&test_name());
        self.out = Some(dir.path().to_path_buf());
        self.temp = Some(dir);
        self
    }

    /// `--output dir` instead of a temp dir; `dir` is left in place.
    pub fn output(mut self, dir: impl Into<PathBuf>) -> Tracer {
        self.out = Some(dir.into());
        self.temp = None;
        self
    }

    /// An environment variable for the tracer.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Tracer {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Environment variables for the tracer, as (key, value) pairs.
    pub fn envs(self, vars: &[(&str, &str)]) -> Tracer {
        vars.iter().fold(self, |t, (k, v)| t.env(k, v))
    }

    /// Run as user `nobody` with exactly the capabilities `caps` (e.g. `+bpf,+perfmon`;
    /// empty for none), through `setpriv` (see [`as_nobody`]).
    pub fn as_nobody(self, caps: &str) -> Tracer {
        self.wrapped_in(setpriv_as_nobody(caps))
    }

    /// Run through `program_and_args`, which runs its last arguments as a command (the
    /// tracer's command line so far is appended): e.g. `unshare --mount ...`.
    pub fn wrapped_in<I, S>(mut self, program_and_args: I) -> Tracer
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut wrapper: Vec<OsString> = program_and_args
            .into_iter()
            .map(|a| a.as_ref().to_owned())
            .collect();
        wrapper.append(&mut self.wrapper);
        self.wrapper = wrapper;
        self
    }

    fn command(&self) -> Command {
        let tracer = bin_path("tracer");
        let mut cmd = match self.wrapper.split_first() {
            None => Command::new(tracer),
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(tracer);
                cmd
            }
        };
        if let Some(pid) = self.pid {
            cmd.arg("--pid").arg(pid.to_string());
        }
        if let Some(out) = &self.out {
            cmd.arg("--output").arg(out);
        }
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Starts the tracer and waits until it says it is attached; panics (with what it
    /// printed) if it exits first or does not attach within [`ATTACH_TIMEOUT`].
    pub fn start(self) -> Session {
        let mut session = Session {
            proc: Proc::spawn(self.command()),
            out: self.out,
            temp: self.temp,
        };
        session.proc.wait_stderr_line(ATTACHED, ATTACH_TIMEOUT);
        session
    }

    /// Runs the tracer to its end: a refusal, or a run stopped by its `--duration` or by its
    /// target's exit.
    pub fn run(self) -> Finished {
        let session = Session {
            proc: Proc::spawn(self.command()),
            out: self.out,
            temp: self.temp,
        };
        session.finish(ATTACH_TIMEOUT + EXIT_TIMEOUT)
    }
}

/// The running test's name (libtest names its thread after it), for temp paths.
fn test_name() -> String {
    std::thread::current()
        .name()
        .map_or_else(|| "tracer".to_string(), |name| name.replace("::", "-"))
}

/// A tracer that is attached to its target.
pub struct Session {
    proc: Proc,
    out: Option<PathBuf>,
    temp: Option<TempDir>,
}

impl Session {
    /// The tracer's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Its output directory.
    pub fn out(&self) -> &Path {
        self.out
            .as_deref()
            .expect("this run was given no output directory")
    }

    /// SIGTERM, then [`Session::wait_exit`].
    pub fn stop(self) -> Finished {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal` (e.g. `libc::SIGINT`), then [`Session::wait_exit`].
    pub fn stop_with(self, signal: libc::c_int) -> Finished {
        self.proc.signal(signal);
        self.wait_exit()
    }

    /// Waits for the tracer to exit (on a signal sent, or on its own: the end of
    /// `--duration`, the target's exit) within [`EXIT_TIMEOUT`], and reads its files.
    pub fn wait_exit(self) -> Finished {
        self.finish(EXIT_TIMEOUT)
    }

    fn finish(mut self, timeout: Duration) -> Finished {
        let (status, stdout, stderr) = self.proc.wait_exit(timeout);
        let (summary, requests) = self.out.as_deref().map(read_outputs).unwrap_or_default();
        Finished {
            status,
            stdout,
            stderr,
            summary,
            requests,
            out: self.out.take(),
            _temp: self.temp.take(),
        }
    }
}

impl Drop for Session {
    /// A tracer the test did not wait for (it panicked first): SIGTERM, so it detaches, and
    /// SIGKILL (by [`Proc`]) if it does not exit in time.
    fn drop(&mut self) {
        if let Ok(None) = self.proc.child.try_wait() {
            // SAFETY: kill(2) with the PID of our own child, which has not been reaped yet.
            unsafe { libc::kill(self.proc.pid() as libc::pid_t, libc::SIGTERM) };
            let _ = self.proc.exited_within(EXIT_TIMEOUT);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Privileges
// ---------------------------------------------------------------------------------------------

/// An executable called `name` on PATH, or in the usual system directories (a non-login root
/// shell may lack the sbin ones on PATH).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let system = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    std::env::split_paths(&path)
        .chain(system.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `setpriv` (util-linux, which `cargo xtask test` installs): the privilege tests fail
/// without it rather than pass having checked nothing.
pub fn setpriv() -> PathBuf {
    find_program("setpriv").expect("setpriv (Debian package util-linux) is installed")
}

/// `setpriv` running `program` as `nobody` with exactly the capabilities `caps` (e.g.
/// `+bpf,+perfmon`; empty for none), effective through the ambient set.
pub fn as_nobody(caps: &str, program: &Path) -> Command {
    let setpriv = setpriv_as_nobody(caps);
    let mut cmd = Command::new(&setpriv[0]);
    cmd.args(&setpriv[1..]).arg(program);
    cmd
}

/// `setpriv` and its arguments for [`as_nobody`], without the program.
fn setpriv_as_nobody(caps: &str) -> Vec<OsString> {
    let set = if caps.is_empty() {
        "-all".to_string()
    } else {
        format!("-all,{caps}")
    };
    [
        setpriv().into_os_string(),
        format!("--reuid={NOBODY}").into(),
        format!("--regid={NOBODY}").into(),
        "--clear-groups".into(),
        format!("--inh-caps={set}").into(),
        format!("--ambient-caps={set}").into(),
        format!("--bounding-set={set}").into(),
    ]
    .into()
}

/// Traces `target` with `--slow 0` (every request in `requests.jsonl`) while one keep-alive
/// connection sends `path` `times` in a row; returns the responses and the finished run,
/// which must have succeeded.
pub fn trace_requests(target: &Workload, path: &str, times: usize) -> (Vec<Response>, Finished) {
    trace_requests_with_env(target, path, times, &[])
}

/// [`trace_requests`], with `env` set for the tracer.
pub fn trace_requests_with_env(
    target: &Workload,
    path: &str,
    times: usize,
    env: &[(&str, &str)],
) -> (Vec<Response>, Finished) {
    let tracer = Tracer::attach(target.pid)
        .envs(env)
        .args(["--slow", "0"])
        .start();
    let mut client = target.client();
    let responses = (0..times)
        .map(|_| client.get(path).expect("request"))
        .collect();
    drop(client); // the close ends the last request
    let done = tracer.stop();
    assert!(done.status.success(), "tracer failed: {}", done.describe());
    (responses, done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_collects_status_and_output() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo one >&2; echo two >&2; exit 3"]);
        let done = run(cmd, Duration::from_secs(30));
        assert_eq!(done.status.code(), Some(3), "{}", done.describe());
        assert_eq!(done.stdout, "out\n");
        assert_eq!(done.stderr, "one\ntwo\n");
        assert!(done.summary_if_written().is_none());
    }

    #[test]
    fn a_refusal_is_one_error_line() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo 'tracer: error: no' >&2; exit 2"]);
        assert_eq!(
            run(cmd, Duration::from_secs(30)).refusal(2),
            "tracer: error: no"
        );
    }

    #[test]
    #[should_panic(expected = "did not exit within")]
    fn a_hang_is_bounded() {
        let mut cmd = Command::new("sleep");
        cmd.arg("60");
        run(cmd, Duration::from_millis(200));
    }
}
