//! The memory half of the benchmark: what N pods cost in each model, for N in the
//! settings' steps (1, 10, 50, 200).
//!
//! - Node mode: one node agent, N of its pods enrolled. The pods start unenrolled and are
//!   enrolled step by step (`testbed enroll`), the agent's RSS read once its admin API
//!   reports them all enrolled and it has settled.
//! - Sidecar mode: N pods each with its own sidecar (all started with the testbed); the
//!   summed RSS of the first N sidecars. (Each sidecar holds the mesh's state for all the
//!   testbed's pods, as a sidecar of a cluster that size would.) The node agent, which
//!   signs their certificates, is reported beside them but not added.
//!
//! RSS counts the pages a process shares with others (the binary's text) in full, as
//! container memory metrics do; PSS, which divides them among the sharers, is reported
//! too.
use std::{path::Path, time::Duration};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{Settings, procfs, testbed::Bed};

fn spec(pods: usize, mode: &str) -> String {
    let mut spec = String::from("nodes:\n  - name: node-a\n    pods:\n");
    for i in 0..pods {
        spec.push_str(&format!(
            "      - {{namespace: mem, name: p{i:03}, serviceAccount: sa{}, mode: {mode}}}\n",
            i % 10
        ));
    }
    spec
}

/// How many of node-a's pods its agent reports enrolled.
fn enrolled(bed: &Bed, ctl: &Path) -> anyhow::Result<usize> {
    let out = std::process::Command::new(ctl)
        .arg("--socket")
        .arg(bed.state.join("node-a").join("admin.sock"))
        .args(["workloads", "-o", "json"])
        .output()
        .context("running outriderctl workloads")?;
    if !out.status.success() {
        bail!(
            "outriderctl workloads: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("outriderctl's JSON")?;
    Ok(v["workloads"]
        .as_array()
        .map(|w| w.iter().filter(|w| w["state"] == "enrolled").count())
        .unwrap_or(0))
}

fn settle() {
    std::thread::sleep(Duration::from_millis(1500));
}

pub fn measure(
    tools: &Path,
    ctl: &Path,
    settings: &Settings,
    work: &Path,
) -> anyhow::Result<Value> {
    let max = settings.memory_steps.iter().copied().max().unwrap_or(0);
    let mut node = Vec::new();
    {
        let bed = Bed::up(tools, &spec(max, "none"), &work.join("memory-node"))?;
        let agent = bed.agent_pid("node-a")?;
        settle();
        let idle = procfs::rss_bytes(agent)?;
        let mut done = 0;
        for &step in &settings.memory_steps {
            eprintln!("xtask: bench: memory: node mode, {step} pods");
            while done < step {
                let pod = format!("mem/p{done:03}");
                let out = bed
                    .exec_testbed(&["enroll", &pod])
                    .output()
                    .context("testbed enroll")?;
                if !out.status.success() {
                    bail!(
                        "testbed enroll {pod}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                done += 1;
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while enrolled(&bed, ctl)? < step {
                if std::time::Instant::now() > deadline {
                    bail!("the agent did not enroll {step} pods within 30 s");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            settle();
            node.push(json!({
                "pods": step,
                "rss_bytes": procfs::rss_bytes(agent)?,
                "pss_bytes": procfs::pss_bytes(agent)?,
            }));
        }
        node.insert(0, json!({"pods": 0, "rss_bytes": idle}));
    }
    let mut sidecar = Vec::new();
    let agent_with_sidecars;
    {
        eprintln!("xtask: bench: memory: sidecar mode, {max} pods");
        let bed = Bed::up(tools, &spec(max, "sidecar"), &work.join("memory-sidecar"))?;
        let pids = bed.sidecar_pids();
        if pids.len() != max {
            bail!("{} sidecars running, {max} expected", pids.len());
        }
        settle();
        let rss: Vec<u64> = pids
            .iter()
            .map(|p| procfs::rss_bytes(*p))
            .collect::<anyhow::Result<_>>()?;
        let pss: Vec<u64> = pids
            .iter()
            .map(|p| procfs::pss_bytes(*p))
            .collect::<anyhow::Result<_>>()?;
        for &step in &settings.memory_steps {
            sidecar.push(json!({
                "pods": step,
                "rss_bytes": rss[..step].iter().sum::<u64>(),
                "pss_bytes": pss[..step].iter().sum::<u64>(),
            }));
        }
        agent_with_sidecars = procfs::rss_bytes(bed.agent_pid("node-a")?)?;
    }
    let at = |points: &[Value], pods: usize| -> Option<u64> {
        points
            .iter()
            .find(|p| p["pods"] == pods)
            .and_then(|p| p["rss_bytes"].as_u64())
    };
    // The marginal cost of a pod at the largest step: from the step before it.
    let steps = &settings.memory_steps;
    let per_pod = if steps.len() >= 2 {
        let (a, b) = (steps[steps.len() - 2], steps[steps.len() - 1]);
        match (at(&node, a), at(&node, b)) {
            (Some(ra), Some(rb)) => json!((rb as f64 - ra as f64) / (b - a) as f64),
            _ => Value::Null,
        }
    } else {
        Value::Null
    };
    Ok(json!({
        "node": node,
        "sidecar": sidecar,
        "node_agent_rss_bytes_with_sidecars": agent_with_sidecars,
        "node_agent_bytes_per_pod": per_pod,
        "node_agent_bytes_per_pod_between": steps.iter().rev().take(2).rev().collect::<Vec<_>>(),
    }))
}
