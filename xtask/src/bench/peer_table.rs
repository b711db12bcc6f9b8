//! peer.md: Outrider against ztunnel from one run of the peer harness
//! (`../shared/bench/peer_bench.py`), as ratios of the same run, figure by figure: mTLS
//! (`outrider-mtls` against `ztunnel-hbone`) and plaintext (`outrider-tcp` against
//! `ztunnel-tcp`). Pure: it reads the harness's JSON (outside input: anything may be
//! missing, and a missing figure is a `-`) and writes markdown.
use anyhow::Context;
use serde_json::Value;

/// Outrider's path and ztunnel's that do the same job.
pub struct Pair {
    pub title: &'static str,
    pub outrider: &'static str,
    pub ztunnel: &'static str,
}

pub const PAIRS: [Pair; 2] = [
    Pair {
        title: "mTLS",
        outrider: "outrider-mtls",
        ztunnel: "ztunnel-hbone",
    },
    Pair {
        title: "plaintext",
        outrider: "outrider-tcp",
        ztunnel: "ztunnel-tcp",
    },
];

/// Every path the run needs.
pub const PATHS: [&str; 5] = [
    "direct",
    "ztunnel-hbone",
    "ztunnel-tcp",
    "outrider-mtls",
    "outrider-tcp",
];

/// Which number of a summary entry a figure is.
#[derive(Clone, Copy)]
enum Stat {
    /// The median over rounds.
    Median,
    /// The largest over rounds (peak memory).
    Max,
    /// The median less `direct`'s of the same run.
    AddedVsDirect,
}

struct Figure {
    title: String,
    /// The key in the harness's `summary.<path>`.
    key: String,
    stat: Stat,
    /// Whether more is better (rates) or less (CPU, latency, memory).
    higher_is_better: bool,
    digits: usize,
}

fn figures() -> Vec<Figure> {
    let fig = |title: &str, key: &str, stat, higher_is_better, digits| Figure {
        title: title.to_string(),
        key: key.to_string(),
        stat,
        higher_is_better,
        digits,
    };
    let mut all = vec![
        fig(
            "HTTP req/s (1 KiB, keep-alive)",
            "http_rps",
            Stat::Median,
            true,
            0,
        ),
        fig(
            "proxy CPU µs per HTTP request",
            "http.proxy_cpu_per_op_us",
            Stat::Median,
            false,
            1,
        ),
        fig("new connections/s", "conn_rps", Stat::Median, true, 0),
        fig(
            "proxy CPU µs per new connection",
            "conn.proxy_cpu_per_op_us",
            Stat::Median,
            false,
            1,
        ),
        fig(
            "added p50 round trip over direct, µs",
            "lat_p50_us",
            Stat::AddedVsDirect,
            false,
            1,
        ),
        fig(
            "throughput, 1 stream, Gbit/s",
            "tput1_gbps",
            Stat::Median,
            true,
            2,
        ),
        fig(
            "throughput, 4 streams, Gbit/s",
            "tput4_gbps",
            Stat::Median,
            true,
            2,
        ),
    ];
    for (test, name) in [
        ("latency", "round trips"),
        ("tput1", "1 stream"),
        ("tput4", "4 streams"),
        ("http", "HTTP"),
        ("conn", "new connections"),
    ] {
        all.push(fig(
            &format!("proxies' peak RSS, MiB: {name}"),
            &format!("{test}.proxy_peak_rss_mib"),
            Stat::Max,
            false,
            1,
        ));
    }
    all
}

/// A figure of a path in the run, if the run has it.
fn value(summary: &Value, path: &str, figure: &Figure) -> Option<f64> {
    let entry = summary.get(path)?.get(&figure.key)?;
    let field = match figure.stat {
        Stat::Median => "median",
        Stat::Max => "max",
        Stat::AddedVsDirect => "added_vs_direct",
    };
    entry.get(field)?.as_f64().filter(|x| x.is_finite())
}

/// Outrider's figure over ztunnel's. For an added latency both must be above zero: a
/// path no slower than direct has no ratio.
fn ratio(outrider: Option<f64>, ztunnel: Option<f64>) -> Option<f64> {
    match (outrider?, ztunnel?) {
        (o, z) if o > 0.0 && z > 0.0 => Some(o / z),
        _ => None,
    }
}

