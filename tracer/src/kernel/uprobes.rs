//! Hooking the target with uprobes: OpenSSL's handshake (and optionally read and write)
//! functions, Go crypto/tls's handshake functions, and Go's scheduler (goroutines). What is
//! found where is [`crate::target`]'s job; this module attaches and reports what it did
//! ([`TlsStatus`], [`GoSchedStatus`]).

use std::{num::NonZeroU32, path::Path};

use anyhow::{Context as _, Result};
use aya::{
    programs::{
        uprobe::{UProbeLink, UProbeScope},
        ProgramError, UProbe,
    },
    sys::SyscallError,
    Ebpf,
};

use super::{
    probes::{loaded, program_mut, Probes},
    uprobe_multi::{MultiLink, MultiUprobes},
};
use crate::target::{
    go::{
        runtime::{
            GoRuntime, EXECUTE, GOEXIT1, GOPARK, INJECTGLIST, PROBED, READY, SEMACQUIRE1,
            SEMRELEASE1, START_THE_WORLD, STOP_THE_WORLD,
        },
        GoTls, SERVER_HANDSHAKE,
    },
    openssl::{self, OpenSsl},
    Executable,
};

/// Functions hooked, by kernel program: entry probes, and one return probe on all of them.
/// `SSL_accept` and `SSL_connect` tail-call `SSL_do_handshake` (ssl/ssl_lib.c, OpenSSL 1.0.2
/// to 3.x), so its probes see all three at the cost of one; they are probed themselves only
/// when it cannot be.
const HANDSHAKE_FNS: &[&str] = &["SSL_do_handshake"];
const HANDSHAKE_FALLBACK_FNS: &[&str] = &["SSL_accept", "SSL_connect"];
const READ_FNS: &[&str] = &["SSL_read", "SSL_read_ex", "SSL_peek"];
const WRITE_FNS: &[&str] = &["SSL_write", "SSL_write_ex"];

/// What [`UPROBES_REFUSED`] and [`GO_SCHED_UPROBES_REFUSED`] say, as a literal for `concat!`.
macro_rules! uprobes_refused {
    () => {
        "the kernel refused the uprobes (permission denied): uprobes need CAP_SYS_ADMIN on this \
         kernel; run tracer as root or add CAP_SYS_ADMIN"
    };
}

/// Why nothing is hooked when the kernel refuses to create uprobes (perf_event_open on the
/// uprobe PMU fails with EACCES). Measured on Linux 6.18: CAP_BPF + CAP_PERFMON is refused,
/// CAP_SYS_ADMIN is needed (Linux 6.16 and the stable kernels fixed for CVE-2025-38466, e.g.
/// 6.1.146, 6.6.99, 6.12.39, went back to requiring it; CAP_PERFMON was enough before).
pub const UPROBES_REFUSED: &str = concat!(
    uprobes_refused!(),
    " (handshakes are timed from the TLS record framing only)"
);
/// The same for the Go scheduler probes.
const GO_SCHED_UPROBES_REFUSED: &str = uprobes_refused!();

/// Whether `e` is the kernel refusing a uprobe for lack of privilege (not, say, a symbol
/// missing from the library).
pub fn uprobe_refused(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<ProgramError>(),
            Some(ProgramError::SyscallError(SyscallError { call: "perf_event_open", io_error }))
                if io_error.kind() == std::io::ErrorKind::PermissionDenied
        )
    })
}

/// What TLS hooking found and did, for the start-up line and summary.json.
#[derive(Debug, Default, Clone)]
pub struct TlsStatus {
    pub library: Option<String>,
    pub hooked: Vec<String>,
    /// Why nothing is hooked, when nothing is.
    pub reason: Option<String>,
}

impl TlsStatus {
    /// A library was found and `hooked` are its functions with probes.
    pub fn found(&mut self, library: String, hooked: Vec<String>) {
        self.library = Some(match self.library.take() {
            Some(first) => format!("{first} + {library}"),
            None => library,
        });
        self.hooked.extend(hooked);
    }

