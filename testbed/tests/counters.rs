//! End-to-end: the kernel's per-pod traffic counters on a real testbed. An enrolled pod's
//! traffic counts whether the agent carries it (passthrough to a pod outside the mesh) or
//! it goes around the agent (excluded ports); loopback never counts, nor does a pod that
//! is not enrolled. The agent logs a pod's counters when the pod leaves (target
//! `counters`); bytes are IP packet lengths (headers once per packet, then payload).
mod support;

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use support::Testbed;

const SPEC: &str = "
nodes:
  - name: node-a
    pods:
      - {namespace: shop, name: pass}
      - {namespace: shop, name: bypass}
      - {namespace: shop, name: web, enrolled: false}
      - {namespace: shop, name: outsider, enrolled: false}
agent:
  capture: {excludePorts: [7300, 7301]}
";

const MIB: u64 = 1 << 20;
/// IP and TCP headers (with options) of one packet, generously: IPv4 + TCP with
/// timestamps is 52 bytes, IPv6 72, a SYN up to 80.
const HEADERS_PER_PACKET: u64 = 120;

/// A server in `pod` on `port` that reads a connection to its end, then answers with
/// how many bytes it read (so a client that got the answer knows all was received).
fn counting_sink(tb: &Testbed, pod: &str, port: u16) -> support::Background {
    let mut server = tb.spawn(
        pod,
        &[
            "socat",
            &format!("TCP6-LISTEN:{port},fork,reuseaddr,ipv6only=0"),
            "SYSTEM:wc -c",
        ],
    );
    tb.wait_server_listening(&mut server, pod, port);
    server
}

/// A server in `pod` on `port` that sends `bytes` zeros to each connection.
fn source(tb: &Testbed, pod: &str, port: u16, bytes: u64) -> support::Background {
    let mut server = tb.spawn(
        pod,
        &[
            "socat",
            "-U",
            &format!("TCP6-LISTEN:{port},fork,reuseaddr,ipv6only=0"),
            &format!("SYSTEM:head -c {bytes} /dev/zero"),
        ],
    );
    tb.wait_server_listening(&mut server, pod, port);
    server
}

/// Sends `bytes` zeros from `pod` to a [`counting_sink`] at `dst`; returns once the sink
/// has confirmed it read them all.
fn upload(tb: &Testbed, pod: &str, dst: SocketAddr, bytes: u64) {
    let script = format!(
        "head -c {bytes} /dev/zero | socat -t10 -T10 STDIO {}",
        support::socat_target(dst)
    );
    let out = tb.sh(pod, &script);
    assert!(
        out.status.success(),
        "{pod} → {dst}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        bytes.to_string(),
        "{pod} → {dst}: the sink's count"
    );
}

/// Reads everything a [`source`] at `dst` sends to `pod`; returns the byte count.
fn download(tb: &Testbed, pod: &str, dst: SocketAddr) -> u64 {
    let script = format!(
        "socat -T10 -u {} STDOUT | wc -c",
        support::socat_target(dst)
    );
    let out = tb.sh(pod, &script);
    assert!(
        out.status.success(),
        "{pod} ← {dst}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim().parse() {
        Ok(n) => n,
        Err(e) => panic!("{pod} ← {dst}: wc said {text:?}: {e}"),
    }
}

/// The pod's counters as one side saw them.
#[derive(Debug)]
struct Counters {
    rx_bytes: u64,
    tx_bytes: u64,
    rx_packets: u64,
    tx_packets: u64,
}

/// Unenrolls `pod` and returns the counters the agent logs as it leaves.
fn counters_on_leaving(tb: &Testbed, pod: &str) -> Counters {
    let mark = tb.log_mark("node-a");
    tb.unenroll(pod);
    let line = tb.wait_log_after("node-a", mark, Duration::from_secs(10), |v| {
        v["target"] == "counters" && v["fields"]["pod"] == pod
    });
    let field = |name: &str| match line["fields"][name].as_u64() {
        Some(n) => n,
        None => panic!("{pod}: no {name} in {line}"),
    };
    let counters = Counters {
        rx_bytes: field("rx_bytes"),
        tx_bytes: field("tx_bytes"),
        rx_packets: field("rx_packets"),
        tx_packets: field("tx_packets"),
    };
    eprintln!("{pod}: {counters:?}");
    counters
}

/// What a pod's network namespace sent again: TCP segments it retransmitted
/// (`RetransSegs` of its `/proc/net/snmp`; a tail-loss probe is one even without loss),
/// at most an MTU each on its interface.
fn resent_bytes(tb: &Testbed, pod: &str) -> u64 {
    let out = tb.exec(pod, &["cat", "/proc/net/snmp"]);
    let snmp = String::from_utf8_lossy(&out.stdout).into_owned();
    let tcp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let segments: Option<u64> = match tcp.as_slice() {
        [names, values] => names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == "RetransSegs")
            .and_then(|(_, value)| value.parse().ok()),
        _ => None,
    };
    let Some(segments) = segments else {
        panic!("{pod}: no Tcp RetransSegs in /proc/net/snmp:\n{snmp}");
    };
    let out = tb.exec(pod, &["ip", "-o", "link", "show", "eth0"]);
    let link = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = link.split_whitespace();
    let mtu: Option<u64> = words
        .by_ref()
        .find(|w| *w == "mtu")
        .and_then(|_| words.next())
        .and_then(|m| m.parse().ok());
    let Some(mtu) = mtu else {
        panic!("{pod}: no MTU in `ip link show eth0`: {link}");
    };
    if segments > 0 {
        eprintln!("{pod}: {segments} TCP segments retransmitted (MTU {mtu})");
    }
    segments * mtu
}

