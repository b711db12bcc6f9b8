//! What is refused, and that the error names the file, the document, the line, the field
//! and the reason; and how a directory is read.
use std::{fs, path::PathBuf};

use super::*;
use crate::policy::{AuthorizationPolicy, Origin, PolicyError, parse_yaml};

const FILE: &str = "/etc/outrider/policies/shop.yaml";

/// The error for `text`, as its parts.
fn error(text: &str) -> (usize, Option<usize>, Option<String>, String, String) {
    let err = match parse_documents(Path::new(FILE), text) {
        Ok(items) => PolicySet::build(items, TD, ROOT).map(|_| ()).unwrap_err(),
        Err(err) => err,
    };
    let shown = err.to_string();
    match err {
        PolicyError::Invalid {
            origin: Origin::File { file, document },
            line,
            field,
            reason,
            ..
        } => {
            assert_eq!(file, PathBuf::from(FILE));
            assert!(
                shown.starts_with(&format!("{FILE}: document {document}: ")),
                "{shown}"
            );
            (document, line, field, reason, shown)
        }
        other => panic!("not an Invalid error: {other}"),
    }
}

const GOOD: &str = "apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/shop/sa/client]
        ipBlocks: [198.19.1.0/24]
    to:
    - operation:
        ports: ['8080']
        paths: [/api/*]
";

/// `GOOD` as the second document of a file, with `from` replaced by `to`.
fn second(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from}");
    format!(
        "{}---\n{}",
        doc("shop", "first", "rules: [{}]"),
        GOOD.replacen(from, to, 1)
    )
}

/// The line of GOOD's first line in `second` (the first document and `---` take 6):
/// GOOD's line `n` is at `OFFSET + n - 1`.
const OFFSET: usize = 7;

#[test]
fn good_file_parses() {
    let items = parse_documents(Path::new(FILE), &second("ALLOW", "ALLOW")).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(
        items[1].1,
        Origin::File {
            file: FILE.into(),
            document: 2
        }
    );
}

#[test]
fn unknown_fields_anywhere() {
    let (doc, line, field, reason, _) = error(&second("ipBlocks", "remoteIpBlocks"));
    assert_eq!((doc, line), (2, Some(OFFSET + 10)));
    assert_eq!(field.as_deref(), Some("spec.rules[0].from[0].source"));
    assert!(
        reason.starts_with("unknown field `remoteIpBlocks`"),
        "{reason}"
    );
    let (_, line, field, reason, _) = error(&second("  rules:", "  when: []\n  rules:"));
    assert_eq!((line, field.as_deref()), (Some(OFFSET + 6), Some("spec")));
    assert!(reason.contains("unknown field `when`"), "{reason}");
}

#[test]
fn bad_cidr() {
    let (doc, line, field, reason, shown) = error(&second("198.19.1.0/24", "198.19.1.0/33"));
    assert_eq!((doc, line), (2, Some(OFFSET + 10)));
    assert_eq!(
        field.as_deref(),
        Some("spec.rules[0].from[0].source.ipBlocks[0]")
    );
    assert!(
        reason.contains("\"198.19.1.0/33\" is not an IP address or CIDR block"),
        "{reason}"
    );
    assert!(
        shown.starts_with(&format!(
            "{FILE}: document 2: line 17 column 20: spec.rules[0]"
        )),
        "{shown}"
    );
}

#[test]
fn bad_ports() {
    for bad in ["'0'", "'65536'", "http", "'80-90'", "-1"] {
        let (_, line, field, reason, _) = error(&second("'8080'", bad));
        assert_eq!(line, Some(OFFSET + 13), "{bad}");
        assert_eq!(
            field.as_deref(),
            Some("spec.rules[0].to[0].operation.ports[0]"),
            "{bad}"
        );
        assert!(reason.contains("is not a port"), "{bad}: {reason}");
    }
}

#[test]
fn bad_paths() {
    for (bad, why) in [
        ("/api/*/items", "`*` may only"),
        ("'/api/.*'", "regular expression"),
        ("'/api/{*}'", "path templates"),
        ("api", "starts with `/`"),
    ] {
        let (_, line, field, reason, _) = error(&second("/api/*", bad));
        assert_eq!(line, Some(OFFSET + 14), "{bad}");
        assert_eq!(
            field.as_deref(),
            Some("spec.rules[0].to[0].operation.paths[0]")
        );
        assert!(reason.contains(why), "{bad}: {reason}");
    }
    let (_, _, field, reason, _) = error(&second(
        "principals: [cluster.local/ns/shop/sa/client]",
        "principals: ['cluster.*/sa/x']",
    ));
    assert_eq!(
        field.as_deref(),
        Some("spec.rules[0].from[0].source.principals[0]")
    );
    assert!(reason.contains("`*` may only"), "{reason}");
}