    pub fn line(&self) -> String {
        match (&self.library, &self.reason) {
            (Some(lib), _) if !self.hooked.is_empty() => {
                format!("TLS: {lib}; hooked {}", self.hooked.join(", "))
            }
            (_, Some(reason)) => format!("TLS: not hooked: {reason}"),
            _ => "TLS: not hooked".to_string(),
        }
    }
}

/// Whether the target's goroutines are followed, for the start-up line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoSchedStatus {
    /// Not a Go program, or `--goroutines off`: nothing to say.
    NotGo,
    /// The scheduler probes are attached: the Go release (from `.go.buildinfo`) and where
    /// each fact came from ([`crate::target::go::runtime::FoundIn`]).
    Followed {
        version: Option<String>,
        found_in: String,
        /// net/http's HTTP/2 server is in the executable, and probed.
        http2: bool,
    },
    /// A Go program whose goroutines are not followed, and why.
    Off { reason: String },
}

impl GoSchedStatus {
    /// The start-up line (after `tracer: `), if there is anything to say.
    pub fn line(&self) -> Option<String> {
        match self {
            GoSchedStatus::NotGo => None,
            GoSchedStatus::Followed {
                version,
                found_in,
                http2,
            } => Some(format!(
                "Go runtime: {}; goroutines followed with uprobes on {} ({found_in}){}",
                version.as_deref().unwrap_or("Go version unknown"),
                PROBED.join(", "),
                if *http2 {
                    "; HTTP/2 streams delimited by their handler goroutines (uprobes on \
                     net/http's HTTP/2 server)"
                } else {
                    ""
                }
            )),
            GoSchedStatus::Off { reason } => Some(format!(
                "Go runtime: goroutine attribution is off, requests are attributed per thread: \
                 {reason}"
            )),
        }
    }
}

/// The Go scheduler's functions probed, the kernel program on each (tracer-ebpf
/// `probes/go_sched.rs`), and where its probe goes in `go`'s executable (a file offset).
fn go_sched_probes(go: &GoRuntime) -> [(&'static str, &'static str, u64); 9] {
    [
        (GOPARK, "go_park", go.gopark),
        (READY, "go_ready", go.ready),
        (INJECTGLIST, "go_inject", go.injectglist),
        (EXECUTE, "go_execute", go.execute),
        (GOEXIT1, "go_exit", go.goexit1),
        (SEMACQUIRE1, "go_semacquire", go.semacquire1),
        (SEMRELEASE1, "go_semrelease", go.semrelease1),
        (STOP_THE_WORLD, "go_stop_the_world", go.stop_the_world),
        (START_THE_WORLD, "go_start_the_world", go.start_the_world),
    ]
}

impl Probes {
    /// Follow the goroutines of a Go target: attach the scheduler probes to `exe`, in process
    /// `pid`, at the probe points `go` names (the offsets they read were set at load time,
    /// see [`Probes::attach`]). All or none: on a failure, the ones attached are
    /// detached and the status says why.
    pub fn attach_go_sched(&mut self, pid: u32, exe: &Path, go: &GoRuntime) -> GoSchedStatus {
        match attach_go_sched(&mut self.ebpf, &mut self.multi, pid, exe, go) {
            Ok(links) => {
                self.uprobe_links.extend(links);
                GoSchedStatus::Followed {
                    version: go.version.clone(),
                    found_in: go.found_in.to_string(),
                    http2: !go.http2_handler.is_empty(),
                }
            }
            Err(e) if uprobe_refused(&e) => GoSchedStatus::Off {
                reason: GO_SCHED_UPROBES_REFUSED.to_string(),
            },
            Err(e) => GoSchedStatus::Off {
                reason: format!("{e:#}"),
            },
        }
    }

