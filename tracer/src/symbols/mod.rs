//! Naming the code that waits: user-space addresses of one target process turned into
//! frames (function, file:line, inlined calls expanded), each distinct address once.
//!
//! - Go executables are read with their own `.gopclntab` ([`go`]), which stripped binaries
//!   keep: names, file:line and inline trees exactly as the Go runtime's tracebacks show
//!   them, for Go 1.16 to 1.27.
//! - Everything else (C, C++, Rust executables and shared libraries, the vDSO) goes through
//!   `blazesym`: `/proc/PID/maps`, ELF symbols and DWARF (with inlined functions), the
//!   files opened through `/proc/PID/map_files` when this process may (so a container's
//!   files are found), else by their path.
//!
//! Stacks come from the kernel (`bpf_get_stack` with `BPF_F_USER_STACK`), innermost first:
//! the first address may be the exact instruction, every other one a return address, which
//! is looked up one byte back, in the call instruction (else a call that ends a function, or
//! an inlined call, would be named by what follows it). A stack walked through code built
//! without frame pointers stops early; the caller says so with [`UserStack::truncated`], and
//! the stack gets a `[truncated]` root frame so that it is not mistaken for a whole one.
//! [`frame_pointers`] tells whether a module was built with them (the tracer warns at start
//! when the target's executable was not).

pub mod frame_pointers;
pub mod go;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, ops::Range, sync::Arc};

pub use self::frame_pointers::keeps_frame_pointers;
use self::go::GoExecutable;
use crate::target::{executable_mappings, Executable};
use anyhow::{Context as _, Result};
use blazesym::{
    symbolize::{
        source::{Process, Source},
        CodeInfo, Input, Symbolized,
    },
    Pid,
};

/// What to tell the user when the target's executable was built without frame pointers: the
/// kernel walks a user stack by them, so the call sites in its code may be cut short.
pub fn frame_pointer_warning(exe: &Executable, comm: &str) -> Option<String> {
    let kept = exe.elf().and_then(|elf| frame_pointers::kept_in(&elf));
    matches!(kept, Ok(Some(false))).then(|| {
        format!(
            "{comm}'s executable was built without frame pointers: call sites in its code may \
             be cut short ({TRUNCATED}); build it with -fno-omit-frame-pointer for whole stacks"
        )
    })
}

/// The root frame given to a stack the kernel could not walk to its end.
pub const TRUNCATED: &str = "[truncated]";

/// One source-level frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The function's name (demangled), or `[unknown]` / `module+0xOFFSET` when the
    /// address could not be named.
    pub function: String,
    /// The source file, as the debug information records it (a path for Go and DWARF).
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Inlined into the frame that follows it in the list.
    pub inlined: bool,
}

impl Frame {
    fn unknown(name: String) -> Frame {
        Frame {
            function: name,
            file: None,
            line: None,
            inlined: false,
        }
    }

    /// `file:line`, when known.
    pub fn location(&self) -> Option<String> {
        Some(format!("{}:{}", self.file.as_ref()?, self.line?))
    }
}

/// A user stack as the kernel captured it.
#[derive(Clone, Copy, Debug)]
pub struct UserStack<'a> {
    /// Innermost first.
    pub addrs: &'a [u64],
    /// The first address is the instruction the thread was at (a probe's IP), not a return
    /// address.
    pub first_is_pc: bool,
    /// The walk may have stopped before the stack's root (code without frame pointers on
    /// the way, or the capture's depth limit).
    pub truncated: bool,
}

/// A symbolized stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolizedStack {
    /// Innermost first, inlined frames included.
    pub frames: Vec<Frame>,
    pub truncated: bool,
}

impl SymbolizedStack {
    /// Function names from the root to the leaf, as flame graphs read them; a truncated
    /// stack starts with [`TRUNCATED`].
    pub fn names_root_to_leaf(&self) -> Vec<String> {
        let mut names = Vec::with_capacity(self.frames.len() + 1);
        if self.truncated {
            names.push(TRUNCATED.to_string());
        }
        names.extend(self.frames.iter().rev().map(|f| f.function.clone()));
        names
    }
}

