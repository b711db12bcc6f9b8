//! The benchmark's outputs: `bench.json` (the schema is in the README), `bench.md` (the
//! tables, every figure with its ratio to `direct` of the same run) and the targets the
//! issue set, checked.
use serde_json::{Value, json};

/// A number of a mode's result, by JSON pointer (e.g. `/latency_closed_us/p50`).
fn num(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer).and_then(Value::as_f64)
}

fn mode<'a>(modes: &'a [Value], name: &str) -> Option<&'a Value> {
    modes.iter().find(|m| m["mode"] == name)
}

/// The targets, each with what was measured and whether it is met.
pub fn targets(modes: &[Value], memory: &Value) -> Vec<Value> {
    let direct = mode(modes, "direct");
    let node = mode(modes, "node");
    let mtls = mode(modes, "node-mtls");
    let ratio =
        |m: Option<&Value>, p: &str| -> Option<f64> { Some(num(m?, p)? / num(direct?, p)?) };
    let mut out = Vec::new();
    let mut push = |name: &str,
                    target: &str,
                    measured: Option<f64>,
                    ok: &dyn Fn(f64) -> bool,
                    shown: String| {
        out.push(json!({
            "name": name,
            "target": target,
            "measured": measured,
            "shown": shown,
            "met": measured.is_some_and(ok),
        }));
    };
    let t = ratio(mtls, "/throughput_bytes_per_s");
    push(
        "node-mtls throughput",
        "≥ 0.35× direct",
        t,
        &|x| x >= 0.35,
        t.map_or("-".into(), |x| format!("{x:.2}× direct")),
    );
    let added =
        (|| Some(num(mtls?, "/latency_closed_us/p50")? - num(direct?, "/latency_closed_us/p50")?))(
        );
    push(
        "node-mtls added p50 latency, 1 KiB request/response",
        "≤ 35 µs over direct",
        added,
        &|x| x <= 35.0,
        added.map_or("-".into(), |x| format!("{x:+.1} µs")),
    );
    let t = ratio(node, "/throughput_bytes_per_s");
    push(
        "node (plaintext) throughput",
        "≥ 0.6× direct",
        t,
        &|x| x >= 0.6,
        t.map_or("-".into(), |x| format!("{x:.2}× direct")),
    );
    // What resolving a Service costs: the same path dialed by cluster IP, same run.
    let svc = mode(modes, "node-mtls-svc");
    let of_pod = |p: &str| -> Option<f64> { Some(num(svc?, p)? / num(mtls?, p)?) };
    let p50 = of_pod("/latency_closed_us/p50");
    push(
        "node-mtls through a cluster IP: p50 latency against dialing the pod",
        "≤ 1.05×",
        p50,
        &|x| x <= 1.05,
        p50.map_or("-".into(), |x| format!("{x:.3}×")),
    );
    let conns = of_pod("/connections_per_s");
    push(
        "node-mtls through a cluster IP: new connections/s against dialing the pod",
        "≥ 0.95×",
        conns,
        &|x| x >= 0.95,
        conns.map_or("-".into(), |x| format!("{x:.3}×")),
    );
    let per_pod = memory["node_agent_bytes_per_pod"].as_f64();
    push(
        "agent memory per additional enrolled pod (largest step)",
        "≤ 64 KiB",
        per_pod,
        &|x| x <= 64.0 * 1024.0,
        per_pod.map_or("-".into(), |x| format!("{:.1} KiB", x / 1024.0)),
    );
    let at = |series: &str, pods: u64| -> Option<f64> {
        memory[series]
            .as_array()?
            .iter()
            .find(|p| p["pods"] == pods)?
            .get("rss_bytes")?
            .as_f64()
    };
    let share = (|| Some(at("node", 50)? / at("sidecar", 50)?))();
    push(
        "node mode's memory at 50 pods, against sidecar mode's",
        "≤ 1/10",
        share,
        &|x| x <= 0.1,
        share.map_or("-".into(), |x| format!("1/{:.0}", 1.0 / x)),
    );
    out
}

fn fmt_ratio(x: Option<f64>, base: Option<f64>) -> String {
    match (x, base) {
        (Some(x), Some(b)) if b > 0.0 => format!(" ({:.2}×)", x / b),
        _ => String::new(),
    }
}

