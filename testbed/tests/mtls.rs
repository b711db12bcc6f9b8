//! End-to-end: traffic between enrolled pods crosses the network inside mutual-TLS
//! HBONE tunnels with SPIFFE identities; plaintext into pods follows their namespace's
//! mTLS mode; bad peers are refused with a clear log line and nothing else is disturbed.
mod support;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use support::{Testbed, access, outrider, specs};

/// The two-node testbed with shop/web and shop/outsider beside the client, and
/// secure/vault, in a strict namespace, beside db.
fn spec() -> String {
    specs::client_and_db(
        &[specs::meshed("shop/web"), specs::outsider()],
        &[specs::meshed("secure/vault")],
    ) + &specs::strict(&["secure"])
}

const TD: &str = "spiffe://cluster.local";

#[test]
fn cross_node_traffic_is_tls_on_the_wire_and_carries_identities() {
    let tb = Testbed::up(&spec(), true);
    let db = tb.pod("data/db").clone();
    let _echo = tb.tcp_server("data/db", 7000, "EXEC:cat");

    // Watch node-a's link to the other nodes (its port on the fabric bridge) while the
    // pods talk.
    let pcap = tb.dir().join("fabric.pcap");
    let fabric = format!("/run/netns/{}-fabric", tb.state.prefix);
    let mut capture = Command::new("nsenter")
        .arg(format!("--net={fabric}"))
        .args(["tcpdump", "-i", "n1", "-U", "-s", "0", "-w"])
        .arg(&pcap)
        .arg("tcp")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    std::thread::sleep(Duration::from_millis(700));

    let marker = "OUTRIDER-SECRET-MARKER-0123456789";
    for dst in [
        SocketAddr::new(db.ipv4.into(), 7000),
        SocketAddr::new(db.ipv6.into(), 7000),
    ] {
        let (ok, back) = tb.echo("shop/client", dst, marker);
        assert!(ok && back == marker, "{dst}: echo came back as {back:?}");
        let out = tb.wait_log("node-a", Duration::from_secs(5), |v| {
            access(v, "outbound", dst)
        });
        let f = &out["fields"];
        assert_eq!(f["transport"], "hbone", "{out}");
        assert_eq!(f["src_identity"], format!("{TD}/ns/shop/sa/client"));
        assert_eq!(f["dst_identity"], format!("{TD}/ns/data/sa/db"));
        let inb = tb.wait_log("node-b", Duration::from_secs(5), |v| {
            access(v, "inbound", dst)
        });
        let f = &inb["fields"];
        assert_eq!(f["transport"], "hbone", "{inb}");
        assert_eq!(
            f["src_identity"],
            format!("{TD}/ns/shop/sa/client"),
            "the verified peer"
        );
        assert_eq!(f["bytes_sent"].as_u64(), Some(marker.len() as u64));
        assert_eq!(f["bytes_received"].as_u64(), Some(marker.len() as u64));
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = capture.kill();
    let _ = capture.wait();
    let bytes = std::fs::read(&pcap).expect("the capture");
    assert!(
        bytes.len() > 2000,
        "the capture saw the traffic ({} bytes)",
        bytes.len()
    );
    assert!(
        !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the application's bytes crossed the node link in plaintext"
    );
    // TLS 1.3 application-data records (0x17 0x03 0x03), and port 15008 in TCP headers.
    assert!(
        bytes.windows(3).any(|w| w == [0x17, 0x03, 0x03]),
        "no TLS records seen"
    );
    assert!(
        bytes.windows(2).any(|w| w == 15008u16.to_be_bytes()),
        "no traffic on port 15008 seen"
    );
}

#[test]
fn same_node_traffic_between_enrolled_pods_goes_through_the_tunnel() {
    let tb = Testbed::up(&spec(), true);
    let web = tb.pod("shop/web").clone();
    let _echo = tb.tcp_server("shop/web", 7000, "EXEC:cat");
    let dst = SocketAddr::new(web.ipv6.into(), 7000);
    let (ok, back) = tb.echo("shop/client", dst, "same-node");
    assert!(ok && back == "same-node");
    let out = tb.wait_log("node-a", Duration::from_secs(5), |v| {
        access(v, "outbound", dst)
    });
    assert_eq!(out["fields"]["transport"], "hbone");
    let inb = tb.wait_log("node-a", Duration::from_secs(5), |v| {
        access(v, "inbound", dst)
    });
    assert_eq!(inb["fields"]["pod"], "shop/web");
    assert_eq!(
        inb["fields"]["src_identity"],
        format!("{TD}/ns/shop/sa/client")
    );
}

/// The outsider's plaintext to `to_vault`, SNATed by node-b to its own address (NodePort
/// or LoadBalancer with externalTrafficPolicy: Cluster, hairpin), is refused as strict.
fn assert_natted_plaintext_is_refused(tb: &Testbed, to_vault: SocketAddr) {
    let node = tb.node("node-b").clone();
    let vault = tb.pod("secure/vault").clone();
    let snat = format!(
        "nsenter --net={} iptables -t nat -I POSTROUTING -s {} -d {} -j SNAT --to-source {}",
        node.netns.display(),
        tb.pod("shop/outsider").ipv4,
        vault.ipv4,
        node.ipv4
    );
    let out = Command::new("sh").args(["-c", &snat]).output().unwrap();
    assert!(out.status.success(), "{snat}: {out:?}");
    let (ok, back) = tb.echo("shop/outsider", to_vault, "natted");
    assert!(!ok || back.is_empty(), "NATed plaintext served: {back:?}");
    let natted = tb.wait_log("node-b", Duration::from_secs(5), |v| {
        access(v, "inbound", to_vault)
            && v["fields"]["src"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("{}:", node.ipv4)))
    });
    assert!(
        natted["fields"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("strict"),
        "{natted}"
    );
}

#[test]
fn strict_refuses_plaintext_and_permissive_serves_it() {
    let tb = Testbed::up(&spec(), true);
    let vault = tb.pod("secure/vault").clone();
    let db = tb.pod("data/db").clone();
    let _v = tb.tcp_server("secure/vault", 7000, "EXEC:cat");
    let _d = tb.tcp_server("data/db", 7000, "EXEC:cat");

    // From a pod outside the mesh: plaintext.
    let to_vault = SocketAddr::new(vault.ipv4.into(), 7000);
    let (ok, back) = tb.echo("shop/outsider", to_vault, "let me in");
    assert!(
        !ok || back.is_empty(),
        "strict must refuse plaintext, got {back:?}"
    );
    let refused = tb.wait_log("node-b", Duration::from_secs(5), |v| {
        access(v, "inbound", to_vault)
    });
    assert_eq!(refused["fields"]["transport"], "plaintext");
    assert!(
        refused["fields"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("strict"),
        "{refused}"
    );
    // Counted once, for the pod it protected.
    let metrics = tb.scrape("node-b");
    assert_eq!(
        support::refusals(&metrics, "secure/vault", "inbound", "strict_plaintext"),
        1,
        "{metrics}"
    );

    let to_db = SocketAddr::new(db.ipv6.into(), 7000);
    let (ok, back) = tb.echo("shop/outsider", to_db, "hello");
    assert!(ok && back == "hello", "permissive must serve plaintext");
    let served = tb.wait_log("node-b", Duration::from_secs(5), |v| {
        access(v, "inbound", to_db)
    });
    assert_eq!(served["fields"]["transport"], "plaintext");
    assert!(served["fields"].get("error").is_none(), "{served}");

    // From an enrolled pod the strict namespace is reached through the tunnel.
    let (ok, back) = tb.echo("shop/client", to_vault, "meshed");
    assert!(ok && back == "meshed");
    // The kubelet's probes, from its own cgroup in the node, are still served in strict
    // mode, over IPv4 and IPv6.
    for ipv6 in [false, true] {
        let (ok, back) = tb.kubelet_probe("node-b", "secure/vault", (7000, ipv6), "probe");
        assert!(
            ok && back == "probe",
            "the kubelet's probe (ipv6: {ipv6}): {back:?}"
        );
    }
    let to_vault6 = SocketAddr::new(vault.ipv6.into(), 7000);
    for dst in [to_vault, to_vault6] {
        // Served: logged as plaintext without an error.
        tb.wait_log("node-b", Duration::from_secs(5), |v| {
            access(v, "inbound", dst)
                && v["fields"]["transport"] == "plaintext"
                && v["fields"]["error"].is_null()
        });
    }

    // The node's own address is no pass: from the node's network namespace but outside
    // the kubelet's cgroup (a host-network pod, a node-local process) plaintext is reset.
    assert_eq!(
        tb.echo_from_node("node-b", to_vault, "ping"),
        "",
        "plaintext from the node outside the kubelet's cgroup"
    );
    // Nor is traffic the node NATs to its own address (NodePort or LoadBalancer with
    // externalTrafficPolicy: Cluster, hairpin): the outsider's plaintext, SNATed by
    // node-b to its address, arrives from the node's address and is reset.
    assert_natted_plaintext_is_refused(&tb, to_vault);
    // Each refusal counted and logged once: the outsider, the node, the NATed outsider.
    let refused_lines = tb
        .log_lines_when(
            "node-b",
            0,
            Duration::from_secs(5),
            |v| access(v, "inbound", to_vault) && !v["fields"]["error"].is_null(),
            |lines| lines.len() >= 3,
        )
        .len();
    assert_eq!(refused_lines, 3);
    let metrics = tb.scrape("node-b");
    assert_eq!(
        support::refusals(&metrics, "secure/vault", "inbound", "strict_plaintext"),
        3,
        "{metrics}"
    );
}

/// How a bad peer tries the tunnel port.
enum Attempt<'a> {
    /// openssl s_client, with this certificate directory (tls.crt, tls.key) or none.
    Tls(Option<&'a Path>),
    /// A shell command in an unenrolled pod.
    Shell(&'a str),
}

/// Certificate directories in `work` for shop/client's identity: one from a rogue CA,
/// one from the mesh's CA but expired.
fn bad_client_certificates(tb: &Testbed, work: &Path) -> (PathBuf, PathBuf) {
    let issue = |ca: &Path, out: &str, extra: &[&str]| {
        let status = Command::new(outrider())
            .args(["ca", "issue", "--ca"])
            .arg(ca)
            .args(["--id", &format!("{TD}/ns/shop/sa/client"), "--out"])
            .arg(work.join(out))
            .args(extra)
            .status()
            .unwrap();
        assert!(status.success());
        work.join(out)
    };
    let rogue_ca = work.join("rogue-ca");
    assert!(
        Command::new(outrider())
            .args(["ca", "init", "--out"])
            .arg(&rogue_ca)
            .status()
            .unwrap()
            .success()
    );
    let rogue = issue(&rogue_ca, "rogue", &[]);
    let expired = issue(
        &tb.state.ca_dir,
        "expired",
        &["--ttl-seconds", "60", "--backdate-seconds", "7200"],
    );
    (rogue, expired)
}

/// The source side refuses a destination whose certificate is not the identity the
/// workload source names: node-a is told that db runs as another service account.
fn assert_wrong_identity_refused_by_the_source(tb: &Testbed) {
    let db = tb.pod("data/db").clone();
    let workloads = tb.node("node-a").agent.clone().unwrap().workloads;
    let text = std::fs::read_to_string(&workloads).unwrap();
    std::fs::write(
        &workloads,
        text.replace("serviceAccount: db", "serviceAccount: impostor"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let dst = SocketAddr::new(db.ipv6.into(), 7000);
    let (ok, back) = tb.echo("shop/client", dst, "to an impostor?");
    assert!(
        !ok || back.is_empty(),
        "a wrong identity must be refused, got {back:?}"
    );
    let line = tb.wait_log("node-a", Duration::from_secs(5), |v| {
        access(v, "outbound", dst)
    });
    let error = line["fields"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("wrong peer identity"), "{line}");
    assert!(
        error.contains("/sa/impostor") && error.contains("/sa/db"),
        "{line}"
    );
}

#[test]
fn bad_peers_are_refused_with_a_clear_log_line_and_others_carry_on() {
    let tb = Testbed::up(&spec(), true);
    let db = tb.pod("data/db").clone();
    let _echo = tb.tcp_server("data/db", 7000, "EXEC:cat");
    let tunnel = format!("{}:15008", db.ipv4);
    let work = tb.dir().join("certs");

    // A long-lived meshed connection that must survive everything below.
    let mut conn = tb.spawn_piped(
        "shop/client",
        &["socat", "STDIO", &format!("TCP4:{}:7000", db.ipv4)],
    );
    let mut stdin = conn.child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(conn.child.stdout.take().unwrap());
    let mut roundtrip = |text: &str| {
        use std::io::{BufRead, Write};
        stdin.write_all(format!("{text}\n").as_bytes()).unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, format!("{text}\n"));
    };
    roundtrip("before");

    let (rogue, expired) = bad_client_certificates(&tb, &work);

    let tls_client = |cert: Option<&Path>| {
        let mut args = vec![
            "openssl".to_string(),
            "s_client".into(),
            "-connect".into(),
            tunnel.clone(),
            "-tls1_3".into(),
            "-alpn".into(),
            "h2".into(),
        ];
        if let Some(dir) = cert {
            args.extend(["-cert".into(), dir.join("tls.crt").display().to_string()]);
            args.extend(["-key".into(), dir.join("tls.key").display().to_string()]);
        }
        let script = format!("echo | timeout 5 {}", args.join(" "));
        tb.sh("shop/outsider", &script)
    };
    let garbage = format!("printf 'garbage\\r\\n\\r\\n' | socat -t2 -T2 STDIO TCP4:{tunnel}");
    let http1 = format!("curl -sS --max-time 3 http://{tunnel}/");
    // (what, how the client tries, what the server's log line must say)
    let cases = [
        (
            "unknown CA",
            Attempt::Tls(Some(&rogue)),
            "not signed by our CA",
        ),
        ("expired", Attempt::Tls(Some(&expired)), "expired"),
        ("no certificate", Attempt::Tls(None), "no certificate"),
        ("garbage", Attempt::Shell(&garbage), "TLS handshake"),
        ("plain HTTP/1", Attempt::Shell(&http1), "TLS handshake"),
    ];
    let cases_tried = cases.len();
    for (what, attempt, expected) in cases {
        let mark = tb.log_mark("node-b");
        match attempt {
            Attempt::Tls(cert) => tls_client(cert),
            Attempt::Shell(script) => tb.sh("shop/outsider", script),
        };
        let line = tb.wait_log_after("node-b", mark, Duration::from_secs(5), |v| {
            v["fields"]["message"] == "tunnel refused"
        });
        let error = line["fields"]["error"].as_str().unwrap_or_default();
        assert!(error.contains(expected), "{what}: {line}");
        roundtrip(what);
    }
    // Each refused handshake is counted once, for the pod it protected.
    let metrics = tb.scrape("node-b");
    assert_eq!(
        support::refusals(&metrics, "data/db", "inbound", "handshake"),
        cases_tried as u64,
        "{metrics}"
    );

    assert_wrong_identity_refused_by_the_source(&tb);
    roundtrip("after");
}

#[test]
fn two_hundred_short_connections_reuse_few_tunnels() {
    let tb = Testbed::up(&spec(), true);
    let db = tb.pod("data/db").clone();
    let _echo = tb.tcp_server("data/db", 7000, "EXEC:cat");
    let script = format!(
        "import socket\n\
         for i in range(200):\n\
         \x20   s = socket.create_connection(('{}', 7000), timeout=5)\n\
         \x20   s.sendall(b'x%d' % i)\n\
         \x20   s.shutdown(socket.SHUT_WR)\n\
         \x20   got = b''\n\
         \x20   while True:\n\
         \x20       d = s.recv(100)\n\
         \x20       if not d: break\n\
         \x20       got += d\n\
         \x20   assert got == b'x%d' % i, got\n\
         \x20   s.close()\n\
         print('ok')",
        db.ipv4
    );
    let out = tb.exec("shop/client", &["python3", "-c", &script]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tunnels = tb
        .agent_log("node-a")
        .iter()
        .filter(|v| v["fields"]["message"] == "tunnel connected")
        .count();
    assert!(
        (1..=2).contains(&tunnels),
        "200 connections used {tunnels} tunnels"
    );
    let carried = tb
        .log_lines_when(
            "node-a",
            0,
            Duration::from_secs(5),
            |v| v["target"] == "access" && v["fields"]["transport"] == "hbone",
            |lines| lines.len() >= 200,
        )
        .len();
    assert_eq!(carried, 200);
}

#[test]
fn the_agent_refuses_to_start_without_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "cgroup: {{attach: /nonexistent}}\nworkloads: {{file: /nonexistent}}\nidentity: {{caDir: {}/missing-ca}}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = Command::new(outrider())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing-ca"), "{stderr}");
}

#[test]
fn certificates_rotate_under_continuous_traffic_without_losing_bytes() {
    let short_lived = format!("{}agent:\n  identity: {{certTtlSeconds: 20}}\n", spec());
    let tb = Testbed::up(&short_lived, true);
    let db = tb.pod("data/db").clone();
    let _echo = tb.tcp_server("data/db", 7000, "EXEC:cat");
    // For 36 s (three renewals at a 10 s half life): one long connection echoing a block
    // every 50 ms, and a new short connection every 250 ms. Every byte must come back.
    let script = format!(
        "import socket, time\n\
         def exact(s, n):\n\
         \x20   got = b''\n\
         \x20   while len(got) < n:\n\
         \x20       d = s.recv(n - len(got))\n\
         \x20       if not d: raise SystemExit('short read after %d bytes' % len(got))\n\
         \x20       got += d\n\
         \x20   return got\n\
         long = socket.create_connection(('{ip}', 7000), timeout=10)\n\
         end = time.time() + 36\n\
         n = short = 0\n\
         next_short = time.time()\n\
         while time.time() < end:\n\
         \x20   block = (b'%08d' % n) * 128\n\
         \x20   long.sendall(block)\n\
         \x20   assert exact(long, len(block)) == block\n\
         \x20   n += 1\n\
         \x20   if time.time() >= next_short:\n\
         \x20       s = socket.create_connection(('{ip}', 7000), timeout=10)\n\
         \x20       data = (b'%06d' % short) * 700\n\
         \x20       s.sendall(data)\n\
         \x20       assert exact(s, len(data)) == data\n\
         \x20       s.close()\n\
         \x20       short += 1\n\
         \x20       next_short += 0.25\n\
         \x20   time.sleep(0.05)\n\
         print(n, short)",
        ip = db.ipv4
    );
    let out = tb.exec("shop/client", &["python3", "-c", &script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts = String::from_utf8_lossy(&out.stdout);
    eprintln!("blocks on the long connection, short connections: {counts}");
    for (node, sa) in [("node-a", "shop/sa/client"), ("node-b", "data/sa/db")] {
        let renewals = tb
            .agent_log(node)
            .iter()
            .filter(|v| {
                v["fields"]["message"] == "certificate renewed"
                    && v["fields"]["identity"] == format!("{TD}/ns/{sa}")
            })
            .count();
        assert!(renewals >= 3, "{node}: {sa} renewed {renewals} times");
    }
}

/// A tunnel to `dst_ip:15008` made by hand from inside `pod`'s network namespace (not
/// its cgroup: nothing steers it), presenting a valid mesh certificate for
/// `ns/shop/sa/client` and expecting `ns/data/sa/db` — what any holder of a mesh
/// certificate can do, sending whatever CONNECTs and headers it likes.
async fn hand_made_tunnel(
    tb: &Testbed,
    pod: &str,
    dst_ip: std::net::IpAddr,
) -> outrider::proxy::hbone::Client {
    use outrider::{config::IdentityConfig, identity::Identity, netns::Netns, proxy::hbone};
    let identity = Identity::from_config(&IdentityConfig {
        ca_dir: tb.state.ca_dir.clone(),
        ..IdentityConfig::default()
    })
    .unwrap();
    let me = identity.workload_id("shop", "client").unwrap();
    identity.manager().ensure(&me);
    identity.manager().ready(&me).await.unwrap();
    let db = identity.workload_id("data", "db").unwrap();
    let config = identity.client_config(&me, &db).unwrap();
    let addr = SocketAddr::new(dst_ip, 15008);
    let netns = Netns::open(&tb.pod(pod).netns).unwrap();
    let tcp = netns
        .tcp_socket(addr, 0)
        .unwrap()
        .connect(addr)
        .await
        .unwrap();
    let server = rustls::pki_types::ServerName::IpAddress(dst_ip.into());
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(server, tcp)
        .await
        .unwrap();
    hbone::handshake(tls, &hbone::Settings::default())
        .await
        .unwrap()
}

/// The status a CONNECT was answered with (200 when the stream opened).
async fn connect_status(
    client: &outrider::proxy::hbone::Client,
    request: &outrider::proxy::hbone::ConnectRequest,
) -> (u16, Option<outrider::proxy::hbone::H2Stream>) {
    match client.connect(request).await {
        Ok(stream) => (200, Some(stream)),
        Err(e) => (
            e.status()
                .map(|s| s.as_u16())
                .unwrap_or_else(|| panic!("{e}")),
            None,
        ),
    }
}

async fn echo_over(stream: &mut outrider::proxy::hbone::H2Stream, text: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut back = vec![0; text.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back))
        .await
        .expect("no echo in 5 s")
        .unwrap();
    String::from_utf8(back).unwrap()
}

/// A policy by which db admits web's IP only; returns once node-b's agent loaded it.
fn admit_only_web_into_db(tb: &Testbed) {
    let web = tb.pod("shop/web").clone();
    let mark = tb.log_mark("node-b");
    std::fs::write(
        tb.state.policy_dir.join("by-ip.yaml"),
        format!(
            "
apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: web-ip-only, namespace: data}}
spec:
  selector: {{matchLabels: {{app: db}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{ipBlocks: ['{}/32']}}}}]
",
            web.ipv4
        ),
    )
    .unwrap();
    tb.wait_log_after("node-b", mark, Duration::from_secs(5), |v| {
        v["fields"]["message"] == "policies loaded"
    });
}

