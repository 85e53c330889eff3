//! What the integration tests (`tests/`) and `cargo xtask` both do: find the workspace, tell
//! whether we run as root, read the line a test server prints once it listens, make throw-away
//! TLS certificates (and start `openssl s_server` with them), read the result line of
//! `workload load`, and build the Go test servers.
//!
//! Errors are `anyhow` errors that name the failing step: xtask reports them, the tests panic
//! with them.

pub mod go;
pub mod listening;
pub mod load;
pub mod tls;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{ensure, Context as _, Result};

pub use listening::{parse_listening_line, read_listening_line};

/// The cargo workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the support crate lives in the workspace")
        .to_path_buf()
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Mounts tracefs at /sys/kernel/tracing if it is not (a fresh machine does not mount it),
/// for the tools that name tracepoints by their tracefs id: perf in the tests, libbpf-tools'
/// `syscount` in the bench. The tracer itself needs no tracefs.
pub fn ensure_tracefs_mounted() -> Result<()> {
    let tracefs = Path::new("/sys/kernel/tracing");
    if tracefs.join("events").is_dir() {
        return Ok(());
    }
    run_quietly(
        Command::new("mount")
            .args(["-t", "tracefs", "nodev"])
            .arg(tracefs),
        "mount -t tracefs (util-linux)",
    )
}

/// Runs `cmd` quietly to completion; fails with its stderr unless it succeeds. `what` names
/// it in errors (and says where it comes from).
fn run_quietly(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_has_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"), "{manifest}");
    }
}
