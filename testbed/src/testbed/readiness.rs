//! `testbed ready`: a pod's readiness and termination, as its readiness probe and a
//! deletion would change them — its endpoints' conditions in every node's workload file
//! (written atomically, as `enroll` does) and the nodes' kube-proxy-like rules.
use std::{path::Path, process::ExitCode};

use super::{agents, exec, kube_proxy, state::State};

/// Sets `ready` and `terminating` on the pod `key` and rewrites what follows from them.
pub fn set(dir: &Path, key: &str, ready: bool, terminating: bool) -> anyhow::Result<ExitCode> {
    let mut state = State::load(dir)?;
    let key = exec::find_pod(&state, key)?.key();
    for p in state.pods.iter_mut().filter(|p| p.key() == key) {
        p.ready = ready;
        p.terminating = terminating;
    }
    agents::write_workload_files(dir, &state)?;
    kube_proxy::apply(&state)?;
    state.save(dir)?;
    let services: Vec<String> = agents::workload_set(&state)
        .services
        .iter()
        .filter(|s| {
            s.endpoints
                .iter()
                .flatten()
                .any(|e| e.pod.as_deref() == Some(key.as_str()))
        })
        .map(|s| s.key().to_string())
        .collect();
    println!(
        "{key}: {}{} (endpoint of: {})",
        if ready { "ready" } else { "not ready" },
        if terminating { ", terminating" } else { "" },
        if services.is_empty() {
            "no Service".to_string()
        } else {
            services.join(", ")
        }
    );
    Ok(ExitCode::SUCCESS)
}
