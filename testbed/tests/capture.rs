//! End-to-end: capture on a real testbed (network namespaces, cgroups, kernel programs,
//! one agent per node). Workloads are real programs (socat) run inside the pods.
mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::Testbed;

/// The destinations (web, db) are outside the mesh, so captured connections reach them
/// in plaintext, from the client pod's own IP; tests/mtls.rs covers pods in the mesh.
const SPEC: &str = "
nodes:
  - name: node-a
    pods:
      - {namespace: shop, name: client, serviceAccount: client}
      - {namespace: shop, name: web, serviceAccount: web, enrolled: false}
      - {namespace: shop, name: outsider, enrolled: false}
  - name: node-b
    pods:
      - {namespace: data, name: db, serviceAccount: db, enrolled: false}
";

/// Connects from `pod` to `dst` and returns the peer address the server reported.
fn peer_seen_by_server(tb: &Testbed, pod: &str, dst: SocketAddr) -> IpAddr {
    let target = support::socat_target(dst);
    let out = tb.exec(pod, &["socat", "-t5", "-T5", "STDIO", &target]);
    assert!(
        out.status.success(),
        "{pod} → {dst}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_peer(&String::from_utf8_lossy(&out.stdout))
}

/// The address in `$SOCAT_PEERADDR` as the peer echo server prints it: IPv6 in full, in
/// brackets, IPv4 peers as IPv4-mapped.
fn parse_peer(text: &str) -> IpAddr {
    let ip: IpAddr = text
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .unwrap_or_else(|e| panic!("server said {text:?}: {e}"));
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn access_lines(tb: &Testbed, node: &str, pod: &str) -> Vec<Value> {
    tb.agent_log(node)
        .into_iter()
        .filter(|v| v["target"] == "access" && v["fields"]["pod"] == pod)
        .collect()
}

fn is_access(v: &Value, pod: &str, dst: SocketAddr) -> bool {
    v["target"] == "access" && v["fields"]["pod"] == pod && v["fields"]["dst"] == dst.to_string()
}

#[test]
fn captured_connections_reach_their_destination_with_the_pod_ip() {
    let tb = Testbed::up(SPEC, true);
    let client = tb.pod("shop/client").clone();
    let web = tb.pod("shop/web").clone();
    let db = tb.pod("data/db").clone();
    let _web_server = tb.tcp_server("shop/web", 7000, "SYSTEM:echo $SOCAT_PEERADDR");
    let _db_server = tb.tcp_server("data/db", 7000, "SYSTEM:echo $SOCAT_PEERADDR");

    let cases = [
        (
            "same node, IPv4",
            SocketAddr::new(web.ipv4.into(), 7000),
            IpAddr::from(client.ipv4),
        ),
        (
            "same node, IPv6",
            SocketAddr::new(web.ipv6.into(), 7000),
            IpAddr::from(client.ipv6),
        ),
        (
            "cross node, IPv4",
            SocketAddr::new(db.ipv4.into(), 7000),
            IpAddr::from(client.ipv4),
        ),
        (
            "cross node, IPv6",
            SocketAddr::new(db.ipv6.into(), 7000),
            IpAddr::from(client.ipv6),
        ),
    ];
    for (what, dst, expected_source) in cases {
        let seen = peer_seen_by_server(&tb, "shop/client", dst);
        assert_eq!(
            seen, expected_source,
            "{what}: the server must see the client pod's IP"
        );
        let line = tb.wait_log("node-a", Duration::from_secs(5), |v| {
            is_access(v, "shop/client", dst)
        });
        let f = &line["fields"];
        assert_eq!(f["direction"], "outbound", "{what}");
        assert_eq!(
            f["transport"], "plaintext",
            "{what}: the destination is outside the mesh"
        );
        assert!(f.get("error").is_none(), "{what}: {line}");
        let src: SocketAddr = f["src"].as_str().unwrap().parse().unwrap();
        assert_eq!(src.ip(), expected_source, "{what}: access log source");
        // The server answered with its peer address and a newline.
        assert_eq!(
            f["bytes_received"].as_u64(),
            Some(seen_len(seen)),
            "{what}: {line}"
        );
        assert_eq!(f["bytes_sent"].as_u64(), Some(0), "{what}: {line}");
    }
    // One line per connection: the agent's own upstream connections were not steered
    // back to it (that would loop, and log more lines).
    assert_eq!(
        access_lines(&tb, "node-a", "shop/client").len(),
        cases.len()
    );
}

/// Length of socat's `$SOCAT_PEERADDR` line: on a dual-stack listener every peer is an
/// IPv6 address printed in full, in brackets (IPv4 peers as `::ffff:a.b.c.d`).
fn seen_len(_ip: IpAddr) -> u64 {
    "[0000:0000:0000:0000:0000:ffff:c613:010c]\n".len() as u64
}

#[test]
fn unenrolled_pods_and_loopback_are_not_captured() {
    let tb = Testbed::up(SPEC, true);
    let outsider = tb.pod("shop/outsider").clone();
    let db = tb.pod("data/db").clone();
    let _db_server = tb.tcp_server("data/db", 7000, "SYSTEM:echo $SOCAT_PEERADDR");
    let _loop_server = tb.tcp_server("shop/client", 7100, "SYSTEM:echo $SOCAT_PEERADDR");

    let dst = SocketAddr::new(db.ipv4.into(), 7000);
    assert_eq!(
        peer_seen_by_server(&tb, "shop/outsider", dst),
        IpAddr::from(outsider.ipv4)
    );
    let loop4: SocketAddr = "127.0.0.1:7100".parse().unwrap();
    let loop6: SocketAddr = "[::1]:7100".parse().unwrap();
    assert_eq!(peer_seen_by_server(&tb, "shop/client", loop4), loop4.ip());
    assert_eq!(peer_seen_by_server(&tb, "shop/client", loop6), loop6.ip());

    // A captured connection after them: once its line is logged, the earlier ones would
    // have been too.
    let marker = SocketAddr::new(db.ipv6.into(), 7000);
    peer_seen_by_server(&tb, "shop/client", marker);
    tb.wait_log("node-a", Duration::from_secs(5), |v| {
        is_access(v, "shop/client", marker)
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(access_lines(&tb, "node-a", "shop/outsider").is_empty());
    let client_lines = access_lines(&tb, "node-a", "shop/client");
    assert_eq!(client_lines.len(), 1, "only the marker: {client_lines:?}");
}

#[test]
fn enroll_and_unenroll_live_without_cutting_established_connections() {
    let tb = Testbed::up(SPEC, true);
    let db = tb.pod("data/db").clone();
    let client = tb.pod("shop/client").clone();
    let mut echo = tb.spawn(
        "data/db",
        &[
            "socat",
            "TCP6-LISTEN:7200,fork,reuseaddr,ipv6only=0",
            "EXEC:cat",
        ],
    );
    tb.wait_server_listening(&mut echo, "data/db", 7200);
    let _peer = tb.tcp_server("data/db", 7000, "SYSTEM:echo $SOCAT_PEERADDR");
    let dst = SocketAddr::new(db.ipv4.into(), 7200);

    // A long-lived connection, captured.
    let mut conn = tb.spawn_piped("shop/client", &["socat", "STDIO", &format!("TCP4:{dst}")]);
    let mut stdin = conn.child.stdin.take().unwrap();
    let mut stdout = BufReader::new(conn.child.stdout.take().unwrap());
    let mut line = String::new();
    stdin.write_all(b"one\n").unwrap();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "one\n");

    let mark = tb.log_mark("node-a");
    tb.unenroll("shop/client");
    tb.wait_log_after("node-a", mark, Duration::from_secs(5), |v| {
        v["fields"]["message"] == "pod unenrolled" && v["fields"]["pod"] == "shop/client"
    });
    // The established connection carries on.
    line.clear();
    stdin.write_all(b"two\n").unwrap();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "two\n");
    // New connections are no longer captured.
    let peer_dst = SocketAddr::new(db.ipv4.into(), 7000);
    assert_eq!(
        peer_seen_by_server(&tb, "shop/client", peer_dst),
        IpAddr::from(client.ipv4)
    );

    let mark = tb.log_mark("node-a");
    tb.enroll("shop/client");
    tb.wait_log_after("node-a", mark, Duration::from_secs(5), |v| {
        v["fields"]["message"] == "pod enrolled" && v["fields"]["pod"] == "shop/client"
    });
    let peer_dst6 = SocketAddr::new(db.ipv6.into(), 7000);
    assert_eq!(
        peer_seen_by_server(&tb, "shop/client", peer_dst6),
        IpAddr::from(client.ipv6)
    );
    tb.wait_log("node-a", Duration::from_secs(5), |v| {
        is_access(v, "shop/client", peer_dst6)
    });

    // Closing the long-lived connection logs it, with both messages counted.
    drop(stdin);
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let line = tb.wait_log("node-a", Duration::from_secs(5), |v| {
        is_access(v, "shop/client", dst)
    });
    assert_eq!(line["fields"]["bytes_sent"], 8);
    assert_eq!(line["fields"]["bytes_received"], 8);
    assert!(
        !access_lines(&tb, "node-a", "shop/client")
            .iter()
            .any(|v| v["fields"]["dst"] == peer_dst.to_string()),
        "the connection made while unenrolled must not be captured"
    );
}

/// xorshift64*: a fast, reproducible byte stream.
struct Stream(u64);
impl Stream {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// FNV-1a over 8-byte words (and a tail), with the length mixed in.
#[derive(Default)]
struct Digest {
    hash: u64,
    len: u64,
    tail: Vec<u8>,
}
impl Digest {
    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.tail.is_empty() {
            let need = 8 - self.tail.len();
            let take = need.min(data.len());
            self.tail.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.tail.len() == 8 {
                let word = u64::from_le_bytes(self.tail[..].try_into().unwrap());
                self.word(word);
                self.tail.clear();
            }
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            self.word(u64::from_le_bytes(w.try_into().unwrap()));
        }
        self.tail.extend_from_slice(words.remainder());
    }
    fn word(&mut self, w: u64) {
        if self.hash == 0 {
            self.hash = 0xcbf2_9ce4_8422_2325;
        }
        self.hash = (self.hash ^ w).wrapping_mul(0x0000_0100_0000_01b3);
    }
    fn finish(mut self) -> (u64, u64) {
        let tail = std::mem::take(&mut self.tail);
        for b in tail {
            self.word(u64::from(b));
        }
        (self.hash, self.len)
    }
}

#[test]
fn one_gibibyte_arrives_intact_across_nodes() {
    const TOTAL: usize = 1 << 30;
    let tb = Testbed::up(SPEC, true);
    let db = tb.pod("data/db").clone();
    let dst = SocketAddr::new(db.ipv4.into(), 7300);
    let mut server = tb.spawn_piped(
        "data/db",
        &["socat", "-u", "TCP4-LISTEN:7300,reuseaddr", "STDOUT"],
    );
    tb.wait_server_listening(&mut server, "data/db", 7300);
    let mut client = tb.spawn_piped(
        "shop/client",
        &["socat", "-u", "STDIN", &format!("TCP4:{dst}")],
    );

    let mut server_out = server.child.stdout.take().unwrap();
    let receiver = std::thread::spawn(move || {
        let mut digest = Digest::default();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = server_out.read(&mut buf).unwrap();
            if n == 0 {
                return digest.finish();
            }
            digest.update(&buf[..n]);
        }
    });
    let started = Instant::now();
    let mut client_in = client.child.stdin.take().unwrap();
    let mut sent = Digest::default();
    let mut stream = Stream(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = TOTAL;
    while left > 0 {
        let n = left.min(buf.len());
        stream.fill(&mut buf[..n]);
        sent.update(&buf[..n]);
        client_in.write_all(&buf[..n]).unwrap();
        left -= n;
    }
    drop(client_in); // EOF: socat half-closes, the server side sees the end.
    let received = receiver.join().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(
        received,
        sent.finish(),
        "the bytes that arrived differ from those sent"
    );
    let line = tb.wait_log("node-a", Duration::from_secs(10), |v| {
        is_access(v, "shop/client", dst)
    });
    assert_eq!(line["fields"]["bytes_sent"].as_u64(), Some(TOTAL as u64));
    eprintln!("1 GiB through the capture path in {elapsed:?}");
    let _ = client.child.wait();
    let _ = server.child.wait();
}

#[test]
fn apps_cannot_bind_the_agents_reserved_ports() {
    let tb = Testbed::up(SPEC, true);
    for listen in [
        "TCP4-LISTEN:15001,bind=0.0.0.0",
        "TCP6-LISTEN:15006,ipv6only=0",
        "TCP6-LISTEN:15008",
    ] {
        let out = tb.exec("shop/client", &["timeout", "1", "socat", listen, "STDOUT"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("Operation not permitted"),
            "{listen} in an enrolled pod must be refused, got {:?}: {stderr}",
            out.status
        );
    }
    // A pod that is not enrolled may.
    let out = tb.exec(
        "shop/outsider",
        &["timeout", "1", "socat", "TCP4-LISTEN:15001", "STDOUT"],
    );
    assert_eq!(
        out.status.code(),
        Some(124),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sockets_of_the_agent_are_never_steered_by_mark_or_by_cgroup() {
    let tb = Testbed::up(SPEC, true);
    let db = tb.pod("data/db").clone();
    let client = tb.pod("shop/client").clone();
    let _server = tb.tcp_server("data/db", 7000, "SYSTEM:echo $SOCAT_PEERADDR");
    let mark = 0x4f52; // the agent's default SO_MARK (config.rs)

    // An app socket carrying the agent's mark is taken for the agent's own. (socat sets
    // generic socket options only after connect; python sets it before, as an app would.)
    let by_mark = SocketAddr::new(db.ipv4.into(), 7000);
    let script = format!(
        "import socket\n\
         s = socket.socket()\n\
         s.setsockopt(socket.SOL_SOCKET, 36, {mark})  # SO_MARK\n\
         s.connect(('{}', {}))\n\
         print(s.recv(100).decode().strip())",
        by_mark.ip(),
        by_mark.port()
    );
    let out = tb.exec("shop/client", &["python3", "-c", &script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        parse_peer(&String::from_utf8_lossy(&out.stdout)),
        IpAddr::from(client.ipv4)
    );

    // A process in the agent's cgroup, inside the enrolled pod's namespace, unmarked.
    let by_cgroup = SocketAddr::new(db.ipv6.into(), 7000);
    let agent_cgroup = tb.node("node-a").cgroup.join("agent");
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec nsenter --net={} socat -t5 -T5 STDIO TCP6:{by_cgroup}",
        agent_cgroup.display(),
        client.netns.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Both reached the server, neither through the agent.
    let marker = SocketAddr::new(db.ipv4.into(), 7000);
    peer_seen_by_server(&tb, "shop/client", marker);
    tb.wait_log("node-a", Duration::from_secs(5), |v| {
        is_access(v, "shop/client", marker)
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        access_lines(&tb, "node-a", "shop/client").len(),
        1,
        "only the unmarked app connection"
    );
    assert!(
        !access_lines(&tb, "node-a", "shop/client")
            .iter()
            .any(|v| v["fields"]["dst"] == by_cgroup.to_string()),
    );
}

#[test]
fn a_socket_bound_to_the_pod_ip_before_connect_is_captured() {
    let tb = Testbed::up(SPEC, true);
    let db = tb.pod("data/db").clone();
    let client = tb.pod("shop/client").clone();
    let _server = tb.tcp_server("data/db", 7000, "SYSTEM:echo $SOCAT_PEERADDR");
    let dst = SocketAddr::new(db.ipv4.into(), 7000);
    let out = tb.exec(
        "shop/client",
        &[
            "socat",
            "-t5",
            "-T5",
            "STDIO",
            &format!("TCP4:{dst},bind={}:0", client.ipv4),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tb.wait_log("node-a", Duration::from_secs(5), |v| {
        is_access(v, "shop/client", dst)
    });
}

/// Runs `change` on the `flags` of the settings node `node`'s kernel programs read,
/// through the map the agent pinned (as an operator with bpftool could).
fn kernel_flags(tb: &Testbed, node: &str, change: impl FnOnce(u16) -> u16) {
    use aya::maps::{Array, Map, MapData};
    let agent = tb.node(node).agent.clone().unwrap();
    let config = outrider::config::Config::load(&agent.config).unwrap();
    let pins = outrider::dataplane::pins::Pins::open(&config.capture.pin_dir(&config.instance));
    let path = pins.unwrap().maps_dir().join(agent_ebpf::MAP_SETTINGS);
    let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut settings: Array<MapData, agent_ebpf::Settings> =
        Array::try_from(Map::Array(data)).unwrap();
    let mut value = settings.get(&0, 0).unwrap();
    value.flags = change(value.flags);
    settings.set(0, value, 0).unwrap();
}

/// `count` connects from `pod` to `dst` in a tight loop; the error of each that failed
/// (empty for those that connected).
fn connects(tb: &Testbed, pod: &str, dst: SocketAddr, count: usize) -> Vec<String> {
    let script = format!(
        "import socket\n\
         for _ in range({count}):\n\
         \x20   try:\n\
         \x20       socket.create_connection(('{ip}', {port}), timeout=5).close()\n\
         \x20       print('')\n\
         \x20   except OSError as e:\n\
         \x20       print(e.strerror)\n",
        ip = dst.ip(),
        port = dst.port()
    );
    let out = tb.exec(pod, &["python3", "-c", &script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// `outrider_refusals_total` of shop/client for a kernel map insert, once it reaches
/// `want` (the agent reads the kernel's counters every second).
fn wait_kernel_refusals(tb: &Testbed, want: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = tb.scrape("node-a");
        let value = support::refusals(&metrics, "shop/client", "outbound", "kernel_map_insert");
        if value == want || Instant::now() > deadline {
            assert_eq!(value, want, "{metrics}");
            return metrics;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_failed_kernel_map_insert_refuses_the_connect_under_fail_closed() {
    let tb = Testbed::up(SPEC, true);
    let client = tb.pod("shop/client").clone();
    let db = tb.pod("data/db").clone();
    let _db_server = tb.tcp_server("data/db", 7000, "SYSTEM:echo $SOCAT_PEERADDR");
    let dst = SocketAddr::new(db.ipv4.into(), 7000);
    let dst6 = SocketAddr::new(db.ipv6.into(), 7000);
    assert_eq!(
        peer_seen_by_server(&tb, "shop/client", dst),
        IpAddr::from(client.ipv4)
    );
    // Its access line is written as the agent closes it, maybe after the client is done:
    // wait for it, so that none of it falls after the mark below.
    tb.wait_log("node-a", Duration::from_secs(5), |v| {
        is_access(v, "shop/client", dst)
    });

    // Fail-closed (the default): while the original destination cannot be recorded,
    // every connect fails at once with EPERM, on both families; none reaches db, so
    // nothing leaves the pod unsteered. Counted per pod, logged once for the burst.
    let mark = tb.log_mark("node-a");
    kernel_flags(&tb, "node-a", |f| {
        f | agent_ebpf::SETTINGS_TEST_FAIL_INSERTS
    });
    let mut errors = connects(&tb, "shop/client", dst, 10);
    errors.extend(connects(&tb, "shop/client", dst6, 10));
    assert_eq!(errors.len(), 20);
    for error in &errors {
        assert_eq!(error, "Operation not permitted", "{errors:?}");
    }
    wait_kernel_refusals(&tb, 20);
    let count = |lines: &[Value]| -> u64 {
        lines
            .iter()
            .map(|v| v["fields"]["count"].as_u64().unwrap())
            .sum()
    };
    let lines = tb.log_lines_when(
        "node-a",
        mark,
        Duration::from_secs(5),
        |v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("connects refused in the kernel"))
        },
        |lines| count(lines) >= 20,
    );
    assert!(
        lines.iter().all(|v| v["fields"]["pod"] == "shop/client"),
        "{lines:?}"
    );
    assert_eq!(count(&lines), 20, "{lines:?}");
    assert!(
        lines.len() <= 4,
        "one line per burst, not per connect: {lines:?}"
    );
    assert!(
        !tb.agent_log("node-a")
            .iter()
            .skip(mark)
            .any(|v| is_access(v, "shop/client", dst) || is_access(v, "shop/client", dst6)),
        "nothing reached the agent either"
    );

    // Once inserts work again, so do connects, captured as before.
    kernel_flags(&tb, "node-a", |f| {
        f & !agent_ebpf::SETTINGS_TEST_FAIL_INSERTS
    });
    let marker = SocketAddr::new(db.ipv6.into(), 7000);
    assert_eq!(
        peer_seen_by_server(&tb, "shop/client", marker),
        IpAddr::from(client.ipv6)
    );
    tb.wait_log("node-a", Duration::from_secs(5), |v| {
        is_access(v, "shop/client", marker)
    });
}

#[test]
fn under_fail_open_a_failed_kernel_map_insert_lets_the_connect_through_unmeshed() {
    let spec = format!("{SPEC}agent:\n  capture: {{failPolicy: fail-open}}\n");
    let tb = Testbed::up(&spec, true);
    let client = tb.pod("shop/client").clone();
    let db = tb.pod("data/db").clone();
    let _db_server = tb.tcp_server("data/db", 7000, "SYSTEM:echo $SOCAT_PEERADDR");
    let dst = SocketAddr::new(db.ipv4.into(), 7000);

    // As before this change: the connect goes where the app asked, unmeshed (db sees the
    // pod's address, the agent sees nothing); logged, not counted as a refusal.
    let mark = tb.log_mark("node-a");
    kernel_flags(&tb, "node-a", |f| {
        f | agent_ebpf::SETTINGS_TEST_FAIL_INSERTS
    });
    assert_eq!(
        peer_seen_by_server(&tb, "shop/client", dst),
        IpAddr::from(client.ipv4)
    );
    let line = tb.wait_log_after("node-a", mark, Duration::from_secs(5), |v| {
        v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("connects let through unmeshed"))
    });
    assert_eq!(line["fields"]["pod"], "shop/client", "{line}");
    assert_eq!(line["fields"]["count"], 1, "{line}");
    assert!(
        !tb.agent_log("node-a")
            .iter()
            .skip(mark)
            .any(|v| is_access(v, "shop/client", dst)),
        "the unmeshed connect never reached the agent"
    );
    assert!(
        !tb.scrape("node-a")
            .contains(r#"reason="kernel_map_insert""#),
        "not a refusal"
    );

    // Once inserts work again, connects are captured again.
    kernel_flags(&tb, "node-a", |f| {
        f & !agent_ebpf::SETTINGS_TEST_FAIL_INSERTS
    });
    peer_seen_by_server(&tb, "shop/client", dst);
    tb.wait_log_after("node-a", mark, Duration::from_secs(5), |v| {
        is_access(v, "shop/client", dst)
    });
}
