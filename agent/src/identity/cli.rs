//! `outrider ca …`: the built-in CA's command line.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, SystemTime},
};

use anyhow::Context;
use clap::Subcommand;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData};

use super::{LocalCa, SignRequest, SpiffeId, ca, x509};

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
        /// Also write the CA as a Kubernetes Secret manifest (`outrider-ca` in
        /// `outrider-system`, mode 0600) to FILE, for `kubectl apply -f FILE`.
        #[arg(long, value_name = "FILE")]
        k8s_secret: Option<PathBuf>,
    },
    /// Issue a workload certificate by hand (for debugging a peer with openssl or curl):
    /// writes DIR/tls.crt (leaf then root) and DIR/tls.key.
    Issue {
        /// The CA directory (ca.crt, ca.key).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The SPIFFE ID, e.g. spiffe://cluster.local/ns/shop/sa/web.
        #[arg(long)]
        id: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: u64,
        /// Issue it as of this many seconds ago (a certificate already expired when
        /// larger than the lifetime).
        #[arg(long, default_value_t = 0)]
        backdate_seconds: u64,
        /// Directory to write to (made if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

pub fn run(cmd: CaCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CaCommand::Init {
            out,
            force,
            common_name,
            validity_days,
            k8s_secret,
        } => {
            // Refuse before making a CA that would then have no Secret.
            if let Some(file) = &k8s_secret
                && !force
                && std::fs::symlink_metadata(file).is_ok()
            {
                anyhow::bail!(
                    "{} already exists; pass --force to replace it",
                    file.display()
                );
            }
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
            match k8s_secret {
                Some(file) => {
                    ca::write_k8s_secret(&out, &file, force)?;
                    println!(
                        "wrote the Secret {}/{} to {} (it holds the CA key: delete it once \
                         applied); install it with `kubectl apply -f {}`",
                        ca::K8S_SECRET_NAMESPACE,
                        ca::K8S_SECRET_NAME,
                        file.display(),
                        file.display()
                    );
                }
                None => println!(
                    "mount them as the agents' identity.caDir; for Kubernetes, pass \
                     --k8s-secret FILE for a Secret manifest to `kubectl apply -f`"
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::Issue {
            ca,
            id,
            ttl_seconds,
            backdate_seconds,
            out,
        } => issue(&ca, &id, ttl_seconds, backdate_seconds, &out),
    }
}

fn issue(
    ca_dir: &Path,
    id: &str,
    ttl_seconds: u64,
    backdate_seconds: u64,
    out: &Path,
) -> anyhow::Result<ExitCode> {
    let id = SpiffeId::parse(id).with_context(|| format!("--id {id}"))?;
    let ca = LocalCa::from_dir(ca_dir, id.trust_domain())?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating a key")?;
    let request = SignRequest {
        id: id.clone(),
        public_key: key.subject_public_key_info().into(),
        ttl: Duration::from_secs(ttl_seconds),
    };
    let now = SystemTime::now() - Duration::from_secs(backdate_seconds);
    let chain = ca.issue(&request, now)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let pem: String = chain
        .iter()
        .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())))
        .collect();
    let cert_path = out.join("tls.crt");
    let key_path = out.join("tls.key");
    std::fs::write(&cert_path, pem)
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    {
        use std::{io::Write, os::unix::fs::OpenOptionsExt};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key_path)
            .with_context(|| format!("cannot write {}", key_path.display()))?;
        file.write_all(key.serialize_pem().as_bytes())
            .with_context(|| format!("cannot write {}", key_path.display()))?;
    }
    println!(
        "wrote {} and {} for {id}",
        cert_path.display(),
        key_path.display()
    );
    Ok(ExitCode::SUCCESS)
}
