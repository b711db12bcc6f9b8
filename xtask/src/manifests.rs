//! `cargo xtask manifests` (and a step of `cargo xtask test`): checks the Kubernetes
//! install under `deploy/` with the tools `cargo xtask setup` puts in a Python venv
//! (`target/xtask-venv`):
//!
//! 1. `deploy/base/kustomization.yaml` lists exactly the files in `deploy/base` (every
//!    manifest and generator input, none missing; `*.md` aside);
//! 2. every YAML document under `deploy/` validates against the Kubernetes API schema
//!    ([`KUBERNETES_VERSION`], strict: no unknown fields) — kustomization files aside,
//!    as they are not API objects;
//! 3. checkov finds nothing in `deploy/base` (each accepted finding is skipped in the
//!    manifest with its reason, see deploy/README.md).
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, bail};

use crate::root;

/// The Python venv with kubernetes-validate and checkov (made by `cargo xtask setup`).
pub const VENV: &str = "target/xtask-venv";

/// The Kubernetes API the manifests must be valid for: the oldest we support (the
/// k8s-openapi floor).
pub const KUBERNETES_VERSION: &str = "1.33.0";

const KUSTOMIZATION: &str = "kustomization.yaml";

/// A program of the venv.
pub fn venv_bin(name: &str) -> PathBuf {
    root().join(VENV).join("bin").join(name)
}

pub fn run(deploy: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    for tool in ["python", "kubernetes-validate", "checkov"] {
        if !venv_bin(tool).exists() {
            bail!(
                "{} is missing; run `cargo xtask setup`",
                venv_bin(tool).display()
            );
        }
    }
    let base = deploy.join("base");
    check_kustomization(&base)?;
    validate_schemas(deploy)?;
    checkov(&base)?;
    eprintln!(
        "xtask: manifests: all checks passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Step 1: the kustomization's file list against the directory.
fn check_kustomization(base: &Path) -> anyhow::Result<()> {
    let path = base.join(KUSTOMIZATION);
    let kustomization = yaml_as_json(&path)?;
    let listed = listed_files(&kustomization);
    let present = files_under(base)?
        .into_iter()
        .filter_map(|p| {
            let relative = p.strip_prefix(base).ok()?.to_string_lossy().into_owned();
            (relative != KUSTOMIZATION && !relative.ends_with(".md")).then_some(relative)
        })
        .collect();
    let problems = mismatch(&listed, &present);
    if !problems.is_empty() {
        bail!("{}:\n  {}", path.display(), problems.join("\n  "));
    }
    eprintln!(
        "xtask: manifests: {} lists exactly the {} files of {}",
        KUSTOMIZATION,
        listed.len(),
        base.display()
    );
    Ok(())
}

/// The files a kustomization refers to: `resources` that are files (not directories or
/// URLs), and the inputs of `configMapGenerator` and `secretGenerator` (`files`, with
/// an optional `key=` prefix, and `envs`).
fn listed_files(kustomization: &serde_json::Value) -> BTreeSet<String> {
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut listed: BTreeSet<String> = strings(&kustomization["resources"])
        .into_iter()
        .filter(|r| r.ends_with(".yaml") || r.ends_with(".yml") || r.ends_with(".json"))
        .filter(|r| !r.contains("://"))
        .collect();
    for generator in ["configMapGenerator", "secretGenerator"] {
        for entry in kustomization[generator].as_array().into_iter().flatten() {
            for file in strings(&entry["files"]) {
                let path = file.split_once('=').map_or(file.as_str(), |(_, p)| p);
                listed.insert(path.to_string());
            }
            listed.extend(strings(&entry["envs"]));
        }
    }
    listed
        .into_iter()
        .map(|p| p.trim_start_matches("./").to_string())
        .collect()
}

/// What differs between the listed and the present files, one line each.
fn mismatch(listed: &BTreeSet<String>, present: &BTreeSet<String>) -> Vec<String> {
    let missing = listed
        .difference(present)
        .map(|f| format!("lists {f}, which does not exist"));
    let unlisted = present
        .difference(listed)
        .map(|f| format!("does not list {f} (add it, or remove the file)"));
    missing.chain(unlisted).collect()
}

/// Step 2: kubernetes-validate on every YAML file under `deploy/`.
fn validate_schemas(deploy: &Path) -> anyhow::Result<()> {
    let files: Vec<PathBuf> = files_under(deploy)?
        .into_iter()
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            let yaml = p.extension().is_some_and(|e| e == "yaml" || e == "yml");
            yaml && !name.is_some_and(|n| n.starts_with("kustomization."))
        })
        .collect();
    if files.is_empty() {
        bail!("no YAML files under {}", deploy.display());
    }
    let shown: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(root()).unwrap_or(p).display().to_string())
        .collect();
    eprintln!(
        "xtask: manifests: validating against the Kubernetes {KUBERNETES_VERSION} API \
         (strict): {}",
        shown.join(", ")
    );
    let out = Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
        .args(&files)
        .current_dir(root())
        .output()
        .context("cannot start kubernetes-validate")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || text.contains("ERROR") || text.contains("WARN") {
        bail!(
            "kubernetes-validate failed ({}):\n{}",
            out.status,
            text.trim()
        );
    }
    Ok(())
}

/// Step 3: checkov's Kubernetes checks on the base.
fn checkov(base: &Path) -> anyhow::Result<()> {
    eprintln!("xtask: manifests: checkov on {}", base.display());
    let out = Command::new(venv_bin("checkov"))
        .args(["--framework", "kubernetes", "--compact", "--quiet"])
        .arg("--skip-download")
        .arg("-d")
        .arg(base)
        .env("BC_SKIP_MAPPING", "TRUE")
        .env("CHECKOV_NO_UPDATE_CHECK", "true")
        .current_dir(root())
        .output()
        .context("cannot start checkov")?;
    if !out.status.success() {
        bail!(
            "checkov failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A YAML file as JSON, through the venv's Python (PyYAML comes with the tools).
fn yaml_as_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(venv_bin("python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .output()
        .context("cannot start the venv's python")?;
    if !out.status.success() {
        bail!(
            "{}: not valid YAML: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{}", path.display()))
}

/// Every file below `dir`, recursively, sorted.
fn files_under(dir: &Path) -> anyhow::Result<BTreeSet<PathBuf>> {
    let mut files = BTreeSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
        {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            } else {
                files.insert(entry.path());
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn listed_files_takes_resources_and_generator_inputs() {
        let k = json!({
            "resources": ["a.yaml", "./b.yml", "../other", "https://x/y.yaml"],
            "configMapGenerator": [
                {"name": "d", "files": ["dashboards/d.json", "key=conf/c.txt"]},
                {"name": "e", "envs": ["e.env"]}
            ],
            "secretGenerator": [{"name": "s", "files": ["s.pem"]}]
        });
        assert_eq!(
            listed_files(&k),
            set(&[
                "a.yaml",
                "b.yml",
                "conf/c.txt",
                "dashboards/d.json",
                "e.env",
                "s.pem"
            ])
        );
        assert!(listed_files(&json!({})).is_empty());
    }

    #[test]
    fn mismatch_names_missing_and_unlisted_files() {
        let listed = set(&["a.yaml", "gone.yaml"]);
        let present = set(&["a.yaml", "new.yaml"]);
        assert_eq!(
            mismatch(&listed, &present),
            vec![
                "lists gone.yaml, which does not exist".to_string(),
                "does not list new.yaml (add it, or remove the file)".to_string()
            ]
        );
        assert!(mismatch(&present, &present).is_empty());
    }
}
