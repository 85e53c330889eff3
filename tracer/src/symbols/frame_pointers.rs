//! Whether a module keeps frame pointers, which is what lets the kernel walk a user stack
//! (`bpf_get_stack` follows `%rbp`): a stack that passes through code built without them
//! stops early, or goes astray. Go on x86-64 always keeps them; for other code the answer is
//! read from the function prologues the symbol table points at.

use std::path::Path;

use anyhow::{Context as _, Result};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};

use crate::target::go::go_sections;

/// `endbr64`, which CET-enabled code puts first.
const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
/// `push %rbp`, then `mov %rsp,%rbp` in either encoding.
const PUSH_RBP: u8 = 0x55;
const MOV_RSP_RBP: [[u8; 3]; 2] = [[0x48, 0x89, 0xe5], [0x48, 0x8b, 0xec]];
/// Functions looked at, at most.
const SAMPLE: usize = 2_000;

/// Whether the ELF file at `path` keeps frame pointers: `Some(true)` for Go; else whether
/// most of its functions (in `.symtab`, else `.dynsym`) start by setting up `%rbp`.
/// `None` when it has no function symbols to judge by.
pub fn keeps_frame_pointers(path: &Path) -> Result<Option<bool>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file =
        object::File::parse(&*data).with_context(|| format!("parsing {}", path.display()))?;
    kept_in(&file)
}

/// [`keeps_frame_pointers`] of an ELF file already parsed.
pub fn kept_in(file: &object::File) -> Result<Option<bool>> {
    if go_sections(file)?.is_some() {
        return Ok(Some(true));
    }
    let functions: Vec<_> = if file.symbols().next().is_some() {
        file.symbols().collect()
    } else {
        file.dynamic_symbols().collect()
    };
    let (mut with, mut total) = (0, 0);
    for symbol in functions
        .iter()
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.size() >= 8)
        .take(SAMPLE)
    {
        let Some(code) = symbol
            .section_index()
            .and_then(|i| file.section_by_index(i).ok())
            .and_then(|section| {
                let data = section.data().ok()?;
                let at = symbol.address().checked_sub(section.address())? as usize;
                data.get(at..at + 8)
            })
        else {
            continue;
        };
        total += 1;
        let code = code.strip_prefix(&ENDBR64).unwrap_or(code);
        if code.first() == Some(&PUSH_RBP) && MOV_RSP_RBP.iter().any(|m| code[1..].starts_with(m)) {
            with += 1;
        }
    }
    Ok((total > 0).then_some(with * 2 > total))
}
