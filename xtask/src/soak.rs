//! `cargo xtask soak [--minutes N]`: mixed traffic through two nodes' agents for N
//! minutes (default 10), for people before a release — not part of `cargo xtask test`.
//!
//! On the benchmark's testbed (`bench::testbed::Bed`), client pods on node-a and server
//! pods on node-b run our load generator, plaintext (a server outside the mesh: node-a's
//! agent only) and mutual TLS (both in node mode: the cross-node tunnel):
//!
//! - all along: request/response at a fixed 200/s over 8 persistent connections, on
//!   each path;
//! - every period (about 10 s), on one path then the other: 2 s of connection churn (a
//!   new connection per exchange, as fast as it goes), 2 s of bulk streaming, and 500
//!   connections opened at once, held for a second and closed.
//!
//! After each period it samples each agent's RSS and open descriptors, and counts the
//! warnings and errors in its log (a failed connection is logged as a warning). At the
//! end it prints a summary and fails if RSS grew without bound (after the first two
//! periods, a warm-up in which the agents see each kind of load once, the last third
//! of the samples averages more than the first third by over 10% or 8 MiB, whichever is
//! larger), if descriptors leaked (once the load stops, each agent holds more than it
//! did before it began, its pooled tunnel connections aside), or if anything failed (a
//! load generator's error, an agent's warning).
use std::{
    collections::HashSet,
    fs::File,
    io::{BufRead, BufReader, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{
    bench::{procfs, testbed::Bed},
    build_tools,
};

const SPEC: &str = "# cargo xtask soak: clients on node-a, servers on node-b
nodes:
  - name: node-a
    pods:
      - {namespace: soak, name: rr-plain, serviceAccount: client}
      - {namespace: soak, name: rr-mtls, serviceAccount: client}
      - {namespace: soak, name: churn, serviceAccount: client}
      - {namespace: soak, name: bulk, serviceAccount: client}
      - {namespace: soak, name: hold, serviceAccount: client}
  - name: node-b
    pods:
      - {namespace: soak, name: plain, enrolled: false}
      - {namespace: soak, name: mtls, serviceAccount: server}
";
const NODES: [&str; 2] = ["node-a", "node-b"];
const PORT: u16 = 9000;
const PERIOD: Duration = Duration::from_secs(10);
/// The first periods (each kind of burst on each path once) are the warm-up: the agents
/// grow to their working size then, and their samples are left out of the verdict.
const WARMUP_PERIODS: usize = 2;
/// RSS may grow by this share of the first third's average, or by [`RSS_SLACK`].
const RSS_GROWTH: f64 = 0.10;
const RSS_SLACK: f64 = 8.0 * 1024.0 * 1024.0;
/// Descriptors an agent may hold beyond its baseline once the load has stopped.
const FD_SLACK: usize = 4;
/// The longest soak `--minutes` accepts.
pub const MAX_MINUTES: u64 = 120;

/// The load generators that run all along; killed if the soak stops early.
struct Background(Vec<(String, Child, PathBuf)>);

impl Drop for Background {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One agent's log, read as it grows: its warnings and errors.
struct LogWatch {
    file: File,
    offset: u64,
    problems: u64,
    first: Vec<String>,
}

impl LogWatch {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            file,
            offset: 0,
            problems: 0,
            first: Vec::new(),
        })
    }

    /// Reads the complete lines added since the last call.
    fn update(&mut self) -> anyhow::Result<()> {
        self.file.seek(SeekFrom::Start(self.offset))?;
        let mut reader = BufReader::new(&self.file);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            self.offset += n as u64;
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if v["level"] == "WARN" || v["level"] == "ERROR" {
                self.problems += 1;
                if self.first.len() < 5 {
                    self.first.push(line.trim().to_string());
                }
            }
        }
        Ok(())
    }
}

/// One sample of both agents.
struct Sample {
    at: Duration,
    rss: [u64; 2],
    fds: [usize; 2],
}

