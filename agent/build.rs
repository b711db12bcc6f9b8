//! Builds the kernel programs (`agent-ebpf`, BPF target, nightly) with aya-build and
//! leaves the object in OUT_DIR, where `dataplane` embeds it.
fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "agent-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