#[test]
fn unknown_action() {
    let (_, line, field, reason, _) = error(&second("action: ALLOW", "action: CUSTOM"));
    assert_eq!(
        (line, field.as_deref()),
        (Some(OFFSET + 5), Some("spec.action"))
    );
    assert!(reason.contains("unknown variant `CUSTOM`"), "{reason}");
}

#[test]
fn metadata_name_and_namespace() {
    let (_, line, field, reason, _) = error(&second("name: allow-get, ", ""));
    assert_eq!((line, field), (Some(OFFSET + 2), Some("metadata".into())));
    assert!(reason.contains("missing field `name`"), "{reason}");
    let (_, _, field, reason, _) = error(&second(", namespace: shop", ""));
    assert_eq!(field.as_deref(), Some("metadata"));
    assert!(reason.contains("missing field `namespace`"), "{reason}");
    let (_, line, field, reason, _) = error(&second("namespace: shop", "namespace: Shop_1"));
    assert_eq!(
        (line, field.as_deref()),
        (Some(OFFSET + 2), Some("metadata.namespace"))
    );
    assert!(reason.contains("not a valid namespace"), "{reason}");
    let (_, _, field, reason, _) = error(&second(
        "metadata: {name: allow-get, namespace: shop}\n",
        "",
    ));
    assert_eq!(field, None);
    assert!(reason.contains("missing field `metadata`"), "{reason}");
}

#[test]
fn api_version_and_kind() {
    let (_, line, field, reason, _) = error(&second(
        "security.outrider.io/v1alpha1",
        "security.istio.io/v1",
    ));
    assert_eq!((line, field.as_deref()), (Some(OFFSET), Some("apiVersion")));
    assert!(
        reason.contains("is not \"security.outrider.io/v1alpha1\""),
        "{reason}"
    );
    let (_, line, field, _, _) = error(&second(
        "kind: AuthorizationPolicy",
        "kind: PeerAuthentication",
    ));
    assert_eq!((line, field.as_deref()), (Some(OFFSET + 1), Some("kind")));
}

#[test]
fn empty_parts_and_deny_without_rules() {
    let (_, _, field, reason, _) = error(&second(
        "    - source:\n        principals: [cluster.local/ns/shop/sa/client]\n        ipBlocks: [198.19.1.0/24]\n",
        "    - source: {}\n",
    ));
    assert_eq!(field.as_deref(), Some("spec.rules[0].from[0]"));
    assert!(reason.contains("`source` must not be empty"), "{reason}");
    let (_, _, field, reason, _) = error(&second(
        "ports: ['8080']\n        paths: [/api/*]",
        "ports: []",
    ));
    assert_eq!(field.as_deref(), Some("spec.rules[0].to[0]"));
    assert!(reason.contains("`operation` must not be empty"), "{reason}");
    let (_, _, field, reason, _) = error(&doc("shop", "x", "rules:\n- from: []"));
    assert_eq!(field.as_deref(), Some("spec.rules[0]"));
    assert!(reason.contains("`from` must not be empty"), "{reason}");
    let (_, _, field, reason, _) = error(&doc("shop", "x", "action: DENY"));
    assert_eq!(field, None);
    assert!(reason.contains("DENY policy without `rules`"), "{reason}");
    let (_, _, _, reason, _) = error(&doc("shop", "x", "action: DENY\nrules: []"));
    assert!(reason.contains("DENY policy without `rules`"), "{reason}");
    let (_, _, field, reason, _) = error(&doc(
        "shop",
        "x",
        "rules:\n- to: [{operation: {methods: ['']}}]",
    ));
    assert_eq!(
        field.as_deref(),
        Some("spec.rules[0].to[0].operation.methods[0]")
    );
    assert!(reason.contains("empty value"), "{reason}");
    let (_, _, field, reason, _) =
        error(&doc("shop", "x", "selector: {matchLabels: {app: 'web*'}}"));
    assert_eq!(field.as_deref(), Some("spec.selector"));
    assert!(reason.contains("wildcard"), "{reason}");
}

#[test]
fn syntax_errors_name_their_document() {
    let (doc, line, _, reason, _) = error(&second("ports: ['8080']", "ports: ['8080'"));
    assert_eq!(doc, 2);
    assert!(line.is_some_and(|l| l >= OFFSET + 13), "{line:?}");
    assert!(reason.contains("flow sequence"), "{reason}");
    let (doc, _, _, reason, _) = error("just a string");
    assert_eq!(doc, 1);
    assert!(reason.contains("invalid type"), "{reason}");
}

