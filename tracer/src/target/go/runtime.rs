//! What goroutine-aware probes need from a Go executable (Go 1.17+, amd64).
//!
//! The kernel side puts a uprobe (never a uretprobe: Go moves goroutine stacks, and a
//! rewritten return address on a moved stack crashes the target) on three functions of
//! Go's scheduler, each at the conditional jump of its stack check, an instruction the
//! kernel emulates (0.6 µs per hit instead of 6.5 µs on the first instruction, see
//! KERNEL.md):
//! - `runtime.gopark(unlockf, lock, reason, ...)`: runs on the parking goroutine (r14 = its
//!   g), the wait reason is the third integer argument (cl);
//! - `runtime.ready(gp, traceskip, next)`: rax = the goroutine woken; runs on g0, so the
//!   waker is `g0.m.curg`;
//! - `runtime.execute(gp, inheritTime)`: rax = the goroutine about to run on this thread.
//!
//! The probes read `g.goid`, `g.m` and `m.curg`, whose offsets change between Go releases,
//! and userspace names wait reasons with Go's own strings, whose numbering changes too.
//! Every fact is read from the binary when it holds it, else from a table per Go release
//! (`versions.rs`, by the version in `.go.buildinfo`), and never guessed:
//! - probe points: the ELF symbol table, else `.gopclntab` (stripped binaries keep it);
//! - struct offsets: DWARF, else the release's table;
//! - wait reasons: the `runtime.waitReasonStrings` array by its symbol, else the same array
//!   located by decoding `runtime.waitReason.String` (found in `.gopclntab`), else the
//!   release's table.
//!
//! The DWARF constants `runtime.waitReason*` number the wait reasons; when the binary has
//! them, the strings read are checked against them.

mod dwarf;
pub(super) mod memory;
pub(super) mod probe_point;
mod versions;
mod wait_reasons;

use std::{fmt, ops::Range};

use anyhow::{bail, Context as _, Result};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

use super::{go_sections, go_version, pclntab::FuncRange, text_start, GoSections};
use crate::target::Executable;