/// What the cache holds, for reports and measurements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SymbolizerStats {
    /// Distinct addresses symbolized.
    pub addresses: usize,
    /// Of which by the Go tables.
    pub go: usize,
    /// Of which could not be named.
    pub unknown: usize,
}

/// The Go executable of the target and where it is mapped.
struct GoModule {
    exe: GoExecutable,
    /// Mapped ranges and what to add to an address in them to get the linked address.
    ranges: Vec<(Range<u64>, i64)>,
}

/// Symbolizes addresses of one process. Each distinct address is symbolized once.
pub struct Symbolizer {
    pid: u32,
    native: blazesym::symbolize::Symbolizer,
    /// Open mapped files through `/proc/PID/map_files` (needs privileges).
    map_files: bool,
    go: Option<GoModule>,
    /// Lookup address → frames, innermost first.
    cache: HashMap<u64, Arc<[Frame]>>,
    stats: SymbolizerStats,
}

impl Symbolizer {
    /// A symbolizer for process `pid`. Its executable is read now, and kept when it is a Go
    /// program.
    pub fn new(pid: u32) -> Result<Symbolizer> {
        let exe = Executable::read(pid)
            .with_context(|| format!("reading the executable of process {pid}"))?;
        Self::with_executable(pid, exe)
    }

