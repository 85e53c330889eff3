//! Go's wait-reason strings, read from the executable's `runtime.waitReasonStrings`.
//!
//! `gopark`'s `reason` is a `waitReason` (a uint8) that indexes
//! `var waitReasonStrings = [...]string{waitReasonZero: "", waitReasonGCAssistMarking: ...}`
//! (`src/runtime/runtime2.go`): an array of Go string headers (pointer, length) in `.data`
//! whose bytes are in `.rodata`. Its numbering changes between releases (Go 1.20 inserted
//! the sync.Mutex reasons, Go 1.26 reordered the list), so it is read from the binary:
//! - by its symbol, when the binary has a symbol table;
//! - else by decoding `func (w waitReason) String() string`, which `.gopclntab` names
//!   even in stripped binaries. Go 1.19.8 to 1.27.3 compile it to a bounds check against
//!   the array's length, then a RIP-relative LEA of the array, indexed by the reason:
//!   ```text
//!   CMPB AL, $len; JCS ok; LEAQ "unknown wait reason", AX; ...; RET
//!   ok: MOVBLZX AL, CX; SHLQ $4, CX; LEAQ runtime.waitReasonStrings(SB), DX
//!   MOVQ (DX)(CX*1), AX; MOVQ 8(DX)(CX*1), BX; RET
//!   ```

use anyhow::{bail, ensure, Context as _, Result};
use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use object::{Object as _, ObjectSymbol as _};

use super::memory::Memory;
use crate::target::go::pclntab::FuncRange;

const ARRAY_SYMBOL: &str = "runtime.waitReasonStrings";
/// A Go string header: pointer and length.
const STRING_HEADER: u64 = 16;
/// Longer than any `waitReason.String` seen, with its int3 padding.
const METHOD_MAX_LEN: u64 = 256;

/// Where `runtime.waitReasonStrings` is, and how many strings it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Array {
    pub address: u64,
    pub len: u64,
}

/// The array by its symbol.
pub fn array_by_symbol(file: &object::File) -> Option<Array> {
    let symbol = file
        .symbols()
        .find(|s| s.is_definition() && s.name() == Ok(ARRAY_SYMBOL))?;
    Some(Array {
        address: symbol.address(),
        len: symbol.size() / STRING_HEADER,
    })
}

/// The array as `runtime.waitReason.String` (`method`) bounds-checks and loads it.
pub fn array_by_decoding(memory: &Memory, method: &FuncRange) -> Option<Array> {
    let len = method.end.saturating_sub(method.entry).min(METHOD_MAX_LEN);
    let code = memory.bytes(method.entry, len)?;
    let instructions: Vec<Instruction> =
        Decoder::with_ip(64, code, method.entry, DecoderOptions::NONE)
            .into_iter()
            .collect();
    let bound = instructions
        .iter()
        .find(|i| i.mnemonic() == Mnemonic::Cmp && is_immediate(i.op1_kind()))?
        .immediate(1);
    let address = instructions.iter().enumerate().find_map(|(at, i)| {
        let loads_address = i.mnemonic() == Mnemonic::Lea && i.is_ip_rel_memory_operand();
        let indexed_later = instructions[at + 1..]
            .iter()
            .any(|later| indexes(later, i.op0_register()));
        (loads_address && indexed_later).then(|| i.ip_rel_memory_address())
    })?;
    Some(Array {
        address,
        len: bound,
    })
}

fn is_immediate(kind: OpKind) -> bool {
    use OpKind::*;
    matches!(
        kind,
        Immediate8 | Immediate8to32 | Immediate8to64 | Immediate32 | Immediate32to64
    )
}

/// Whether `instruction` reads memory at `base` plus an index register.
fn indexes(instruction: &Instruction, base: Register) -> bool {
    instruction.mnemonic() == Mnemonic::Mov
        && instruction.op1_kind() == OpKind::Memory
        && instruction.memory_base() == base
        && instruction.memory_index() != Register::None
}

