//! Symbolization of real processes: the Go test service built plainly with the system's Go
//! (1.19, symbols and DWARF) and stripped with Go 1.27 (`.gopclntab` only), and a C program
//! with DWARF. The toolchains are installed by `cargo xtask setup`; a missing one fails.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use object::{Object as _, ObjectSymbol as _};
use tracer_support::{
    go::{build_go_program, go_service_source, GoBuild, Toolchain},
    workspace_root,
};

use super::{go::GoExecutable, Frame, Symbolizer, UserStack, TRUNCATED};

/// Where the test programs are built: kept between runs, so Go's build cache makes
/// rebuilding them cheap.
fn build_dir() -> PathBuf {
    let dir = workspace_root().join("target/symbols-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn go_service(cell: &OnceLock<PathBuf>, toolchain: Toolchain, build: GoBuild) -> PathBuf {
    cell.get_or_init(|| {
        build_go_program(&go_service_source(), &build_dir(), build, toolchain)
            .unwrap_or_else(|e| panic!("building the Go service with {toolchain:?}: {e:#}"))
    })
    .clone()
}

fn plain_go() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    go_service(&EXE, Toolchain::System, GoBuild::default())
}

fn stripped_go() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    go_service(&EXE, Toolchain::GoBin("1.27.3"), GoBuild::STRIPPED)
}

/// Stripped and position-independent: loaded at a random address, its module data's
/// pointers written by the dynamic loader.
fn stripped_pie_go() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    let build = GoBuild {
        stripped: true,
        pie: true,
    };
    go_service(&EXE, Toolchain::System, build)
}

/// A running test program, killed when dropped.
struct Running(Child);