pub const GOPARK: &str = "runtime.gopark";
pub const READY: &str = "runtime.ready";
pub const EXECUTE: &str = "runtime.execute";
/// `runtime.goexit1()`: runs on the exiting goroutine (r14 = its g).
pub const GOEXIT1: &str = "runtime.goexit1";
/// `runtime.semacquire1(addr, lifo, ...)`: a goroutine takes a semaphore (`sync.Mutex`,
/// `RWMutex`, `WaitGroup` waits, and the runtime's own), parking when it must wait.
pub const SEMACQUIRE1: &str = "runtime.semacquire1";
/// `runtime.semrelease1(addr, handoff, ...)`: a goroutine releases a semaphore (a
/// `sync.Mutex`'s Unlock with waiters), readying a waiter: the unlocker.
pub const SEMRELEASE1: &str = "runtime.semrelease1";
/// `runtime.stopTheWorldWithSema` and `startTheWorldWithSema`: every goroutine stops (for the
/// GC, and a few other runtime jobs) and may run again. Both run on the system stack.
pub const STOP_THE_WORLD: &str = "runtime.stopTheWorldWithSema";
pub const START_THE_WORLD: &str = "runtime.startTheWorldWithSema";
/// `runtime.injectglist(glist *gList)`: goroutines made runnable together, not through
/// `ready`: the ones the netpoller found ready, and the GC's waiters released at once.
pub const INJECTGLIST: &str = "runtime.injectglist";
/// The functions probed, each at its stack check's jump.
pub const PROBED: [&str; 9] = [
    GOPARK,
    READY,
    INJECTGLIST,
    EXECUTE,
    GOEXIT1,
    SEMACQUIRE1,
    SEMRELEASE1,
    STOP_THE_WORLD,
    START_THE_WORLD,
];
/// net/http's HTTP/2 server: the goroutines that move a connection's bytes for every
/// stream (`serve`; `readPreface.func1`, started by `serve` to read the client's preface;
/// `readFrames`), and the one started for each stream's handler (`runHandler`, which returns
/// when the handler is done). Bundled in the standard library
/// as `net/http.(*http2serverConn)` up to Go 1.26 (1.25.5 read), as the package
/// `net/http/internal/http2` since (1.27.3 read), and golang.org/x/net/http2 when used
/// directly. Probed when present (a program without an HTTP/2 server has none of them).
pub const HTTP2_CONNECTION_FUNCTIONS: [&str; 9] = [
    "net/http.(*http2serverConn).serve",
    "net/http.(*http2serverConn).readPreface.func1",
    "net/http.(*http2serverConn).readFrames",
    "net/http/internal/http2.(*serverConn).serve",
    "net/http/internal/http2.(*serverConn).readPreface.func1",
    "net/http/internal/http2.(*serverConn).readFrames",
    "golang.org/x/net/http2.(*serverConn).serve",
    "golang.org/x/net/http2.(*serverConn).readPreface.func1",
    "golang.org/x/net/http2.(*serverConn).readFrames",
];
pub const HTTP2_HANDLER_FUNCTIONS: [&str; 3] = [
    "net/http.(*http2serverConn).runHandler",
    "net/http/internal/http2.(*serverConn).runHandler",
    "golang.org/x/net/http2.(*serverConn).runHandler",
];
/// The runtime functions that take the GC's own semaphores (`work.startSema`, `gcsema`,
/// `worldsema`, `work.markDoneSema`) with `semacquire`, inlined into them (Go 1.19.8 and
/// 1.27.3 binaries): a goroutine that allocates while the GC runs may park there, waiting
/// for the GC, with the wait reason `semacquire` that a `sync.Mutex` had before Go 1.20.
const GC_SEMAPHORE_CALLERS: [&str; 4] = [
    "runtime.gcStart",
    "runtime.gcMarkDone",
    "runtime.stopTheWorld",
    "runtime.stopTheWorldGC",
];
/// HTTP/2's body read, `(*pipe).Read`: a server's handler reading its request's body (or a
/// Go HTTP/2 client reading a response's) waits on the pipe's `sync.Cond` until the
/// connection's reader goroutine brings the peer's DATA (net/http's bundle until Go 1.26,
/// its internal package since 1.27, and golang.org/x/net/http2).
const HTTP2_BODY_READ_FUNCTIONS: [&str; 3] = [
    "net/http.(*http2pipe).Read",
    "net/http/internal/http2.(*pipe).Read",
    "golang.org/x/net/http2.(*pipe).Read",
];
/// Go's string for `waitReasonSyncCondWait`, the same in every release since 1.17.
const COND_WAIT_REASON: &str = "sync.Cond.Wait";
/// `func (w waitReason) String() string`, which indexes `runtime.waitReasonStrings`.
const WAIT_REASON_STRING: &str = "runtime.waitReason.String";

