//! Uprobes attached as one `uprobe_multi` BPF link per program (Linux 6.6+): OpenSSL's, Go's
//! scheduler's and Go crypto/tls's, all placed at file offsets.
//!
//! Why not aya's `UProbe::attach`: it makes one perf event per probe point, and closing a
//! uprobe perf event unregisters it under the kernel's global `event_mutex` and waits there
//! for an RCU Tasks Trace grace period (`perf_uprobe_destroy()` → `uprobe_unregister_sync()`,
//! kernel/trace/trace_event_perf.c, Linux 6.18): about 0.1 s each on this VM, one after the
//! other, so stopping on a Go target with its 29 probes took 2.9 s. Releasing a
//! `uprobe_multi` link unregisters all of its probe points and then waits for one grace
//! period, without `event_mutex` (`bpf_uprobe_multi_link_release()`,
//! kernel/trace/bpf_trace.c), so the links of all programs are gone in about one grace
//! period.
//!
//! Such a link needs the program loaded with `expected_attach_type = BPF_TRACE_UPROBE_MULTI`,
//! which aya 0.14's `UProbe::load` cannot ask for. So these programs are loaded here: the
//! object parsed again by aya-obj, its map references relocated to the maps aya created (the
//! same fds, so the programs share every map, `.rodata`'s globals included, with aya's),
//! then `BPF_PROG_LOAD` and `BPF_LINK_CREATE` ourselves. Where that fails (an older kernel,
//! no `CONFIG_UPROBES` for BPF links), [`crate::kernel::uprobes`] falls back to aya's perf
//! event uprobes.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use anyhow::{Context as _, Result};
use aya::{maps::Map, Ebpf};
use aya_obj::{
    generated::{
        bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type, BPF_F_UPROBE_MULTI_RETURN,
    },
    ProgramSection,
};

use super::probes::EBPF_OBJECT;

/// Loads the uprobe programs for `uprobe_multi` links and attaches them.
pub struct MultiUprobes {
    /// Every map of the object by name, as aya created it: duplicates of aya's fds, taken
    /// before [`super::Probes`] takes maps out of the `Ebpf`.
    map_fds: Vec<(String, OwnedFd)>,
    /// The object with its maps relocated, parsed on the first program loaded.
    object: Option<aya_obj::Object>,
    /// The programs loaded here, by name.
    programs: HashMap<String, OwnedFd>,
}

/// Tells the operator that uprobes will be perf events, and why.
pub fn say_unavailable(why: &anyhow::Error) {
    eprintln!(
        "tracer: uprobe_multi links unavailable ({why:#}); using one perf event per uprobe, \
         which takes the kernel about 0.1 s each to remove"
    );
}

/// One program attached at one or more offsets of one file: detached when dropped.
pub struct MultiLink {
    _fd: OwnedFd,
    /// Its probe points.
    pub probes: usize,
}

impl MultiUprobes {
    /// Takes a duplicate of the fd of each map of `ebpf` (all of them still in it).
    pub fn new(ebpf: &Ebpf) -> Result<Self> {
        let mut map_fds = Vec::new();
        for (name, map) in ebpf.maps() {
            let fd = map_fd(map)
                .with_context(|| format!("map {name}: a kind this loader does not know"))?
                .try_clone_to_owned()
                .with_context(|| format!("duplicating the fd of map {name}"))?;
            map_fds.push((name.to_string(), fd));
        }
        Ok(Self {
            map_fds,
            object: None,
            programs: HashMap::new(),
        })
    }

    /// Attach `program` at `offsets` (file offsets) of `path`, firing for process `pid` only.
    pub fn attach(
        &mut self,
        program: &str,
        path: &Path,
        offsets: &[u64],
        pid: u32,
    ) -> Result<MultiLink> {
        let flags = if self.is_return_probe(program)? {
            BPF_F_UPROBE_MULTI_RETURN
        } else {
            0
        };
        let prog_fd = self.loaded(program)?;
        let link = link_create(prog_fd, path, offsets, pid, flags)
            .with_context(|| format!("attaching {program} (uprobe_multi link)"))?;
        Ok(MultiLink {
            _fd: link,
            probes: offsets.len(),
        })
    }

    /// The programs loaded here, for their run statistics.
    pub fn programs(&self) -> impl Iterator<Item = (&str, BorrowedFd<'_>)> {
        self.programs
            .iter()
            .map(|(name, fd)| (name.as_str(), fd.as_fd()))
    }

    /// Whether `program` is a return probe (a `uretprobe` section): its link then fires at
    /// each return of the functions it is attached to, through the kernel's return trampoline.
    fn is_return_probe(&mut self, program: &str) -> Result<bool> {
        let prog = self
            .object()?
            .programs
            .get(program)
            .with_context(|| format!("program {program} missing from the object"))?;
        Ok(matches!(prog.section, ProgramSection::URetProbe { .. }))
    }

    fn loaded(&mut self, program: &str) -> Result<BorrowedFd<'_>> {
        if !self.programs.contains_key(program) {
            let fd = load_program(self.object()?, program)
                .with_context(|| format!("loading program {program} for uprobe_multi"))?;
            self.programs.insert(program.to_string(), fd);
        }
        Ok(self.programs[program].as_fd())
    }

    fn object(&mut self) -> Result<&aya_obj::Object> {
        if self.object.is_none() {
            self.object = Some(relocated_object(&self.map_fds)?);
        }
        Ok(self.object.as_ref().expect("set above"))
    }
}