    /// Find the target's TLS libraries (OpenSSL, Go's crypto/tls) and hook their handshakes.
    /// `exe` is the target's executable (if it could be read), `go` what
    /// [`crate::target::go::find_go_tls`] found in it. `io_probes`: also probe OpenSSL's read
    /// and write functions (see `--tls-io-probes`).
    pub fn attach_tls(
        &mut self,
        pid: u32,
        exe: Option<&Executable>,
        go: Result<Option<GoTls>>,
        io_probes: bool,
    ) -> TlsStatus {
        let mut status = TlsStatus::default();
        let mut not_hooked = Vec::new();
        match openssl::find_openssl(pid, exe) {
            None => not_hooked.push(
                "no OpenSSL (no libssl mapped, no SSL_* symbols in the executable)".to_string(),
            ),
            Some(ssl) => {
                match attach_openssl(&mut self.ebpf, &mut self.multi, pid, &ssl, io_probes) {
                    Ok((links, hooked)) if !hooked.is_empty() => {
                        self.uprobe_links.extend(links);
                        status.found(format!("OpenSSL {}", ssl.library), hooked);
                    }
                    Ok(_) => not_hooked.push(format!(
                        "OpenSSL {}: none of the SSL_* functions found in {}",
                        ssl.library,
                        ssl.path.display()
                    )),
                    Err(e) => not_hooked.push(format!("OpenSSL {}: {}", ssl.library, why(&e))),
                }
            }
        }
        match go {
            Ok(None) => not_hooked.push("no Go crypto/tls".to_string()),
            Ok(Some(go)) => match attach_go(&mut self.ebpf, &mut self.multi, pid, &go) {
                Ok((links, hooked)) => {
                    self.uprobe_links.extend(links);
                    status.found(
                        format!("{} (found in its {})", go.library, go.found_in),
                        hooked,
                    );
                }
                Err(e) => not_hooked.push(format!("{}: {}", go.library, why(&e))),
            },
            Err(e) => not_hooked.push(format!("Go crypto/tls: {e:#}")),
        }
        if status.library.is_none() {
            status.reason = Some(not_hooked.join("; "));
        }
        status
    }
}

/// Why a TLS library was not hooked: the privilege the kernel asked for, or the error.
fn why(e: &anyhow::Error) -> String {
    if uprobe_refused(e) {
        UPROBES_REFUSED.to_string()
    } else {
        format!("{e:#}")
    }
}

/// Attach the TLS programs to `ssl` in process `pid`: the handshake function and `SSL_free`,
/// plus the read and write functions when `io_probes`. Functions the library lacks
/// (`SSL_read_ex` before OpenSSL 1.1.1) are skipped. Returns the links and the functions
/// entered (none: no OpenSSL function found, and nothing attached).
///
/// Without `io_probes`, a handshake that a first `SSL_read`/`SSL_write` starts implicitly is
/// timed by the TLS record framing instead: the read and write functions run on every
/// request, and their probes (a trap at entry, two for the uretprobe) halved keep-alive
/// HTTPS throughput in the bench.
fn attach_openssl(
    ebpf: &mut Ebpf,
    multi: &mut Option<MultiUprobes>,
    pid: u32,
    ssl: &OpenSsl,
    io_probes: bool,
) -> Result<(Vec<UprobeLink>, Vec<String>)> {
    let mut wanted: Vec<&'static str> = HANDSHAKE_FNS
        .iter()
        .chain(HANDSHAKE_FALLBACK_FNS)
        .chain(["SSL_free"].iter())
        .copied()
        .collect();
    if io_probes {
        wanted.extend(READ_FNS.iter().chain(WRITE_FNS));
    }
    let found = openssl::function_offsets(&ssl.path, &wanted)?;
    let present = |names: &[&'static str]| -> Vec<(&'static str, u64)> {
        found
            .iter()
            .filter(|(name, _)| names.contains(name))
            .copied()
            .collect()
    };
    let mut handshake = present(HANDSHAKE_FNS);
    if handshake.is_empty() {
        handshake = present(HANDSHAKE_FALLBACK_FNS);
    }
    let mut probes = ProbePoints::default();
    let mut entered = Vec::new();
    let mut enter = |program: &'static str, functions: Vec<(&'static str, u64)>| {
        for (function, offset) in functions {
            probes.add(program, function, offset);
            entered.push((function, offset));
        }
    };
    enter("ssl_handshake_enter", handshake);
    if io_probes {
        enter("ssl_read_enter", present(READ_FNS));
        enter("ssl_write_enter", present(WRITE_FNS));
    }
    if entered.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    for &(function, offset) in &entered {
        probes.add("ssl_return", function, offset);
    }
    for (function, offset) in present(&["SSL_free"]) {
        probes.add("ssl_free", function, offset);
    }
    let links = probes.attach(ebpf, multi, pid, &ssl.path)?;
    let hooked = entered.iter().map(|(f, _)| f.to_string()).collect();
    Ok((links, hooked))
}

