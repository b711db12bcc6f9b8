//! End-to-end: Outrider's container image (`cargo xtask image`) runs as shipped. With
//! podman (rootful) on the testbed: the node agent as the DaemonSet runs it meshes a
//! request across two nodes (the app seeing the client's IP); without a capability it needs it exits naming it; a sidecar
//! pod's init step and proxy from the image, as `outriderctl inject` runs them; and an
//! upgrade between two images built with different version strings hands over without a
//! failed request or a cut connection. These tests fail (never skip) without podman or
//! the images.
mod support;

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use support::{
    Testbed, access,
    podman::{self, DAEMONSET_CAPS},
    specs,
    traffic::{attempts, finish, traffic},
};

/// The two-node testbed: shop/client on node-a, data/db on node-b.
fn spec() -> String {
    specs::client_and_db(&[], &[])
}

/// An echo server in data/db on 7000, and its address.
fn echo_server(tb: &Testbed) -> (SocketAddr, support::Background) {
    let db = (tb.pod("data/db").ipv4, 7000).into();
    (db, tb.tcp_server("data/db", 7000, "EXEC:cat"))
}

/// Echoes from shop/client to `db`; node-b's access-log line for it.
fn echo_to_db(tb: &Testbed, db: SocketAddr, message: &str) -> Value {
    let mark = tb.log_mark("node-b");
    let (ok, out) = tb.echo("shop/client", db, message);
    assert!(ok, "{out}");
    assert_eq!(out, message);
    tb.wait_log_after("node-b", mark, Duration::from_secs(5), |v: &Value| {
        access(v, "inbound", db)
    })
}

/// The version an agent logged when it started, after log line `mark`.
fn started_version(tb: &Testbed, node: &str, mark: usize) -> String {
    let v = tb.wait_log_after(node, mark, Duration::from_secs(5), |v: &Value| {
        v["fields"]["message"] == "agent starting"
    });
    v["fields"]["version"]
        .as_str()
        .expect("a version")
        .to_string()
}

#[test]
fn the_image_runs_as_the_daemonset_runs_it_and_meshes_a_request_across_nodes() {
    let image = podman::image();
    podman::require(&image);
    let tb = Testbed::up(&spec(), false);

    // Without BPF, the agent says so and exits.
    let without_bpf: Vec<&str> = DAEMONSET_CAPS
        .iter()
        .copied()
        .filter(|c| *c != "BPF")
        .collect();
    let config = outrider_testbed::testbed::agents::config_path(tb.dir(), "node-a");
    let mut args = podman::agent_args(&tb, "node-a", &without_bpf);
    args.insert(0, "--rm".into());
    args.insert(0, "run".into());
    args.push(image.clone());
    args.extend([
        "run".into(),
        "--config".into(),
        config.display().to_string(),
    ]);
    let out = podman::podman().args(&args).output().expect("podman run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the agent ran without CAP_BPF: {stderr}"
    );
    assert!(
        stderr.contains("needs the capability CAP_BPF") && stderr.contains("--cap-add BPF"),
        "{stderr}"
    );

    let agent_a = podman::start_agent(&tb, "node-a", &image, "agent");
    let agent_b = podman::start_agent(&tb, "node-b", &image, "agent");
    // The DaemonSet's capabilities, and no others.
    for agent in [&agent_a, &agent_b] {
        let mut caps = podman::effective_caps(agent.pid());
        caps.sort_unstable();
        let mut expected = DAEMONSET_CAPS.to_vec();
        expected.sort_unstable();
        assert_eq!(caps, expected, "{}", agent.name);
    }
    assert_eq!(started_version(&tb, "node-a", 0), outrider::VERSION);

    let (db, _server) = echo_server(&tb);
    let inbound = echo_to_db(&tb, db, "through the image");
    assert_eq!(inbound["fields"]["transport"], "hbone", "{inbound}");
    assert_eq!(
        inbound["fields"]["src_identity"], "spiffe://cluster.local/ns/shop/sa/client",
        "{inbound}"
    );
    // The app sees the client pod's own IP: the agent, with only the DaemonSet's
    // capabilities and the container's read-only /proc/sys, sets up the way back in the
    // pod and delivers from a transparent socket.
    let _who = tb.tcp_server("data/db", 7001, "SYSTEM:echo \"$SOCAT_PEERADDR\"");
    let client = tb.pod("shop/client").ipv4;
    let to_who = format!("socat -t5 -T5 STDIO TCP4:{}:7001 </dev/null", db.ip());
    let seen = String::from_utf8_lossy(&tb.sh("shop/client", &to_who).stdout).into_owned();
    // socat writes an IPv6 listener's peer in full and in brackets.
    let seen_ip = seen
        .trim()
        .trim_matches(['[', ']'])
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .and_then(|v6| v6.to_ipv4_mapped());
    assert_eq!(
        seen_ip,
        Some(client),
        "the app saw {seen:?}; node-b's log: {:?}",
        std::fs::read_to_string(tb.agent_log_path("node-b")).unwrap_or_default()
    );
    // The admin API answers on the socket the agent made in the mounted directory.
    let workloads = tb.ctl_ok("node-a", &["workloads"]);
    assert!(workloads.contains("client"), "{workloads}");
}

