//! Decisions: the allow/deny matrix by every field, precedence, defaults, AUDIT, scope
//! (root namespace, selectors) and TCP traffic against HTTP-only fields.
use super::*;
use crate::policy::{Reason, RuleRef};

const CLIENT: &str = "cluster.local/ns/shop/sa/client";
const OTHER: &str = "cluster.local/ns/other/sa/app";
const WEB: &[(&str, &str)] = &[("app", "web"), ("version", "v1")];

/// An ALLOW policy for `shop/web` with one rule.
fn allow_web(rule: &str) -> PolicySet {
    set(&[doc(
        "shop",
        "allow",
        &format!("selector: {{matchLabels: {{app: web}}}}\nrules:\n- {rule}"),
    )])
}

/// A DENY policy for `shop/web` with one rule.
fn deny_web(rule: &str) -> PolicySet {
    set(&[doc(
        "shop",
        "deny",
        &format!("selector: {{matchLabels: {{app: web}}}}\naction: DENY\nrules:\n- {rule}"),
    )])
}

fn ok(set: &PolicySet, r: &Request<'_>) -> bool {
    allowed(set, "shop", WEB, r)
}

#[test]
fn no_policy_allows_everything() {
    let s = PolicySet::empty();
    let d = decide(&s, "shop", WEB, &plaintext("198.19.1.5", 80));
    assert!(d.allowed);
    assert_eq!(d.reason, Reason::NoAllowPolicies);
    assert!(d.audits.is_empty());
}

#[test]
fn principals_exact_prefix_suffix_any_and_not() {
    let s = allow_web(&format!("from: [{{source: {{principals: [{CLIENT}]}}}}]"));
    assert!(ok(&s, &mtls(CLIENT, "198.19.1.5", 80)));
    assert!(!ok(&s, &mtls(OTHER, "198.19.1.5", 80)));
    assert!(
        !ok(&s, &plaintext("198.19.1.5", 80)),
        "plaintext has no principal"
    );

    let s = allow_web("from: [{source: {principals: ['cluster.local/ns/shop/*']}}]");
    assert!(ok(&s, &mtls(CLIENT, "198.19.1.5", 80)));
    assert!(!ok(&s, &mtls(OTHER, "198.19.1.5", 80)));

    let s = allow_web("from: [{source: {principals: ['*/sa/client']}}]");
    assert!(ok(&s, &mtls(CLIENT, "198.19.1.5", 80)));
    assert!(!ok(&s, &mtls(OTHER, "198.19.1.5", 80)));

    let s = allow_web("from: [{source: {principals: ['*']}}]");
    assert!(
        ok(&s, &mtls(OTHER, "198.19.1.5", 80)),
        "* is any peer with mTLS"
    );
    assert!(!ok(&s, &plaintext("198.19.1.5", 80)));

    let s = allow_web(&format!(
        "from: [{{source: {{notPrincipals: [{CLIENT}]}}}}]"
    ));
    assert!(!ok(&s, &mtls(CLIENT, "198.19.1.5", 80)));
    assert!(ok(&s, &mtls(OTHER, "198.19.1.5", 80)));
    assert!(
        ok(&s, &plaintext("198.19.1.5", 80)),
        "a plaintext peer matches every notPrincipals (Envoy: not(authenticated) is true)"
    );
}

#[test]
fn deny_not_principals_star_refuses_plaintext() {
    let s = set(&[doc(
        "shop",
        "require-mtls",
        "action: DENY\nrules:\n- from: [{source: {notPrincipals: ['*']}}]",
    )]);
    assert!(!ok(&s, &plaintext("198.19.1.5", 80)));
    assert!(ok(&s, &mtls(CLIENT, "198.19.1.5", 80)));
}

#[test]
fn namespaces_and_not_namespaces() {
    let s = allow_web("from: [{source: {namespaces: [shop, 'team-*']}}]");
    assert!(ok(&s, &mtls(CLIENT, "198.19.1.5", 80)));
    assert!(ok(
        &s,
        &mtls("cluster.local/ns/team-a/sa/x", "198.19.1.5", 80)
    ));
    assert!(!ok(&s, &mtls(OTHER, "198.19.1.5", 80)));
    assert!(!ok(&s, &plaintext("198.19.1.5", 80)));

    let s = allow_web("from: [{source: {notNamespaces: [other]}}]");
    assert!(ok(&s, &mtls(CLIENT, "198.19.1.5", 80)));
    assert!(!ok(&s, &mtls(OTHER, "198.19.1.5", 80)));
    assert!(
        ok(&s, &plaintext("198.19.1.5", 80)),
        "plaintext has no namespace to exclude"
    );
}