/// What the goroutine probes need from a Go executable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoRuntime {
    /// `go1.23.9`, from `.go.buildinfo`.
    pub version: Option<String>,
    /// File offsets of the probe instruction (the stack check's conditional jump) in
    /// `runtime.gopark`, `runtime.ready` and `runtime.execute`.
    pub gopark: u64,
    pub ready: u64,
    pub execute: u64,
    /// `runtime.injectglist`: goroutines made runnable by the netpoller (or the GC).
    pub injectglist: u64,
    /// And in `runtime.goexit1`: the goroutine is done.
    pub goexit1: u64,
    /// `runtime.semacquire1`: which semaphore a goroutine's next park waits for.
    pub semacquire1: u64,
    /// `runtime.semrelease1`: who releases it, and where.
    pub semrelease1: u64,
    /// `runtime.stopTheWorldWithSema` and `startTheWorldWithSema`.
    pub stop_the_world: u64,
    pub start_the_world: u64,
    /// The probe points of the HTTP/2 server's functions present ([`HTTP2_CONNECTION_FUNCTIONS`],
    /// [`HTTP2_HANDLER_FUNCTIONS`]): (function, file offset).
    pub http2_connection: Vec<(&'static str, u64)>,
    pub http2_handler: Vec<(&'static str, u64)>,
    /// The code of [`GC_SEMAPHORE_CALLERS`] found, as linked (virtual addresses of the
    /// executable, before any load bias).
    pub gc_semaphore_callers: Vec<Range<u64>>,
    /// The code of [`HTTP2_BODY_READ_FUNCTIONS`] found, as linked.
    pub body_reads: Vec<Range<u64>>,
    pub offsets: GOffsets,
    /// Go's string for each wait reason, indexed by the `waitReason` value (`gopark`'s third
    /// argument): `wait_reasons[19] == "chan receive"` in Go 1.26.
    pub wait_reasons: Vec<String>,
    pub found_in: FoundIn,
}

impl GoRuntime {
    /// The code of [`GC_SEMAPHORE_CALLERS`] in the executable loaded at `bias`.
    pub fn gc_semaphore_callers_loaded(&self, bias: u64) -> Vec<Range<u64>> {
        self.gc_semaphore_callers
            .iter()
            .map(|range| loaded(range, bias))
            .collect()
    }

    /// What the kernel side needs to tell a wait for an HTTP/2 body from the peer, in the
    /// executable loaded at `bias`.
    pub fn body_read_waits(&self, bias: u64) -> BodyReadWaits {
        let mut code = [0; 4];
        for (slot, range) in code.chunks_exact_mut(2).zip(&self.body_reads) {
            let Range { start, end } = loaded(range, bias);
            slot.copy_from_slice(&[start, end]);
        }
        // Without a body read in the executable, no sync.Cond park walks its stack.
        let cond_wait_reason = self
            .wait_reasons
            .iter()
            .position(|reason| reason == COND_WAIT_REASON)
            .filter(|_| !self.body_reads.is_empty())
            .map_or(0, |value| value as u32);
        BodyReadWaits {
            cond_wait_reason,
            code,
        }
    }
}

/// Linked code `range` in an executable loaded at `bias`.
fn loaded(range: &Range<u64>, bias: u64) -> Range<u64> {
    range.start.wrapping_add(bias)..range.end.wrapping_add(bias)
}

/// How the `gopark` probe tells an HTTP/2 handler's wait for its request body (net_io) from
/// other `sync.Cond` waits (lock): the wait reason's value, and the body read's code, which
/// one of the parking goroutine's first return addresses is in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BodyReadWaits {
    /// `waitReasonSyncCondWait`'s value (0: unknown, nothing is told).
    pub cond_wait_reason: u32,
    /// Up to two `[start, end)` ranges of [`HTTP2_BODY_READ_FUNCTIONS`], as loaded (0, 0: none).
    pub code: [u64; 4],
}

/// The kernel side's facts of a Go target, set when its programs are loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoProbeFacts {
    pub offsets: GOffsets,
    pub body_reads: BodyReadWaits,
}

/// Byte offsets of the fields the probes read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GOffsets {
    /// `runtime.g.goid`: the goroutine's id (`g` structs are recycled, ids are not).
    pub g_goid: u32,
    /// `runtime.g.m`: the thread (`m`) running the goroutine.
    pub g_m: u32,
    /// `runtime.m.curg`: the goroutine the thread runs (g0 runs `ready` on its behalf).
    pub m_curg: u32,
    /// `runtime.g.schedlink`: the next goroutine on a `gList` (`injectglist`'s).
    pub g_schedlink: u32,
}

/// Where a fact came from, for the start-up line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    SymbolTable,
    Gopclntab,
    Dwarf,
    /// The table of a Go release (`versions.rs`), by the version in `.go.buildinfo`.
    ReleaseTable {
        minor: u32,
    },
}

/// Where each of a [`GoRuntime`]'s facts came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FoundIn {
    pub probe_points: Source,
    pub offsets: Source,
    /// `SymbolTable`: the array by its symbol; `Gopclntab`: the array located by decoding
    /// `runtime.waitReason.String`; `ReleaseTable`: not read from the binary.
    pub wait_reasons: Source,
    /// Whether the wait reasons were checked against the binary's DWARF constants.
    pub wait_reasons_checked_against_dwarf: bool,
}

