//! What the benchmark reads about processes and the host from /proc: CPU time, memory and
//! its peak (VmHWM, which it resets), and the host's busy CPU time, in all and per CPU.
use anyhow::Context;

/// Clock ticks per second of /proc/<pid>/stat's times (`getconf CLK_TCK`; 100 on Linux).
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// User + system CPU seconds `pid` has used (its threads included).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name is in parentheses and may hold spaces: count fields after it.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path}: no command name"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ")": state is field 3 of the full line, utime 14, stime 15.
    let field = |n: usize| -> anyhow::Result<f64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .with_context(|| format!("{path}: field {n}"))
    };
    Ok((field(14)? + field(15)?) / ticks_per_second())
}

/// A `kB` line of a /proc status-like file, in bytes.
fn kb_line(path: &str, key: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kb| kb * 1024)
        .with_context(|| format!("{path}: no {key}"))
}

/// Resident memory of `pid` (shared pages counted in full).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    kb_line(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Proportional memory of `pid` (shared pages divided among their sharers).
pub fn pss_bytes(pid: u32) -> anyhow::Result<u64> {
    kb_line(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// The peak resident memory of `pid` since it started or since [`reset_peak_rss`].
pub fn peak_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    kb_line(&format!("/proc/{pid}/status"), "VmHWM:")
}

/// Resets `pid`'s VmHWM to its current RSS (`5` to /proc/PID/clear_refs), so that
/// [`peak_rss_bytes`] reads the peak from now on.
pub fn reset_peak_rss(pid: u32) -> anyhow::Result<()> {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(&path, "5").with_context(|| format!("writing 5 to {path}"))
}

/// Busy CPU seconds of the whole host since boot, all CPUs together: user, nice, system,
/// irq and softirq time from /proc/stat (not idle, iowait or steal). Clients, servers,
/// proxies and the kernel's work for them all count, as the peer harness counts them.
pub fn host_busy_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    busy_seconds(&stat, ticks_per_second())
}

fn busy_seconds(stat: &str, ticks: f64) -> anyhow::Result<f64> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat: no cpu line")?;
    Ok(ticks_of(line)?.busy / ticks)
}

/// One CPU's (or all CPUs') time from /proc/stat, in clock ticks since boot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ticks {
    /// user + nice + system + irq + softirq.
    pub busy: f64,
    /// busy + idle + iowait + steal: what the CPU had.
    pub all: f64,
}

/// Each CPU's [`Ticks`] now, by CPU number (the `cpuN` lines of /proc/stat).
pub fn per_cpu_ticks() -> anyhow::Result<std::collections::BTreeMap<usize, Ticks>> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    per_cpu(&stat)
}

fn per_cpu(stat: &str) -> anyhow::Result<std::collections::BTreeMap<usize, Ticks>> {
    stat.lines()
        .filter_map(|l| {
            let (name, _) = l.split_once(' ')?;
            let cpu = name.strip_prefix("cpu")?.parse::<usize>().ok()?;
            Some(ticks_of(l).map(|t| (cpu, t)))
        })
        .collect()
}

fn ticks_of(line: &str) -> anyhow::Result<Ticks> {
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse::<f64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("/proc/stat: {line:?}"))?;
    // user nice system idle iowait irq softirq steal …
    let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = fields[..] else {
        anyhow::bail!("/proc/stat: too few fields in {line:?}");
    };
    let busy = user + nice + system + irq + softirq;
    Ok(Ticks {
        busy,
        all: busy + idle + iowait + steal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        let mut spin = 0u64;
        for i in 0..20_000_000u64 {
            spin = spin.wrapping_add(i ^ (spin >> 3));
        }
        assert!(spin != 1);
        assert!(cpu_seconds(me).unwrap() > 0.0);
        let rss = rss_bytes(me).unwrap();
        assert!(rss > 1024 * 1024, "{rss}");
        let pss = pss_bytes(me).unwrap();
        assert!(pss > 0 && pss <= rss + 4096, "{pss} vs {rss}");
        assert!(host_busy_seconds().unwrap() > 0.0);
    }

    #[test]
    fn the_peak_is_reset_to_the_current_size() {
        // The only test of this process that resets its peak (they run in parallel).
        let me = std::process::id();
        // 64 MiB touched and freed: the peak stays up until reset.
        let big = vec![1u8; 64 << 20];
        assert!(big.iter().map(|b| u64::from(*b)).sum::<u64>() > 0);
        drop(big);
        let before = peak_rss_bytes(me).unwrap();
        assert!(before >= rss_bytes(me).unwrap() + (32 << 20), "{before}");
        reset_peak_rss(me).unwrap();
        let after = peak_rss_bytes(me).unwrap();
        assert!(after + (32 << 20) < before, "{after} vs {before}");
    }

    #[test]
    fn busy_time_leaves_idle_iowait_and_steal_out() {
        let stat = "cpu  100 10 50 9000 70 5 3 40 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(busy_seconds(stat, 100.0).unwrap(), 1.68);
        assert!(busy_seconds("cpu  1 2 3\n", 100.0).is_err());
        assert!(busy_seconds("intr 5\n", 100.0).is_err());
    }

    #[test]
    fn each_cpu_is_read_on_its_own() {
        let stat = "cpu  9 9 9 9 9 9 9 9 0 0\ncpu0 10 1 5 80 2 1 1 3 0 0\n\
                    cpu1 50 0 30 20 0 0 0 0 0 0\ncpufreq 1\nintr 5 6\n";
        let cpus = per_cpu(stat).unwrap();
        assert_eq!(cpus.len(), 2);
        assert_eq!(
            cpus[&0],
            Ticks {
                busy: 18.0,
                all: 103.0
            }
        );
        assert_eq!(
            cpus[&1],
            Ticks {
                busy: 80.0,
                all: 100.0
            }
        );
        assert!(per_cpu("cpu0 1 2 3\n").is_err());
        let live = per_cpu_ticks().unwrap();
        assert!(!live.is_empty() && live.values().all(|t| t.all >= t.busy && t.all > 0.0));
    }
}
