//! End-to-end: the claims of SECURITY.md that issue 9 verifies. A strict pod's traffic
//! is never plaintext on the wire, either way; no private key (the CA's, as PEM, base64
//! or raw) shows in any log, at debug level, in any outriderctl dump or in /metrics; apps
//! in an enrolled pod cannot bind any of the agent's reserved ports on either family,
//! and connections to those ports are not steered.
//!
//! Proven elsewhere, not repeated here: the admin socket's mode 0600 and the refusal of
//! an unprivileged user, at connect() and, with the socket opened up, by peer credentials
//! (`admin.rs`, `callers_without_permission_are_refused_with_a_clear_message`);
//! plaintext refused by a strict namespace (`mtls.rs`).
mod support;

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Testbed, specs};

/// shop/client and shop/outsider on node-a; secure/vault, in a strict namespace, and
/// data/db on node-b.
fn spec() -> String {
    let node_a = [specs::meshed("shop/client"), specs::outsider()];
    let node_b = [specs::meshed("secure/vault"), specs::meshed("data/db")];
    specs::nodes(&[("node-a", &node_a), ("node-b", &node_b)]) + &specs::strict(&["secure"])
}

/// A server on port 7000 (IPv4 and IPv6) that prints each line it gets (`got <line>`)
/// and answers every connection with `answer`.
fn line_server(answer: &str) -> String {
    format!(
        "import socket\n\
         l = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)\n\
         l.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
         l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         l.bind(('::', 7000)); l.listen(64)\n\
         while True:\n\
         \x20   c, _ = l.accept()\n\
         \x20   d = b''\n\
         \x20   while not d.endswith(b'\\n'):\n\
         \x20       x = c.recv(4096)\n\
         \x20       if not x: break\n\
         \x20       d += x\n\
         \x20   print('got', d.decode().strip(), flush=True)\n\
         \x20   c.sendall(b'{answer}\\n')\n\
         \x20   c.close()\n"
    )
}

/// Sends `line` from `pod` to `dst` and returns the answer.
fn send_line(tb: &Testbed, pod: &str, dst: SocketAddr, line: &str) -> String {
    let script = format!(
        "printf '%s\\n' '{line}' | socat -t5 -T5 STDIO {}",
        support::socat_target(dst)
    );
    String::from_utf8_lossy(&tb.sh(pod, &script).stdout)
        .trim()
        .to_string()
}

