//! `/disk`'s scratch file: one per connection.

use std::fs::{self, File};
use std::io::{self, Seek, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Size of each `write()` made by `/disk`.
const DISK_CHUNK: usize = 64 * 1024;
/// Non-zero data written by `/disk`.
static DISK_DATA: [u8; DISK_CHUNK] = [0xa5; DISK_CHUNK];

/// A connection's scratch file for `/disk`: created by the first `/disk` and overwritten in
/// place by the next ones (no truncate or unlink inside a request: those would block in
/// syscalls that are not disk writes), removed when dropped.
pub struct ScratchFile {
    path: PathBuf,
    file: Option<File>,
}

impl ScratchFile {
    /// A file at `path`, created when first written.
    pub fn new(path: PathBuf) -> Self {
        Self { path, file: None }
    }

    /// Writes `kb` KiB at the start of the file, then fsyncs. Returns the fsync's time.
    pub fn write_and_sync(&mut self, kb: u64) -> Result<Duration> {
        let path = &self.path;
        let file = match &mut self.file {
            Some(file) => file,
            slot => {
                let file = fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(path)
                    .with_context(|| format!("open {}", path.display()))?;
                slot.insert(file)
            }
        };
        overwrite_and_sync(file, kb).with_context(|| format!("write {}", path.display()))
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Writes `kb` KiB from the start of `file` in [`DISK_CHUNK`] writes and fsyncs.
/// Returns (writes + fsync time, fsync time).
fn overwrite_and_sync(file: &mut File, kb: u64) -> io::Result<Duration> {
    file.seek(io::SeekFrom::Start(0))?;
    let mut remaining = usize::try_from(kb * 1024).map_err(io::Error::other)?;
    while remaining > 0 {
        let n = remaining.min(DISK_CHUNK);
        file.write_all(&DISK_DATA[..n])?;
        remaining -= n;
    }
    let fsync_start = Instant::now();
    file.sync_all()?;
    Ok(fsync_start.elapsed())
}
