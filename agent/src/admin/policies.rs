//! Policies through the admin API: applying YAML and deleting what the API applied. The
//! agent's policy directory stays the one source: an applied policy becomes a file
//! `admin.<namespace>.<name>.yaml` in it (a namespace holds no dots, so names cannot
//! collide), checked together with every other file before anything is written — an
//! invalid request changes nothing. The directory's follower then puts it in force.
use std::{
    io::Write,
    path::{Path, PathBuf},
};

use crate::policy::{AuthorizationPolicy, Origin, PolicyError, PolicySet, parse_yaml};

/// The name the request's YAML has in error messages.
pub const REQUEST: &str = "<request>";

const PREFIX: &str = "admin.";

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The request itself, or the directory with it, is not valid.
    #[error("{0}")]
    Invalid(String),
    /// The agent has no policy directory, or the policy is not the API's to change.
    #[error("{0}")]
    Precondition(String),
    #[error("policy {0} not found")]
    NotFound(String),
    /// Reading or writing the directory failed.
    #[error("{0}")]
    Io(String),
}

/// What applying did to one policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// The policy directory and the set's parameters.
pub struct PolicyDir<'a> {
    pub dir: &'a Path,
    pub trust_domain: &'a str,
    pub root_namespace: &'a str,
}

/// The file the API keeps `namespace/name` in.
pub fn file_for(dir: &Path, namespace: &str, name: &str) -> PathBuf {
    dir.join(format!("{PREFIX}{namespace}.{name}.yaml"))
}

/// True when `origin` is a file the admin API wrote.
pub fn is_admin_file(dir: Option<&Path>, origin: &Origin) -> bool {
    match origin {
        Origin::File { file, .. } => {
            dir.is_some_and(|d| file.parent() == Some(d))
                && file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(PREFIX))
        }
        Origin::Item { .. } | Origin::Kubernetes { .. } => false,
    }
}

/// Checks `yaml` against the directory and, unless `dry_run`, writes it. Returns each
/// policy with what happened to it, and the set the directory will load.
pub fn apply(
    at: &PolicyDir<'_>,
    yaml: &str,
    dry_run: bool,
) -> Result<(Vec<(AuthorizationPolicy, Outcome)>, PolicySet), ApplyError> {
    let policies =
        parse_yaml(Path::new(REQUEST), yaml).map_err(|e| ApplyError::Invalid(e.to_string()))?;
    if policies.is_empty() {
        return Err(ApplyError::Invalid(format!(
            "{REQUEST}: no AuthorizationPolicy in it"
        )));
    }
    let mut changes: Vec<(PathBuf, Option<String>)> = Vec::new();
    let mut outcomes = Vec::new();
    for policy in policies {
        let file = file_for(at.dir, &policy.metadata.namespace, &policy.metadata.name);
        if changes.iter().any(|(f, _)| *f == file) {
            return Err(ApplyError::Invalid(format!(
                "{REQUEST}: policy {} is given twice",
                policy.key()
            )));
        }
        let text = serde_yaml_ng::to_string(&policy)
            .map_err(|e| ApplyError::Io(format!("cannot write policy {}: {e}", policy.key())))?;
        let outcome = match std::fs::read_to_string(&file) {
            Ok(old) if old == text => Outcome::Unchanged,
            Ok(_) => Outcome::Configured,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Created,
            Err(e) => return Err(ApplyError::Io(format!("{}: {e}", file.display()))),
        };
        changes.push((file, Some(text)));
        outcomes.push((policy, outcome));
    }
    let set = PolicySet::load_dir_with(at.dir, at.trust_domain, at.root_namespace, &changes)
        .map_err(|e| match e {
            PolicyError::ReadDir { .. } | PolicyError::ReadFile { .. } => {
                ApplyError::Io(e.to_string())
            }
            other => ApplyError::Invalid(other.to_string()),
        })?;
    if !dry_run {
        for ((file, text), (_, outcome)) in changes.iter().zip(&outcomes) {
            if *outcome == Outcome::Unchanged {
                continue;
            }
            let text = text.as_deref().unwrap_or_default();
            write_atomically(file, text.as_bytes())?;
        }
    }
    Ok((outcomes, set))
}