#[test]
fn ip_blocks_and_not_ip_blocks() {
    let s =
        allow_web("from: [{source: {ipBlocks: [198.19.1.0/24, 10.0.0.7, 'fd6f:7264:1::/48']}}]");
    assert!(ok(&s, &plaintext("198.19.1.200", 80)));
    assert!(ok(&s, &plaintext("10.0.0.7", 80)));
    assert!(ok(&s, &plaintext("fd6f:7264:1::10", 80)));
    assert!(
        ok(&s, &plaintext("::ffff:198.19.1.9", 80)),
        "IPv4-mapped is IPv4"
    );
    assert!(!ok(&s, &plaintext("198.19.2.1", 80)));
    assert!(!ok(&s, &plaintext("10.0.0.8", 80)));

    let s =
        allow_web("from: [{source: {ipBlocks: [198.19.0.0/16], notIpBlocks: [198.19.9.0/24]}}]");
    assert!(ok(&s, &plaintext("198.19.1.1", 80)));
    assert!(!ok(&s, &plaintext("198.19.9.1", 80)));
}

#[test]
fn ports_and_not_ports() {
    let s = allow_web("to: [{operation: {ports: ['8080', 9090]}}]");
    assert!(ok(&s, &plaintext("198.19.1.5", 8080)));
    assert!(ok(&s, &plaintext("198.19.1.5", 9090)));
    assert!(!ok(&s, &plaintext("198.19.1.5", 80)));

    let s = allow_web("to: [{operation: {notPorts: ['22']}}]");
    assert!(ok(&s, &plaintext("198.19.1.5", 80)));
    assert!(!ok(&s, &plaintext("198.19.1.5", 22)));
}

#[test]
fn methods_paths_hosts() {
    let c = || mtls(CLIENT, "198.19.1.5", 80);
    let s = allow_web("to: [{operation: {methods: [GET, HEAD]}}]");
    assert!(ok(&s, &http(c(), "GET", "/", "web")));
    assert!(!ok(&s, &http(c(), "POST", "/", "web")));
    assert!(
        !ok(&s, &http(c(), "get", "/", "web")),
        "methods are case-sensitive"
    );
    let s = allow_web("to: [{operation: {notMethods: [DELETE]}}]");
    assert!(ok(&s, &http(c(), "GET", "/", "web")));
    assert!(!ok(&s, &http(c(), "DELETE", "/", "web")));

    let s = allow_web("to: [{operation: {paths: [/exact, /api/*, '*.html']}}]");
    for (path, yes) in [
        ("/exact", true),
        ("/exact?x=1", true),
        ("/exact/", false),
        ("/api/", true),
        ("/api/v1/items", true),
        ("/ap", false),
        ("/index.html", true),
        ("/index.html#top", true),
        ("/index.htm", false),
    ] {
        assert_eq!(ok(&s, &http(c(), "GET", path, "web")), yes, "{path}");
    }
    let s = allow_web("to: [{operation: {paths: ['*']}}]");
    assert!(ok(&s, &http(c(), "GET", "/anything", "web")));
    let s = allow_web("to: [{operation: {notPaths: [/admin*]}}]");
    assert!(ok(&s, &http(c(), "GET", "/api", "web")));
    assert!(!ok(&s, &http(c(), "GET", "/admin/x", "web")));

    let s = allow_web("to: [{operation: {hosts: [web.shop, 'web.shop:*', '*.example.com']}}]");
    for (host, yes) in [
        ("web.shop", true),
        ("WEB.Shop", true),
        ("web.shop:8080", true),
        ("a.example.com", true),
        ("web.shop.svc", false),
        ("example.com", false),
    ] {
        assert_eq!(ok(&s, &http(c(), "GET", "/", host)), yes, "{host}");
    }
    let s = allow_web("to: [{operation: {notHosts: ['admin.*']}}]");
    assert!(ok(&s, &http(c(), "GET", "/", "web.shop")));
    assert!(!ok(&s, &http(c(), "GET", "/", "ADMIN.shop")));
}

