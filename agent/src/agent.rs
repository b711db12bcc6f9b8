//! `outrider run`: wires the agent together — config, logging, kernel programs, the
//! workload source, enrollment — and runs until SIGTERM or SIGINT.
use std::{path::Path, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;

use crate::{
    config::Config, dataplane::Dataplane, enrollment::Enrollment, logging, netns, workloads,
};

pub fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = Arc::new(Config::load(config_path)?);
    logging::init(&config.log)?;
    netns::init().context("recording the agent's own network namespace")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("outrider")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Arc<Config>) -> anyhow::Result<ExitCode> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        node = %config.node_name,
        instance = %config.instance,
        "agent starting"
    );
    let dataplane = Dataplane::load(&config)?;
    let Some(file) = config.workloads.file.clone() else {
        anyhow::bail!("workloads.file is not set: the agent has no workload source");
    };
    let workloads = workloads::file::watch(
        file,
        Duration::from_millis(config.workloads.poll_interval_ms),
    );
    let enrollment = Enrollment::new(config.clone(), dataplane);
    let enrollment = tokio::spawn(enrollment.run(workloads, || tracing::info!("agent ready")));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: agent stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: agent stopping"),
        result = enrollment => {
            result.context("enrollment stopped")?;
            anyhow::bail!("the workload source ended");
        }
    }
    Ok(ExitCode::SUCCESS)
}
