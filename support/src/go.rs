//! The Go test target: `tests/go/https_server.go`, a `net/http` HTTPS server, built from
//! source with the system's Go (`golang-go`, which `cargo xtask setup` installs).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use crate::{run_quietly, workspace_root};

/// How the Go server is built.
#[derive(Debug, Clone, Copy, Default)]
pub struct GoBuild {
    /// Without the symbol table and DWARF (`-ldflags=-s -w`): its functions are found in
    /// `.gopclntab` only.
    pub stripped: bool,
    /// Position-independent (`-buildmode=pie`): `.gopclntab` becomes `.data.rel.ro.gopclntab`.
    pub pie: bool,
}

/// The Go server's source.
pub fn https_server_source() -> PathBuf {
    workspace_root().join("tests/go/https_server.go")
}

/// Builds [`https_server_source`] into `dir` (its Go caches under `dir` too, so nothing is
/// written to the user's): `dir/https_server`, with `_stripped` and `_pie` appended as built.
/// The server takes `CERT KEY` and prints `listening 127.0.0.1:<port> pid <pid>`.
pub fn build_https_server(dir: &Path, build: GoBuild) -> Result<PathBuf> {
    let exe = dir.join(format!(
        "https_server{}{}",
        if build.stripped { "_stripped" } else { "" },
        if build.pie { "_pie" } else { "" }
    ));
    let mut cmd = Command::new("go");
    cmd.arg("build").arg("-o").arg(&exe);
    if build.stripped {
        cmd.arg("-ldflags=-s -w");
    }
    if build.pie {
        cmd.arg("-buildmode=pie");
    }
    cmd.arg(https_server_source())
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOFLAGS", "-mod=mod")
        .env("GO111MODULE", "off");
    run_quietly(
        &mut cmd,
        "go build of tests/go/https_server.go (golang-go: `cargo xtask setup` installs it)",
    )?;
    Ok(exe)
}
