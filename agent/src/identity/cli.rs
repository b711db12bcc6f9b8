//! `outrider ca …`: the built-in CA's command line.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Subcommand;

use super::{ca, x509};

#[derive(Subcommand)]
pub enum CaCommand {
    /// Create the mesh's root CA: DIR/ca.crt and DIR/ca.key (mode 0600), to be mounted
    /// (e.g. from a Kubernetes Secret) as every agent's identity.caDir.
    Init {
        /// Directory to write to (made if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Replace an existing CA in DIR.
        #[arg(long)]
        force: bool,
        /// The root's common name.
        #[arg(long, default_value = "Outrider Root CA")]
        common_name: String,
        /// The root's lifetime in days.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..))]
        validity_days: u32,
    },
}

pub fn run(cmd: CaCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CaCommand::Init {
            out,
            force,
            common_name,
            validity_days,
        } => {
            let options = ca::InitOptions {
                common_name,
                validity: Duration::from_secs(u64::from(validity_days) * 24 * 3600),
                force,
            };
            let written = ca::init(&out, &options)?;
            println!(
                "wrote {} and {} (valid until {})",
                written.cert_path.display(),
                written.key_path.display(),
                x509::rfc3339(written.not_after)
            );
            println!(
                "mount them as the agents' identity.caDir, e.g. `kubectl -n outrider create \
                 secret generic outrider-ca --from-file={} --from-file={}`",
                written.cert_path.display(),
                written.key_path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
