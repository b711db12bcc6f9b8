//! `cargo xtask test`: formatting, clippy, the Kubernetes manifests, the container images
//! (release, and one with another version string for the upgrade test), then every test — unit tests and the privileged
//! end-to-end tests that build testbeds (`testbed/tests/`, run by `outrider-testbed`
//! against the product binaries `outrider` and `outriderctl`, built here first: the tests
//! refuse a missing or stale one) — and finally a check that no namespace, cgroup or
//! kernel program of this run is left behind.
use std::process::Command;

use crate::{build_tools, image, manifests, root, run as sh};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let cargo = env!("CARGO");
    sh(Command::new(cargo).args(["fmt", "--all", "--", "--check"]))?;
    sh(Command::new(cargo).args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    manifests::run(&root().join("deploy"))?;
    // The images the end-to-end tests run (testbed/tests/image.rs): one built with another
    // version string first (it rebuilds the agent with OUTRIDER_VERSION), then the
    // release's from the release build the tests use too: `outrider` and `outriderctl`,
    // which `outrider-testbed`'s tests run but cargo does not build for them (no package
    // may depend on the tooling's, so the tooling's tests cannot have cargo build them).
    // Both from the `release` profile: what ships is the `dist` build of the same code,
    // whose whole-program LTO would add minutes of linking per version here.
    let next = image::run(
        Some(&format!("{}-next", env!("CARGO_PKG_VERSION"))),
        image::Profile::Release,
    )?;
    let tools = build_tools()?;
    let release = image::run(None, image::Profile::Release)?;
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
        sh(Command::new(&tools).args(["testbed", "leftovers", "--prefix", &format!("or{tag}")]));
    tests?;
    leftovers
}
