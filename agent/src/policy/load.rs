//! Reading policies from YAML: a directory of `*.yaml`/`*.yml` files (sorted by name;
//! hidden files skipped), each with one or more `---`-separated documents. One invalid
//! document rejects its file and the whole directory, so the caller keeps its previous set.
use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, de::IgnoredAny};

use super::{
    PolicySet,
    error::{Origin, PolicyError},
    model::AuthorizationPolicy,
};

impl PolicySet {
    /// Reads every policy file of `dir` and compiles them (see [`PolicySet::compile`]).
    /// A missing or unreadable directory is an error naming it; so is any invalid file.
    pub(crate) fn load_dir(
        dir: &Path,
        trust_domain: &str,
        root_namespace: &str,
    ) -> Result<PolicySet, PolicyError> {
        Self::load_dir_with(dir, trust_domain, root_namespace, &[])
    }

    /// What [`PolicySet::load_dir`] would give after `changes` to the directory's files:
    /// `(path, Some(text))` writes a file, `(path, None)` removes one. Nothing on disk
    /// changes; the admin API checks a change with it before making it.
    pub(crate) fn load_dir_with(
        dir: &Path,
        trust_domain: &str,
        root_namespace: &str,
        changes: &[(PathBuf, Option<String>)],
    ) -> Result<PolicySet, PolicyError> {
        let mut files = policy_files(dir)?;
        for (path, text) in changes {
            files.retain(|f| f != path);
            if text.is_some() {
                files.push(path.clone());
            }
        }
        files.sort();
        let mut items = Vec::new();
        for file in files {
            let changed = changes.iter().find(|(p, _)| *p == file);
            let text = match changed {
                Some((_, Some(text))) => text.clone(),
                _ => fs::read_to_string(&file).map_err(|source| PolicyError::ReadFile {
                    file: file.clone(),
                    source,
                })?,
            };
            items.extend(parse_documents(&file, &text)?);
        }
        PolicySet::build(items, trust_domain, root_namespace)
    }
}

/// Parses the documents of one YAML text (`file` names it in errors), e.g. what a client
/// sends to the admin API. Empty documents are skipped.
pub fn parse_yaml(file: &Path, text: &str) -> Result<Vec<AuthorizationPolicy>, PolicyError> {
    Ok(parse_documents(file, text)?
        .into_iter()
        .map(|(p, _)| p)
        .collect())
}

/// The files `load_dir` reads, sorted.
fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let read_dir = |source| PolicyError::ReadDir {
        dir: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_dir)? {
        let entry = entry.map_err(read_dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let path = entry.path();
        // Follows symbolic links, as a mounted ConfigMap's files are.
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => files.push(path),
            Ok(_) => {}
            Err(source) => return Err(PolicyError::ReadFile { file: path, source }),
        }
    }
    files.sort();
    Ok(files)
}

pub(super) fn parse_documents(
    file: &Path,
    text: &str,
) -> Result<Vec<(AuthorizationPolicy, Origin)>, PolicyError> {
    let origin = |index: usize| Origin::File {
        file: file.to_path_buf(),
        document: index + 1,
    };
    // Syntax first: after a syntax error the typed pass reports confusing type errors.
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        if let Err(err) = IgnoredAny::deserialize(document) {
            return Err(PolicyError::from_yaml(origin(i), &err));
        }
    }
    let mut out = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        match Option::<AuthorizationPolicy>::deserialize(document) {
            Ok(Some(policy)) => out.push((policy, origin(i))),
            Ok(None) => {}
            Err(err) => return Err(PolicyError::from_yaml(origin(i), &err)),
        }
    }
    Ok(out)
}