/// Attach the entry and RET probes. Returns the links and the functions hooked.
fn attach_go(
    ebpf: &mut Ebpf,
    multi: &mut Option<MultiUprobes>,
    pid: u32,
    go: &GoTls,
) -> Result<(Vec<UprobeLink>, Vec<String>)> {
    let mut probes = ProbePoints::default();
    let mut hooked = Vec::new();
    for f in &go.functions {
        let enter = if f.name == SERVER_HANDSHAKE {
            "go_server_handshake_enter"
        } else {
            "go_client_handshake_enter"
        };
        probes.add(enter, &f.name, f.entry);
        for ret in &f.returns {
            probes.add("go_handshake_return", &f.name, *ret);
        }
        hooked.push(format!(
            "{} (entry + {} RET)",
            f.name.trim_start_matches("crypto/tls."),
            f.returns.len()
        ));
    }
    let links = probes.attach(ebpf, multi, pid, &go.path)?;
    Ok((links, hooked))
}

/// Attach the Go scheduler probes (all of them, or an error).
fn attach_go_sched(
    ebpf: &mut Ebpf,
    multi: &mut Option<MultiUprobes>,
    pid: u32,
    exe: &Path,
    go: &GoRuntime,
) -> Result<Vec<UprobeLink>> {
    let mut probes = ProbePoints::default();
    for (function, program, file_offset) in go_sched_probes(go) {
        probes.add(program, function, file_offset);
    }
    for &(function, offset) in &go.http2_connection {
        probes.add("go_http2_connection", function, offset);
    }
    for &(function, offset) in &go.http2_handler {
        probes.add("go_http2_handler", function, offset);
    }
    probes.attach(ebpf, multi, pid, exe)
}

/// A uprobe attached to the target: a perf event for one probe point (aya's), or a
/// `uprobe_multi` link for all of a program's.
pub enum UprobeLink {
    PerfEvent(UProbeLink),
    Multi(MultiLink),
}

impl UprobeLink {
    /// The probe points it attached.
    pub fn points(&self) -> usize {
        match self {
            UprobeLink::PerfEvent(_) => 1,
            UprobeLink::Multi(link) => link.probes,
        }
    }
}

/// The probe points of each program in one executable, at file offsets, with the functions
/// they are in (for errors): attached with one `uprobe_multi` link per program where the
/// kernel has them (see [`super::uprobe_multi`]), else one perf event uprobe per point.
#[derive(Default)]
struct ProbePoints {
    /// Programs in the order first added, each with its (function, file offset) points.
    programs: Vec<(&'static str, Vec<(String, u64)>)>,
}

impl ProbePoints {
    fn add(&mut self, program: &'static str, function: &str, file_offset: u64) {
        let point = (function.to_string(), file_offset);
        match self.programs.iter_mut().find(|(p, _)| *p == program) {
            Some((_, points)) => points.push(point),
            None => self.programs.push((program, vec![point])),
        }
    }