/// Look at the target's executable: `Ok(None)` when it is not a Go program. An error says
/// which fact could not be established and why.
pub fn find_go_runtime(exe: &Executable) -> Result<Option<GoRuntime>> {
    let file = exe.elf()?;
    let Some(GoSections { pclntab, buildinfo }) = go_sections(&file)? else {
        return Ok(None);
    };
    let memory = memory::Memory::new(&file);
    let version = buildinfo.and_then(|section| buildinfo_version(&section, &memory));
    let release = version.as_deref().and_then(versions::release);

    let (functions, functions_source) = find_functions(&file, pclntab.as_ref())?;
    let probe_point = |name: &str| -> Result<u64> {
        probe_point::file_offset(&file, &memory, functions.get(name)?)
    };
    let gopark = probe_point(GOPARK)?;
    let ready = probe_point(READY)?;
    let execute = probe_point(EXECUTE)?;
    let injectglist = probe_point(INJECTGLIST)?;
    let goexit1 = probe_point(GOEXIT1)?;
    let semacquire1 = probe_point(SEMACQUIRE1)?;
    let semrelease1 = probe_point(SEMRELEASE1)?;
    let stop_the_world = probe_point(STOP_THE_WORLD)?;
    let start_the_world = probe_point(START_THE_WORLD)?;
    // Best effort: a function absent, or without a probe point, is not probed.
    let present = |names: &[&'static str]| -> Vec<(&'static str, u64)> {
        names
            .iter()
            .filter_map(|&name| Some((name, probe_point(name).ok()?)))
            .collect()
    };
    let http2_connection = present(&HTTP2_CONNECTION_FUNCTIONS);
    let http2_handler = present(&HTTP2_HANDLER_FUNCTIONS);
    let gc_semaphore_callers = functions.code_of(&GC_SEMAPHORE_CALLERS);
    let body_reads = functions.code_of(&HTTP2_BODY_READ_FUNCTIONS);

    let dwarf = dwarf::read(&file).context("reading the DWARF debug information")?;
    let (offsets, offsets_source) = struct_offsets(dwarf.as_ref(), release, version.as_deref())?;
    let (wait_reasons, wait_reasons_source) =
        wait_reasons(&file, &memory, &functions, release, version.as_deref())?;
    let checked = match &dwarf {
        Some(dwarf) if !dwarf.wait_reasons.is_empty() => {
            wait_reasons::check_against_dwarf(&wait_reasons, &dwarf.wait_reasons)?;
            true
        }
        _ => false,
    };
    Ok(Some(GoRuntime {
        version,
        gopark,
        ready,
        execute,
        injectglist,
        goexit1,
        semacquire1,
        semrelease1,
        stop_the_world,
        start_the_world,
        http2_connection,
        http2_handler,
        gc_semaphore_callers,
        body_reads,
        offsets,
        wait_reasons,
        found_in: FoundIn {
            probe_points: functions_source,
            offsets: offsets_source,
            wait_reasons: wait_reasons_source,
            wait_reasons_checked_against_dwarf: checked,
        },
    }))
}

/// The Go version in `.go.buildinfo`: inline since Go 1.18 ([`go_version`]); in Go 1.17 the
/// 8-byte word at offset 16 points to the version's string header (`runtime.buildVersion`;
/// `src/debug/buildinfo/buildinfo.go`, read in Go 1.19.8). Flags byte 15 is 0 then
/// (little-endian, pointers).
fn buildinfo_version(section: &object::Section, memory: &memory::Memory) -> Option<String> {
    let data = section.data().ok()?;
    if let Some(version) = go_version(data) {
        return Some(version);
    }
    if !data.starts_with(b"\xff Go buildinf:") || data.get(14..16)? != [8, 0] {
        return None;
    }
    let header = memory.pointer(section.address() + 16)?;
    let version = memory.go_string(header)?;
    (!version.is_empty()).then(|| version.to_string())
}

/// The functions this module reads, by name.
struct Functions(Vec<FuncRange>);

impl Functions {
    /// The code of those of `names` found, as linked.
    fn code_of(&self, names: &[&str]) -> Vec<Range<u64>> {
        names
            .iter()
            .filter_map(|name| self.get(name).ok())
            .map(|f| f.entry..f.end)
            .collect()
    }

    fn get(&self, name: &str) -> Result<&FuncRange> {
        self.0
            .iter()
            .find(|f| f.name == name)
            .with_context(|| format!("{name} is not in the executable"))
    }
}

