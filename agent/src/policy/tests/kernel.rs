//! Kernel denials: which DENY rules the source's kernel can enforce, and for which
//! (address, port) pairs.
use super::*;
use crate::policy::{DestinationRef, KernelDenial, SourcePod};

const CLIENT: &str = "cluster.local/ns/shop/sa/client";

fn client_pod(ips: &'static [IpAddr]) -> SourcePod<'static> {
    SourcePod {
        principal: Some(CLIENT),
        namespace: Some("shop"),
        ips,
    }
}

fn denials(
    set: &PolicySet,
    pod: &SourcePod<'_>,
    dest_ns: &str,
    dest_labels: &[(&str, &str)],
    dest_ips: &[&str],
) -> Vec<(String, Option<u16>)> {
    let labels = labels(dest_labels);
    let ips: Vec<IpAddr> = dest_ips.iter().map(|s| ip(s)).collect();
    set.kernel_denials(
        pod,
        &[DestinationRef {
            namespace: dest_ns,
            labels: &labels,
            ips: &ips,
        }],
    )
    .into_iter()
    .map(|KernelDenial { ip, port }| (ip.to_string(), port))
    .collect()
}

fn deny(spec_rules: &str) -> PolicySet {
    set(&[doc(
        "data",
        "deny",
        &format!("action: DENY\nselector: {{matchLabels: {{app: db}}}}\nrules:\n{spec_rules}"),
    )])
}

static V4: [IpAddr; 1] = [IpAddr::V4(std::net::Ipv4Addr::new(198, 19, 1, 10))];
const DB: &[(&str, &str)] = &[("app", "db")];

#[test]
fn ports_of_a_matching_deny_rule() {
    let s = deny(&format!(
        "- from: [{{source: {{principals: [{CLIENT}]}}}}]\n  to: [{{operation: {{ports: ['5432', '5433']}}}}]"
    ));
    assert_eq!(
        denials(&s, &client_pod(&V4), "data", DB, &["198.19.2.11"]),
        [
            ("198.19.2.11".into(), Some(5432)),
            ("198.19.2.11".into(), Some(5433))
        ]
    );
    // Another source, another selector, another namespace: nothing.
    let other = SourcePod {
        principal: Some("cluster.local/ns/ops/sa/x"),
        namespace: Some("ops"),
        ips: &V4,
    };
    assert!(denials(&s, &other, "data", DB, &["198.19.2.11"]).is_empty());
    assert!(
        denials(
            &s,
            &client_pod(&V4),
            "data",
            &[("app", "cache")],
            &["198.19.2.11"]
        )
        .is_empty()
    );
    assert!(denials(&s, &client_pod(&V4), "shop", DB, &["198.19.2.11"]).is_empty());
}

#[test]
fn no_to_or_an_operation_without_ports_means_every_port() {
    let s = deny("- from: [{source: {namespaces: [shop]}}]");
    assert_eq!(
        denials(
            &s,
            &client_pod(&V4),
            "data",
            DB,
            &["198.19.2.11", "fd6f::11"]
        ),
        [("198.19.2.11".into(), None)],
        "the pod has no IPv6 address, so it can't reach fd6f::11 at all"
    );
    // Every port wins over single ports of another rule.
    let s = deny("- to: [{operation: {ports: ['1']}}]\n- {}");
    assert_eq!(
        denials(&s, &client_pod(&V4), "data", DB, &["198.19.2.11"]),
        [("198.19.2.11".into(), None)]
    );
}

#[test]
fn not_ports_are_subtracted_or_left_to_the_destination() {
    let s = deny("- to: [{operation: {ports: ['80', '443', '8080'], notPorts: ['443']}}]");
    assert_eq!(
        denials(&s, &client_pod(&V4), "data", DB, &["198.19.2.11"]),
        [
            ("198.19.2.11".into(), Some(80)),
            ("198.19.2.11".into(), Some(8080))
        ]
    );
    // "Every port but 22" is no finite list; the rule's other operation still counts.
    let s = deny("- to: [{operation: {notPorts: ['22']}}, {operation: {ports: ['9000']}}]");
    assert_eq!(
        denials(&s, &client_pod(&V4), "data", DB, &["198.19.2.11"]),
        [("198.19.2.11".into(), Some(9000))]
    );
    let s = deny("- to: [{operation: {notPorts: ['22']}}]");
    assert!(denials(&s, &client_pod(&V4), "data", DB, &["198.19.2.11"]).is_empty());
}

#[test]
fn rules_with_http_only_fields_are_left_to_the_destination() {
    // Over TCP this rule denies port 80, but an HTTP POST to port 80 is allowed: the
    // kernel can't know which it will be.
    let s = deny(
        "- to: [{operation: {ports: ['80'], methods: [GET]}}]\n- to: [{operation: {ports: ['81']}}]",
    );
    assert_eq!(
        denials(&s, &client_pod(&V4), "data", DB, &["198.19.2.11"]),
        [("198.19.2.11".into(), Some(81))]
    );
}

#[test]
fn only_deny_policies_count() {
    for action in ["ALLOW", "AUDIT"] {
        let s = set(&[doc(
            "data",
            "p",
            &format!("action: {action}\nrules: [{{}}]"),
        )]);
        assert!(
            denials(&s, &client_pod(&V4), "data", DB, &["198.19.2.11"]).is_empty(),
            "{action}"
        );
    }
    let root = set(&[doc(
        ROOT,
        "deny-telnet",
        "action: DENY\nrules:\n- to: [{operation: {ports: ['23']}}]",
    )]);
    assert_eq!(
        denials(&root, &client_pod(&V4), "anywhere", &[], &["198.19.2.11"]),
        [("198.19.2.11".into(), Some(23))]
    );
}

#[test]
fn ip_blocks_use_the_source_address_of_the_destination_family() {
    static DUAL: [IpAddr; 2] = [
        IpAddr::V4(std::net::Ipv4Addr::new(198, 19, 1, 10)),
        IpAddr::V6(std::net::Ipv6Addr::new(0xfd6f, 0x7264, 1, 0, 0, 0, 0, 0x10)),
    ];
    let s = deny(
        "- from: [{source: {ipBlocks: [198.19.1.0/24]}}]\n  to: [{operation: {ports: ['80']}}]",
    );
    assert_eq!(
        denials(
            &s,
            &client_pod(&DUAL),
            "data",
            DB,
            &["198.19.2.11", "fd6f:7264:2::11", "::ffff:198.19.2.12"]
        ),
        [
            ("198.19.2.11".into(), Some(80)),
            ("198.19.2.12".into(), Some(80))
        ],
        "IPv6 connections come from the IPv6 address, outside the block"
    );
    let s = deny("- from: [{source: {notIpBlocks: [198.19.1.0/24]}}]");
    assert!(denials(&s, &client_pod(&DUAL), "data", DB, &["198.19.2.11"]).is_empty());
    assert_eq!(
        denials(&s, &client_pod(&DUAL), "data", DB, &["fd6f:7264:2::11"]),
        [("fd6f:7264:2::11".into(), None)]
    );
}

#[test]
fn several_destinations_at_once() {
    let s = deny("- to: [{operation: {ports: ['5432']}}]");
    let (db, cache) = (labels(DB), labels(&[("app", "cache")]));
    let (db_ips, cache_ips) = ([ip("198.19.2.11")], [ip("198.19.2.12")]);
    let out = s.kernel_denials(
        &client_pod(&V4),
        &[
            DestinationRef {
                namespace: "data",
                labels: &cache,
                ips: &cache_ips,
            },
            DestinationRef {
                namespace: "data",
                labels: &db,
                ips: &db_ips,
            },
        ],
    );
    assert_eq!(
        out,
        [KernelDenial {
            ip: ip("198.19.2.11"),
            port: Some(5432)
        }]
    );
}
