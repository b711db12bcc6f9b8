//! bench.svg: two panels drawn as plain SVG (no plotting crate: the xtask must build fast
//! on a fresh machine). Left, each mode relative to `direct` of the same run: throughput,
//! new connections per second, and p50 latency (closed loop). Right, memory against the
//! number of pods: the node agent, and the sidecars summed.
use serde_json::Value;

const W: f64 = 980.0;
const H: f64 = 420.0;
const COLORS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#d62728", "#2ca02c"];

fn text(x: f64, y: f64, size: u32, anchor: &str, s: &str) -> String {
    let s = s.replace('&', "&amp;").replace('<', "&lt;");
    format!(
        "<text x=\"{x:.1}\" y=\"{y:.1}\" font-size=\"{size}\" text-anchor=\"{anchor}\" font-family=\"sans-serif\">{s}</text>\n"
    )
}

pub fn render(report: &Value) -> String {
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    svg.push_str(&ratios(report, 60.0, 50.0, 420.0, 300.0));
    svg.push_str(&memory(report, 580.0, 50.0, 360.0, 300.0));
    svg.push_str("</svg>\n");
    svg
}

/// Grouped bars: per mode, four ratios to direct.
fn ratios(report: &Value, x0: f64, y0: f64, w: f64, h: f64) -> String {
    let modes: Vec<Value> = report["modes"].as_array().cloned().unwrap_or_default();
    let direct = modes.iter().find(|m| m["mode"] == "direct").cloned();
    let series = [
        ("throughput", "/throughput_bytes_per_s"),
        ("new connections/s", "/connections_per_s"),
        ("HTTP req/s", "/http_requests_per_s"),
        ("p50 latency", "/latency_closed_us/p50"),
    ];
    let ratio = |m: &Value, p: &str| -> f64 {
        let base = direct
            .as_ref()
            .and_then(|d| d.pointer(p))
            .and_then(Value::as_f64);
        match (m.pointer(p).and_then(Value::as_f64), base) {
            (Some(x), Some(b)) if b > 0.0 => x / b,
            _ => 0.0,
        }
    };
    let top = modes
        .iter()
        .flat_map(|m| series.iter().map(move |(_, p)| (m, *p)))
        .map(|(m, p)| ratio(m, p))
        .fold(1.0f64, f64::max)
        .ceil();
    let mut s = text(
        x0 + w / 2.0,
        y0 - 20.0,
        15,
        "middle",
        "Relative to direct (same run)",
    );
    s.push_str(&axis(x0, y0, w, h, top, |v| format!("{v:.2}×")));
    let group = w / modes.len().max(1) as f64;
    let bar = group / (series.len() + 1) as f64;
    for (i, m) in modes.iter().enumerate() {
        let gx = x0 + i as f64 * group;
        for (k, (_, p)) in series.iter().enumerate() {
            let v = ratio(m, p);
            let bh = h * v / top;
            s.push_str(&format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>\n",
                gx + bar * (k as f64 + 0.5),
                y0 + h - bh,
                bar * 0.9,
                bh,
                COLORS[k]
            ));
        }
        s.push_str(&text(
            gx + group / 2.0,
            y0 + h + 16.0,
            11,
            "middle",
            m["mode"].as_str().unwrap_or("?"),
        ));
    }
    // 1× line.
    let y1 = y0 + h - h / top;
    s.push_str(&format!(
        "<line x1=\"{x0}\" y1=\"{y1:.1}\" x2=\"{:.1}\" y2=\"{y1:.1}\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>\n",
        x0 + w
    ));
    s.push_str(&legend(x0, y0 + h + 36.0, &series.map(|(n, _)| n)));
    s
}

