//! `outrider sidecar-init`: the pod's capture rules for sidecar mode, as Istio's and
//! Linkerd's init containers set them — iptables REDIRECT in the pod's own network
//! namespace. Outbound TCP goes to the sidecar's `:15001`, inbound TCP to its `:15006`;
//! left alone are the tunnel (`:15008`) and the sidecar's own ports, the sidecar's own
//! connections (by its socket mark and by its user), its deliveries to the app (from
//! 127.0.0.6 over loopback), the pod's loopback, and what the operator excludes.
//!
//! The rules go in with `iptables-restore --noflush`, one transaction per address family:
//! either all of a family's rules are in force or none. Run again, it changes nothing;
//! `--remove` takes them out again.
use std::{
    io::Write,
    net::IpAddr,
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context, bail};
use ipnet::IpNet;

use crate::{config::CaptureConfig, proxy::pod::INBOUND_PORT};

/// Our chains, in the nat table.
const INBOUND: &str = "OUTRIDER_INBOUND";
const OUTPUT: &str = "OUTRIDER_OUTPUT";
/// Where the sidecar delivers inbound connections from (see `proxy::deliver`).
const DELIVERY_SOURCE_V4: &str = "127.0.0.6/32";
/// Never redirected inbound: the tunnel and the sidecar's metrics and health ports.
const INBOUND_SKIP: [u16; 4] = [crate::proxy::pod::TUNNEL_PORT, 15020, 15021, 15090];