/// The probed functions and `runtime.waitReason.String`, from the symbol table, else (a
/// stripped binary) from `.gopclntab`.
fn find_functions(
    file: &object::File,
    pclntab: Option<&object::Section>,
) -> Result<(Functions, Source)> {
    let names: Vec<&str> = PROBED
        .iter()
        .chain(&[WAIT_REASON_STRING])
        .chain(&GC_SEMAPHORE_CALLERS)
        .chain(&HTTP2_CONNECTION_FUNCTIONS)
        .chain(&HTTP2_HANDLER_FUNCTIONS)
        .chain(&HTTP2_BODY_READ_FUNCTIONS)
        .copied()
        .collect();
    let from_symbols: Vec<FuncRange> = file
        .symbols()
        .filter(|s| s.is_definition())
        .filter_map(|s| {
            let name = s.name().ok()?;
            names.contains(&name).then(|| FuncRange {
                name: name.to_string(),
                entry: s.address(),
                end: s.address().saturating_add(s.size()),
            })
        })
        .collect();
    if !from_symbols.is_empty() {
        return Ok((Functions(from_symbols), Source::SymbolTable));
    }
    let Some(pclntab) = pclntab else {
        bail!(
            "stripped, and its function table (.gopclntab) is not a section of its own \
             (an externally linked executable)"
        );
    };
    let table = pclntab.data().context("reading .gopclntab")?;
    let text = text_start(file, pclntab.address());
    let found = super::pclntab::find_functions(table, text, &names)?;
    Ok((Functions(found), Source::Gopclntab))
}

/// `g.goid`, `g.m` and `m.curg` from DWARF, else from the release's table.
fn struct_offsets(
    dwarf: Option<&dwarf::DwarfFacts>,
    release: Option<&versions::Release>,
    version: Option<&str>,
) -> Result<(GOffsets, Source)> {
    if let Some(offsets) = dwarf.and_then(|d| d.offsets) {
        return Ok((offsets, Source::Dwarf));
    }
    match release {
        Some(release) => Ok((
            release.offsets,
            Source::ReleaseTable {
                minor: release.minor,
            },
        )),
        None => bail!(
            "no DWARF with runtime.g and runtime.m (built with -w or -s), and {} has no table \
             of their field offsets here",
            describe(version)
        ),
    }
}

/// Go's wait-reason strings, read from the binary when it can be, else from the release's
/// table.
fn wait_reasons(
    file: &object::File,
    memory: &memory::Memory,
    functions: &Functions,
    release: Option<&versions::Release>,
    version: Option<&str>,
) -> Result<(Vec<String>, Source)> {
    if let Some(array) = wait_reasons::array_by_symbol(file) {
        let strings =
            wait_reasons::read_array(memory, array).context("reading runtime.waitReasonStrings")?;
        return Ok((strings, Source::SymbolTable));
    }
    if let Ok(method) = functions.get(WAIT_REASON_STRING) {
        if let Some(array) = wait_reasons::array_by_decoding(memory, method) {
            let strings = wait_reasons::read_array(memory, array).with_context(|| {
                format!("reading runtime.waitReasonStrings as {WAIT_REASON_STRING} indexes it")
            })?;
            return Ok((strings, Source::Gopclntab));
        }
    }
    match release {
        Some(release) => Ok((
            release.wait_reasons.iter().map(|s| s.to_string()).collect(),
            Source::ReleaseTable {
                minor: release.minor,
            },
        )),
        None => bail!(
            "runtime.waitReasonStrings was not found, and {} has no table of wait reasons here",
            describe(version)
        ),
    }
}

fn describe(version: Option<&str>) -> &str {
    version.unwrap_or("its Go version (not in .go.buildinfo)")
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Source::SymbolTable => write!(f, "symbol table"),
            Source::Gopclntab => write!(f, ".gopclntab"),
            Source::Dwarf => write!(f, "DWARF"),
            Source::ReleaseTable { minor } => write!(f, "go1.{minor} table"),
        }
    }
}

/// `probe points: symbol table; g/m offsets: DWARF; wait reasons: runtime.waitReasonStrings
/// (symbol table), checked against DWARF`.
impl fmt::Display for FoundIn {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "probe points: {}; g/m offsets: {}; wait reasons: ",
            self.probe_points, self.offsets
        )?;
        match self.wait_reasons {
            Source::SymbolTable => write!(f, "runtime.waitReasonStrings (symbol table)")?,
            Source::Gopclntab => write!(
                f,
                "runtime.waitReasonStrings (located in {WAIT_REASON_STRING}, .gopclntab)"
            )?,
            other => write!(f, "{other}")?,
        }
        if self.wait_reasons_checked_against_dwarf {
            write!(f, ", checked against DWARF")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
