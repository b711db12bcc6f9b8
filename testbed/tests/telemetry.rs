//! End-to-end: what the agents report — Istio's standard metrics from both reporters
//! with the bytes the workloads really moved (in Istio's direction: received is client →
//! server, sent is server → client; HTTP heads included; both series from the
//! connection's opening), HTTP requests by status code, a server-first protocol working
//! through capture, and an exposition that promtool accepts.
mod support;

use std::{
    collections::BTreeMap,
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use support::{Testbed, specs};

/// The two-node testbed with shop/web beside db on node-b; its agents write a line per
/// HTTP request too (off by default).
fn spec() -> String {
    format!(
        "{}agent:\n  telemetry: {{accessLog: {{requests: true}}}}\n",
        specs::client_and_db(&[], &[specs::meshed("shop/web")])
    )
}

const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/client";

/// The value of the sample `name{…}` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.rsplit_once("} ")?;
        let parsed: BTreeMap<&str, &str> = set
            .split("\",")
            .filter_map(|kv| kv.split_once("=\""))
            .map(|(k, v)| (k, v.trim_end_matches('"')))
            .collect();
        labels
            .iter()
            .all(|(k, v)| parsed.get(k) == Some(v))
            .then(|| value.trim().parse().ok())?
    })
}

fn wait_sample(tb: &Testbed, node: &str, name: &str, labels: &[(&str, &str)], want: f64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = tb.scrape(node);
        if sample(&text, name, labels) == Some(want) {
            return text;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "{node}: {name}{labels:?} is {:?}, want {want}\n{text}",
                sample(&text, name, labels)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The kernel's per-pod counters saw the `n` bytes shop/client sent leave its
/// interface: at least `n`, and less than 10% more.
fn assert_kernel_counted_client_sent(tb: &Testbed, n: u64) {
    let pod = [("namespace", "shop"), ("pod", "client")];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let kernel = loop {
        let text = tb.scrape("node-a");
        match sample(&text, "outrider_pod_sent_bytes_total", &pod) {
            Some(v) if v >= n as f64 => break v,
            other if std::time::Instant::now() > deadline => {
                panic!("outrider_pod_sent_bytes_total is {other:?}, want >= {n}\n{text}")
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert!(
        kernel < n as f64 * 1.1,
        "kernel counted {kernel} for {n} bytes of payload"
    );
}

/// iperf3 from shop/client to data/db (IPv6), a control connection and a data one: its
/// client reports what it sent and what the server read; the server may close before
/// reading all that crossed, and bytes the agent wrote into the app's socket buffer
/// count as moved, so node-b's count (`destination` labels) lies between the two.
fn assert_iperf3_bytes_counted_by_the_destination(tb: &Testbed, destination: &[(&str, &str)]) {
    let db = tb.pod("data/db").clone();
    let mut iperf = tb.spawn("data/db", &["iperf3", "-s", "-p", "5201"]);
    tb.wait_server_listening(&mut iperf, "data/db", 5201);
    let before = sample(
        &tb.scrape("node-b"),
        "istio_tcp_received_bytes_total",
        destination,
    )
    .unwrap();
    let out = tb.exec(
        "shop/client",
        &[
            "iperf3",
            "-c",
            &db.ipv6.to_string(),
            "-p",
            "5201",
            "-n",
            "20M",
            "-J",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sent = report["end"]["sum_sent"]["bytes"].as_f64().unwrap();
    let received = report["end"]["sum_received"]["bytes"].as_f64().unwrap();
    assert_eq!(sent, 20.0 * 1024.0 * 1024.0, "{report}");
    std::thread::sleep(Duration::from_millis(500));
    let counted = sample(
        &tb.scrape("node-b"),
        "istio_tcp_received_bytes_total",
        destination,
    )
    .unwrap()
        - before;
    // The control connection adds a few hundred bytes of JSON.
    assert!(
        counted >= received && counted <= sent + 4096.0,
        "iperf3 sent {sent} and the server read {received}; the destination counted {counted}"
    );
}

#[test]
fn tcp_metrics_count_the_bytes_moved_from_both_reporters() {
    let tb = Testbed::up(&spec(), true);
    let db = tb.pod("data/db").clone();
    let mut sink = tb.spawn(
        "data/db",
        &[
            "socat",
            "-u",
            "TCP6-LISTEN:7000,reuseaddr,ipv6only=0",
            "OPEN:/dev/null",
        ],
    );
    tb.wait_server_listening(&mut sink, "data/db", 7000);
    const N: u64 = 3_000_000;
    let out = tb.sh(
        "shop/client",
        &format!(
            "head -c {N} /dev/zero | socat -u STDIN TCP4:{}:7000",
            db.ipv4
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let source = [
        ("reporter", "source"),
        ("source_workload", "client"),
        ("source_workload_namespace", "shop"),
        ("source_principal", CLIENT),
        ("destination_workload", "db"),
        ("destination_workload_namespace", "data"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/data/sa/db",
        ),
        ("request_protocol", "tcp"),
        ("connection_security_policy", "mutual_tls"),
    ];
    let text = wait_sample(
        &tb,
        "node-a",
        "istio_tcp_received_bytes_total",
        &source,
        N as f64,
    );
    assert_eq!(
        sample(&text, "istio_tcp_connections_opened_total", &source),
        Some(1.0)
    );
    let destination = {
        let mut d = source;
        d[0] = ("reporter", "destination");
        d
    };
    let text = wait_sample(
        &tb,
        "node-b",
        "istio_tcp_received_bytes_total",
        &destination,
        N as f64,
    );
    assert_eq!(
        sample(&text, "istio_tcp_connections_closed_total", &destination),
        Some(1.0)
    );

    // The kernel's per-pod counters saw the same bytes leave the client pod's interface
    // (inside TLS records and TCP/IP headers: a little more, never less).
    assert_kernel_counted_client_sent(&tb, N);

    assert_iperf3_bytes_counted_by_the_destination(&tb, &destination);
}

/// An HTTP/1.1 server on raw sockets (`port` `download-size`): `GET` gets that many
/// bytes, anything else its body read and `ok`; one request per connection. For each it
/// prints the bytes it read and wrote on its socket, heads included.
const WIRE_SERVER: &str = r#"
import socket, sys
port, down = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", port))
s.listen(16)
while True:
    c, _ = s.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    read = len(data)
    while len(body) < length:
        chunk = c.recv(65536)
        if not chunk:
            break
        body += chunk
        read += len(chunk)
    payload = b"x" * down if head.startswith(b"GET") else b"ok"
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(payload) + payload
    c.sendall(response)
    c.shutdown(socket.SHUT_WR)
    while True:
        chunk = c.recv(65536)
        if not chunk:
            break
        read += len(chunk)
    c.close()
    print(read, len(response), flush=True)
"#;

/// `curl` in `pod`: (request bytes on its socket, response bytes on its socket), heads
/// included, as curl reports them.
fn curl_wire(tb: &Testbed, pod: &str, args: &[&str]) -> (f64, f64) {
    let mut argv = vec![
        "curl",
        "-sS",
        "--max-time",
        "20",
        "-o",
        "/dev/null",
        "-w",
        "%{size_request} %{size_upload} %{size_header} %{size_download}",
    ];
    argv.extend_from_slice(args);
    let out = tb.exec(pod, &argv);
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sizes: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(sizes.len(), 4, "{sizes:?}");
    (sizes[0] + sizes[1], sizes[2] + sizes[3])
}

const RECEIVED: &str = "istio_tcp_received_bytes_total";
const SENT: &str = "istio_tcp_sent_bytes_total";

/// The labels of shop/client's meshed TCP series to `workload` from `reporter`.
fn byte_labels<'a>(reporter: &'a str, workload: &'a str) -> [(&'a str, &'a str); 5] {
    [
        ("reporter", reporter),
        ("source_workload", "client"),
        ("destination_workload", workload),
        ("request_protocol", "tcp"),
        ("connection_security_policy", "mutual_tls"),
    ]
}

/// A connection from shop/client to shop/web that has not moved a byte yet has both
/// byte series, at zero, on both reporters.
fn assert_a_silent_connection_has_both_series_at_zero(tb: &Testbed) {
    let web = tb.pod("shop/web").clone();
    let mut silent_server = tb.spawn(
        "shop/web",
        &[
            "socat",
            "-u",
            "TCP6-LISTEN:7002,reuseaddr,ipv6only=0",
            "OPEN:/dev/null",
        ],
    );
    tb.wait_server_listening(&mut silent_server, "shop/web", 7002);
    let script = format!(
        "import socket, time\ns = socket.create_connection(('{}', 7002))\ntime.sleep(30)",
        web.ipv4
    );
    let silent_client = tb.spawn("shop/client", &["python3", "-c", &script]);
    for (node, reporter) in [("node-a", "source"), ("node-b", "destination")] {
        let l = byte_labels(reporter, "web");
        let text = wait_sample(tb, node, "istio_tcp_connections_opened_total", &l, 1.0);
        assert_eq!(sample(&text, RECEIVED, &l), Some(0.0), "{node}:\n{text}");
        assert_eq!(sample(&text, SENT, &l), Some(0.0), "{node}:\n{text}");
    }
    drop(silent_client);
}

/// Plain TCP from shop/client to data/db: a known-size upload and a known-size download
/// (sizes differ, so a swap shows); received is client → server, sent server → client.
fn assert_tcp_bytes_counted_in_istios_direction(tb: &Testbed) {
    let db = tb.pod("data/db").clone();
    const TCP_UP: u64 = 1_000_000;
    const TCP_DOWN: u64 = 700_000;
    let payload = tb.dir().join("download.bin");
    std::fs::write(&payload, vec![b'd'; TCP_DOWN as usize]).unwrap();
    let mut sink = tb.spawn(
        "data/db",
        &[
            "socat",
            "-u",
            "TCP6-LISTEN:7000,reuseaddr,ipv6only=0",
            "OPEN:/dev/null",
        ],
    );
    let source_file = format!("OPEN:{}", payload.display());
    let mut source = tb.spawn(
        "data/db",
        &[
            "socat",
            "-u",
            &source_file,
            "TCP6-LISTEN:7001,reuseaddr,ipv6only=0",
        ],
    );
    tb.wait_server_listening(&mut sink, "data/db", 7000);
    tb.wait_server_listening(&mut source, "data/db", 7001);
    let out = tb.sh(
        "shop/client",
        &format!(
            "head -c {TCP_UP} /dev/zero | socat -u STDIN TCP4:{ip}:7000 && \
             socat -u TCP4:{ip}:7001 STDOUT | wc -c",
            ip = db.ipv4
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        TCP_DOWN.to_string()
    );
    for (node, reporter) in [("node-a", "source"), ("node-b", "destination")] {
        let l = byte_labels(reporter, "db");
        let text = wait_sample(tb, node, "istio_tcp_connections_closed_total", &l, 2.0);
        assert_eq!(
            sample(&text, RECEIVED, &l),
            Some(TCP_UP as f64),
            "{node}: received is client → server\n{text}"
        );
        assert_eq!(
            sample(&text, SENT, &l),
            Some(TCP_DOWN as f64),
            "{node}: sent is server → client\n{text}"
        );
    }
}

/// What a [`WIRE_SERVER`] read and wrote on its sockets over its first `requests`
/// requests (it prints a line each), summed.
fn wire_server_totals(server: &mut support::Background, requests: usize) -> (f64, f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        server.assert_running();
        let lines: Vec<(f64, f64)> = server
            .output()
            .lines()
            .filter_map(|l| {
                let (r, w) = l.split_once(' ')?;
                Some((r.parse().ok()?, w.parse().ok()?))
            })
            .collect();
        if lines.len() == requests {
            return lines
                .iter()
                .fold((0.0, 0.0), |(r, w), (lr, lw)| (r + lr, w + lw));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server: {}",
            server.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// HTTP from shop/client to shop/web: a known-size upload (POST) and download (GET). The
/// source counts what the client's socket carried (as curl reports it), the destination
/// what the server's did (as the server reports it): heads included either way. Three
/// connections closed by then, the silent one of
/// [`assert_a_silent_connection_has_both_series_at_zero`] included.
fn assert_http_bytes_counted_with_their_heads(tb: &Testbed) {
    let web = tb.pod("shop/web").clone();
    const HTTP_UP: u64 = 1_000_000;
    const HTTP_DOWN: u64 = 700_000;
    let mut server = tb.spawn(
        "shop/web",
        &["python3", "-c", WIRE_SERVER, "8080", &HTTP_DOWN.to_string()],
    );
    tb.wait_server_listening(&mut server, "shop/web", 8080);
    let upload = tb.dir().join("upload.bin");
    std::fs::write(&upload, vec![b'u'; HTTP_UP as usize]).unwrap();
    let data = format!("@{}", upload.display());
    let base = format!("http://{}:8080", web.ipv4);
    let up = curl_wire(
        tb,
        "shop/client",
        &[
            "-H",
            "Expect:",
            "--data-binary",
            &data,
            &format!("{base}/upload"),
        ],
    );
    let down = curl_wire(tb, "shop/client", &[&format!("{base}/download")]);
    let client_wire = (up.0 + down.0, up.1 + down.1);
    assert!(
        client_wire.0 > HTTP_UP as f64 && client_wire.1 > HTTP_DOWN as f64,
        "{client_wire:?}"
    );
    let server_wire = wire_server_totals(&mut server, 2);
    for (node, reporter, wire) in [
        ("node-a", "source", client_wire),
        ("node-b", "destination", server_wire),
    ] {
        let l = byte_labels(reporter, "web");
        // The silent connection and the two requests' connections.
        let text = wait_sample(tb, node, "istio_tcp_connections_closed_total", &l, 3.0);
        assert_eq!(
            (sample(&text, RECEIVED, &l), sample(&text, SENT, &l)),
            (Some(wire.0), Some(wire.1)),
            "{node}: (received, sent) must be the app socket's (client → server, server → \
             client) bytes, heads included\n{text}"
        );
        // The request metrics keep Istio's body sizes.
        let ok = [("reporter", reporter), ("destination_workload", "web")];
        assert_eq!(
            sample(&text, "istio_request_bytes_sum", &ok),
            Some(HTTP_UP as f64),
            "{node}"
        );
        assert_eq!(
            sample(&text, "istio_response_bytes_sum", &ok),
            Some(HTTP_DOWN as f64 + 2.0),
            "{node}"
        );
    }
}

#[test]
fn byte_counters_have_istios_direction_count_http_heads_and_exist_from_the_opening() {
    let tb = Testbed::up(&spec(), true);
    // Presence: a connection that has not moved a byte yet has both series, at zero, on
    // both reporters.
    assert_a_silent_connection_has_both_series_at_zero(&tb);

    // Plain TCP: a known-size upload and a known-size download (sizes differ, so a swap
    // shows).
    assert_tcp_bytes_counted_in_istios_direction(&tb);

    // HTTP: a known-size upload (POST) and download (GET). The source counts what the
    // client's socket carried (as curl reports it), the destination what the server's
    // did (as the server reports it): heads included either way.
    assert_http_bytes_counted_with_their_heads(&tb);
}

#[test]
fn http_requests_are_counted_by_status_code_from_both_reporters() {
    let tb = Testbed::up(&spec(), true);
    let web = tb.pod("shop/web").clone();
    let site = tb.dir().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("page.html"), vec![b'x'; 12_345]).unwrap();
    let _http = tb.http_server("shop/web", 8080, &site);
    let base = format!("http://{}:8080", web.ipv4);
    let out = tb.exec(
        "shop/client",
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\n",
            &format!("{base}/page.html"),
            &format!("{base}/page.html"),
            &format!("{base}/missing"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200\n200\n404\n");
    for (node, reporter) in [("node-a", "source"), ("node-b", "destination")] {
        let ok = [
            ("reporter", reporter),
            ("destination_workload", "web"),
            ("response_code", "200"),
            ("request_protocol", "http"),
        ];
        let text = wait_sample(&tb, node, "istio_requests_total", &ok, 2.0);
        let missing = [
            ("reporter", reporter),
            ("destination_workload", "web"),
            ("response_code", "404"),
        ];
        assert_eq!(
            sample(&text, "istio_requests_total", &missing),
            Some(1.0),
            "{node}"
        );
        assert_eq!(
            sample(&text, "istio_response_bytes_sum", &ok),
            Some(2.0 * 12_345.0),
            "{node}"
        );
        assert_eq!(
            sample(&text, "istio_request_duration_milliseconds_count", &ok),
            Some(2.0)
        );
    }
    // One access line per request at the destination, with method, path and status.
    let line = tb.wait_log("node-b", Duration::from_secs(5), |v| {
        v["fields"]["message"] == "request" && v["fields"]["path"] == "/missing"
    });
    assert_eq!(line["fields"]["status"], 404);
    assert_eq!(line["fields"]["method"], "GET");
    assert_eq!(line["fields"]["src_workload"], "client");
    assert_eq!(line["fields"]["src_identity"], CLIENT);
}

#[test]
fn a_server_first_protocol_works_through_capture() {
    let tb = Testbed::up(&spec(), true);
    let db = tb.pod("data/db").clone();
    // The server speaks first (as SMTP, MySQL do), then echoes.
    let mut server = tb.spawn(
        "data/db",
        &[
            "socat",
            "TCP6-LISTEN:2525,fork,reuseaddr,ipv6only=0",
            "SYSTEM:echo 220 ready; cat",
        ],
    );
    tb.wait_server_listening(&mut server, "data/db", 2525);
    let script = format!(
        "import socket, time\n\
         s = socket.create_connection(('{}', 2525), timeout=5)\n\
         t = time.monotonic()\n\
         banner = s.recv(100)\n\
         waited = time.monotonic() - t\n\
         s.sendall(b'HELO x\\n')\n\
         echo = s.recv(100)\n\
         print(banner.decode().strip(), '|', echo.decode().strip(), '|', round(waited * 1000))",
        db.ipv4
    );
    let out = tb.exec("shop/client", &["python3", "-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout);
    let parts: Vec<&str> = text.trim().split(" | ").collect();
    assert_eq!(
        parts[..2],
        ["220 ready", "HELO x"],
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let waited: u64 = parts[2].parse().unwrap();
    assert!(
        waited < 80,
        "the banner waited {waited} ms for protocol detection"
    );
}

#[test]
fn the_exposition_passes_promtool() {
    let tb = Testbed::up(&spec(), true);
    let db = tb.pod("data/db").clone();
    let mut sink = tb.spawn(
        "data/db",
        &[
            "socat",
            "-u",
            "TCP6-LISTEN:7000,fork,reuseaddr,ipv6only=0",
            "OPEN:/dev/null",
        ],
    );
    tb.wait_server_listening(&mut sink, "data/db", 7000);
    let out = tb.sh(
        "shop/client",
        &format!("echo hello | socat -u STDIN TCP4:{}:7000", db.ipv4),
    );
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(300));
    for node in ["node-a", "node-b"] {
        let text = tb.scrape(node);
        assert!(
            text.contains("istio_tcp_connections_opened_total{"),
            "{text}"
        );
        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus; cargo xtask setup installs it)");
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let result = promtool.wait_with_output().unwrap();
        assert!(
            result.status.success(),
            "{node}: promtool: {}{}",
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
    }
}

/// Allows `data`'s pods to a principal that is not the client's: the client is denied
/// by the destination's agent (an ALLOW is not compiled into the source's kernel, as an
/// L4 DENY would be, which refuses the `connect()` before any agent sees it).
const ONLY_OTHERS: &str = "
apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: only-others, namespace: data}
spec:
  rules:
  - from: [{source: {principals: ['cluster.local/ns/other/sa/nobody']}}]
";

/// A failed connection is closed with Istio's response flag, by both reporters: one to a
/// port nothing listens on is `CONNECT`, one a policy denies is `DENY` (the destination
/// refused it; the source was refused its tunnel stream with 403). Opened series keep `-`.
#[test]
fn failed_connections_are_closed_with_istios_response_flags() {
    let tb = Testbed::up(&spec(), true);
    let db = tb.pod("data/db").clone();
    let _server = tb.tcp_server("data/db", 7000, "EXEC:cat");
    let closed = |reporter, flag| {
        [
            ("reporter", reporter),
            ("destination_workload", "db"),
            ("response_flags", flag),
        ]
    };
    let to = |port| std::net::SocketAddr::from((db.ipv4, port));
    let _ = tb.echo("shop/client", to(7001), "nobody listens");
    let name = "istio_tcp_connections_closed_total";
    wait_sample(&tb, "node-a", name, &closed("source", "CONNECT"), 1.0);
    wait_sample(&tb, "node-b", name, &closed("destination", "CONNECT"), 1.0);
    let (ok, echoed) = tb.echo("shop/client", to(7000), "allowed");
    assert!(ok && echoed == "allowed", "{echoed}");
    let file = tb.dir().join("only-others.yaml");
    std::fs::write(&file, ONLY_OTHERS).unwrap();
    tb.ctl_ok(
        "node-b",
        &["policies", "apply", "-f", &file.display().to_string()],
    );
    let _ = tb.echo("shop/client", to(7000), "denied");
    wait_sample(&tb, "node-b", name, &closed("destination", "DENY"), 1.0);
    let text = wait_sample(&tb, "node-a", name, &closed("source", "DENY"), 1.0);
    // The connection that went well closed with `-`; every opening is counted with `-`.
    assert_eq!(
        sample(&text, name, &closed("source", "-")),
        Some(1.0),
        "{text}"
    );
    let opened = [("reporter", "source"), ("destination_workload", "db")];
    let opened_total = sample(&text, "istio_tcp_connections_opened_total", &opened);
    assert_eq!(opened_total, Some(3.0), "{text}");
}
