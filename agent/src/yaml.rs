//! Reading YAML files into our types with errors a person can act on: the file, the
//! line and column, the field path (`workloads[2].ips[0]`) and the reason.
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{location}{reason}")]
    Parse {
        file: PathBuf,
        /// `line L column C: ` when known.
        location: String,
        /// Starts with the field path (`workloads[2].ips[0]: `) when not at the top.
        reason: String,
    },
}

/// Parses `path` as YAML into `T`.
pub fn from_file<T: DeserializeOwned>(path: &Path) -> Result<T, YamlError> {
    let text = std::fs::read_to_string(path).map_err(|source| YamlError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    from_str(path, &text)
}

/// Parses `text` (the contents of `path`) as YAML into `T`.
pub fn from_str<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, YamlError> {
    // An empty document is an empty mapping, so that all-default files are valid.
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_yaml_ng::from_str(text).map_err(|err| {
        let (at, reason) = location_and_reason(&err);
        let location = at
            .map(|(line, column)| format!(" line {line} column {column}: "))
            .unwrap_or_else(|| " ".to_string());
        YamlError::Parse {
            file: path.to_path_buf(),
            location,
            reason,
        }
    })
}

/// Where a serde_yaml_ng error is (line and column, from 1) when it says, and its
/// reason without the location: serde_yaml_ng starts its message with the field path
/// (`workloads[2].ips[0]: …`) and ends it with " at line L column C", said apart here.
pub(crate) fn location_and_reason(err: &serde_yaml_ng::Error) -> (Option<(usize, usize)>, String) {
    let mut reason = err.to_string();
    if let Some(cut) = reason.find(" at line ") {
        reason.truncate(cut);
    }
    (err.location().map(|l| (l.line(), l.column())), reason)
}
