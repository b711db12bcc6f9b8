//! Why a set of policies was refused, with where: the file, the document in it (counted
//! from 1), the line and column when known, the field path and the reason.
use std::{fmt, io, path::PathBuf};

/// Where a policy came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Document `document` (counted from 1, as lines are) of a YAML file.
    File { file: PathBuf, document: usize },
    /// Entry `index` (from 0) of the list given to `PolicySet::compile`, e.g. from the
    /// Kubernetes API or the admin API; `key` is its `namespace/name` as given.
    Item { index: usize, key: String },
    /// The `AuthorizationPolicy` resource `key` (`namespace/name`) of the Kubernetes API.
    Kubernetes { key: String },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { file, document } => {
                write!(f, "{}: document {document}", file.display())
            }
            Origin::Item { index, key } => write!(f, "policy {key} (item {index})"),
            Origin::Kubernetes { key } => write!(f, "AuthorizationPolicy {key} (Kubernetes)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{dir}: cannot read the policy directory: {source}")]
    ReadDir { dir: PathBuf, source: io::Error },
    #[error("{file}: cannot read: {source}")]
    ReadFile { file: PathBuf, source: io::Error },
    /// A policy that is not valid. `field` is the path from the document's top
    /// (`spec.rules[0].from[1].source.ipBlocks[0]`) when the error is not about the whole
    /// document.
    #[error("{origin}: {}{}{reason}", at(.line, .column), field_prefix(.field))]
    Invalid {
        origin: Origin,
        line: Option<usize>,
        column: Option<usize>,
        field: Option<String>,
        reason: String,
    },
    #[error("policy {key} is defined twice: {first} and {second}")]
    Duplicate {
        key: String,
        first: Origin,
        second: Origin,
    },
    #[error("trust domain {trust_domain:?}: {reason}")]
    TrustDomain {
        trust_domain: String,
        reason: String,
    },
    #[error("root namespace: {0}")]
    RootNamespace(String),
}

fn at(line: &Option<usize>, column: &Option<usize>) -> String {
    match (*line, *column) {
        (Some(l), Some(c)) => format!("line {l} column {c}: "),
        (Some(l), None) => format!("line {l}: "),
        _ => String::new(),
    }
}

fn field_prefix(field: &Option<String>) -> String {
    field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default()
}

impl PolicyError {
    /// From a YAML reader error: its location, and its message split into the field path
    /// it starts with (when not at the top) and the reason.
    pub(super) fn from_yaml(origin: Origin, err: &serde_yaml_ng::Error) -> Self {
        let (line, column) = err
            .location()
            .map(|l| (Some(l.line()), Some(l.column())))
            .unwrap_or((None, None));
        let message = strip_location(&err.to_string());
        let (field, reason) = split_field(&message);
        PolicyError::Invalid {
            origin,
            line,
            column,
            field,
            reason,
        }
    }
}

/// serde_yaml_ng puts " at line L column C" after the reason (and may go on with
/// ", while parsing … at line …"): the first location is said already.
fn strip_location(message: &str) -> String {
    const AT: &str = " at line ";
    let Some(start) = message.find(AT) else {
        return message.to_string();
    };
    let rest = &message[start + AT.len()..];
    let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let mut end = digits(rest);
    if let Some(col) = rest[end..].strip_prefix(" column ") {
        end = rest.len() - col.len() + digits(col);
    }
    format!("{}{}", &message[..start], &rest[end..])
}

/// serde_yaml_ng writes `path: reason` below the top, and the bare reason at the top. A
/// path has no spaces; reasons at the top ("missing field `x`", "invalid type: …") do.
fn split_field(message: &str) -> (Option<String>, String) {
    if let Some((head, rest)) = message.split_once(": ")
        && !head.is_empty()
        && !head.contains(char::is_whitespace)
        && !head.contains(['`', '"'])
    {
        return (Some(head.to_string()), rest.to_string());
    }
    (None, message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_every_part_it_knows() {
        let err = PolicyError::Invalid {
            origin: Origin::File {
                file: "/p/shop.yaml".into(),
                document: 2,
            },
            line: Some(14),
            column: Some(9),
            field: Some("spec.rules[0].to[0].operation.ports[0]".into()),
            reason: "\"0\" is not a port".into(),
        };
        assert_eq!(
            err.to_string(),
            "/p/shop.yaml: document 2: line 14 column 9: spec.rules[0].to[0].operation.ports[0]: \"0\" is not a port"
        );
        let err = PolicyError::Invalid {
            origin: Origin::Item {
                index: 3,
                key: "shop/x".into(),
            },
            line: None,
            column: None,
            field: Some("spec".into()),
            reason: "bad".into(),
        };
        assert_eq!(err.to_string(), "policy shop/x (item 3): spec: bad");
    }

    #[test]
    fn strips_the_location_it_reports_apart() {
        assert_eq!(
            strip_location("missing field `a` at line 3 column 1"),
            "missing field `a`"
        );
        assert_eq!(
            strip_location(
                "did not find expected ',' or ']' at line 4 column 1, while parsing a flow sequence at line 3 column 7"
            ),
            "did not find expected ',' or ']', while parsing a flow sequence at line 3 column 7"
        );
        assert_eq!(strip_location("no location"), "no location");
    }

    #[test]
    fn splits_the_field_path_from_the_reason() {
        assert_eq!(
            split_field("spec.rules[0].from[1].source.ipBlocks[0]: \"x\" is not an IP"),
            (
                Some("spec.rules[0].from[1].source.ipBlocks[0]".into()),
                "\"x\" is not an IP".into()
            )
        );
        assert_eq!(
            split_field("missing field `metadata`"),
            (None, "missing field `metadata`".into())
        );
        assert_eq!(
            split_field("invalid type: string \"x\", expected struct AuthorizationPolicy"),
            (
                None,
                "invalid type: string \"x\", expected struct AuthorizationPolicy".into()
            )
        );
    }
}
