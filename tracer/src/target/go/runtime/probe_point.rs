//! Where to put a uprobe in a Go function: on the conditional jump of its stack check.
//!
//! With the register ABI (Go 1.17+) every function that may grow its stack starts by
//! comparing the stack pointer with `g.stackguard0` (r14 holds g, stackguard0 is at 0x10)
//! and jumping to `morestack` when it is below (`src/cmd/internal/obj/x86/obj6.go`,
//! `stacksplit`, read in Go 1.19.8 and 1.27.3):
//! - frames up to 128 bytes: `CMPQ SP, 0x10(R14); JLS morestack`;
//! - larger frames: `LEAQ -(framesize-128)(SP), R12; CMPQ R12, 0x10(R14); JLS morestack`.
//!
//! The kernel emulates a conditional jump at a uprobe instead of single-stepping it out of
//! line, which costs a tenth (KERNEL.md), and at that point no argument register has been
//! touched yet. Anything else at the entry is an error: the probe is never put on a guess.
//! (A `morestack` re-entry runs the check again, so a probe there may fire twice for one
//! call.)

use anyhow::{bail, Result};
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use super::memory::Memory;
use crate::target::go::{locate, pclntab::FuncRange};

/// `g.stackguard0`'s offset, fixed since Go 1.0 (`stack` is the first field, two words).
const STACKGUARD0: u64 = 0x10;
/// `g.stackguard1`'s, the next word: the check of a function that runs on the system stack
/// (`//go:systemstack`, a "C function" to the assembler: `obj6.go`, `cursym.CFunc()`, read
/// in Go 1.27.3), e.g. `runtime.stopTheWorldWithSema` since Go 1.21.
const STACKGUARD1: u64 = 0x18;

/// The file offset of `function`'s probe instruction.
pub fn file_offset(file: &object::File, memory: &Memory, function: &FuncRange) -> Result<u64> {
    let entry = locate(file, function)?.entry;
    let len = function.end.saturating_sub(function.entry).min(48);
    let Some(code) = memory.bytes(function.entry, len) else {
        bail!("{}'s code is not in the file", function.name);
    };
    match stack_check_jump(code) {
        Ok(offset) => Ok(entry + offset),
        Err(found) => bail!(
            "{} does not start with Go's stack check (a CMP of RSP or R12 with [R14+0x10], \
             then a conditional jump), so no probe is put on it: found {found}. \
             (Go before 1.17 loads g from thread-local storage here.)",
            function.name
        ),
    }
}

/// The offset of the stack check's conditional jump from the start of `code`, or what was
/// found instead.
pub fn stack_check_jump(code: &[u8]) -> Result<u64, String> {
    let instructions: Vec<Instruction> = Decoder::with_ip(64, code, 0, DecoderOptions::NONE)
        .into_iter()
        .take(3)
        .collect();
    let matches = match instructions.as_slice() {
        [cmp, jump, ..]
            if compares_with_stackguard(cmp, Register::RSP) && is_conditional_jump(jump) =>
        {
            Some(jump.ip())
        }
        [lea, cmp, jump]
            if is_frame_bottom(lea)
                && compares_with_stackguard(cmp, Register::R12)
                && is_conditional_jump(jump) =>
        {
            Some(jump.ip())
        }
        _ => None,
    };
    matches.ok_or_else(|| describe(&instructions, code))
}

/// `CMP register, [R14+0x10]` (or `+0x18`, see [`STACKGUARD1`]).
fn compares_with_stackguard(instruction: &Instruction, register: Register) -> bool {
    instruction.mnemonic() == Mnemonic::Cmp
        && instruction.op0_kind() == OpKind::Register
        && instruction.op0_register() == register
        && instruction.op1_kind() == OpKind::Memory
        && instruction.memory_base() == Register::R14
        && instruction.memory_index() == Register::None
        && matches!(
            instruction.memory_displacement64(),
            STACKGUARD0 | STACKGUARD1
        )
}

