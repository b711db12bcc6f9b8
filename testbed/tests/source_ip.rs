//! End-to-end: the app sees its real client. A connection delivered to an enrolled pod —
//! through the tunnel from a pod on the same node or another, in node or sidecar mode,
//! or as plaintext from outside the mesh — reaches the app from the client pod's own IP,
//! IPv4 and IPv6, as through ztunnel; nothing of it leaves the pod's interface. A
//! namespace with `sourceIp: loopback` gets 127.0.0.6 / ::1 and nothing in its pods'
//! namespaces. The way back set up in the pod (resets from closed ports take it too)
//! survives a restart under traffic and goes when the pod leaves the mesh, or when the
//! agent stops with none taking over.
mod support;

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::{Testbed, specs};

/// The two-node testbed with shop/outsider and shop/side (sidecar) beside the client;
/// data/neighbor and legacy/old beside db, legacy delivering from loopback.
fn spec() -> String {
    let node_a = [specs::outsider(), specs::sidecar("shop/side")];
    let node_b = ["data/neighbor", "legacy/old"].map(specs::meshed);
    specs::client_and_db(&node_a, &node_b) + "namespaces:\n  legacy: {sourceIp: loopback}\n"
}

/// The port where the pods' servers answer each connection with its peer's address.
const WHO: u16 = 7001;

/// A server in `pod` that writes each client's address (as the app sees it) and closes.
fn who_am_i_server(tb: &Testbed, pod: &str) -> support::Background {
    tb.tcp_server(pod, WHO, "SYSTEM:echo \"$SOCAT_PEERADDR\"")
}

/// The address the app at `dst` saw for a connection from `pod` (IPv4-mapped shown as
/// IPv4).
fn seen_from(tb: &Testbed, pod: &str, dst: SocketAddr) -> IpAddr {
    let script = format!(
        "socat -t5 -T5 STDIO {} </dev/null",
        support::socat_target(dst)
    );
    let out = tb.sh(pod, &script);
    let text = String::from_utf8_lossy(&out.stdout);
    let seen: IpAddr = text
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .unwrap_or_else(|_| panic!("{pod} → {dst}: the app answered {text:?} ({out:?})"));
    match seen {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(seen, IpAddr::V4),
        v4 => v4,
    }
}

fn pod_ips(tb: &Testbed, pod: &str) -> [IpAddr; 2] {
    let p = tb.pod(pod);
    [p.ipv4.into(), p.ipv6.into()]
}

/// `ip rule` of both families in `pod`, and its `tcp_fwmark_accept` and IPv4 and IPv6
/// `fwmark_reflect` (`"111"`: all set).
fn in_pod_setup(tb: &Testbed, pod: &str) -> (String, String) {
    let rules = tb.sh(pod, "ip rule; ip -6 rule").stdout;
    let sysctls =
        "cd /proc/sys/net && cat ipv4/tcp_fwmark_accept ipv4/fwmark_reflect ipv6/fwmark_reflect";
    let sysctls = tb.sh(pod, sysctls).stdout;
    (
        String::from_utf8_lossy(&rules).into_owned(),
        String::from_utf8_lossy(&sysctls)
            .split_whitespace()
            .collect(),
    )
}

/// Connects from shop/client to `dst`, where nothing listens, and finds the access line
/// of the delivery in `log`: refused by the kernel's reset (which found its way back),
/// not timed out.
fn refused_by_the_kernel(
    tb: &Testbed,
    dst: SocketAddr,
    log: impl Fn(&dyn Fn(&serde_json::Value) -> bool) -> serde_json::Value,
) {
    let script = format!(
        "socat -t5 -T5 STDIO {} </dev/null",
        support::socat_target(dst)
    );
    tb.sh("shop/client", &script);
    let line = log(&|v| support::access(v, "inbound", dst) && v["fields"]["error"].is_string());
    let error = line["fields"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("refused"), "{dst}: {line}");
}

/// Captures the TCP traffic on `pod`'s own link (its `eth0`) until stopped; `filter`
/// counts packets of the capture.
struct LinkCapture {
    child: std::process::Child,
    pcap: std::path::PathBuf,
}

