//! The target's executable, read once (a Go service's is tens of MB) for everything that
//! looks into it: Go's crypto/tls functions, a statically linked OpenSSL.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use object::{Object as _, ObjectSymbol as _};
use procfs::process::{MMapPath, MemoryMap};

pub struct Executable {
    /// `/proc/PID/exe`: opens the file the process runs, even in another mount namespace.
    pub path: PathBuf,
    /// What the link points to, for messages.
    pub shown_as: PathBuf,
    data: Vec<u8>,
}

impl Executable {
    /// What to add to an address of the executable as linked to get where process `pid` has
    /// it: 0 for a fixed-address executable, the load address for a position-independent
    /// one. From the mapping of the executable's file at offset 0 (see [`mappings`]).
    pub fn load_bias(&self, pid: u32) -> Result<u64> {
        use object::{Object as _, ObjectSegment as _};
        let start = mappings(pid, &self.path)?
            .iter()
            .find(|m| m.offset == 0)
            .map(|m| m.address.0)
            .context("the executable is not in the process's memory map")?;
        let lowest = self
            .elf()?
            .segments()
            .map(|s| s.address())
            .min()
            .unwrap_or(0);
        Ok(start.wrapping_sub(lowest & !0xfff))
    }

    pub fn read(pid: u32) -> Result<Self> {
        let path = PathBuf::from(format!("/proc/{pid}/exe"));
        let data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let shown_as = fs::read_link(&path).unwrap_or_else(|_| path.clone());
        Ok(Executable {
            path,
            shown_as,
            data,
        })
    }

    /// The file's bytes, for a reader that keeps them (the Go symbolizer), so that the file
    /// is not read again.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// The parsed ELF file.
    pub fn elf(&self) -> Result<object::File<'_>> {
        object::File::parse(&*self.data).context("parsing the target's executable")
    }

    /// Whether its symbol tables define `name`.
    pub fn defines(&self, name: &str) -> bool {
        self.elf().is_ok_and(|file| {
            file.symbols()
                .chain(file.dynamic_symbols())
                .any(|s| s.is_definition() && s.name() == Ok(name))
        })
    }

    /// An executable read from a file (tests).
    #[cfg(test)]
    pub fn from_file(path: PathBuf) -> Self {
        let data = fs::read(&path).unwrap();
        Executable {
            shown_as: path.clone(),
            path,
            data,
        }
    }
}

/// The mappings of executable `exe_path` (`/proc/PID/exe`) in process `pid`'s memory map, in
/// its order: by inode, or by the path the link names (overlay file systems can show another
/// inode in the memory map than `stat` does).
pub fn mappings(pid: u32, exe_path: &Path) -> Result<Vec<MemoryMap>> {
    use std::os::unix::fs::MetadataExt as _;
    let inode = fs::metadata(exe_path)?.ino();
    let path = fs::read_link(exe_path).ok();
    let maps = procfs::process::Process::new(pid as i32)?.maps()?;
    Ok(maps
        .into_iter()
        .filter(|m| {
            let same_path = matches!((&m.pathname, &path),
                (MMapPath::Path(p), Some(exe)) if p == exe);
            m.inode == inode || same_path
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_s_executable_is_found_in_its_memory_map() {
        let pid = std::process::id();
        let found = mappings(pid, Path::new(&format!("/proc/{pid}/exe"))).unwrap();
        assert!(found.iter().any(|m| m.offset == 0), "{found:?}");
        assert!(found
            .iter()
            .any(|m| m.perms.contains(procfs::process::MMPermissions::EXECUTE)));
        // This function's code is in one of them.
        let here = this_process_s_executable_is_found_in_its_memory_map as *const () as u64;
        assert!(found
            .iter()
            .any(|m| (m.address.0..m.address.1).contains(&here)));
        Executable::read(pid).unwrap().load_bias(pid).unwrap();
    }
}