impl Running {
    /// Start `exe` and wait for its first line of output.
    fn start(exe: &Path, args: &[&str]) -> Running {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(!line.is_empty(), "{} printed nothing", exe.display());
        Running(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `[entry, end)` of `name` in the ELF symbol table.
fn elf_function(exe: &Path, name: &str) -> (u64, u64) {
    let data = std::fs::read(exe).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let sym = file
        .symbols()
        .find(|s| s.name() == Ok(name))
        .unwrap_or_else(|| panic!("{name} is not in {}'s symbols", exe.display()));
    (sym.address(), sym.address() + sym.size())
}

/// `[entry, end)` of `name` in `.gopclntab`.
fn pclntab_function(exe: &Path, name: &str) -> (u64, u64) {
    let go = GoExecutable::read(exe).unwrap().expect("a Go executable");
    let (_, entry, end) = go
        .functions()
        .into_iter()
        .find(|(n, _, _)| n == name)
        .unwrap_or_else(|| panic!("{name} is not in {}'s .gopclntab", exe.display()));
    (entry, end)
}

/// The line of the first line of go_service.go that contains `text`.
fn source_line(source: &Path, text: &str) -> u32 {
    let source = std::fs::read_to_string(source).unwrap();
    let i = source
        .lines()
        .position(|l| l.contains(text))
        .unwrap_or_else(|| panic!("no {text:?} in the source"));
    i as u32 + 1
}

fn show(frames: &[Frame]) -> String {
    frames
        .iter()
        .map(|f| {
            format!(
                "{}{} at {}",
                f.function,
                if f.inlined { " (inlined)" } else { "" },
                f.location().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(" <- ")
}

/// In `main.waitLock`, the call `mu.Lock()` is `sync.(*Mutex).Lock` inlined: some PC of the
/// function symbolizes to that inlined frame (in sync/mutex.go) inside `main.waitLock` at the
/// line of the call, and every PC of the function is named `main.waitLock` at a line of it.
fn check_wait_lock(symbolizer: &mut Symbolizer, (entry, end): (u64, u64)) {
    let source = go_service_source();
    let first = source_line(&source, "func waitLock()");
    let lock_line = first + 2;
    let mut inlined_lock = None;
    let mut padding_from = None;
    for pc in entry..end {
        let frames = symbolizer.symbolize(pc);
        let outer = frames.last().unwrap();
        assert_eq!(
            outer.function,
            "main.waitLock",
            "{pc:#x}: {}",
            show(&frames)
        );
        assert!(!outer.inlined);
        // The padding after the function's last instruction (up to the next function,
        // where `.gopclntab` ends this one) has no position.
        if outer.line.is_none() && frames.len() == 1 {
            padding_from.get_or_insert(pc);
            continue;
        }
        assert_eq!(padding_from, None, "{pc:#x} has a position after padding");
        assert!(
            outer
                .file
                .as_deref()
                .unwrap()
                .ends_with("tests/go/go_service.go"),
            "{pc:#x}: {}",
            show(&frames)
        );
        let line = outer.line.unwrap();
        assert!(
            (first..first + 7).contains(&line),
            "{pc:#x}: {}",
            show(&frames)
        );
        if frames.len() == 2
            && frames[0].function == "sync.(*Mutex).Lock"
            && frames[0].inlined
            && line == lock_line
        {
            inlined_lock.get_or_insert((pc, frames.to_vec()));
        }
    }
    let (pc, frames) = inlined_lock.unwrap_or_else(|| {
        panic!("no PC of main.waitLock is in an inlined sync.(*Mutex).Lock at line {lock_line}")
    });
    assert!(
        frames[0]
            .file
            .as_deref()
            .unwrap()
            .ends_with("sync/mutex.go"),
        "{pc:#x}: {}",
        show(&frames)
    );
    eprintln!("{pc:#x}: {}", show(&frames));
}

#[test]
fn go_with_symbols_names_functions_lines_and_inlined_calls() {
    let exe = plain_go();
    let service = Running::start(&exe, &[]);
    let mut symbolizer = Symbolizer::new(service.pid()).unwrap();
    assert!(symbolizer.is_go());
    let range = elf_function(&exe, "main.waitLock");
    check_wait_lock(&mut symbolizer, range);
    assert_eq!(symbolizer.stats().unknown, 0);
}

#[test]
fn stripped_go_is_symbolized_from_gopclntab() {
    let exe = stripped_go();
    let data = std::fs::read(&exe).unwrap();
    let file = object::File::parse(&*data).unwrap();
    assert!(file.symbols().next().is_none(), "the build is not stripped");
    let go = GoExecutable::read(&exe).unwrap().unwrap();
    assert_eq!(go.version(), Some("go1.27.3"));
    assert!(go.has_inline_trees(), "moduledata.gofunc not found");
    let service = Running::start(&exe, &[]);
    let mut symbolizer = Symbolizer::new(service.pid()).unwrap();
    let range = pclntab_function(&exe, "main.waitLock");
    check_wait_lock(&mut symbolizer, range);
}

#[test]
fn position_independent_stripped_go_is_symbolized_at_its_load_address() {
    let exe = stripped_pie_go();
    let go = GoExecutable::read(&exe).unwrap().unwrap();
    assert!(go.has_inline_trees(), "moduledata.gofunc not found");
    let service = Running::start(&exe, &[]);
    let mut symbolizer = Symbolizer::new(service.pid()).unwrap();
    let (entry, end) = pclntab_function(&exe, "main.waitLock");
    let base = load_base(service.pid(), &exe);
    assert_ne!(base, 0);
    check_wait_lock(&mut symbolizer, (base + entry, base + end));
}

/// A lock wait's stack as the kernel gives it (return addresses, innermost first): each is
/// looked up in its call instruction, and a truncated stack gets a root frame saying so.
#[test]
fn stacks_look_up_return_addresses_in_their_call() {
    let exe = plain_go();
    let service = Running::start(&exe, &[]);
    let mut symbolizer = Symbolizer::new(service.pid()).unwrap();
    let (entry, end) = elf_function(&exe, "main.waitLock");
    // A return address: the first PC after a call in main.waitLock whose call instruction
    // is the inlined Lock's call to lockSlow.
    let ret = (entry + 1..end)
        .find(|&pc| {
            let before = symbolizer.symbolize(pc - 1);
            let at = symbolizer.symbolize(pc);
            before[0].function == "sync.(*Mutex).Lock" && at[0].function != before[0].function
        })
        .expect("the end of the inlined Lock");
    let (main_entry, _) = elf_function(&exe, "main.main");
    let stack = [ret, main_entry + 1];
    let whole = symbolizer.symbolize_stack(UserStack {
        addrs: &stack,
        first_is_pc: false,
        truncated: false,
    });
    let names = whole.names_root_to_leaf();
    assert_eq!(
        names,
        ["main.main", "main.waitLock", "sync.(*Mutex).Lock"],
        "{}",
        show(&whole.frames)
    );
    let truncated = symbolizer.symbolize_stack(UserStack {
        addrs: &stack[..1],
        first_is_pc: false,
        truncated: true,
    });
    assert_eq!(
        truncated.names_root_to_leaf(),
        [TRUNCATED, "main.waitLock", "sync.(*Mutex).Lock"]
    );
}

/// What blazesym itself makes of a Go executable with symbols and DWARF (Go 1.19 compresses
/// its DWARF): the function names from the ELF symbols. The tracer reads Go from
/// `.gopclntab` instead; this records where blazesym stands.
#[test]
fn blazesym_on_go_names_functions() {
    use blazesym::symbolize::{
        source::{Elf, Source},
        Input,
    };
    let exe = plain_go();
    let (entry, end) = elf_function(&exe, "main.waitLock");
    let go = GoExecutable::read(&exe).unwrap().unwrap();
    let symbolizer = blazesym::symbolize::Symbolizer::builder()
        .enable_inlined_fns(true)
        .build();
    let source = Source::Elf(Elf::new(&exe));
    let pcs: Vec<u64> = (entry..end).collect();
    let results = symbolizer
        .symbolize(&source, Input::VirtOffset(&pcs))
        .unwrap();
    let (mut with_lines, mut with_inlined, mut agree_inlined) = (0, 0, 0);
    for (pc, result) in pcs.iter().zip(results) {
        let sym = result.as_sym().expect("named by blazesym");
        assert_eq!(sym.name, "main.waitLock");
        with_lines += usize::from(sym.code_info.as_ref().and_then(|c| c.line).is_some());
        with_inlined += usize::from(!sym.inlined.is_empty());
        let ours = go.frames(*pc).unwrap();
        agree_inlined += usize::from(
            ours.len() == sym.inlined.len() + 1
                && ours
                    .iter()
                    .rev()
                    .skip(1)
                    .zip(sym.inlined.iter())
                    .all(|(a, b)| a.function == b.name),
        );
    }
    eprintln!(
        "blazesym on {} PCs of main.waitLock (Go 1.19, DWARF): lines for {with_lines}, \
         inlined calls for {with_inlined}, inline frames agreeing with .gopclntab for \
         {agree_inlined}",
        pcs.len()
    );
}

const C_SOURCE: &str = r#"
#include <stdio.h>
#include <unistd.h>

__attribute__((noinline)) int wait_here(int fd) {
    char c;
    return (int)read(fd, &c, 1);
}

int main(void) {
    printf("ready\n");
    fflush(stdout);
    return wait_here(0);
}
"#;

fn c_program() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| build_c("wait_here", &["-g", "-O0", "-fno-omit-frame-pointer"]))
        .clone()
}

/// The same program built without frame pointers (once: tests run in parallel).
fn c_program_without_frame_pointers() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| build_c("wait_here_omit_fp", &["-O2", "-fomit-frame-pointer"]))
        .clone()
}

fn build_c(name: &str, flags: &[&str]) -> PathBuf {
    let dir = build_dir();
    let source = dir.join(format!("{name}.c"));
    std::fs::write(&source, C_SOURCE).unwrap();
    let exe = dir.join(name);
    let status = Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(&source)
        .status()
        .expect("running cc (installed by setup)");
    assert!(status.success(), "cc failed");
    exe
}

#[test]
fn frame_pointers_are_seen_in_prologues() {
    assert_eq!(
        super::keeps_frame_pointers(&c_program()).unwrap(),
        Some(true)
    );
    assert_eq!(
        super::keeps_frame_pointers(&c_program_without_frame_pointers()).unwrap(),
        Some(false)
    );
    assert_eq!(
        super::keeps_frame_pointers(&stripped_go()).unwrap(),
        Some(true)
    );
}

/// The tracer warns at start about a target built without frame pointers, and only then.
#[test]
fn a_target_without_frame_pointers_is_warned_about() {
    let warning = |exe: &Path| {
        let running = Running::start(exe, &[]);
        let exe = crate::target::Executable::read(running.pid()).unwrap();
        super::frame_pointer_warning(&exe, "prog")
    };
    let line = warning(&c_program_without_frame_pointers()).expect("a warning");
    assert!(line.contains("without frame pointers"), "{line}");
    assert_eq!(warning(&c_program()), None);
}

/// A C program built with DWARF is named by blazesym, with file:line, through the
/// process's memory map (a position-independent executable: its load address is not the
/// linked one); an address in libc is named by libc's symbols.
#[test]
fn c_is_symbolized_with_file_and_line() {
    let exe = c_program();
    let program = Running::start(&exe, &[]);
    let mut symbolizer = Symbolizer::new(program.pid()).unwrap();
    assert!(!symbolizer.is_go());
    let (entry, end) = elf_function(&exe, "wait_here");
    let base = load_base(program.pid(), &exe);
    let line = C_SOURCE
        .lines()
        .position(|l| l.contains("return (int)read"))
        .unwrap() as u32
        + 1;
    // The call to read(): some PC of wait_here is at that line.
    let found = (entry..end).any(|pc| {
        let frames = symbolizer.symbolize(base + pc);
        assert_eq!(
            frames.last().unwrap().function,
            "wait_here",
            "{}",
            show(&frames)
        );
        let f = frames.last().unwrap();
        assert!(
            f.file.as_deref().unwrap().ends_with("wait_here.c"),
            "{}",
            show(&frames)
        );
        f.line == Some(line)
    });
    assert!(found, "no PC of wait_here at wait_here.c:{line}");
    let read = libc_address(program.pid(), "read");
    let frames = symbolizer.symbolize(read);
    assert!(
        frames.last().unwrap().function.contains("read"),
        "{}",
        show(&frames)
    );
    // An address in no file is named for what it is not, and counted.
    let unknown_before = symbolizer.stats().unknown;
    let stack = procfs::process::Process::new(program.pid() as i32)
        .unwrap()
        .maps()
        .unwrap()
        .into_iter()
        .find(|m| m.pathname == procfs::process::MMapPath::Stack)
        .expect("a [stack] mapping");
    let frames = symbolizer.symbolize(stack.address.0 + 16);
    assert_eq!(frames[0].function, "[unknown]");
    assert_eq!(symbolizer.stats().unknown, unknown_before + 1);
}

/// What to add to a linked address of a position-independent `exe` to find it in `pid`:
/// where its mapping at file offset 0 is, less the address that offset is linked at (0 for
/// C; Go links position-independent executables at 0x400000 too).
fn load_base(pid: u32, exe: &Path) -> u64 {
    use object::ObjectSegment as _;
    let data = std::fs::read(exe).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let linked = file
        .segments()
        .find(|s| s.file_range().0 == 0)
        .expect("a segment at offset 0")
        .address();
    let exe = std::fs::canonicalize(exe).unwrap();
    offset_0_mapping(pid, |p| p == exe).expect("the executable's first mapping") - linked
}

/// Where `pid` maps file offset 0 of the first file whose path passes `is_it`.
fn offset_0_mapping(pid: u32, is_it: impl Fn(&Path) -> bool) -> Option<u64> {
    let maps = procfs::process::Process::new(pid as i32)
        .unwrap()
        .maps()
        .unwrap();
    maps.into_iter()
        .find(|m| {
            m.offset == 0 && matches!(&m.pathname, procfs::process::MMapPath::Path(p) if is_it(p))
        })
        .map(|m| m.address.0)
}

/// Where libc's `name` is in `pid`: this process's own libc is the same file, so its
/// offset from the library's load address is the same.
fn libc_address(pid: u32, name: &str) -> u64 {
    let ours = libc_base(std::process::id());
    let theirs = libc_base(pid);
    let name = std::ffi::CString::new(name).unwrap();
    let addr = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) } as u64;
    addr - ours + theirs
}

