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
use std::path::Path;

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

/// Runs the load generator's client in `mode`'s client pod; its JSON report.
fn client(bed: &Bed, mode: &Mode, settings: &Settings, extra: &[&str]) -> anyhow::Result<Value> {
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
    ];
    args.extend(extra);
    let out = bed.exec(mode.client, &args).output()?;
    if !out.status.success() {
        bail!(
            "{}: loadgen client {extra:?} failed: {}",
            mode.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let report: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{}: the load generator's report: {}",
            mode.name,
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    let errors = report["errors"].as_u64().unwrap_or(0);
    if errors > 0 {
        eprintln!("xtask: bench: {}: {extra:?}: {errors} errors", mode.name);
    }
    Ok(report)
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
        let r = client(&bed, mode, settings, &["--mode", "rr", "--size", &size])?;
        results[i]["latency_closed_us"] = latency(&r);
        results[i]["requests_per_s_closed"] = r["requests_per_s"].clone();
        results[i]["errors"] = json!(r["errors"].as_u64().unwrap_or(0));
    }
    for (i, mode) in MODES.iter().enumerate() {
        eprintln!("xtask: bench: {}: request/response at {rate}/s", mode.name);
        let r = client(
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
        add_errors(&mut results[i], &r);
    }
    for (i, mode) in MODES.iter().enumerate() {
        eprintln!("xtask: bench: {}: bulk", mode.name);
        let pids = proxies(&bed, mode)?;
        let before = cpu_of(&pids)?;
        let r = client(&bed, mode, settings, &["--mode", "bulk"])?;
        let cpu = cpu_of(&pids)? - before;
        let bytes = r["bytes"].as_f64().unwrap_or(0.0);
        results[i]["throughput_bytes_per_s"] = r["throughput_bytes_per_s"].clone();
        results[i]["proxy_cpu_s_per_gb"] = if pids.is_empty() || bytes <= 0.0 {
            Value::Null
        } else {
            json!(cpu / (bytes / 1e9))
        };
        add_errors(&mut results[i], &r);
    }
    for (i, mode) in MODES.iter().enumerate() {
        eprintln!("xtask: bench: {}: new connections", mode.name);
        let r = client(
            &bed,
            mode,
            settings,
            &["--mode", "connect", "--size", &size],
        )?;
        results[i]["connections_per_s"] = r["requests_per_s"].clone();
        add_errors(&mut results[i], &r);
    }
    Ok(results)
}

fn add_errors(result: &mut Value, report: &Value) {
    let total = result["errors"].as_u64().unwrap_or(0) + report["errors"].as_u64().unwrap_or(0);
    result["errors"] = json!(total);
}
