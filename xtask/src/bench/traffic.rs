//! The traffic half of the benchmark: one testbed with a client pod per mode on node-a
//! and a server pod per mode on node-b, and our load generator (`outrider-testbed loadgen`) on
//! both ends. Every mode is measured in the same run, one after the other for each kind
//! of load, so that the machine's drift affects them alike:
//!
//! | mode | client (node-a) | server (node-b) | path |
//! |---|---|---|---|
//! | `direct` | not meshed | not meshed | the network only |
//! | `node` | node mode | not meshed | node-a's agent, plaintext |
//! | `node-mtls` | node mode | node mode | both agents, mutual-TLS tunnel |
//! | `node-mtls-svc` | node mode | node mode | as `node-mtls`, dialed by the server's Service cluster IP |
//! | `sidecar` | sidecar | not meshed | the client's sidecar, plaintext |
//! | `sidecar-mtls` | sidecar | sidecar | both sidecars, mutual-TLS tunnel |
//!
//! Each mode has a client pod of its own: connections one mode leaves in TIME_WAIT (tens
//! of thousands after the new-connections load) must not weigh on the next.
//!
//! Loads, in this order, each over every mode: request/response (closed loop, then at a
//! fixed rate), bulk, HTTP/1.1 over keep-alive connections, new connections. Over each
//! load's measured window (the load generator marks its start and end on stderr) the
//! proxies' CPU and the host's are read; the proxies' peak RSS (VmHWM, reset before the
//! load) covers the whole load.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::Stdio,
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{Settings, procfs, testbed::Bed};

const SPEC: &str = "# cargo xtask bench: clients on node-a, servers on node-b
nodes:
  - name: node-a
    pods:
      - {namespace: bench, name: c-direct, enrolled: false}
      - {namespace: bench, name: c-node, serviceAccount: client}
      - {namespace: bench, name: c-node-mtls, serviceAccount: client}
      - {namespace: bench, name: c-node-svc, serviceAccount: client}
      - {namespace: bench, name: c-sidecar, serviceAccount: client, mode: sidecar}
      - {namespace: bench, name: c-sidecar-mtls, serviceAccount: client, mode: sidecar}
  - name: node-b
    pods:
      - {namespace: bench, name: s-direct, enrolled: false}
      - {namespace: bench, name: s-node, serviceAccount: server}
      - {namespace: bench, name: s-sidecar, serviceAccount: server, mode: sidecar}
services:
  - {namespace: bench, name: server, selector: {app: s-node}, ports: [{port: 9000}]}
";

const PORT: u16 = 9000;

/// A mode: its name, client pod, server pod, and whose CPU is the proxy's.
struct Mode {
    name: &'static str,
    client: &'static str,
    server: &'static str,
    /// Dialed through this Service's cluster IP rather than the server pod's IP.
    service: Option<&'static str>,
}

const MODES: [Mode; 6] = [
    Mode {
        name: "direct",
        client: "bench/c-direct",
        server: "bench/s-direct",
        service: None,
    },
    Mode {
        name: "node",
        client: "bench/c-node",
        server: "bench/s-direct",
        service: None,
    },
    Mode {
        name: "node-mtls",
        client: "bench/c-node-mtls",
        server: "bench/s-node",
        service: None,
    },
    Mode {
        name: "node-mtls-svc",
        client: "bench/c-node-svc",
        server: "bench/s-node",
        service: Some("bench/server"),
    },
    Mode {
        name: "sidecar",
        client: "bench/c-sidecar",
        server: "bench/s-direct",
        service: None,
    },
    Mode {
        name: "sidecar-mtls",
        client: "bench/c-sidecar-mtls",
        server: "bench/s-sidecar",
        service: None,
    },
];

/// The processes that proxy a mode's traffic (their CPU is the proxy's cost).
fn proxies(bed: &Bed, mode: &Mode) -> anyhow::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for pod in [mode.client, mode.server] {
        if let Some(pid) = bed.sidecar_pid(pod)? {
            pids.push(pid);
        }
    }
    if mode.client.contains("-node") {
        pids.push(bed.agent_pid("node-a")?);
    }
    if mode.server.ends_with("-node") {
        pids.push(bed.agent_pid("node-b")?);
    }
    Ok(pids)
}

fn cpu_of(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().map(|p| procfs::cpu_seconds(*p)).sum()
}

/// The lines the load generator prints on stderr as its measured window starts and ends
/// (`--window-marks`; the testbed crate's `loadgen::WINDOW_START` and `WINDOW_END`).
const WINDOW_START: &str = "loadgen: measured window starts";
const WINDOW_END: &str = "loadgen: measured window ends";