fn libc_base(pid: u32) -> u64 {
    offset_0_mapping(pid, |p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("libc.so"))
    })
    .expect("libc mapped")
}

/// How long 1,000 distinct addresses of a Go executable take, from a cold symbolizer: the
/// stripped Go 1.27 build through `.gopclntab`, and the Go 1.19 build through blazesym's
/// ELF symbols and DWARF for comparison.
#[test]
fn symbolizing_a_thousand_go_addresses_is_fast() {
    for exe in [stripped_go(), plain_go()] {
        let go = GoExecutable::read(&exe).unwrap().unwrap();
        let functions = go.functions();
        let step = (functions.len() / 1000).max(1);
        let addrs: Vec<u64> = functions
            .iter()
            .step_by(step)
            .take(1000)
            .map(|(_, entry, end)| entry + (end - entry) / 2)
            .collect();
        assert_eq!(addrs.len(), 1000);
        let service = Running::start(&exe, &[]);
        let start = Instant::now();
        let mut symbolizer = Symbolizer::new(service.pid()).unwrap();
        let setup = start.elapsed();
        let start = Instant::now();
        symbolizer.prefetch(&addrs);
        let ours = start.elapsed();
        assert_eq!(symbolizer.stats().addresses, 1000);
        assert_eq!(symbolizer.stats().unknown, 0);
        let start = Instant::now();
        symbolizer.prefetch(&addrs);
        let cached = start.elapsed();
        eprintln!(
            "{}: Symbolizer::new {setup:?}; 1000 addresses {ours:?} (.gopclntab, inline \
             trees included), again from the cache {cached:?}",
            exe.file_name().unwrap().to_string_lossy()
        );
        if file_has_symbols(&exe) {
            use blazesym::symbolize::{
                source::{Elf, Source},
                Input,
            };
            let start = Instant::now();
            let blazesym = blazesym::symbolize::Symbolizer::new();
            let source = Source::Elf(Elf::new(&exe));
            let results = blazesym
                .symbolize(&source, Input::VirtOffset(&addrs))
                .unwrap();
            eprintln!(
                "{}: blazesym (ELF symbols and DWARF, cold) {:?} for {} addresses",
                exe.file_name().unwrap().to_string_lossy(),
                start.elapsed(),
                results.len()
            );
        }
        assert!(ours < Duration::from_secs(2), "{ours:?}");
    }
}

fn file_has_symbols(exe: &Path) -> bool {
    let data = std::fs::read(exe).unwrap();
    let file = object::File::parse(&*data).unwrap();
    file.symbols().next().is_some()
}
