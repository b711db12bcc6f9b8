//! End-to-end: the agent's inputs on a real testbed — a workload file with an error, a
//! pod whose network namespace is gone, capture exclusions from the agent's config, and
//! changed pod records applied in place: labels flipped under attack open no hole into a
//! strict pod, a label a policy selects on and a port a Service names take effect on the
//! next connection, and the pod keeps its kernel slot and counters throughout.
mod support;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Testbed, specs, traffic};

/// The two-node testbed, its agents excluding port 7400 and node-b's pod network from
/// capture.
fn spec() -> String {
    specs::client_and_db(&[], &[])
        + "agent:\n  capture:\n    excludePorts: [7400]\n    excludeCidrs: ['198.19.2.0/24']\n"
}

fn connect(tb: &Testbed, pod: &str, dst: SocketAddr) {
    let target = support::socat_target(dst);
    let out = tb.exec(pod, &["socat", "-t5", "-T5", "STDIO", &target]);
    assert!(
        out.status.success(),
        "{pod} → {dst}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
}

fn captured(tb: &Testbed, dst: SocketAddr) -> bool {
    tb.agent_log("node-a")
        .iter()
        .any(|v| v["target"] == "access" && v["fields"]["dst"] == dst.to_string())
}

fn wait_captured(tb: &Testbed, dst: SocketAddr) -> Value {
    tb.wait_log("node-a", Duration::from_secs(5), |v| {
        v["target"] == "access" && v["fields"]["dst"] == dst.to_string()
    })
}

#[test]
fn excluded_cidrs_and_ports_pass_untouched() {
    let tb = Testbed::up(&spec(), true);
    let db = tb.pod("data/db").clone();
    let _a = tb.tcp_server("data/db", 7000, "SYSTEM:echo hi");
    let _b = tb.tcp_server("data/db", 7400, "SYSTEM:echo hi");

    let excluded_cidr = SocketAddr::new(db.ipv4.into(), 7000);
    let excluded_port = SocketAddr::new(db.ipv6.into(), 7400);
    let captured_dst = SocketAddr::new(db.ipv6.into(), 7000);
    connect(&tb, "shop/client", excluded_cidr);
    connect(&tb, "shop/client", excluded_port);
    connect(&tb, "shop/client", captured_dst);
    wait_captured(&tb, captured_dst);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!captured(&tb, excluded_cidr), "198.19.2.0/24 is excluded");
    assert!(!captured(&tb, excluded_port), "port 7400 is excluded");
}

