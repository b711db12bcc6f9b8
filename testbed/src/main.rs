//! `outrider-testbed`: the tooling's command line, apart from the `outrider` binary that
//! ships. `testbed …` builds, uses and removes a local mesh of nodes and pods (its agents
//! are the `outrider` binary beside this one, or `$OUTRIDER_BIN`); `loadgen …` is the
//! benchmark's workload; the hidden `codegen …` prints files generated from the agent's
//! types (`cargo xtask codegen` writes them).
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outrider_testbed::{loadgen, testbed};

#[derive(Parser)]
#[command(
    name = "outrider-testbed",
    version = outrider::VERSION,
    about = "Outrider's tooling: a local testbed of nodes and pods, and a load generator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build, use and remove a local mesh of nodes and pods (network namespaces, cgroups).
    #[command(subcommand)]
    Testbed(testbed::TestbedCommand),
    /// Generate and measure TCP load (the benchmark's workload).
    #[command(subcommand)]
    Loadgen(loadgen::LoadgenCommand),
    /// Print files generated from the agent's types (`cargo xtask codegen` writes them).
    #[command(subcommand, hide = true)]
    Codegen(CodegenCommand),
}

#[derive(Subcommand)]
enum CodegenCommand {
    /// The AuthorizationPolicy CustomResourceDefinition, as YAML.
    Crd,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The load generator and the testbed's pods hold many connections: use what the
    // operator allows. Failing leaves the limit as it was.
    let _ = outrider::limits::raise_open_files();
    let result = match cli.command {
        Command::Testbed(cmd) => testbed::run(cmd),
        Command::Loadgen(cmd) => loadgen::run(cmd),
        Command::Codegen(CodegenCommand::Crd) => {
            print!("{}", outrider::policy::crd::crd_yaml());
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("outrider-testbed: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
