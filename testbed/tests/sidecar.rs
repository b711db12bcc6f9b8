//! End-to-end: sidecar mode. Pods marked `mode: sidecar` get `outrider sidecar-init`'s
//! iptables rules and their own `outrider sidecar`, which takes its certificate and the
//! mesh's state from its node's agent. Sidecar and node-mode pods talk both ways through
//! the same mutual-TLS tunnel with verified identities; the sidecar enforces policy and
//! strict mTLS and serves its metrics; only a sidecar pod of the node is given an
//! identity, and only its own.
mod support;

use std::{net::SocketAddr, process::Command, time::Duration};

use serde_json::Value;
use support::{Testbed, access, outrider, specs};

/// Node-mode and sidecar pods on both nodes: shop/client, shop/web (sidecar) and
/// shop/outsider on node-a; data/db (sidecar) and data/cart on node-b, data strict.
fn spec() -> String {
    let node_a = [
        specs::meshed("shop/client"),
        specs::sidecar("shop/web"),
        specs::outsider(),
    ];
    let node_b = [specs::sidecar("data/db"), specs::meshed("data/cart")];
    specs::nodes(&[("node-a", &node_a), ("node-b", &node_b)]) + &specs::strict(&["data"])
}

const TD: &str = "spiffe://cluster.local";

/// The access-log line of `pod` about its connection from `src_pod` to `dst`, from the
/// log that tells about `pod`'s connections: its sidecar's, or its node agent's.
fn wait_access(tb: &Testbed, pod: &str, direction: &str, src_pod: &str, dst: SocketAddr) -> Value {
    let timeout = Duration::from_secs(5);
    let p = tb.pod(pod).clone();
    let s = tb.pod(src_pod).clone();
    let src_ip: std::net::IpAddr = if dst.is_ipv4() {
        s.ipv4.into()
    } else {
        s.ipv6.into()
    };
    let pred = |v: &Value| {
        access(v, direction, dst)
            && v["fields"]["pod"] == pod
            && v["fields"]["src"]
                .as_str()
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .is_some_and(|a| a.ip() == src_ip)
    };
    if p.sidecar {
        tb.wait_sidecar_log(pod, timeout, pred)
    } else {
        tb.wait_log(&p.node, timeout, pred)
    }
}

fn identity(ns: &str, sa: &str) -> String {
    format!("{TD}/ns/{ns}/sa/{sa}")
}

/// The init step's iptables rules are in the sidecar pod shop/web, and none in the
/// node-mode shop/client.
fn assert_init_rules_only_in_sidecar_pods(tb: &Testbed) {
    let rules = tb.sh("shop/web", "iptables -t nat -S");
    let rules = String::from_utf8_lossy(&rules.stdout).into_owned();
    assert!(
        rules.contains("-j REDIRECT --to-ports 15001")
            && rules.contains("-j REDIRECT --to-ports 15006"),
        "{rules}"
    );
    let none = tb.sh(
        "shop/client",
        "iptables -t nat -S | grep -c OUTRIDER || true",
    );
    assert_eq!(String::from_utf8_lossy(&none.stdout).trim(), "0");
}

/// Echo case `i` from `from` to `dst` comes back whole; both ends log it as carried by
/// HBONE with the source's identity (namespace, service account) verified, and the
/// source's log names the destination's.
fn assert_echo_through_verified_tunnel(
    tb: &Testbed,
    i: usize,
    from: &str,
    dst: SocketAddr,
    ((sns, ssa), (dns, dsa)): ((&str, &str), (&str, &str)),
) {
    let message = format!("sidecar-case-{i}");
    let (ok, back) = tb.echo(from, dst, &message);
    assert!(
        ok && back == message,
        "{from} → {dst}: came back as {back:?}"
    );
    let to = tb
        .state
        .pods
        .iter()
        .find(|p| p.ipv4 == dst.ip() || p.ipv6 == dst.ip())
        .unwrap()
        .key();
    let out = wait_access(tb, from, "outbound", from, dst);
    let f = &out["fields"];
    assert_eq!(f["transport"], "hbone", "{from} → {dst}: {out}");
    assert_eq!(f["src_identity"], identity(sns, ssa), "{out}");
    assert_eq!(f["dst_identity"], identity(dns, dsa), "{out}");
    let inb = wait_access(tb, &to, "inbound", from, dst);
    let f = &inb["fields"];
    assert_eq!(f["transport"], "hbone", "{from} → {dst}: {inb}");
    assert_eq!(
        f["src_identity"],
        identity(sns, ssa),
        "the destination verified the source: {inb}"
    );
    assert_eq!(
        f["bytes_received"].as_u64(),
        Some(message.len() as u64),
        "{inb}"
    );
}

