//! Finding the TLS library a target uses and hooking it: OpenSSL as a shared `libssl`
//! (through `/proc/PID/maps`, opened through `/proc/PID/root` so containers work) or linked
//! into the executable (its symbol table has `SSL_do_handshake`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
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

/// The functions of `names` that `path`'s symbol tables define (the dynamic symbols, as a
/// shared library exports them, then the static ones), each with its entry's file offset,
/// where a uprobe goes; in the order of `names`, the missing ones left out.
pub fn function_offsets(path: &Path, names: &[&'static str]) -> Result<Vec<(&'static str, u64)>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file =
        object::File::parse(&*data).with_context(|| format!("parsing {}", path.display()))?;
    let mut found = Vec::new();
    for &name in names {
        let symbol = file
            .dynamic_symbols()
            .chain(file.symbols())
            .find(|s| s.is_definition() && s.name() == Ok(name));
        if let Some(symbol) = symbol {
            found.push((name, file_offset(&file, &symbol).context(name)?));
        }
    }
    Ok(found)
}

/// Where `symbol`'s address is in the file: its section's file offset plus its place in the
/// section.
fn file_offset(file: &object::File, symbol: &object::Symbol) -> Result<u64> {
    let index = symbol.section_index().context("not in a section")?;
    let section = file.section_by_index(index)?;
    let (start, _) = section
        .file_range()
        .context("its section has no file data")?;
    Ok(symbol.address() - section.address() + start)
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

    #[no_mangle]
    #[inline(never)]
    extern "C" fn tracer_openssl_test_function() -> u32 {
        std::hint::black_box(7)
    }

    /// The file offset found for a function is where this process's memory map puts the
    /// function it runs.
    #[test]
    fn a_functions_file_offset_is_where_the_process_maps_it() {
        let path = std::env::current_exe().unwrap();
        let found =
            function_offsets(&path, &["no_such_function", "tracer_openssl_test_function"]).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        let address = tracer_openssl_test_function as *const () as usize as u64;
        assert_eq!(tracer_openssl_test_function(), 7);
        let me = procfs::process::Process::myself().unwrap();
        let map = me
            .maps()
            .unwrap()
            .0
            .into_iter()
            .find(|m| (m.address.0..m.address.1).contains(&address))
            .expect("the function is mapped");
        assert_eq!(found[0].1, address - map.address.0 + map.offset);
    }
}
