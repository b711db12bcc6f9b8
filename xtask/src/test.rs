//! `cargo xtask test`: formatting, clippy, the Kubernetes manifests, the container images
//! (release, and one with another version string for the upgrade test), then every test — unit tests and the privileged
//! end-to-end tests that build testbeds — and finally a check that no namespace, cgroup or
//! kernel program of this run is left behind.
use std::process::Command;

use crate::{build_agent, image, manifests, root, run as sh};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let cargo = env!("CARGO");
    sh(Command::new(cargo).args(["fmt", "--all", "--", "--check"]))?;
    sh(Command::new(cargo).args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    manifests::run(&root().join("deploy"))?;
    // The images the end-to-end tests run (agent/tests/image.rs): one built with another
    // version string first (it rebuilds the agent with OUTRIDER_VERSION), then the
    // release's from the release build the tests use too.
    let next = image::run(Some(&format!("{}-next", env!("CARGO_PKG_VERSION"))))?;
    let outrider = build_agent()?;
    let release = image::run(None)?;
    // Every testbed of this run carries the tag, so the leftover check finds only ours.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tag = format!("{:04x}", (nanos ^ std::process::id()) & 0xffff);
    let tests = sh(Command::new(cargo)
        .args(["test", "--release"])
        .args(args)
        .env("OUTRIDER_TESTBED_TAG", &tag)
        .env("OUTRIDER_TEST_IMAGE", &release.local)
        .env("OUTRIDER_TEST_IMAGE_NEXT", &next.local)
        .env_remove("OUTRIDER_VERSION"));
    let leftovers =
        sh(Command::new(&outrider).args(["testbed", "leftovers", "--prefix", &format!("or{tag}")]));
    tests?;
    leftovers
}
