//! `outriderctl`: the command line of the agent's admin API (`outrider.admin.v1`).
//!
//! `mod.rs` holds the command line and sends each command to the module of its area:
//! `version`, `workloads`, `services`, `connections` (list and watch), `config`,
//! `policies`, `certs`, `log_level` and `top` (a live per-pod view). `connect` finds and dials the agent,
//! `rpc` makes the calls (deadlines, errors in words), `output` prints tables, JSON and
//! YAML, `human` formats bytes and times. `inject` alone does not talk to the agent: it
//! adds the sidecar to Kubernetes manifests.
mod certs;
mod config;
pub mod connect;
mod connections;
mod human;
mod inject;
mod log_level;
mod output;
mod policies;
mod rpc;
mod services;
mod top;
mod version;
mod workloads;

use std::fmt;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use outrider_proto::admin::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use connect::{ConnectArgs, GivenOnCommandLine, Target};
use output::{Format, OutputArg};

#[derive(Debug, Parser)]
#[command(
    name = "outriderctl",
    version = crate::VERSION,
    about = "Look into and steer the Outrider node agent through its admin API",
    after_help = "The agent is reached on its unix socket (root only, by default), or over TCP \
                  with mutual TLS with --addr, --ca, --cert and --key."
)]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_parser = OutputArg::format_parser(),
        default_value = "table"
    )]
    output: OutputArg,
    /// How long to wait for the agent to answer a call (or to connect), in seconds.
    #[arg(
        long,
        global = true,
        default_value = "10",
        value_parser = parse_seconds,
        value_name = "SECONDS"
    )]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// This client's version and the agent's (build, node, kernel).
    Version,
    /// Pods the agent knows on its node: mode, enrollment, identity, certificate, traffic.
    Workloads(workloads::WorkloadsArgs),
    /// Kubernetes Services as the agent routes to them: cluster IPs, ports, endpoints.
    #[command(visible_alias = "svc")]
    Services(services::ServicesArgs),
    /// Live proxied connections; `watch` streams them as they open and close.
    #[command(visible_alias = "conns")]
    Connections(connections::ConnectionsArgs),
    /// The configuration in force (YAML; JSON with -o json).
    Config,
    /// Authorization policies: list, get, apply, delete.
    Policies(policies::PoliciesArgs),
    /// Workload certificates the agent holds, the trust domain and its roots.
    #[command(visible_alias = "certificates")]
    Certs,
    /// The log filter in force; `set` changes it, `reset` restores the configured one.
    LogLevel(log_level::LogLevelArgs),
    /// A live per-pod view of traffic rates, refreshed every interval.
    Top(top::TopArgs),
    /// Add the Outrider sidecar to the pods of Kubernetes manifests (no agent needed).
    Inject(inject::InjectArgs),
}

/// Runs `outriderctl` with the process's arguments; 0 on success, 1 on an error (printed
/// as `outriderctl: error: …`), 2 on a usage error.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let given = GivenOnCommandLine::from_matches(&matches);
    let result = match cli.command {
        // Works on files alone: no agent to choose.
        Command::Inject(args) => inject::run(args),
        _ => Target::choose(cli.connect.clone(), given).and_then(|target| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(run(cli, target))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`outriderctl … | head`): nothing more to say.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "outriderctl: error: {}", describe(&err));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, target: Target) -> Result<()> {
    let stdout = std::io::stdout();
    let terminal = stdout.is_terminal();
    let mut ctx = Ctx::new(target, cli.timeout, cli.output.format(), Box::new(stdout));
    ctx.terminal = terminal;
    dispatch(&mut ctx, cli.command).await
}

async fn dispatch(ctx: &mut Ctx, command: Command) -> Result<()> {
    match command {
        Command::Version => version::run(ctx).await,
        Command::Workloads(args) => workloads::run(ctx, args).await,
        Command::Services(args) => services::run(ctx, args).await,
        Command::Connections(args) => connections::run(ctx, args).await,
        Command::Config => config::run(ctx).await,
        Command::Policies(args) => policies::run(ctx, args).await,
        Command::Certs => certs::run(ctx).await,
        Command::LogLevel(args) => log_level::run(ctx, args).await,
        Command::Top(args) => top::run(ctx, args).await,
        Command::Inject(args) => inject::run(args),
    }
}

/// What every command needs: the agent (dialed on first use), the deadline, the format,
/// where the output goes (stdout; a buffer in tests).
pub(crate) struct Ctx {
    target: Target,
    timeout: Duration,
    format: Format,
    channel: Option<Channel>,
    out: Box<dyn Write>,
    /// `out` is a terminal: `top` redraws in place.
    terminal: bool,
}

impl Ctx {
    fn new(target: Target, timeout: Duration, format: Format, out: Box<dyn Write>) -> Self {
        Ctx {
            target,
            timeout,
            format,
            channel: None,
            out,
            terminal: false,
        }
    }

    /// Writes `text`, flushed, with a final newline.
    fn print(&mut self, text: &str) -> Result<()> {
        output::write(&mut *self.out, text)
    }

    /// Prints `view` as JSON, YAML, or the text `table` makes of it (see [`output::render`]).
    fn emit<T: serde::Serialize>(
        &mut self,
        view: &T,
        table: impl FnOnce(&T) -> String,
    ) -> Result<()> {
        let text = output::render(self.format, view, table)?;
        self.print(&text)
    }

    /// A client of the agent, dialing it the first time.
    async fn client(&mut self) -> Result<AdminClient<Channel>> {
        let channel = match &self.channel {
            Some(channel) => channel.clone(),
            None => {
                let channel = connect::dial(&self.target, self.timeout).await?;
                self.channel = Some(channel.clone());
                channel
            }
        };
        Ok(AdminClient::new(channel))
    }

    /// Awaits a unary call within `--timeout`; errors name the call (`what`).
    async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        rpc::unary(what, self.timeout, call).await
    }
}

/// `namespace/name` of a pod, a Service or a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NamespacedName {
    pub namespace: String,
    pub name: String,
}

impl FromStr for NamespacedName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(NamespacedName {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(format!("expected NAMESPACE/NAME, got {text:?}")),
        }
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Seconds as a positive number (`10`, `0.5`).
/// The text of `file`, or of stdin for `-`, and its name for messages; empty input is an
/// error saying what was `expected`.
fn read_input(file: &std::path::Path, expected: &str) -> Result<(String, String)> {
    use anyhow::Context;
    use std::io::Read;
    let (text, name) = if file == std::path::Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin")?;
        (text, "stdin".to_string())
    } else {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        (text, file.display().to_string())
    };
    if text.trim().is_empty() {
        anyhow::bail!("{name} is empty: expected {expected}");
    }
    Ok((text, name))
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("expected a number of seconds, got {text:?}"))?;
    if seconds.is_nan() || seconds <= 0.0 {
        return Err(format!("expected more than 0 seconds, got {text}"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|err| format!("{text}: {err}"))
}

/// The error and its causes joined by `: `, leaving out a cause that repeats what an
/// earlier one said (hyper and rustls errors print their source in their own text).
fn describe(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if parts
            .last()
            .is_some_and(|last| text.starts_with(last.as_str()))
        {
            parts.pop();
        } else if parts.iter().any(|part| part.contains(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests;
