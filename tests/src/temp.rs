//! Scratch paths under the temp dir, removed when dropped (also when a test fails, unless
//! `TRACER_TEST_KEEP=1`: then a failing test's paths are kept, for its tracer output and
//! the programs it built).

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

/// A path under the temp dir unique to this test process, `tracer-test-NAME-PID-SEQ`, removed
/// with its contents when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh path, not created: the tracer creates its output directory itself.
    pub fn absent(name: &str) -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "tracer-test-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        // Left behind by an earlier test process with the same PID.
        let _ = std::fs::remove_dir_all(&path);
        let _ = std::fs::remove_file(&path);
        TempDir(path)
    }

    /// A fresh, empty directory.
    pub fn new(name: &str) -> TempDir {
        let dir = Self::absent(name);
        std::fs::create_dir(&dir.0)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.0.display()));
        dir
    }

    /// A fresh, empty directory every user may write to (mode 0777): for a tracer run as
    /// `nobody`, or one where another user plants files.
    pub fn open_to_all(name: &str) -> TempDir {
        let dir = Self::new(name);
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777))
            .unwrap_or_else(|e| panic!("cannot open {} to all users: {e}", dir.0.display()));
        dir
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && std::env::var_os("TRACER_TEST_KEEP").is_some_and(|v| v == "1")
        {
            eprintln!("kept {} (TRACER_TEST_KEEP=1)", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}
