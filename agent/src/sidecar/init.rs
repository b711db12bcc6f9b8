//! `outrider sidecar-init`: the pod's capture rules for sidecar mode, as Istio's and
//! Linkerd's init containers set them — iptables REDIRECT in the pod's own network
//! namespace. Outbound TCP goes to the sidecar's `:15001`, inbound TCP to its `:15006`;
//! left alone are the tunnel (`:15008`) and the sidecar's own ports, the sidecar's own
//! connections (by its socket mark and by its user), its deliveries to the app (from
//! 127.0.0.6 over loopback), the pod's loopback, and what the operator excludes.
//!
//! With `--keep-source-ip` (a sidecar that delivers from the client's IP, `outrider
//! sidecar --keep-source-ip`), also the way back for those deliveries, as the node agent
//! sets it up in node mode (`proxy::return_path`) with iptables' CONNMARK in place of
//! the sysctl: the sidecar's deliveries (marked `--delivery-mark`) are not redirected,
//! their connection takes the mark, the app's replies get it back (mangle `OUTPUT`), and
//! the rule `fwmark <mark> lookup <table>` with `local default dev lo` there sends them
//! back over `lo`.
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
/// Our chain in the mangle table (`--keep-source-ip`).
const RETURN_PATH: &str = "OUTRIDER_RETURN_PATH";
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
    /// Also set up the way back for a sidecar that delivers from the client's IP
    /// (`outrider sidecar --keep-source-ip`).
    #[arg(long)]
    pub keep_source_ip: bool,
    /// The mark on the sidecar's deliveries (`capture.deliveryMark`).
    #[arg(long, default_value_t = CaptureConfig::default().delivery_mark)]
    pub delivery_mark: u32,
    /// The routing table of the way back (`capture.deliveryTable`).
    #[arg(long, default_value_t = CaptureConfig::default().delivery_table)]
    pub delivery_table: u32,
    /// The priority of its rule (`capture.deliveryRulePriority`).
    #[arg(long, default_value_t = CaptureConfig::default().delivery_rule_priority)]
    pub delivery_rule_priority: u32,
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
        let (existing, existing_mangle) = if args.dry_run {
            (String::new(), String::new())
        } else {
            (current(family, "nat")?, current(family, "mangle")?)
        };
        let mut input = if args.remove {
            removal(&existing)
        } else {
            rules(args, family, &existing)
        };
        if args.remove {
            input += &mangle_removal(&existing_mangle);
        } else if args.keep_source_ip {
            input += &mangle_rules(args, &existing_mangle);
        }
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
    if !args.dry_run && (args.keep_source_ip || args.remove) {
        way_back(args)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The rule and route of the way back, added (`--keep-source-ip`) or removed.
fn way_back(args: &InitArgs) -> anyhow::Result<()> {
    use crate::rtnetlink::{Family, RouteSocket};
    let netns = crate::netns::Netns::current()?;
    let mut sock = RouteSocket::open(&netns).context("a routing socket")?;
    let (mark, table, priority) = (
        args.delivery_mark,
        args.delivery_table,
        args.delivery_rule_priority,
    );
    for family in Family::BOTH {
        if args.remove {
            sock.delete_mark_rule(family, mark, table, priority)?;
            sock.delete_local_default(family, table)?;
        } else {
            sock.add_local_default(family, table)?;
            sock.add_mark_rule(family, mark, table, priority)?;
        }
    }
    eprintln!(
        "outrider sidecar-init: the way back for deliveries from clients' IPs {}",
        if args.remove { "removed" } else { "in force" }
    );
    Ok(())
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
    if args.keep_source_ip && (args.delivery_mark == 0 || args.delivery_mark == args.mark) {
        bail!("--delivery-mark must be neither 0 nor --mark");
    }
    if args.mark == 0 && args.proxy_uid.is_none() {
        bail!(
            "--mark 0 without --proxy-uid: the sidecar's own connections could not be told apart and would loop"
        );
    }
    Ok(())
}

/// The `table` as it is now.
fn current(family: Family, table: &str) -> anyhow::Result<String> {
    let out = Command::new(family.save())
        .args(["-t", table])
        .output()
        .with_context(|| format!("cannot run {} (is iptables installed?)", family.save()))?;
    if !out.status.success() {
        bail!(
            "{} -t {table} failed ({}): {}",
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
    if args.keep_source_ip {
        r.push(format!(
            "-A {OUTPUT} -m mark --mark {:#x}/0xffffffff -j RETURN",
            args.delivery_mark
        ));
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

/// The jump from mangle's `OUTPUT` into our chain.
fn mangle_jump() -> String {
    format!("-A OUTPUT -j {RETURN_PATH}")
}

/// iptables-restore input for the mangle table: a delivery's connection takes its mark,
/// and every packet of a connection with that mark (the app's replies) gets it, so the
/// rule routes them back over `lo`.
fn mangle_rules(args: &InitArgs, existing: &str) -> String {
    let mark = format!("{:#x}/0xffffffff", args.delivery_mark);
    let mut r = vec![
        "*mangle".to_string(),
        format!(":{RETURN_PATH} - [0:0]"),
        format!("-A {RETURN_PATH} -m mark --mark {mark} -j CONNMARK --set-xmark {mark}"),
        format!("-A {RETURN_PATH} -m connmark --mark {mark} -j MARK --set-xmark {mark}"),
    ];
    if !existing.lines().any(|l| l.trim() == mangle_jump()) {
        r.push(mangle_jump());
    }
    r.push("COMMIT".to_string());
    r.join("\n") + "\n"
}

/// iptables-restore input that takes our mangle rules out (nothing if not there).
fn mangle_removal(existing: &str) -> String {
    let mut r = vec!["*mangle".to_string()];
    if existing.lines().any(|l| l.trim() == mangle_jump()) {
        r.push(mangle_jump().replacen("-A ", "-D ", 1));
    }
    if existing
        .lines()
        .any(|l| l.trim().starts_with(&format!(":{RETURN_PATH} ")))
    {
        r.push(format!("-F {RETURN_PATH}"));
        r.push(format!("-X {RETURN_PATH}"));
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
    fn keeping_the_source_ip_skips_deliveries_and_marks_their_replies() {
        let a = args(&["--keep-source-ip", "--proxy-uid", "1337"]);
        let nat = rules(&a, Family::V6, "");
        let skip = "-A OUTRIDER_OUTPUT -m mark --mark 0x4f53/0xffffffff -j RETURN";
        let lines: Vec<&str> = nat.lines().collect();
        let pos = |l: &str| lines.iter().position(|x| *x == l);
        assert!(
            pos(skip) < pos("-A OUTRIDER_OUTPUT -p tcp -j REDIRECT --to-ports 15001"),
            "{nat}"
        );
        assert!(pos(skip).is_some(), "{nat}");
        assert!(!rules(&args(&[]), Family::V4, "").contains("0x4f53"));
        let mangle = mangle_rules(&a, "");
        for want in [
            "*mangle",
            "-A OUTRIDER_RETURN_PATH -m mark --mark 0x4f53/0xffffffff -j CONNMARK --set-xmark 0x4f53/0xffffffff",
            "-A OUTRIDER_RETURN_PATH -m connmark --mark 0x4f53/0xffffffff -j MARK --set-xmark 0x4f53/0xffffffff",
            "-A OUTPUT -j OUTRIDER_RETURN_PATH",
            "COMMIT",
        ] {
            assert!(
                mangle.lines().any(|l| l == want),
                "missing {want:?} in\n{mangle}"
            );
        }
        let existing = format!(":OUTRIDER_RETURN_PATH - [0:0]\n{mangle}");
        assert!(!mangle_rules(&a, &existing).contains("-A OUTPUT"));
        let undo = mangle_removal(&existing);
        assert!(undo.contains("-D OUTPUT -j OUTRIDER_RETURN_PATH"), "{undo}");
        assert!(undo.contains("-X OUTRIDER_RETURN_PATH"), "{undo}");
        assert_eq!(mangle_removal(""), "*mangle\nCOMMIT\n");
        let err = check(&args(&["--keep-source-ip", "--delivery-mark", "20306"]));
        assert!(err.is_err());
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
