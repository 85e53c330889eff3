//! Checks made before anything is attached: privileges, the target, the output directory.

use std::{fs, path::Path};

use anyhow::{bail, Context as _, Result};

use crate::output::OutputDir;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// `PF_KTHREAD` in the flags of /proc/PID/stat (include/linux/sched.h).
const PF_KTHREAD: u64 = 0x0020_0000;

/// What each step needs, measured on Linux 6.18 with `setpriv` (see the README, Privileges):
/// loading and attaching the tracepoint programs needs CAP_BPF and CAP_PERFMON, or
/// CAP_SYS_ADMIN, which the kernel accepts for both; `--bpf-stats` (BPF_ENABLE_STATS) needs
/// CAP_SYS_ADMIN. tracefs, the target's /proc files and the TLS uprobes need more in some
/// cases, checked where they are used: [`crate::tracefs::ensure_mounted`], [`check_target`],
/// [`crate::tls::UPROBES_REFUSED`].
pub fn check_privileges(bpf_stats: bool) -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let caps = parse_cap_eff(&status).unwrap_or(0);
    match missing_privileges(caps, bpf_stats) {
        Some(message) => bail!("{message}"),
        None => Ok(()),
    }
}

/// Why effective capabilities `caps` are not enough, if they are not.
fn missing_privileges(caps: u64, bpf_stats: bool) -> Option<String> {
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    let can_load = has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
    if !can_load {
        let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
            .into_iter()
            .filter(|(c, _)| !has(*c))
            .map(|(_, n)| n)
            .collect();
        return Some(format!(
            "missing {} (and not CAP_SYS_ADMIN), needed to load the kernel programs: run tracer \
             as root, e.g. `sudo tracer --pid PID`",
            missing.join(" and ")
        ));
    }
    if bpf_stats && !has(CAP_SYS_ADMIN) {
        return Some(
            "--bpf-stats needs CAP_SYS_ADMIN (the kernel's BPF_ENABLE_STATS command): run tracer \
             as root, or leave out --bpf-stats"
                .to_string(),
        );
    }
    None
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status_field(status, "CapEff")?;
    u64::from_str_radix(hex, 16).ok()
}

/// The value of `Name:` in /proc/PID/status text, e.g. `Tgid`.
fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key == name).then_some(value.trim())
    })
}

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

fn read_comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
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
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|_| no_such())?;
    let tgid = status_field(&status, "Tgid")
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(pid);
    let (pid, thread) = if tgid != pid && tgid != 0 {
        (tgid, Some(pid))
    } else {
        (pid, None)
    };
    if pid == std::process::id() {
        bail!("PID {pid} is the tracer itself: pass the PID of another process");
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|_| no_such())?;
    if !is_alive(&stat) {
        bail!("process {pid} has exited (it is a zombie): nothing to trace");
    }
    let comm = read_comm(pid).unwrap_or_default();
    if is_kernel_thread(&stat) {
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
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| is_alive(&s))
}

/// The fields of /proc/PID/stat after the parenthesised comm, which may itself contain ") ":
/// state, ppid, pgrp, session, tty_nr, tpgid, flags, ...
fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    stat.rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace())
}

fn is_alive(stat: &str) -> bool {
    let state = stat_fields(stat).and_then(|mut f| f.next());
    !matches!(state, None | Some("Z") | Some("X") | Some("x"))
}

fn is_kernel_thread(stat: &str) -> bool {
    stat_fields(stat)
        .and_then(|mut f| f.nth(6))
        .and_then(|flags| flags.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// Create the output directory, open it for the run and prove files can be created in it
/// (under a fresh name, created exclusively and removed: nothing there is followed or
/// truncated), before attaching anything.
pub fn prepare_output(dir: &Path) -> Result<OutputDir> {
    let unwritable = |e: std::io::Error| {
        anyhow::anyhow!(
            "cannot write to output directory {} ({e}): choose another with --output DIR",
            dir.display()
        )
    };
    fs::create_dir_all(dir).map_err(unwritable)?;
    let out = OutputDir::open(dir).map_err(unwritable)?;
    out.check_writable(".tracer-write-test")
        .map_err(unwritable)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_mask_is_read_from_status() {
        let status = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
    }

    #[test]
    fn missing_capabilities_are_named() {
        let bit = |cap: u32| 1u64 << cap;
        assert_eq!(
            missing_privileges(bit(CAP_BPF) | bit(CAP_PERFMON), false),
            None
        );
        assert_eq!(missing_privileges(bit(CAP_SYS_ADMIN), true), None);
        let m = missing_privileges(bit(CAP_BPF), false).unwrap();
        assert!(
            m.starts_with("missing CAP_PERFMON") && m.contains("root"),
            "{m}"
        );
        let m = missing_privileges(0, false).unwrap();
        assert!(m.starts_with("missing CAP_BPF and CAP_PERFMON"), "{m}");
        let m = missing_privileges(bit(CAP_BPF) | bit(CAP_PERFMON), true).unwrap();
        assert!(m.starts_with("--bpf-stats needs CAP_SYS_ADMIN"), "{m}");
    }

    #[test]
    fn status_fields_are_read_by_name() {
        let status = "Name:\tworker\nTgid:\t1234\nPid:\t1240\nPPid:\t1\n";
        assert_eq!(status_field(status, "Tgid"), Some("1234"));
        assert_eq!(status_field(status, "Pid"), Some("1240"));
        assert_eq!(status_field(status, "Uid"), None);
    }

    #[test]
    fn kernel_threads_are_told_by_their_flags() {
        // /proc/2/stat and a user process's, flags being the 9th field.
        let kthreadd = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 7";
        let bash = "900 (bash) S 1 900 900 34816 900 4194304 1 2 3 4";
        assert!(is_kernel_thread(kthreadd));
        assert!(!is_kernel_thread(bash));
        assert!(!is_kernel_thread("garbage"));
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
    fn process_state_after_a_comm_with_parentheses() {
        assert!(is_alive("12 (a) b) S 1 2"));
        assert!(!is_alive("12 (a) b) Z 1 2"));
        assert!(!is_alive("garbage"));
    }

    #[test]
    fn no_such_pid_is_a_clear_error() {
        let err = check_target(u32::MAX - 1).err().unwrap().to_string();
        assert!(err.starts_with("no process with PID"), "{err}");
    }

    #[test]
    fn unwritable_output_is_a_clear_error() {
        let err = prepare_output(Path::new("/proc/version/x"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--output"), "{err}");
    }
}