/// `bytes` over `packets` carried `payload` bytes of data and nothing else of note:
/// at least the payload, at most the payload plus every packet's headers plus what TCP
/// sent again (`resent` bytes at most, see [`resent_bytes`]).
fn assert_carried(what: &str, bytes: u64, packets: u64, payload: u64, resent: u64) {
    assert!(packets > 0, "{what}: no packets counted");
    assert!(
        bytes >= payload,
        "{what}: {bytes} bytes counted for a payload of {payload}"
    );
    let most = payload + packets * HEADERS_PER_PACKET + resent;
    assert!(
        bytes <= most,
        "{what}: {bytes} bytes in {packets} packets counted for a payload of {payload} \
         (at most {most} expected, {resent} of them for retransmissions)"
    );
}

fn pod_id(tb: &Testbed, pod: &str, after: usize) -> u64 {
    let line = tb.wait_log_after("node-a", after, Duration::from_secs(10), |v| {
        v["fields"]["message"] == "pod enrolled" && v["fields"]["pod"] == pod
    });
    match line["fields"]["pod_id"].as_u64() {
        Some(id) => id,
        None => panic!("{pod}: no pod_id in {line}"),
    }
}

fn is_access_to(v: &Value, pod: &str, dst: SocketAddr) -> bool {
    v["target"] == "access" && v["fields"]["pod"] == pod && v["fields"]["dst"] == dst.to_string()
}

#[test]
fn counters_count_what_crosses_the_pod_interface_through_or_around_the_agent() {
    let tb = Testbed::up(SPEC, true);
    let web = tb.pod("shop/web").clone();
    let ids_before = [pod_id(&tb, "shop/pass", 0), pod_id(&tb, "shop/bypass", 0)];
    let _through = counting_sink(&tb, "shop/web", 7000);
    let _around = counting_sink(&tb, "shop/web", 7300);
    let _down = source(&tb, "shop/web", 7301, 4 * MIB);
    let _local = counting_sink(&tb, "shop/pass", 7400);

    // Through the agent: steered, then passed through in plaintext (web is not in the
    // mesh); the app → agent hop is on the pod's loopback.
    let through = SocketAddr::new(web.ipv4.into(), 7000);
    upload(&tb, "shop/pass", through, 10 * MIB);
    tb.wait_log("node-a", Duration::from_secs(10), |v| {
        is_access_to(v, "shop/pass", through)
    });
    // Loopback inside the pod: never counted.
    upload(
        &tb,
        "shop/pass",
        "127.0.0.1:7400".parse().unwrap(),
        10 * MIB,
    );
    upload(&tb, "shop/pass", "[::1]:7400".parse().unwrap(), MIB);

    // Around the agent: excluded ports, IPv6 up and IPv4 down.
    let around = SocketAddr::new(web.ipv6.into(), 7300);
    upload(&tb, "shop/bypass", around, 10 * MIB);
    let down = SocketAddr::new(web.ipv4.into(), 7301);
    assert_eq!(download(&tb, "shop/bypass", down), 4 * MIB);

    // A pod that is not enrolled: counted for nobody.
    upload(&tb, "shop/outsider", through, 10 * MIB);
    upload(&tb, "shop/outsider", around, 10 * MIB);
    assert_eq!(download(&tb, "shop/outsider", down), 4 * MIB);

    assert!(
        !tb.agent_log("node-a")
            .iter()
            .any(|v| is_access_to(v, "shop/bypass", around) || is_access_to(v, "shop/bypass", down)),
        "excluded ports must not reach the agent"
    );

    // The app sent 10 MiB and got the sink's short answer ("10485760\n") back, and acks.
    // What TCP retransmits crosses the interface again and counts again: the senders'
    // retransmissions bound it. (web's count covers its traffic to the outsider too.)
    let web_resent = resent_bytes(&tb, "shop/web");
    let resent = resent_bytes(&tb, "shop/pass");
    let pass = counters_on_leaving(&tb, "shop/pass");
    let (bytes, packets) = (pass.tx_bytes, pass.tx_packets);
    assert_carried("shop/pass tx", bytes, packets, 10 * MIB, resent);
    let (bytes, packets) = (pass.rx_bytes, pass.rx_packets);
    assert_carried("shop/pass rx", bytes, packets, 9, web_resent);

    let resent = resent_bytes(&tb, "shop/bypass");
    let bypass = counters_on_leaving(&tb, "shop/bypass");
    let (bytes, packets) = (bypass.tx_bytes, bypass.tx_packets);
    assert_carried("shop/bypass tx", bytes, packets, 10 * MIB, resent);
    let (bytes, packets) = (bypass.rx_bytes, bypass.rx_packets);
    assert_carried("shop/bypass rx", bytes, packets, 4 * MIB + 9, web_resent);

    // The outsider, enrolled now, takes a pod id another pod had: its counters start
    // from zero, and what it sent before it was enrolled is not in them.
    let mark = tb.log_mark("node-a");
    tb.enroll("shop/outsider");
    let id = pod_id(&tb, "shop/outsider", mark);
    assert!(
        ids_before.contains(&id),
        "pod ids are reused lowest first: expected one of {ids_before:?}, got {id}"
    );
    let outsider = counters_on_leaving(&tb, "shop/outsider");
    assert_eq!(
        (
            outsider.rx_packets,
            outsider.rx_bytes,
            outsider.tx_packets,
            outsider.tx_bytes
        ),
        (0, 0, 0, 0),
        "a pod that sent nothing while enrolled: {outsider:?}"
    );
}
