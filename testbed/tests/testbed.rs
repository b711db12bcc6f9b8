//! End-to-end: the testbed itself — pods reach each other across nodes, `exec` runs in the
//! pod's namespace and cgroup, bad specs are refused with their location, `down`
//! removes everything, also what a crashed `up` left, and pods outside the mesh reach
//! Services through the nodes' kube-proxy-like rules, which follow readiness.
mod support;

use std::{collections::BTreeMap, net::SocketAddr, process::Command};

use support::Testbed;

const SPEC: &str = "nodes:
  - name: node-a
    pods:
      - {namespace: shop, name: web, serviceAccount: web}
  - name: node-b
    pods:
      - {namespace: data, name: db, serviceAccount: db, enrolled: false}
";

#[test]
fn pods_reach_each_other_across_nodes_and_exec_runs_inside_the_pod() {
    let tb = Testbed::up(SPEC, false);
    let web = tb.pod("shop/web").clone();
    for addr in [web.ipv4.to_string(), web.ipv6.to_string()] {
        let out = tb.exec("data/db", &["ping", "-c1", "-W2", &addr]);
        assert!(out.status.success(), "data/db → {addr}: {out:?}");
    }
    let out = tb.sh(
        "shop/web",
        "cat /proc/self/cgroup; ip -o addr show dev eth0",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "/{}/node-a/kubepods/besteffort/pod{}",
            tb.state.prefix, web.uid
        )),
        "{text}"
    );
    assert!(text.contains(&web.ipv4.to_string()), "{text}");
    let out = tb.sh("shop/web", "exit 7");
    assert_eq!(out.status.code(), Some(7), "exec passes the exit code on");
}

#[test]
fn a_bad_spec_is_refused_with_its_location_and_nothing_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.yaml");
    std::fs::write(
        &spec,
        "nodes:\n  - name: node-a\n    pods:\n      - {namespace: shop, name: Web}\n",
    )
    .unwrap();
    let out = support::testbed()
        .args(["up", "--spec"])
        .arg(&spec)
        .arg("--state")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("spec.yaml: line 4"), "{stderr}");
    assert!(stderr.contains("nodes[0].pods[0].name"), "{stderr}");
    assert!(
        !dir.path().join("state/prefix").exists(),
        "nothing may be made for a bad spec"
    );
}

#[test]
fn down_removes_what_a_crashed_up_left() {
    let tb = Testbed::up(SPEC, false);
    let dir = tempfile::tempdir().unwrap();
    // A crash after the prefix was written and one namespace made: fake it with a second
    // prefix that shares the live testbed's tag.
    let prefix = format!("{}x", &tb.state.prefix[..tb.state.prefix.len() - 1]);
    std::fs::write(dir.path().join("prefix"), format!("{prefix}\n")).unwrap();
    let netns = format!("{prefix}-node-a");
    assert!(
        Command::new("ip")
            .args(["netns", "add", &netns])
            .status()
            .unwrap()
            .success()
    );
    let cgroup = tb
        .state
        .cgroup_root
        .with_file_name(&prefix)
        .join("node-a/pods/shop-web");
    std::fs::create_dir_all(&cgroup).unwrap();

    let out = support::testbed()
        .args(["down", "--state"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&netns));
    assert!(!tb.state.cgroup_root.with_file_name(&prefix).exists());
    // The live testbed is untouched.
    assert!(tb.state.cgroup_root.exists());
    let out = tb.exec("shop/web", &["true"]);
    assert!(out.status.success());
}

/// Two endpoints of shop/web on two nodes, each serving the named port `http` on its own
/// container port; a client outside the mesh; a Service whose selector matches nothing.
const SERVICES_SPEC: &str = "nodes:
  - name: node-a
    pods:
      - {namespace: shop, name: web-a, enrolled: false, labels: {app: web},
         ports: [{name: http, containerPort: 8080}]}
      - {namespace: shop, name: client, enrolled: false}
  - name: node-b
    pods:
      - {namespace: shop, name: web-b, enrolled: false, labels: {app: web},
         ports: [{name: http, containerPort: 8081}]}
services:
  - {namespace: shop, name: web, selector: {app: web},
     ports: [{name: http, port: 80, targetPort: http}]}
  - {namespace: shop, name: nobody, selector: {app: nobody}, ports: [{port: 80}]}
";