    /// Attach every program at its points in `exe` for process `pid`: all, or an error.
    /// `multi` is dropped (for this and later attachments) when the kernel refuses a
    /// `uprobe_multi` link, and perf event uprobes are used instead.
    fn attach(
        self,
        ebpf: &mut Ebpf,
        multi: &mut Option<MultiUprobes>,
        pid: u32,
        exe: &Path,
    ) -> Result<Vec<UprobeLink>> {
        let scope = one_process(pid)?;
        let mut links = Vec::new();
        for (program, points) in self.programs {
            let offsets: Vec<u64> = points.iter().map(|&(_, offset)| offset).collect();
            if let Some(loader) = multi {
                match loader.attach(program, exe, &offsets, pid) {
                    Ok(link) => {
                        links.push(UprobeLink::Multi(link));
                        continue;
                    }
                    Err(e) => {
                        super::uprobe_multi::say_unavailable(&e);
                        *multi = None;
                    }
                }
            }
            loaded(ebpf, program, UProbe::load)?;
            for (function, offset) in points {
                let link = attach_at(ebpf, program, exe, offset, scope)
                    .with_context(|| format!("probing {function}"))?;
                links.push(UprobeLink::PerfEvent(link));
            }
        }
        Ok(links)
    }
}

/// Uprobes fire for process `pid` only.
fn one_process(pid: u32) -> Result<UProbeScope> {
    Ok(UProbeScope::OneProcess(
        NonZeroU32::new(pid).context("PID 0")?,
    ))
}

fn attach_at(
    ebpf: &mut Ebpf,
    name: &str,
    path: &Path,
    file_offset: u64,
    scope: UProbeScope,
) -> Result<UProbeLink> {
    let prog: &mut UProbe = program_mut(ebpf, name)?;
    let id = prog
        .attach(file_offset, path, scope)
        .with_context(|| format!("attaching {name} at file offset {file_offset:#x}"))?;
    Ok(prog.take_link(id)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_uprobe_is_told_from_a_missing_symbol() {
        let syscall = |errno| {
            anyhow::Error::from(ProgramError::SyscallError(SyscallError {
                call: "perf_event_open",
                io_error: std::io::Error::from_raw_os_error(errno),
            }))
        };
        assert!(uprobe_refused(&syscall(libc::EACCES)));
        assert!(uprobe_refused(
            &syscall(libc::EPERM).context("attaching ssl_free to SSL_free")
        ));
        assert!(!uprobe_refused(&syscall(libc::ENOENT)));
        assert!(!uprobe_refused(&anyhow::anyhow!("symbol not found")));
    }

    #[test]
    fn the_go_runtime_line_says_what_is_followed_or_why_not() {
        assert_eq!(
            UPROBES_REFUSED,
            "the kernel refused the uprobes (permission denied): uprobes need CAP_SYS_ADMIN on \
             this kernel; run tracer as root or add CAP_SYS_ADMIN (handshakes are timed from the \
             TLS record framing only)"
        );
        assert!(UPROBES_REFUSED.starts_with(GO_SCHED_UPROBES_REFUSED));
        assert_eq!(GoSchedStatus::NotGo.line(), None);
        let followed = GoSchedStatus::Followed {
            version: Some("go1.19.8".into()),
            found_in: "probe points: .gopclntab; g/m offsets: go1.19 table".into(),
            http2: false,
        };
        assert_eq!(
            followed.line().unwrap(),
            "Go runtime: go1.19.8; goroutines followed with uprobes on runtime.gopark, \
             runtime.ready, runtime.injectglist, runtime.execute, runtime.goexit1, \
             runtime.semacquire1, runtime.semrelease1, runtime.stopTheWorldWithSema, \
             runtime.startTheWorldWithSema (probe points: .gopclntab; g/m offsets: go1.19 table)"
        );
        let with_http2 = GoSchedStatus::Followed {
            version: None,
            found_in: String::new(),
            http2: true,
        };
        assert!(with_http2
            .line()
            .unwrap()
            .ends_with("; HTTP/2 streams delimited by their handler goroutines (uprobes on net/http's HTTP/2 server)"));
        let off = GoSchedStatus::Off {
            reason: "go1.99.1 has no table of their field offsets here".into(),
        };
        assert_eq!(
            off.line().unwrap(),
            "Go runtime: goroutine attribution is off, requests are attributed per thread: \
             go1.99.1 has no table of their field offsets here"
        );
    }
}
