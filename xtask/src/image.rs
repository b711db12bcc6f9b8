//! `cargo xtask image [--version V]`: Outrider's container image, built here without a
//! registry and without a Docker daemon. The `dist` build's binaries (stripped), iptables
//! for `sidecar-init` and the shared libraries they load (found with `ldd`) are put in a
//! root directory, which buildah turns into an image `FROM scratch` (no base image can be
//! pulled here). The image goes into the local store (shared by buildah and podman) as
//! `outrider:<version>` and `<REPOSITORY>:<version>` — the manifests' reference for a
//! release build — and into an OCI archive, `target/image/outrider-<version>.tar`.
//!
//! `--version` builds the binaries with that version string (`OUTRIDER_VERSION`), for an
//! image that really differs from the release (the upgrade test uses one).
mod layout;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeSet,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::{root, run as sh};

/// The image's names, as the agent defines them.
#[allow(dead_code)] // The xtask uses some.
mod names {
    include!("../../agent/src/image/names.rs");
}
use names::{LOCAL_NAME, REPOSITORY};

/// The Debian packages of the tools this needs (installed by `cargo xtask setup`).
const TOOLS: &[(&str, &str)] = &[
    ("buildah", "buildah"),
    ("podman", "podman"),
    ("strip", "binutils"),
    ("ldd", "libc-bin"),
];

/// An image that was built: its local name (`outrider:<version>`).
pub struct Built {
    pub local: String,
}

/// The cargo profile whose binaries go into an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// `dist`: what ships (`cargo xtask image`, the `Containerfile`): the release build
    /// with whole-program LTO (see `Cargo.toml`).
    Dist,
    /// `release`: the build the end-to-end tests run, for their own images. The same
    /// code and packaging; a `dist` build would add minutes of linking per version.
    Release,
}

impl Profile {
    /// Its name for `cargo build --profile`, which is also its directory under `target/`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Dist => "dist",
            Self::Release => "release",
        }
    }
}

/// Builds the image of `version` (default: the crate's, the release's) from the
/// binaries of `profile`.
pub fn run(version: Option<&str>, profile: Profile) -> anyhow::Result<Built> {
    check_tools()?;
    if let Some(v) = version {
        check_version(v)?;
    }
    let release = env!("CARGO_PKG_VERSION");
    let version = version.unwrap_or(release).to_string();
    build_binaries(profile, version != release, &version)?;
    let dir = root().join("target/image").join(&version);
    let rootfs = dir.join("rootfs");
    assemble(&rootfs, profile)?;
    let local = format!("{LOCAL_NAME}:{version}");
    let archive = root()
        .join("target/image")
        .join(format!("outrider-{version}.tar"));
    commit(&rootfs, &version, &local, &archive)?;
    let size = image_size(&local)?;
    eprintln!(
        "xtask: image {local} (also {REPOSITORY}:{version}): {:.1} MiB, archive {}",
        size as f64 / (1024.0 * 1024.0),
        archive.display()
    );
    if size > layout::MAX_BYTES {
        bail!(
            "the image is {size} bytes, over the {} MiB we ship",
            layout::MAX_BYTES / (1024 * 1024)
        );
    }
    Ok(Built { local })
}

/// Fails naming the package to install for each tool that is missing.
pub fn check_tools() -> anyhow::Result<()> {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(tool, _)| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map_or(true, |o| !o.status.success())
        })
        .map(|(tool, package)| format!("{tool} (Debian package {package})"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "cannot build the image: missing {}; install them with `cargo xtask setup` (as root)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// A version string must be a valid image tag too.
fn check_version(v: &str) -> anyhow::Result<()> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        bail!("--version {v:?}: use letters, digits, '.', '_' and '-' (it is the image's tag)");
    }
    Ok(())
}

/// `cargo build --profile <profile>` of the agent, with `OUTRIDER_VERSION` set for a
/// version other than the release's (and unset otherwise, so the build is reused).
fn build_binaries(profile: Profile, custom: bool, version: &str) -> anyhow::Result<()> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--profile", profile.name(), "-p", "outrider"]);
    if custom {
        cmd.env("OUTRIDER_VERSION", version);
    } else {
        cmd.env_remove("OUTRIDER_VERSION");
    }
    sh(&mut cmd)
}

