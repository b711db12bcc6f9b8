//! Choosing and dialing the agent: its unix socket (the default), or TCP with mutual TLS
//! (`--addr` with `--ca`, `--cert`, `--key`); errors that say what to do about a missing
//! socket, a socket only root may use, or a certificate file that cannot be read.
use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::parser::ValueSource;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

/// The default admin socket of the agent.
pub(crate) const DEFAULT_SOCKET: &str = "/run/outrider/admin.sock";

/// The flags that say where the agent is.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// The agent's admin socket.
    #[arg(
        long,
        global = true,
        env = "OUTRIDER_ADMIN_SOCKET",
        default_value = DEFAULT_SOCKET,
        value_name = "PATH"
    )]
    pub socket: PathBuf,
    /// Reach the agent over TCP with mutual TLS instead of its socket.
    #[arg(
        long,
        global = true,
        env = "OUTRIDER_ADMIN_ADDR",
        value_name = "HOST:PORT"
    )]
    pub addr: Option<String>,
    /// With --addr: the CA (PEM) that signed the agent's server certificate.
    #[arg(long, global = true, env = "OUTRIDER_ADMIN_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// With --addr: this client's certificate (PEM).
    #[arg(long, global = true, env = "OUTRIDER_ADMIN_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// With --addr: this client's private key (PEM).
    #[arg(long, global = true, env = "OUTRIDER_ADMIN_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// With --addr: the name to verify in the agent's certificate [default: the host of --addr].
    #[arg(long, global = true, value_name = "NAME")]
    pub server_name: Option<String>,
}

/// Where the agent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Socket(PathBuf),
    Tcp(TcpTarget),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpTarget {
    /// `host:port` as given.
    pub addr: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub server_name: String,
}

/// The flags given on the command line itself (not through the environment): those win.
#[derive(Debug, Clone, Copy, Default)]
pub struct GivenOnCommandLine {
    pub socket: bool,
    pub addr: bool,
    pub tls: bool,
}

impl GivenOnCommandLine {
    pub(crate) fn from_matches(matches: &clap::ArgMatches) -> Self {
        let cli = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        GivenOnCommandLine {
            socket: cli("socket"),
            addr: cli("addr"),
            tls: cli("ca") || cli("cert") || cli("key") || cli("server_name"),
        }
    }
}

impl Target {
    /// TCP when an address is given (unless only the socket is on the command line),
    /// else the socket.
    pub(crate) fn choose(args: ConnectArgs, given: GivenOnCommandLine) -> Result<Target> {
        let addr = args.addr.filter(|a| !a.trim().is_empty());
        // `--socket` on the command line beats an address from the environment.
        let Some(addr) = addr.filter(|_| given.addr || !given.socket) else {
            if given.tls {
                bail!(
                    "--ca, --cert, --key and --server-name go with --addr (TCP with mutual TLS); \
                     the unix socket needs none"
                );
            }
            return Ok(Target::Socket(args.socket));
        };
        if given.socket && given.addr {
            bail!("--socket and --addr are alternatives: give one");
        }
        let host = host_of(&addr)?;
        let missing: Vec<&str> = [
            ("--ca", args.ca.is_none()),
            ("--cert", args.cert.is_none()),
            ("--key", args.key.is_none()),
        ]
        .into_iter()
        .filter_map(|(flag, absent)| absent.then_some(flag))
        .collect();
        let (Some(ca), Some(cert), Some(key)) = (args.ca, args.cert, args.key) else {
            bail!(
                "--addr needs --ca FILE (the CA that signed the agent's certificate), --cert FILE \
                 and --key FILE (this client's certificate and key); missing: {}",
                missing.join(", ")
            );
        };
        Ok(Target::Tcp(TcpTarget {
            server_name: args.server_name.unwrap_or(host),
            addr,
            ca,
            cert,
            key,
        }))
    }

    /// The agent as the user named it, for messages.
    pub fn describe(&self) -> String {
        match self {
            Target::Socket(path) => path.display().to_string(),
            Target::Tcp(tcp) => tcp.addr.clone(),
        }
    }
}

/// The host part of `host:port` / `[v6]:port`.
fn host_of(addr: &str) -> Result<String> {
    let bad = || {
        anyhow::anyhow!(
            "--addr wants HOST:PORT (e.g. 10.0.0.1:15030 or [fd00::1]:15030), got {addr:?}"
        )
    };
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or_else(bad)?;
        (host, port)
    } else {
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        if host.contains(':') {
            return Err(bad());
        }
        (host, port)
    };
    if host.is_empty() || host.contains(['/', ' ']) || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(host.to_string())
}