/// The kernel object parsed, its map references pointing at `map_fds` and its calls linked,
/// as aya's loader does (aya 0.14 `EbpfLoader::load`).
fn relocated_object(map_fds: &[(String, OwnedFd)]) -> Result<aya_obj::Object> {
    let mut object = aya_obj::Object::parse(EBPF_OBJECT).context("parsing the kernel object")?;
    let text_sections: HashSet<usize> = object
        .functions
        .keys()
        .map(|(section_index, _)| *section_index)
        .collect();
    let maps = object.maps.clone();
    let mut with_fds = Vec::new();
    for (name, fd) in map_fds {
        let map = maps
            .get(name)
            .with_context(|| format!("map {name} missing from the object"))?;
        with_fds.push((name.as_str(), fd.as_raw_fd(), map));
    }
    object
        .relocate_maps(with_fds.into_iter(), &text_sections)
        .context("relocating map references")?;
    object
        .relocate_calls(&text_sections)
        .context("linking function calls")?;
    Ok(object)
}

/// `BPF_PROG_LOAD` of `program` (a kprobe-type program) for `uprobe_multi` links. On a
/// refusal, the verifier's log is in the error.
fn load_program(object: &aya_obj::Object, program: &str) -> Result<OwnedFd> {
    let prog = object
        .programs
        .get(program)
        .with_context(|| format!("program {program} missing from the object"))?;
    let function = object
        .functions
        .get(&prog.function_key())
        .context("the program's code missing from the object")?;
    let insns: &[bpf_insn] = &function.instructions;
    prog_load(program, insns, &prog.license, None).or_else(|refused| {
        // Again with the verifier's log, for the error.
        let mut log = vec![0u8; 1 << 20];
        prog_load(program, insns, &prog.license, Some(&mut log))
            .map_err(|_| anyhow::anyhow!("{refused}{}", verifier_log_tail(&log)))
    })
}

/// The verifier log's last lines, as `; verifier: ...`, or nothing for an empty log.
fn verifier_log_tail(log: &[u8]) -> String {
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(5)..];
    if tail.is_empty() {
        String::new()
    } else {
        format!("; verifier: {}", tail.join(" / "))
    }
}

fn prog_load(
    name: &str,
    insns: &[bpf_insn],
    license: &CString,
    log: Option<&mut Vec<u8>>,
) -> std::io::Result<OwnedFd> {
    // SAFETY: plain-old-data kernel ABI union; zero is a valid value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing fields of the union's BPF_PROG_LOAD member.
    let load = unsafe { &mut attr.__bindgen_anon_3 };
    load.prog_type = bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32;
    load.expected_attach_type = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
    load.insns = insns.as_ptr() as u64;
    load.insn_cnt = insns.len() as u32;
    load.license = license.as_ptr() as u64;
    // The kernel's name field holds 15 bytes and a NUL, of [A-Za-z0-9_.].
    for (dst, src) in load.prog_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    if let Some(log) = log {
        load.log_level = 1;
        load.log_buf = log.as_mut_ptr() as u64;
        load.log_size = log.len() as u32;
    }
    bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
}

/// `BPF_LINK_CREATE` of a `uprobe_multi` link: `prog_fd` at each of `offsets` of `path`, for
/// process `pid`'s tasks only; `flags`: `BPF_F_UPROBE_MULTI_RETURN` for return probes.
fn link_create(
    prog_fd: BorrowedFd<'_>,
    path: &Path,
    offsets: &[u64],
    pid: u32,
    flags: u32,
) -> std::io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: plain-old-data kernel ABI union; zero is a valid value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing fields of the union's BPF_LINK_CREATE member.
    let link = unsafe { &mut attr.link_create };
    link.__bindgen_anon_1.prog_fd = prog_fd.as_raw_fd() as u32;
    link.attach_type = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
    // SAFETY: as above; `path` and `offsets` outlive the syscall.
    let multi = unsafe { &mut link.__bindgen_anon_3.uprobe_multi };
    multi.path = path.as_ptr() as u64;
    multi.offsets = offsets.as_ptr() as u64;
    multi.cnt = offsets.len() as u32;
    multi.pid = pid;
    multi.flags = flags;
    bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)
}

/// The `bpf()` syscall for a command that returns a new fd.
fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<OwnedFd> {
    // SAFETY: the callers fill `attr` for `cmd`, with pointers live for the call.
    let fd = unsafe { super::bpf_syscall(cmd, attr) }?;
    // SAFETY: the kernel returned a new fd (close-on-exec) that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The fd of `map`, for the kinds of maps tracer-ebpf has.
fn map_fd(map: &Map) -> Option<BorrowedFd<'_>> {
    let data = match map {
        Map::Array(data)
        | Map::HashMap(data)
        | Map::LruHashMap(data)
        | Map::PerCpuArray(data)
        | Map::PerCpuHashMap(data)
        | Map::RingBuf(data)
        | Map::StackTraceMap(data) => data,
        _ => return None,
    };
    Some(data.fd().as_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_carries_the_verifier_logs_last_lines() {
        let mut log =
            b"0: R1=ctx()\n\n1: (85) call bpf_foo#999\nunknown func bpf_foo#999\n".to_vec();
        log.resize(64, 0);
        assert_eq!(
            verifier_log_tail(&log),
            "; verifier: 0: R1=ctx() / 1: (85) call bpf_foo#999 / unknown func bpf_foo#999"
        );
        assert_eq!(verifier_log_tail(&[0; 16]), "");
        let long: Vec<u8> = (0..9)
            .map(|i| format!("line {i}\n"))
            .collect::<String>()
            .into();
        assert_eq!(
            verifier_log_tail(&long),
            "; verifier: line 4 / line 5 / line 6 / line 7 / line 8"
        );
    }
}
