//! End-to-end: faults. A destination pod that vanishes mid-stream is noticed within the
//! tunnel's keepalive and the client gets an error, not a hang; slow clients holding the
//! inbound listener open cost only their own sockets, leave the others' traffic alone
//! and give every descriptor back.
mod support;

use std::{
    io::{BufRead, Write},
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::Testbed;

const SPEC: &str = "
nodes:
  - name: node-a
    pods:
      - {namespace: shop, name: client, serviceAccount: client}
      - {namespace: shop, name: web, serviceAccount: web}
      - {namespace: shop, name: outsider, enrolled: false}
  - name: node-b
    pods:
      - {namespace: data, name: db, serviceAccount: db}
      - {namespace: data, name: cart, serviceAccount: cart}
";

/// Open descriptors of a node's agent.
fn agent_fds(tb: &Testbed, node: &str) -> usize {
    let pid = tb.node(node).agent.as_ref().expect("an agent").pid;
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn a_destination_pod_removed_mid_stream_ends_the_connection_with_an_error() {
    let tb = Testbed::up(SPEC, true);
    let db = tb.pod("data/db").clone();
    let cart = tb.pod("data/cart").clone();
    let _db = tb.tcp_server("data/db", 7000, "EXEC:cat");
    let _cart = tb.tcp_server("data/cart", 7000, "EXEC:cat");

    let mut conn = tb.spawn_piped(
        "shop/client",
        &["socat", "STDIO", &format!("TCP4:{}:7000", db.ipv4)],
    );
    let mut stdin = conn.child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(conn.child.stdout.take().unwrap());
    stdin.write_all(b"before\n").unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "before\n");

    // The pod's network goes away at once (its veth pair), as when its node dies or its
    // sandbox is torn down under it: no FIN, no RST reaches node-a.
    let mark = tb.log_mark("node-a");
    let out = tb.sh("data/db", "ip link del eth0");
    assert!(out.status.success(), "{out:?}");
    let removed = Instant::now();
    // Data in flight, then wait for the client's connection to end.
    let _ = stdin.write_all(b"after\n");
    let ended = loop {
        if let Ok(Some(status)) = conn.child.try_wait() {
            break status;
        }
        assert!(
            removed.elapsed() < Duration::from_secs(20),
            "the client still hangs {:?} after its destination vanished",
            removed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = removed.elapsed();
    // Keepalive: a PING every 5 s, 5 s to answer.
    assert!(took < Duration::from_secs(15), "{took:?}");
    let silent = tb.wait_log_after("node-a", mark, Duration::from_secs(5), |v: &Value| {
        v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("HBONE client connection ended"))
    });
    assert!(
        silent["fields"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("PING")),
        "{silent}"
    );
    let access = tb.wait_log_after("node-a", mark, Duration::from_secs(5), |v: &Value| {
        v["target"] == "access"
            && v["fields"]["dst"] == format!("{}:7000", db.ipv4)
            && v["fields"]["error"].is_string()
    });
    eprintln!(
        "client ended ({ended}) {took:?} after the pod vanished; access line: {}",
        access["fields"]
    );

    // The other pod of that node is untouched.
    let (ok, back) = tb.echo(
        "shop/client",
        SocketAddr::new(cart.ipv4.into(), 7000),
        "others",
    );
    assert!(ok && back == "others", "{back:?}");
}

#[test]
fn slow_clients_holding_the_inbound_listener_open_leave_others_alone_and_leak_nothing() {
    let tb = Testbed::up(SPEC, true);
    let web = tb.pod("shop/web").clone();
    // A backlog that holds the burst: with socat's default (5) the app itself drops
    // handshakes, and the agent's deliveries then wait out TCP's retries (left to issue 9:
    // TCP_USER_TIMEOUT on the proxy's sockets).
    let _web = tb.spawn(
        "shop/web",
        &[
            "socat",
            "TCP6-LISTEN:7000,fork,reuseaddr,ipv6only=0,backlog=1024",
            "EXEC:cat",
        ],
    );
    tb.wait_listening("shop/web", 7000);
    let dst = SocketAddr::new(web.ipv4.into(), 7000);
    let (ok, _) = tb.echo("shop/client", dst, "warm");
    assert!(ok);
    std::thread::sleep(Duration::from_millis(300));
    let before = agent_fds(&tb, "node-a");

    // 200 plaintext connections from outside the mesh, each sending a byte and then
    // nothing, held open (slowloris).
    let hold = format!(
        "import socket, time\n\
         socks = []\n\
         for i in range(200):\n\
         \x20   s = socket.create_connection(('{}', 7000))\n\
         \x20   s.send(b'G')\n\
         \x20   socks.append(s)\n\
         print('held', flush=True)\n\
         time.sleep(6)\n",
        web.ipv4
    );
    let mut slow = tb.spawn_piped("shop/outsider", &["python3", "-c", &hold]);
    let mut out = std::io::BufReader::new(slow.child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "held", "{}", slow.output());
    // Each is accepted (and, once detection gives up on it, delivered to the app).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let during = agent_fds(&tb, "node-a");
        if during >= before + 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow connections are not all held ({before} → {during})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Meanwhile the mesh's traffic to the same pod is served at once.
    let started = Instant::now();
    for i in 0..5 {
        let (ok, back) = tb.echo("shop/client", dst, &format!("meanwhile-{i}"));
        assert!(ok && back == format!("meanwhile-{i}"), "{back:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Once they go, every descriptor comes back.
    let _ = slow.child.kill();
    let _ = slow.child.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = agent_fds(&tb, "node-a");
        if now <= before + 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "descriptors not given back: {before} before, {now} now"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_upstream_reset_reaches_the_client_as_a_reset() {
    let tb = Testbed::up(SPEC, true);
    let db = tb.pod("data/db").clone();
    let cart = tb.pod("data/cart").clone();
    let _cart = tb.tcp_server("data/cart", 7000, "EXEC:cat");
    // An app that answers every connection with a reset (SO_LINGER 0, then close).
    let resetter = "import socket, struct\n\
         l = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)\n\
         l.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
         l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         l.bind(('::', 7001)); l.listen(64)\n\
         while True:\n\
         \x20   c, _ = l.accept()\n\
         \x20   c.recv(16)\n\
         \x20   c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n\
         \x20   c.close()\n";
    let _server = tb.spawn("data/db", &["python3", "-c", resetter]);
    tb.wait_listening("data/db", 7001);
    let client = format!(
        "import socket\n\
         s = socket.create_connection(('{}', 7001))\n\
         s.sendall(b'hello')\n\
         try:\n\
         \x20   data = s.recv(16)\n\
         \x20   print('eof' if data == b'' else 'data')\n\
         except ConnectionResetError:\n\
         \x20   print('reset')\n",
        db.ipv4
    );
    let mark_a = tb.log_mark("node-a");
    let out = tb.exec("shop/client", &["python3", "-c", &client]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "reset",
        "the client must see the reset, not a clean end: {out:?}"
    );
    let access = tb.wait_log_after("node-a", mark_a, Duration::from_secs(5), |v: &Value| {
        v["target"] == "access" && v["fields"]["dst"] == format!("{}:7001", db.ipv4)
    });
    assert!(access["fields"]["error"].is_string(), "{access}");
    let (ok, back) = tb.echo(
        "shop/client",
        SocketAddr::new(cart.ipv4.into(), 7000),
        "others",
    );
    assert!(ok && back == "others", "{back:?}");
}
