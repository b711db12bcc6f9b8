//! The checks beyond single values: `apiVersion`/`kind`, names, selectors, non-empty
//! `from`/`to`/`source`/`operation`, DENY without rules. They run while YAML is read (as
//! `deserialize_with` hooks, so errors carry a line) and again on objects handed to
//! `PolicySet::compile` (which may come from elsewhere than YAML).
use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Deserializer, de};

use super::model::{
    API_VERSION, Action, AuthorizationPolicy, AuthorizationPolicySpec, KIND, Operation, RuleFrom,
    RuleTo, Source,
};

const EMPTY_FROM: &str = "`from` must not be empty; leave it out to match any source";
const EMPTY_TO: &str = "`to` must not be empty; leave it out to match any operation";
const EMPTY_SOURCE: &str = "`source` must not be empty: set principals, namespaces, ipBlocks \
                            or one of their `not` forms";
const EMPTY_OPERATION: &str = "`operation` must not be empty: set ports, methods, paths, hosts \
                               or one of their `not` forms";
const DENY_WITHOUT_RULES: &str = "a DENY policy without `rules` never matches (Istio refuses it \
                                  too); add an empty rule `{}` to deny every request";

/// A field (path from the document's top, e.g. `spec.rules[0].from`) and what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Invalid {
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Every check, for an object that did not come through the YAML reader.
pub(super) fn check_policy(p: &AuthorizationPolicy) -> Result<(), Invalid> {
    check_api_version(&p.api_version).map_err(|r| invalid("apiVersion", r))?;
    check_kind(&p.kind).map_err(|r| invalid("kind", r))?;
    check_name(&p.metadata.name).map_err(|r| invalid("metadata.name", r))?;
    check_namespace(&p.metadata.namespace).map_err(|r| invalid("metadata.namespace", r))?;
    let spec = &p.spec;
    if let Some(selector) = &spec.selector {
        check_match_labels(&selector.match_labels)
            .map_err(|r| invalid("spec.selector.matchLabels", r))?;
    }
    check_spec_rules(spec).map_err(|r| invalid("spec", r))?;
    for (i, rule) in spec.rules.iter().enumerate() {
        if let Some(from) = &rule.from {
            if from.is_empty() {
                return Err(invalid(format!("spec.rules[{i}].from"), EMPTY_FROM));
            }
            for (j, f) in from.iter().enumerate() {
                if f.source.is_empty() {
                    return Err(invalid(
                        format!("spec.rules[{i}].from[{j}].source"),
                        EMPTY_SOURCE,
                    ));
                }
            }
        }
        if let Some(to) = &rule.to {
            if to.is_empty() {
                return Err(invalid(format!("spec.rules[{i}].to"), EMPTY_TO));
            }
            for (j, t) in to.iter().enumerate() {
                if t.operation.is_empty() {
                    return Err(invalid(
                        format!("spec.rules[{i}].to[{j}].operation"),
                        EMPTY_OPERATION,
                    ));
                }
            }
        }
    }
    Ok(())
}

fn check_api_version(v: &str) -> Result<(), String> {
    if v == API_VERSION {
        return Ok(());
    }
    let hint = if v.starts_with("security.istio.io/") {
        " (Istio's policies are written here with the same fields under our apiVersion)"
    } else {
        ""
    };
    Err(format!("{v:?} is not {API_VERSION:?}{hint}"))
}

fn check_kind(v: &str) -> Result<(), String> {
    if v == KIND {
        Ok(())
    } else {
        Err(format!("{v:?} is not {KIND:?}"))
    }
}

/// A Kubernetes object name (DNS subdomain, RFC 1123).
pub(crate) fn check_name(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{v:?} is not a valid name (lowercase letters, digits, '-', '.'; at most 253)"
        ))
    }
}

/// A Kubernetes namespace (DNS label, RFC 1123).
pub(crate) fn check_namespace(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{v:?} is not a valid namespace (lowercase letters, digits, '-'; at most 63)"
        ))
    }
}

fn check_match_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    for (k, v) in labels {
        if k.is_empty() {
            return Err("a label key must not be empty".to_string());
        }
        if k.contains('*') || v.contains('*') {
            return Err(format!(
                "wildcard is not supported in selector: \"{k}={v}\" (as in Istio)"
            ));
        }
        if k.contains(char::is_whitespace) || v.contains(char::is_whitespace) {
            return Err(format!("\"{k}={v}\" is not a label (no spaces)"));
        }
    }
    Ok(())
}

fn check_spec_rules(spec: &AuthorizationPolicySpec) -> Result<(), String> {
    if spec.action == Action::Deny && spec.rules.is_empty() {
        return Err(DENY_WITHOUT_RULES.to_string());
    }
    Ok(())
}

