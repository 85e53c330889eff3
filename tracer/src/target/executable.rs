//! The target's executable, read once (a Go service's is tens of MB) for everything that
//! looks into it: Go's crypto/tls functions, a statically linked OpenSSL.

use std::{fs, path::PathBuf};

use anyhow::{Context as _, Result};
use object::{Object as _, ObjectSymbol as _};

pub struct Executable {
    /// `/proc/PID/exe`: opens the file the process runs, even in another mount namespace.
    pub path: PathBuf,
    /// What the link points to, for messages.
    pub shown_as: PathBuf,
    data: Vec<u8>,
}

impl Executable {
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