/// Removes `namespace/name` if the admin API applied it; `current` is the set in force.
pub fn delete(
    at: &PolicyDir<'_>,
    current: &PolicySet,
    namespace: &str,
    name: &str,
) -> Result<(), ApplyError> {
    let key = format!("{namespace}/{name}");
    let file = file_for(at.dir, namespace, name);
    match current.get(namespace, name) {
        Some((_, origin)) if !is_admin_file(Some(at.dir), origin) => {
            return Err(ApplyError::Precondition(format!(
                "policy {key} comes from {origin}, not from the admin API: edit or remove that file"
            )));
        }
        None if !file.exists() => return Err(ApplyError::NotFound(key)),
        _ => {}
    }
    std::fs::remove_file(&file).map_err(|e| ApplyError::Io(format!("{}: {e}", file.display())))
}

/// Writes through a temporary file and a rename, so the follower never reads half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ApplyError> {
    let io = |e: std::io::Error| ApplyError::Io(format!("{}: {e}", path.display()));
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Hidden: the follower skips it until the rename.
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "cluster.local";
    const ROOT: &str = "outrider-system";

    fn policy(ns: &str, name: &str, action: &str) -> String {
        format!(
            "apiVersion: security.outrider.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  action: {action}\n  rules: [{{to: [{{operation: {{ports: [\"9000\"]}}}}]}}]\n"
        )
    }

    fn at(dir: &Path) -> PolicyDir<'_> {
        PolicyDir {
            dir,
            trust_domain: TD,
            root_namespace: ROOT,
        }
    }

    #[test]
    fn applies_reports_created_configured_unchanged_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let at = at(dir.path());
        let (out, set) = apply(&at, &policy("shop", "deny-9000", "DENY"), false).unwrap();
        assert_eq!(out[0].1, Outcome::Created);
        assert_eq!(set.len(), 1);
        assert!(file_for(dir.path(), "shop", "deny-9000").exists());
        let (out, _) = apply(&at, &policy("shop", "deny-9000", "DENY"), false).unwrap();
        assert_eq!(out[0].1, Outcome::Unchanged);
        let (out, _) = apply(&at, &policy("shop", "deny-9000", "AUDIT"), false).unwrap();
        assert_eq!(out[0].1, Outcome::Configured);
        let loaded = PolicySet::load_dir(dir.path(), TD, ROOT).unwrap();
        let (_, origin) = loaded.get("shop", "deny-9000").unwrap();
        assert!(is_admin_file(Some(dir.path()), origin));
        delete(&at, &loaded, "shop", "deny-9000").unwrap();
        assert!(
            PolicySet::load_dir(dir.path(), TD, ROOT)
                .unwrap()
                .is_empty()
        );
        let err = delete(&at, &PolicySet::empty(), "shop", "deny-9000").unwrap_err();
        assert!(matches!(err, ApplyError::NotFound(_)), "{err}");
    }

    #[test]
    fn an_invalid_request_or_a_clash_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let at = at(dir.path());
        std::fs::write(dir.path().join("ops.yaml"), policy("shop", "ops", "DENY")).unwrap();
        // Two policies, the second invalid: neither is written.
        let text = format!(
            "{}---\n{}",
            policy("shop", "good", "DENY"),
            policy("shop", "bad", "DENY").replace("\"9000\"", "\"0\"")
        );
        let err = apply(&at, &text, false).unwrap_err();
        assert!(matches!(err, ApplyError::Invalid(_)));
        let message = err.to_string();
        assert!(message.contains("<request>: document 2"), "{message}");
        assert!(message.contains("ports[0]"), "{message}");
        assert!(!file_for(dir.path(), "shop", "good").exists());
        // A policy of the same name in an operator's file.
        let err = apply(&at, &policy("shop", "ops", "DENY"), false).unwrap_err();
        assert!(err.to_string().contains("defined twice"), "{err}");
        // Deleting the operator's policy through the API is refused, naming the file.
        let set = PolicySet::load_dir(dir.path(), TD, ROOT).unwrap();
        let err = delete(&at, &set, "shop", "ops").unwrap_err();
        assert!(matches!(err, ApplyError::Precondition(_)));
        assert!(err.to_string().contains("ops.yaml"), "{err}");
        assert!(dir.path().join("ops.yaml").exists());
    }

    #[test]
    fn dry_run_checks_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let (out, _) = apply(&at(dir.path()), &policy("shop", "p", "DENY"), true).unwrap();
        assert_eq!(out[0].1, Outcome::Created);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let err = apply(&at(dir.path()), "", true).unwrap_err();
        assert!(err.to_string().contains("no AuthorizationPolicy"), "{err}");
    }
}