#[test]
fn empty_documents_are_skipped_and_parse_yaml_gives_the_objects() {
    let text = format!(
        "# policies\n---\n{GOOD}---\n# nothing\n---\n{}",
        doc("shop", "b", "{}")
    );
    let policies: Vec<AuthorizationPolicy> = parse_yaml(Path::new(FILE), &text).unwrap();
    let names: Vec<&str> = policies.iter().map(|p| p.metadata.name.as_str()).collect();
    assert_eq!(names, ["allow-get", "b"]);
    let items = parse_documents(Path::new(FILE), &text).unwrap();
    // The first `---` starts the first document; the comment-only one is the second.
    assert_eq!(
        items[1].1,
        Origin::File {
            file: FILE.into(),
            document: 3
        }
    );
}

#[test]
fn objects_round_trip_through_yaml() {
    let s = set(&[
        GOOD.to_string(),
        doc(
            "shop",
            "deny",
            "action: DENY\nrules:\n- to: [{operation: {ports: [22], notMethods: [GET]}}]",
        ),
    ]);
    let text: String = s
        .policies()
        .iter()
        .map(|p| serde_yaml_ng::to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    assert!(text.contains("ports:\n        - '22'"), "{text}");
    let again = parse_yaml(Path::new("round-trip.yaml"), &text).unwrap();
    assert_eq!(again, s.policies());
}

#[test]
fn compile_checks_objects_and_names_them() {
    let good: AuthorizationPolicy = serde_yaml_ng::from_str(GOOD).unwrap();
    let mut bad = good.clone();
    bad.metadata.name = "b".into();
    bad.spec.rules[0].from = Some(vec![]);
    let err = PolicySet::compile(vec![good.clone(), bad], TD, ROOT).unwrap_err();
    assert_eq!(
        err.to_string(),
        "policy shop/b (item 1): spec.rules[0].from: `from` must not be empty; leave it out to match any source"
    );
    let err = PolicySet::compile(vec![good.clone(), good.clone()], TD, ROOT).unwrap_err();
    assert_eq!(
        err.to_string(),
        "policy shop/allow-get is defined twice: policy shop/allow-get (item 0) and policy shop/allow-get (item 1)"
    );
    let err = PolicySet::compile(vec![], "Bad.TD", ROOT).unwrap_err();
    assert!(matches!(err, PolicyError::TrustDomain { .. }), "{err}");
    let err = PolicySet::compile(vec![], TD, "Root").unwrap_err();
    assert!(matches!(err, PolicyError::RootNamespace(_)), "{err}");
    let s = PolicySet::compile(vec![good], TD, ROOT).unwrap();
    assert_eq!((s.len(), s.root_namespace()), (1, ROOT));
}

#[test]
fn load_dir_reads_every_yaml_file_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| fs::write(dir.path().join(name), text).unwrap();
    write(
        "b.yml",
        &format!(
            "{}---\n{}",
            doc("shop", "b1", "{}"),
            doc("data", "b2", "{}")
        ),
    );
    write("a.yaml", &doc("shop", "a", "rules: [{}]"));
    write(".hidden.yaml", "not: [valid");
    write("notes.txt", "not: [valid");
    fs::create_dir(dir.path().join("sub.yaml")).unwrap();
    let s = PolicySet::load_dir(dir.path(), TD, ROOT).unwrap();
    let keys: Vec<String> = s.policies().iter().map(|p| p.key()).collect();
    assert_eq!(keys, ["data/b2", "shop/a", "shop/b1"]);

    // One bad file rejects the directory, naming the file.
    write(
        "c.yaml",
        &doc("shop", "c", "rules:\n- to: [{operation: {ports: ['0']}}]"),
    );
    let err = PolicySet::load_dir(dir.path(), TD, ROOT)
        .unwrap_err()
        .to_string();
    let c = dir.path().join("c.yaml");
    assert!(
        err.starts_with(&format!("{}: document 1: line 6", c.display())),
        "{err}"
    );

    // So does a policy defined in two files.
    write("c.yaml", &doc("shop", "a", "{}"));
    let err = PolicySet::load_dir(dir.path(), TD, ROOT).unwrap_err();
    match err {
        PolicyError::Duplicate { key, first, second } => {
            assert_eq!(key, "shop/a");
            assert_eq!(
                first,
                Origin::File {
                    file: dir.path().join("a.yaml"),
                    document: 1
                }
            );
            assert_eq!(
                second,
                Origin::File {
                    file: c,
                    document: 1
                }
            );
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_missing_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = PolicySet::load_dir(&missing, TD, ROOT).unwrap_err();
    assert!(matches!(err, PolicyError::ReadDir { .. }));
    assert!(
        err.to_string().starts_with(&format!(
            "{}: cannot read the policy directory",
            missing.display()
        )),
        "{err}"
    );
}
