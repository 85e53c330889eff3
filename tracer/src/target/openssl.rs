//! Finding the TLS library a target uses and hooking it: OpenSSL as a shared `libssl`
//! (through `/proc/PID/maps`, opened through `/proc/PID/root` so containers work) or linked
//! into the executable (its symbol table has `SSL_do_handshake`).

use std::path::{Path, PathBuf};

use procfs::process::{MMapPath, MemoryMap};

use super::Executable;

/// The OpenSSL a target uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSsl {
    /// What to call it in the output: `libssl.so.3`, or `static (/usr/bin/app)`.
    pub library: String,
    /// The file to probe, as this process can open it.
    pub path: PathBuf,
}

/// Find OpenSSL in the target: a mapped `libssl.so*`, else the executable's own symbols.
pub fn find_openssl(pid: u32, exe: Option<&Executable>) -> Option<OpenSsl> {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let maps = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.maps())
        .map(|maps| maps.0)
        .unwrap_or_default();
    if let Some(lib) = mapped_libssl(&maps) {
        let name = lib.file_name()?.to_string_lossy().into_owned();
        return Some(OpenSsl {
            library: name,
            path: root.join(lib.strip_prefix("/").unwrap_or(lib)),
        });
    }
    let exe = exe?;
    exe.defines("SSL_do_handshake").then(|| OpenSsl {
        library: format!("static ({})", exe.shown_as.display()),
        path: exe.path.clone(),
    })
}

/// The path of a mapped `libssl.so*` in a process's memory map.
pub fn mapped_libssl(maps: &[MemoryMap]) -> Option<&Path> {
    maps.iter()
        .filter_map(|m| match &m.pathname {
            MMapPath::Path(path) => Some(path.as_path()),
            _ => None,
        })
        .find(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libssl.so"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/PID/maps` text, as procfs reads it.
    fn maps(text: &str) -> Vec<MemoryMap> {
        use procfs::FromBufRead as _;
        procfs::process::MemoryMaps::from_buf_read(text.as_bytes())
            .unwrap()
            .0
    }

    #[test]
    fn libssl_is_found_in_maps() {
        let found = maps(
            "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:00 123 /usr/bin/openssl
7f1e2c000000-7f1e2c020000 r--p 00000000 fe:00 456 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1e2c100000-7f1e2c300000 r--p 00000000 fe:00 789 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7ffd1000-7ffd2000 rw-p 00000000 00:00 0 [stack]
",
        );
        assert_eq!(
            mapped_libssl(&found),
            Some(Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3"))
        );
        assert_eq!(
            mapped_libssl(&maps("7f00-7f01 r--p 0 fe:00 1 /lib/libc.so.6\n")),
            None
        );
    }

    #[test]
    fn symbols_are_read_from_elf_files() {
        let me = Executable::from_file(std::env::current_exe().unwrap());
        assert!(!me.defines("SSL_do_handshake"));
        assert!(me.defines("main"));
    }
}
