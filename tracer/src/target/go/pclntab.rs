//! Function lookup in a Go binary's `.gopclntab` (the runtime's own function table), for Go
//! binaries stripped of their ELF symbol table (`-ldflags=-s -w`), which keep it because the
//! runtime needs it for stack traces.
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

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
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

    fn c_str(&self, at: usize) -> Result<&str> {
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