/// How many packets of `pcap` match the tcpdump `filter`.
fn packets(pcap: &Path, filter: &str) -> usize {
    let out = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(pcap)
        .arg(filter)
        .output()
        .expect("tcpdump");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Starts tcpdump on eth0 of the network namespace `netns`, writing every TCP packet
/// to `pcap` as it comes; returns once it listens.
fn start_capture(tb: &Testbed, netns: &Path, pcap: &Path) -> std::process::Child {
    let tcpdump_log = tb.dir().join("tcpdump.log");
    let capture = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args([
            "tcpdump",
            "-i",
            "eth0",
            "--immediate-mode",
            "-U",
            "-s",
            "0",
            "-w",
        ])
        .arg(pcap)
        .arg("tcp")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&tcpdump_log).unwrap())
        .spawn()
        .expect("tcpdump");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&tcpdump_log)
        .unwrap_or_default()
        .contains("listening on")
    {
        assert!(Instant::now() < deadline, "tcpdump did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    capture
}

/// Stops a capture of [`start_capture`]: on SIGINT tcpdump writes what it holds and exits.
fn stop_capture(mut capture: std::process::Child) {
    let _ = Command::new("kill")
        .args(["-INT", &capture.id().to_string()])
        .status();
    let _ = capture.wait();
}

#[test]
fn a_strict_pod_exchanges_no_plaintext_on_the_wire_in_either_direction() {
    let tb = Testbed::up(&spec(), true);
    let vault = tb.pod("secure/vault").clone();
    let answer = "VAULT-ANSWER-7f3a9c51e2";
    let mut server = tb.spawn("secure/vault", &["python3", "-c", &line_server(answer)]);
    tb.wait_server_listening(&mut server, "secure/vault", 7000);

    // Everything on the strict pod's own link (its eth0: all it sends and receives),
    // captured from the node's side of the pod's network namespace.
    let pcap = tb.dir().join("vault.pcap");
    let capture = start_capture(&tb, &vault.netns, &pcap);

    // Meshed clients: another node (IPv4 and IPv6) and the same node.
    let sends = [
        ("shop/client", SocketAddr::new(vault.ipv4.into(), 7000)),
        ("shop/client", SocketAddr::new(vault.ipv6.into(), 7000)),
        ("data/db", SocketAddr::new(vault.ipv4.into(), 7000)),
    ];
    let mut markers = Vec::new();
    for (i, (pod, dst)) in sends.iter().enumerate() {
        let marker = format!("PLAINTEXT-CANARY-{i}-9d8e7f6a5b4c");
        let back = send_line(&tb, pod, *dst, &marker);
        assert_eq!(back, answer, "{pod} → {dst}");
        markers.push(marker);
    }
    // A control: plaintext from outside the mesh, which the strict pod refuses (the app
    // never gets it) but which the capture must show in clear.
    let outsider = tb.pod("shop/outsider").clone();
    let refused = send_line(
        &tb,
        "shop/outsider",
        SocketAddr::new(vault.ipv4.into(), 7000),
        "OUTSIDER-CANARY-5e4d3c2b1a",
    );
    assert_eq!(refused, "", "strict must refuse plaintext");
    // Whether those bytes left the outsider before the refusal came is a race; plaintext
    // sent to the tunnel port always does (its TLS end waits for the client's first
    // bytes): the control that the capture shows plaintext when there is some.
    let _ = send_line(
        &tb,
        "shop/outsider",
        SocketAddr::new(vault.ipv4.into(), 15008),
        "WIRE-CANARY-0a1b2c3d4e",
    );
    std::thread::sleep(Duration::from_millis(300));
    stop_capture(capture);

    // The app got every meshed marker, and not the outsider's…
    let received = server.output();
    for marker in &markers {
        assert!(received.contains(&format!("got {marker}")), "{received}");
    }
    assert!(!received.contains("OUTSIDER-CANARY"), "{received}");
    // …and the wire carried the meshed traffic only in the tunnel: TLS to 15008, never
    // to the app's port, and neither the markers nor the answer in clear.
    let wire = std::fs::read(&pcap).unwrap();
    let tunnel = packets(&pcap, "tcp port 15008");
    let meshed_app_port = packets(
        &pcap,
        &format!("tcp port 7000 and not host {}", outsider.ipv4),
    );
    let outsider_app_port = packets(&pcap, &format!("tcp port 7000 and host {}", outsider.ipv4));
    eprintln!(
        "vault's eth0: {} bytes captured; {tunnel} packets on 15008, {meshed_app_port} meshed \
         and {outsider_app_port} outsider packets on 7000",
        wire.len()
    );
    assert!(
        contains(&wire, b"WIRE-CANARY-0a1b2c3d4e"),
        "the capture must show plaintext when there is some"
    );
    assert!(outsider_app_port > 0);
    assert!(
        tunnel >= 3 * 4,
        "the capture saw the tunnels ({tunnel} packets)"
    );
    assert_eq!(
        meshed_app_port, 0,
        "meshed plaintext to the app's port on the wire"
    );
    for needle in markers.iter().map(String::as_str).chain([answer]) {
        assert!(
            !contains(&wire, needle.as_bytes()),
            "{needle} in clear on the wire"
        );
    }
}

/// Every file under `dir` (recursively), but not under `skip` nor in other filesystems
/// mounted there (the testbed's bpffs, whose pins are not files to read).
fn files(dir: &Path, skip: &Path, out: &mut Vec<PathBuf>) {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).unwrap().dev();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.starts_with(skip) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            files(&path, skip, out);
        } else if meta.is_file() {
            out.push(path);
        }
    }
}

/// The 32-byte private scalar inside a PKCS#8 ECDSA P-256 key (DER): the OCTET STRING
/// after the ECPrivateKey's version 1.
fn ec_scalar(pkcs8: &[u8]) -> Vec<u8> {
    let at = pkcs8
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("an ECPrivateKey in the PKCS#8 key");
    pkcs8[at + 5..at + 5 + 32].to_vec()
}

/// Every dump outriderctl offers, in every format, from both nodes, and each node's
/// /metrics: what it is, and its bytes.
fn ctl_dumps_and_metrics(tb: &Testbed) -> Vec<(String, Vec<u8>)> {
    let mut dumps = Vec::new();
    let commands: [&[&str]; 8] = [
        &["version"],
        &["workloads"],
        &["workloads", "get", "shop/client"],
        &["connections"],
        &["config"],
        &["policies"],
        &["certs"],
        &["log-level"],
    ];
    for node in ["node-a", "node-b"] {
        for command in commands {
            if node == "node-b" && command.contains(&"shop/client") {
                continue;
            }
            for format in ["table", "json", "yaml"] {
                let mut args = command.to_vec();
                args.extend(["-o", format]);
                let out = tb.ctl_ok(node, &args);
                assert!(!out.trim().is_empty(), "{node}: {args:?} printed nothing");
                dumps.push((
                    format!("{node}: outriderctl {}", args.join(" ")),
                    out.into(),
                ));
            }
        }
        let metrics = Command::new("nsenter")
            .arg(format!("--net={}", tb.node(node).netns.display()))
            .args([
                "curl",
                "-sS",
                "--max-time",
                "5",
                "http://127.0.0.1:15020/metrics",
            ])
            .output()
            .unwrap();
        assert!(metrics.status.success(), "{metrics:?}");
        assert!(!metrics.stdout.is_empty());
        dumps.push((format!("{node}: /metrics"), metrics.stdout));
    }
    dumps
}

