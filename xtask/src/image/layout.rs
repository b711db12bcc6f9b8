//! What the image holds and how it starts: one table that `cargo xtask image` builds from
//! and that the `Containerfile` must match (checked by the tests beside it).

/// The agent and its CLI, from `target/release`, stripped: (binary, path in the image).
pub const BINARIES: &[(&str, &str)] = &[
    ("outrider", "/usr/local/bin/outrider"),
    ("outriderctl", "/usr/local/bin/outriderctl"),
];

/// iptables for `outrider sidecar-init`: the nf_tables multi-call binary, as Debian ships
/// it, and the names it answers to (symbolic links to it).
pub const XTABLES: &str = "/usr/sbin/xtables-nft-multi";
pub const XTABLES_NAMES: &[&str] = &[
    "/usr/sbin/iptables",
    "/usr/sbin/iptables-save",
    "/usr/sbin/iptables-restore",
    "/usr/sbin/ip6tables",
    "/usr/sbin/ip6tables-save",
    "/usr/sbin/ip6tables-restore",
];
/// iptables' match and target extensions, which it opens at run time (no `ldd` finds
/// them): copied whole.
pub const XTABLES_EXTENSIONS: &str = "/usr/lib/x86_64-linux-gnu/xtables";

/// Users and groups: root (the agent: Kubernetes grants added capabilities to uid 0 only;
/// the iptables init step) and the proxy's own user, the image's default.
pub const PASSWD: &str = "/etc/passwd";
pub const GROUP: &str = "/etc/group";
pub const PASSWD_TEXT: &str =
    "root:x:0:0:root:/:/nonexistent\noutrider:x:1337:1337:outrider:/:/nonexistent\n";
pub const GROUP_TEXT: &str = "root:x:0:\noutrider:x:1337:\n";

/// The image's configuration.
pub const ENTRYPOINT: &[&str] = &["/usr/local/bin/outrider"];
pub const CMD: &[&str] = &["run", "--config", "/etc/outrider/agent.yaml"];
/// Non-root unless the pod says otherwise (the DaemonSet and the init container run as 0
/// with their capabilities; the sidecar as 1337).
pub const USER: &str = "1337:1337";
pub const PATH: &str = "/usr/local/bin:/usr/sbin:/usr/bin";

/// The largest image we ship, uncompressed.
pub const MAX_BYTES: u64 = 40 * 1024 * 1024;