/// Lines: memory (MiB) against pods.
fn memory(report: &Value, x0: f64, y0: f64, w: f64, h: f64) -> String {
    let points = |series: &str| -> Vec<(f64, f64)> {
        report["memory"][series]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| {
                        Some((
                            p["pods"].as_f64()?,
                            p["rss_bytes"].as_f64()? / (1024.0 * 1024.0),
                        ))
                    })
                    .filter(|(pods, _)| *pods > 0.0)
                    .collect()
            })
            .unwrap_or_default()
    };
    let node = points("node");
    let sidecar = points("sidecar");
    let max_x = node.iter().chain(&sidecar).map(|p| p.0).fold(1.0, f64::max);
    let max_y = node
        .iter()
        .chain(&sidecar)
        .map(|p| p.1)
        .fold(1.0, f64::max)
        .ceil();
    let mut s = text(
        x0 + w / 2.0,
        y0 - 20.0,
        15,
        "middle",
        "Memory (RSS, MiB) against pods",
    );
    s.push_str(&axis(x0, y0, w, h, max_y, |v| format!("{v:.0}")));
    for (k, line) in [&node, &sidecar].into_iter().enumerate() {
        let path: Vec<String> = line
            .iter()
            .map(|(px, py)| format!("{:.1},{:.1}", x0 + w * px / max_x, y0 + h - h * py / max_y))
            .collect();
        s.push_str(&format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>\n",
            path.join(" "),
            COLORS[k]
        ));
        for (px, py) in line {
            s.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>\n",
                x0 + w * px / max_x,
                y0 + h - h * py / max_y,
                COLORS[k]
            ));
        }
    }
    for (px, _) in &node {
        s.push_str(&text(
            x0 + w * px / max_x,
            y0 + h + 16.0,
            11,
            "middle",
            &format!("{px:.0}"),
        ));
    }
    s.push_str(&legend(
        x0,
        y0 + h + 36.0,
        &["node agent", "sidecars (sum)"],
    ));
    s
}

fn axis(x0: f64, y0: f64, w: f64, h: f64, top: f64, label: impl Fn(f64) -> String) -> String {
    let mut s = format!(
        "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{:.1}\" stroke=\"black\"/>\n<line x1=\"{x0}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>\n",
        y0 + h,
        y0 + h,
        x0 + w,
        y0 + h
    );
    for i in 0..=4 {
        let v = top * i as f64 / 4.0;
        let y = y0 + h - h * i as f64 / 4.0;
        s.push_str(&text(x0 - 6.0, y + 4.0, 11, "end", &label(v)));
        s.push_str(&format!(
            "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\n",
            x0 + w
        ));
    }
    s
}

fn legend(x0: f64, y: f64, names: &[&str]) -> String {
    let mut s = String::new();
    let mut x = x0;
    for (k, name) in names.iter().enumerate() {
        s.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/>\n",
            y - 10.0,
            COLORS[k]
        ));
        s.push_str(&text(x + 16.0, y, 12, "start", name));
        x += 30.0 + 7.0 * name.len() as f64;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_mode_and_both_memory_lines() {
        let report = serde_json::json!({
            "modes": [
                {"mode": "direct", "throughput_bytes_per_s": 1e9, "connections_per_s": 1000.0, "http_requests_per_s": 9000.0, "latency_closed_us": {"p50": 50.0}},
                {"mode": "node-mtls", "throughput_bytes_per_s": 5e8, "connections_per_s": 400.0, "http_requests_per_s": 3000.0, "latency_closed_us": {"p50": 80.0}},
            ],
            "memory": {
                "node": [{"pods": 0, "rss_bytes": 10e6}, {"pods": 1, "rss_bytes": 11e6}, {"pods": 10, "rss_bytes": 12e6}],
                "sidecar": [{"pods": 1, "rss_bytes": 9e6}, {"pods": 10, "rss_bytes": 90e6}],
            }
        });
        let svg = render(&report);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains(">direct</text>") && svg.contains(">node-mtls</text>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        // direct's four bars and node-mtls's four, and the legends' swatches.
        assert_eq!(svg.matches("<rect x=").count(), 8 + 4 + 2);
        assert!(svg.contains(">HTTP req/s</text>"));
        // node-mtls's HTTP bar: a third of direct's (the axis tops at 2×).
        assert!(svg.contains("height=\"50.0\" fill=\"#d62728\""), "{svg}");
    }
}