pub fn run(minutes: u64) -> anyhow::Result<()> {
    if minutes == 0 || minutes > MAX_MINUTES {
        bail!("--minutes must be in 1..={MAX_MINUTES}");
    }
    let tools = build_tools()?;
    let work = std::env::temp_dir().join(format!("outrider-soak-{}", std::process::id()));
    let result = soak(&tools, &work, Duration::from_secs(minutes * 60));
    match &result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&work);
        }
        Err(_) => eprintln!(
            "xtask: soak: agent logs kept in {}",
            work.join("state").display()
        ),
    }
    result
}

fn soak(tools: &Path, work: &Path, length: Duration) -> anyhow::Result<()> {
    let mut bed = Bed::up(tools, SPEC, work)?;
    let exe = tools.to_str().context("the outrider path is not UTF-8")?;
    let listen = format!("0.0.0.0:{PORT}");
    for server in ["soak/plain", "soak/mtls"] {
        bed.spawn(server, &[exe, "loadgen", "server", "--listen", &listen])?;
    }
    for server in ["soak/plain", "soak/mtls"] {
        bed.wait_listening(server, PORT)?;
    }
    let target =
        |server: &str| -> anyhow::Result<String> { Ok(format!("{}:{PORT}", bed.ipv4(server)?)) };
    let plain = target("soak/plain")?;
    let mtls = target("soak/mtls")?;
    let pids = [bed.agent_pid(NODES[0])?, bed.agent_pid(NODES[1])?];
    let mut logs = [
        LogWatch::open(&bed.state.join(NODES[0]).join("agent.log"))?,
        LogWatch::open(&bed.state.join(NODES[1]).join("agent.log"))?,
    ];

    // Warm-up, then the baseline: what each agent holds with the paths set up and idle.
    for (pod, target) in [("soak/rr-plain", &plain), ("soak/rr-mtls", &mtls)] {
        let report = loadgen(&bed, exe, pod, target, &["--mode", "rr", "--duration", "1"])?;
        check(pod, &report)?;
    }
    std::thread::sleep(Duration::from_secs(1));
    let baseline = [
        fds_without_tunnels(&bed, pids[0])?,
        fds_without_tunnels(&bed, pids[1])?,
    ];
    for log in &mut logs {
        log.update()?;
    }

    let seconds = length.as_secs().to_string();
    let mut background = Background(Vec::new());
    for (pod, target) in [("soak/rr-plain", &plain), ("soak/rr-mtls", &mtls)] {
        let out = work.join(format!("{}.json", pod.replace('/', "-")));
        let child = bed
            .exec(
                pod,
                &[
                    exe,
                    "loadgen",
                    "client",
                    "--target",
                    target,
                    "--mode",
                    "rr",
                    "--rate",
                    "200",
                    "--connections",
                    "8",
                    "--duration",
                    &seconds,
                    "--warmup",
                    "0",
                    "--timeout",
                    "10",
                    "--json",
                ],
            )
            .stdin(Stdio::null())
            .stdout(File::create(&out)?)
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the load generator in {pod}"))?;
        background.0.push((pod.to_string(), child, out));
    }
    eprintln!(
        "xtask: soak: {} min of mixed traffic; a sample every {} s",
        length.as_secs() / 60,
        PERIOD.as_secs()
    );
    println!(
        "{:>6}  {:>12} {:>6}  {:>12} {:>6}  {:>8} {:>11} {:>8}",
        "time", "node-a RSS", "fds", "node-b RSS", "fds", "agent", "connections", "load"
    );
    println!(
        "{:>6}  {:>12} {:>6}  {:>12} {:>6}  {:>8} {:>11} {:>8}",
        "", "", "", "", "", "warnings", "in bursts", "errors"
    );

    let started = Instant::now();
    let mut samples = Vec::new();
    let mut load_errors = 0u64;
    let mut first_load_error: Option<String> = None;
    let mut exchanges = 0u64;
    let mut period = 0u64;
    while started.elapsed() + PERIOD <= length {
        let begun = Instant::now();
        let (path, target) = if period.is_multiple_of(2) {
            ("plain", &plain)
        } else {
            ("mtls", &mtls)
        };
        let bursts: [(&str, &[&str]); 3] = [
            (
                "soak/churn",
                &["--mode", "connect", "--connections", "2", "--duration", "2"],
            ),
            (
                "soak/bulk",
                &["--mode", "bulk", "--connections", "2", "--duration", "2"],
            ),
            (
                "soak/hold",
                &["--mode", "hold", "--connections", "500", "--duration", "1"],
            ),
        ];
        for (pod, args) in bursts {
            let report = loadgen(&bed, exe, pod, target, args)?;
            let errors = report["errors"].as_u64().unwrap_or(0);
            if errors > 0 && first_load_error.is_none() {
                first_load_error = Some(format!(
                    "{pod} → {path}: {}",
                    report["first_error"].as_str().unwrap_or("?")
                ));
            }
            load_errors += errors;
            exchanges += report["requests"].as_u64().unwrap_or(0);
        }
        if let Some(rest) = PERIOD.checked_sub(begun.elapsed()) {
            std::thread::sleep(rest);
        }
        for (name, child, _) in &mut background.0 {
            if let Some(status) = child.try_wait()? {
                bail!("the load generator in {name} stopped early ({status})");
            }
        }
        for log in &mut logs {
            log.update()?;
        }
        let sample = Sample {
            at: started.elapsed(),
            rss: [procfs::rss_bytes(pids[0])?, procfs::rss_bytes(pids[1])?],
            fds: [fd_count(pids[0])?, fd_count(pids[1])?],
        };
        println!(
            "{:>3}:{:02}  {:>12} {:>6}  {:>12} {:>6}  {:>8} {:>11} {:>8}{}",
            sample.at.as_secs() / 60,
            sample.at.as_secs() % 60,
            mib(sample.rss[0] as f64),
            sample.fds[0],
            mib(sample.rss[1] as f64),
            sample.fds[1],
            logs[0].problems + logs[1].problems,
            exchanges,
            load_errors,
            if samples.len() < WARMUP_PERIODS {
                "  (warm-up)"
            } else {
                ""
            }
        );
        samples.push(sample);
        period += 1;
    }

    // The steady load ends on its own at `length`; its reports.
    let mut steady = Vec::new();
    for (name, child, out) in &mut background.0 {
        let status = child.wait()?;
        let text = std::fs::read_to_string(&*out)?;
        if !status.success() {
            bail!("the load generator in {name} failed ({status}): {text}");
        }
        let report: Value =
            serde_json::from_str(&text).with_context(|| format!("the report of {name}: {text}"))?;
        let errors = report["errors"].as_u64().unwrap_or(0);
        if errors > 0 && first_load_error.is_none() {
            first_load_error = Some(format!(
                "{name}: {}",
                report["first_error"].as_str().unwrap_or("?")
            ));
        }
        load_errors += errors;
        steady.push((name.clone(), report));
    }
    background.0.clear();

    // Every descriptor back (the pooled tunnel connections aside, closed after a
    // minute idle).
    let settle = Instant::now() + Duration::from_secs(30);
    let mut after = [0usize; 2];
    for i in 0..2 {
        loop {
            after[i] = fds_without_tunnels(&bed, pids[i])?;
            if after[i] <= baseline[i] + FD_SLACK || Instant::now() > settle {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    for log in &mut logs {
        log.update()?;
    }

    // The summary and the verdict.
    println!();
    println!(
        "soak: {:.1} min, {} samples ({WARMUP_PERIODS} of the warm-up)",
        started.elapsed().as_secs_f64() / 60.0,
        samples.len()
    );
    for (name, report) in &steady {
        println!(
            "  steady {name}: {} requests at {:.0}/s, {} errors, p50 {:.0} µs, p99 {:.0} µs",
            report["requests"],
            report["requests_per_s"].as_f64().unwrap_or(0.0),
            report["errors"],
            report["latency_us"]["p50"].as_f64().unwrap_or(0.0),
            report["latency_us"]["p99"].as_f64().unwrap_or(0.0)
        );
    }
    println!("  bursts: {exchanges} connections, streams and held connections");
    let mut failures = Vec::new();
    let judged = &samples[WARMUP_PERIODS.min(samples.len())..];
    for i in 0..2 {
        let rss: Vec<f64> = judged.iter().map(|s| s.rss[i] as f64).collect();
        if rss.is_empty() {
            break;
        }
        let third = (rss.len() / 3).max(1);
        let first = average(&rss[..third]);
        let last = average(&rss[rss.len() - third..]);
        let allowed = (first * RSS_GROWTH).max(RSS_SLACK);
        let peak = rss.iter().copied().fold(0.0, f64::max);
        println!(
            "  {} agent: RSS first third {}, last third {} ({:+.1}%, at most +{}), peak {}; \
             descriptors {} before the load, {} after (tunnel connections aside); {} warnings",
            NODES[i],
            mib(first),
            mib(last),
            (last - first) / first * 100.0,
            mib(allowed),
            mib(peak),
            baseline[i],
            after[i],
            logs[i].problems
        );
        if last - first > allowed {
            failures.push(format!(
                "{}: RSS grew from {} to {} (first third to last third)",
                NODES[i],
                mib(first),
                mib(last)
            ));
        }
        if after[i] > baseline[i] + FD_SLACK {
            failures.push(format!(
                "{}: {} descriptors after the load, {} before",
                NODES[i], after[i], baseline[i]
            ));
        }
        if logs[i].problems > 0 {
            failures.push(format!(
                "{}: {} warnings or errors in its log; the first:\n    {}",
                NODES[i],
                logs[i].problems,
                logs[i].first.join("\n    ")
            ));
        }
    }
    if judged.len() < 3 {
        failures.push(format!(
            "only {} samples after the warm-up: too short to judge",
            judged.len()
        ));
    }
    if load_errors > 0 {
        failures.push(format!(
            "{load_errors} failed requests; the first: {}",
            first_load_error.unwrap_or_default()
        ));
    }
    if failures.is_empty() {
        println!("soak: passed");
        Ok(())
    } else {
        println!("soak: FAILED");
        for f in &failures {
            println!("  - {f}");
        }
        bail!("the soak failed: {}", failures.len());
    }
}

/// Runs the load generator's client in `pod` against `target` to the end; its report.
fn loadgen(bed: &Bed, exe: &str, pod: &str, target: &str, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = vec![
        exe,
        "loadgen",
        "client",
        "--target",
        target,
        "--warmup",
        "0",
        "--timeout",
        "10",
        "--json",
    ];
    all.extend(args);
    let out = bed.exec(pod, &all).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!(
            "loadgen client {args:?} in {pod} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "the report of {pod}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn check(pod: &str, report: &Value) -> anyhow::Result<()> {
    if report["errors"].as_u64().unwrap_or(0) > 0 {
        bail!("{pod}: the warm-up failed: {report}");
    }
    Ok(())
}

fn average(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / 1024.0 / 1024.0)
}

fn fd_count(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?
        .count())
}

/// The agent's open descriptors, less its tunnel connections (an end on port 15008, in
/// any of the testbed's pods), which the pool keeps a minute after their last stream.
fn fds_without_tunnels(bed: &Bed, pid: u32) -> anyhow::Result<usize> {
    let mut sockets = HashSet::new();
    let mut fds = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        fds += 1;
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            {
                sockets.insert(inode);
            }
        }
    }
    let tunnel = format!(":{:04X}", 15008);
    let mut held = 0;
    for pod in bed.pod_keys() {
        let out = bed
            .exec(&pod, &["cat", "/proc/net/tcp", "/proc/net/tcp6"])
            .output()?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode …
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9
                && (cols[1].ends_with(&tunnel) || cols[2].ends_with(&tunnel))
                && cols[3] != "0A"
                && cols[9].parse::<u64>().is_ok_and(|i| sockets.contains(&i))
            {
                held += 1;
            }
        }
    }
    Ok(fds - held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_counted_as_the_log_grows() {
        let dir = std::env::temp_dir().join(format!("xtask-soak-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.log");
        std::fs::write(
            &path,
            "{\"level\":\"INFO\"}\n{\"level\":\"WARN\",\"x\":1}\n",
        )
        .unwrap();
        let mut watch = LogWatch::open(&path).unwrap();
        watch.update().unwrap();
        assert_eq!(watch.problems, 1);
        // A line being written is read once it is complete.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"not json\n{\"level\":\"ERR").unwrap();
        watch.update().unwrap();
        assert_eq!(watch.problems, 1);
        f.write_all(b"OR\"}\n").unwrap();
        watch.update().unwrap();
        assert_eq!(watch.problems, 2);
        assert_eq!(watch.first.len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
