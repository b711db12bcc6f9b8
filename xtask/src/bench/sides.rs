//! Which side's CPU is full, per test of the peer harness. While the harness runs, a thread
//! samples each CPU's busy time (/proc/stat) every 100 ms; afterwards each test of each
//! path gets the busy share of the client pod's CPUs and of the server pod's (the harness
//! pins each pod's processes, its proxy's included, to its own CPUs: `--cpu-layout split`,
//! its default). A side near 100 % sets the rate; both well below it mean the test spent
//! its time waiting, not working — as when both sides take turns instead of overlapping.
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use serde_json::Value;

use super::procfs::{self, Ticks};

const EVERY: Duration = Duration::from_millis(100);

/// Every CPU's ticks at one moment (`at`: seconds since the epoch, as the harness's
/// `t_start`).
pub struct Sample {
    at: f64,
    cpus: BTreeMap<usize, Ticks>,
}

/// The sampling thread; [`Sampler::stop`] ends it and hands over its samples.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<Vec<Sample>>>,
}

impl Sampler {
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            loop {
                let cpus = procfs::per_cpu_ticks()?;
                let at = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .context("the clock is before 1970")?
                    .as_secs_f64();
                samples.push(Sample { at, cpus });
                if stopped.load(Ordering::Relaxed) {
                    return Ok(samples);
                }
                std::thread::sleep(EVERY);
            }
        });
        Self { stop, thread }
    }

    pub fn stop(self) -> anyhow::Result<Vec<Sample>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the CPU sampler panicked"))?
    }
}

/// The busy share (0–1) of `cpus` from the first sample at or after `from` to the last at
/// or before `to`; `None` if fewer than two samples fall between.
fn busy_between(samples: &[Sample], cpus: &[usize], from: f64, to: f64) -> Option<f64> {
    let first = samples.iter().find(|s| s.at >= from)?;
    let last = samples.iter().rev().find(|s| s.at <= to)?;
    if last.at <= first.at {
        return None;
    }
    let (mut busy, mut all) = (0.0, 0.0);
    for cpu in cpus {
        let (a, b) = (first.cpus.get(cpu)?, last.cpus.get(cpu)?);
        busy += b.busy - a.busy;
        all += b.all - a.all;
    }
    (all > 0.0).then(|| (busy / all).clamp(0.0, 1.0))
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(xs[n / 2]),
        _ => Some((xs[n / 2 - 1] + xs[n / 2]) / 2.0),
    }
}

fn cpu_list(v: &Value) -> Option<Vec<usize>> {
    v.as_array()?
        .iter()
        .map(|c| c.as_u64().and_then(|c| usize::try_from(c).ok()))
        .collect()
}