/// node-b's metrics: six reserved ports and one policy refusal for db, and db's
/// connections opened from web, none from vault (whom a `forwarded` header claimed).
fn assert_db_counts_refusals_and_names_web_not_vault(tb: &Testbed) {
    let metrics = tb.scrape("node-b");
    let refusals = |reason| support::refusals(&metrics, "data/db", "inbound", reason);
    assert_eq!(refusals("reserved_port"), 6, "{metrics}");
    assert_eq!(refusals("policy"), 1, "{metrics}");
    let opened: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains(r#"reporter="destination""#)
                && l.contains(r#"destination_workload="db""#)
        })
        .collect();
    assert!(
        opened
            .iter()
            .any(|l| l.contains(r#"source_workload="web""#)),
        "{opened:#?}"
    );
    assert!(
        !opened
            .iter()
            .any(|l| l.contains(r#"source_workload="vault""#)),
        "{opened:#?}"
    );
}

#[test]
fn a_forged_forwarded_header_decides_nothing_and_reserved_ports_are_refused() {
    use outrider::proxy::hbone::ConnectRequest;
    let tb = Testbed::up(&spec(), true);
    let db = tb.pod("data/db").clone();
    let web = tb.pod("shop/web").clone();
    let outsider = tb.pod("shop/outsider").clone();
    let vault = tb.pod("secure/vault").clone();
    let _echo = tb.tcp_server("data/db", 7000, "EXEC:cat");
    let app = SocketAddr::new(db.ipv4.into(), 7000);

    // db admits web's IP only.
    admit_only_web_into_db(&tb);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // The outsider, holding a mesh certificate, claims to be web: denied, and the
        // access line names its real address.
        let mark = tb.log_mark("node-b");
        let forged = hand_made_tunnel(&tb, "shop/outsider", db.ipv4.into()).await;
        let request = ConnectRequest::new(app).with_source(web.ipv4.into());
        let (status, _) = connect_status(&forged, &request).await;
        assert_eq!(
            status, 403,
            "a forged `forwarded` must not pass an ipBlocks rule"
        );
        let line = tb.wait_log_after("node-b", mark, Duration::from_secs(5), |v| {
            access(v, "inbound", app)
        });
        let src: SocketAddr = line["fields"]["src"].as_str().unwrap().parse().unwrap();
        assert_eq!(src.ip(), std::net::IpAddr::from(outsider.ipv4), "{line}");
        assert!(
            line["fields"]["error"]
                .as_str()
                .unwrap_or_default()
                .contains("RBAC: access denied"),
            "{line}"
        );

        // From web's own address the rule admits the tunnel, whatever `forwarded` claims
        // (here: vault), and metrics name web.
        let tunnel = hand_made_tunnel(&tb, "shop/web", db.ipv4.into()).await;
        let claims_vault = ConnectRequest::new(app).with_source(vault.ipv4.into());
        let (status, long) = connect_status(&tunnel, &claims_vault).await;
        assert_eq!(status, 200);
        let mut long = long.unwrap();
        assert_eq!(echo_over(&mut long, "from web\n").await, "from web\n");

        // Every reserved port of db is refused with 503, on the same tunnel as the
        // stream above, which carries on, and a new stream opens after them.
        let reserved = [15001, 15006, 15008, 15020, 15021, 15090];
        for port in reserved {
            let mark = tb.log_mark("node-b");
            let to = SocketAddr::new(db.ipv4.into(), port);
            let (status, _) = connect_status(&tunnel, &ConnectRequest::new(to)).await;
            assert_eq!(status, 503, "CONNECT to {to}");
            let line = tb.wait_log_after("node-b", mark, Duration::from_secs(5), |v| {
                access(v, "inbound", to)
            });
            assert!(
                line["fields"]["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("reserved for the agent"),
                "{line}"
            );
            assert_eq!(
                echo_over(&mut long, &format!("after {port}\n")).await,
                format!("after {port}\n")
            );
        }
        let (status, fresh) = connect_status(&tunnel, &ConnectRequest::new(app)).await;
        assert_eq!(status, 200);
        assert_eq!(echo_over(&mut fresh.unwrap(), "fresh\n").await, "fresh\n");
    });

    assert_db_counts_refusals_and_names_web_not_vault(&tb);
}
