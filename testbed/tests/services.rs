//! End-to-end: Kubernetes Services in the mesh. An enrolled client dials a Service's
//! cluster IP and its agent sends the connection straight to one of the Service's
//! endpoints over mutual TLS with that endpoint's identity, spread across endpoints on
//! both nodes; a strict namespace serves its meshed clients through its Service; an
//! endpoint that stops being ready gets no new connections while its established ones go
//! on; a Service without endpoints refuses at once; a sidecar-mode client and a pod
//! dialing its own Service work too.
mod support;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Testbed, socat_target};

const SPEC: &str = "
nodes:
  - name: node-a
    pods:
      - {namespace: shop, name: client, serviceAccount: client}
      - {namespace: shop, name: web-1, serviceAccount: web, labels: {app: web}, ports: [{name: http, containerPort: 8080}]}
      - {namespace: shop, name: side, serviceAccount: client, mode: sidecar}
      - {namespace: shop, name: outsider, enrolled: false}
  - name: node-b
    pods:
      - {namespace: shop, name: web-2, serviceAccount: web, labels: {app: web}, ports: [{name: http, containerPort: 8080}]}
      - {namespace: shop, name: web-3, serviceAccount: web, labels: {app: web}, ports: [{name: http, containerPort: 8080}]}
      - {namespace: vault, name: vault, serviceAccount: vault}
namespaces:
  vault: {mtls: strict}
services:
  - {namespace: shop, name: web, selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}
  - {namespace: vault, name: vault, selector: {app: vault}, ports: [{port: 443, targetPort: 8443}]}
  - {namespace: shop, name: nobody, selector: {app: nobody}, ports: [{port: 80}]}
";

const WEB: &str = "web.shop.svc.cluster.local";
const WEB_ID: &str = "spiffe://cluster.local/ns/shop/sa/web";
const WEBS: [&str; 3] = ["shop/web-1", "shop/web-2", "shop/web-3"];

/// The cluster IPs of `namespace/name` (testbed.json lists IPv4 first).
fn cluster_ips(tb: &Testbed, key: &str) -> Vec<IpAddr> {
    vec![tb.cluster_ip(key, false), tb.cluster_ip(key, true)]
}

/// Each web pod answers every connection with its name, then echoes.
fn web_servers(tb: &Testbed) -> Vec<support::Background> {
    WEBS.iter()
        .map(|pod| {
            let name = pod.trim_start_matches("shop/");
            tb.tcp_server(pod, 8080, &format!("SYSTEM:echo {name}; exec cat"))
        })
        .collect()
}

/// `n` connections from `pod` to `dst`, one after another; the first line each got back.
fn names_from(tb: &Testbed, pod: &str, dst: SocketAddr, n: usize) -> Vec<String> {
    let script = format!(
        "for i in $(seq {n}); do socat -T3 STDIO {} </dev/null | head -n1; done",
        socat_target(dst)
    );
    let out = tb.sh(pod, &script);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn count(names: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for n in names {
        *counts.entry(n.clone()).or_insert(0) += 1;
    }
    counts
}

/// Access lines of `node` for outbound connections to `service`.
fn outbound_to(tb: &Testbed, node: &str, service: &str) -> Vec<Value> {
    tb.agent_log(node)
        .into_iter()
        .filter(|v| {
            v["target"] == "access"
                && v["fields"]["direction"] == "outbound"
                && v["fields"]["dst_service"] == service
        })
        .collect()
}

#[test]
fn a_service_spreads_connections_over_endpoints_on_both_nodes_over_mtls() {
    let tb = Testbed::up(SPEC, true);
    let _servers = web_servers(&tb);
    let vips = cluster_ips(&tb, "shop/web");
    assert!(
        vips.len() == 2 && vips[0].is_ipv4() && vips[1].is_ipv6(),
        "{vips:?}"
    );
    const N: usize = 60;
    for vip in &vips {
        let names = names_from(&tb, "shop/client", SocketAddr::new(*vip, 80), N);
        assert_eq!(names.len(), N, "every connection answered: {names:?}");
        let counts = count(&names);
        // A fair share each: 20 expected; below 8 is a 1-in-2000 draw for a fair picker.
        assert_eq!(counts.len(), 3, "{vip}: {counts:?}");
        for (name, n) in &counts {
            assert!(*n >= 8, "{vip}: {name} got {n} of {N}: {counts:?}");
        }
    }
    // Every one of them went through the tunnel, to the endpoint's identity, named by
    // the Service; the endpoint's port is the named targetPort.
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines = outbound_to(&tb, "node-a", WEB);
        if lines.len() >= 2 * N || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(lines.len(), 2 * N, "one access line per connection");
    for line in &lines {
        let f = &line["fields"];
        assert_eq!(f["transport"], "hbone", "{line}");
        assert_eq!(f["dst_identity"], WEB_ID, "{line}");
        assert!(f["dst"].as_str().unwrap_or("").ends_with(":8080"), "{line}");
        assert!(f.get("error").is_none(), "{line}");
    }
    // The destination's agent names the Service too (from the tunnel request), and
    // both reporters' metrics carry Istio's service labels.
    let inbound = tb.wait_log("node-b", Duration::from_secs(5), |v| {
        v["target"] == "access"
            && v["fields"]["direction"] == "inbound"
            && v["fields"]["dst_service"] == WEB
    });
    assert_eq!(inbound["fields"]["transport"], "hbone");
    for (node, reporter) in [("node-a", "source"), ("node-b", "destination")] {
        let text = tb.scrape(node);
        let found = text.lines().any(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains(&format!("reporter=\"{reporter}\""))
                && l.contains(&format!("destination_service=\"{WEB}\""))
                && l.contains("destination_service_name=\"web\"")
                && l.contains("destination_service_namespace=\"shop\"")
        });
        assert!(found, "{node}: no {reporter} series for {WEB}:\n{text}");
    }
}