/// `hosts` as Istio's (its `HostMatcher`: exact, prefix or suffix, ignoring case, on the
/// `Host`/`:authority` as sent, port included): a host written without a port matches only
/// a request without one, `x:*` any port, `x:8080` that port.
#[test]
fn hosts_match_the_authority_with_its_port_as_istio() {
    let c = || mtls(CLIENT, "198.19.1.5", 80);
    let table: &[(&str, &[(&str, bool)])] = &[
        (
            "web.shop",
            &[
                ("web.shop", true),
                ("WEB.Shop", true),
                ("web.shop:8080", false),
                ("web.shop.", false),
                ("admin.shop", false),
                ("", false),
            ],
        ),
        (
            "admin.shop:8080",
            &[
                ("admin.shop:8080", true),
                ("ADMIN.SHOP:8080", true),
                ("admin.shop", false),
                ("admin.shop:9090", false),
                ("admin.shop:80800", false),
            ],
        ),
        (
            "web.shop:*",
            &[
                ("web.shop:8080", true),
                ("web.shop:1", true),
                ("web.shop", false),
                ("web.shopx:80", false),
            ],
        ),
        (
            "*.shop",
            &[
                ("web.shop", true),
                ("a.b.SHOP", true),
                ("shop", false),
                ("web.shop:8080", false),
            ],
        ),
        (
            "*.shop:8080",
            &[("web.shop:8080", true), ("web.shop", false)],
        ),
        (
            "web.*",
            &[
                ("web.shop", true),
                ("web.shop:8080", true),
                ("webshop", false),
            ],
        ),
        (
            "[fd00::1]:8080",
            &[("[FD00::1]:8080", true), ("[fd00::1]", false)],
        ),
        ("*", &[("anything:1", true), ("", false)]),
    ];
    for (pattern, cases) in table {
        let s = allow_web(&format!("to: [{{operation: {{hosts: ['{pattern}']}}}}]"));
        let deny = deny_web(&format!("to: [{{operation: {{notHosts: ['{pattern}']}}}}]"));
        for &(host, yes) in *cases {
            let request = http(c(), "GET", "/", host);
            assert_eq!(ok(&s, &request), yes, "hosts: [{pattern}] vs {host:?}");
            assert_eq!(
                ok(&deny, &request),
                yes,
                "DENY notHosts: [{pattern}] vs {host:?}"
            );
        }
    }
}

#[test]
fn fields_and_values_combine_as_istio_says() {
    // Source fields AND'ed; values OR'ed; from entries OR'ed; to entries OR'ed; from AND to.
    let s = allow_web(&format!(
        "from:\n  - source: {{principals: [{CLIENT}], ipBlocks: [198.19.1.0/24]}}\n  - source: {{namespaces: [ops]}}\n  to:\n  - operation: {{ports: ['80'], methods: [GET]}}\n  - operation: {{ports: ['9090']}}"
    ));
    assert!(ok(
        &s,
        &http(mtls(CLIENT, "198.19.1.5", 80), "GET", "/", "w")
    ));
    assert!(
        !ok(&s, &http(mtls(CLIENT, "198.19.2.5", 80), "GET", "/", "w")),
        "ip AND principal"
    );
    assert!(ok(
        &s,
        &http(
            mtls("cluster.local/ns/ops/sa/x", "10.1.1.1", 80),
            "GET",
            "/",
            "w"
        )
    ));
    assert!(
        !ok(&s, &http(mtls(CLIENT, "198.19.1.5", 80), "POST", "/", "w")),
        "port AND method"
    );
    assert!(
        ok(&s, &http(mtls(CLIENT, "198.19.1.5", 9090), "PUT", "/", "w")),
        "second operation"
    );
    assert!(
        !ok(&s, &http(mtls(OTHER, "198.19.1.5", 9090), "PUT", "/", "w")),
        "to AND from"
    );
    // Over TCP the whole rule is dropped, its HTTP-free operation too (istiod drops a rule
    // from the TCP filter when any of its values is HTTP-only).
    assert!(!ok(&s, &mtls(CLIENT, "198.19.1.5", 9090)));
}

#[test]
fn deny_wins_over_allow() {
    let s = set(&[
        doc("shop", "allow-all", "rules: [{}]"),
        doc(
            "shop",
            "deny-other",
            &format!("action: DENY\nrules:\n- from: [{{source: {{principals: [{OTHER}]}}}}]"),
        ),
    ]);
    assert!(ok(&s, &mtls(CLIENT, "198.19.1.5", 80)));
    let d = decide(&s, "shop", WEB, &mtls(OTHER, "198.19.1.5", 80));
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        Reason::DenyPolicy(RuleRef {
            policy: "shop/deny-other",
            rule: 0
        })
    );
    assert_eq!(d.policy(), Some("shop/deny-other"));
    assert_eq!(
        d.to_string(),
        "deny: denied by DENY policy shop/deny-other rule 0"
    );
}