const SIDECAR_SPEC: &str = "
nodes:
  - name: node-a
    pods:
      - {namespace: shop, name: client, serviceAccount: client, mode: sidecar}
  - name: node-b
    pods:
      - {namespace: data, name: db, serviceAccount: db}
";

#[test]
fn sidecar_init_and_sidecar_run_from_the_image_in_a_sidecar_pod() {
    let image = podman::image();
    podman::require(&image);
    let tb = Testbed::up(SIDECAR_SPEC, false);
    let _agent_a = podman::start_agent(&tb, "node-a", &image, "agent");
    let _agent_b = podman::start_agent(&tb, "node-b", &image, "agent");
    let client = tb.pod("shop/client").clone();

    // Without NET_ADMIN the init step names it.
    let out = podman::sidecar_init(&tb, &client, &image, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("CAP_NET_ADMIN"), "{stderr}");

    let out = podman::sidecar_init(&tb, &client, &image, podman::INIT_CAPS);
    assert!(
        out.status.success(),
        "sidecar-init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = tb.exec("shop/client", &["iptables-save"]);
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains("--uid-owner 1337") && rules.contains("REDIRECT"),
        "{rules}"
    );
    let mut sidecar = podman::start_sidecar(&tb, &client, &image);

    let (db, _server) = echo_server(&tb);
    let inbound = echo_to_db(&tb, db, "through the sidecar");
    assert_eq!(inbound["fields"]["transport"], "hbone", "{inbound}");
    assert_eq!(
        inbound["fields"]["src_identity"], "spiffe://cluster.local/ns/shop/sa/client",
        "{inbound}"
    );
    // The sidecar's own log (its container's output) has the outbound connection.
    assert_eq!(sidecar.log, tb.sidecar_log_path("shop/client"));
    tb.wait_sidecar_log("shop/client", Duration::from_secs(5), |v: &Value| {
        access(v, "outbound", db)
    });
    assert!(
        sidecar.child.try_wait().unwrap().is_none(),
        "the sidecar exited"
    );
}

#[test]
fn an_upgrade_between_two_images_fails_no_request_and_cuts_no_connection() {
    let old_image = podman::image();
    let new_image = podman::next_image();
    podman::require(&old_image);
    podman::require(&new_image);
    let new_version = new_image
        .rsplit_once(':')
        .map(|(_, tag)| tag.to_string())
        .expect("a tagged image");
    assert_ne!(new_version, outrider::VERSION, "the two images must differ");

    let tb = Testbed::up(&spec(), false);
    let mut old_a = podman::start_agent(&tb, "node-a", &old_image, "old");
    let mut old_b = podman::start_agent(&tb, "node-b", &old_image, "old");
    let (db, _server) = echo_server(&tb);
    assert_eq!(
        echo_to_db(&tb, db, "before")["fields"]["transport"],
        "hbone"
    );
    let load = tb.spawn(
        "shop/client",
        &["python3", "-c", &traffic(&[db], 14, 10, true)],
    );
    std::thread::sleep(Duration::from_secs(3));

    // As the DaemonSet's rolling update (maxSurge 1): the new agent starts beside the old,
    // takes over, and the old one is sent SIGTERM; one node, then the other.
    let mut new = Vec::new();
    for (node, old) in [("node-a", &old_a), ("node-b", &old_b)] {
        let mark = tb.log_mark(node);
        new.push(podman::start_agent(&tb, node, &new_image, "new"));
        old.terminate();
        assert_eq!(started_version(&tb, node, mark), new_version);
        let asked = tb.wait_log_after(node, mark, Duration::from_secs(5), |v: &Value| {
            v["fields"]["message"] == "a new agent takes over"
        });
        assert_eq!(asked["fields"]["version"], new_version.as_str(), "{asked}");
        let took = tb.wait_log_after(node, mark, Duration::from_secs(5), |v: &Value| {
            v["fields"]["message"] == "took the running agent's sockets over"
        });
        assert_eq!(took["fields"]["pods"], 1, "{took}");
        std::thread::sleep(Duration::from_secs(2));
    }

    let report = finish(load);
    let all = attempts(&report);
    let failed: Vec<String> = all
        .iter()
        .filter(|a| a.error.is_some())
        .map(|a| format!("{:.3}s {}: {:?}", a.at, a.target, a.error))
        .collect();
    eprintln!(
        "{} connections, {} failed; {} blocks on the long connection",
        all.len(),
        failed.len(),
        report["long_blocks"]
    );
    assert!(all.len() > 300, "only {} connections were tried", all.len());
    assert!(failed.is_empty(), "failed: {failed:#?}");
    assert!(
        report["long_error"].is_null(),
        "the long connection broke: {}",
        report["long_error"]
    );
    assert!(report["long_blocks"].as_u64().unwrap() > 150, "{report}");

    // The old containers exit once their connections are done; the new ones serve.
    for old in [&mut old_a, &mut old_b] {
        let code = old.wait_exit(Duration::from_secs(45));
        assert_eq!(code, Some(0), "{} exited with {code:?}", old.name);
    }
    let inbound = echo_to_db(&tb, db, "after the upgrade");
    assert_eq!(inbound["fields"]["transport"], "hbone", "{inbound}");
    for agent in &mut new {
        assert!(
            agent.child.try_wait().unwrap().is_none(),
            "{} exited",
            agent.name
        );
    }
}
