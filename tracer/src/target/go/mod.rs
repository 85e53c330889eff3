//! Finding Go's `crypto/tls` in a target and hooking its handshake functions.
//!
//! `(*Conn).serverHandshake` and `(*Conn).clientHandshake` run once per handshake: each gets
//! a uprobe at its entry (on the stack check's conditional jump, which the kernel
//! emulates) and one at every RET instruction, found by decoding the function
//! with iced-x86 (never a uretprobe: Go moves goroutine stacks, and a rewritten return
//! address on a moved stack crashes the target). Functions are found in the ELF symbol
//! table, or in `.gopclntab` when the binary is stripped.
//!
//! `(*Conn).handshakeContext` is not hooked: every `Read` and `Write` on a `tls.Conn` calls
//! it (it returns at once once the handshake is done), so probes on it would cost two uprobe
//! traps per TLS read and write for the life of every connection.

use std::path::PathBuf;

use super::Executable;

use anyhow::{bail, ensure, Context as _, Result};
use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::{Architecture, Object as _, ObjectSection as _, ObjectSymbol as _, SectionKind};

pub mod pclntab;
pub mod runtime;

use pclntab as gopclntab;

pub const SERVER_HANDSHAKE: &str = "crypto/tls.(*Conn).serverHandshake";
pub const CLIENT_HANDSHAKE: &str = "crypto/tls.(*Conn).clientHandshake";
/// An assembly function of Go's register ABI (Go 1.17+), as `.gopclntab` and the ELF symbol
/// table name it.
const REGISTER_ABI_MARKERS: [&str; 2] = ["runtime.spillArgs", "runtime.spillArgs.abi0"];

/// A hooked function: where its entry probe (the stack check's conditional jump) and RET
/// instructions are, as offsets in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoFunction {
    pub name: String,
    pub entry: u64,
    pub returns: Vec<u64>,
}

/// A Go target's `crypto/tls`.
#[derive(Clone, Debug)]
pub struct GoTls {
    /// What to call it in the output: `Go crypto/tls (go1.19.8, /usr/bin/app)`.
    pub library: String,
    /// The executable, as this process can open it.
    pub path: PathBuf,
    pub functions: Vec<GoFunction>,
    /// Where the functions were found: `symbol table` or `.gopclntab`.
    pub found_in: &'static str,
}

/// The sections that make an executable a Go program.
pub struct GoSections<'f> {
    /// The function table (`.data.rel.ro.gopclntab` in position-independent executables).
    pub pclntab: Option<object::Section<'f, 'f>>,
    pub buildinfo: Option<object::Section<'f, 'f>>,
}

/// `Ok(None)` when `file` is not a Go program; an error when it is one for another
/// architecture than x86-64.
pub fn go_sections<'f>(file: &'f object::File) -> Result<Option<GoSections<'f>>> {
    let pclntab = [".gopclntab", ".data.rel.ro.gopclntab"]
        .iter()
        .find_map(|name| file.section_by_name(name));
    let buildinfo = file.section_by_name(".go.buildinfo");
    if pclntab.is_none() && buildinfo.is_none() {
        return Ok(None);
    }
    ensure!(
        file.architecture() == Architecture::X86_64,
        "only x86-64 Go binaries are supported"
    );
    Ok(Some(GoSections { pclntab, buildinfo }))
}

/// Look at the target's executable: `Ok(None)` when it is not a Go program or does not use
/// `crypto/tls`.
pub fn find_go_tls(exe: &Executable) -> Result<Option<GoTls>> {
    let file = exe.elf()?;
    let Some(GoSections { pclntab, buildinfo }) = go_sections(&file)? else {
        return Ok(None);
    };
    // `runtime.spillArgs` exists only with the register ABI (Go 1.17+), where r14 is `g`.
    let names = [
        SERVER_HANDSHAKE,
        CLIENT_HANDSHAKE,
        REGISTER_ABI_MARKERS[0],
        REGISTER_ABI_MARKERS[1],
    ];
    let mut found_in = "symbol table";
    let mut ranges: Vec<gopclntab::FuncRange> = file
        .symbols()
        .filter(|s| s.is_definition())
        .filter_map(|s| {
            let name = s.name().ok()?;
            names.contains(&name).then(|| gopclntab::FuncRange {
                name: name.to_string(),
                entry: s.address(),
                end: s.address().saturating_add(s.size()),
            })
        })
        .collect();
    if ranges.is_empty() {
        let Some(pclntab) = pclntab else {
            bail!("stripped, and its function table (.gopclntab) is not a section of its own (an externally linked executable)");
        };
        found_in = ".gopclntab";
        let table = pclntab.data().context("reading .gopclntab")?;
        ranges = gopclntab::find_functions(table, text_start(&file, pclntab.address()), &names)?;
    }
    let is_marker = |r: &gopclntab::FuncRange| REGISTER_ABI_MARKERS.contains(&r.name.as_str());
    ensure!(
        ranges.iter().any(is_marker),
        "built with a Go older than 1.17 (no register ABI, so the goroutine is not in r14)"
    );
    ranges.retain(|r| !is_marker(r));
    if ranges.is_empty() {
        return Ok(None); // Go, without crypto/tls
    }
    let functions = ranges
        .iter()
        .map(|r| handshake_probe_points(&file, r))
        .collect::<Result<Vec<_>>>()?;
    let version = buildinfo.and_then(|s| s.data().ok()).and_then(go_version);
    Ok(Some(GoTls {
        library: format!(
            "Go crypto/tls ({}, {})",
            version.as_deref().unwrap_or("Go version unknown"),
            exe.shown_as.display()
        ),
        path: exe.path.clone(),
        functions,
        found_in,
    }))
}

