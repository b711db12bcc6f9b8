//! `cargo xtask codegen`: regenerates the files derived from the agent's Rust types, by
//! building the tooling's `outrider-testbed` (not the product binary: the agent ships no
//! code generator) and running its hidden `outrider-testbed codegen …` commands. Today one
//! file: `deploy/base/authorizationpolicy-crd.yaml`, the AuthorizationPolicy
//! CustomResourceDefinition (from `agent/src/policy/model.rs`; a unit test in
//! `agent/src/policy/crd.rs` fails when it is stale).
use std::{fs, process::Command};

use anyhow::{Context, bail};

use crate::{build_tools, root};

/// Where the definition goes, from the workspace root.
const CRD_FILE: &str = "deploy/base/authorizationpolicy-crd.yaml";

pub fn run() -> anyhow::Result<()> {
    let tools = build_tools()?;
    eprintln!("xtask: $ {} codegen crd", tools.display());
    let output = Command::new(&tools)
        .args(["codegen", "crd"])
        .current_dir(root())
        .output()
        .with_context(|| format!("cannot start {}", tools.display()))?;
    if !output.status.success() {
        bail!(
            "{} codegen crd failed ({}): {}",
            tools.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let path = root().join(CRD_FILE);
    let dir = path.parent().expect("the file is in a directory");
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let unchanged = fs::read(&path).is_ok_and(|old| old == output.stdout);
    if unchanged {
        eprintln!("xtask: codegen: {CRD_FILE} is up to date");
    } else {
        fs::write(&path, &output.stdout)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("xtask: codegen: wrote {CRD_FILE}");
    }
    Ok(())
}