fn bytes(b: f64) -> String {
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

/// `x` with `digits` decimals, and its ratio to `base` unless it is `direct`'s own.
fn with_ratio(x: Option<f64>, base: Option<f64>, digits: usize, is_direct: bool) -> String {
    match x {
        Some(x) => format!(
            "{x:.digits$}{}",
            if is_direct {
                String::new()
            } else {
                fmt_ratio(Some(x), base)
            }
        ),
        None => "-".into(),
    }
}

/// HTTP over keep-alive connections, and what a request and a new connection cost.
fn per_op_table(modes: &[Value], direct: Option<&Value>, settings: &Value) -> String {
    let mut md = format!(
        "\nHTTP/1.1 `GET` over {} keep-alive connections, 1 closed loop each, responses of the size above. CPU per request (HTTP) and per new connection (the new-connections load), over the measured window: the proxies' (none for `direct`: no ratio), and the whole host's (clients, servers, proxies and the kernel; in parentheses its ratio to `direct`).\n\n",
        settings["http_connections"]
    );
    md.push_str("| mode | HTTP req/s | HTTP p50 µs | HTTP p99 µs | proxy CPU µs/request | host CPU µs/request | proxy CPU µs/connection | host CPU µs/connection |\n");
    md.push_str("|---|---|---|---|---|---|---|---|\n");
    for m in modes {
        let is_direct = m["mode"] == "direct";
        let cell = |p: &str, digits: usize| {
            with_ratio(num(m, p), direct.and_then(|d| num(d, p)), digits, is_direct)
        };
        let plain = |p: &str| num(m, p).map_or("-".into(), |x| format!("{x:.1}"));
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            m["mode"].as_str().unwrap_or("?"),
            cell("/http_requests_per_s", 0),
            cell("/http_latency_us/p50", 0),
            cell("/http_latency_us/p99", 0),
            plain("/proxy_cpu_us_per_request"),
            cell("/host_cpu_us_per_request", 1),
            plain("/proxy_cpu_us_per_connection"),
            cell("/host_cpu_us_per_connection", 1),
        ));
    }
    md
}

/// The loads whose peak proxy memory is recorded, as (key, column title).
const PEAK_LOADS: [(&str, &str); 5] = [
    ("latency_closed", "request/response"),
    ("latency_fixed", "at fixed rate"),
    ("bulk", "bulk"),
    ("http", "HTTP"),
    ("connect", "new connections"),
];

/// The proxies' peak memory in each load.
fn peak_table(modes: &[Value]) -> String {
    let mut md = String::from(
        "\nPeak RSS of the mode's proxies during each load (their VmHWM summed, reset before the load; a node agent is counted whole, with what it holds for every pod of the testbed):\n\n| mode |",
    );
    for (_, title) in PEAK_LOADS {
        md.push_str(&format!(" {title} |"));
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(PEAK_LOADS.len()));
    md.push('\n');
    for m in modes {
        md.push_str(&format!("| {} |", m["mode"].as_str().unwrap_or("?")));
        for (key, _) in PEAK_LOADS {
            let cell = num(m, &format!("/proxy_peak_rss_bytes/{key}")).map_or("-".into(), bytes);
            md.push_str(&format!(" {cell} |"));
        }
        md.push('\n');
    }
    md
}

