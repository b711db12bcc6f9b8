//! `cargo xtask setup`: make a fresh machine able to build and test Outrider. Each step
//! checks first and only installs what is missing, so running it again costs seconds.
use std::process::Command;

use anyhow::{Context, bail};

use crate::run as sh;

/// bpf-linker that works with the preinstalled nightly's LLVM (see DESIGN.md).
const BPF_LINKER_VERSION: &str = "0.10.0";

/// What the tests, the demo and the testbed run (Debian package names).
const APT_PACKAGES: &[&str] = &[
    "iproute2",     // ip: the testbed's namespaces, links and routes
    "iputils-ping", // the testbed's connectivity check
    "util-linux",   // nsenter
    "curl",         // HTTP client workload
    "socat",        // TCP workloads in the end-to-end tests
    "python3",      // the demo's HTTP server (python3 -m http.server)
    "coreutils",    // sha256sum, head
    "tcpdump",      // captures on the testbed's links (is the tunnel encrypted?)
    "openssl",      // a TLS client that presents foreign or expired certificates
    "iperf3",       // bulk TCP workloads of known sizes
    "nginx-light",  // an HTTP/1.1 and cleartext HTTP/2 server app (policy, telemetry tests)
    "iptables",     // sidecar mode's capture rules (outrider sidecar-init)
    "prometheus",   // promtool, which checks the agent's metrics exposition
    "python3-venv", // the venv of the manifest checkers and gRPC clients (see PYTHON_TOOLS)
    "buildah",      // cargo xtask image: builds the image FROM scratch, no daemon
    "podman",       // runs the image in the end-to-end tests (testbed/tests/image.rs)
    "runc",         // podman's runtime here (crun refuses the hybrid cgroup layout)
    "binutils",     // strip: the image's binaries without debug information
];

/// Python packages, pinned, in a venv under target/ (PyPI packages, not Debian's: these
/// versions are not packaged there): the tools that check the Kubernetes manifests (see
/// manifests.rs), and gRPC's C core as Python users get it — grpcio, with protoc for stubs
/// (grpcio-tools), health and reflection — for the admin API's interop test
/// (testbed/tests/admin_grpcio.rs).
const PYTHON_TOOLS: &[&str] = &[
    "kubernetes-validate==1.37.0",
    "checkov==3.3.30",
    "grpcio==1.85.3",
    "grpcio-tools==1.85.1",
    "grpcio-health-checking==1.85.1",
    "grpcio-reflection==1.85.1",
];

pub fn run() -> anyhow::Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    apt_packages()?;
    python_tools()?;
    eprintln!("xtask: setup complete");
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("rustup has no nightly toolchain; the kernel programs need it (see DESIGN.md)")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    sh(Command::new("cargo").args([
        "+nightly",
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--force",
    ]))
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix_is_root() {
        bail!("missing packages {missing:?}; run `cargo xtask setup` as root (it uses apt-get)");
    }
    sh(Command::new("apt-get").args(["update", "-q"]))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The venv `target/xtask-venv` with [`PYTHON_TOOLS`]; a marker file holding the pinned
/// list says it is complete, so a second run only reads it.
fn python_tools() -> anyhow::Result<()> {
    let venv = crate::root().join(crate::manifests::VENV);
    let marker = venv.join("outrider-tools.txt");
    let wanted = PYTHON_TOOLS.join("\n");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        return Ok(());
    }
    if !venv.join("bin/python").exists() {
        sh(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    sh(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PYTHON_TOOLS))?;
    std::fs::write(&marker, wanted).with_context(|| format!("cannot write {}", marker.display()))
}

fn nix_is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}
