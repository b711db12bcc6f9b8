//! `cargo xtask bench --ztunnel PATH`: Outrider and ztunnel side by side under the peer
//! harness (`../shared/bench/peer_bench.py`, not ours: it never builds anything), on the
//! binary that ships, just built (the `dist` profile: the release with whole-program LTO). Paths `direct`, `ztunnel-hbone`, `ztunnel-tcp`,
//! `outrider-mtls` and `outrider-tcp`; the Outrider paths through the harness's plugin
//! `outrider_path.py`, started by a small script written into the work directory that
//! names the fresh binary. Writes the harness's JSON and markdown, and `peer.md`
//! ([`peer_table`](super::peer_table): Outrider over ztunnel per figure; [`sides`](super::sides):
//! which side's CPU was full in each test) into the out directory.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use serde_json::Value;

use super::{
    peer_table::{self, Builds, PATHS},
    sides,
};
use crate::root;

pub struct PeerOptions {
    pub ztunnel: PathBuf,
    /// The harness's directory (default `<repo>/../shared/bench`).
    pub harness: Option<PathBuf>,
    pub rounds: u32,
    pub duration: u32,
    /// The harness's `--tests` (default: all of them).
    pub tests: Option<String>,
    /// Default `target/bench/peer`.
    pub out: Option<PathBuf>,
}