/// Opens `n` connections from `pod` to `dst` (one at a time) and counts which endpoint
/// (the name each server answers with, sending nothing) served each; failures count
/// under "".
fn tally(tb: &Testbed, pod: &str, dst: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let script = format!(
        "for i in $(seq {n}); do socat -T5 -u {},connect-timeout=5 STDOUT || echo; done",
        support::socat_target(dst)
    );
    let out = tb.sh(pod, &script);
    let mut counts = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        *counts.entry(line.trim().to_string()).or_insert(0) += 1;
    }
    assert_eq!(
        counts.values().sum::<usize>(),
        n,
        "{pod} → {dst}: {counts:?}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    counts
}

#[test]
fn pods_outside_the_mesh_reach_a_service_through_kube_proxy_rules_that_follow_readiness() {
    let tb = Testbed::up(SERVICES_SPEC, true);
    let web = tb.service("shop/web").clone();
    assert_eq!(web.cluster_ips.len(), 2, "{web:?}");
    assert!(web.cluster_ips[0].is_ipv4() && web.cluster_ips[1].is_ipv6());
    let vip4 = SocketAddr::new(tb.cluster_ip("shop/web", false), 80);
    let vip6 = SocketAddr::new(tb.cluster_ip("shop/web", true), 80);
    assert!(vip4.ip().to_string().starts_with("198.18.96."), "{vip4}");
    assert!(
        vip6.ip().to_string().starts_with("fd6f:7264:ffff::"),
        "{vip6}"
    );
    let _a = tb.tcp_server("shop/web-a", 8080, "SYSTEM:echo web-a");
    let _b = tb.tcp_server("shop/web-b", 8081, "SYSTEM:echo web-b");

    // Both endpoints (one on each node, each on its own port for `http`) take new
    // connections, by either family.
    for vip in [vip4, vip6] {
        let counts = tally(&tb, "shop/client", vip, 30);
        assert_eq!(
            counts.get("web-a").copied().unwrap_or(0) + counts.get("web-b").copied().unwrap_or(0),
            30,
            "{vip}: {counts:?}"
        );
        assert!(
            counts.get("web-a").is_some_and(|n| *n >= 3),
            "{vip}: {counts:?}"
        );
        assert!(
            counts.get("web-b").is_some_and(|n| *n >= 3),
            "{vip}: {counts:?}"
        );
    }

    // The agents are told, as the EndpointSlice controller would tell them.
    let endpoint = |node: &str, ip: std::net::IpAddr| {
        let set = tb.workload_file(node);
        let svc = set
            .services
            .iter()
            .find(|s| s.name == "web")
            .unwrap()
            .clone();
        svc.endpoints
            .unwrap()
            .into_iter()
            .find(|e| e.ip == ip)
            .unwrap_or_else(|| panic!("no endpoint {ip} in {node}'s workload file"))
    };
    let web_b = tb.pod("shop/web-b").clone();
    let before = endpoint("node-a", web_b.ipv4.into());
    assert!(before.ready && before.ports["http"] == 8081, "{before:?}");
    assert_eq!(before.node.as_deref(), Some("node-b"));

    tb.set_ready("shop/web-b", false);
    for node in ["node-a", "node-b"] {
        let after = endpoint(node, web_b.ipv6.into());
        assert!(
            !after.ready && !after.serving() && !after.terminating,
            "{after:?}"
        );
    }
    for vip in [vip4, vip6] {
        let counts = tally(&tb, "shop/client", vip, 20);
        assert_eq!(
            counts.get("web-a"),
            Some(&20),
            "{vip}: web-b is not ready: {counts:?}"
        );
    }
    // A pod reaching itself through its Service (kube-proxy masquerades that one case).
    let counts = tally(&tb, "shop/web-a", vip4, 3);
    assert_eq!(counts.get("web-a"), Some(&3), "{counts:?}");

    // Ready again: it is picked again.
    tb.set_ready("shop/web-b", true);
    let counts = tally(&tb, "shop/client", vip4, 30);
    assert!(counts.get("web-b").is_some_and(|n| *n >= 3), "{counts:?}");

    // No endpoints: refused at once (kube-proxy's REJECT), not left to time out.
    let nobody = SocketAddr::new(tb.cluster_ip("shop/nobody", false), 80);
    let out = tb.sh(
        "shop/client",
        &format!(
            "printf x | socat -t5 -T5 STDIO {}",
            support::socat_target(nobody)
        ),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Connection refused"),
        "{stderr}"
    );
}
