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
    #[error("{file}:{location}{field}{reason}")]
    Parse {
        file: PathBuf,
        /// `line L column C: ` when known.
        location: String,
        /// `path.to.field: ` when known.
        field: String,
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
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let field = err.path().to_string();
        let inner = err.into_inner();
        let location = inner
            .location()
            .map(|l| format!(" line {} column {}: ", l.line(), l.column()))
            .unwrap_or_else(|| " ".to_string());
        // serde_yaml_ng appends " at line L column C" to its messages; we said it already.
        let mut reason = inner.to_string();
        if let Some(cut) = reason.find(" at line ") {
            reason.truncate(cut);
        }
        YamlError::Parse {
            file: path.to_path_buf(),
            location,
            field: if field == "." || field.is_empty() {
                String::new()
            } else {
                format!("{field}: ")
            },
            reason,
        }
    })
}
