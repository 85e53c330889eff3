//! Finding the TLS library a target uses and hooking it: OpenSSL as a shared `libssl`
//! (through `/proc/PID/maps`, opened through `/proc/PID/root` so containers work) or linked
//! into the executable (its symbol table has `SSL_do_handshake`).

use std::{
    fs,
    path::{Path, PathBuf},
};

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
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    if let Some(lib) = mapped_libssl(&maps) {
        let name = Path::new(lib).file_name()?.to_string_lossy().into_owned();
        return Some(OpenSsl {
            library: name,
            path: root.join(lib.trim_start_matches('/')),
        });
    }
    let exe = exe?;
    exe.defines("SSL_do_handshake").then(|| OpenSsl {
        library: format!("static ({})", exe.shown_as.display()),
        path: exe.path.clone(),
    })
}

/// The path of a mapped `libssl.so*` in /proc/PID/maps text.
pub fn mapped_libssl(maps: &str) -> Option<&str> {
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            Path::new(path)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libssl.so"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libssl_is_found_in_maps() {
        let maps = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:00 123 /usr/bin/openssl
7f1e2c000000-7f1e2c020000 r--p 00000000 fe:00 456 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1e2c100000-7f1e2c300000 r--p 00000000 fe:00 789 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7ffd1000-7ffd2000 rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(
            mapped_libssl(maps),
            Some("/usr/lib/x86_64-linux-gnu/libssl.so.3")
        );
        assert_eq!(
            mapped_libssl("7f00-7f01 r--p 0 fe:00 1 /lib/libc.so.6\n"),
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