/// Reads a string and checks it while the reader still knows where it is.
fn checked_string<'de, D: Deserializer<'de>>(
    d: D,
    check: fn(&str) -> Result<(), String>,
) -> Result<String, D::Error> {
    struct Visitor(fn(&str) -> Result<(), String>);
    impl de::Visitor<'_> for Visitor {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            (self.0)(v).map_err(E::custom)?;
            Ok(v.to_string())
        }
    }
    d.deserialize_str(Visitor(check))
}

pub(super) fn de_api_version<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked_string(d, check_api_version)
}

pub(super) fn de_kind<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked_string(d, check_kind)
}

pub(super) fn de_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked_string(d, check_name)
}

pub(super) fn de_namespace<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked_string(d, check_namespace)
}

pub(super) fn de_match_labels<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let labels = BTreeMap::deserialize(d)?;
    check_match_labels(&labels).map_err(de::Error::custom)?;
    Ok(labels)
}

pub(super) fn de_spec<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<AuthorizationPolicySpec, D::Error> {
    // `spec:` with nothing after it is null: the empty spec, as Kubernetes reads it.
    let spec = Option::<AuthorizationPolicySpec>::deserialize(d)?.unwrap_or_default();
    check_spec_rules(&spec).map_err(de::Error::custom)?;
    Ok(spec)
}

pub(super) fn de_nonempty_from<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<RuleFrom>>, D::Error> {
    let from = Option::<Vec<RuleFrom>>::deserialize(d)?;
    if from.as_ref().is_some_and(Vec::is_empty) {
        return Err(de::Error::custom(EMPTY_FROM));
    }
    Ok(from)
}

pub(super) fn de_nonempty_to<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<RuleTo>>, D::Error> {
    let to = Option::<Vec<RuleTo>>::deserialize(d)?;
    if to.as_ref().is_some_and(Vec::is_empty) {
        return Err(de::Error::custom(EMPTY_TO));
    }
    Ok(to)
}

pub(super) fn de_source<'de, D: Deserializer<'de>>(d: D) -> Result<Source, D::Error> {
    let source = Source::deserialize(d)?;
    if source.is_empty() {
        return Err(de::Error::custom(EMPTY_SOURCE));
    }
    Ok(source)
}

pub(super) fn de_operation<'de, D: Deserializer<'de>>(d: D) -> Result<Operation, D::Error> {
    let operation = Operation::deserialize(d)?;
    if operation.is_empty() {
        return Err(de::Error::custom(EMPTY_OPERATION));
    }
    Ok(operation)
}

#[cfg(test)]
mod tests {
    use super::super::model::{Rule, WorkloadSelector};
    use super::*;

    fn ok() -> AuthorizationPolicy {
        AuthorizationPolicy::new("shop", "allow-get", AuthorizationPolicySpec::default())
    }

    #[test]
    fn objects_from_elsewhere_get_the_same_checks() {
        assert_eq!(check_policy(&ok()), Ok(()));
        let field = |p: AuthorizationPolicy| check_policy(&p).unwrap_err().field;

        let mut p = ok();
        p.api_version = "security.istio.io/v1".into();
        assert_eq!(field(p), "apiVersion");
        let mut p = ok();
        p.kind = "PeerAuthentication".into();
        assert_eq!(field(p), "kind");
        let mut p = ok();
        p.metadata.name = String::new();
        assert_eq!(field(p), "metadata.name");
        let mut p = ok();
        p.metadata.namespace = "Shop".into();
        assert_eq!(field(p), "metadata.namespace");
        let mut p = ok();
        p.spec.selector = Some(WorkloadSelector {
            match_labels: [("app".to_string(), "web*".to_string())].into(),
        });
        assert_eq!(field(p), "spec.selector.matchLabels");
        let mut p = ok();
        p.spec.action = Action::Deny;
        assert_eq!(field(p), "spec");
        let mut p = ok();
        p.spec.rules = vec![
            Rule::default(),
            Rule {
                from: Some(vec![]),
                to: None,
            },
        ];
        assert_eq!(field(p), "spec.rules[1].from");
        let mut p = ok();
        p.spec.rules = vec![Rule {
            from: None,
            to: Some(vec![RuleTo {
                operation: Operation::default(),
            }]),
        }];
        assert_eq!(field(p), "spec.rules[0].to[0].operation");
    }

    #[test]
    fn names() {
        for good in ["a", "allow-get", "a.b-c", "x1"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", &"a".repeat(254)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_namespace("shop").is_ok());
        for bad in ["", "a.b", "-a", "Shop", &"a".repeat(64)] {
            assert!(check_namespace(bad).is_err(), "{bad}");
        }
    }
}
