//! The target process: finding it (a thread id is resolved to its process), refusing what
//! cannot be traced, and telling whether it is still alive.

use std::fs;

use anyhow::{bail, Result};
use procfs::process::Process;

/// `PF_KTHREAD` in the flags of /proc/PID/stat (include/linux/sched.h).
const PF_KTHREAD: u32 = 0x0020_0000;

/// The target process as found in /proc.
pub struct Target {
    pub pid: u32,
    /// Its name (comm): at the start, and at the end once [`Target::refresh_comm`] ran.
    pub comm: String,
    /// The name at the start, when the target changed it since (it ran `exec`).
    pub comm_at_start: Option<String>,
    /// The thread ID given as `--pid`, when it was one of the process's other threads.
    pub thread: Option<u32>,
}

impl Target {
    /// The target's name now (it may have run `exec`), or, once it has exited, the name its
    /// main thread exited with (`exited_as`, from the kernel's exit event).
    pub fn refresh_comm(&mut self, exited_as: Option<&str>) {
        let now = if target_alive(self.pid) {
            read_comm(self.pid)
        } else {
            exited_as.map(str::to_string)
        };
        if let Some(now) = now.filter(|now| !now.is_empty() && *now != self.comm) {
            let start = std::mem::replace(&mut self.comm, now);
            self.comm_at_start.get_or_insert(start);
        }
    }
}

/// A thread's or process's name (`/proc/ID/comm`).
pub fn read_comm(id: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{id}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Find the process to trace. A thread ID is resolved to its process (the thread's `Tgid`);
/// kernel threads and zombies are refused, and so is a process whose /proc files this
/// process may not read.
pub fn check_target(pid: u32) -> Result<Target> {
    if pid == 0 {
        bail!("PID 0 cannot be traced: pass the PID of another process");
    }
    let no_such =
        || anyhow::anyhow!("no process with PID {pid}: check the PID (e.g. `pgrep -f NAME`)");
    let given = Process::new(pid as i32).map_err(|_| no_such())?;
    let tgid = given
        .status()
        .map_err(|_| no_such())?
        .tgid
        .try_into()
        .unwrap_or(pid);
    let (pid, thread) = if tgid != pid && tgid != 0 {
        (tgid, Some(pid))
    } else {
        (pid, None)
    };
    if pid == std::process::id() {
        bail!("PID {pid} is the tracer itself: pass the PID of another process");
    }
    let stat = Process::new(pid as i32)
        .and_then(|p| p.stat())
        .map_err(|_| no_such())?;
    if !is_alive(stat.state) {
        bail!("process {pid} has exited (it is a zombie): nothing to trace");
    }
    let comm = read_comm(pid).unwrap_or_default();
    if stat.flags & PF_KTHREAD != 0 {
        bail!(
            "PID {pid} ({comm}) is a kernel thread, not a process: it serves no requests and \
             nothing was attached; pass the PID of a user-space process (e.g. `pgrep -f NAME`)"
        );
    }
    check_proc_access(pid, &comm)?;
    Ok(Target {
        pid,
        comm,
        comm_at_start: None,
        thread,
    })
}

/// The tracer reads the target's /proc/PID/fd links (which descriptors are sockets: without
/// them no request is recognised), exe, maps, root and task/TID/syscall. The kernel allows
/// that when ptrace could read the target: same user and group, the target's capabilities a
/// subset of the tracer's, the target dumpable; otherwise only with CAP_SYS_PTRACE. The `exe`
/// link is checked like the fd links (`proc_fd_access_allowed`), and unlike them exists even
/// when the target has no descriptor open.
fn check_proc_access(pid: u32, comm: &str) -> Result<()> {
    match fs::read_link(format!("/proc/{pid}/exe")) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let owner = fs::metadata(format!("/proc/{pid}"))
                .map(|m| format!("uid {}", std::os::unix::fs::MetadataExt::uid(&m)))
                .unwrap_or_else(|_| "another user".to_string());
            bail!(
                "may not read the /proc files (fd, exe, maps) of process {pid} ({comm}, {owner}): \
                 tracing a process of another user or group, or one with capabilities the tracer \
                 lacks, needs CAP_SYS_PTRACE; nothing attached. Run tracer as root, or add \
                 CAP_SYS_PTRACE"
            )
        }
        _ => Ok(()),
    }
}

/// Is the process still running (not gone, not a zombie)?
pub fn target_alive(pid: u32) -> bool {
    Process::new(pid as i32)
        .and_then(|p| p.stat())
        .is_ok_and(|stat| is_alive(stat.state))
}

/// A process state letter of /proc/PID/stat other than zombie or dead.
fn is_alive(state: char) -> bool {
    !matches!(state, 'Z' | 'X' | 'x')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_threads_are_refused() {
        let kthread = procfs::process::all_processes()
            .unwrap()
            .flatten()
            .find(|p| p.stat().is_ok_and(|s| s.flags & PF_KTHREAD != 0));
        let Some(kthread) = kthread else {
            return; // a PID namespace without kernel threads
        };
        let err = check_target(kthread.pid as u32).err().unwrap().to_string();
        assert!(err.contains("is a kernel thread"), "{err}");
    }

    #[test]
    fn a_thread_id_is_resolved_to_its_process() {
        // A thread of this test process: /proc/TID exists though /proc does not list it.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            let _ = wait.recv();
        });
        let tid = rx.recv().unwrap();
        let err = check_target(tid).err().unwrap().to_string();
        drop(done);
        t.join().unwrap();
        assert!(err.contains("is the tracer itself"), "{err}");
    }

    #[test]
    fn own_comm_is_refreshed() {
        let me = std::process::id();
        let mut t = Target {
            pid: me,
            comm: "old-name".into(),
            comm_at_start: None,
            thread: None,
        };
        t.refresh_comm(None);
        assert_eq!(t.comm_at_start.as_deref(), Some("old-name"));
        assert_eq!(Some(t.comm.clone()), read_comm(me));
    }

    #[test]
    fn a_zombie_is_not_alive_and_is_refused() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: a zombie once it has exited.
        while Process::new(pid as i32)
            .and_then(|p| p.stat())
            .unwrap()
            .state
            != 'Z'
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!target_alive(pid));
        let err = check_target(pid).err().unwrap().to_string();
        child.wait().unwrap();
        assert!(err.contains("zombie"), "{err}");
        assert!(target_alive(std::process::id()));
    }

    #[test]
    fn no_such_pid_is_a_clear_error() {
        let err = check_target(u32::MAX - 1).err().unwrap().to_string();
        assert!(err.starts_with("no process with PID"), "{err}");
    }
}
