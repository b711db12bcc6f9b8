//! `outrider-testbed loadgen`: the benchmark's TCP workload. One `server` (every mode on one
//! port, see [`protocol`]) and a `client` that drives request/response (closed or open
//! loop, latency corrected for coordinated omission), bulk streaming,
//! connection-per-request load or HTTP/1.1 GETs over keep-alive connections (`http`), or
//! holds many connections open at once (`hold`), and
//! reports rates and latency percentiles, for people or as JSON ([`Report`]).
//!
//! Cheap by design, so the generator is not the bottleneck on a small machine: a
//! current-thread runtime per process unless `--threads` says otherwise, no locks or
//! shared counters on the hot path, TCP_NODELAY on every socket.
//!
//! From Rust: [`client::run`] and [`server::serve`] (tests run both in one process).
pub mod client;
pub mod histogram;
mod pacer;
pub mod protocol;
pub mod report;
pub mod server;

#[cfg(test)]
mod tests;

use std::{net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Args, Subcommand};

pub use client::{ClientOptions, WINDOW_END, WINDOW_START, run as run_client};
pub use report::{LatencySummary, Mode, Report};
pub use server::{ServerCounts, ServerStats, bind, serve};

#[derive(Debug, Subcommand)]
pub enum LoadgenCommand {
    /// Serve every load mode on one or more addresses until SIGTERM or SIGINT.
    Server(ServerArgs),
    /// Drive load against a server and report throughput and latency.
    Client(ClientArgs),
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on, e.g. 0.0.0.0:9000 or [::]:9000 (repeatable). Prints
    /// "listening on ADDR" on stderr once bound.
    #[arg(long, value_name = "ADDR", required = true)]
    pub listen: Vec<SocketAddr>,
    /// Runtime threads (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub threads: usize,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The server, as ip:port or host:port.
    #[arg(long, value_name = "ADDR")]
    pub target: String,
    /// The workload.
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// Measured time, in seconds (hold: how long the connections are held).
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = seconds)]
    pub duration: Duration,
    /// Unmeasured time before it, in seconds.
    #[arg(long, default_value = "1", value_name = "SECS", value_parser = seconds)]
    pub warmup: Duration,
    /// Connections (rr, bulk, http, hold) or parallel workers (connect).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub connections: usize,
    /// rr only: open loop at this many requests per second in total, evenly spaced and
    /// spread over the connections; a request that has to wait for its busy connection
    /// counts its latency from its scheduled time. Without it: closed loop.
    #[arg(long, value_name = "REQ_PER_S")]
    pub rate: Option<f64>,
    /// Request and response size in bytes (rr, connect); http: the response body's.
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    pub size: u32,
    /// A connect, exchange or write that takes longer fails, in seconds.
    #[arg(long, default_value = "5", value_name = "SECS", value_parser = seconds)]
    pub timeout: Duration,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Print "loadgen: measured window starts" and "… ends" on stderr as the measured
    /// window starts and ends (not for hold), for a caller that samples counters over it.
    #[arg(long)]
    pub window_marks: bool,
    /// Runtime threads (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub threads: usize,
}

fn seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(value).map_err(|_| format!("{text:?} is not a valid duration"))
}

pub fn run(cmd: LoadgenCommand) -> anyhow::Result<ExitCode> {
    init_logging();
    match cmd {
        LoadgenCommand::Server(args) => runtime(args.threads)?.block_on(run_server(args)),
        LoadgenCommand::Client(args) => {
            let json = args.json;
            let hold = args.mode == Mode::Hold;
            let opts = ClientOptions {
                target: args.target,
                mode: args.mode,
                duration: args.duration,
                warmup: args.warmup,
                connections: args.connections,
                rate: args.rate,
                size: args.size,
                timeout: args.timeout,
                release: tokio_util::sync::CancellationToken::new(),
                window_marks: args.window_marks,
            };
            let report = runtime(args.threads)?.block_on(async {
                if hold {
                    // SIGINT or SIGTERM ends the hold early; the connections still close
                    // cleanly and the report comes out.
                    let release = opts.release.clone();
                    let mut terminate =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .context("cannot watch for SIGTERM")?;
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = terminate.recv() => {}
                            _ = tokio::signal::ctrl_c() => {}
                        }
                        release.cancel();
                    });
                }
                client::run(opts).await
            })?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_server(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let mut listeners = Vec::new();
    for addr in &args.listen {
        let listener = bind(*addr).with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!("listening on {}", listener.local_addr()?);
        listeners.push(listener);
    }
    let stats = Arc::new(ServerStats::default());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    tokio::select! {
        () = serve(listeners, stats.clone()) => {}
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let c = stats.counts();
    eprintln!(
        "loadgen server stopping: {} connections, {} errors, {} exchanges, {} bytes sunk, {} bytes sourced",
        c.connections, c.errors, c.exchanges, c.sink_bytes, c.source_bytes
    );
    Ok(ExitCode::SUCCESS)
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let runtime = if threads <= 1 {
        // The runtime runs on this thread.
        pacer::precise_timers();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .on_thread_start(pacer::precise_timers)
            .enable_all()
            .build()
    };
    runtime.context("cannot start the async runtime")
}

/// Logs to stderr (`RUST_LOG`, default warnings): bad connections show at debug.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