#[derive(Clone, Debug, clap::Args)]
pub struct InitArgs {
    /// The sidecar's outbound port.
    #[arg(long, default_value_t = CaptureConfig::default().outbound_port)]
    pub outbound_port: u16,
    /// The sidecar's inbound port.
    #[arg(long, default_value_t = INBOUND_PORT)]
    pub inbound_port: u16,
    /// The mark on the sidecar's own sockets (0: none; then `--proxy-uid` tells them).
    #[arg(long, default_value_t = CaptureConfig::default().agent_mark)]
    pub mark: u32,
    /// The user the sidecar runs as: its connections are not redirected.
    #[arg(long)]
    pub proxy_uid: Option<u32>,
    /// Inbound ports not redirected (comma-separated), besides 15008, 15020, 15021, 15090.
    #[arg(long, value_delimiter = ',')]
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports not redirected (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations not redirected (CIDRs, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_cidrs: Vec<IpNet>,
    /// Take the rules out instead.
    #[arg(long)]
    pub remove: bool,
    /// Print the rules (iptables-restore input) instead of applying them.
    #[arg(long)]
    pub dry_run: bool,
}

/// One address family's tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    fn holds(self, net: &IpNet) -> bool {
        matches!(
            (self, net.addr()),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
}

pub fn run(args: &InitArgs) -> anyhow::Result<ExitCode> {
    check(args)?;
    if !args.dry_run {
        crate::capabilities::require("outrider sidecar-init", crate::capabilities::SIDECAR_INIT)?;
    }
    for family in [Family::V4, Family::V6] {
        let existing = if args.dry_run {
            String::new()
        } else {
            current(family)?
        };
        let input = if args.remove {
            removal(&existing)
        } else {
            rules(args, family, &existing)
        };
        if args.dry_run {
            println!("# {}", family.restore());
            print!("{input}");
            continue;
        }
        restore(family, &input)?;
        eprintln!(
            "outrider sidecar-init: {} rules {}",
            match family {
                Family::V4 => "IPv4",
                Family::V6 => "IPv6",
            },
            if args.remove { "removed" } else { "in force" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn check(args: &InitArgs) -> anyhow::Result<()> {
    for (name, port) in [
        ("--outbound-port", args.outbound_port),
        ("--inbound-port", args.inbound_port),
    ] {
        if port == 0 {
            bail!("{name}: must not be 0");
        }
    }
    if args.outbound_port == args.inbound_port {
        bail!("--outbound-port and --inbound-port must differ");
    }
    if args.mark == 0 && args.proxy_uid.is_none() {
        bail!(
            "--mark 0 without --proxy-uid: the sidecar's own connections could not be told apart and would loop"
        );
    }
    Ok(())
}

/// The nat table as it is now.
fn current(family: Family) -> anyhow::Result<String> {
    let out = Command::new(family.save())
        .args(["-t", "nat"])
        .output()
        .with_context(|| format!("cannot run {} (is iptables installed?)", family.save()))?;
    if !out.status.success() {
        bail!(
            "{} -t nat failed ({}): {}",
            family.save(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn restore(family: Family, input: &str) -> anyhow::Result<()> {
    let mut child = Command::new(family.restore())
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", family.restore()))?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(input.as_bytes())
        .with_context(|| format!("writing to {}", family.restore()))?;
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {}", family.restore()))?;
    if !out.status.success() {
        bail!(
            "{} refused the rules ({}), nothing changed: {}\nthe rules were:\n{input}",
            family.restore(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The jumps from the built-in chains into ours.
fn jumps() -> [String; 2] {
    [
        format!("-A PREROUTING -p tcp -j {INBOUND}"),
        format!("-A OUTPUT -p tcp -j {OUTPUT}"),
    ]
}

/// iptables-restore input for one family. Declaring our chains empties them; the jumps
/// into them are added only where `existing` lacks them, so a second run changes nothing.
fn rules(args: &InitArgs, family: Family, existing: &str) -> String {
    let mut r = vec!["*nat".to_string()];
    r.push(format!(":{INBOUND} - [0:0]"));
    r.push(format!(":{OUTPUT} - [0:0]"));
    let mut inbound_skip: Vec<u16> = INBOUND_SKIP.to_vec();
    inbound_skip.extend(&args.exclude_inbound_ports);
    inbound_skip.sort_unstable();
    inbound_skip.dedup();
    for port in inbound_skip {
        r.push(format!("-A {INBOUND} -p tcp --dport {port} -j RETURN"));
    }
    r.push(format!(
        "-A {INBOUND} -p tcp -j REDIRECT --to-ports {}",
        args.inbound_port
    ));
    if args.mark != 0 {
        r.push(format!(
            "-A {OUTPUT} -m mark --mark {:#x}/0xffffffff -j RETURN",
            args.mark
        ));
    }
    if let Some(uid) = args.proxy_uid {
        r.push(format!("-A {OUTPUT} -m owner --uid-owner {uid} -j RETURN"));
    }
    if family == Family::V4 {
        r.push(format!(
            "-A {OUTPUT} -o lo -s {DELIVERY_SOURCE_V4} -j RETURN"
        ));
    }
    r.push(format!("-A {OUTPUT} -d {} -j RETURN", family.loopback()));
    for net in args
        .exclude_outbound_cidrs
        .iter()
        .filter(|n| family.holds(n))
    {
        r.push(format!("-A {OUTPUT} -d {net} -j RETURN"));
    }
    for port in &args.exclude_outbound_ports {
        r.push(format!("-A {OUTPUT} -p tcp --dport {port} -j RETURN"));
    }
    r.push(format!(
        "-A {OUTPUT} -p tcp -j REDIRECT --to-ports {}",
        args.outbound_port
    ));
    for jump in jumps() {
        if !existing.lines().any(|l| l.trim() == jump) {
            r.push(jump);
        }
    }
    r.push("COMMIT".to_string());
    r.join("\n") + "\n"
}

/// iptables-restore input that takes our rules out (nothing if they are not there).
fn removal(existing: &str) -> String {
    let mut r = vec!["*nat".to_string()];
    for jump in jumps() {
        if existing.lines().any(|l| l.trim() == jump) {
            r.push(jump.replacen("-A ", "-D ", 1));
        }
    }
    for chain in [INBOUND, OUTPUT] {
        if existing
            .lines()
            .any(|l| l.trim().starts_with(&format!(":{chain} ")))
        {
            r.push(format!("-F {chain}"));
            r.push(format!("-X {chain}"));
        }
    }
    r.push("COMMIT".to_string());
    r.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: InitArgs,
    }

    fn args(extra: &[&str]) -> InitArgs {
        let mut argv = vec!["sidecar-init"];
        argv.extend(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn ipv4_rules_redirect_both_ways_and_skip_the_sidecar() {
        let text = rules(
            &args(&[
                "--proxy-uid",
                "1337",
                "--exclude-outbound-cidrs",
                "10.96.0.1/32,fd00::/8",
            ]),
            Family::V4,
            "",
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "*nat");
        assert_eq!(*lines.last().unwrap(), "COMMIT");
        for want in [
            "-A OUTRIDER_INBOUND -p tcp --dport 15008 -j RETURN",
            "-A OUTRIDER_INBOUND -p tcp --dport 15020 -j RETURN",
            "-A OUTRIDER_INBOUND -p tcp -j REDIRECT --to-ports 15006",
            "-A OUTRIDER_OUTPUT -m mark --mark 0x4f52/0xffffffff -j RETURN",
            "-A OUTRIDER_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A OUTRIDER_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
            "-A OUTRIDER_OUTPUT -d 127.0.0.1/32 -j RETURN",
            "-A OUTRIDER_OUTPUT -d 10.96.0.1/32 -j RETURN",
            "-A OUTRIDER_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
            "-A PREROUTING -p tcp -j OUTRIDER_INBOUND",
            "-A OUTPUT -p tcp -j OUTRIDER_OUTPUT",
        ] {
            assert!(lines.contains(&want), "missing {want:?} in\n{text}");
        }
        assert!(
            !text.contains("fd00::/8"),
            "an IPv6 CIDR in IPv4 rules:\n{text}"
        );
        // Skips come before the redirects they guard.
        let pos = |l: &str| lines.iter().position(|x| *x == l).unwrap();
        assert!(
            pos("-A OUTRIDER_OUTPUT -m mark --mark 0x4f52/0xffffffff -j RETURN")
                < pos("-A OUTRIDER_OUTPUT -p tcp -j REDIRECT --to-ports 15001")
        );
    }

    #[test]
    fn ipv6_rules_use_ipv6_loopback_and_cidrs() {
        let text = rules(
            &args(&["--exclude-outbound-cidrs", "10.0.0.0/8,fd00::/8"]),
            Family::V6,
            "",
        );
        assert!(
            text.contains("-A OUTRIDER_OUTPUT -d ::1/128 -j RETURN"),
            "{text}"
        );
        assert!(
            text.contains("-A OUTRIDER_OUTPUT -d fd00::/8 -j RETURN"),
            "{text}"
        );
        assert!(
            !text.contains("10.0.0.0/8") && !text.contains("127.0.0.6"),
            "{text}"
        );
    }

    #[test]
    fn a_second_run_adds_no_second_jump_and_removal_undoes() {
        let first = rules(&args(&[]), Family::V4, "");
        let existing = format!(
            ":OUTRIDER_INBOUND - [0:0]\n:OUTRIDER_OUTPUT - [0:0]\n{}",
            first
        );
        let second = rules(&args(&[]), Family::V4, &existing);
        assert!(!second.contains("-A PREROUTING"), "{second}");
        assert!(!second.contains("-A OUTPUT -p tcp"), "{second}");
        let undo = removal(&existing);
        assert!(
            undo.contains("-D PREROUTING -p tcp -j OUTRIDER_INBOUND"),
            "{undo}"
        );
        assert!(undo.contains("-X OUTRIDER_OUTPUT"), "{undo}");
        assert_eq!(removal(""), "*nat\nCOMMIT\n");
    }

    #[test]
    fn settings_that_would_loop_are_refused() {
        let err = check(&args(&["--mark", "0"])).unwrap_err().to_string();
        assert!(err.contains("--proxy-uid"), "{err}");
        assert!(check(&args(&["--mark", "0", "--proxy-uid", "1337"])).is_ok());
        let err = check(&args(&["--inbound-port", "15001"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("differ"), "{err}");
    }
}