/// What one load cost: CPU over the load generator's measured window (the proxies', and
/// the whole host's), and the proxies' peak memory over the whole run.
struct Usage {
    /// Whether the path has proxies at all (`direct` has none).
    proxied: bool,
    proxy_cpu_s: f64,
    host_cpu_s: f64,
    /// Summed VmHWM of the proxies, reset before the run; `None` without proxies.
    proxy_peak_rss_bytes: Option<u64>,
}

impl Usage {
    /// CPU microseconds per operation (a request, a connection), proxies' and host's;
    /// the proxies' is `null` without proxies.
    fn per_op_us(&self, ops: f64) -> (Value, Value) {
        if ops <= 0.0 {
            return (Value::Null, Value::Null);
        }
        let proxy = if self.proxied {
            json!(self.proxy_cpu_s * 1e6 / ops)
        } else {
            Value::Null
        };
        (proxy, json!(self.host_cpu_s * 1e6 / ops))
    }
}

/// Runs the load generator's client in `mode`'s client pod; its JSON report, and what
/// the proxies and the host used while it measured.
fn client(
    bed: &Bed,
    mode: &Mode,
    settings: &Settings,
    extra: &[&str],
) -> anyhow::Result<(Value, Usage)> {
    let ip = match mode.service {
        Some(service) => bed.service_ipv4(service)?,
        None => bed.ipv4(mode.server)?,
    };
    let target = format!("{ip}:{PORT}");
    let duration = settings.duration_s.to_string();
    let warmup = settings.warmup_s.to_string();
    let mut args = vec![
        bed.tools
            .to_str()
            .context("the outrider path is not UTF-8")?,
        "loadgen",
        "client",
        "--target",
        &target,
        "--duration",
        &duration,
        "--warmup",
        &warmup,
        "--json",
        "--window-marks",
    ];
    args.extend(extra);
    let pids = proxies(bed, mode)?;
    for pid in &pids {
        procfs::reset_peak_rss(*pid).with_context(|| format!("{}: proxy {pid}", mode.name))?;
    }
    let mut child = bed
        .exec(mode.client, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{}: starting loadgen client {extra:?}", mode.name))?;
    let stderr = child.stderr.take().context("the client's stderr")?;
    // Sampled at the marks; the rest of stderr is kept for the error message.
    let mut at_start = None;
    let mut at_end = None;
    let mut said = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.with_context(|| format!("{}: reading the client's stderr", mode.name))?;
        if line == WINDOW_START {
            at_start = Some((cpu_of(&pids)?, procfs::host_busy_seconds()?));
        } else if line == WINDOW_END {
            at_end = Some((cpu_of(&pids)?, procfs::host_busy_seconds()?));
        } else {
            said.push_str(&line);
            said.push('\n');
        }
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("{}: waiting for loadgen client {extra:?}", mode.name))?;
    if !out.status.success() {
        bail!(
            "{}: loadgen client {extra:?} failed: {}",
            mode.name,
            said.trim()
        );
    }
    let report: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{}: the load generator's report: {}",
            mode.name,
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    let (Some(start), Some(end)) = (at_start, at_end) else {
        bail!(
            "{}: loadgen client {extra:?} never marked its measured window: {}",
            mode.name,
            said.trim()
        );
    };
    let peak = pids
        .iter()
        .map(|p| procfs::peak_rss_bytes(*p))
        .sum::<anyhow::Result<u64>>()?;
    let usage = Usage {
        proxied: !pids.is_empty(),
        proxy_cpu_s: end.0 - start.0,
        host_cpu_s: end.1 - start.1,
        proxy_peak_rss_bytes: (!pids.is_empty()).then_some(peak),
    };
    let errors = report["errors"].as_u64().unwrap_or(0);
    if errors > 0 {
        eprintln!("xtask: bench: {}: {extra:?}: {errors} errors", mode.name);
    }
    Ok((report, usage))
}

fn latency(report: &Value) -> Value {
    let l = &report["latency_us"];
    json!({"p50": l["p50"], "p90": l["p90"], "p99": l["p99"]})
}

