//! `cargo xtask …`: everything beyond plain cargo — set-up of a fresh machine, the demo,
//! the full test run (unit + privileged end-to-end tests on the testbed), and the
//! benchmark of both models and a soak of the agents under mixed traffic.
mod bench;
mod codegen;
mod demo;
mod fuzz;
mod image;
mod manifests;
mod setup;
mod soak;
mod test;

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: rust-src for nightly, bpf-linker, the apt packages the
    /// tests and the demo use. Idempotent.
    Setup,
    /// Set up, build, and show capture on a two-node testbed.
    Demo,
    /// Set up, build, and benchmark node mode against sidecar mode and a direct
    /// connection on the testbed; writes bench.json, bench.md and bench.svg. With
    /// --ztunnel, run the peer harness instead: Outrider against ztunnel (peer.md).
    Bench {
        /// Short loads (2 s each): under 3 minutes in all.
        #[arg(long, conflicts_with = "ztunnel")]
        quick: bool,
        /// Where to write the results (default target/bench; with --ztunnel,
        /// target/bench/peer).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// A ztunnel binary built with `--features testing`: run the peer harness on
        /// direct, ztunnel-hbone, ztunnel-tcp, outrider-mtls and outrider-tcp.
        #[arg(long, value_name = "PATH")]
        ztunnel: Option<PathBuf>,
        /// The peer harness's directory (default: ../shared/bench beside the repository).
        #[arg(long, value_name = "DIR", requires = "ztunnel")]
        peer_harness: Option<PathBuf>,
        /// Peer harness: rounds of every test on every path.
        #[arg(long, value_name = "N", default_value_t = 3, requires = "ztunnel")]
        rounds: u32,
        /// Peer harness: seconds per timed test.
        #[arg(long, value_name = "S", default_value_t = 5, requires = "ztunnel")]
        duration: u32,
        /// Peer harness: the tests, comma-separated from latency,tput1,tput4,http,conn
        /// (default: all).
        #[arg(long, value_name = "LIST", requires = "ztunnel")]
        tests: Option<String>,
    },
    /// Set up, build, and run mixed traffic through two nodes' agents for a while
    /// (request/response, bulk, connection churn, many connections at once; plaintext
    /// and mutual TLS), sampling their memory, descriptors and errors; fails if memory
    /// grows without bound, descriptors leak or anything fails. For people, not CI.
    Soak {
        /// How long, in minutes (at most 120).
        #[arg(long, default_value_t = 10, value_name = "N")]
        minutes: u64,
    },
    /// Set up, build what ships (the `dist` profile: the release with whole-program LTO),
    /// and build Outrider's container image from it (buildah,
    /// `FROM scratch`, no registry): loaded into the local image store as
    /// `outrider:<version>` and the manifests' reference, and written to
    /// target/image/outrider-<version>.tar (OCI archive).
    Image {
        /// Build the binaries with this version string instead of the release's (an
        /// image that really differs, e.g. to try an upgrade); also the image's tag.
        #[arg(long, value_name = "V")]
        version: Option<String>,
    },
    /// Build the binaries, then run `outrider-testbed testbed ARGS…`: the testbed's verbs
    /// and flags, e.g. `cargo xtask testbed up --spec S --state DIR --agents`.
    #[command(disable_help_flag = true)]
    Testbed {
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// Build the binaries, then run `outrider-testbed loadgen ARGS…` (the load generator).
    #[command(disable_help_flag = true)]
    Loadgen {
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// Regenerate the files derived from Rust types (deploy/base/authorizationpolicy-crd.yaml)
    /// with `outrider-testbed codegen`.
    Codegen,
    /// Set up, then run every test: formatting, clippy, unit and end-to-end tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Set up, then fuzz the agent's parsers with cargo-fuzz (nightly; installed if
    /// missing): each target for `--seconds`, one after another. Targets:
    /// protocol_detection, hbone_connect, workload_file, policy.
    Fuzz {
        /// One target (default: all of them).
        target: Option<String>,
        /// How long each target runs.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// Set up, then check the Kubernetes manifests under deploy/ (kustomization file
    /// list, API schemas, checkov), as `test` does.
    Manifests {
        /// The deploy directory to check (default: the workspace's deploy/).
        #[arg(long, value_name = "DIR")]
        deploy: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup::run(),
        Cmd::Demo => setup::run().and_then(|()| demo::run()),
        Cmd::Codegen => codegen::run(),
        Cmd::Testbed { args } => tooling("testbed", &args),
        Cmd::Loadgen { args } => tooling("loadgen", &args),
        Cmd::Image { version } => setup::run()
            .and_then(|()| image::run(version.as_deref(), image::Profile::Dist).map(|_| ())),
        Cmd::Bench {
            out,
            ztunnel: Some(ztunnel),
            peer_harness,
            rounds,
            duration,
            tests,
            ..
        } => setup::run().and_then(|()| {
            bench::run_peer(bench::PeerOptions {
                ztunnel,
                harness: peer_harness,
                rounds,
                duration,
                tests,
                out,
            })
        }),
        Cmd::Bench { quick, out, .. } => setup::run().and_then(|()| bench::run(quick, out)),
        Cmd::Test { args } => setup::run().and_then(|()| test::run(&args)),
        Cmd::Soak { minutes } => setup::run().and_then(|()| soak::run(minutes)),
        Cmd::Fuzz { target, seconds } => {
            setup::run().and_then(|()| fuzz::run(target.as_deref(), seconds))
        }
        Cmd::Manifests { deploy } => setup::run()
            .and_then(|()| manifests::run(&deploy.unwrap_or_else(|| root().join("deploy")))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command in the workspace root, failing with its name if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("xtask: $ {}", shown.replace('"', ""));
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// `outrider-testbed COMMAND ARGS…`, built first, in the caller's directory (its paths
/// are the caller's); fails as it fails.
fn tooling(command: &str, args: &[String]) -> anyhow::Result<()> {
    let tools = build_tools()?;
    let status = Command::new(&tools)
        .arg(command)
        .args(args)
        .status()
        .with_context(|| format!("cannot start {}", tools.display()))?;
    if !status.success() {
        bail!("outrider-testbed {command} failed ({status})");
    }
    Ok(())
}

/// `cargo build --release` of the product's binaries (`outrider`, `outriderctl`) and the
/// tooling's (`outrider-testbed`), all into one directory, where `outrider-testbed` finds
/// the agent it starts; returns the path of `outrider-testbed` (`with_file_name` gives
/// the others).
pub fn build_tools() -> anyhow::Result<PathBuf> {
    run(Command::new(env!("CARGO")).args([
        "build",
        "--release",
        "-p",
        "outrider",
        "-p",
        "outrider-testbed",
        "--bins",
    ]))?;
    Ok(root().join("target/release/outrider-testbed"))
}