/// `Jcc rel8` or `Jcc rel32` (0x70-0x7f, 0x0f 0x80-0x8f), which the kernel emulates
/// (`arch/x86/kernel/uprobes.c`, `branch_setup_xol_ops`); not JRCXZ or LOOP, which it does
/// not.
pub(super) fn is_conditional_jump(instruction: &Instruction) -> bool {
    use Mnemonic::*;
    matches!(
        instruction.mnemonic(),
        Ja | Jae | Jb | Jbe | Je | Jne | Jg | Jge | Jl | Jle | Jo | Jno | Jp | Jnp | Js | Jns
    ) && instruction.op0_kind() == OpKind::NearBranch64
}

/// `LEA R12, [RSP-n]`: where the stack pointer will be once the frame is allocated.
fn is_frame_bottom(instruction: &Instruction) -> bool {
    instruction.mnemonic() == Mnemonic::Lea
        && instruction.op0_register() == Register::R12
        && instruction.memory_base() == Register::RSP
        && instruction.memory_index() == Register::None
}

/// `Mov_r64_rm64, Cmp_r64_rm64, Jbe_rel8_64 (64 48 8b ...)`: iced's names of the
/// instructions (the formatter is not compiled in) and the bytes.
fn describe(instructions: &[Instruction], code: &[u8]) -> String {
    let names: Vec<String> = instructions
        .iter()
        .map(|i| match i.code() {
            Code::INVALID => "(invalid)".to_string(),
            code => format!("{code:?}"),
        })
        .collect();
    let bytes: Vec<String> = code.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("{} ({} ...)", names.join(", "), bytes.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jump_after_a_small_frame_check_is_the_probe_point() {
        // runtime.gopark, Go 1.19.8: CMPQ SP, 0x10(R14); JLS; SUBQ $0x18, SP.
        let code = [
            0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0xe9, 0x00, 0x00, 0x00, 0x48, 0x83, 0xec, 0x18,
        ];
        assert_eq!(stack_check_jump(&code), Ok(4));
        // The same with a short jump.
        let code = [0x49, 0x3b, 0x66, 0x10, 0x76, 0x20, 0x55];
        assert_eq!(stack_check_jump(&code), Ok(4));
    }

    #[test]
    fn the_jump_after_a_big_frame_check_is_the_probe_point() {
        // LEAQ -0x88(SP), R12; CMPQ R12, 0x10(R14); JLS.
        let code = [
            0x4c, 0x8d, 0xa4, 0x24, 0x78, 0xff, 0xff, 0xff, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86,
            0x10, 0x02, 0x00, 0x00,
        ];
        assert_eq!(stack_check_jump(&code), Ok(12));
    }

    #[test]
    fn a_system_stack_function_checks_stackguard1() {
        // runtime.stopTheWorldWithSema, Go 1.27.3: LEAQ -0x18(SP), R12; CMPQ R12,
        // 0x18(R14); JLS.
        let code = [
            0x4c, 0x8d, 0x64, 0x24, 0xe8, 0x4d, 0x3b, 0x66, 0x18, 0x0f, 0x86, 0x0e, 0x04, 0x00,
            0x00,
        ];
        assert_eq!(stack_check_jump(&code), Ok(9));
    }

    #[test]
    fn anything_else_is_refused_with_what_was_found() {
        // Go 1.16: MOVQ FS:0xfffffff8, RCX; CMPQ SP, 0x10(RCX); JBE.
        let code = [
            0x64, 0x48, 0x8b, 0x0c, 0x25, 0xf8, 0xff, 0xff, 0xff, 0x48, 0x3b, 0x61, 0x10, 0x76,
            0x20,
        ];
        let found = stack_check_jump(&code).unwrap_err();
        assert!(
            found.starts_with("Mov_r64_rm64, Cmp_r64_rm64, Jbe_rel8_64 (64 48 8b"),
            "{found}"
        );
        // A function without a stack check (NOSPLIT): PUSHQ BP; MOVQ SP, BP.
        assert!(stack_check_jump(&[0x55, 0x48, 0x89, 0xe5]).is_err());
        // The check against another field of g (0x20: g._panic).
        assert!(stack_check_jump(&[0x49, 0x3b, 0x66, 0x20, 0x76, 0x20]).is_err());
        assert!(stack_check_jump(&[]).is_err());
    }
}
