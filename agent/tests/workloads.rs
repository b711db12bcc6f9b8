//! End-to-end: the agent's inputs on a real testbed — a workload file with an error, a
//! pod whose network namespace is gone, and capture exclusions from the agent's config.
mod support;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde_json::Value;
use support::Testbed;

const SPEC: &str = "
nodes:
  - name: node-a
    pods:
      - {namespace: shop, name: client, serviceAccount: client}
  - name: node-b
    pods:
      - {namespace: data, name: db, serviceAccount: db}
agent:
  capture:
    excludePorts: [7400]
    excludeCidrs: ['198.19.2.0/24']
";

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
    let tb = Testbed::up(SPEC, true);
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
    let tb = Testbed::up(SPEC, true);
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
