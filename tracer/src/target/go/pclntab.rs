//! Function lookup in a Go binary's `.gopclntab` (the runtime's own function table), for Go
//! binaries stripped of their ELF symbol table (`-ldflags=-s -w`), which keep it because the
//! runtime needs it for stack traces: functions by name ([`find_functions`]), and a PC's
//! function, file:line and inlined calls ([`Pclntab::frames`]).
//!
//! Layouts from the Go sources (`src/runtime/symtab.go`, `pcHeader` and `_func`): Go 1.16–1.17
//! (magic 0xfffffffa) and Go 1.18 onwards (0xfffffff0; 0xfffffff1 since Go 1.20, same layout
//! for what is read here). Only 64-bit little-endian tables are read.

use anyhow::{bail, ensure, Context as _, Result};

const MAGIC_GO116: u32 = 0xffff_fffa;
const MAGIC_GO118: u32 = 0xffff_fff0;
const MAGIC_GO120: u32 = 0xffff_fff1;

/// A function's code range: `[entry, end)`, virtual addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuncRange {
    pub name: String,
    pub entry: u64,
    pub end: u64,
}

/// Find `names` in the table. `text_addr` is the `.text` section's address, used when the
/// table's own text start is zero (a position-independent executable). Names not found are
/// left out.
pub fn find_functions(table: &[u8], text_addr: u64, names: &[&str]) -> Result<Vec<FuncRange>> {
    let r = Reader(table);
    let magic = r.u32(0)?;
    ensure!(r.u8(7)? == 8, "only 64-bit Go binaries are supported");
    let go118 = match magic {
        MAGIC_GO118 | MAGIC_GO120 => true,
        MAGIC_GO116 => false,
        _ => bail!("unknown .gopclntab magic {magic:#x} (Go older than 1.16?)"),
    };
    let nfunc = r.u64(8)? as usize;
    // Header words after nfunc and nfiles: [textStart,] funcnameOffset, cuOffset,
    // filetabOffset, pctabOffset, pclnOffset.
    let (text_start, words) = if go118 {
        let start = r.u64(24)?;
        (if start == 0 { text_addr } else { start }, 32)
    } else {
        (0, 24)
    };
    let funcname_off = r.u64(words)? as usize;
    let functab_off = r.u64(words + 32)? as usize;
    ensure!(
        funcname_off < table.len() && functab_off < table.len(),
        ".gopclntab header points outside the table"
    );
    // Go 1.18+: entries are {entryoff u32, funcoff u32}; before, {entry u64, funcoff u64}.
    let entry_size = if go118 { 8 } else { 16 };
    let entry_at = |i: usize| -> Result<(u64, usize)> {
        let at = functab_off.saturating_add(i * entry_size);
        Ok(if go118 {
            (
                text_start.saturating_add(r.u32(at)? as u64),
                r.u32(at + 4)? as usize,
            )
        } else {
            (r.u64(at)?, r.u64(at + 8)? as usize)
        })
    };
    let mut found = Vec::new();
    for i in 0..nfunc {
        let (entry, func_off) = entry_at(i)?;
        // `_func`: the entry (u32 offset or u64 address), then the name's offset (i32).
        let name_field = functab_off
            .saturating_add(func_off)
            .saturating_add(if go118 { 4 } else { 8 });
        let name_off = r.u32(name_field)? as i32;
        let name = r.c_str(funcname_off.saturating_add(name_off.max(0) as usize))?;
        if names.contains(&name) {
            let (end, _) = entry_at(i + 1)?;
            ensure!(end > entry, "{name} ends before it starts in .gopclntab");
            found.push(FuncRange {
                name: name.to_string(),
                entry,
                end,
            });
        }
    }
    Ok(found)
}

/// Which `_func` and `inlinedCall` layout the table uses, from its magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Go 1.16–1.17: `_func.entry` is an address; funcdata are pointers.
    Go116,
    /// Go 1.18–1.19: entries are offsets from the text start; funcdata are offsets from
    /// `moduledata.gofunc`; 20-byte `inlinedCall` with `parent`, `file`, `line`.
    Go118,
    /// Go 1.20 onwards: `_func.startLine`; 16-byte `inlinedCall`.
    Go120,
}

/// `_PCDATA_InlTreeIndex` and `_FUNCDATA_InlTree` (`src/internal/abi/symtab.go`, unchanged
/// since Go 1.12).
const PCDATA_INL_TREE_INDEX: u32 = 2;
const FUNCDATA_INL_TREE: u32 = 3;