impl LinkCapture {
    fn start(tb: &Testbed, pod: &str) -> Self {
        let netns = tb.pod(pod).netns.clone();
        let pcap = tb.dir().join(format!("{}.pcap", pod.replace('/', "-")));
        let log = tb
            .dir()
            .join(format!("{}.tcpdump.log", pod.replace('/', "-")));
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["tcpdump", "-i", "eth0", "--immediate-mode", "-U", "-w"])
            .arg(&pcap)
            .arg("tcp")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("tcpdump");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("listening on")
        {
            assert!(Instant::now() < deadline, "tcpdump did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, pcap }
    }

    /// Stops the capture; the packets matching `filter`, one line each.
    fn stop(mut self, filter: &str) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let out = Command::new("tcpdump")
            .args(["-nn", "-r"])
            .arg(&self.pcap)
            .arg(filter)
            .output()
            .expect("tcpdump");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

#[test]
fn the_app_sees_the_client_pods_ip_from_every_kind_of_client_and_nothing_leaves_its_link() {
    let tb = Testbed::up(&spec(), true);
    let [db4, db6] = pod_ips(&tb, "data/db");
    let _server = who_am_i_server(&tb, "data/db");

    // Meshed clients: across nodes, on the same node, and a sidecar-mode pod; the link of
    // the server pod carries their tunnels (15008) and never the app's port.
    let capture = LinkCapture::start(&tb, "data/db");
    for client in ["shop/client", "data/neighbor", "shop/side"] {
        let [c4, c6] = pod_ips(&tb, client);
        assert_eq!(
            seen_from(&tb, client, (db4, WHO).into()),
            c4,
            "{client}, IPv4"
        );
        assert_eq!(
            seen_from(&tb, client, (db6, WHO).into()),
            c6,
            "{client}, IPv6"
        );
    }
    // A port nobody listens on: the kernel's reset to the delivery goes back to the
    // agent too (not out to the client's IP).
    for dst in [SocketAddr::new(db4, 7999), SocketAddr::new(db6, 7999)] {
        refused_by_the_kernel(&tb, dst, |pred| {
            tb.wait_log("node-b", Duration::from_secs(10), pred)
        });
    }
    let leaked = capture.stop(&format!("tcp port {WHO} or tcp port 7999"));
    assert!(
        leaked.is_empty(),
        "the deliveries or the pod's replies crossed the pod's link: {leaked:#?}"
    );

    // Plaintext from outside the mesh (permissive): its own IP too.
    let [o4, o6] = pod_ips(&tb, "shop/outsider");
    assert_eq!(seen_from(&tb, "shop/outsider", (db4, WHO).into()), o4);
    assert_eq!(seen_from(&tb, "shop/outsider", (db6, WHO).into()), o6);

    // The way back is in the pod: the rule per family and the sysctl.
    let (rules, sysctl) = in_pod_setup(&tb, "data/db");
    assert_eq!(
        rules.matches("fwmark 0x4f53 lookup 20307").count(),
        2,
        "{rules}"
    );
    assert_eq!(sysctl, "111");

    // `sourceIp: loopback`: 127.0.0.6 / ::1, and nothing set up in the pod.
    let [old4, old6] = pod_ips(&tb, "legacy/old");
    let _old = who_am_i_server(&tb, "legacy/old");
    let six: IpAddr = "127.0.0.6".parse().unwrap();
    let lo6: IpAddr = "::1".parse().unwrap();
    assert_eq!(seen_from(&tb, "shop/client", (old4, WHO).into()), six);
    assert_eq!(seen_from(&tb, "shop/client", (old6, WHO).into()), lo6);
    let (rules, sysctl) = in_pod_setup(&tb, "legacy/old");
    assert!(!rules.contains("0x4f53"), "{rules}");
    assert_eq!(sysctl, "000");
}

#[test]
fn a_restart_under_traffic_keeps_the_client_ip_and_unenrolling_takes_the_way_back_away() {
    let mut tb = Testbed::up(&spec(), true);
    let [db4, db6] = pod_ips(&tb, "data/db");
    let [c4, c6] = pod_ips(&tb, "shop/client");
    let [o4, _] = pod_ips(&tb, "shop/outsider");
    let _server = who_am_i_server(&tb, "data/db");
    let _echo = tb.tcp_server("data/db", 7000, "EXEC:cat");
    assert_eq!(seen_from(&tb, "shop/client", (db4, WHO).into()), c4);

    // A long connection through node-b's agent, echoing across its upgrade.
    let mut long = tb.spawn_piped(
        "shop/client",
        &["socat", "-T30", "STDIO", &format!("TCP6:[{db6}]:7000")],
    );
    let mut to_db = long.child.stdin.take().unwrap();
    let mut from_db = BufReader::new(long.child.stdout.take().unwrap());
    let mut echo = |line: &str| {
        writeln!(to_db, "{line}").unwrap();
        let mut back = String::new();
        from_db.read_line(&mut back).unwrap();
        assert_eq!(back.trim(), line);
    };
    echo("before");
    let old = tb.node("node-b").agent.as_ref().expect("an agent").pid;
    let mut new = tb.start_another_agent("node-b");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    echo("during the hand-over");
    for _ in 0..5 {
        assert_eq!(seen_from(&tb, "shop/client", (db4, WHO).into()), c4);
        assert_eq!(seen_from(&tb, "shop/client", (db6, WHO).into()), c6);
        std::thread::sleep(Duration::from_millis(200));
    }
    echo("after");
    let (rules, _) = in_pod_setup(&tb, "data/db");
    assert_eq!(rules.matches("fwmark 0x4f53").count(), 2, "{rules}");
    drop(to_db);
    drop(long);

    // Unenrolled: once the connections delivered through it are gone, so is the way back.
    // (Tunnels from other pods hold it until they close; a plaintext delivery is the last
    // holder here once shop/client's pooled tunnel is gone — so unenroll a pod only
    // plaintext reached.)
    let [n4, _] = pod_ips(&tb, "data/neighbor");
    let _n = who_am_i_server(&tb, "data/neighbor");
    assert_eq!(seen_from(&tb, "shop/outsider", (n4, WHO).into()), o4);
    let (rules, sysctl) = in_pod_setup(&tb, "data/neighbor");
    assert!(rules.contains("0x4f53") && sysctl == "111", "{rules}");
    tb.unenroll("data/neighbor");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (rules, sysctl) = in_pod_setup(&tb, "data/neighbor");
        if !rules.contains("0x4f53") && sysctl == "000" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the way back is still in the unenrolled pod: {rules} sysctls={sysctl}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Out of the mesh, the app sees its clients directly, as before enrollment.
    assert_eq!(seen_from(&tb, "shop/outsider", (n4, WHO).into()), o4);
    let _ = new.kill();
    let _ = new.wait();
}

/// An agent stopped (SIGTERM) with no agent taking over takes the ways back it set up
/// with it: its deliveries end with it, and pods are left as they were before the mesh
/// (the peer harness's clean-pod check caught the rule left behind).
#[test]
fn an_agent_stopped_with_none_taking_over_takes_the_ways_back_down() {
    let tb = Testbed::up(&spec(), true);
    let [db4, _] = pod_ips(&tb, "data/db");
    let [c4, _] = pod_ips(&tb, "shop/client");
    let _server = who_am_i_server(&tb, "data/db");
    assert_eq!(seen_from(&tb, "shop/client", (db4, WHO).into()), c4);
    let (rules, sysctl) = in_pod_setup(&tb, "data/db");
    assert!(rules.contains("0x4f53") && sysctl == "111", "{rules}");
    let agent = tb.node("node-b").agent.as_ref().expect("an agent").pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (rules, _) = in_pod_setup(&tb, "data/db");
        if !rules.contains("0x4f53") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the way back outlives the stopped agent: {rules}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// shop/client and shop/outsider on node-a, data/db in sidecar mode on node-b; sidecars
/// that keep the client's IP.
fn sidecar_spec() -> String {
    let node_a = [specs::meshed("shop/client"), specs::outsider()];
    let node_b = [specs::sidecar("data/db")];
    specs::nodes(&[("node-a", &node_a), ("node-b", &node_b)])
        + "agent:\n  sidecar: {keepSourceIp: true}\n"
}

#[test]
fn a_sidecar_with_keep_source_ip_delivers_from_the_client_ip_too() {
    // As `outriderctl inject --keep-source-ip` sets a pod up: `sidecar-init
    // --keep-source-ip` (CONNMARK and the rule), the proxy with NET_ADMIN.
    let tb = Testbed::up(&sidecar_spec(), true);
    let [db4, db6] = pod_ips(&tb, "data/db");
    let _server = who_am_i_server(&tb, "data/db");
    let capture = LinkCapture::start(&tb, "data/db");
    let [c4, c6] = pod_ips(&tb, "shop/client");
    assert_eq!(seen_from(&tb, "shop/client", (db4, WHO).into()), c4);
    assert_eq!(seen_from(&tb, "shop/client", (db6, WHO).into()), c6);
    refused_by_the_kernel(&tb, SocketAddr::new(db4, 7999), |pred| {
        tb.wait_sidecar_log("data/db", Duration::from_secs(10), pred)
    });
    let leaked = capture.stop(&format!("tcp port {WHO} or tcp port 7999"));
    assert!(leaked.is_empty(), "{leaked:#?}");
    let [o4, o6] = pod_ips(&tb, "shop/outsider");
    assert_eq!(seen_from(&tb, "shop/outsider", (db4, WHO).into()), o4);
    assert_eq!(seen_from(&tb, "shop/outsider", (db6, WHO).into()), o6);
    let (rules, _) = in_pod_setup(&tb, "data/db");
    assert_eq!(rules.matches("fwmark 0x4f53").count(), 2, "{rules}");
}