/// The array's strings. The first, `waitReasonZero`, is empty in every Go release: a check
/// that the array read is the right one.
pub fn read_array(memory: &Memory, array: Array) -> Result<Vec<String>> {
    ensure!(
        (1..=256).contains(&array.len),
        "{} strings, where a waitReason is a uint8",
        array.len
    );
    let strings = (0..array.len)
        .map(|i| {
            memory
                .go_string(array.address + i * STRING_HEADER)
                .map(str::to_string)
                .with_context(|| format!("string {i} at {:#x} is unreadable", array.address))
        })
        .collect::<Result<Vec<_>>>()?;
    ensure!(
        strings[0].is_empty(),
        "its first string is {:?}, where Go has \"\" (waitReasonZero)",
        strings[0]
    );
    Ok(strings)
}

/// Go's string for some `waitReason` constants, stable across releases (Go 1.17 to 1.27):
/// the ones the engine names, and enough to tell a misread array.
const KNOWN: [(&str, &str); 14] = [
    ("waitReasonZero", ""),
    ("waitReasonIOWait", "IO wait"),
    ("waitReasonChanReceive", "chan receive"),
    ("waitReasonChanSend", "chan send"),
    ("waitReasonSelect", "select"),
    ("waitReasonSleep", "sleep"),
    ("waitReasonSemacquire", "semacquire"),
    ("waitReasonSyncCondWait", "sync.Cond.Wait"),
    ("waitReasonSyncMutexLock", "sync.Mutex.Lock"),
    ("waitReasonSyncRWMutexRLock", "sync.RWMutex.RLock"),
    ("waitReasonSyncRWMutexLock", "sync.RWMutex.Lock"),
    ("waitReasonSyncWaitGroupWait", "sync.WaitGroup.Wait"),
    ("waitReasonGCAssistWait", "GC assist wait"),
    ("waitReasonPreempted", "preempted"),
];

/// Check `strings` against the DWARF constants (`waitReasonChanReceive = 14`): the array is
/// as long as the numbering, and the known constants index their strings.
pub fn check_against_dwarf(strings: &[String], constants: &[(String, u8)]) -> Result<()> {
    let count = constants
        .iter()
        .map(|(_, v)| usize::from(*v) + 1)
        .max()
        .unwrap_or(0);
    ensure!(
        count == strings.len(),
        "{} wait-reason strings, where DWARF numbers {count} wait reasons",
        strings.len()
    );
    for (name, value) in constants {
        let Some((_, expected)) = KNOWN.iter().find(|(known, _)| known == name) else {
            continue;
        };
        let found = &strings[usize::from(*value)];
        if found != expected {
            bail!("DWARF has {name} = {value}, but wait-reason string {value} is {found:?}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn constants(list: &[(&str, u8)]) -> Vec<(String, u8)> {
        list.iter().map(|(n, v)| (n.to_string(), *v)).collect()
    }

    #[test]
    fn strings_that_match_the_dwarf_numbering_pass() {
        let read = strings(&["", "GC assist marking", "IO wait", "chan receive"]);
        let dwarf = constants(&[
            ("waitReasonZero", 0),
            ("waitReasonGCAssistMarking", 1),
            ("waitReasonIOWait", 2),
            ("waitReasonChanReceive", 3),
        ]);
        check_against_dwarf(&read, &dwarf).unwrap();
    }

    #[test]
    fn a_shifted_or_short_list_is_an_error() {
        let dwarf = constants(&[
            ("waitReasonZero", 0),
            ("waitReasonIOWait", 1),
            ("waitReasonChanReceive", 2),
        ]);
        let shifted = strings(&["", "chan receive", "IO wait"]);
        let error = check_against_dwarf(&shifted, &dwarf)
            .unwrap_err()
            .to_string();
        assert!(error.contains("waitReasonIOWait = 1"), "{error}");
        let short = strings(&["", "IO wait"]);
        assert!(check_against_dwarf(&short, &dwarf).is_err());
    }
}