/// A parsed `.gopclntab`: map a PC to its function, file:line and inlined calls, the way the
/// runtime's own tracebacks do (`src/runtime/symtab.go` `findfunc`, `pcvalue`, `funcline1`;
/// `src/runtime/symtabinl.go` for inlining).
pub struct Pclntab<'a> {
    r: Reader<'a>,
    layout: Layout,
    /// `pcHeader.minLC`: the PC quantum of the pc-value tables (1 on x86-64).
    quantum: u64,
    nfunc: usize,
    text_start: u64,
    funcname_off: usize,
    cu_off: usize,
    filetab_off: usize,
    pctab_off: usize,
    functab_off: usize,
}

/// A function of the table: its index in `functab`, entry address and `_func` offset.
#[derive(Clone, Copy, Debug)]
pub struct Func {
    pub entry: u64,
    /// Where its `_func` is in the table.
    off: usize,
}

/// One source-level frame at a PC, innermost first in [`Pclntab::frames`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoFrame<'a> {
    pub function: &'a str,
    pub file: Option<&'a str>,
    pub line: Option<u32>,
    /// Inlined into the next frame (the function that physically holds the PC, last, is
    /// not).
    pub inlined: bool,
}

impl<'a> Pclntab<'a> {
    /// `text_addr` is used when the header's text start is zero (position-independent
    /// executables, and Go 1.26+, which no longer stores it).
    pub fn parse(table: &'a [u8], text_addr: u64) -> Result<Self> {
        let r = Reader(table);
        let layout = match r.u32(0)? {
            MAGIC_GO116 => Layout::Go116,
            MAGIC_GO118 => Layout::Go118,
            MAGIC_GO120 => Layout::Go120,
            magic => bail!("unknown .gopclntab magic {magic:#x} (Go older than 1.16?)"),
        };
        ensure!(r.u8(7)? == 8, "only 64-bit Go binaries are supported");
        let quantum = u64::from(r.u8(6)?.max(1));
        let nfunc = r.u64(8)? as usize;
        // After nfunc and nfiles: [textStart,] funcnameOffset, cuOffset, filetabOffset,
        // pctabOffset, pclnOffset.
        let (text_start, words) = match layout {
            Layout::Go116 => (0, 24),
            _ => {
                let start = r.u64(24)?;
                (if start == 0 { text_addr } else { start }, 32)
            }
        };
        let word = |i: usize| -> Result<usize> {
            let off = r.u64(words + 8 * i)? as usize;
            ensure!(
                off < table.len(),
                ".gopclntab header points outside the table"
            );
            Ok(off)
        };
        Ok(Pclntab {
            r,
            layout,
            quantum,
            nfunc,
            text_start,
            funcname_off: word(0)?,
            cu_off: word(1)?,
            filetab_off: word(2)?,
            pctab_off: word(3)?,
            functab_off: word(4)?,
        })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn nfunc(&self) -> usize {
        self.nfunc
    }

    /// Where function code starts (function entries are offsets from it since Go 1.18).
    pub fn text_start(&self) -> u64 {
        self.text_start
    }

    /// Where the function names are, from the table's start (`moduledata.funcnametab`).
    pub fn funcname_offset(&self) -> usize {
        self.funcname_off
    }

    /// Entry `i` of `functab` (`i == nfunc` is the end of the last function).
    fn functab(&self, i: usize) -> Result<Func> {
        let at = self
            .functab_off
            .saturating_add(i.saturating_mul(self.functab_entry_size()));
        Ok(match self.layout {
            Layout::Go116 => Func {
                entry: self.r.u64(at)?,
                off: self
                    .functab_off
                    .saturating_add(self.r.u64(at + 8)? as usize),
            },
            _ => Func {
                entry: self.text_start.saturating_add(u64::from(self.r.u32(at)?)),
                off: self
                    .functab_off
                    .saturating_add(self.r.u32(at + 4)? as usize),
            },
        })
    }

    fn functab_entry_size(&self) -> usize {
        match self.layout {
            Layout::Go116 => 16,
            _ => 8,
        }
    }

    /// The function whose code holds `pc`, and where it ends.
    pub fn find_func(&self, pc: u64) -> Option<(Func, u64)> {
        if self.nfunc == 0 {
            return None;
        }
        let first = self.functab(0).ok()?;
        let end = self.functab(self.nfunc).ok()?.entry;
        if pc < first.entry || pc >= end {
            return None;
        }
        // The last entry whose start is <= pc.
        let (mut lo, mut hi) = (0, self.nfunc);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.functab(mid).ok()?.entry <= pc {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let func = self.functab(lo).ok()?;
        let end = self.functab(lo + 1).ok()?.entry;
        Some((func, end))
    }

    /// Iterate over every function (for tests and measurements).
    pub fn funcs(&self) -> impl Iterator<Item = Func> + '_ {
        (0..self.nfunc).filter_map(|i| self.functab(i).ok())
    }

    /// The function's name.
    pub fn func_name(&self, func: Func) -> Result<&'a str> {
        let name_off = self.r.u32(func.off + self.entry_field_size())? as i32;
        self.name(name_off)
    }