#[test]
fn sidecar_and_node_mode_pods_talk_both_ways_through_verified_tunnels() {
    let tb = Testbed::up(&spec(), true);
    let web = tb.pod("shop/web").clone();
    let db = tb.pod("data/db").clone();
    let cart = tb.pod("data/cart").clone();
    let _servers = [
        tb.tcp_server("shop/web", 7000, "EXEC:cat"),
        tb.tcp_server("data/db", 7000, "EXEC:cat"),
        tb.tcp_server("data/cart", 7000, "EXEC:cat"),
    ];

    // The init step's rules are in the sidecar pods, and only there.
    assert_init_rules_only_in_sidecar_pods(&tb);

    // (source, destination address, source identity, destination identity)
    let cases = [
        // node → sidecar, same node, IPv4
        (
            "shop/client",
            SocketAddr::new(web.ipv4.into(), 7000),
            ("shop", "client"),
            ("shop", "web"),
        ),
        // node → sidecar, across nodes, IPv6
        (
            "shop/client",
            SocketAddr::new(db.ipv6.into(), 7000),
            ("shop", "client"),
            ("data", "db"),
        ),
        // sidecar → node, across nodes, IPv4 and IPv6
        (
            "shop/web",
            SocketAddr::new(cart.ipv4.into(), 7000),
            ("shop", "web"),
            ("data", "cart"),
        ),
        (
            "shop/web",
            SocketAddr::new(cart.ipv6.into(), 7000),
            ("shop", "web"),
            ("data", "cart"),
        ),
        // sidecar → sidecar, across nodes
        (
            "data/db",
            SocketAddr::new(web.ipv4.into(), 7000),
            ("data", "db"),
            ("shop", "web"),
        ),
    ];
    for (i, (from, dst, source, destination)) in cases.into_iter().enumerate() {
        assert_echo_through_verified_tunnel(&tb, i, from, dst, (source, destination));
    }

    // The node agent lists the sidecar pod in its mode and does not capture it.
    let listed = tb.ctl_ok("node-a", &["workloads", "-o", "json"]);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let web_row = listed["workloads"]
        .as_array()
        .and_then(|rows| rows.iter().find(|w| w["name"] == "web"))
        .cloned()
        .unwrap_or_else(|| panic!("no shop/web in {listed}"));
    assert_eq!(web_row["mode"], "sidecar", "{web_row}");
    assert_eq!(web_row["state"], "not-enrolled", "{web_row}");
}

/// Applies, on node-b's agent, a policy denying shop's client and web into data;
/// returns once db's sidecar has it in force.
fn deny_client_and_web_into_data(tb: &Testbed) {
    let policy = tb.dir().join("deny.yaml");
    std::fs::write(
        &policy,
        "apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: data}
spec:
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/client, cluster.local/ns/shop/sa/web]}}]}]
",
    )
    .unwrap();
    let file = policy.display().to_string();
    tb.ctl_ok("node-b", &["policies", "apply", "-f", &file]);
    tb.wait_sidecar_log("data/db", Duration::from_secs(5), |v| {
        v["fields"]["message"] == "policies in force" && v["fields"]["policies"] == 1
    });
}