    /// A symbolizer for process `pid`, whose executable `exe` was read already (it is not
    /// read again); kept when it is a Go program.
    pub fn with_executable(pid: u32, exe: Executable) -> Result<Symbolizer> {
        let exe_path = exe.path.clone();
        let go = match GoExecutable::from_bytes(exe.into_data()) {
            Ok(Some(exe)) => {
                let ranges = go_ranges(pid, &exe_path, exe.segments())
                    .with_context(|| format!("reading the memory map of process {pid}"))?;
                Some(GoModule { exe, ranges })
            }
            Ok(None) => None,
            Err(e) => return Err(e.context(format!("reading the executable of process {pid}"))),
        };
        Ok(Symbolizer {
            pid,
            native: blazesym::symbolize::Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .enable_demangling(true)
                .build(),
            map_files: can_open_map_files(pid),
            go,
            cache: HashMap::new(),
            stats: SymbolizerStats::default(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the target is a Go program (its executable is read with `.gopclntab`).
    pub fn is_go(&self) -> bool {
        self.go.is_some()
    }

    pub fn stats(&self) -> SymbolizerStats {
        self.stats
    }

    /// The frames at exactly `addr` (an absolute address in the target), innermost first.
    pub fn symbolize(&mut self, addr: u64) -> Arc<[Frame]> {
        self.prefetch(&[addr]);
        Arc::clone(&self.cache[&addr])
    }

    /// Symbolize the addresses not cached yet, in one batch for the native ones.
    pub fn prefetch(&mut self, addrs: &[u64]) {
        let mut native = Vec::new();
        for &addr in addrs {
            if self.cache.contains_key(&addr) {
                continue;
            }
            if let Some(frames) = self.go_frames(addr) {
                self.stats.go += 1;
                self.insert(addr, frames, true);
            } else if !native.contains(&addr) {
                native.push(addr);
            }
        }
        if native.is_empty() {
            return;
        }
        let source = Source::Process(Process {
            map_files: self.map_files,
            perf_map: false,
            ..Process::new(Pid::from(self.pid))
        });
        let results = self
            .native
            .symbolize(&source, Input::AbsAddr(&native))
            .unwrap_or_default();
        let mut named: Vec<Vec<Frame>> = results.into_iter().map(native_frames).collect();
        named.resize_with(native.len(), Vec::new);
        // The memory map, read once for all the addresses nothing names.
        let mut maps = None;
        for (addr, frames) in native.into_iter().zip(named) {
            if frames.is_empty() {
                let maps = maps.get_or_insert_with(|| read_maps(self.pid));
                let frame = Frame::unknown(unknown_name(maps, addr));
                self.insert(addr, vec![frame], false);
            } else {
                self.insert(addr, frames, true);
            }
        }
    }

    fn insert(&mut self, addr: u64, frames: Vec<Frame>, known: bool) {
        self.stats.addresses += 1;
        self.stats.unknown += usize::from(!known);
        self.cache.insert(addr, frames.into());
    }

    fn go_frames(&self, addr: u64) -> Option<Vec<Frame>> {
        let go = self.go.as_ref()?;
        let (_, delta) = go.ranges.iter().find(|(range, _)| range.contains(&addr))?;
        go.exe.frames(addr.checked_add_signed(*delta)?)
    }

    /// Symbolize a stack: return addresses are looked up in their call instruction.
    pub fn symbolize_stack(&mut self, stack: UserStack) -> SymbolizedStack {
        let lookups: Vec<u64> = stack
            .addrs
            .iter()
            .enumerate()
            .map(|(i, &addr)| {
                if i == 0 && stack.first_is_pc {
                    addr
                } else {
                    addr.saturating_sub(1)
                }
            })
            .collect();
        self.prefetch(&lookups);
        let frames = lookups
            .iter()
            .flat_map(|addr| self.cache[addr].iter().cloned())
            .collect();
        SymbolizedStack {
            frames,
            truncated: stack.truncated,
        }
    }
}

/// blazesym's answer as frames, innermost first: its inlined functions come outermost
/// first, each with the location inside it.
fn native_frames(symbolized: Symbolized) -> Vec<Frame> {
    let Symbolized::Sym(sym) = symbolized else {
        return Vec::new();
    };
    let location = |info: Option<&CodeInfo>| match info {
        Some(info) => (Some(info.to_path().display().to_string()), info.line),
        None => (None, None),
    };
    let mut frames: Vec<Frame> = sym
        .inlined
        .iter()
        .rev()
        .map(|f| {
            let (file, line) = location(f.code_info.as_ref());
            Frame {
                function: f.name.to_string(),
                file,
                line,
                inlined: true,
            }
        })
        .collect();
    let (file, line) = location(sym.code_info.as_deref());
    frames.push(Frame {
        function: sym.name.to_string(),
        file,
        line,
        inlined: false,
    });
    frames
}

fn read_maps(pid: u32) -> Vec<procfs::process::MemoryMap> {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.maps())
        .map(|maps| maps.into_iter().collect())
        .unwrap_or_default()
}

/// An address nothing names: `[unknown]`, or `[module+0xOFFSET]` (the offset in the file)
/// when a file maps it.
fn unknown_name(maps: &[procfs::process::MemoryMap], addr: u64) -> String {
    let module = maps.iter().find_map(|m| {
        let (start, end) = m.address;
        if !(start..end).contains(&addr) {
            return None;
        }
        let procfs::process::MMapPath::Path(path) = &m.pathname else {
            return None;
        };
        let name = path.file_name()?.to_string_lossy().into_owned();
        Some(format!("[{name}+{:#x}]", addr - start + m.offset))
    });
    module.unwrap_or_else(|| "[unknown]".to_string())
}

/// Whether this process may open the target's `/proc/PID/map_files/` entries.
fn can_open_map_files(pid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/map_files")) else {
        return false;
    };
    entries
        .flatten()
        .next()
        .is_some_and(|entry| std::fs::File::open(entry.path()).is_ok())
}

/// Where the executable is mapped, and the offset from a mapped address to the linked one:
/// a mapping at `start` of file offset `off` in the segment linked at `vaddr` (file offset
/// `seg_off`) holds linked address `addr - start + off - seg_off + vaddr`.
fn go_ranges(
    pid: u32,
    exe_path: &std::path::Path,
    segments: &[(u64, u64, u64)],
) -> Result<Vec<(Range<u64>, i64)>> {
    let mut ranges = Vec::new();
    for m in executable_mappings(pid, exe_path)? {
        if !m.perms.contains(procfs::process::MMPermissions::EXECUTE) {
            continue;
        }
        let (start, end) = m.address;
        let Some((vaddr, seg_off, _)) = segments
            .iter()
            .find(|(_, off, size)| *off <= m.offset && m.offset < off + size)
        else {
            continue;
        };
        let linked_start = m.offset - seg_off + vaddr;
        ranges.push((start..end, linked_start as i64 - start as i64));
    }
    Ok(ranges)
}