    fn name(&self, name_off: i32) -> Result<&'a str> {
        ensure!(name_off >= 0, "negative name offset in .gopclntab");
        self.r
            .c_str(self.funcname_off.saturating_add(name_off as usize))
    }

    /// `_func.entryOff` (u32) or `_func.entry` (u64, Go 1.16–1.17).
    fn entry_field_size(&self) -> usize {
        match self.layout {
            Layout::Go116 => 8,
            _ => 4,
        }
    }

    /// A `u32` field of `_func` after the entry and the name: `args` is 0, `deferreturn` 1,
    /// `pcsp` 2, `pcfile` 3, `pcln` 4, `npcdata` 5, `cuOffset` 6.
    fn field(&self, func: Func, index: usize) -> Result<u32> {
        self.r
            .u32(func.off + self.entry_field_size() + 4 + 4 * index)
    }

    /// The size of `_func` without its trailing pcdata and funcdata arrays; `nfuncdata` is its
    /// last byte.
    fn func_size(&self) -> usize {
        match self.layout {
            Layout::Go116 => 44,
            Layout::Go118 => 40,
            Layout::Go120 => 44,
        }
    }

    /// Evaluate the pc-value table at `table` (an offset into `pctab`, 0 for none) at
    /// `target` (`runtime.pcvalue` and `step`): values start at -1 at the entry; each step
    /// adds a zig-zag value delta and advances the PC by a delta times the quantum.
    fn pcvalue(&self, func: Func, table: u32, target: u64) -> Option<i32> {
        if table == 0 {
            return None;
        }
        let mut at = self.pctab_off.checked_add(table as usize)?;
        let mut pc = func.entry;
        let mut val: i32 = -1;
        let mut first = true;
        loop {
            let (uvdelta, n) = self.r.uvarint(at).ok()?;
            if uvdelta == 0 && !first {
                return None;
            }
            first = false;
            at += n;
            let uvdelta = uvdelta as u32;
            val = val.wrapping_add((-((uvdelta & 1) as i32)) ^ ((uvdelta >> 1) as i32));
            let (pcdelta, n) = self.r.uvarint(at).ok()?;
            at += n;
            pc = pc.checked_add(pcdelta.checked_mul(self.quantum)?)?;
            if target < pc {
                return Some(val);
            }
        }
    }

    /// The file and line of `pc` in `func` (`funcline1`).
    fn file_line(&self, func: Func, pc: u64) -> (Option<&'a str>, Option<u32>) {
        let file = self
            .field(func, 3)
            .ok()
            .and_then(|table| self.pcvalue(func, table, pc))
            .and_then(|fileno| self.file_name(func, fileno));
        let line = self
            .field(func, 4)
            .ok()
            .and_then(|table| self.pcvalue(func, table, pc))
            .and_then(|line| u32::try_from(line).ok());
        (file, line)
    }

    /// `funcfile`: the file numbered `fileno` in the function's compilation unit.
    fn file_name(&self, func: Func, fileno: i32) -> Option<&'a str> {
        let fileno = u32::try_from(fileno).ok()?;
        let cu = self.field(func, 6).ok()?;
        let entry = self
            .cu_off
            .checked_add(4 * (cu.checked_add(fileno)? as usize))?;
        let file_off = self.r.u32(entry).ok()?;
        if file_off == u32::MAX {
            return None;
        }
        self.r
            .c_str(self.filetab_off.checked_add(file_off as usize)?)
            .ok()
    }

    /// `pcdata[index]`: the offset of that pc-value table, if the function has one.
    fn pcdata(&self, func: Func, index: u32) -> Option<u32> {
        let npcdata = self.field(func, 5).ok()?;
        if index >= npcdata {
            return None;
        }
        self.r
            .u32(func.off + self.func_size() + 4 * index as usize)
            .ok()
            .filter(|off| *off != 0)
    }

    /// Where funcdata `index` is: an offset from `moduledata.gofunc` (Go 1.18+) or an address
    /// (Go 1.16–1.17).
    fn funcdata(&self, func: Func, index: u32) -> Option<FuncData> {
        let npcdata = self.field(func, 5).ok()? as usize;
        let nfuncdata = self.r.u8(func.off + self.func_size() - 1).ok()?;
        if index >= u32::from(nfuncdata) {
            return None;
        }
        let start = func.off + self.func_size() + 4 * npcdata;
        match self.layout {
            Layout::Go116 => {
                // An array of pointers, 8-aligned in memory (the table itself is).
                let start = start.next_multiple_of(8);
                let ptr = self.r.u64(start + 8 * index as usize).ok()?;
                (ptr != 0).then_some(FuncData::Address(ptr))
            }
            _ => {
                let off = self.r.u32(start + 4 * index as usize).ok()?;
                (off != u32::MAX).then_some(FuncData::GoFuncOffset(off))
            }
        }
    }

    /// The frames at `pc`, innermost first: the inlined calls that `pc` is in (from the
    /// function's inline tree, when `memory` can read it), then the function itself.
    /// `None` when no function holds `pc`.
    ///
    /// As in the runtime's `inlineUnwinder`: the inline tree index at `pc` names the
    /// innermost inlined call, whose position is `pc`'s own file:line; its `parentPc`
    /// is an instruction whose position is the call site in the caller, where the tree
    /// index gives the caller's own index (or -1: the outer function).
    pub fn frames(&self, pc: u64, memory: &dyn GoMemory) -> Option<Vec<GoFrame<'a>>> {
        let (func, _) = self.find_func(pc)?;
        let outer = self.func_name(func).ok()?;
        let mut frames = Vec::new();
        let inline = self.pcdata(func, PCDATA_INL_TREE_INDEX).and_then(|table| {
            let tree = match self.funcdata(func, FUNCDATA_INL_TREE)? {
                FuncData::Address(addr) => addr,
                FuncData::GoFuncOffset(off) => memory.gofunc()?.checked_add(u64::from(off))?,
            };
            Some((table, tree))
        });
        let mut pc = pc;
        if let Some((table, tree)) = inline {
            let (size, name_at, parent_pc_at) = match self.layout {
                Layout::Go120 => (16, 4, 8),
                _ => (20, 12, 16),
            };
            // A bound on the depth, against a corrupt table that loops.
            for _ in 0..64 {
                let Some(ix) = self.pcvalue(func, table, pc).filter(|ix| *ix >= 0) else {
                    break;
                };
                let Some(call) = memory.read(tree + size * ix as u64, size) else {
                    break;
                };
                let word = |at: usize| i32::from_le_bytes(call[at..at + 4].try_into().unwrap());
                let (file, line) = self.file_line(func, pc);
                frames.push(GoFrame {
                    function: self.name(word(name_at)).unwrap_or("?"),
                    file,
                    line,
                    inlined: true,
                });
                pc = func
                    .entry
                    .saturating_add_signed(i64::from(word(parent_pc_at)));
            }
        }
        let (file, line) = self.file_line(func, pc);
        frames.push(GoFrame {
            function: outer,
            file,
            line,
            inlined: false,
        });
        Some(frames)
    }
}