#[test]
fn a_strict_namespace_serves_its_meshed_clients_through_its_service_only() {
    let tb = Testbed::up(SPEC, true);
    let _vault = tb.tcp_server("vault/vault", 8443, "SYSTEM:echo vault");
    let vip = cluster_ips(&tb, "vault/vault")[0];
    let dst = SocketAddr::new(vip, 443);
    assert_eq!(
        names_from(&tb, "shop/client", dst, 3),
        ["vault"; 3],
        "meshed client"
    );
    assert_eq!(
        names_from(&tb, "shop/side", dst, 3),
        ["vault"; 3],
        "sidecar-mode client"
    );
    // Outside the mesh, through the node's kube-proxy rules: plaintext into a strict pod.
    assert!(
        names_from(&tb, "shop/outsider", dst, 3)
            .iter()
            .all(|l| l.is_empty()),
        "outsider served"
    );
    let line = tb.wait_sidecar_log("shop/side", Duration::from_secs(5), |v| {
        v["target"] == "access" && v["fields"]["dst_service"] == "vault.vault.svc.cluster.local"
    });
    assert_eq!(line["fields"]["transport"], "hbone", "{line}");
    assert_eq!(
        line["fields"]["dst_identity"],
        "spiffe://cluster.local/ns/vault/sa/vault"
    );
}

#[test]
fn an_endpoint_that_stops_being_ready_gets_no_new_connections_and_keeps_its_own() {
    let tb = Testbed::up(SPEC, true);
    let _servers = web_servers(&tb);
    let vip = cluster_ips(&tb, "shop/web")[0];
    let dst = SocketAddr::new(vip, 80);
    // A long connection: which endpoint took it, and it echoes.
    let mut long = tb.spawn_piped(
        "shop/client",
        &["socat", "-T30", "STDIO", &socat_target(dst)],
    );
    let mut input = long.child.stdin.take().expect("stdin");
    let mut output = BufReader::new(long.child.stdout.take().expect("stdout"));
    let mut first = String::new();
    output.read_line(&mut first).expect("the endpoint's name");
    let held = format!("shop/{}", first.trim());
    assert!(WEBS.contains(&held.as_str()), "{first:?}");
    let mut echo = |what: &str| {
        writeln!(input, "{what}").expect("write");
        let mut back = String::new();
        output.read_line(&mut back).expect("read");
        assert_eq!(back.trim(), what, "the established connection echoes");
    };
    echo("before");

    tb.set_ready(&held, false);
    // The agents poll their workload file every 250 ms.
    std::thread::sleep(Duration::from_millis(800));
    let names = names_from(&tb, "shop/client", dst, 30);
    let counts = count(&names);
    assert_eq!(names.len(), 30, "{names:?}");
    assert!(
        !counts.contains_key(held.trim_start_matches("shop/")),
        "{held} still picked: {counts:?}"
    );
    assert_eq!(counts.len(), 2, "{counts:?}");
    echo("after");
}

#[test]
fn a_service_without_endpoints_or_port_refuses_at_once_and_a_pod_reaches_itself() {
    let tb = Testbed::up(SPEC, true);
    let _servers = web_servers(&tb);
    let nobody = cluster_ips(&tb, "shop/nobody")[0];
    let web = cluster_ips(&tb, "shop/web")[0];
    for (dst, reason) in [
        (SocketAddr::new(nobody, 80), "has no ready endpoint"),
        (SocketAddr::new(web, 81), "has no port 81"),
    ] {
        // Timed inside the pod, socat's own start included: a reset at once, not a
        // timeout (5 s).
        let script = format!(
            "s=$(date +%s%N); socat -T5 STDIO {} </dev/null; e=$(date +%s%N); echo took=$(( (e - s) / 1000000 ))",
            socat_target(dst)
        );
        let out = tb.sh("shop/client", &script);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let took: u64 = text
            .trim()
            .strip_prefix("took=")
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("{dst}: got {text:?}"));
        assert!(took < 100, "{dst}: refused after {took} ms");
        let line = tb.wait_log("node-a", Duration::from_secs(5), |v| {
            v["target"] == "access"
                && v["fields"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(reason))
        });
        assert_eq!(line["fields"]["direction"], "outbound", "{line}");
    }
    // web-1 reaches its own Service; whichever endpoint answers, it is a web pod.
    let names = names_from(&tb, "shop/web-1", SocketAddr::new(web, 80), 40);
    assert_eq!(names.len(), 40, "{names:?}");
    assert!(
        count(&names).contains_key("web-1"),
        "web-1 never reached itself: {names:?}"
    );
}

#[test]
fn an_endpoint_that_fails_before_any_byte_moved_is_followed_by_the_next() {
    let tb = Testbed::up(SPEC, true);
    let mut servers = web_servers(&tb);
    // web-2 is ready but its app is gone: the dial to it fails (its agent answers the
    // tunnel's CONNECT with 503), and the client's agent tries another endpoint.
    drop(servers.remove(1));
    let vip = tb.cluster_ip("shop/web", false);
    let names = names_from(&tb, "shop/client", SocketAddr::new(vip, 80), 30);
    assert_eq!(names.len(), 30, "every connection answered: {names:?}");
    let counts = count(&names);
    assert!(!counts.contains_key("web-2"), "{counts:?}");
    assert!(
        counts.values().all(|n| *n > 0) && counts.len() == 2,
        "{counts:?}"
    );
    // Some of them were tried on web-2 first, and logged so.
    let retried = tb.wait_log("node-a", Duration::from_secs(5), |v| {
        v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("trying the next"))
    });
    assert_eq!(retried["fields"]["service"], WEB, "{retried}");
}
