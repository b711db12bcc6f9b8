//! `cargo xtask fuzz [TARGET] [--seconds N]`: runs the fuzz targets of `fuzz/` with
//! cargo-fuzz (libFuzzer, nightly), each for N seconds (default 600), one after another,
//! in one process each (one core). Installs cargo-fuzz first if it is missing.
//!
//! Each target starts from its seeds (`fuzz/corpus/<target>/`, kept in the repository) and
//! the inputs kept from earlier crashes (`testbed/tests/fuzz_regressions/<target>/`); what it
//! learns goes to `fuzz/target/corpus/<target>/` (not kept). A crash leaves its input in
//! `fuzz/artifacts/<target>/`: fix the bug, then keep the input in
//! `testbed/tests/fuzz_regressions/<target>/`, where the tooling's unit tests replay it (`testbed/src/fuzzing.rs`).
use std::process::Command;

use anyhow::{Context, bail};

use crate::{root, run as sh};

/// The fuzz targets, as `fuzz/Cargo.toml` names them.
pub const TARGETS: &[&str] = &[
    "protocol_detection",
    "hbone_connect",
    "workload_file",
    "policy",
    "http1_smuggling",
];

pub fn run(target: Option<&str>, seconds: u64) -> anyhow::Result<()> {
    let targets: Vec<&str> = match target {
        None => TARGETS.to_vec(),
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!(
            "no fuzz target {t:?}: the targets are {}",
            TARGETS.join(", ")
        ),
    };
    ensure_cargo_fuzz()?;
    let root = root();
    let mut failed = Vec::new();
    for target in targets {
        let work = root.join("fuzz/target/corpus").join(target);
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let mut cmd = nightly_cargo();
        cmd.args(["fuzz", "run", "--fuzz-dir", "fuzz", target])
            .arg(&work)
            .arg(root.join("fuzz/corpus").join(target));
        let kept = root.join("testbed/tests/fuzz_regressions").join(target);
        if kept.is_dir() {
            cmd.arg(kept);
        }
        cmd.arg("--").args(libfuzzer_args(seconds));
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        if let Err(err) = sh(&mut cmd) {
            eprintln!(
                "xtask: {target} failed ({err:#}); its input is under fuzz/artifacts/{target}/"
            );
            failed.push(target);
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets that failed: {}", failed.join(", "));
    }
    Ok(())
}

/// libFuzzer's options: stop after `seconds`, a 30 s limit per input (the targets fail
/// by themselves after 10 s), and the statistics at the end.
fn libfuzzer_args(seconds: u64) -> Vec<String> {
    vec![
        format!("-max_total_time={seconds}"),
        "-timeout=30".into(),
        "-print_final_stats=1".into(),
    ]
}

/// `cargo +nightly` (cargo-fuzz needs nightly's sanitizer flags), through rustup.
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly");
    cmd
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let installed = nightly_cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !installed {
        sh(Command::new(env!("CARGO")).args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The `[[bin]]` names of a cargo-fuzz manifest.
    fn manifest_targets(manifest: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut in_bin = false;
        for line in manifest.lines().map(str::trim) {
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
            } else if in_bin && let Some(value) = line.strip_prefix("name") {
                let name = value.trim_start().trim_start_matches('=').trim();
                names.push(name.trim_matches('"').to_string());
            }
        }
        names
    }

    /// Whether `dir` holds at least one file.
    fn has_files(dir: &Path) -> bool {
        std::fs::read_dir(dir).is_ok_and(|mut entries| {
            entries.any(|e| e.is_ok_and(|e| e.file_type().is_ok_and(|t| t.is_file())))
        })
    }

    #[test]
    fn targets_are_the_fuzz_crates_with_seeds() {
        let manifest = std::fs::read_to_string(root().join("fuzz/Cargo.toml")).unwrap();
        assert_eq!(manifest_targets(&manifest), TARGETS);
        for target in TARGETS {
            let seeds = root().join("fuzz/corpus").join(target);
            assert!(has_files(&seeds), "no seeds in {}", seeds.display());
            assert!(
                root()
                    .join(format!("fuzz/fuzz_targets/{target}.rs"))
                    .is_file()
            );
        }
    }

    #[test]
    fn manifest_targets_reads_bin_names_only() {
        let manifest = "[package]\nname = \"x\"\n[[bin]]\nname = \"a\"\npath = \"a.rs\"\n\
                        [dependencies]\nname = \"no\"\n[[bin]]\nname=\"b\"\n";
        assert_eq!(manifest_targets(manifest), ["a", "b"]);
    }

    #[test]
    fn libfuzzer_stops_in_time() {
        assert!(libfuzzer_args(42).contains(&"-max_total_time=42".to_string()));
    }
}