enum FuncData {
    Address(u64),
    GoFuncOffset(u32),
}

/// The executable's memory beyond `.gopclntab`, where the inline trees are.
pub trait GoMemory {
    /// `moduledata.gofunc` (Go 1.18+), the base of funcdata offsets.
    fn gofunc(&self) -> Option<u64>;
    /// `len` bytes at virtual address `addr`.
    fn read(&self, addr: u64, len: u64) -> Option<&[u8]>;
}

/// No memory: frames without inlined calls.
pub struct NoMemory;

impl GoMemory for NoMemory {
    fn gofunc(&self) -> Option<u64> {
        None
    }

    fn read(&self, _: u64, _: u64) -> Option<&[u8]> {
        None
    }
}

#[derive(Clone, Copy)]
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes<const N: usize>(&self, at: usize) -> Result<[u8; N]> {
        let slice = self
            .0
            .get(at..at.saturating_add(N))
            .context(".gopclntab is truncated")?;
        Ok(slice.try_into().expect("N bytes"))
    }

    fn u8(&self, at: usize) -> Result<u8> {
        Ok(self.bytes::<1>(at)?[0])
    }

    fn u32(&self, at: usize) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(at)?))
    }

    fn u64(&self, at: usize) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(at)?))
    }

    /// An unsigned LEB128 varint and its length (`readvarint`).
    fn uvarint(&self, at: usize) -> Result<(u64, usize)> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.u8(at + i)?;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((value, i + 1));
            }
        }
        bail!("varint too long in .gopclntab")
    }

    fn c_str(&self, at: usize) -> Result<&'a str> {
        let rest = self.0.get(at..).context(".gopclntab is truncated")?;
        let len = rest
            .iter()
            .position(|b| *b == 0)
            .context("unterminated function name in .gopclntab")?;
        std::str::from_utf8(&rest[..len]).context("function name is not UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Go 1.18-layout table with `funcs` (name, entry offset from text start) and the end of
    /// the last function.
    fn table_go118(text_start: u64, funcs: &[(&str, u32)], end: u32) -> Vec<u8> {
        let mut names = Vec::new();
        let mut name_offs = Vec::new();
        for (name, _) in funcs {
            name_offs.push(names.len() as u32);
            names.extend_from_slice(name.as_bytes());
            names.push(0);
        }
        let header_len = 72;
        let funcname_off = header_len;
        let functab_off = funcname_off + names.len();
        let functab_len = (funcs.len() + 1) * 8;
        let mut t = Vec::new();
        t.extend_from_slice(&MAGIC_GO118.to_le_bytes());
        t.extend_from_slice(&[0, 0, 1, 8]);
        t.extend_from_slice(&(funcs.len() as u64).to_le_bytes());
        t.extend_from_slice(&0u64.to_le_bytes()); // nfiles
        t.extend_from_slice(&text_start.to_le_bytes());
        for off in [funcname_off, 0, 0, 0, functab_off] {
            t.extend_from_slice(&(off as u64).to_le_bytes());
        }
        assert_eq!(t.len(), header_len);
        t.extend_from_slice(&names);
        for (i, (_, entry)) in funcs.iter().enumerate() {
            let func_off = functab_len + i * 8;
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&(func_off as u32).to_le_bytes());
        }
        t.extend_from_slice(&end.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        for ((_, entry), name_off) in funcs.iter().zip(&name_offs) {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&name_off.to_le_bytes());
        }
        t
    }

    const FUNCS: &[(&str, u32)] = &[
        ("runtime.main", 0x0),
        ("crypto/tls.(*Conn).serverHandshake", 0x100),
        ("crypto/tls.(*Conn).serverHandshake-fm", 0x2c0),
        ("main.main", 0x300),
    ];

    #[test]
    fn functions_are_found_with_their_ranges() {
        let table = table_go118(0x401000, FUNCS, 0x380);
        let found = find_functions(
            &table,
            0x999000,
            &["crypto/tls.(*Conn).serverHandshake", "main.main", "absent"],
        )
        .unwrap();
        assert_eq!(
            found,
            vec![
                FuncRange {
                    name: "crypto/tls.(*Conn).serverHandshake".into(),
                    entry: 0x401100,
                    end: 0x4012c0,
                },
                FuncRange {
                    name: "main.main".into(),
                    entry: 0x401300,
                    end: 0x401380,
                },
            ]
        );
    }

    #[test]
    fn a_zero_text_start_falls_back_to_the_text_section() {
        let table = table_go118(0, FUNCS, 0x380);
        let found = find_functions(&table, 0x1000, &["main.main"]).unwrap();
        assert_eq!(found[0].entry, 0x1300);
    }

    /// A Go 1.20-layout table of one function at 0x1000..0x1030, `main.outer` (a.go), with
    /// `sync.inner` (b.go) inlined at 0x1010..0x1020 from the call at a.go:11 (the position of
    /// 0x1020): pc-value tables, the CU's file table and an inline tree in the funcdata.
    fn table_go120_inlined() -> Vec<u8> {
        let names = b"main.outer\0sync.inner\0";
        let files = b"a.go\0b.go\0";
        let cutab: Vec<u8> = [0u32, 5].iter().flat_map(|v| v.to_le_bytes()).collect();
        // Offset 0 means "no table": start with a zero byte.
        let mut pctab = vec![0u8];
        let mut table = |bytes: &[u8]| {
            let at = pctab.len() as u32;
            pctab.extend_from_slice(bytes);
            at
        };
        // Each step: zig-zag value delta (from -1), then a PC delta; a zero value delta ends.
        let pcfile = table(&[2, 0x10, 2, 0x10, 1, 0x10, 0]); // files 0, 1, 0
        let pcln = table(&[22, 0x10, 20, 0x10, 17, 0x10, 0]); // lines 10, 20, 11
        let inl = table(&[0, 0x10, 2, 0x10, 1, 0x10, 0]); // tree index -1, 0, -1
        let header_len = 72;
        let funcname_off = header_len;
        let cu_off = funcname_off + names.len();
        let filetab_off = cu_off + cutab.len();
        let pctab_off = filetab_off + files.len();
        let functab_off = pctab_off + pctab.len();
        let mut t = Vec::new();
        t.extend_from_slice(&MAGIC_GO120.to_le_bytes());
        t.extend_from_slice(&[0, 0, 1, 8]);
        t.extend_from_slice(&1u64.to_le_bytes()); // nfunc
        t.extend_from_slice(&2u64.to_le_bytes()); // nfiles
        t.extend_from_slice(&0x1000u64.to_le_bytes()); // textStart
        for off in [funcname_off, cu_off, filetab_off, pctab_off, functab_off] {
            t.extend_from_slice(&(off as u64).to_le_bytes());
        }
        t.extend_from_slice(names);
        t.extend_from_slice(&cutab);
        t.extend_from_slice(files);
        t.extend_from_slice(&pctab);
        assert_eq!(t.len(), functab_off);
        // functab: {entryoff, funcoff}, then the end.
        for v in [0u32, 16, 0x30, 0] {
            t.extend_from_slice(&v.to_le_bytes());
        }
        // _func: entryOff, nameOff, args, deferreturn, pcsp, pcfile, pcln, npcdata, cuOffset,
        // startLine, then funcID, flag, pad, nfuncdata; pcdata[3]; funcdata[4].
        for v in [0u32, 0, 0, 0, 0, pcfile, pcln, 3, 0, 9] {
            t.extend_from_slice(&v.to_le_bytes());
        }
        t.extend_from_slice(&[0, 0, 0, 4]);
        for v in [0u32, 0, inl, u32::MAX, u32::MAX, u32::MAX, 0] {
            t.extend_from_slice(&v.to_le_bytes());
        }
        t
    }

    /// The inline tree at `moduledata.gofunc` = 0x9000: one `inlinedCall`, `sync.inner`
    /// called from the position of entry + 0x20.
    struct Tree(Vec<u8>);

    impl GoMemory for Tree {
        fn gofunc(&self) -> Option<u64> {
            Some(0x9000)
        }

        fn read(&self, addr: u64, len: u64) -> Option<&[u8]> {
            let at = addr.checked_sub(0x9000)? as usize;
            self.0.get(at..at + len as usize)
        }
    }

    #[test]
    fn pcs_map_to_lines_files_and_inlined_calls() {
        let data = table_go120_inlined();
        let table = Pclntab::parse(&data, 0).unwrap();
        let mut call = vec![0u8; 4];
        for v in [11i32, 0x20, 1] {
            call.extend_from_slice(&v.to_le_bytes());
        }
        let tree = Tree(call);
        let frame = |function, file, line, inlined| GoFrame {
            function,
            file: Some(file),
            line: Some(line),
            inlined,
        };
        assert_eq!(
            table.frames(0x1005, &tree).unwrap(),
            [frame("main.outer", "a.go", 10, false)]
        );
        assert_eq!(
            table.frames(0x1015, &tree).unwrap(),
            [
                frame("sync.inner", "b.go", 20, true),
                frame("main.outer", "a.go", 11, false)
            ]
        );
        assert_eq!(
            table.frames(0x102f, &tree).unwrap(),
            [frame("main.outer", "a.go", 11, false)]
        );
        // Without the tree's memory, the inlined code is the outer function's.
        assert_eq!(
            table.frames(0x1015, &NoMemory).unwrap(),
            [frame("main.outer", "b.go", 20, false)]
        );
        assert_eq!(table.frames(0x1030, &tree), None);
        assert_eq!(table.frames(0xfff, &tree), None);
    }

    #[test]
    fn bad_tables_are_errors_not_panics() {
        let table = table_go118(0x401000, FUNCS, 0x380);
        assert!(find_functions(&table[..40], 0, &["main.main"]).is_err());
        let mut wrong_magic = table.clone();
        wrong_magic[0] = 0xfb;
        assert!(find_functions(&wrong_magic, 0, &["main.main"]).is_err());
        let mut bad_offset = table;
        bad_offset[64..72].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(find_functions(&bad_offset, 0, &["main.main"]).is_err());
    }
}
