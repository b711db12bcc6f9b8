//! The container image's names, defined once: the release reference the DaemonSet (through
//! `deploy/base/kustomization.yaml`'s `images:` entry), `outriderctl inject` and the README
//! use, and the local name `cargo xtask image` loads it under. They live in `image/names.rs`,
//! which the xtask `include!`s too; the tests check the manifests and the READMEs against
//! them (the xtask's own tests check the `Containerfile` against what it builds).

include!("image/names.rs");

#[cfg(test)]
mod tests;