#[test]
fn an_allow_policy_that_does_not_match_denies() {
    let s = allow_web(&format!("from: [{{source: {{principals: [{CLIENT}]}}}}]"));
    let d = decide(&s, "shop", WEB, &mtls(OTHER, "198.19.1.5", 80));
    assert!(!d.allowed);
    assert_eq!(d.reason, Reason::NoAllowMatched);
    assert_eq!(d.to_string(), "deny: no ALLOW policy matched");
    let d = decide(&s, "shop", WEB, &mtls(CLIENT, "198.19.1.5", 80));
    assert_eq!(
        d.to_string(),
        "allow: allowed by ALLOW policy shop/allow rule 0"
    );
    // A workload the policy doesn't select is not affected.
    assert!(allowed(
        &s,
        "shop",
        &[("app", "db")],
        &mtls(OTHER, "198.19.1.5", 80)
    ));
}

#[test]
fn empty_rules_allow_nothing_and_an_empty_rule_matches_everything() {
    let nothing = set(&[doc("shop", "allow-nothing", "{}")]);
    assert!(!ok(&nothing, &mtls(CLIENT, "198.19.1.5", 80)));
    let absent = set(&[
        "apiVersion: security.outrider.io/v1alpha1\nkind: AuthorizationPolicy\n\
        metadata: {name: a, namespace: shop}\n"
            .to_string(),
    ]);
    assert!(
        !ok(&absent, &plaintext("198.19.1.5", 80)),
        "no spec: allow nothing"
    );
    let null = set(&[doc("shop", "a", "")]);
    assert!(
        !ok(&null, &plaintext("198.19.1.5", 80)),
        "`spec:` alone: allow nothing"
    );
    let all = set(&[doc("shop", "allow-all", "rules: [{}]")]);
    assert!(ok(&all, &plaintext("198.19.1.5", 80)));
    let deny_all = set(&[doc("shop", "deny-all", "action: DENY\nrules: [{}]")]);
    assert!(!ok(&deny_all, &mtls(CLIENT, "198.19.1.5", 80)));
}

#[test]
fn audit_reports_and_never_decides() {
    let s = set(&[
        doc(
            "shop",
            "audit-get",
            "action: AUDIT\nrules:\n- to: [{operation: {methods: [GET]}}]",
        ),
        doc(
            "shop",
            "audit-any",
            "action: AUDIT\nrules:\n- from: [{source: {ipBlocks: [10.0.0.0/8]}}]\n- {}",
        ),
    ]);
    let d = decide(
        &s,
        "shop",
        WEB,
        &http(mtls(CLIENT, "198.19.1.5", 80), "GET", "/", "w"),
    );
    assert!(d.allowed);
    assert_eq!(d.reason, Reason::NoAllowPolicies, "AUDIT is not ALLOW");
    let audits: Vec<String> = d.audits.iter().map(|a| a.to_string()).collect();
    assert_eq!(audits, ["shop/audit-any rule 1", "shop/audit-get rule 0"]);
    assert_eq!(
        d.to_string(),
        "allow: no ALLOW policy applies; audited by shop/audit-any rule 1, shop/audit-get rule 0"
    );
    let d = decide(
        &s,
        "shop",
        WEB,
        &http(mtls(CLIENT, "198.19.1.5", 80), "POST", "/", "w"),
    );
    assert_eq!(d.audits.len(), 1);

    // Audited while denied, too; and more than four audits are all kept.
    let mut docs: Vec<String> = (0..6)
        .map(|i| doc("shop", &format!("audit-{i}"), "action: AUDIT\nrules: [{}]"))
        .collect();
    docs.push(doc("shop", "deny", "action: DENY\nrules: [{}]"));
    let s = set(&docs);
    let d = decide(&s, "shop", WEB, &plaintext("198.19.1.5", 80));
    assert!(!d.allowed);
    assert_eq!(d.audits.len(), 6);
    assert_eq!(d.audits.iter().last().unwrap().policy, "shop/audit-5");
}