/// Why the admin socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "no agent socket at {path} (is the agent running? choose another with --socket or \
         OUTRIDER_ADMIN_SOCKET)"
    )]
    Missing { path: PathBuf },
    #[error(
        "permission denied on {path}: the admin socket is for root (or the agent's user); run \
         with sudo"
    )]
    PermissionDenied { path: PathBuf },
    #[error("{path} is not a socket (choose the agent's admin socket with --socket)")]
    NotSocket { path: PathBuf },
    #[error(
        "the agent socket at {path} refuses connections (a stale socket: is the agent running?)"
    )]
    Refused { path: PathBuf },
    #[error("cannot connect to the agent socket at {path}: {source}")]
    Other {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SocketError {
    fn from_io(path: &Path, err: std::io::Error) -> Self {
        let path = path.to_path_buf();
        match err.kind() {
            ErrorKind::NotFound => SocketError::Missing { path },
            ErrorKind::PermissionDenied => SocketError::PermissionDenied { path },
            ErrorKind::ConnectionRefused => SocketError::Refused { path },
            _ => SocketError::Other { path, source: err },
        }
    }
}

/// Opens a gRPC channel to the agent, within `timeout`.
pub async fn dial(target: &Target, timeout: Duration) -> Result<Channel> {
    let connecting = async {
        match target {
            Target::Socket(path) => dial_socket(path).await,
            Target::Tcp(tcp) => dial_tcp(tcp, timeout).await,
        }
    };
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "timed out after {} connecting to the agent at {}",
                super::human::span(timeout),
                target.describe()
            )
        })?
}

