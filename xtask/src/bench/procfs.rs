//! What the benchmark reads about processes from /proc: CPU time and memory.
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
    }
}
