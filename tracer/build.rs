//! Builds the kernel programs (`tracer-ebpf`) with aya-build; with `AYA_BUILD_SKIP=1` (for
//! clippy), or without the `ebpf` feature (the library built for its types alone, as `xtask`
//! does), an empty placeholder is written instead and the binary refuses to attach.
fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "tracer-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer-ebpf"),
        ..Default::default()
    };
    let with_programs = std::env::var_os("CARGO_FEATURE_EBPF").is_some();
    let skip = std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true");
    if skip || !with_programs {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("tracer-ebpf");
        if !out.exists() {
            std::fs::write(out, [])?;
        }
    }
    if !with_programs {
        return Ok(());
    }
    // The programs are built from tracer-common's types and limits too: a change there must
    // rebuild them, or the collector refuses the stale ones at attach (a map size mismatch).
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer-common/src")
    );
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
