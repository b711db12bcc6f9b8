//! `cargo xtask demo`: two nodes × two pods on a testbed with one agent per node. shop/web
//! serves HTTP; pods on the same and on the other node curl it over IPv4 and IPv6, shop/cart
//! also through the shop/web Service's cluster IPs (its agent resolves them, over mTLS),
//! and data/db (outside the mesh) calls the Service through node-b's kube-proxy-like
//! rules; then each agent's access log shows what it captured.
//! Exits non-zero if any step fails or capture is not what it should be (enrolled pods
//! captured, data/db not).
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{build_tools, root};

struct Demo {
    tools: PathBuf,
    state: PathBuf,
    server: Option<Child>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        eprintln!("xtask: tearing the testbed down");
        let _ = Command::new(&self.tools)
            .args(["testbed", "down", "--state"])
            .arg(&self.state)
            .status();
    }
}

pub fn run() -> anyhow::Result<()> {
    let tools = build_tools()?;
    let work = std::env::temp_dir().join(format!("outrider-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let state = work.join("state");
    let mut demo = Demo {
        tools: tools.clone(),
        state: state.clone(),
        server: None,
    };
    println!("\n== Bringing up 2 nodes × 2 pods, one agent per node");
    let status = Command::new(&tools)
        .args(["testbed", "up", "--agents", "--spec"])
        .arg(root().join("xtask/demo/spec.yaml"))
        .arg("--state")
        .arg(&state)
        .status()?;
    if !status.success() {
        bail!("testbed up failed");
    }
    let testbed: Value = serde_json::from_slice(&std::fs::read(state.join("testbed.json"))?)
        .context("reading testbed.json")?;
    let ip = |pod: &str, family: &str| -> anyhow::Result<String> {
        testbed["pods"]
            .as_array()
            .and_then(|pods| {
                pods.iter().find(|p| {
                    format!(
                        "{}/{}",
                        p["namespace"].as_str().unwrap_or(""),
                        p["name"].as_str().unwrap_or("")
                    ) == pod
                })
            })
            .and_then(|p| p[family].as_str())
            .map(str::to_string)
            .with_context(|| format!("{pod} has no {family} in testbed.json"))
    };

    let site = work.join("site");
    std::fs::create_dir_all(&site)?;
    std::fs::write(site.join("index.html"), "hello from shop/web\n")?;
    println!("\n== shop/web (node-a) serves HTTP on :8080");
    demo.server = Some(
        Command::new(&tools)
            .args(["testbed", "exec", "--state"])
            .arg(&state)
            .args([
                "shop/web",
                "--",
                "python3",
                "-m",
                "http.server",
                "8080",
                "--bind",
                "::",
            ])
            .current_dir(&site)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the HTTP server")?,
    );

    wait_listening(&tools, &state, "shop/web", 8080)?;
    let web4 = ip("shop/web", "ipv4")?;
    let web6 = ip("shop/web", "ipv6")?;
    let (vip4, vip6) = cluster_ips(&testbed, "shop", "web")?;
    println!(
        "\n== The shop/web Service: cluster IPs {vip4} and {vip6}, port 80 → shop/web's `http` (8080)"
    );
    let requests = [
        (
            "shop/client",
            "node-a, same node",
            format!("http://{web4}:8080/"),
        ),
        (
            "shop/client",
            "node-a, same node",
            format!("http://[{web6}]:8080/"),
        ),
        (
            "shop/cart",
            "node-b, other node",
            format!("http://{web4}:8080/"),
        ),
        (
            "shop/cart",
            "node-b, other node",
            format!("http://[{web6}]:8080/"),
        ),
        (
            "data/db",
            "node-b, not enrolled",
            format!("http://{web4}:8080/"),
        ),
    ];
    // In the mesh, the client's agent resolves the cluster IP to shop/web and goes there
    // through the tunnel. Outside the mesh, a Service is reached as in any cluster:
    // node-b's kube-proxy-like rules DNAT the cluster IP to a ready endpoint, shop/web.
    let service_requests = [
        ("shop/cart", "node-b, other node", format!("http://{vip4}/")),
        (
            "shop/cart",
            "node-b, other node",
            format!("http://[{vip6}]/"),
        ),
        ("data/db", "node-b, not enrolled", format!("http://{vip4}/")),
        (
            "data/db",
            "node-b, not enrolled",
            format!("http://[{vip6}]/"),
        ),
    ];
    println!("\n== curl from the other pods (node-b's link to the fabric is being captured)");
    let pcap = work.join("node-b-link.pcap");
    let mut capture = Command::new("nsenter")
        .arg(format!(
            "--net=/run/netns/{}-fabric",
            testbed["prefix"].as_str().unwrap_or("")
        ))
        .args(["tcpdump", "-i", "n2", "-U", "-s", "0", "-w"])
        .arg(&pcap)
        .arg("tcp")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting tcpdump")?;
    std::thread::sleep(Duration::from_millis(700));
    for (pod, where_, url) in &requests {
        let body = curl(&tools, &state, pod, url)?;
        println!("  {pod:<12} ({where_:<20}) GET {url:<32} → {}", body.trim());
    }
    println!("  ... and the shop/web Service by its cluster IPs:");
    for (pod, where_, url) in &service_requests {
        let body = curl(&tools, &state, pod, url)?;
        println!("  {pod:<12} ({where_:<20}) GET {url:<32} → {}", body.trim());
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = capture.kill();
    let _ = capture.wait();

    println!("\n== What each agent logged: one line per connection (for HTTP, bytes are bodies)");
    println!(
        "  {:<7} {:<12} {:<9} {:<10} {:<28} {:<26} {:<38} {:>5} {:>6}  ERROR",
        "NODE",
        "POD",
        "DIRECTION",
        "TRANSPORT",
        "SOURCE",
        "DESTINATION",
        "PEER IDENTITY",
        "SENT",
        "RECVD",
    );
    let mut lines: Vec<(String, Value)> = Vec::new();
    for node in ["node-a", "node-b"] {
        for line in access_lines(&state.join(node).join("agent.log"), "connection")? {
            let f = &line["fields"];
            let outbound = f["direction"] == "outbound";
            let peer = if outbound {
                &f["dst_identity"]
            } else {
                &f["src_identity"]
            };
            println!(
                "  {:<7} {:<12} {:<9} {:<10} {:<28} {:<26} {:<38} {:>5} {:>6}  {}",
                node,
                f["pod"].as_str().unwrap_or("?"),
                f["direction"].as_str().unwrap_or("?"),
                f["transport"].as_str().unwrap_or("?"),
                f["src"].as_str().unwrap_or("?"),
                f["dst"].as_str().unwrap_or("?"),
                match peer.as_str() {
                    Some("") | None => "-",
                    Some(id) => id,
                },
                f["bytes_sent"].as_u64().unwrap_or(0),
                f["bytes_received"].as_u64().unwrap_or(0),
                f["error"].as_str().unwrap_or("-"),
            );
            lines.push((node.to_string(), line));
        }
    }
    println!("\n== ... and one line per HTTP request");
    println!(
        "  {:<7} {:<12} {:<9} {:<7} {:<14} {:>6}  {:<12} {:<12}",
        "NODE", "POD", "DIRECTION", "METHOD", "PATH", "STATUS", "SOURCE", "DESTINATION"
    );
    for node in ["node-a", "node-b"] {
        for line in access_lines(&state.join(node).join("agent.log"), "request")? {
            let f = &line["fields"];
            println!(
                "  {:<7} {:<12} {:<9} {:<7} {:<14} {:>6}  {:<12} {:<12}",
                node,
                f["pod"].as_str().unwrap_or("?"),
                f["direction"].as_str().unwrap_or("?"),
                f["method"].as_str().unwrap_or("?"),
                f["path"].as_str().unwrap_or("?"),
                f["status"].as_u64().unwrap_or(0),
                f["src_workload"].as_str().unwrap_or("?"),
                f["dst_workload"].as_str().unwrap_or("?"),
            );
        }
    }
    let count = |pod: &str, direction: &str, transport: &str| {
        lines
            .iter()
            .filter(|(_, l)| {
                let f = &l["fields"];
                f["pod"] == pod
                    && f["direction"] == direction
                    && f["transport"] == transport
                    && f.get("error").is_none()
            })
            .count()
    };
    if count("shop/client", "outbound", "hbone") != 2
        || count("shop/cart", "outbound", "hbone") != 4
    {
        bail!(
            "expected shop/client to reach shop/web through the tunnel twice, and shop/cart four times (twice through the Service)"
        );
    }
    let through_service = lines
        .iter()
        .filter(|(_, l)| {
            l["fields"]["pod"] == "shop/cart"
                && l["fields"]["dst_service"] == "web.shop.svc.cluster.local"
                && l["fields"]["transport"] == "hbone"
        })
        .count();
    if through_service != 2 {
        bail!("expected shop/cart's two Service connections to be logged with dst_service");
    }
    // data/db's: one to the pod IP, two through the Service.
    if count("shop/web", "inbound", "hbone") != 6 || count("shop/web", "inbound", "plaintext") != 3
    {
        bail!("expected shop/web's agent to receive 6 tunnelled connections and 3 plaintext ones");
    }

    let bytes = std::fs::read(&pcap).context("reading the capture")?;
    let page = b"hello from shop/web";
    let plaintext_hits = bytes.windows(page.len()).filter(|w| w == page).count();
    let tls_records = bytes
        .windows(3)
        .filter(|w| *w == [0x17, 0x03, 0x03])
        .count();
    println!(
        "\n== node-b's link: {} bytes captured; the page's text appears {} time(s) — in the answers to data/db's plaintext requests only; {} TLS record header(s) seen",
        bytes.len(),
        plaintext_hits,
        tls_records
    );
    if plaintext_hits != 3 || tls_records == 0 {
        bail!(
            "expected the page in plaintext exactly 3 times on node-b's link (data/db is not in the mesh: by pod IP, and twice through the Service) and TLS for shop/cart"
        );
    }
    println!(
        "\n== What node-a's agent says through its admin API (outriderctl workloads; services; certs)"
    );
    let ctl = tools.with_file_name("outriderctl");
    let socket = state.join("node-a/admin.sock");
    for args in [&["workloads"][..], &["services"][..], &["certs"][..]] {
        let status = Command::new(&ctl)
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .status()
            .context("running outriderctl")?;
        if !status.success() {
            bail!("outriderctl {} failed", args.join(" "));
        }
    }
    println!(
        "\n== shop/client and shop/cart (IPv4 and IPv6, same and other node; shop/cart also through the\n   shop/web Service's cluster IPs {vip4} and {vip6}, which its agent resolved to shop/web) went\n   through mutual-TLS tunnels with their SPIFFE identities; data/db is not enrolled: its plaintext\n   was served (permissive), by pod IP and through the Service by node-b's kube-proxy rules."
    );
    Ok(())
}

/// The IPv4 and IPv6 cluster IPs of the Service `namespace/name` in testbed.json.
fn cluster_ips(testbed: &Value, namespace: &str, name: &str) -> anyhow::Result<(String, String)> {
    let ips: Vec<&str> = testbed["services"]
        .as_array()
        .and_then(|services| {
            services
                .iter()
                .find(|s| s["namespace"] == namespace && s["name"] == name)
        })
        .and_then(|s| s["clusterIPs"].as_array())
        .map(|ips| ips.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match ips.as_slice() {
        [v4, v6] => Ok((v4.to_string(), v6.to_string())),
        _ => bail!(
            "Service {namespace}/{name} has no IPv4 and IPv6 cluster IP in testbed.json: {ips:?}"
        ),
    }
}

fn curl(tools: &Path, state: &Path, pod: &str, url: &str) -> anyhow::Result<String> {
    let out = Command::new(tools)
        .args(["testbed", "exec", "--state"])
        .arg(state)
        .args([pod, "--", "curl", "-sS", "--max-time", "5", url])
        .output()?;
    if !out.status.success() {
        bail!(
            "{pod}: curl {url}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until something listens on TCP `port` in `pod` (reading /proc/net/tcp6 from
/// inside the pod, whose network namespace it shows).
fn wait_listening(tools: &Path, state: &Path, pod: &str, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let wanted = format!(":{port:04X}");
    loop {
        let out = Command::new(tools)
            .args(["testbed", "exec", "--state"])
            .arg(state)
            .args([pod, "--", "cat", "/proc/net/tcp6"])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        // Columns: sl local_address rem_address st …; st 0A is LISTEN.
        let listening = text.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && cols[1].ends_with(&wanted) && cols[3] == "0A"
        });
        if listening {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on port {port} in {pod} after 10 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The access lines of an agent's log with this `message`: `connection` (one per
/// connection) or `request` (one per HTTP request).
fn access_lines(log: &Path, message: &str) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "access" && v["fields"]["message"] == message)
        .collect())
}
