//! `cargo xtask bench [--quick] [--out DIR]`: both models side by side on the testbed, in
//! one run — `direct` (not meshed), `node` (captured, plaintext), `node-mtls` (the
//! cross-node tunnel), `sidecar`, `sidecar-mtls` — under our own load generator
//! (`traffic`), and what N pods cost in memory in each model (`memory`). Writes
//! `DIR/bench.json`, `DIR/bench.md` (`report`) and `DIR/bench.svg` (`svg`); every figure
//! is also given as a ratio to `direct` of the same run, never against a fixed number.
//!
//! `cargo xtask bench --ztunnel PATH` runs the peer harness instead, Outrider against
//! ztunnel (`peer`, `peer_table`, `sides`).
mod memory;
mod peer;
mod peer_table;
pub mod procfs;
mod report;
mod sides;
mod svg;
pub mod testbed;
mod traffic;

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::{build_tools, root};

pub use peer::{PeerOptions, run as run_peer};

/// How long and how hard each measurement runs.
pub struct Settings {
    pub duration_s: u64,
    pub warmup_s: u64,
    pub rate_per_s: u64,
    pub size_bytes: u64,
    /// Keep-alive connections of the HTTP load (as the peer harness's `wrk -c16`).
    pub http_connections: usize,
    pub memory_steps: Vec<usize>,
}

impl Settings {
    fn new(quick: bool) -> Self {
        Settings {
            duration_s: if quick { 2 } else { 10 },
            warmup_s: 1,
            rate_per_s: 1000,
            size_bytes: 1024,
            http_connections: 16,
            memory_steps: vec![1, 10, 50, 200],
        }
    }
}

pub fn run(quick: bool, out: Option<PathBuf>) -> anyhow::Result<()> {
    let tools = build_tools()?;
    // Measured from here: the build is cargo's business.
    let started = Instant::now();
    let ctl = tools.with_file_name("outriderctl");
    let out = out.unwrap_or_else(|| root().join("target/bench"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let work = std::env::temp_dir().join(format!("outrider-bench-{}", std::process::id()));
    let settings = Settings::new(quick);
    let result = (|| -> anyhow::Result<Value> {
        let modes = traffic::measure(&tools, &settings, &work)?;
        let memory = memory::measure(&tools, &ctl, &settings, &work)?;
        let targets = report::targets(&modes, &memory);
        Ok(json!({
            "schema": "outrider-bench/1",
            "quick": quick,
            "finished": now(),
            "elapsed_s": started.elapsed().as_secs_f64(),
            "machine": machine(),
            "settings": {
                "duration_s": settings.duration_s,
                "warmup_s": settings.warmup_s,
                "rate_per_s": settings.rate_per_s,
                "size_bytes": settings.size_bytes,
                "http_connections": settings.http_connections,
                "memory_steps": settings.memory_steps,
            },
            "modes": modes,
            "memory": memory,
            "targets": targets,
        }))
    })();
    let _ = std::fs::remove_dir_all(&work);
    let report = result?;
    let json_path = out.join("bench.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
    let md = report::markdown(&report);
    std::fs::write(out.join("bench.md"), &md)?;
    std::fs::write(out.join("bench.svg"), svg::render(&report))?;
    println!("{md}");
    eprintln!(
        "xtask: bench: done in {:.0} s; wrote {}/bench.{{json,md,svg}}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

fn now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The machine the figures come from.
fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_default();
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem_kb: f64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    json!({
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "cpu_model": cpu_model,
        "cpus": cpus,
        "memory_gib": (mem_kb / 1024.0 / 1024.0).round(),
        "outrider_version": env!("CARGO_PKG_VERSION"),
        "commit": commit(),
    })
}

/// The workspace's commit (`git describe --always --dirty`), empty if git cannot say.
fn commit() -> String {
    Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(root())
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The cells of a markdown table row after its first (the row's title), for tests of
/// the tables this module writes.
#[cfg(test)]
fn table_cells(line: &str) -> Vec<String> {
    line.split('|')
        .map(|c| c.trim().to_string())
        .skip(2)
        .filter(|c| !c.is_empty())
        .collect()
}
