//! Builds the kernel programs (`tracer-ebpf`) with aya-build; with `AYA_BUILD_SKIP=1` (for
//! clippy) an empty placeholder is written instead and the binary refuses to attach.
fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "tracer-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer-ebpf"),
        ..Default::default()
    };
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true") {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("tracer-ebpf");
        if !out.exists() {
            std::fs::write(out, [])?;
        }
    }
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
