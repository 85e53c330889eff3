//! Developer tasks for the tracer workspace, run as `cargo xtask <command>`
//! (the alias lives in `.cargo/config.toml`).
//!
//! Every command that builds runs `setup` first, so a fresh machine needs nothing but rustup
//! with the stable and nightly toolchains: the nightly's `rust-src`, `bpf-linker` (built against
//! the nightly's own libLLVM) and the Debian/Python packages the tests use are installed here.

mod bench;
mod demo;
mod setup;
mod workload;

use std::{
    env,
    ffi::OsString,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, ExitCode, ExitStatus, Stdio},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
pub use tracer_support::{is_root, workspace_root as root};

/// The kernel-side crate. It is `no_std`/`no_main` and only builds for the BPF target (the
/// `tracer` crate's build.rs builds it through aya-build); built for the host, it fails with
/// "unwinding panics are not supported without std". `--workspace` selects every member,
/// `default-members` notwithstanding, so it is excluded by name.
const EBPF_CRATE: &str = "tracer-ebpf";

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, test, demo and benchmark the tracer"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need; every step is skipped when already satisfied
    Setup,
    /// Run setup, then build the workspace (tracer's build.rs builds the eBPF object)
    Build {
        /// Build with the release profile
        #[arg(long)]
        release: bool,
    },
    /// Run setup, build (debug), then run all the tests one at a time, as root
    ///
    /// The tests that load kernel programs are `#[ignore = "needs root"]`; this runs them too
    /// (`--include-ignored`), and refuses to run when not root. `cargo test` as another user
    /// runs the others.
    ///
    /// `cargo xtask test -- attribution` runs the tests whose names contain "attribution";
    /// `cargo xtask test -- --test attribution -- --nocapture` passes `--test attribution` to
    /// cargo test and `--nocapture` to the test binaries.
    Test {
        /// Arguments for `cargo test` (e.g. a test name filter), then optionally `--` and
        /// arguments for the test binaries
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Build (debug), then run target/debug/tracer with the arguments after `--`
    Run {
        /// Arguments for the tracer, e.g. `-- --pid 1234`
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Trace the workload server under mixed load for 10 s; writes tracer-out/
    Demo,
    /// Measure the tracer's overhead: alternating baseline and traced load phases
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match prepare_env().and_then(|()| dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The chain of contexts names the failing step and command; a backtrace of this
            // program would add nothing (RUST_BACKTRACE may be set for the tracer's sake).
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Cmd) -> Result<()> {
    match command {
        Cmd::Setup => setup::run(),
        Cmd::Build { release } => {
            setup::run()?;
            build_workspace(release)
        }
        Cmd::Test { args } => test(&args),
        Cmd::Run { args } => run_tracer(&args),
        Cmd::Demo => demo::run(),
        Cmd::Bench(args) => bench::run(&args),
    }
}

/// `cargo build --workspace` without the eBPF crate (see [`EBPF_CRATE`]).
pub fn build_workspace(release: bool) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .args(["build", "--workspace", "--exclude", EBPF_CRATE]);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd).context("building the workspace")
}

/// Build `tls-server` again with Debian's libssl.a linked in (its own target directory, so
/// the workspace's build keeps the shared libssl), as `tls-server-static` next to the
/// workspace's binaries.
fn build_static_tls_server() -> Result<()> {
    let static_dir = target_dir().join("openssl-static");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .env("OPENSSL_STATIC", "1")
        // tracer-tests depends on the tracer crate (for summary.json's types), whose build.rs
        // builds the kernel programs: tls-server needs none of them, in its own target dir.
        .env("AYA_BUILD_SKIP", "1")
        .args([
            "build",
            "-p",
            "tracer-tests",
            "--bin",
            "tls-server",
            "--target-dir",
        ])
        .arg(&static_dir);
    run_cmd(&mut cmd).context("building tls-server with a static OpenSSL")?;
    let built = static_dir.join("debug").join("tls-server");
    let dest = bin_dir(false).join("tls-server-static");
    std::fs::copy(&built, &dest)
        .with_context(|| format!("copying {} to {}", built.display(), dest.display()))?;
    Ok(())
}