/// The table for peer.md: per test and path, the client's and the server's busy share
/// (medians over rounds). Empty when the run did not pin the pods to CPUs of their own.
pub fn markdown(run: &Value, samples: &[Sample]) -> anyhow::Result<String> {
    let cpus = &run["meta"]["topology"]["cpus"];
    let (Some(client), Some(server)) = (cpu_list(&cpus["client"]), cpu_list(&cpus["server"]))
    else {
        return Ok(String::new());
    };
    let runs = run["samples"]
        .as_array()
        .context("the peer harness's JSON has no samples array")?;
    // (test, path) → [(client, server)] over rounds.
    let mut shares: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    for entry in runs {
        let (Some(test), Some(path), Some(start), Some(wall)) = (
            entry["test"].as_str(),
            entry["path"].as_str(),
            entry["t_start"].as_f64(),
            entry["resources"]["wall_s"].as_f64(),
        ) else {
            continue;
        };
        // The load generator's start and end are left out.
        let (from, to) = (
            start + (wall / 4.0).min(1.0),
            start + wall - (wall / 4.0).min(0.5),
        );
        if let (Some(c), Some(s)) = (
            busy_between(samples, &client, from, to),
            busy_between(samples, &server, from, to),
        ) {
            shares
                .entry((test.to_string(), path.to_string()))
                .or_default()
                .push((c, s));
        }
    }
    if shares.is_empty() {
        return Ok(String::new());
    }
    let names = |key: &str| -> Vec<String> {
        run["meta"]["args"][key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (tests, paths) = (names("tests"), names("paths"));
    let mut md = String::from("\n## Which side's CPU is full\n\n");
    md.push_str(&format!(
        "Busy share of the client pod's CPUs {client:?} / the server pod's {server:?} during each test \
         (user, system, irq and softirq time in /proc/stat, sampled by xtask every 100 ms, the \
         load generator's first and last moments left out; medians over rounds). Each pod's \
         proxy runs on its pod's CPUs. A side near 100 % sets the rate; both well below it \
         mean the test waited more than it worked.\n\n"
    ));
    md.push_str("| test |");
    for path in &paths {
        md.push_str(&format!(" {path} |"));
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(paths.len()));
    md.push('\n');
    for test in &tests {
        md.push_str(&format!("| {test} |"));
        for path in &paths {
            let over_rounds = shares.get(&(test.clone(), path.clone()));
            let cell = over_rounds
                .and_then(|v| {
                    Some((
                        median(v.iter().map(|x| x.0).collect())?,
                        median(v.iter().map(|x| x.1).collect())?,
                    ))
                })
                .map_or("-".to_string(), |(c, s)| {
                    format!("{:.0} % / {:.0} %", c * 100.0, s * 100.0)
                });
            md.push_str(&format!(" {cell} |"));
        }
        md.push('\n');
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Samples every 0.5 s from t = 100 s: CPU 0 busy `c` of the time, CPU 1 `s`.
    fn samples(c: f64, s: f64) -> Vec<Sample> {
        (0..=40)
            .map(|i| {
                let t = f64::from(i) * 50.0; // ticks at 100 per second
                Sample {
                    at: 100.0 + f64::from(i) * 0.5,
                    cpus: BTreeMap::from([
                        (
                            0,
                            Ticks {
                                busy: c * t,
                                all: t,
                            },
                        ),
                        (
                            1,
                            Ticks {
                                busy: s * t,
                                all: t,
                            },
                        ),
                    ]),
                }
            })
            .collect()
    }

    fn run(cpus: Value) -> Value {
        json!({
            "meta": {
                "args": {"tests": ["http", "conn"], "paths": ["direct", "outrider-mtls"]},
                "topology": {"cpus": cpus},
            },
            "samples": [
                {"round": 1, "test": "http", "path": "direct", "t_start": 101.0, "resources": {"wall_s": 5.0}},
                {"round": 1, "test": "http", "path": "outrider-mtls", "t_start": 107.0, "resources": {"wall_s": 5.0}},
                {"round": 2, "test": "http", "path": "outrider-mtls", "t_start": 113.0, "resources": {"wall_s": 5.0}},
                // Too short to fall between two samples: left out.
                {"round": 1, "test": "conn", "path": "direct", "t_start": 113.1, "resources": {"wall_s": 0.2}},
            ],
        })
    }

    #[test]
    fn each_side_gets_its_own_cpus_busy_share() {
        let md = markdown(
            &run(json!({"client": [0], "server": [1]})),
            &samples(0.25, 0.98),
        )
        .unwrap();
        assert!(md.contains("| test | direct | outrider-mtls |"), "{md}");
        assert!(md.contains("| http | 25 % / 98 % | 25 % / 98 % |"), "{md}");
        assert!(md.contains("| conn | - | - |"), "{md}");
        // The sides swapped: so are the figures.
        let md = markdown(
            &run(json!({"client": [1], "server": [0]})),
            &samples(0.25, 0.98),
        )
        .unwrap();
        assert!(md.contains("| http | 98 % / 25 % |"), "{md}");
    }

    #[test]
    fn only_the_window_of_the_test_counts() {
        // CPU 0 idle until t = 108 s, then full: the test from 107 s (window 108–111.5 s)
        // is all busy; the one from 101 s (window 102–105.5 s) all idle.
        let samples: Vec<Sample> = (0..=40)
            .map(|i| {
                let at = 100.0 + f64::from(i) * 0.5;
                let busy = (at - 108.0).max(0.0) * 100.0;
                Sample {
                    at,
                    cpus: BTreeMap::from([
                        (
                            0,
                            Ticks {
                                busy,
                                all: (at - 100.0) * 100.0,
                            },
                        ),
                        (
                            1,
                            Ticks {
                                busy: 0.0,
                                all: (at - 100.0) * 100.0,
                            },
                        ),
                    ]),
                }
            })
            .collect();
        let md = markdown(&run(json!({"client": [0], "server": [1]})), &samples).unwrap();
        assert!(md.contains("| http | 0 % / 0 % | 100 % / 0 % |"), "{md}");
    }

    #[test]
    fn a_run_without_pinned_sides_or_samples_gets_no_table() {
        let none = markdown(&run(json!(null)), &samples(0.5, 0.5)).unwrap();
        assert!(none.is_empty());
        // No samples (the sampler failed): no table either, and no error.
        let unsampled = markdown(&run(json!({"client": [0], "server": [1]})), &[]).unwrap();
        assert!(unsampled.is_empty());
        assert!(
            markdown(
                &json!({"meta": {"topology": {"cpus": {"client": [0], "server": [1]}}}}),
                &[]
            )
            .is_err()
        );
        assert_eq!(median(vec![3.0, 1.0, 2.0, 10.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn the_sampler_samples_until_stopped() {
        let sampler = Sampler::start();
        std::thread::sleep(Duration::from_millis(250));
        let samples = sampler.stop().unwrap();
        assert!(samples.len() >= 2, "{}", samples.len());
        assert!(samples.windows(2).all(|w| w[0].at <= w[1].at));
    }
}
