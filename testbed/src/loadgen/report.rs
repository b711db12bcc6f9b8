//! What a client run measured: [`Report`], printed for people (`Display`) or as one JSON
//! object (`--json`), which the benchmark parses back with the same type.
use std::fmt;

use serde::{Deserialize, Serialize};

/// The client's workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Request/response on persistent connections (closed loop, or open loop at --rate).
    Rr,
    /// Stream to the server's sink as fast as possible; throughput of acknowledged bytes.
    Bulk,
    /// A new connection per request/response: connections per second.
    Connect,
    /// HTTP/1.1 `GET /SIZE` on persistent (keep-alive) connections, closed loop: the
    /// server answers `--size` bytes; requests per second through a proxy's HTTP path.
    Http,
    /// Open `--connections` connections, one exchange on each, hold them all open for
    /// `--duration` (or until SIGINT/SIGTERM), then one more exchange on each and close:
    /// how many connections a path carries at once.
    Hold,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Rr => "rr",
            Mode::Bulk => "bulk",
            Mode::Connect => "connect",
            Mode::Http => "http",
            Mode::Hold => "hold",
        }
    }
}

/// Latency percentiles, maximum and mean, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// One client run. Counts cover the measured window only (not the warm-up).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub mode: Mode,
    /// The target as given.
    pub target: String,
    pub connections: usize,
    /// Open-loop rate in requests per second (all connections together); `None`: closed loop.
    pub rate: Option<f64>,
    /// Request/response message size in bytes (`bulk` writes 64 KiB chunks and ignores it).
    pub size: u32,
    /// The time the rates are computed over, in seconds: the measured window (`rr`,
    /// `connect`); for `bulk`, from the window's start until the last count came back;
    /// for `hold`, the whole run (opening, holding, closing).
    pub duration_s: f64,
    /// Completed requests (`rr`, `http`), connections (`connect`), acknowledged streams (`bulk`),
    /// connections held and verified at both ends (`hold`).
    pub requests: u64,
    /// Failed requests, connections or streams (refused, reset, cut short, timed out).
    pub errors: u64,
    /// Open loop: requests that waited for their connection (it was still busy at their
    /// scheduled time); their latency counts from the scheduled time.
    pub late: u64,
    /// Open loop: requests scheduled in the window but never sent, because their
    /// connection was still backed up when the window ended.
    #[serde(default)]
    pub unsent: u64,
    /// Payload bytes: both directions for `rr` and `connect`; for `bulk`, the bytes the
    /// server acknowledged; for `http`, the response bodies.
    pub bytes: u64,
    pub throughput_bytes_per_s: f64,
    pub requests_per_s: f64,
    /// Per request (`rr`, `http`, `connect`); for `hold`, per connection opened (connect and
    /// first exchange). `None` for `bulk`, or when nothing completed.
    pub latency_us: Option<LatencySummary>,
    /// The first error seen, if any.
    #[serde(default)]
    pub first_error: Option<String>,
}

fn micros(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.1} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1_000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1_000.0 && unit < UNITS.len() - 1 {
        value /= 1_000.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.connections == 1 { "" } else { "s" };
        let load = match (self.mode, self.rate) {
            (Mode::Bulk, _) => "64 KiB writes".to_string(),
            (Mode::Hold, _) => format!("held open, a {}-byte exchange at each end", self.size),
            (Mode::Http, _) => format!("HTTP/1.1 keep-alive, {}-byte responses", self.size),
            (_, Some(rate)) => format!("open loop at {rate} req/s, {}-byte messages", self.size),
            (_, None) => format!("closed loop, {}-byte messages", self.size),
        };
        writeln!(
            f,
            "loadgen {} to {}: {} connection{plural}, {load}",
            self.mode.as_str(),
            self.target,
            self.connections
        )?;
        writeln!(f, "  measured    {:.3} s", self.duration_s)?;
        let what = match self.mode {
            Mode::Rr | Mode::Http => "requests",
            Mode::Bulk => "streams",
            Mode::Connect => "connections",
            Mode::Hold => "held",
        };
        write!(
            f,
            "  {what:<11} {} ({:.1}/s), errors {}",
            self.requests, self.requests_per_s, self.errors
        )?;
        if self.rate.is_some() {
            write!(f, ", late {}, unsent {}", self.late, self.unsent)?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "  bytes       {} ({}/s, {:.3} Gbit/s)",
            bytes(self.bytes as f64),
            bytes(self.throughput_bytes_per_s),
            self.throughput_bytes_per_s * 8.0 / 1e9
        )?;
        if let Some(l) = &self.latency_us {
            writeln!(
                f,
                "  latency     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}",
                micros(l.p50),
                micros(l.p90),
                micros(l.p99),
                micros(l.p999),
                micros(l.max),
                micros(l.mean)
            )?;
        }
        if let Some(e) = &self.first_error {
            writeln!(f, "  first error {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_documented_fields_and_parses_back() {
        let report = Report {
            mode: Mode::Rr,
            target: "127.0.0.1:9000".into(),
            connections: 2,
            rate: None,
            size: 1024,
            duration_s: 3.0,
            requests: 300,
            errors: 0,
            late: 0,
            unsent: 0,
            bytes: 614_400,
            throughput_bytes_per_s: 204_800.0,
            requests_per_s: 100.0,
            latency_us: Some(LatencySummary {
                p50: 20.0,
                p90: 25.0,
                p99: 40.0,
                p999: 80.0,
                max: 100.0,
                mean: 21.5,
            }),
            first_error: None,
        };
        let json = serde_json::to_value(&report).unwrap();
        for key in [
            "mode",
            "target",
            "connections",
            "rate",
            "size",
            "duration_s",
            "requests",
            "errors",
            "late",
            "bytes",
            "throughput_bytes_per_s",
            "requests_per_s",
            "latency_us",
        ] {
            assert!(json.get(key).is_some(), "missing {key} in {json}");
        }
        assert_eq!(json["mode"], "rr");
        assert!(json["rate"].is_null());
        assert_eq!(json["latency_us"]["p999"], 80.0);
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
        let text = report.to_string();
        assert!(text.contains("p99 40.0 µs"), "{text}");
    }
}
