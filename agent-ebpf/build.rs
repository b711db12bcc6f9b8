//! Rebuild the kernel programs when bpf-linker changes, and fail early with a clear
//! message when it is missing (`cargo xtask setup` installs it).
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("bpf") {
        return;
    }
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => panic!("bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