fn test(args: &[OsString]) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask test` runs every test, and most integration tests load kernel \
             programs, which needs root (they are marked `#[ignore = \"needs root\"]`). Run \
             it as root (e.g. `sudo -E cargo xtask test`); as this user, `cargo test` runs \
             the tests that do not need root and lists the others as ignored"
        );
    }
    setup::run()?;
    build_workspace(false)?;
    build_static_tls_server()?;
    let (cargo_args, test_args) = match args.iter().position(|arg| arg == "--") {
        Some(split) => (&args[..split], &args[split + 1..]),
        None => (args, &[][..]),
    };
    // The root-only tests too, unless the arguments pick them already (`--ignored`).
    let include_ignored = !test_args
        .iter()
        .any(|arg| arg == "--ignored" || arg == "--include-ignored");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        // The integration tests run the tracer and workload binaries from here.
        .env("TRACER_BIN_DIR", bin_dir(false))
        // Report every failing test binary, not just the first.
        .args([
            "test",
            "--workspace",
            "--exclude",
            EBPF_CRATE,
            "--no-fail-fast",
        ])
        .args(cargo_args)
        // Tests attach to processes and measure time: one at a time.
        .args(["--", "--test-threads=1"])
        .args(include_ignored.then_some("--include-ignored"))
        .args(test_args);
    run_cmd(&mut cmd).context("running the tests")
}

fn run_tracer(args: &[OsString]) -> Result<()> {
    setup::run()?;
    build_workspace(false)?;
    let mut cmd = Command::new(bin_dir(false).join("tracer"));
    cmd.args(args);
    println!("$ {}", cmdline(&cmd));
    let err = cmd.exec();
    Err(err).with_context(|| format!("running `{}`", cmdline(&cmd)))
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (made absolute by [`prepare_env`]) or
/// `<root>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => root().join("target"),
    }
}

/// Where cargo puts the workspace's binaries for a profile.
pub fn bin_dir(release: bool) -> PathBuf {
    target_dir().join(if release { "release" } else { "debug" })
}

pub fn home() -> Result<PathBuf> {
    env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set")
}

pub fn cargo_home() -> Result<PathBuf> {
    match env::var_os("CARGO_HOME") {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir)),
        _ => Ok(home()?.join(".cargo")),
    }
}

/// Fix up the environment that every child process inherits:
/// - `cargo install` puts bpf-linker in `$CARGO_HOME/bin`, and aya-build looks it up on PATH;
/// - `cargo run` prepends the target dirs and the stable toolchain's lib dirs to
///   `LD_LIBRARY_PATH`, which must not leak into bpf-linker or the nightly toolchain;
/// - a relative `CARGO_TARGET_DIR` would mean something else to the cargo commands run here
///   from the workspace root.
fn prepare_env() -> Result<()> {
    let cargo_bin = cargo_home()?.join("bin");
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&path).collect();
    if !dirs.contains(&cargo_bin) {
        dirs.insert(0, cargo_bin);
        env::set_var("PATH", env::join_paths(dirs).context("joining PATH")?);
    }

    if let Some(dir) = env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        if !dir.as_os_str().is_empty() && dir.is_relative() {
            let cwd = env::current_dir().context("reading the current directory")?;
            env::set_var("CARGO_TARGET_DIR", cwd.join(dir));
        }
    }

    if let Some(value) = env::var_os("LD_LIBRARY_PATH") {
        let rustup_home = match env::var_os("RUSTUP_HOME") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => home()?.join(".rustup"),
        };
        let toolchains = rustup_home.join("toolchains");
        let target = target_dir();
        let kept: Vec<PathBuf> = env::split_paths(&value)
            .filter(|dir| !dir.starts_with(&target) && !dir.starts_with(&toolchains))
            .collect();
        if kept.is_empty() {
            env::remove_var("LD_LIBRARY_PATH");
        } else {
            let joined = env::join_paths(kept).context("joining LD_LIBRARY_PATH")?;
            env::set_var("LD_LIBRARY_PATH", joined);
        }
    }
    Ok(())
}

/// A command as it would be typed into a shell, with the environment variables it sets.
pub fn cmdline(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(key, value)| {
            let value = value?;
            Some(format!(
                "{}={}",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            ))
        })
        .collect();
    parts.push(quote(&cmd.get_program().to_string_lossy()));
    parts.extend(cmd.get_args().map(|arg| quote(&arg.to_string_lossy())));
    parts.join(" ")
}

fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Print a command, run it with inherited stdio, and fail (naming the command) unless it
/// succeeds.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let line = cmdline(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    check(status, &line)
}

pub fn check(status: ExitStatus, line: &str) -> Result<()> {
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Run a command quietly and return its stdout, failing (naming the command, with its stderr)
/// unless it succeeds.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let line = cmdline(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run a command quietly as a check: its stdout if it ran and succeeded, `None` otherwise.
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
