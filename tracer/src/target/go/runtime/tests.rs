//! Tests on a small Go program built here by the `go` command (Debian's go1.19.8 on the
//! project's machines) three ways: plain, stripped (`-ldflags=-s -w`: no symbol table, no
//! DWARF) and position-independent. What each finds is checked against the DWARF of the
//! plain build, so the tests hold for any Go toolchain from 1.17 on.

use std::{path::Path, process::Command, sync::OnceLock};

use iced_x86::{Decoder, DecoderOptions};

use super::*;

const PROGRAM: &str = r#"package main

import (
	"sync"
	"time"
)

func main() {
	var mu sync.Mutex
	done := make(chan bool)
	go func() {
		mu.Lock()
		time.Sleep(time.Millisecond)
		mu.Unlock()
		done <- true
	}()
	<-done
}
"#;

/// One build of [`PROGRAM`]: its bytes, and the executable as the tracer reads it.
struct Build {
    kind: &'static str,
    bytes: Vec<u8>,
    exe: Executable,
}

const BUILDS: [(&str, &[&str]); 3] = [
    ("plain", &[]),
    ("stripped", &["-ldflags=-s -w"]),
    ("pie", &["-buildmode=pie"]),
];

/// The three builds, made once for all the tests (a build takes seconds).
fn builds() -> &'static [Build] {
    static BUILT: OnceLock<Vec<Build>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tracer-go-runtime-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("main.go"), PROGRAM).unwrap();
        let built = BUILDS
            .iter()
            .map(|(kind, flags)| build(&dir, kind, flags))
            .collect();
        std::fs::remove_dir_all(&dir).unwrap();
        built
    })
}

fn build(dir: &Path, kind: &'static str, flags: &[&str]) -> Build {
    let mut go = Command::new("go");
    go.current_dir(dir)
        .args(["build", "-o", kind])
        .args(flags)
        .arg("main.go")
        // Never fetch another toolchain (Go 1.21+ would for a go.mod asking for one).
        .env("GOTOOLCHAIN", "local");
    if std::env::var_os("HOME").is_none() && std::env::var_os("XDG_CACHE_HOME").is_none() {
        go.env("GOCACHE", dir.join("cache"));
    }
    let output = go.output().unwrap_or_else(|e| {
        panic!(
            "these tests build a Go program and need the `go` command (Debian: apt-get install \
             golang-go): running it failed: {e}"
        )
    });
    assert!(
        output.status.success(),
        "go build {flags:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = dir.join(kind);
    Build {
        kind,
        bytes: std::fs::read(&path).unwrap(),
        exe: Executable::from_file(path),
    }
}

fn runtime_of(build: &Build) -> GoRuntime {
    match find_go_runtime(&build.exe) {
        Ok(Some(runtime)) => runtime,
        Ok(None) => panic!("the {} build is not recognized as Go", build.kind),
        Err(e) => panic!("the {} build: {e:#}", build.kind),
    }
}

/// The DWARF of the plain build.
fn dwarf_facts() -> dwarf::DwarfFacts {
    let plain = &builds()[0];
    let file = plain.exe.elf().unwrap();
    dwarf::read(&file)
        .unwrap()
        .expect("the plain build has DWARF")
}

/// The value DWARF gives a `runtime.waitReason*` constant.
fn dwarf_wait_reason(facts: &dwarf::DwarfFacts, name: &str) -> Option<usize> {
    facts
        .wait_reasons
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| usize::from(*v))
}

#[test]
fn probe_points_are_the_conditional_jump_of_the_stack_check() {
    for build in builds() {
        let runtime = runtime_of(build);
        for (name, offset) in [
            (GOPARK, runtime.gopark),
            (READY, runtime.ready),
            (INJECTGLIST, runtime.injectglist),
            (EXECUTE, runtime.execute),
            (GOEXIT1, runtime.goexit1),
        ] {
            // The file holds, 4 bytes before the probe point, the entry: CMP RSP, [R14+0x10].
            let entry = &build.bytes[offset as usize - 4..][..16];
            assert_eq!(
                probe_point::stack_check_jump(entry),
                Ok(4),
                "{name} in the {} build",
                build.kind
            );
            let jump =
                Decoder::new(64, &build.bytes[offset as usize..], DecoderOptions::NONE).decode();
            assert!(
                probe_point::is_conditional_jump(&jump),
                "{name} in the {} build: {:?} at the probe point",
                build.kind,
                jump.code()
            );
        }
    }
}

#[test]
fn functions_come_from_the_symbol_table_else_from_gopclntab() {
    let [plain, stripped, pie] = [0, 1, 2].map(|i| runtime_of(&builds()[i]));
    assert_eq!(plain.found_in.probe_points, Source::SymbolTable);
    assert_eq!(stripped.found_in.probe_points, Source::Gopclntab);
    assert_eq!(pie.found_in.probe_points, Source::SymbolTable);
    // Stripping keeps the code where it was.
    assert_eq!(
        (plain.gopark, plain.ready, plain.execute, plain.goexit1),
        (
            stripped.gopark,
            stripped.ready,
            stripped.execute,
            stripped.goexit1
        )
    );
}

