//! `outrider`: the node agent's commands, what the image ships (the tooling, testbed and
//! load generator included, is `outrider-testbed`, in `testbed/`). The command line only;
//! the parts live in the library (`lib.rs`).
//!
//! Data flows one way through the modules: `workloads` (who runs here) → `enrollment`
//! (per-pod set-up) → `dataplane` (kernel programs and maps) + `proxy` (in-pod listeners,
//! copying) → `telemetry` (access logs). `identity` gives enrolled service accounts their
//! certificates and the proxy its mutual-TLS ends (`outrider ca` makes the mesh's root).
//! `netns` is where sockets are made.
use outrider::{agent, identity, sidecar, wait_enrolled};

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "outrider",
    version = outrider::VERSION,
    about = "Sidecar-less service-mesh node agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent.
    Run {
        /// The agent's config file (YAML).
        #[arg(long, env = "OUTRIDER_CONFIG")]
        config: PathBuf,
    },
    /// Take an agent's kernel programs away for good: unpin its programs, maps and links
    /// (capture.pinRoot/instance), so that its enrolled pods' traffic flows unmeshed.
    /// For uninstalling; an agent that merely stops leaves them for the next one.
    Cleanup {
        /// The agent's config file (YAML).
        #[arg(long, env = "OUTRIDER_CONFIG")]
        config: PathBuf,
    },
    /// Run as one pod's sidecar (sidecar mode), inside the pod.
    Sidecar(sidecar::SidecarArgs),
    /// In a pod (an init container): set the iptables rules that steer the pod's TCP to
    /// its sidecar.
    SidecarInit(sidecar::InitArgs),
    /// In a pod (an init container): wait until the node agent has enrolled it.
    WaitEnrolled {
        /// The agent's in-pod outbound port.
        #[arg(long, default_value_t = 15001)]
        port: u16,
        /// Give up after this long.
        #[arg(long, default_value_t = 60)]
        timeout_seconds: u64,
    },
    /// Manage the mesh's built-in certificate authority.
    #[command(subcommand)]
    Ca(identity::cli::CaCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Every proxied connection costs descriptors: use what the operator allows. Failing
    // leaves the limit as it was, which only matters under heavy load.
    let _ = outrider::limits::raise_open_files();
    let result = match cli.command {
        Command::Run { config } => agent::run(&config),
        Command::Cleanup { config } => agent::cleanup(&config),
        Command::Sidecar(args) => sidecar::run::run(&args),
        Command::SidecarInit(args) => sidecar::init::run(&args),
        Command::WaitEnrolled {
            port,
            timeout_seconds,
        } => wait_enrolled::run(port, std::time::Duration::from_secs(timeout_seconds)),
        Command::Ca(cmd) => identity::cli::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("outrider: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
