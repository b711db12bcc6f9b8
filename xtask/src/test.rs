//! `cargo xtask test`: formatting, clippy, the Kubernetes manifests, then every test — unit tests and the privileged
//! end-to-end tests that build testbeds — and finally a check that no namespace, cgroup or
//! kernel program of this run is left behind.
use std::process::Command;

use crate::{build_agent, manifests, root, run as sh};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let cargo = env!("CARGO");
    sh(Command::new(cargo).args(["fmt", "--all", "--", "--check"]))?;
    sh(Command::new(cargo).args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    manifests::run(&root().join("deploy"))?;
    let outrider = build_agent()?;
    // Every testbed of this run carries the tag, so the leftover check finds only ours.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tag = format!("{:04x}", (nanos ^ std::process::id()) & 0xffff);
    let tests = sh(Command::new(cargo)
        .args(["test", "--release"])
        .args(args)
        .env("OUTRIDER_TESTBED_TAG", &tag));
    let leftovers =
        sh(Command::new(&outrider).args(["testbed", "leftovers", "--prefix", &format!("or{tag}")]));
    tests?;
    leftovers
}