#[test]
fn a_bad_workload_file_is_reported_and_the_running_set_stays() {
    let tb = Testbed::up(&spec(), true);
    let db = tb.pod("data/db").clone();
    let _server = tb.tcp_server("data/db", 7000, "SYSTEM:echo hi");
    let workloads = tb.node("node-a").agent.clone().unwrap().workloads;
    let good = std::fs::read_to_string(&workloads).unwrap();

    let mark = tb.log_mark("node-a");
    let bad = good.replacen(
        "serviceAccount: client",
        "serviceAccount: client\n  ips: [not-an-ip]",
        1,
    );
    std::fs::write(
        &workloads,
        format!("{bad}\n  - {{namespace: shop, name: x, netns: relative}}\n"),
    )
    .unwrap();
    let err = tb.wait_log_after("node-a", mark, Duration::from_secs(5), |v| {
        v["fields"]["message"] == "workload file rejected; the previous version stays in force"
    });
    let text = err["fields"]["error"].as_str().unwrap();
    assert!(text.starts_with(workloads.to_str().unwrap()), "{text}");
    assert!(text.contains("line "), "{text}");
    assert_eq!(err["level"], "ERROR");

    // shop/client is still enrolled and captured.
    let dst = SocketAddr::new(db.ipv6.into(), 7000);
    connect(&tb, "shop/client", dst);
    wait_captured(&tb, dst);
    assert!(
        !tb.agent_log("node-a")
            .iter()
            .skip(mark)
            .any(|v| v["fields"]["message"] == "pod unenrolled"),
        "a rejected file must not change the running set"
    );

    // A pod whose namespace is gone is reported and skipped; the others stay.
    let mark = tb.log_mark("node-a");
    std::fs::write(
        &workloads,
        format!(
            "{good}- {{namespace: shop, name: ghost, netns: /run/netns/{}-gone}}\n",
            tb.state.prefix
        ),
    )
    .unwrap();
    let skipped = tb.wait_log_after("node-a", mark, Duration::from_secs(5), |v| {
        v["fields"]["message"] == "pod not enrolled; will retry"
            && v["fields"]["pod"] == "shop/ghost"
    });
    assert!(
        skipped["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("-gone"),
        "{skipped}"
    );
    let dst4 = SocketAddr::new(IpAddr::from(db.ipv6), 7000);
    let before = tb
        .agent_log("node-a")
        .iter()
        .filter(|v| v["target"] == "access" && v["fields"]["dst"] == dst4.to_string())
        .count();
    connect(&tb, "shop/client", dst4);
    tb.wait_log("node-a", Duration::from_secs(5), |_| {
        tb.agent_log("node-a")
            .iter()
            .filter(|v| v["target"] == "access" && v["fields"]["dst"] == dst4.to_string())
            .count()
            > before
    });
}

/// shop/client and shop/outsider on node-a; on node-b secure/vault, strict, labelled and
/// with a named port its Service targets; agents that read their workload file every
/// 20 ms.
fn strict_spec() -> String {
    let node_a = [specs::meshed("shop/client"), specs::outsider()];
    let vault = "{namespace: secure, name: vault, serviceAccount: vault, labels: {app: vault, tier: gold}, ports: [{name: echo, containerPort: 7000}]}";
    specs::nodes(&[("node-a", &node_a), ("node-b", &[vault.to_string()])])
        + &specs::strict(&["secure"])
        + STRICT_REST
}

const STRICT_REST: &str = "services:
  - {namespace: secure, name: vault, selector: {tier: gold}, ports: [{name: echo, port: 80, targetPort: echo}]}
agent:
  workloads: {pollIntervalMs: 20}
";

const CLIENT_ID: &str = "cluster.local/ns/shop/sa/client";

/// Writes an authorization policy and waits until `node`'s agent has loaded it.
fn apply_policy(tb: &Testbed, node: &str, file: &str, yaml: &str) {
    let mark = tb.log_mark(node);
    std::fs::write(tb.state.policy_dir.join(file), yaml).unwrap();
    tb.wait_log_after(node, mark, Duration::from_secs(5), |v| {
        v["fields"]["message"] == "policies loaded"
    });
}

/// `node`'s workload file with `pod`'s record changed by `change`, written atomically.
fn edit_pod(
    tb: &Testbed,
    node: &str,
    pod: &str,
    change: impl FnOnce(&mut outrider::workloads::Workload),
) {
    let mut set = tb.workload_file(node);
    let w = set
        .workloads
        .iter_mut()
        .find(|w| w.key().to_string() == pod)
        .unwrap_or_else(|| panic!("{pod} is not in {node}'s workload file"));
    change(w);
    tb.write_workload_file(node, &set);
}

/// The value of the metric line that starts with `prefix` (0 when absent).
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

/// `node`'s agent's view of `pod` (outriderctl workloads get, JSON).
fn workload_view(tb: &Testbed, node: &str, pod: &str) -> Value {
    serde_json::from_str(&tb.ctl_ok(node, &["-o", "json", "workloads", "get", pod])).unwrap()
}

/// Lines of `node`'s log after `mark` saying `message` about `pod`.
fn said(tb: &Testbed, node: &str, mark: usize, message: &str, pod: &str) -> usize {
    tb.agent_log(node)
        .iter()
        .skip(mark)
        .filter(|v| v["fields"]["message"] == message && v["fields"]["pod"] == pod)
        .count()
}

/// Flips secure/vault's labels (`tier`, and `app`, which a policy selects on) in node-b's
/// workload file every 10 ms for `how_long`, then writes the original back; returns how
/// many flips were written.
fn flip_vault_labels(tb: &Testbed, how_long: Duration) -> usize {
    let original = tb.workload_file("node-b");
    let labels = |app: &str, tier: &str| -> BTreeMap<String, String> {
        [("app", app), ("tier", tier)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let states = [
        labels("vault", "silver"),
        labels("vault-b", "silver"),
        labels("vault-b", "gold"),
        labels("vault", "gold"),
    ];
    let started = Instant::now();
    let mut flips = 0;
    while started.elapsed() < how_long {
        let next = states[flips % states.len()].clone();
        edit_pod(tb, "node-b", "secure/vault", |w| w.labels = next);
        flips += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    tb.write_workload_file("node-b", &original);
    flips
}

/// Of the attack (`outsider`, a tight loop of plaintext) not one connection reached the
/// app; of the meshed traffic (`meshed`, short connections and a long one) none failed.
/// Returns how many attacks there were.
fn assert_no_plaintext_in_and_the_mesh_unbroken(outsider: &Value, meshed: &Value) -> usize {
    let attacks = traffic::attempts(outsider);
    let through: Vec<_> = attacks.iter().filter(|a| a.error.is_none()).collect();
    assert!(
        attacks.len() >= 50,
        "a tight loop: {} attempts",
        attacks.len()
    );
    assert!(
        through.is_empty(),
        "{} of {} plaintext connections reached the strict pod's app (first at {:.3}s)",
        through.len(),
        attacks.len(),
        through[0].at
    );
    let mesh = traffic::attempts(meshed);
    let failed: Vec<_> = mesh.iter().filter(|a| a.error.is_some()).collect();
    assert!(mesh.len() >= 50, "{} meshed connections", mesh.len());
    assert!(
        failed.is_empty(),
        "{} of {} meshed connections failed, first: {:?}",
        failed.len(),
        mesh.len(),
        failed.first().map(|a| (&a.at, &a.target, &a.error))
    );
    assert!(meshed["long_error"].is_null(), "{meshed}");
    assert!(meshed["long_blocks"].as_u64().unwrap() >= 20, "{meshed}");
    attacks.len()
}

#[test]
fn relabelling_a_strict_pod_under_attack_lets_no_plaintext_in_and_keeps_meshed_traffic() {
    let tb = Testbed::up(&strict_spec(), true);
    let vault = tb.pod("secure/vault").clone();
    let _echo = tb.tcp_server("secure/vault", 7000, "EXEC:cat");
    // A policy that selects the pod by `app`: the flips below make it apply and not.
    apply_policy(
        &tb,
        "node-b",
        "allow.yaml",
        &format!(
            "
apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: allow-client, namespace: secure}}
spec:
  selector: {{matchLabels: {{app: vault}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ['{CLIENT_ID}']}}}}]
"
        ),
    );
    let targets = [
        SocketAddr::new(vault.ipv4.into(), 7000),
        SocketAddr::new(vault.ipv6.into(), 7000),
    ];
    let refusals = r#"outrider_refusals_total{namespace="secure",pod="vault",direction="inbound",reason="strict_plaintext"} "#;
    let refused_before = metric(&tb.scrape("node-b"), refusals);
    let before = workload_view(&tb, "node-b", "secure/vault");
    assert_eq!(before["state"], "enrolled", "{before}");
    let mark = tb.log_mark("node-b");

    // The attack: an outsider sends plaintext as fast as it can while the pod's labels
    // flip (one label, and the one the policy selects on); a meshed client keeps a long
    // connection and opens new ones all along.
    let meshed = tb.spawn(
        "shop/client",
        &["python3", "-c", &traffic::traffic(&targets, 3, 20, true)],
    );
    let outsider = tb.spawn(
        "shop/outsider",
        &["python3", "-c", &traffic::traffic(&targets, 3, 0, false)],
    );
    let flips = flip_vault_labels(&tb, Duration::from_millis(2500));

    let meshed = traffic::finish(meshed);
    let outsider = traffic::finish(outsider);
    let attacks = assert_no_plaintext_in_and_the_mesh_unbroken(&outsider, &meshed);

    // The agent saw the flips and applied each in place: never out of the kernel maps.
    let updates = said(
        &tb,
        "node-b",
        mark,
        "pod record updated in place",
        "secure/vault",
    );
    assert!(
        updates >= 20,
        "{updates} updates applied of {flips} flips written"
    );
    assert_eq!(
        said(&tb, "node-b", mark, "pod unenrolled", "secure/vault"),
        0
    );
    assert_eq!(said(&tb, "node-b", mark, "pod enrolled", "secure/vault"), 0);

    // Every attempt reached the agent and was refused (not one went around it).
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let refused = metric(&tb.scrape("node-b"), refusals) - refused_before;
        if refused >= attacks as f64 || Instant::now() > deadline {
            break refused;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(refused, attacks as f64, "refusals counted");

    // The same enrollment: since, and kernel counters that went on growing.
    let after = workload_view(&tb, "node-b", "secure/vault");
    assert_eq!(after["state"], "enrolled", "{after}");
    assert_eq!(after["enrolledSince"], before["enrolledSince"]);
    for counter in ["kernelRxBytes", "kernelTxBytes", "kernelRxPackets"] {
        let (b, a) = (
            before["counters"][counter].as_u64().unwrap(),
            after["counters"][counter].as_u64().unwrap(),
        );
        assert!(a > b, "{counter}: {b} before, {a} after");
    }
}

/// In both nodes' workload files, vault's first (named) port becomes 7001 and the
/// Services list no endpoints (so they follow the pods' ports); returns once each agent
/// loaded its file.
fn move_vaults_named_port_to_7001(tb: &Testbed) {
    for node in ["node-a", "node-b"] {
        let mut set = tb.workload_file(node);
        for svc in &mut set.services {
            svc.endpoints = None;
        }
        let w = set
            .workloads
            .iter_mut()
            .find(|w| w.name == "vault")
            .unwrap();
        w.ports[0].container_port = 7001;
        let node_mark = tb.log_mark(node);
        tb.write_workload_file(node, &set);
        tb.wait_log_after(node, node_mark, Duration::from_secs(5), |v| {
            v["fields"]["message"] == "workload file loaded"
        });
    }
}

#[test]
fn a_label_a_policy_selects_and_a_named_port_take_effect_on_the_next_connection() {
    let tb = Testbed::up(&strict_spec(), true);
    let vault = tb.pod("secure/vault").clone();
    let _seven = tb.tcp_server("secure/vault", 7000, "SYSTEM:echo seven");
    let _eight = tb.tcp_server("secure/vault", 7001, "SYSTEM:echo eight");
    let direct = SocketAddr::new(vault.ipv4.into(), 7000);
    let reaches = |dst: SocketAddr| {
        let out = tb.exec(
            "shop/client",
            &["socat", "-t3", "-T3", "STDIO", &support::socat_target(dst)],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    apply_policy(
        &tb,
        "node-b",
        "deny.yaml",
        "
apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-locked, namespace: secure}
spec:
  selector: {matchLabels: {locked: 'yes'}}
  action: DENY
  rules: [{}]
",
    );
    assert_eq!(reaches(direct), "seven", "no policy selects the pod yet");
    let view = workload_view(&tb, "node-b", "secure/vault");
    let mark = tb.log_mark("node-b");

    // A label the DENY selects on: the next connection is denied, with no re-enrollment.
    edit_pod(&tb, "node-b", "secure/vault", |w| {
        w.labels.insert("locked".into(), "yes".into());
    });
    tb.wait_log_after("node-b", mark, Duration::from_secs(5), |v| {
        v["fields"]["message"] == "pod record updated in place"
    });
    assert_eq!(reaches(direct), "", "the DENY now selects the pod");
    tb.wait_log_after("node-b", mark, Duration::from_secs(5), |v| {
        support::access(v, "inbound", direct)
            && v["fields"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("secure/deny-locked"))
    });
    let mark2 = tb.log_mark("node-b");
    edit_pod(&tb, "node-b", "secure/vault", |w| {
        w.labels.remove("locked");
    });
    tb.wait_log_after("node-b", mark2, Duration::from_secs(5), |v| {
        v["fields"]["message"] == "pod record updated in place"
    });
    assert_eq!(
        reaches(direct),
        "seven",
        "the label is gone, and the DENY with it"
    );

    // A named port: the Service's `targetPort: echo` follows the pod's port list. The
    // client's agent resolves the Service (from the pod's ports: endpoints not listed).
    let vip = SocketAddr::new(tb.cluster_ip("secure/vault", false), 80);
    assert_eq!(reaches(vip), "seven");
    move_vaults_named_port_to_7001(&tb);
    tb.wait_log_after("node-b", mark2, Duration::from_secs(5), |v| {
        v["fields"]["message"] == "pod record updated in place"
            && v["fields"]["changed"]
                .as_str()
                .is_some_and(|c| c.contains("ports"))
    });
    assert_eq!(
        reaches(vip),
        "eight",
        "the named targetPort now resolves to 7001"
    );

    // One enrollment all along: same since, no unenroll or enroll.
    assert_eq!(
        said(&tb, "node-b", mark, "pod unenrolled", "secure/vault"),
        0
    );
    assert_eq!(said(&tb, "node-b", mark, "pod enrolled", "secure/vault"), 0);
    let after = workload_view(&tb, "node-b", "secure/vault");
    assert_eq!(after["enrolledSince"], view["enrolledSince"]);
    // The pod's totals go on (an unenrolled pod's would start again from zero). (Its
    // kernel counters see no traffic here: tunnels count against the agent's cgroup.)
    assert!(
        after["counters"]["connectionsTotal"].as_u64().unwrap()
            >= view["counters"]["connectionsTotal"].as_u64().unwrap() + 3,
        "the pod's counters go on: {view} then {after}"
    );
}