pub fn run(opts: PeerOptions) -> anyhow::Result<()> {
    let harness = opts
        .harness
        .clone()
        .unwrap_or_else(|| root().join("../shared/bench"));
    let script = harness.join("peer_bench.py");
    let plugin = harness.join("outrider_path.py");
    for file in [&script, &plugin] {
        if !file.is_file() {
            bail!(
                "the peer harness is not where it should be: no {} (pass --peer-harness DIR, \
                 the directory holding peer_bench.py and outrider_path.py)",
                file.display()
            );
        }
    }
    let ztunnel = executable(&opts.ztunnel)?;
    let outrider = build_dist()?;
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| root().join("target/bench/peer"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = out
        .canonicalize()
        .with_context(|| format!("resolving {}", out.display()))?;
    let work = std::env::temp_dir().join(format!("outrider-peer-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = (|| -> anyhow::Result<()> {
        let path_script = write_path_script(&work, &outrider, &plugin)?;
        let before = runs_in(&out)?;
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .arg("--ztunnel")
            .arg(&ztunnel)
            .args(["--paths", &PATHS.join(",")]);
        for path in ["outrider-mtls", "outrider-tcp"] {
            cmd.arg("--path-cmd")
                .arg(format!("{path}={}", path_script.display()));
        }
        cmd.args(["--rounds", &opts.rounds.to_string()])
            .args(["--duration", &opts.duration.to_string()])
            .arg("--out")
            .arg(&out);
        if let Some(tests) = &opts.tests {
            cmd.args(["--tests", tests]);
        }
        let sampler = sides::Sampler::start();
        let ran = crate::run(&mut cmd);
        let samples = sampler.stop();
        ran?;
        // Without them peer.md only lacks its last table; the harness's figures stand.
        let samples = samples.unwrap_or_else(|e| {
            eprintln!(
                "xtask: bench: no CPU samples ({e:#}): peer.md leaves out which side was full"
            );
            Vec::new()
        });
        let json_path = runs_in(&out)?
            .into_iter()
            .filter(|p| !before.contains(p))
            .max()
            .with_context(|| {
                format!(
                    "the peer harness finished but wrote no new peer-bench-*.json in {}",
                    out.display()
                )
            })?;
        let text = std::fs::read_to_string(&json_path)
            .with_context(|| format!("reading {}", json_path.display()))?;
        let run: Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", json_path.display()))?;
        let ztunnel_build = peer_table::ztunnel_build(&run)
            .or_else(|| banner_version(&ztunnel))
            .unwrap_or_else(|| "(version unknown)".to_string());
        let outrider_build = super::commit();
        let md = peer_table::markdown(
            &run,
            &Builds {
                outrider: &outrider_build,
                ztunnel: &ztunnel_build,
            },
        )
        .with_context(|| format!("reading {}", json_path.display()))?;
        let busy = sides::markdown(&run, &samples)
            .with_context(|| format!("reading {}", json_path.display()))?;
        let md = format!(
            "{md}{busy}\nFrom `{}` (the harness's JSON, beside its markdown).\n",
            json_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let peer_md = out.join("peer.md");
        std::fs::write(&peer_md, &md).with_context(|| format!("writing {}", peer_md.display()))?;
        println!("{md}");
        eprintln!(
            "xtask: bench: wrote {} and the harness's {}",
            peer_md.display(),
            json_path.display()
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// `cargo build --profile dist` of the agent, as the image ships it; its path.
fn build_dist() -> anyhow::Result<PathBuf> {
    crate::run(Command::new(env!("CARGO")).args([
        "build",
        "--profile",
        "dist",
        "-p",
        "outrider",
        "--bin",
        "outrider",
    ]))?;
    Ok(root().join("target/dist/outrider"))
}

/// `path`, absolute, if it is an executable file.
fn executable(path: &Path) -> anyhow::Result<PathBuf> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("--ztunnel {}: no such file", path.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        bail!(
            "--ztunnel {}: not an executable file (ztunnel built with `cargo build --release --features testing`)",
            path.display()
        );
    }
    path.canonicalize()
        .with_context(|| format!("resolving {}", path.display()))
}

/// The harness's plugin for the Outrider paths, with `OUTRIDER_BIN` set to `outrider`.
fn write_path_script(work: &Path, outrider: &Path, plugin: &Path) -> anyhow::Result<PathBuf> {
    let script = work.join("outrider-path.sh");
    let text = format!(
        "#!/bin/sh\n# Written by cargo xtask bench --ztunnel: the peer harness's Outrider plugin on this build.\nOUTRIDER_BIN={} exec python3 {} \"$@\"\n",
        quoted(outrider)?,
        quoted(plugin)?,
    );
    std::fs::write(&script, text).with_context(|| format!("writing {}", script.display()))?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", script.display()))?;
    Ok(script)
}

/// `path` in single quotes for sh.
fn quoted(path: &Path) -> anyhow::Result<String> {
    let text = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    Ok(format!("'{}'", text.replace('\'', r"'\''")))
}

/// The harness's JSON results in `dir`.
fn runs_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut runs = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("peer-bench-") && name.ends_with(".json") {
            runs.push(path);
        }
    }
    Ok(runs)
}

/// ztunnel's version from its banner, for a run whose JSON lacks it.
fn banner_version(ztunnel: &Path) -> Option<String> {
    let out = Command::new(ztunnel).arg("--version").output().ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    peer_table::ztunnel_banner_version(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_script_runs_the_plugin_with_the_binary() {
        let dir = std::env::temp_dir().join(format!("xtask-peer-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A stand-in plugin that prints what it was given.
        let plugin = dir.join("plugin's.py");
        std::fs::write(
            &plugin,
            "import os, sys\nprint(os.environ['OUTRIDER_BIN'], *sys.argv[1:])\n",
        )
        .unwrap();
        let script = write_path_script(&dir, Path::new("/opt/x y/outrider"), &plugin).unwrap();
        let out = Command::new(&script).args(["up", "a b"]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "/opt/x y/outrider up a b\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_ztunnel_that_is_not_executable_is_refused_by_name() {
        let err = executable(Path::new("/nonexistent/ztunnel")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ztunnel"), "{err}");
        let plain = std::env::temp_dir().join(format!("xtask-peer-plain-{}", std::process::id()));
        std::fs::write(&plain, "").unwrap();
        let err = executable(&plain).unwrap_err();
        std::fs::remove_file(&plain).unwrap();
        assert!(err.to_string().contains("not an executable"), "{err}");
        assert!(executable(Path::new("/bin/sh")).is_ok());
    }
}