#[test]
fn root_namespace_policies_apply_everywhere() {
    let s = set(&[
        doc(
            ROOT,
            "deny-ssh",
            "action: DENY\nrules:\n- to: [{operation: {ports: ['22']}}]",
        ),
        doc(
            ROOT,
            "allow-v1",
            "selector: {matchLabels: {version: v1}}\nrules:\n- from: [{source: {namespaces: [shop]}}]",
        ),
        doc("other", "allow-all", "rules: [{}]"),
    ]);
    for ns in ["shop", "other", ROOT, "kube-system"] {
        assert!(
            !allowed(&s, ns, &[], &mtls(CLIENT, "198.19.1.5", 22)),
            "{ns}"
        );
    }
    // The root ALLOW selects version=v1 workloads of every namespace.
    assert!(allowed(&s, "shop", WEB, &mtls(CLIENT, "198.19.1.5", 80)));
    assert!(!allowed(&s, "shop", WEB, &mtls(OTHER, "198.19.1.5", 80)));
    assert!(!allowed(
        &s,
        "data",
        &[("version", "v1")],
        &mtls(OTHER, "198.19.1.5", 80)
    ));
    assert!(allowed(
        &s,
        "data",
        &[("version", "v2")],
        &mtls(OTHER, "198.19.1.5", 80)
    ));
    // A namespace's policies stay in their namespace.
    assert!(allowed(
        &s,
        "other",
        &[("version", "v2")],
        &mtls(OTHER, "198.19.1.5", 80)
    ));
    assert!(allowed(&s, "shop", &[], &mtls(OTHER, "198.19.1.5", 80)));
}

#[test]
fn selectors_need_every_label() {
    let s = set(&[doc(
        "shop",
        "allow-web-v2",
        "selector: {matchLabels: {app: web, version: v2}}\nrules: []",
    )]);
    assert!(!allowed(
        &s,
        "shop",
        &[("app", "web"), ("version", "v2"), ("x", "y")],
        &plaintext("198.19.1.5", 80)
    ));
    assert!(allowed(
        &s,
        "shop",
        &[("app", "web"), ("version", "v1")],
        &plaintext("198.19.1.5", 80)
    ));
    assert!(allowed(
        &s,
        "shop",
        &[("version", "v2")],
        &plaintext("198.19.1.5", 80)
    ));
    assert!(allowed(
        &s,
        "other",
        &[("app", "web"), ("version", "v2")],
        &plaintext("198.19.1.5", 80)
    ));
    let all = set(&[doc("shop", "allow-nothing", "selector: {matchLabels: {}}")]);
    assert!(
        !allowed(&all, "shop", &[], &plaintext("198.19.1.5", 80)),
        "empty selector: all"
    );
}

#[test]
fn tcp_traffic_against_http_only_fields_in_allow_rules() {
    // Istio's TCP task: the ALLOW rule with `methods` is ignored for TCP, so port 9000 is
    // denied; port 9001 too (no other ALLOW rule matches).
    let s = allow_web("to: [{operation: {methods: [GET], ports: ['9000']}}]");
    assert!(!ok(&s, &mtls(CLIENT, "198.19.1.5", 9000)));
    assert!(!ok(&s, &mtls(CLIENT, "198.19.1.5", 9001)));
    assert!(ok(
        &s,
        &http(mtls(CLIENT, "198.19.1.5", 9000), "GET", "/", "w")
    ));
    assert!(!ok(
        &s,
        &http(mtls(CLIENT, "198.19.1.5", 9000), "POST", "/", "w")
    ));
    // Other rules of the same policy still allow TCP.
    let s = set(&[doc(
        "shop",
        "allow",
        "rules:\n- to: [{operation: {paths: [/api/*]}}]\n- to: [{operation: {ports: ['5432']}}]",
    )]);
    assert!(ok(&s, &mtls(CLIENT, "198.19.1.5", 5432)));
    assert!(!ok(&s, &mtls(CLIENT, "198.19.1.5", 80)));
    // An HTTP-only `not` field counts as HTTP-only too.
    let s = allow_web("to: [{operation: {notPaths: [/admin*]}}]");
    assert!(!ok(&s, &mtls(CLIENT, "198.19.1.5", 80)));
}

