//! Running the real tracer against a process: start it, wait until it is attached, stop it
//! with a signal, and read its files.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::bin_path;

/// Attaching loads and verifies the programs and opens ~75 tracepoints.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// Detaching waits for an RCU grace period per tracepoint.
const EXIT_TIMEOUT: Duration = Duration::from_secs(90);

/// A tracer process attached to a target.
pub struct TracerSession {
    child: Option<Child>,
    pub out: PathBuf,
    stderr: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

/// What a finished tracer left behind.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub summary: Value,
    pub requests: Vec<Value>,
    pub out: PathBuf,
}

/// A fresh, empty output directory under the temp dir.
pub fn temp_out(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tracer-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

impl TracerSession {
    /// Start `tracer --pid PID -o OUT ARGS...` and wait for it to report that it is attached.
    pub fn start(pid: u32, name: &str, args: &[&str]) -> TracerSession {
        Self::start_with_env(pid, name, args, &[])
    }

    /// [`TracerSession::start`] with more environment variables for the tracer.
    pub fn start_with_env(
        pid: u32,
        name: &str,
        args: &[&str],
        env: &[(&str, &std::path::Path)],
    ) -> TracerSession {
        Self::start_in(pid, temp_out(name), args, env)
    }

    /// [`TracerSession::start_with_env`] writing into `out`, which may already exist.
    pub fn start_in(
        pid: u32,
        out: PathBuf,
        args: &[&str],
        env: &[(&str, &std::path::Path)],
    ) -> TracerSession {
        let mut child = Command::new(bin_path("tracer"))
            .envs(env.iter().copied())
            .arg("--pid")
            .arg(pid.to_string())
            .arg("--output")
            .arg(&out)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the tracer");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut session = TracerSession {
            child: Some(child),
            out,
            stderr: rx,
            stderr_seen: Vec::new(),
        };
        session.wait_attached();
        session
    }

    fn wait_attached(&mut self) {
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        while Instant::now() < deadline {
            match self.stderr.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let attached = line.contains("attached to PID");
                    self.stderr_seen.push(line);
                    if attached {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let finished = self.wait_exit();
        panic!(
            "tracer did not attach (exit {:?}); stderr:\n{}",
            finished.status, finished.stderr
        );
    }

    /// The tracer's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Send `signal` (e.g. `libc::SIGTERM`) and wait for the tracer to finish.
    pub fn stop_with(mut self, signal: i32) -> Finished {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, signal) };
        self.wait_exit()
    }

    pub fn stop(self) -> Finished {
        self.stop_with(libc::SIGTERM)
    }

    /// Wait for the tracer to exit on its own (duration elapsed, target exited).
    pub fn wait_exit(&mut self) -> Finished {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the tracer") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("tracer did not exit within {EXIT_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stdout = String::new();
        if let Some(mut out) = child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        let mut stderr = self.stderr_seen.join("\n");
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(500)) {
            stderr.push('\n');
            stderr.push_str(&line);
        }
        let summary = std::fs::read_to_string(self.out.join("summary.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null);
        let requests = std::fs::read_to_string(self.out.join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("requests.jsonl line is JSON"))
            .collect();
        Finished {
            status,
            stdout,
            stderr,
            summary,
            requests,
            out: self.out.clone(),
        }
    }
}

impl Drop for TracerSession {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}