/// Where Go's code starts, for a `.gopclntab` whose own text start is zero in the file (a
/// position-independent executable, where a relocation fills it at load time): that
/// relocation's addend, else the `.text` section.
fn text_start(file: &object::File, pclntab_addr: u64) -> u64 {
    // pcHeader.textStart is the header's fourth 8-byte word (Go 1.18+).
    let field = pclntab_addr + 24;
    let relocated = file.dynamic_relocations().and_then(|mut relocations| {
        relocations
            .find(|(offset, _)| *offset == field)
            .and_then(|(_, r)| u64::try_from(r.addend()).ok())
    });
    relocated.unwrap_or_else(|| file.section_by_name(".text").map_or(0, |s| s.address()))
}

/// A function's entry and RET instructions as file offsets.
fn locate(file: &object::File, range: &gopclntab::FuncRange) -> Result<GoFunction> {
    let section = file
        .sections()
        .filter(|s| s.kind() == SectionKind::Text)
        .find(|s| s.address() <= range.entry && range.entry < s.address().saturating_add(s.size()))
        .with_context(|| format!("{} is in no code section", range.name))?;
    let (file_start, _) = section
        .file_range()
        .with_context(|| format!("{}'s section has no file data", range.name))?;
    let data = section.data()?;
    let start = (range.entry - section.address()) as usize;
    let end = (range.end.saturating_sub(section.address()) as usize).min(data.len());
    if start >= end {
        bail!("{} has no code", range.name);
    }
    let returns = ret_offsets(&data[start..end]);
    if returns.is_empty() {
        bail!("no RET instruction found in {}", range.name);
    }
    let entry = file_start + start as u64;
    Ok(GoFunction {
        name: range.name.clone(),
        entry,
        returns: returns.into_iter().map(|off| entry + off).collect(),
    })
}

/// Where a handshake function's probes go: its entry probe on the stack check's conditional
/// jump, which the kernel emulates (a tenth of the cost of the first instruction, and r14
/// still holds g there), and one on each RET (single-stepped: 7 µs a hit here, once per
/// handshake; no instruction the kernel emulates marks a return).
fn handshake_probe_points(file: &object::File, range: &gopclntab::FuncRange) -> Result<GoFunction> {
    let function = locate(file, range)?;
    let memory = runtime::memory::Memory::new(file);
    let len = range.end.saturating_sub(range.entry).min(48);
    let code = memory
        .bytes(range.entry, len)
        .with_context(|| format!("{}'s code is not in the file", range.name))?;
    let jump = runtime::probe_point::stack_check_jump(code)
        .map_err(|found| anyhow::anyhow!("{} has no stack check: found {found}", range.name))?;
    Ok(GoFunction {
        entry: function.entry + jump,
        ..function
    })
}

/// Offsets of the RET instructions in a function's code (decoded from its start, so only
/// instruction boundaries count; Go puts no data inside functions).
pub fn ret_offsets(code: &[u8]) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut offsets = Vec::new();
    for instruction in &mut decoder {
        if instruction.mnemonic() == Mnemonic::Ret {
            offsets.push(instruction.ip());
        }
    }
    offsets
}

/// The Go version recorded in `.go.buildinfo` (Go 1.18+, which stores it inline): a 14-byte
/// magic, pointer size, flags (bit 1: inline strings), then at offset 32 a varint length and
/// the version string (`src/debug/buildinfo/buildinfo.go`).
pub fn go_version(buildinfo: &[u8]) -> Option<String> {
    if !buildinfo.starts_with(b"\xff Go buildinf:") || buildinfo.get(15)? & 2 == 0 {
        return None;
    }
    let (len, used) = uvarint(buildinfo.get(32..)?)?;
    let start = 32 + used;
    let bytes = buildinfo.get(start..start.checked_add(usize::try_from(len).ok()?)?)?;
    String::from_utf8(bytes.to_vec()).ok()
}

fn uvarint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ret_instructions_are_found_on_instruction_boundaries() {
        let code = [
            0x55, // push rbp
            0x48, 0xc7, 0xc0, 0xc3, 0x00, 0x00,
            0x00, // mov rax, 0xc3 (a 0xc3 byte, not a RET)
            0xc3, // ret
            0x90, // nop
            0xc2, 0x08, 0x00, // ret 8
            0xcc, // int3 padding
        ];
        assert_eq!(ret_offsets(&code), vec![8, 10]);
    }

    #[test]
    fn the_go_version_is_read_from_buildinfo() {
        let mut info = b"\xff Go buildinf:".to_vec();
        info.extend_from_slice(&[8, 2]);
        info.resize(32, 0);
        info.push(8);
        info.extend_from_slice(b"go1.19.8");
        info.push(0x10);
        assert_eq!(go_version(&info).as_deref(), Some("go1.19.8"));
        info[15] = 0; // pre-1.18: pointers into the data, not read
        assert_eq!(go_version(&info), None);
        assert_eq!(go_version(b"not buildinfo"), None);
    }

    #[test]
    fn a_non_go_executable_is_not_go() {
        let me = Executable::from_file(std::env::current_exe().unwrap());
        assert!(find_go_tls(&me).unwrap().is_none());
    }
}