#[test]
fn tcp_traffic_against_http_only_fields_in_deny_rules() {
    // Istio's TCP task: DENY {methods: [GET]} denies all TCP traffic…
    let s = set(&[doc(
        "shop",
        "deny-get",
        "action: DENY\nrules:\n- to: [{operation: {methods: [GET]}}]",
    )]);
    assert!(!ok(&s, &mtls(CLIENT, "198.19.1.5", 9000)));
    assert!(!ok(&s, &mtls(CLIENT, "198.19.1.5", 9001)));
    assert!(ok(
        &s,
        &http(mtls(CLIENT, "198.19.1.5", 9000), "POST", "/", "w")
    ));
    assert!(!ok(
        &s,
        &http(mtls(CLIENT, "198.19.1.5", 9000), "GET", "/", "w")
    ));
    // …and with a port, only on that port.
    let s = set(&[doc(
        "shop",
        "deny-get",
        "action: DENY\nrules:\n- to: [{operation: {methods: [GET], ports: ['9000']}}]",
    )]);
    assert!(!ok(&s, &mtls(CLIENT, "198.19.1.5", 9000)));
    assert!(ok(&s, &mtls(CLIENT, "198.19.1.5", 9001)));
    // `not` forms are dropped the same way, and the source part still applies.
    let s = set(&[doc(
        "shop",
        "deny",
        &format!(
            "action: DENY\nrules:\n- from: [{{source: {{principals: [{OTHER}]}}}}]\n  to: [{{operation: {{notHosts: [web]}}}}]"
        ),
    )]);
    assert!(!ok(&s, &mtls(OTHER, "198.19.1.5", 80)));
    assert!(ok(&s, &mtls(CLIENT, "198.19.1.5", 80)));
    assert!(ok(
        &s,
        &http(mtls(OTHER, "198.19.1.5", 80), "GET", "/", "web")
    ));
    // AUDIT rules widen like DENY rules.
    let s = set(&[doc(
        "shop",
        "audit",
        "action: AUDIT\nrules:\n- to: [{operation: {paths: [/x]}}]",
    )]);
    assert_eq!(
        decide(&s, "shop", WEB, &mtls(CLIENT, "198.19.1.5", 80))
            .audits
            .len(),
        1
    );
}

#[test]
fn cluster_local_principals_follow_the_trust_domain() {
    let docs = [doc(
        "shop",
        "allow",
        "rules:\n- from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]",
    )];
    let s = set_with(&docs, "example.org");
    assert!(ok(
        &s,
        &mtls("example.org/ns/shop/sa/client", "198.19.1.5", 80)
    ));
    assert!(!ok(&s, &mtls(CLIENT, "198.19.1.5", 80)));
    assert_eq!(s.trust_domain(), "example.org");
}

#[test]
fn http_sensitivity_follows_the_selected_policies() {
    let s = set(&[
        doc("shop", "l4", "rules:\n- to: [{operation: {ports: ['80']}}]"),
        doc(
            "shop",
            "l7",
            "selector: {matchLabels: {app: web}}\nrules:\n- to: [{operation: {paths: [/api/*]}}]",
        ),
        doc(
            ROOT,
            "audit",
            "selector: {matchLabels: {audit: 'yes'}}\naction: AUDIT\nrules:\n- to: [{operation: {methods: [POST]}}]",
        ),
    ]);
    let sensitive = |ns: &str, l: &[(&str, &str)]| {
        let labels = labels(l);
        s.is_http_sensitive(&WorkloadRef {
            namespace: ns,
            labels: &labels,
        })
    };
    assert!(sensitive("shop", WEB));
    assert!(!sensitive("shop", &[("app", "db")]));
    assert!(sensitive("data", &[("audit", "yes")]));
    assert!(!sensitive("data", &[]));
}

#[test]
fn the_first_matching_rule_is_reported() {
    let s = set(&[doc(
        "shop",
        "allow",
        "rules:\n- to: [{operation: {ports: ['1']}}]\n- {}\n- to: [{operation: {ports: ['80']}}]",
    )]);
    assert_eq!(
        decide(&s, "shop", WEB, &plaintext("198.19.1.5", 80)).reason,
        Reason::AllowPolicy(RuleRef {
            policy: "shop/allow",
            rule: 1
        })
    );
}

#[test]
fn many_policies_through_the_index() {
    // Policies indexed under several labels; the workload must find every one that
    // selects it and none that doesn't.
    let mut docs = Vec::new();
    for i in 0..30 {
        docs.push(doc(
            "shop",
            &format!("deny-{i}"),
            &format!(
                "action: DENY\nselector: {{matchLabels: {{app: web, shard: s{}}}}}\nrules:\n- to: [{{operation: {{ports: ['{}']}}}}]",
                i % 3,
                1000 + i
            ),
        ));
    }
    let s = set(&docs);
    let shard1 = [("app", "web"), ("shard", "s1")];
    for i in 0..30 {
        let denied = !allowed(&s, "shop", &shard1, &plaintext("198.19.1.5", 1000 + i));
        assert_eq!(denied, i % 3 == 1, "port {}", 1000 + i);
    }
    assert_eq!(s.len(), 30);
}