#[test]
fn struct_offsets_equal_the_dwarf_ones() {
    let dwarf = dwarf_facts()
        .offsets
        .expect("DWARF describes runtime.g and runtime.m");
    for build in builds() {
        let runtime = runtime_of(build);
        assert_eq!(runtime.offsets, dwarf, "the {} build", build.kind);
        let expected_source = match build.kind {
            "stripped" => "table",
            _ => "DWARF",
        };
        assert!(
            runtime
                .found_in
                .offsets
                .to_string()
                .ends_with(expected_source),
            "the {} build's offsets came from the {}",
            build.kind,
            runtime.found_in.offsets
        );
    }
    // The table row for this Go release says the same as its DWARF.
    let version = runtime_of(&builds()[0]).version.unwrap();
    let release = versions::release(&version).unwrap_or_else(|| panic!("no table for {version}"));
    assert_eq!(release.offsets, dwarf, "the {version} table");
}

#[test]
fn wait_reasons_are_at_the_indexes_dwarf_gives() {
    let dwarf = dwarf_facts();
    // waitReasonSyncMutexLock exists from Go 1.20; before, sync.Mutex parks as semacquire.
    let mutex = match dwarf_wait_reason(&dwarf, "waitReasonSyncMutexLock") {
        Some(_) => ("waitReasonSyncMutexLock", "sync.Mutex.Lock"),
        None => ("waitReasonSemacquire", "semacquire"),
    };
    let expected = [
        ("waitReasonChanReceive", "chan receive"),
        ("waitReasonSleep", "sleep"),
        mutex,
        ("waitReasonIOWait", "IO wait"),
        ("waitReasonGCAssistWait", "GC assist wait"),
    ];
    for build in builds() {
        let runtime = runtime_of(build);
        for (constant, string) in expected {
            let index = dwarf_wait_reason(&dwarf, constant)
                .unwrap_or_else(|| panic!("{constant} is not in the DWARF"));
            assert_eq!(
                runtime.wait_reasons.get(index).map(String::as_str),
                Some(string),
                "{constant} = {index} in the {} build",
                build.kind
            );
        }
    }
}

#[test]
fn every_source_of_wait_reasons_agrees() {
    let [plain, stripped, pie] = [0, 1, 2].map(|i| runtime_of(&builds()[i]));
    assert_eq!(plain.found_in.wait_reasons, Source::SymbolTable);
    assert!(plain.found_in.wait_reasons_checked_against_dwarf);
    // Located by decoding runtime.waitReason.String.
    assert_eq!(stripped.found_in.wait_reasons, Source::Gopclntab);
    assert!(!stripped.found_in.wait_reasons_checked_against_dwarf);
    assert_eq!(stripped.wait_reasons, plain.wait_reasons);
    // Pointers the dynamic loader fills in.
    assert_eq!(pie.wait_reasons, plain.wait_reasons);
    let version = plain.version.unwrap();
    let release = versions::release(&version).unwrap_or_else(|| panic!("no table for {version}"));
    assert_eq!(
        release.wait_reasons, plain.wait_reasons,
        "the {version} table"
    );
}

#[test]
fn the_start_up_line_says_where_each_fact_came_from() {
    let stripped = runtime_of(&builds()[1]);
    let minor = versions::release(stripped.version.as_deref().unwrap())
        .unwrap()
        .minor;
    assert_eq!(
        stripped.found_in.to_string(),
        format!(
            "probe points: .gopclntab; g/m offsets: go1.{minor} table; wait reasons: \
             runtime.waitReasonStrings (located in runtime.waitReason.String, .gopclntab)"
        )
    );
    assert_eq!(
        runtime_of(&builds()[0]).found_in.to_string(),
        "probe points: symbol table; g/m offsets: DWARF; wait reasons: \
         runtime.waitReasonStrings (symbol table), checked against DWARF"
    );
}

#[test]
fn a_release_without_a_table_is_refused_when_there_is_no_dwarf() {
    let error = struct_offsets(None, None, Some("go1.99.1")).unwrap_err();
    assert!(
        error.to_string().contains("go1.99.1 has no table"),
        "{error}"
    );
}

#[test]
fn a_non_go_executable_is_not_go() {
    let me = Executable::from_file(std::env::current_exe().unwrap());
    assert!(find_go_runtime(&me).unwrap().is_none());
}

#[test]
fn a_go_1_17_buildinfo_points_to_the_version() {
    // Rewrite the plain build's .go.buildinfo the way Go 1.17 wrote it: flags 0 and, at
    // offset 16, the address of the version's string header (runtime.buildVersion).
    let plain = &builds()[0];
    let file = plain.exe.elf().unwrap();
    let (at, _) = file
        .section_by_name(".go.buildinfo")
        .unwrap()
        .file_range()
        .unwrap();
    let build_version = file
        .symbols()
        .find(|s| s.name() == Ok("runtime.buildVersion"))
        .unwrap()
        .address();
    let mut bytes = plain.bytes.clone();
    let at = at as usize;
    bytes[at + 15] = 0;
    bytes[at + 16..at + 24].copy_from_slice(&build_version.to_le_bytes());
    bytes[at + 32..at + 64].fill(0); // no inline strings
    let path = std::env::temp_dir().join(format!("tracer-go-1-17-{}", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let rewritten = Executable::from_file(path.clone());
    std::fs::remove_file(&path).unwrap();

    let file = rewritten.elf().unwrap();
    let section = file.section_by_name(".go.buildinfo").unwrap();
    assert_eq!(go_version(section.data().unwrap()), None);
    assert_eq!(
        buildinfo_version(&section, &memory::Memory::new(&file)),
        runtime_of(plain).version
    );
}