/// The image's root directory, made afresh.
fn assemble(rootfs: &Path, profile: Profile) -> anyhow::Result<()> {
    if rootfs.exists() {
        std::fs::remove_dir_all(rootfs)
            .with_context(|| format!("cannot remove {}", rootfs.display()))?;
    }
    let inside = |path: &str| rootfs.join(path.trim_start_matches('/'));
    let built = root().join("target").join(profile.name());
    let mut elves = Vec::new();
    for (binary, path) in layout::BINARIES {
        let dest = inside(path);
        make_parent(&dest)?;
        sh(Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(&dest)
            .arg(built.join(binary)))?;
        elves.push(built.join(binary));
    }
    copy_file(Path::new(layout::XTABLES), &inside(layout::XTABLES))?;
    elves.push(PathBuf::from(layout::XTABLES));
    for name in layout::XTABLES_NAMES {
        let link = inside(name);
        let target = Path::new(layout::XTABLES)
            .file_name()
            .context("XTABLES has a file name")?;
        symlink(target, &link).with_context(|| format!("cannot make {}", link.display()))?;
    }
    let extensions = Path::new(layout::XTABLES_EXTENSIONS);
    let entries = std::fs::read_dir(extensions).with_context(|| {
        format!(
            "cannot read {} (Debian package iptables)",
            extensions.display()
        )
    })?;
    for entry in entries {
        let path = entry?.path();
        copy_file(&path, &inside(&path.to_string_lossy()))?;
        elves.push(path);
    }
    for library in shared_libraries(&elves)? {
        copy_file(&library, &inside(&library.to_string_lossy()))?;
    }
    write_file(&inside(layout::PASSWD), layout::PASSWD_TEXT)?;
    write_file(&inside(layout::GROUP), layout::GROUP_TEXT)?;
    Ok(())
}

/// The shared libraries `files` load (and their loader), as `ldd` resolves them here.
fn shared_libraries(files: &[PathBuf]) -> anyhow::Result<BTreeSet<PathBuf>> {
    let mut libraries = BTreeSet::new();
    for file in files {
        let out = Command::new("ldd")
            .arg(file)
            .output()
            .context("cannot run ldd")?;
        if !out.status.success() {
            bail!(
                "ldd {} failed: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        libraries.extend(ldd_paths(&String::from_utf8_lossy(&out.stdout)));
    }
    Ok(libraries)
}

/// The files in `ldd`'s output: `name => /path (addr)` and `/path (addr)`; not the vDSO.
fn ldd_paths(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, right)) => right.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn make_parent(path: &Path) -> anyhow::Result<()> {
    let parent = path.parent().context("a path in the image has a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))
}

/// Copies the file (not a link to it) to `dest`, keeping its permissions.
fn copy_file(from: &Path, dest: &Path) -> anyhow::Result<()> {
    make_parent(dest)?;
    std::fs::copy(from, dest)
        .with_context(|| format!("cannot copy {} to {}", from.display(), dest.display()))?;
    Ok(())
}

fn write_file(dest: &Path, text: &str) -> anyhow::Result<()> {
    make_parent(dest)?;
    std::fs::write(dest, text).with_context(|| format!("cannot write {}", dest.display()))
}

/// Output of a command that must succeed, trimmed.
fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd
        .current_dir(root())
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `FROM scratch`, the root directory copied in, the configuration of [`layout`]; committed
/// to the local store as `local` and `<REPOSITORY>:<version>`, and written to `archive`.
fn commit(rootfs: &Path, version: &str, local: &str, archive: &Path) -> anyhow::Result<()> {
    let container = output(Command::new("buildah").args(["from", "scratch"]))?;
    let result = (|| {
        sh(Command::new("buildah")
            .args(["copy", "--quiet", &container])
            .arg(format!("{}/", rootfs.display()))
            .arg("/"))?;
        let json = |items: &[&str]| serde_json::to_string(items).unwrap_or_default();
        sh(Command::new("buildah").args([
            "config",
            "--entrypoint",
            &json(layout::ENTRYPOINT),
            "--cmd",
            &json(layout::CMD),
            "--user",
            layout::USER,
            "--env",
            &format!("PATH={}", layout::PATH),
            "--workingdir",
            "/",
            "--os",
            "linux",
            "--arch",
            "amd64",
            "--label",
            "org.opencontainers.image.title=outrider",
            "--label",
            &format!("org.opencontainers.image.version={version}"),
            "--label",
            "org.opencontainers.image.licenses=Apache-2.0",
            &container,
        ]))?;
        sh(Command::new("buildah")
            .args(["commit", "--quiet", "--format", "oci", &container, local]))
    })();
    let _ = Command::new("buildah").args(["rm", &container]).output();
    result?;
    sh(Command::new("buildah").args(["tag", local, &format!("{REPOSITORY}:{version}")]))?;
    if archive.exists() {
        std::fs::remove_file(archive)
            .with_context(|| format!("cannot remove {}", archive.display()))?;
    }
    sh(Command::new("buildah")
        .args(["push", "--quiet", local])
        .arg(format!("oci-archive:{}:{local}", archive.display())))
}

/// The image's size in the local store, in bytes (uncompressed).
fn image_size(local: &str) -> anyhow::Result<u64> {
    let text =
        output(Command::new("podman").args(["image", "inspect", "--format", "{{.Size}}", local]))?;
    text.parse()
        .with_context(|| format!("podman image inspect said {text:?} for the size"))
}
