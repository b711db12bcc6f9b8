//! The manifests and the READMEs name the image of [`REFERENCE`], and nothing else.
use std::path::{Path, PathBuf};

use super::*;

fn repo_file(relative: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    (path, text)
}

fn yaml(relative: &str) -> serde_yaml_ng::Value {
    let (path, text) = repo_file(relative);
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_reference_is_the_repository_at_this_version() {
    assert_eq!(
        REFERENCE,
        format!("{REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn the_kustomization_maps_the_daemonsets_image_to_the_reference() {
    let kustomization = yaml("deploy/base/kustomization.yaml");
    let images = kustomization["images"]
        .as_sequence()
        .expect("deploy/base/kustomization.yaml has an images: list");
    assert_eq!(images.len(), 1, "{images:?}");
    let entry = &images[0];
    assert_eq!(entry["name"].as_str(), Some(MANIFEST_NAME), "{entry:?}");
    let new_name = entry["newName"].as_str().expect("newName");
    let new_tag = entry["newTag"].as_str().expect("newTag, a string");
    assert_eq!(format!("{new_name}:{new_tag}"), REFERENCE);

    let daemonset = yaml("deploy/base/daemonset.yaml");
    let containers = daemonset["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    for c in containers {
        assert_eq!(c["image"].as_str(), Some(MANIFEST_NAME), "{c:?}");
    }
}

#[test]
fn the_readmes_name_only_the_reference() {
    for file in ["README.md", "deploy/README.md"] {
        let (path, text) = repo_file(file);
        let named: Vec<&str> = text
            .split(|c: char| c.is_whitespace() || "`'\"()[]".contains(c))
            .filter(|w| w.starts_with(REPOSITORY))
            .collect();
        for image in &named {
            assert_eq!(
                image.trim_end_matches(['.', ',']),
                REFERENCE,
                "{} names another image",
                path.display()
            );
        }
        if file == "README.md" {
            assert!(!named.is_empty(), "README.md does not name {REFERENCE}");
        }
    }
}