/// bench.md.
pub fn markdown(report: &Value) -> String {
    let modes: Vec<Value> = report["modes"].as_array().cloned().unwrap_or_default();
    let direct = mode(&modes, "direct").cloned();
    let d = |p: &str| direct.as_ref().and_then(|m| num(m, p));
    let mut md = String::new();
    let m = &report["machine"];
    md.push_str(&format!(
        "Measured {} on {} ({} CPUs, {} GiB, kernel {}), outrider {} ({}){}.\n\n",
        report["finished"].as_str().unwrap_or("?"),
        m["cpu_model"].as_str().unwrap_or("?"),
        m["cpus"],
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or("?"),
        m["outrider_version"].as_str().unwrap_or("?"),
        m["commit"].as_str().unwrap_or("?"),
        if report["quick"] == true {
            ", --quick"
        } else {
            ""
        },
    ));
    let s = &report["settings"];
    md.push_str(&format!(
        "Each load ran {} s after {} s of warm-up; requests and responses of {} bytes; the fixed rate is {}/s over 4 connections. In parentheses: the ratio to `direct` of the same run.\n\n",
        s["duration_s"], s["warmup_s"], s["size_bytes"], s["rate_per_s"]
    ));
    md.push_str("| mode | p50 µs | p90 µs | p99 µs | p50 µs at fixed rate | p99 µs at fixed rate | throughput Gbit/s | new connections/s | proxy CPU s/GB |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for m in &modes {
        let cell = |p: &str, scale: f64, digits: usize| -> String {
            match num(m, p) {
                Some(x) => format!(
                    "{:.*}{}",
                    digits,
                    x * scale,
                    if m["mode"] == "direct" {
                        String::new()
                    } else {
                        fmt_ratio(Some(x), d(p))
                    }
                ),
                None => "-".into(),
            }
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            m["mode"].as_str().unwrap_or("?"),
            cell("/latency_closed_us/p50", 1.0, 0),
            cell("/latency_closed_us/p90", 1.0, 0),
            cell("/latency_closed_us/p99", 1.0, 0),
            cell("/latency_fixed_us/p50", 1.0, 0),
            cell("/latency_fixed_us/p99", 1.0, 0),
            cell("/throughput_bytes_per_s", 8.0 / 1e9, 2),
            cell("/connections_per_s", 1.0, 0),
            num(m, "/proxy_cpu_s_per_gb").map_or("-".into(), |x| format!("{x:.2}")),
        ));
    }
    md.push_str(&per_op_table(&modes, direct.as_ref(), &report["settings"]));
    md.push_str(&peak_table(&modes));
    let mem = &report["memory"];
    md.push_str("\n| enrolled pods | node agent RSS | sidecars' RSS (sum) | node / sidecar | node agent PSS | sidecars' PSS (sum) |\n|---|---|---|---|---|---|\n");
    let sidecar = mem["sidecar"].as_array().cloned().unwrap_or_default();
    for p in mem["node"].as_array().cloned().unwrap_or_default() {
        let pods = p["pods"].as_u64().unwrap_or(0);
        if pods == 0 {
            continue;
        }
        let sc = sidecar.iter().find(|s| s["pods"] == pods);
        let n = p["rss_bytes"].as_f64().unwrap_or(0.0);
        let s = sc.and_then(|s| s["rss_bytes"].as_f64()).unwrap_or(0.0);
        md.push_str(&format!(
            "| {pods} | {} | {} | {} | {} | {} |\n",
            bytes(n),
            bytes(s),
            if s > 0.0 {
                format!("{:.3}", n / s)
            } else {
                "-".into()
            },
            p["pss_bytes"].as_f64().map_or("-".into(), bytes),
            sc.and_then(|s| s["pss_bytes"].as_f64())
                .map_or("-".into(), bytes),
        ));
    }
    md.push_str(&format!(
        "\nThe node agent idle with no pod enrolled: {}; with the sidecars (it signs their certificates and streams them the mesh): {}.\n",
        mem["node"][0]["rss_bytes"].as_f64().map_or("-".into(), bytes),
        mem["node_agent_rss_bytes_with_sidecars"].as_f64().map_or("-".into(), bytes),
    ));
    md.push_str("\n| target | wanted | measured | met |\n|---|---|---|---|\n");
    for t in report["targets"].as_array().cloned().unwrap_or_default() {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            t["name"].as_str().unwrap_or("?"),
            t["target"].as_str().unwrap_or("?"),
            t["shown"].as_str().unwrap_or("-"),
            if t["met"] == true { "yes" } else { "**no**" }
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cells of `table_head`'s table row for `mode`.
    fn row(md: &str, table_head: &str, mode: &str) -> Vec<String> {
        let table = md
            .split_once(table_head)
            .unwrap_or_else(|| panic!("no table {table_head} in\n{md}"))
            .1;
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("| {mode} |")))
            .unwrap_or_else(|| panic!("no row {mode} in\n{table}"));
        super::super::table_cells(line)
    }

    #[test]
    fn http_cpu_per_op_and_peak_memory_are_tabled_against_direct() {
        let report = json!({
            "settings": {"http_connections": 16},
            "modes": [
                {"mode": "direct", "http_requests_per_s": 20000.0,
                 "http_latency_us": {"p50": 500.0, "p99": 900.0},
                 "proxy_cpu_us_per_request": null, "host_cpu_us_per_request": 50.0,
                 "proxy_cpu_us_per_connection": null, "host_cpu_us_per_connection": 150.0,
                 "proxy_peak_rss_bytes": {"latency_closed": null, "http": null}},
                {"mode": "node-mtls", "http_requests_per_s": 5000.0,
                 "http_latency_us": {"p50": 2000.0, "p99": 4500.0},
                 "proxy_cpu_us_per_request": 120.5, "host_cpu_us_per_request": 175.0,
                 "proxy_cpu_us_per_connection": 400.0, "host_cpu_us_per_connection": 600.0,
                 "proxy_peak_rss_bytes": {"latency_closed": 40.0 * 1048576.0, "http": 42.5 * 1048576.0}},
            ],
        });
        let md = markdown(&report);
        assert!(md.contains("over 16 keep-alive connections"), "{md}");
        let head = "| mode | HTTP req/s";
        assert_eq!(
            row(&md, head, "direct"),
            ["20000", "500", "900", "-", "50.0", "-", "150.0"]
        );
        assert_eq!(
            row(&md, head, "node-mtls"),
            [
                "5000 (0.25×)",
                "2000 (4.00×)",
                "4500 (5.00×)",
                "120.5",
                "175.0 (3.50×)",
                "400.0",
                "600.0 (4.00×)"
            ]
        );
        let head = "| mode | request/response |";
        assert_eq!(row(&md, head, "direct"), ["-", "-", "-", "-", "-"]);
        assert_eq!(
            row(&md, head, "node-mtls"),
            ["40.0 MiB", "-", "-", "42.5 MiB", "-"]
        );
    }
}
