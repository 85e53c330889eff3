//! Go executables, symbolized from their own `.gopclntab` (which stripped binaries keep):
//! function names, file:line and inlined calls, as the Go runtime prints them in a panic.
//!
//! The inline trees are funcdata, in `.rodata`, at offsets from `moduledata.gofunc`
//! (Go 1.18+). Stripped binaries have no `go:func.*` symbol, so the module data is found by
//! its first field, the address of `.gopclntab`, and `gofunc` is read from it at its
//! offset for the Go release (`src/runtime/symtab.go`, `type moduledata`).

use std::{collections::HashMap, ops::Range, path::Path};

use anyhow::{Context as _, Result};
use object::{Object as _, ObjectSection as _, ObjectSegment as _, RelocationTarget};

use super::Frame;
use crate::target::go::{
    go_sections, go_version,
    pclntab::{GoMemory, Layout, Pclntab},
};

/// A Go executable's tables, read once.
pub struct GoExecutable {
    data: Vec<u8>,
    /// `.gopclntab` in `data`.
    pclntab: Range<usize>,
    text_start: u64,
    /// `moduledata.gofunc`, when found (Go 1.18+).
    gofunc: Option<u64>,
    /// Loadable segments: (virtual address, file offset, size in the file).
    segments: Vec<(u64, u64, u64)>,
    version: Option<String>,
}

impl GoExecutable {
    /// `Ok(None)` when the file is not a Go executable with a `.gopclntab` section.
    pub fn read(path: &Path) -> Result<Option<GoExecutable>> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_bytes(data)
    }

    pub fn from_bytes(data: Vec<u8>) -> Result<Option<GoExecutable>> {
        let file = object::File::parse(&*data).context("parsing the executable")?;
        let Some(sections) = go_sections(&file)? else {
            return Ok(None);
        };
        let Some(section) = sections.pclntab else {
            return Ok(None);
        };
        let Some((off, size)) = section.file_range() else {
            return Ok(None);
        };
        let pclntab = off as usize..(off + size) as usize;
        let version = sections
            .buildinfo
            .and_then(|s| s.data().ok())
            .and_then(go_version);
        let text_addr = file.section_by_name(".text").map_or(0, |s| s.address());
        let table = Pclntab::parse(
            data.get(pclntab.clone())
                .context(".gopclntab is truncated")?,
            text_addr,
        )?;
        let layout = table.layout();
        let funcname_addr = section.address() + table.funcname_offset() as u64;
        let segments = file
            .segments()
            .map(|s| {
                let (offset, size) = s.file_range();
                (s.address(), offset, size)
            })
            .collect();
        let mut exe = GoExecutable {
            text_start: table.text_start(),
            data: Vec::new(),
            pclntab,
            gofunc: None,
            segments,
            version,
        };
        if layout != Layout::Go116 {
            let relocated = relocated_pointers(&file);
            exe.gofunc = find_gofunc(
                &file,
                &data,
                &relocated,
                section.address(),
                funcname_addr,
                exe.version.as_deref(),
            );
        }
        drop(file);
        exe.data = data;
        Ok(Some(exe))
    }

    /// Loadable segments: (virtual address, file offset, size in the file).
    pub fn segments(&self) -> &[(u64, u64, u64)] {
        &self.segments
    }

    /// The Go version in `.go.buildinfo`, when there.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// Whether inlined calls can be expanded (the inline trees were found).
    pub fn has_inline_trees(&self) -> bool {
        self.gofunc.is_some() || self.table().is_ok_and(|t| t.layout() == Layout::Go116)
    }

    fn table(&self) -> Result<Pclntab<'_>> {
        Pclntab::parse(&self.data[self.pclntab.clone()], self.text_start)
    }

    /// The frames at virtual address `pc` (as linked), innermost first; `None` when no Go
    /// function holds it.
    pub fn frames(&self, pc: u64) -> Option<Vec<Frame>> {
        let table = self.table().ok()?;
        let frames = table.frames(pc, self)?;
        Some(
            frames
                .into_iter()
                .map(|f| Frame {
                    function: f.function.to_string(),
                    file: f.file.map(str::to_string),
                    line: f.line,
                    inlined: f.inlined,
                })
                .collect(),
        )
    }

    /// Every function's (name, entry, end), for tests and measurements.
    pub fn functions(&self) -> Vec<(String, u64, u64)> {
        let Ok(table) = self.table() else {
            return Vec::new();
        };
        table
            .funcs()
            .filter_map(|f| {
                let (_, end) = table.find_func(f.entry)?;
                Some((table.func_name(f).ok()?.to_string(), f.entry, end))
            })
            .collect()
    }
}

