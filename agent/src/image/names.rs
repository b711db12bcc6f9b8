// The image's names (see `crate::image`), in a file of their own so that the xtask can
// `include!` the same definitions.

/// Where released images are published.
pub const REPOSITORY: &str = "ghcr.io/outrider-mesh/outrider";

/// The image of this release: [`REPOSITORY`] tagged with the crate's version.
pub const REFERENCE: &str = concat!(
    "ghcr.io/outrider-mesh/outrider",
    ":",
    env!("CARGO_PKG_VERSION")
);

/// The image name the DaemonSet's container gives; the kustomization's `images:` entry
/// turns it into [`REFERENCE`].
pub const MANIFEST_NAME: &str = "outrider";

/// `cargo xtask image` loads the image as `outrider:<version>` (and tags it
/// `<REPOSITORY>:<version>`).
pub const LOCAL_NAME: &str = "outrider";