/// Every file the testbed holds (agent logs, configs, background programs' output),
/// except `ca_dir`: its path, and its bytes.
fn testbed_files(tb: &Testbed, ca_dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut dumps = Vec::new();
    let mut logs = Vec::new();
    files(tb.dir(), ca_dir, &mut logs);
    assert!(
        logs.iter()
            .any(|p| p.file_name().is_some_and(|n| n == "agent.log")),
        "{logs:?}"
    );
    for path in &logs {
        match std::fs::read(path) {
            Ok(bytes) => dumps.push((path.display().to_string(), bytes)),
            // A temporary file renamed away meanwhile (the agents write atomically).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }
    dumps
}

/// What would betray the key in `ca_dir`: its PEM, any line of its base64, its DER, the
/// private scalar raw, in hex (plain and colon-separated, as openssl prints it) and in
/// base64; each named.
fn ca_key_forms(ca_dir: &Path) -> Vec<(String, Vec<u8>)> {
    let key_pem = std::fs::read_to_string(ca_dir.join("ca.key")).unwrap();
    let body: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = {
        use rustls::pki_types::{PrivateKeyDer, pem::PemObject};
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .expect("the CA key is PEM")
            .secret_der()
            .to_vec()
    };
    let scalar = ec_scalar(&der);
    let hex: String = scalar.iter().map(|b| format!("{b:02x}")).collect();
    let colons: Vec<String> = scalar.iter().map(|b| format!("{b:02x}")).collect();
    let mut needles: Vec<(String, Vec<u8>)> = vec![
        ("a PEM private key".into(), b"PRIVATE KEY".to_vec()),
        ("the CA key's DER".into(), der.clone()),
        ("the CA key's scalar".into(), scalar.clone()),
        ("the CA key's scalar, hex".into(), hex.clone().into_bytes()),
        (
            "the CA key's scalar, HEX".into(),
            hex.to_uppercase().into_bytes(),
        ),
        (
            "the CA key's scalar, openssl hex".into(),
            colons.join(":").into_bytes(),
        ),
        (
            "the CA key's scalar, base64".into(),
            outrider::identity::ca::base64(&scalar)
                .trim_end_matches('=')
                .as_bytes()
                .to_vec(),
        ),
    ];
    for (i, line) in body.iter().enumerate() {
        needles.push((format!("line {i} of ca.key"), line.as_bytes().to_vec()));
    }
    needles
}

#[test]
fn private_keys_never_appear_in_logs_dumps_or_metrics() {
    // Debug logging everywhere, and certificates renewed every 3 s so that minting and
    // renewal are logged too.
    let debug = format!(
        "{}agent:\n  log: {{level: debug}}\n  identity: {{certTtlSeconds: 6}}\n",
        spec()
    );
    let tb = Testbed::up(&debug, true);
    let vault = tb.pod("secure/vault").clone();
    let db = tb.pod("data/db").clone();
    let _vault = tb.tcp_server("secure/vault", 7000, "EXEC:cat");
    let _db = tb.tcp_server("data/db", 7000, "EXEC:cat");

    // Traffic of every kind: cross-node and same-node tunnels, IPv4 and IPv6, plaintext
    // served (permissive) and refused (strict).
    for (pod, dst) in [
        ("shop/client", SocketAddr::new(vault.ipv4.into(), 7000)),
        ("shop/client", SocketAddr::new(db.ipv6.into(), 7000)),
        ("data/db", SocketAddr::new(vault.ipv4.into(), 7000)),
        ("shop/outsider", SocketAddr::new(db.ipv4.into(), 7000)),
    ] {
        let (ok, back) = tb.echo(pod, dst, "traffic");
        assert!(ok && back == "traffic", "{pod} → {dst}: {back:?}");
    }
    let _ = tb.echo(
        "shop/outsider",
        SocketAddr::new(vault.ipv4.into(), 7000),
        "refused",
    );
    // At least one renewal, logged at debug level.
    for node in ["node-a", "node-b"] {
        tb.wait_log(node, Duration::from_secs(10), |v: &Value| {
            v["fields"]["message"] == "certificate renewed"
        });
        let debug = tb
            .agent_log(node)
            .iter()
            .filter(|v| v["level"] == "DEBUG")
            .count();
        assert!(debug > 0, "{node} logs nothing at debug level");
    }

    // Every dump and file, searched for every form of the CA's key.
    let mut dumps = ctl_dumps_and_metrics(&tb);
    let ca_dir = tb.state.ca_dir.clone();
    dumps.extend(testbed_files(&tb, &ca_dir));
    let needles = ca_key_forms(&ca_dir);
    let mut scanned = 0;
    for (what, bytes) in &dumps {
        scanned += bytes.len();
        for (secret, needle) in &needles {
            assert!(!contains(bytes, needle), "{what} holds {secret}");
        }
    }
    eprintln!(
        "{} dumps and files, {scanned} bytes, none holds any of {} forms of the CA key",
        dumps.len(),
        needles.len()
    );
}

/// What binding `port` on `addr` in `pod` gives: `ok`, or the error's name.
fn bind_results(tb: &Testbed, pod: &str, ports: &[u16], addrs: &[&str]) -> Vec<String> {
    let script = format!(
        "import socket, errno\n\
         for port in {ports:?}:\n\
         \x20   for addr in {addrs:?}:\n\
         \x20       fam = socket.AF_INET6 if ':' in addr else socket.AF_INET\n\
         \x20       for v6only in ([0, 1] if fam == socket.AF_INET6 else [None]):\n\
         \x20           s = socket.socket(fam, socket.SOCK_STREAM)\n\
         \x20           if v6only is not None:\n\
         \x20               s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)\n\
         \x20           try:\n\
         \x20               s.bind((addr, port)); r = 'ok'\n\
         \x20           except OSError as e:\n\
         \x20               r = errno.errorcode[e.errno] + ':' + e.strerror\n\
         \x20           print(port, addr, 'v6only=%s' % v6only, r)\n\
         \x20           s.close()\n"
    );
    let out = tb.exec(pod, &["python3", "-c", &script]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The URI SANs of the certificate the TLS server at `dst` presents, seen from `pod`.
fn presented_identity(tb: &Testbed, pod: &str, dst: SocketAddr) -> String {
    let script = format!(
        "openssl s_client -connect '{dst}' -alpn h2 </dev/null 2>/dev/null \
         | openssl x509 -noout -ext subjectAltName"
    );
    String::from_utf8_lossy(&tb.sh(pod, &script).stdout)
        .trim()
        .to_string()
}

#[test]
fn reserved_ports_cannot_be_bound_on_either_family_and_connections_to_them_are_not_steered() {
    let tb = Testbed::up(&spec(), true);
    let client = tb.pod("shop/client").clone();
    let db = tb.pod("data/db").clone();
    let ports = [15001, 15006, 15008, 15020, 15021, 15090];
    let v4 = client.ipv4.to_string();
    let v6 = client.ipv6.to_string();
    let addrs = ["0.0.0.0", v4.as_str(), "::", v6.as_str()];

    // In an enrolled pod, every reserved port on every address and family: EPERM.
    let results = bind_results(&tb, "shop/client", &ports, &addrs);
    // Per port: 2 IPv4 addresses, 2 IPv6 ones with and without v6only.
    assert_eq!(results.len(), ports.len() * 6, "{results:#?}");
    for line in &results {
        assert!(
            line.ends_with("EPERM:Operation not permitted"),
            "an app in an enrolled pod bound a reserved port: {line}"
        );
    }
    // An ordinary port is fine there, and a pod outside the mesh may bind them all.
    let ordinary = bind_results(&tb, "shop/client", &[7000], &["0.0.0.0", "::"]);
    assert!(ordinary.iter().all(|l| l.ends_with(" ok")), "{ordinary:#?}");
    let outside = bind_results(&tb, "shop/outsider", &ports, &["0.0.0.0", "::"]);
    assert!(outside.iter().all(|l| l.ends_with(" ok")), "{outside:#?}");

    // A connection to another pod's tunnel port goes there as it is, not through the
    // agent: the TLS server answering is the destination's own listener (its identity).
    let mark = tb.log_mark("node-a");
    for ip in [IpAddr::from(db.ipv4), IpAddr::from(db.ipv6)] {
        let dst = SocketAddr::new(ip, 15008);
        let san = presented_identity(&tb, "shop/client", dst);
        assert!(
            san.contains("URI:spiffe://cluster.local/ns/data/sa/db"),
            "{dst}: {san:?}"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let steered: Vec<Value> = tb
        .agent_log("node-a")
        .into_iter()
        .skip(mark)
        .filter(|v| {
            v["target"] == "access"
                && v["fields"]["dst"]
                    .as_str()
                    .is_some_and(|d| d.ends_with(":15008"))
        })
        .collect();
    assert!(steered.is_empty(), "steered: {steered:?}");
}