/// ztunnel's build as the harness saw it: the version in its start-up log (its commit),
/// and the binary's SHA-256 prefix.
pub fn ztunnel_build(run: &Value) -> Option<String> {
    let tools = &run["meta"]["tools"];
    let version = tools["ztunnel_version"]
        .as_str()
        .filter(|v| !v.is_empty())?;
    Some(match tools["ztunnel_sha256_prefix"].as_str() {
        Some(sha) => format!("{version} (binary sha256 {sha}…)"),
        None => version.to_string(),
    })
}

/// The version in ztunnel's banner (`version.BuildInfo{Version:"<commit>", …}`), which
/// it prints whatever its arguments.
pub fn ztunnel_banner_version(text: &str) -> Option<String> {
    let rest = text.split_once("Version:\"")?.1;
    let version = rest.split_once('"')?.0;
    (!version.is_empty()).then(|| version.to_string())
}

/// The commits compared, as shown in the heading.
pub struct Builds<'a> {
    pub outrider: &'a str,
    pub ztunnel: &'a str,
}

/// peer.md from the harness's JSON.
pub fn markdown(run: &Value, builds: &Builds) -> anyhow::Result<String> {
    let summary = run
        .get("summary")
        .filter(|s| s.is_object())
        .context("the peer harness's JSON has no summary object")?;
    let meta = &run["meta"];
    let args = &meta["args"];
    let host = &meta["host"];
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "?".to_string(),
        other => other.to_string(),
    };
    let mut md = String::from("# Outrider against ztunnel, one peer-harness run\n\n");
    md.push_str(&format!(
        "Outrider {} against ztunnel {}. Run {} to {} on {} ({} CPUs, kernel {}), {} rounds × {} s, CPU layout {}.\n\n",
        builds.outrider,
        builds.ztunnel,
        text(&meta["started"]),
        text(&meta["finished"]),
        text(&host["cpu_model"]),
        text(&host["nproc"]),
        text(&host["kernel"]),
        text(&args["rounds"]),
        text(&args["duration"]),
        text(&args["cpu_layout"]),
    ));
    md.push_str(
        "Medians over rounds (peak RSS: the largest over rounds of the proxies' summed VmHWM, reset before each test). Ratio: Outrider's figure over ztunnel's, from the same run; ↑ more is better, ↓ less is better. The harness's own tables (every path, ratios to `direct`, spreads, host CPU) are in the markdown beside this file.\n\n",
    );
    md.push_str("| figure |");
    for pair in &PAIRS {
        md.push_str(&format!(
            " {} | {} | Outrider / ztunnel, {} |",
            pair.ztunnel, pair.outrider, pair.title
        ));
    }
    md.push('\n');
    md.push_str("|---|");
    md.push_str(&"---|---|---|".repeat(PAIRS.len()));
    md.push('\n');
    for figure in figures() {
        let cells: Vec<(Option<f64>, Option<f64>)> = PAIRS
            .iter()
            .map(|p| {
                (
                    value(summary, p.ztunnel, &figure),
                    value(summary, p.outrider, &figure),
                )
            })
            .collect();
        if cells.iter().all(|(z, o)| z.is_none() && o.is_none()) {
            continue; // a test the run left out
        }
        let arrow = if figure.higher_is_better {
            "↑"
        } else {
            "↓"
        };
        md.push_str(&format!("| {} {arrow} |", figure.title));
        let shown =
            |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.*}", figure.digits));
        for (z, o) in cells {
            md.push_str(&format!(
                " {} | {} | {} |",
                shown(z),
                shown(o),
                ratio(o, z).map_or("-".to_string(), |r| format!("{r:.2}×"))
            ));
        }
        md.push('\n');
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run() -> Value {
        json!({
            "meta": {
                "started": "2026-12-06T00:31:42+0000",
                "finished": "2026-12-06T00:47:05+0000",
                "host": {"cpu_model": "AMD EPYC", "nproc": 2, "kernel": "6.18"},
                "tools": {"ztunnel_version": "62d8265-dirty", "ztunnel_sha256_prefix": "d39f26cb"},
                "args": {"rounds": 3, "duration": 5, "cpu_layout": "split"}
            },
            "summary": {
                "direct": {"http_rps": {"median": 35000.0}, "lat_p50_us": {"median": 26.0, "added_vs_direct": 0.0}},
                "ztunnel-hbone": {
                    "http_rps": {"median": 12000.0},
                    "http.proxy_cpu_per_op_us": {"median": 80.0},
                    "lat_p50_us": {"median": 126.0, "added_vs_direct": 100.0},
                    "http.proxy_peak_rss_mib": {"max": 50.0}
                },
                "outrider-mtls": {
                    "http_rps": {"median": 9000.0},
                    "http.proxy_cpu_per_op_us": {"median": 120.0},
                    "lat_p50_us": {"median": 106.0, "added_vs_direct": 80.0},
                    "http.proxy_peak_rss_mib": {"max": 40.0}
                },
                "ztunnel-tcp": {"http_rps": {"median": 20000.0}, "http.proxy_cpu_per_op_us": {"median": "n/a"}},
                "outrider-tcp": {"http_rps": {"median": 15000.0}}
            }
        })
    }

    /// The cells of the row whose title starts with `title`.
    fn row(md: &str, title: &str) -> Vec<String> {
        let line = md
            .lines()
            .find(|l| l.starts_with(&format!("| {title}")))
            .unwrap_or_else(|| panic!("no row {title} in\n{md}"));
        super::super::table_cells(line)
    }

    #[test]
    fn each_figure_is_outrider_over_ztunnel_of_the_same_run() {
        let builds = Builds {
            outrider: "abc1234",
            ztunnel: "62d8265-dirty",
        };
        let md = markdown(&run(), &builds).unwrap();
        assert!(
            md.contains("Outrider abc1234 against ztunnel 62d8265-dirty."),
            "{md}"
        );
        assert!(md.contains("3 rounds × 5 s"), "{md}");
        assert_eq!(
            row(&md, "HTTP req/s"),
            ["12000", "9000", "0.75×", "20000", "15000", "0.75×"]
        );
        assert_eq!(
            row(&md, "proxy CPU µs per HTTP request"),
            ["80.0", "120.0", "1.50×", "-", "-", "-"]
        );
        // Added latency over direct, not the raw round trip.
        assert_eq!(
            row(&md, "added p50 round trip"),
            ["100.0", "80.0", "0.80×", "-", "-", "-"]
        );
        assert_eq!(
            row(&md, "proxies' peak RSS, MiB: HTTP"),
            ["50.0", "40.0", "0.80×", "-", "-", "-"]
        );
        // Tests the run left out have no row.
        assert!(!md.contains("new connections/s"), "{md}");
        assert!(!md.contains("peak RSS, MiB: 1 stream"), "{md}");
    }

    #[test]
    fn a_run_without_a_summary_is_an_error() {
        let builds = Builds {
            outrider: "a",
            ztunnel: "b",
        };
        let err = markdown(&json!({"meta": {}}), &builds).unwrap_err();
        assert!(err.to_string().contains("no summary"), "{err}");
        assert!(markdown(&json!({"summary": []}), &builds).is_err());
    }

    #[test]
    fn ztunnel_build_comes_from_the_run_or_the_banner() {
        assert_eq!(
            ztunnel_build(&run()).as_deref(),
            Some("62d8265-dirty (binary sha256 d39f26cb…)")
        );
        assert_eq!(ztunnel_build(&json!({"meta": {"tools": {}}})), None);
        let banner = "unknown command: --version\n\nIstio Ztunnel (version.BuildInfo{Version:\"62d826530e5c-dirty\", GitRevision:\"62d826530e5c-dirty\", RustVersion:\"1.95.0\"})";
        assert_eq!(
            ztunnel_banner_version(banner).as_deref(),
            Some("62d826530e5c-dirty")
        );
        assert_eq!(ztunnel_banner_version("no banner"), None);
        assert_eq!(ztunnel_banner_version("Version:\"\""), None);
    }
}
