//! The output directory and how files are written into it, safely in a directory other users
//! may write to, and without losing the trace when the disk fills up.
//!
//! - Every file is created under a fresh name, exclusively (`O_CREAT|O_EXCL|O_NOFOLLOW`), so
//!   a symlink or file planted under any name is never followed, truncated or written: a
//!   taken name is skipped for another one. At the end the file is renamed over its final
//!   name (`rename(2)` replaces a planted symlink itself, never its target).
//! - Every operation is relative to the directory opened once by the pre-flight check, so
//!   renaming or replacing the directory's path meanwhile cannot send files elsewhere.
//! - A write that fails is reported once, on one stderr line; the file is cut back to its
//!   last whole line and not written further, and tracing goes on. [`OutFile::outcome`]
//!   says what became of each file, for the final report.

use std::{
    fs::{self, File},
    io::{self, Write as _},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::Result;
use nix::{
    errno::Errno,
    fcntl::{self, OFlag},
    sys::stat::Mode,
    unistd::UnlinkatFlags,
};

pub const SUMMARY: &str = "summary.json";
pub const HLOG: &str = "latency.hlog";
pub const REQUESTS: &str = "requests.jsonl";
/// The waits' call sites: folded stacks and their flame graph (`flame.rs`).
pub const WAITS_FOLDED: &str = "waits.folded";
pub const WAITS_SVG: &str = "waits.svg";
/// The files a run writes. The first one a run moves into place removes the previous run's
/// files first, so the directory never pairs files of two runs.
const RUN_FILES: [&str; 5] = [SUMMARY, HLOG, REQUESTS, WAITS_FOLDED, WAITS_SVG];
/// Suffix of the name a file has while it is being written (`requests.jsonl.PID.partial`).
pub const PARTIAL: &str = ".partial";
/// Fresh names tried before giving up (the first is `STEM.PID`, the others random).
const NAME_ATTEMPTS: u32 = 16;

/// The output directory, open for the whole run.
pub struct OutputDir {
    path: PathBuf,
    fd: OwnedFd,
    previous_run_removed: AtomicBool,
}

impl OutputDir {
    pub fn open(path: &Path) -> io::Result<OutputDir> {
        let fd = fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(OutputDir {
            path: path.to_path_buf(),
            fd,
            previous_run_removed: AtomicBool::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Prove that files can be created here: create `STEM.PID` (or another fresh name)
    /// exclusively, then remove it.
    pub fn check_writable(&self, stem: &str) -> io::Result<()> {
        let (file, name) = self.create_fresh(stem, "")?;
        drop(file);
        self.remove(&name)
    }

    /// Create a new, empty file under a name nothing had: `STEM.PID SUFFIX`, or, when that is
    /// taken (by anything, a symlink included), `STEM.PID-RANDOM SUFFIX`.
    fn create_fresh(&self, stem: &str, suffix: &str) -> io::Result<(File, String)> {
        let pid = std::process::id();
        let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
        for attempt in 0..NAME_ATTEMPTS {
            let name = match attempt {
                0 => format!("{stem}.{pid}{suffix}"),
                _ => format!("{stem}.{pid}-{:016x}{suffix}", random_u64()),
            };
            let created = fcntl::openat(
                &self.fd,
                name.as_str(),
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o666),
            );
            match created {
                Ok(fd) => return Ok((File::from(fd), name)),
                Err(Errno::EEXIST) => last = Errno::EEXIST.into(),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last)
    }

    /// Rename `from` over `to` in this directory: whatever `to` was (a file, a symlink) is
    /// replaced, never written. The first file of a run placed removes the previous run's.
    fn place(&self, from: &str, to: &str) -> io::Result<()> {
        if !self.previous_run_removed.swap(true, Ordering::Relaxed) {
            for name in RUN_FILES {
                let _ = self.remove(name);
            }
        }
        fcntl::renameat(&self.fd, from, &self.fd, to)?;
        // The rename is durable once the directory is synced (the data was synced before).
        let _ = nix::unistd::fsync(&self.fd);
        Ok(())
    }

    /// Remove the name `name` (a symlink is removed itself; a missing name is no error).
    fn remove(&self, name: &str) -> io::Result<()> {
        match nix::unistd::unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Different on each call, and not guessable from the PID alone: std's `RandomState` is
/// seeded from the OS's random source once per process and then advanced per instance.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish()
}

/// What became of a file at the end of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Complete, under its final name.
    Written,
    /// Under its final name, but it stops where a write failed (the error).
    StopsEarly(String),
    /// Not written (the error); no file of that name is left from an earlier run.
    NotWritten(String),
}

/// A file of the output directory, written under a fresh `NAME.PID.partial` name and moved
/// over `NAME` by [`OutFile::commit`] (or when dropped, on an error or a panic).
pub struct OutFile {
    dir: Arc<OutputDir>,
    name: &'static str,
    /// The partial name, while the file is there.
    temp: Option<String>,
    /// None once a write failed.
    file: Option<File>,
    /// Bytes in the file (whole lines).
    len: u64,
    /// The first failure.
    error: Option<String>,
    outcome: Option<Outcome>,
    /// Written to while tracing (its failure does not end the trace).
    while_tracing: bool,
}

impl OutFile {
    /// Create `NAME.PID.partial`. A failure is reported (once) and leaves a file that takes
    /// no writes; the run goes on.
    pub fn create(dir: &Arc<OutputDir>, name: &'static str) -> OutFile {
        Self::open(dir, name, true)
    }

    fn open(dir: &Arc<OutputDir>, name: &'static str, while_tracing: bool) -> OutFile {
        let mut f = OutFile {
            dir: Arc::clone(dir),
            name,
            temp: None,
            file: None,
            len: 0,
            error: None,
            outcome: None,
            while_tracing,
        };
        match dir.create_fresh(name, PARTIAL) {
            Ok((file, temp)) => {
                f.file = Some(file);
                f.temp = Some(temp);
            }
            Err(e) => f.fail(&e),
        }
        f
    }

    /// The final path, for messages.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join(self.name)
    }

    /// Whether writes still go to the file.
    pub fn is_writable(&self) -> bool {
        self.file.is_some()
    }

    /// Append `bytes` (whole lines) with one `write(2)`, more only if the kernel takes part
    /// of them. On a failure the file is cut back to its last whole line, the failure is
    /// reported on stderr, and nothing more is written to this file. Returns how many bytes
    /// of `bytes` the file keeps.
    pub fn write(&mut self, bytes: &[u8]) -> usize {
        let Some(file) = &mut self.file else {
            return 0;
        };
        let mut done = 0;
        let error = loop {
            if done == bytes.len() {
                self.len += done as u64;
                return done;
            }
            match file.write(&bytes[done..]) {
                Ok(0) => break io::Error::from(io::ErrorKind::WriteZero),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break e,
            }
        };
        let kept = bytes[..done]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        self.len += kept as u64;
        // Shrinking needs no space.
        let _ = file.set_len(self.len);
        self.fail(&error);
        kept
    }

    /// Record and report the first failure; stop writing.
    pub fn fail(&mut self, e: &dyn std::fmt::Display) {
        self.file = None;
        if self.error.is_some() {
            return;
        }
        let msg = e.to_string();
        let consequence = if self.while_tracing {
            " It keeps the lines written until now and takes no more; tracing goes on."
        } else {
            ""
        };
        eprintln!(
            "tracer: cannot write {}: {msg}.{consequence} {}",
            self.path().display(),
            hint(&msg)
        );
        self.error = Some(msg);
    }

    /// Move the file over its final name, with what it holds (after a failure: its whole
    /// lines up to the failure). A file that was never created removes the final name, so
    /// no earlier run's file is left there. Idempotent.
    pub fn commit(&mut self) -> Outcome {
        if let Some(outcome) = &self.outcome {
            return outcome.clone();
        }
        self.while_tracing = false;
        let outcome = match self.temp.take() {
            None => {
                let _ = self.dir.remove(self.name);
                Outcome::NotWritten(self.error.clone().unwrap_or_default())
            }
            Some(temp) => {
                if let Some(file) = &self.file {
                    if let Err(e) = file.sync_all() {
                        self.fail(&e);
                    }
                }
                self.file = None;
                match self.dir.place(&temp, self.name) {
                    Ok(()) => match &self.error {
                        None => Outcome::Written,
                        Some(e) => Outcome::StopsEarly(e.clone()),
                    },
                    Err(e) => {
                        let msg = format!(
                            "{e} (moving {} into place; the data is in {temp})",
                            self.name
                        );
                        self.fail(&msg);
                        Outcome::NotWritten(msg)
                    }
                }
            }
        };
        self.outcome = Some(outcome.clone());
        outcome
    }

    /// Give up the file: remove it, and the final name, so no earlier run's file is left.
    pub fn discard(&mut self) -> Outcome {
        if let Some(temp) = self.temp.take() {
            let _ = self.dir.remove(&temp);
        }
        self.file = None;
        let _ = self.dir.remove(self.name);
        let outcome = Outcome::NotWritten(self.error.clone().unwrap_or_default());
        self.outcome = Some(outcome.clone());
        outcome
    }
}

impl Drop for OutFile {
    /// A run that ends on an error or a panic still leaves what it wrote under the final
    /// name. (A SIGKILL leaves it under the `.partial` name.)
    fn drop(&mut self) {
        if self.outcome.is_none() {
            self.commit();
        }
    }
}

/// Write a whole file: `NAME.PID.partial`, synced, then renamed over `NAME`. On a failure,
/// no `NAME` is left (not even an earlier run's), and the failure is reported on stderr.
pub fn write_file(dir: &Arc<OutputDir>, name: &'static str, bytes: &[u8]) -> Outcome {
    let mut file = OutFile::open(dir, name, false);
    if file.write(bytes) == bytes.len() {
        file.commit()
    } else {
        file.discard()
    }
}

/// What to do about a write error, for the one line that reports it.
fn hint(msg: &str) -> &'static str {
    let full = [libc::ENOSPC, libc::EDQUOT]
        .iter()
        .any(|&code| msg.contains(&format!("(os error {code})")));
    if full {
        "Free space on that filesystem, or trace with --output DIR on another one."
    } else {
        "Check that filesystem, or trace with --output DIR on another one."
    }
}

/// The final report on the files: `None` when all were written, else one sentence naming
/// each incomplete file and why.
pub fn incomplete(dir: &Path, files: &[(&str, &Outcome)]) -> Option<String> {
    let parts: Vec<String> = files
        .iter()
        .filter_map(|(name, outcome)| match outcome {
            Outcome::Written => None,
            Outcome::StopsEarly(e) => Some(format!("{name} stops early ({e})")),
            Outcome::NotWritten(e) => Some(format!("{name} was not written ({e})")),
        })
        .collect();
    (!parts.is_empty()).then(|| {
        format!(
            "the files in {} are incomplete: {}; the summary printed above covers the whole trace",
            dir.display(),
            parts.join(", ")
        )
    })
}

/// Create the output directory, open it for the run and prove files can be created in it
/// (under a fresh name, created exclusively and removed: nothing there is followed or
/// truncated), before attaching anything.
pub fn prepare_output(dir: &Path) -> Result<OutputDir> {
    let unwritable = |e: std::io::Error| {
        anyhow::anyhow!(
            "cannot write to output directory {} ({e}): choose another with --output DIR",
            dir.display()
        )
    };
    fs::create_dir_all(dir).map_err(unwritable)?;
    let out = OutputDir::open(dir).map_err(unwritable)?;
    out.check_writable(".tracer-write-test")
        .map_err(unwritable)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "tracer-output-{name}-{}-{:x}",
                std::process::id(),
                random_u64()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn planted_symlinks_are_replaced_not_followed() {
        let scratch = Scratch::new("symlinks");
        let victim = scratch.0.join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let out = scratch.0.join("out");
        std::fs::create_dir(&out).unwrap();
        let pid = std::process::id();
        for name in [
            SUMMARY.to_string(),
            format!("{SUMMARY}.{pid}{PARTIAL}"),
            format!(".tracer-write-test.{pid}"),
        ] {
            symlink(&victim, out.join(name)).unwrap();
        }
        let dir = Arc::new(OutputDir::open(&out).unwrap());
        dir.check_writable(".tracer-write-test").unwrap();
        assert_eq!(write_file(&dir, SUMMARY, b"{}\n"), Outcome::Written);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        let meta = std::fs::symlink_metadata(out.join(SUMMARY)).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(std::fs::read_to_string(out.join(SUMMARY)).unwrap(), "{}\n");
    }

    #[test]
    fn a_dropped_file_is_moved_into_place_and_a_failed_one_leaves_no_stale_file() {
        let scratch = Scratch::new("drop");
        std::fs::write(scratch.0.join(REQUESTS), "old run\n").unwrap();
        std::fs::write(scratch.0.join(SUMMARY), "old run\n").unwrap();
        let dir = Arc::new(OutputDir::open(&scratch.0).unwrap());
        {
            let mut f = OutFile::create(&dir, REQUESTS);
            assert_eq!(f.write(b"{\"a\":1}\n"), 8);
            assert_eq!(names(&scratch.0).len(), 3, "{:?}", names(&scratch.0));
        }
        // The previous run's summary.json went with the first file of this run.
        assert_eq!(names(&scratch.0), vec![REQUESTS.to_string()]);
        assert_eq!(
            std::fs::read_to_string(scratch.0.join(REQUESTS)).unwrap(),
            "{\"a\":1}\n"
        );
        let mut f = OutFile::create(&dir, REQUESTS);
        f.fail(&"No space left on device (os error 28)");
        assert_eq!(f.write(b"x\n"), 0);
        assert_eq!(
            f.commit(),
            Outcome::StopsEarly("No space left on device (os error 28)".into())
        );
        assert_eq!(
            std::fs::read_to_string(scratch.0.join(REQUESTS)).unwrap(),
            ""
        );
        let mut f = OutFile::create(&dir, REQUESTS);
        assert!(matches!(f.discard(), Outcome::NotWritten(_)));
        assert!(names(&scratch.0).is_empty(), "{:?}", names(&scratch.0));
    }

    #[test]
    fn incomplete_names_each_file_and_why() {
        let full = Outcome::StopsEarly("No space left on device (os error 28)".into());
        let none = Outcome::NotWritten("No space left on device (os error 28)".into());
        let msg = incomplete(
            Path::new("/mnt/x"),
            &[
                (SUMMARY, &none),
                (HLOG, &Outcome::Written),
                (REQUESTS, &full),
            ],
        )
        .unwrap();
        assert!(
            msg.starts_with("the files in /mnt/x are incomplete: "),
            "{msg}"
        );
        assert!(
            msg.contains("summary.json was not written (No space"),
            "{msg}"
        );
        assert!(
            msg.contains("requests.jsonl stops early (No space"),
            "{msg}"
        );
        assert!(!msg.contains(HLOG), "{msg}");
        assert_eq!(
            incomplete(Path::new("/x"), &[(HLOG, &Outcome::Written)]),
            None
        );
        assert_eq!(
            crate::output::summary::IncompleteFile::list(&[
                (HLOG, &Outcome::Written),
                (REQUESTS, &full)
            ]),
            [crate::output::summary::IncompleteFile {
                file: "requests.jsonl".to_string(),
                error: "No space left on device (os error 28)".to_string(),
            }]
        );
        assert!(hint("No space left on device (os error 28)").starts_with("Free space"));
        assert!(hint("Input/output error (os error 5)").starts_with("Check"));
    }

    #[test]
    fn unwritable_output_is_a_clear_error() {
        let err = prepare_output(Path::new("/proc/version/x"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--output"), "{err}");
    }
}
