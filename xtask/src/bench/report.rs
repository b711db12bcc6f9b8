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