/// Measures every mode; one JSON object per mode, in [`MODES`] order.
pub fn measure(tools: &Path, settings: &Settings, work: &Path) -> anyhow::Result<Vec<Value>> {
    let mut bed = Bed::up(tools, SPEC, &work.join("traffic"))?;
    let exe = tools.to_str().context("the outrider path is not UTF-8")?;
    let listen = format!("0.0.0.0:{PORT}");
    for server in ["bench/s-direct", "bench/s-node", "bench/s-sidecar"] {
        bed.spawn(server, &[exe, "loadgen", "server", "--listen", &listen])?;
    }
    for server in ["bench/s-direct", "bench/s-node", "bench/s-sidecar"] {
        bed.wait_listening(server, PORT)?;
    }
    let mut results: Vec<Value> = MODES.iter().map(|m| json!({"mode": m.name})).collect();
    let rate = settings.rate_per_s.to_string();
    let size = settings.size_bytes.to_string();
    for (i, mode) in MODES.iter().enumerate() {
        eprintln!("xtask: bench: {}: request/response, closed loop", mode.name);
        let (r, usage) = client(&bed, mode, settings, &["--mode", "rr", "--size", &size])?;
        results[i]["latency_closed_us"] = latency(&r);
        peak(&mut results[i], "latency_closed", &usage);
        results[i]["requests_per_s_closed"] = r["requests_per_s"].clone();
        results[i]["errors"] = json!(r["errors"].as_u64().unwrap_or(0));
    }
    for (i, mode) in MODES.iter().enumerate() {
        eprintln!("xtask: bench: {}: request/response at {rate}/s", mode.name);
        let (r, usage) = client(
            &bed,
            mode,
            settings,
            &[
                "--mode",
                "rr",
                "--size",
                &size,
                "--rate",
                &rate,
                "--connections",
                "4",
            ],
        )?;
        results[i]["latency_fixed_us"] = latency(&r);
        peak(&mut results[i], "latency_fixed", &usage);
        add_errors(&mut results[i], &r);
    }
    for (i, mode) in MODES.iter().enumerate() {
        eprintln!("xtask: bench: {}: bulk", mode.name);
        let (r, usage) = client(&bed, mode, settings, &["--mode", "bulk"])?;
        let bytes = r["bytes"].as_f64().unwrap_or(0.0);
        results[i]["throughput_bytes_per_s"] = r["throughput_bytes_per_s"].clone();
        results[i]["proxy_cpu_s_per_gb"] = if !usage.proxied || bytes <= 0.0 {
            Value::Null
        } else {
            json!(usage.proxy_cpu_s / (bytes / 1e9))
        };
        peak(&mut results[i], "bulk", &usage);
        add_errors(&mut results[i], &r);
    }
    let http_connections = settings.http_connections.to_string();
    for (i, mode) in MODES.iter().enumerate() {
        eprintln!(
            "xtask: bench: {}: HTTP/1.1 over {http_connections} keep-alive connections",
            mode.name
        );
        let (r, usage) = client(
            &bed,
            mode,
            settings,
            &[
                "--mode",
                "http",
                "--size",
                &size,
                "--connections",
                &http_connections,
            ],
        )?;
        results[i]["http_requests_per_s"] = r["requests_per_s"].clone();
        results[i]["http_latency_us"] = latency(&r);
        let requests = r["requests"].as_f64().unwrap_or(0.0);
        let (proxy, host) = usage.per_op_us(requests);
        results[i]["proxy_cpu_us_per_request"] = proxy;
        results[i]["host_cpu_us_per_request"] = host;
        peak(&mut results[i], "http", &usage);
        add_errors(&mut results[i], &r);
    }
    for (i, mode) in MODES.iter().enumerate() {
        eprintln!("xtask: bench: {}: new connections", mode.name);
        let (r, usage) = client(
            &bed,
            mode,
            settings,
            &["--mode", "connect", "--size", &size],
        )?;
        results[i]["connections_per_s"] = r["requests_per_s"].clone();
        let connections = r["requests"].as_f64().unwrap_or(0.0);
        let (proxy, host) = usage.per_op_us(connections);
        results[i]["proxy_cpu_us_per_connection"] = proxy;
        results[i]["host_cpu_us_per_connection"] = host;
        peak(&mut results[i], "connect", &usage);
        add_errors(&mut results[i], &r);
    }
    Ok(results)
}

/// Records a load's peak proxy memory under `proxy_peak_rss_bytes.<load>` (`null`
/// without proxies).
fn peak(result: &mut Value, load: &str, usage: &Usage) {
    result["proxy_peak_rss_bytes"][load] = json!(usage.proxy_peak_rss_bytes);
}

fn add_errors(result: &mut Value, report: &Value) {
    let total = result["errors"].as_u64().unwrap_or(0) + report["errors"].as_u64().unwrap_or(0);
    result["errors"] = json!(total);
}
