//! Finding the TLS library a target uses and hooking it: OpenSSL as a shared `libssl`
//! (through `/proc/PID/maps`, opened through `/proc/PID/root` so containers work) or linked
//! into the executable (its symbol table has `SSL_do_handshake`).

use std::{
    fs,
    num::NonZeroU32,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::{
    programs::{
        uprobe::{UProbeLink, UProbeScope},
        ProgramError, UProbe,
    },
    sys::SyscallError,
    Ebpf,
};
use object::{Object as _, ObjectSymbol as _};

/// Functions hooked, by kernel program: entry probes, and one return probe on all of them.
/// `SSL_accept` and `SSL_connect` tail-call `SSL_do_handshake` (ssl/ssl_lib.c, OpenSSL 1.0.2
/// to 3.x), so its probes see all three at the cost of one; they are probed themselves only
/// when it cannot be.
const HANDSHAKE_FNS: &[&str] = &["SSL_do_handshake"];
const HANDSHAKE_FALLBACK_FNS: &[&str] = &["SSL_accept", "SSL_connect"];
const READ_FNS: &[&str] = &["SSL_read", "SSL_read_ex", "SSL_peek"];
const WRITE_FNS: &[&str] = &["SSL_write", "SSL_write_ex"];

/// Why nothing is hooked when the kernel refuses to create uprobes (perf_event_open on the
/// uprobe PMU fails with EACCES). Measured on Linux 6.18: CAP_BPF + CAP_PERFMON is refused,
/// CAP_SYS_ADMIN is needed (Linux 6.16 and the stable kernels fixed for CVE-2025-38466, e.g.
/// 6.1.146, 6.6.99, 6.12.39, went back to requiring it; CAP_PERFMON was enough before).
pub const UPROBES_REFUSED: &str = "the kernel refused the uprobes (permission denied): uprobes need CAP_SYS_ADMIN on this kernel; run tracer as root or add CAP_SYS_ADMIN (handshakes are timed from the TLS record framing only)";

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

/// The OpenSSL a target uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSsl {
    /// What to call it in the output: `libssl.so.3`, or `static (/usr/bin/app)`.
    pub library: String,
    /// The file to probe, as this process can open it.
    pub path: PathBuf,
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

/// Find OpenSSL in the target: a mapped `libssl.so*`, else the executable's own symbols.
pub fn find_openssl(pid: u32) -> Option<OpenSsl> {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    if let Some(lib) = mapped_libssl(&maps) {
        let name = Path::new(lib).file_name()?.to_string_lossy().into_owned();
        return Some(OpenSsl {
            library: name,
            path: root.join(lib.trim_start_matches('/')),
        });
    }
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    has_symbol(&exe, "SSL_do_handshake").then(|| OpenSsl {
        library: format!(
            "static ({})",
            fs::read_link(&exe)
                .unwrap_or_else(|_| exe.clone())
                .display()
        ),
        path: exe,
    })
}

/// The path of a mapped `libssl.so*` in /proc/PID/maps text.
pub fn mapped_libssl(maps: &str) -> Option<&str> {
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            Path::new(path)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libssl.so"))
        })
}

fn has_symbol(path: &Path, name: &str) -> bool {
    let Ok(data) = fs::read(path) else {
        return false;
    };
    let Ok(file) = object::File::parse(&*data) else {
        return false;
    };
    file.symbols()
        .chain(file.dynamic_symbols())
        .any(|s| s.is_definition() && s.name() == Ok(name))
}

/// Load the TLS programs and attach them to `ssl` in process `pid`: the handshake function
/// and `SSL_free`, plus the read and write functions when `io_probes`. Functions the library
/// lacks (`SSL_read_ex` before OpenSSL 1.1.1) are skipped.
///
/// Without `io_probes`, a handshake that a first `SSL_read`/`SSL_write` starts implicitly is
/// timed by the TLS record framing instead: the read and write functions run on every
/// request, and their probes (a trap at entry, two for the uretprobe) halved keep-alive
/// HTTPS throughput in the bench.
pub fn attach(
    ebpf: &mut Ebpf,
    pid: u32,
    ssl: &OpenSsl,
    io_probes: bool,
) -> Result<(Vec<UProbeLink>, Vec<String>)> {
    let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).context("PID 0")?);
    let mut links = Vec::new();
    let mut entered: Vec<&str> = Vec::new();
    let mut programs = vec!["ssl_handshake_enter", "ssl_return", "ssl_free"];
    if io_probes {
        programs.extend(["ssl_read_enter", "ssl_write_enter"]);
    }
    for program in programs {
        program_mut(ebpf, program)?
            .load()
            .with_context(|| format!("loading program {program}"))?;
    }
    let mut hook = |program: &str, functions: &[&'static str]| -> Result<Vec<&'static str>> {
        let prog = program_mut(ebpf, program)?;
        let mut hooked = Vec::new();
        for function in functions {
            let id = match prog.attach(*function, &ssl.path, scope) {
                Ok(id) => id,
                Err(e) => {
                    let e = anyhow::Error::from(e);
                    if uprobe_refused(&e) {
                        return Err(e.context(format!("attaching {program} to {function}")));
                    }
                    continue; // not in this OpenSSL
                }
            };
            links.push(prog.take_link(id)?);
            hooked.push(*function);
        }
        Ok(hooked)
    };
    let mut handshake = hook("ssl_handshake_enter", HANDSHAKE_FNS)?;
    if handshake.is_empty() {
        handshake = hook("ssl_handshake_enter", HANDSHAKE_FALLBACK_FNS)?;
    }
    entered.extend(handshake);
    if io_probes {
        entered.extend(hook("ssl_read_enter", READ_FNS)?);
        entered.extend(hook("ssl_write_enter", WRITE_FNS)?);
    }
    hook("ssl_return", &entered)?;
    hook("ssl_free", &["SSL_free"])?;
    Ok((links, entered.iter().map(|f| f.to_string()).collect()))
}

pub fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libssl_is_found_in_maps() {
        let maps = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:00 123 /usr/bin/openssl
7f1e2c000000-7f1e2c020000 r--p 00000000 fe:00 456 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1e2c100000-7f1e2c300000 r--p 00000000 fe:00 789 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7ffd1000-7ffd2000 rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(
            mapped_libssl(maps),
            Some("/usr/lib/x86_64-linux-gnu/libssl.so.3")
        );
        assert_eq!(
            mapped_libssl("7f00-7f01 r--p 0 fe:00 1 /lib/libc.so.6\n"),
            None
        );
    }

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
    fn symbols_are_read_from_elf_files() {
        let me = std::env::current_exe().unwrap();
        assert!(!has_symbol(&me, "SSL_do_handshake"));
        assert!(has_symbol(&me, "main"));
    }
}