/// Checks the socket and connects to it once ourselves, so that a missing socket or a
/// refused permission gets its own message; the channel then uses that first stream (and
/// dials again only to reconnect).
async fn dial_socket(path: &Path) -> Result<Channel> {
    let metadata = std::fs::metadata(path).map_err(|err| SocketError::from_io(path, err))?;
    if !metadata.file_type().is_socket() {
        return Err(SocketError::NotSocket {
            path: path.to_path_buf(),
        }
        .into());
    }
    let first = UnixStream::connect(path)
        .await
        .map_err(|err| SocketError::from_io(path, err))?;
    let first = Arc::new(Mutex::new(Some(first)));
    let path = path.to_path_buf();
    let described = path.display().to_string();
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        let first = first.clone();
        async move {
            let ready = crate::sync::lock(&first).take();
            let stream = match ready {
                Some(stream) => stream,
                None => UnixStream::connect(path).await?,
            };
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Endpoint::try_from("http://[::]:50051")
        .context("the socket endpoint")?
        .connect_with_connector(connector)
        .await
        .with_context(|| format!("cannot connect to the agent socket at {described}"))
}

async fn dial_tcp(tcp: &TcpTarget, timeout: Duration) -> Result<Channel> {
    let ca = read_pem(&tcp.ca, "CA certificate")?;
    let cert = read_pem(&tcp.cert, "client certificate")?;
    let key = read_pem(&tcp.key, "client key")?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name(tcp.server_name.clone());
    Endpoint::from_shared(format!("https://{}", tcp.addr))
        .with_context(|| format!("--addr {:?}", tcp.addr))?
        .tls_config(tls)
        .context("setting up TLS")?
        .connect_timeout(timeout)
        .connect()
        .await
        .with_context(|| {
            format!(
                "cannot connect to the agent at {} (verifying it as {:?})",
                tcp.addr, tcp.server_name
            )
        })
}

/// Reads a PEM file, naming the file (and what it should hold) when that fails.
fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    let data = std::fs::read(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    if !data.windows(11).any(|w| w == b"-----BEGIN ") {
        bail!(
            "{} is not PEM: expected the {what} in PEM (-----BEGIN …)",
            path.display()
        );
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ConnectArgs {
        ConnectArgs {
            socket: PathBuf::from(DEFAULT_SOCKET),
            addr: None,
            ca: None,
            cert: None,
            key: None,
            server_name: None,
        }
    }

    fn tls_args(addr: &str) -> ConnectArgs {
        ConnectArgs {
            addr: Some(addr.into()),
            ca: Some("ca.pem".into()),
            cert: Some("cert.pem".into()),
            key: Some("key.pem".into()),
            ..args()
        }
    }

    #[tokio::test]
    async fn missing_socket_says_so_and_how_to_choose_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let err = dial(&Target::Socket(path.clone()), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no agent socket at {} (is the agent running? choose another with --socket or \
                 OUTRIDER_ADMIN_SOCKET)",
                path.display()
            )
        );
    }

    #[tokio::test]
    async fn stale_socket_and_plain_file_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let err = dial(&Target::Socket(stale.clone()), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(err.downcast_ref(), Some(SocketError::Refused { path }) if path == &stale),
            "{err:#}"
        );
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = dial(&Target::Socket(file.clone()), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is not a socket (choose the agent's admin socket with --socket)",
                file.display()
            )
        );
    }

    #[test]
    fn permission_denied_message_names_the_path_and_sudo() {
        let path = Path::new("/run/outrider/admin.sock");
        let err = SocketError::from_io(path, std::io::Error::from(ErrorKind::PermissionDenied));
        assert_eq!(
            err.to_string(),
            "permission denied on /run/outrider/admin.sock: the admin socket is for root (or \
             the agent's user); run with sudo"
        );
    }

    #[test]
    fn socket_is_the_default_and_addr_needs_certificates() {
        let given = GivenOnCommandLine::default();
        assert_eq!(
            Target::choose(args(), given).unwrap(),
            Target::Socket(DEFAULT_SOCKET.into())
        );
        let mut no_key = tls_args("10.0.0.1:15030");
        no_key.ca = None;
        no_key.key = None;
        let err = Target::choose(no_key, given).unwrap_err().to_string();
        assert!(err.ends_with("missing: --ca, --key"), "{err}");
        let Target::Tcp(tcp) = Target::choose(tls_args("10.0.0.1:15030"), given).unwrap() else {
            panic!("expected TCP");
        };
        assert_eq!(tcp.server_name, "10.0.0.1");
        let Target::Tcp(tcp) = Target::choose(tls_args("[fd00::1]:15030"), given).unwrap() else {
            panic!("expected TCP");
        };
        assert_eq!(tcp.server_name, "fd00::1");
        let mut named = tls_args("agent.local:15030");
        named.server_name = Some("outrider.node-a".into());
        let Target::Tcp(tcp) = Target::choose(named, given).unwrap() else {
            panic!("expected TCP");
        };
        assert_eq!(tcp.server_name, "outrider.node-a");
    }

    #[test]
    fn command_line_beats_environment() {
        // OUTRIDER_ADMIN_ADDR in the environment, --socket on the command line.
        let given = GivenOnCommandLine {
            socket: true,
            ..Default::default()
        };
        assert!(matches!(
            Target::choose(tls_args("10.0.0.1:1"), given).unwrap(),
            Target::Socket(_)
        ));
        let both = GivenOnCommandLine {
            socket: true,
            addr: true,
            tls: false,
        };
        assert!(Target::choose(tls_args("10.0.0.1:1"), both).is_err());
        let tls_only = GivenOnCommandLine {
            tls: true,
            ..Default::default()
        };
        assert!(Target::choose(args(), tls_only).is_err());
    }

    #[test]
    fn bad_addresses_are_refused() {
        for bad in [
            "10.0.0.1",
            "fd00::1:80",
            "[fd00::1]",
            ":80",
            "host:http",
            "a b:1",
        ] {
            assert!(host_of(bad).is_err(), "{bad}");
        }
        assert_eq!(host_of("localhost:15030").unwrap(), "localhost");
    }

    #[tokio::test]
    async fn unreadable_certificate_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let target = Target::Tcp(TcpTarget {
            addr: "127.0.0.1:1".into(),
            ca: ca.clone(),
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            server_name: "127.0.0.1".into(),
        });
        let err = dial(&target, Duration::from_secs(5)).await.unwrap_err();
        assert!(
            format!("{err:#}")
                .starts_with(&format!("cannot read the CA certificate {}", ca.display())),
            "{err:#}"
        );
        std::fs::write(&ca, "not pem").unwrap();
        let err = dial(&target, Duration::from_secs(5)).await.unwrap_err();
        assert!(err.to_string().contains("is not PEM"), "{err:#}");
    }
}