impl GoMemory for GoExecutable {
    fn gofunc(&self) -> Option<u64> {
        self.gofunc
    }

    fn read(&self, addr: u64, len: u64) -> Option<&[u8]> {
        read_at(&self.data, &self.segments, addr, len)
    }
}

fn read_at<'d>(
    data: &'d [u8],
    segments: &[(u64, u64, u64)],
    addr: u64,
    len: u64,
) -> Option<&'d [u8]> {
    let (vaddr, offset, _) = segments
        .iter()
        .find(|(vaddr, _, size)| *vaddr <= addr && addr.saturating_add(len) <= vaddr + size)?;
    let start = (offset + (addr - vaddr)) as usize;
    data.get(start..start.checked_add(len as usize)?)
}

/// Pointers the dynamic loader writes (position-independent executables): address → value.
fn relocated_pointers(file: &object::File) -> HashMap<u64, u64> {
    file.dynamic_relocations()
        .into_iter()
        .flatten()
        .filter(|(_, r)| matches!(r.target(), RelocationTarget::Absolute))
        .filter_map(|(address, r)| Some((address, u64::try_from(r.addend()).ok()?)))
        .collect()
}

/// The index of `gofunc` among the 8-byte words of `moduledata`, by Go release: after
/// `pcHeader`, six slices and 12 words in Go 1.18–1.19 (38); `covctrs, ecovctrs` from 1.20
/// (40); `typedesclen, itaboffset, itabsize` from 1.27 (43).
fn gofunc_word(version: Option<&str>) -> Vec<usize> {
    let minor = version
        .and_then(|v| v.strip_prefix("go1."))
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse::<u32>().ok());
    match minor {
        Some(18 | 19) => vec![38],
        Some(20..=26) => vec![40],
        Some(27..) => vec![43],
        // Unknown: each layout, newest first; the word before `gofunc` must be `rodata`.
        _ => vec![43, 40, 38],
    }
}

/// Find `runtime.firstmoduledata` by its first two fields (`pcHeader`, the address of
/// `.gopclntab`, and `funcnametab`'s data pointer) and read its `gofunc`, checked to be in
/// `.rodata`, `.go.func` or `.gopclntab` (and, when the Go version is unknown, the word before it,
/// `rodata`, to be the start of `.rodata`).
fn find_gofunc(
    file: &object::File,
    data: &[u8],
    relocated: &HashMap<u64, u64>,
    pclntab_addr: u64,
    funcname_addr: u64,
    version: Option<&str>,
) -> Option<u64> {
    let segments: Vec<(u64, u64, u64)> = file
        .segments()
        .map(|s| {
            let (offset, size) = s.file_range();
            (s.address(), offset, size)
        })
        .collect();
    let word = |addr: u64| -> Option<u64> {
        if let Some(v) = relocated.get(&addr) {
            return Some(*v);
        }
        let bytes = read_at(data, &segments, addr, 8)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    };
    let range = |name: &str| {
        file.section_by_name(name)
            .map(|s| s.address()..s.address() + s.size())
    };
    let rodata_range = range(".rodata")?;
    // Where funcdata live: `.rodata` until Go 1.26; Go 1.27 has them in `.gopclntab` (and
    // the module data in `.go.module`).
    let gofunc_ranges: Vec<Range<u64>> = [
        ".rodata",
        ".go.func",
        ".gopclntab",
        ".data.rel.ro.gopclntab",
    ]
    .iter()
    .filter_map(|name| range(name))
    .collect();
    let candidates = gofunc_word(version);
    let checks_rodata_start = candidates.len() > 1;
    for name in [".go.module", ".noptrdata", ".data", ".data.rel.ro"] {
        let Some(section) = file.section_by_name(name) else {
            continue;
        };
        let start = section.address().next_multiple_of(8);
        let end = section.address() + section.size();
        let mut addr = start;
        while addr + 16 <= end {
            if word(addr) == Some(pclntab_addr) && word(addr + 8) == Some(funcname_addr) {
                for &i in &candidates {
                    let Some(gofunc) = word(addr + 8 * i as u64) else {
                        continue;
                    };
                    let before = word(addr + 8 * (i as u64 - 1));
                    if gofunc_ranges.iter().any(|r| r.contains(&gofunc))
                        && (!checks_rodata_start || before == Some(rodata_range.start))
                    {
                        return Some(gofunc);
                    }
                }
                return None;
            }
            addr += 8;
        }
    }
    None
}