/// db's sidecar serves its own metrics in the pod — the destination side of the client's
/// connections (at least two) with the verified source principal — and its readiness.
fn assert_sidecar_metrics_and_readiness(tb: &Testbed) {
    let out = tb.exec(
        "data/db",
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "http://127.0.0.1:15020/metrics",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")
        })
        .unwrap_or_else(|| panic!("no destination-side sample in:\n{text}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 2.0, "{line}");
    let ready = tb.exec(
        "data/db",
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:15020/healthz/ready",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "200");
}

#[test]
fn a_sidecar_enforces_strict_mtls_and_the_node_agents_policies() {
    let tb = Testbed::up(&spec(), true);
    let db = tb.pod("data/db").clone();
    let _server = tb.tcp_server("data/db", 7000, "EXEC:cat");
    let dst = SocketAddr::new(db.ipv4.into(), 7000);

    // data is strict: plaintext from a pod outside the mesh is refused by db's sidecar.
    let (ok, back) = tb.echo("shop/outsider", dst, "plain");
    assert!(!ok || back.is_empty(), "plaintext got through: {back:?}");
    let refused = tb.wait_sidecar_log("data/db", Duration::from_secs(5), |v| {
        access(v, "inbound", dst) && v["fields"]["transport"] == "plaintext"
    });
    let error = refused["fields"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("strict"), "{refused}");

    // The kubelet's probe, from its cgroup in node-b, is served: db's sidecar asks
    // node-b's agent, which saw the kubelet open it.
    let (ok, back) = tb.kubelet_probe("node-b", "data/db", (7000, false), "probe");
    assert!(ok && back == "probe", "the kubelet's probe: {back:?}");
    tb.wait_sidecar_log("data/db", Duration::from_secs(5), |v| {
        access(v, "inbound", dst)
            && v["fields"]["transport"] == "plaintext"
            && v["fields"]["error"].is_null()
    });
    // The same from node-b's network namespace, outside the kubelet's cgroup, is not.
    assert_eq!(
        tb.echo_from_node("node-b", dst, "plain"),
        "",
        "plaintext from the node"
    );
    // Log lines reach the file within about a millisecond (a writer thread batches them).
    let count = || {
        std::fs::read_to_string(tb.sidecar_log_path("data/db"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| access(v, "inbound", dst) && !v["fields"]["error"].is_null())
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while count() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50)); // a third would show by now
    assert_eq!(count(), 2, "the outsider and the node, each logged once");

    // Through the tunnel it is served.
    let (ok, back) = tb.echo("shop/client", dst, "meshed");
    assert!(ok && back == "meshed", "{back:?}");

    // A policy applied on node-b's agent reaches db's sidecar, which enforces it.
    deny_client_and_web_into_data(&tb);
    // From a sidecar: db's sidecar refuses it.
    let (ok, back) = tb.echo("shop/web", dst, "denied");
    assert!(
        !ok || back.is_empty(),
        "the policy let it through: {back:?}"
    );
    let denied = tb.wait_sidecar_log("data/db", Duration::from_secs(5), |v| {
        access(v, "inbound", dst)
            && v["fields"]["src_identity"] == identity("shop", "web")
            && v["fields"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("deny-client"))
    });
    assert_eq!(denied["fields"]["transport"], "hbone", "{denied}");
    // From a node-mode pod: its node's kernel refuses it already, in connect().
    let (ok, back) = tb.echo("shop/client", dst, "denied");
    assert!(
        !ok || back.is_empty(),
        "the policy let it through: {back:?}"
    );
    // Others are untouched: db's own sidecar → web still works.
    let web = tb.pod("shop/web").clone();
    let _web = tb.tcp_server("shop/web", 7001, "EXEC:cat");
    let (ok, back) = tb.echo("data/db", SocketAddr::new(web.ipv4.into(), 7001), "other");
    assert!(ok && back == "other", "{back:?}");

    tb.ctl_ok("node-b", &["policies", "delete", "data/deny-client"]);
    tb.wait_sidecar_log("data/db", Duration::from_secs(5), |v| {
        v["fields"]["message"] == "policies in force" && v["fields"]["policies"] == 0
    });
    let (ok, back) = tb.echo("shop/client", dst, "again");
    assert!(ok && back == "again", "{back:?}");

    // The sidecar's own metrics, in the pod, report the destination side with the
    // verified source principal.
    assert_sidecar_metrics_and_readiness(&tb);
}

#[test]
fn only_a_sidecar_pod_of_the_node_is_given_its_identity() {
    let tb = Testbed::up(&spec(), true);
    let config_a = tb.dir().join("node-a").join("agent.yaml");
    let config_a = config_a.display().to_string();
    let sidecar = |pod: Option<&str>| {
        let args = ["sidecar", "--config", &config_a];
        let out = match pod {
            Some(pod) => {
                let mut all = vec![outrider()];
                all.extend(args);
                tb.exec(pod, &all)
            }
            None => Command::new(outrider()).args(args).output().unwrap(),
        };
        assert!(!out.status.success(), "{pod:?}: a sidecar started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A node-mode pod of node-a.
    let err = sidecar(Some("shop/client"));
    assert!(err.contains("not in sidecar mode"), "{err}");
    // A sidecar pod, but of node-b, asking node-a's agent.
    let err = sidecar(Some("data/db"));
    assert!(err.contains("is not a pod of node node-a"), "{err}");
    // A process in no pod at all (this test).
    let err = sidecar(None);
    assert!(err.contains("not in a pod's cgroup"), "{err}");
    // The real sidecars were not disturbed.
    let web = tb.pod("shop/web").clone();
    let _server = tb.tcp_server("shop/web", 7000, "EXEC:cat");
    let (ok, back) = tb.echo(
        "shop/client",
        SocketAddr::new(web.ipv4.into(), 7000),
        "still",
    );
    assert!(ok && back == "still", "{back:?}");
}

/// Connections held silent on the sidecar socket, over its limit (512 by default).
const SIDECAR_FLOOD: usize = 700;

#[test]
fn a_flooded_sidecar_socket_sheds_silent_connections_and_keeps_answering() {
    let tb = Testbed::up(&spec(), true);
    let socket = outrider_testbed::testbed::agents::sidecar_socket_path(tb.dir(), "node-a");
    let config_a = tb.dir().join("node-a").join("agent.yaml");
    let agent = tb.node("node-a").agent.as_ref().unwrap().pid;
    let fds = || {
        std::fs::read_dir(format!("/proc/{agent}/fd"))
            .unwrap()
            .count()
    };
    let before = fds();
    // Any process of the node may connect (mode 0666): hold many silent connections.
    let flood = format!(
        "import socket, time\n\
         held = []\n\
         for i in range({SIDECAR_FLOOD}):\n\
         \x20   s = socket.socket(socket.AF_UNIX); s.connect('{path}'); held.append(s)\n\
         print('held', len(held), flush=True)\n\
         time.sleep(60)\n",
        path = socket.display()
    );
    let mut flooder = Command::new("python3")
        .args(["-c", &flood])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(flooder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), format!("held {SIDECAR_FLOOD}"));
    // A connect returns once the connection is queued, before the agent accepts it: wait
    // until the agent has taken the flood in (it logs the limit it reached) and its
    // descriptors settle, so that what is counted is what it holds, not a moment of it.
    let max = outrider::config::SidecarConfig::default().max_connections;
    let shed_logged = || {
        tb.agent_log("node-a").into_iter().any(|v| {
            v["fields"]["socket"] == "sidecar socket" && v["fields"]["limit"] == max as u64
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !shed_logged() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never reached its limit of {max} connections"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut held = fds() - before;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = fds() - before;
        if now == held || std::time::Instant::now() > deadline {
            break;
        }
        held = now;
    }
    // The agent holds at most its limit of them, each a socket and its caller's pidfd
    // (`SO_PEERPIDFD`, pinned at accept), plus a few evicted but not closed yet.
    assert!(
        held <= 2 * max + 48,
        "{held} descriptors for {SIDECAR_FLOOD} connections"
    );
    // A caller still gets its answer (here: refused, it is in no pod), a silent
    // connection making room for it; the running sidecars carry traffic.
    let out = Command::new(outrider())
        .args(["sidecar", "--config"])
        .arg(&config_a)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not in a pod's cgroup"), "{err}");
    let web = tb.pod("shop/web").clone();
    let _server = tb.tcp_server("shop/web", 7000, "EXEC:cat");
    let (ok, back) = tb.echo("shop/client", SocketAddr::new(web.ipv4.into(), 7000), "on");
    assert!(ok && back == "on", "{back:?}");
    // Silent connections are closed after the preface timeout (5 s), flood or not.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fds() > before + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} descriptors still held",
            fds() - before
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = flooder.kill();
    let _ = flooder.wait();
}

#[test]
fn a_sidecar_as_injected_runs_unprivileged_and_is_told_apart_by_its_user() {
    // What `outriderctl inject` sets up: rules that skip user 1337, and the sidecar as
    // that user without the capability to mark its sockets (--mark 0).
    let tb = Testbed::up(&spec(), true);
    let web = tb.pod("shop/web").clone();
    let pid = web.sidecar_pid.expect("the testbed started web's sidecar");
    // The test is the testbed's subreaper: the sidecar ends as our child.
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    nix::sys::wait::waitpid(pid, None).unwrap();
    let swap = tb.sh(
        "shop/web",
        &format!(
            "{0} sidecar-init --remove && \
             {0} sidecar-init --mark 0 --proxy-uid 1337 && iptables -t nat -S",
            outrider()
        ),
    );
    let rules = String::from_utf8_lossy(&swap.stdout).into_owned();
    assert!(
        swap.status.success(),
        "{}",
        String::from_utf8_lossy(&swap.stderr)
    );
    assert!(
        rules.contains("--uid-owner 1337") && !rules.contains("--mark"),
        "{rules}"
    );

    // User 1337 must reach the node agent's socket and config in the state directory
    // (on a node: /run/outrider/sidecar, mounted into the pod).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tb.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let config = tb.dir().join("node-a").join("agent.yaml");
    let log = tb.dir().join("web-unprivileged.log");
    let script = format!(
        "exec setpriv --reuid 1337 --regid 1337 --clear-groups --inh-caps=-all --bounding-set=-all \
         {} sidecar --mark 0 --config {} > {} 2>&1",
        outrider(),
        config.display(),
        log.display()
    );
    let mut sidecar = tb.spawn("shop/web", &["sh", "-c", &script]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("sidecar ready")
    {
        sidecar.assert_running();
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _server = tb.tcp_server("shop/web", 7000, "EXEC:cat");
    let cart = tb.pod("data/cart").clone();
    let _cart = tb.tcp_server("data/cart", 7000, "EXEC:cat");
    // Both ways, through the tunnel, with the identities verified at the far end.
    let (ok, back) = tb.echo("shop/client", SocketAddr::new(web.ipv4.into(), 7000), "in");
    assert!(ok && back == "in", "{back:?}");
    let (ok, back) = tb.echo("shop/web", SocketAddr::new(cart.ipv4.into(), 7000), "out");
    assert!(ok && back == "out", "{back:?}");
    let dst = SocketAddr::new(cart.ipv4.into(), 7000);
    let inb = wait_access(&tb, "data/cart", "inbound", "shop/web", dst);
    assert_eq!(
        inb["fields"]["src_identity"],
        identity("shop", "web"),
        "{inb}"
    );
    // The outbound line is written when its connection has closed, by the log's writer
    // thread: waited for, not read once.
    support::wait_json_line(&log, 0, Duration::from_secs(5), |v| {
        v["fields"]["direction"] == "outbound" && v["fields"]["transport"] == "hbone"
    });
}
