//! Precompiled matchers for one field of a rule: string patterns grouped by kind (sorted
//! exact values, prefixes, suffixes, any), IP blocks as sorted merged ranges searched by
//! bisection, and port sets. Built once per policy set; matching never allocates.
use std::net::IpAddr;

use ipnet::IpNet;

use super::values::PatternKind;

/// The patterns of one field (`principals`, `hosts`, …), OR'ed.
#[derive(Debug)]
pub(super) struct StrMatcher {
    any: bool,
    /// Sorted (for bisection) unless `ignore_case`, then lowercased.
    exact: Box<[Box<str>]>,
    prefixes: Box<[Box<str>]>,
    suffixes: Box<[Box<str>]>,
    ignore_case: bool,
}

/// Above this many exact values, bisect instead of scanning.
const SCAN_LIMIT: usize = 8;

impl StrMatcher {
    /// `None` when there are no patterns (the field is absent).
    pub fn new<'a>(
        patterns: impl IntoIterator<Item = (PatternKind, &'a str)>,
        ignore_case: bool,
    ) -> Option<Self> {
        let mut any = false;
        let (mut exact, mut prefixes, mut suffixes) = (Vec::new(), Vec::new(), Vec::new());
        let mut seen = false;
        for (kind, literal) in patterns {
            seen = true;
            let literal: Box<str> = if ignore_case {
                literal.to_ascii_lowercase().into()
            } else {
                literal.into()
            };
            match kind {
                PatternKind::Any => any = true,
                PatternKind::Exact => exact.push(literal),
                PatternKind::Prefix => prefixes.push(literal),
                PatternKind::Suffix => suffixes.push(literal),
            }
        }
        if !seen {
            return None;
        }
        for list in [&mut exact, &mut prefixes, &mut suffixes] {
            list.sort_unstable();
            list.dedup();
        }
        Some(Self {
            any,
            exact: exact.into(),
            prefixes: prefixes.into(),
            suffixes: suffixes.into(),
            ignore_case,
        })
    }

    /// Whether `value` matches one of the patterns. An empty value matches none (Istio's
    /// `*` is "present and not empty"; a prefix or suffix match needs its literal).
    pub fn matches(&self, value: &str) -> bool {
        if value.is_empty() {
            return false;
        }
        if self.any {
            return true;
        }
        let v = value.as_bytes();
        if self.ignore_case {
            self.exact
                .iter()
                .any(|e| e.as_bytes().eq_ignore_ascii_case(v))
                || self
                    .prefixes
                    .iter()
                    .any(|p| v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p.as_bytes()))
                || self.suffixes.iter().any(|s| {
                    v.len() >= s.len() && v[v.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
                })
        } else {
            let exact = if self.exact.len() > SCAN_LIMIT {
                self.exact.binary_search_by(|e| (**e).cmp(value)).is_ok()
            } else {
                self.exact.iter().any(|e| **e == *value)
            };
            exact
                || self.prefixes.iter().any(|p| value.starts_with(&**p))
                || self.suffixes.iter().any(|s| value.ends_with(&**s))
        }
    }
}

/// IP blocks, OR'ed: inclusive ranges, sorted and merged, one list per family. IPv4-mapped
/// IPv6 addresses and blocks count as IPv4.
#[derive(Debug)]
pub(super) struct IpSet {
    v4: Box<[(u32, u32)]>,
    v6: Box<[(u128, u128)]>,
}

impl IpSet {
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Option<Self> {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        let mut seen = false;
        for net in nets {
            seen = true;
            match canonical_net(net) {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        seen.then(|| Self {
            v4: merge(v4).into(),
            v6: merge(v6).into(),
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match canonical_ip(ip) {
            IpAddr::V4(a) => in_ranges(&self.v4, u32::from(a)),
            IpAddr::V6(a) => in_ranges(&self.v6, u128::from(a)),
        }
    }
}

/// IPv4-mapped IPv6 addresses are the IPv4 address (as the workload directory has it).
pub(super) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.network().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), n.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

fn merge<T: Ord + Copy + num_like::Successor>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if last.1.succ().is_none_or(|next| start <= next) => {
                last.1 = last.1.max(end);
            }
            _ => out.push((start, end)),
        }
    }
    out
}

fn in_ranges<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let i = ranges.partition_point(|r| r.1 < x);
    i < ranges.len() && ranges[i].0 <= x
}

mod num_like {
    /// The next value, `None` at the top.
    pub trait Successor: Sized {
        fn succ(self) -> Option<Self>;
    }
    impl Successor for u32 {
        fn succ(self) -> Option<Self> {
            self.checked_add(1)
        }
    }
    impl Successor for u128 {
        fn succ(self) -> Option<Self> {
            self.checked_add(1)
        }
    }
}

/// Destination ports, OR'ed.
#[derive(Debug)]
pub(super) struct PortSet(Box<[u16]>);

impl PortSet {
    pub fn new(ports: impl IntoIterator<Item = u16>) -> Option<Self> {
        let mut ports: Vec<u16> = ports.into_iter().collect();
        if ports.is_empty() {
            return None;
        }
        ports.sort_unstable();
        ports.dedup();
        Some(Self(ports.into()))
    }

    pub fn contains(&self, port: u16) -> bool {
        if self.0.len() > SCAN_LIMIT {
            self.0.binary_search(&port).is_ok()
        } else {
            self.0.contains(&port)
        }
    }

    pub fn ports(&self) -> &[u16] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::super::values::split_pattern;
    use super::*;

    fn m(patterns: &[&str], ignore_case: bool) -> StrMatcher {
        StrMatcher::new(patterns.iter().map(|p| split_pattern(p)), ignore_case).unwrap()
    }

    #[test]
    fn string_patterns() {
        let p = m(&["/exact", "/api/*", "*.html"], false);
        for yes in ["/exact", "/api/", "/api/v1/x", "/index.html", ".html"] {
            assert!(p.matches(yes), "{yes}");
        }
        for no in ["/exact/", "/Exact", "/ap", "/index.htm", ""] {
            assert!(!p.matches(no), "{no}");
        }
        let any = m(&["*"], false);
        assert!(any.matches("x") && !any.matches(""));
        assert!(StrMatcher::new(std::iter::empty(), false).is_none());
        // Many exact values are bisected.
        let names: Vec<String> = (0..50).map(|i| format!("ns-{i}")).collect();
        let many = StrMatcher::new(names.iter().map(|n| split_pattern(n)), false).unwrap();
        assert!(many.matches("ns-0") && many.matches("ns-49") && !many.matches("ns-50"));
    }

    #[test]
    fn case_insensitive_patterns_for_hosts() {
        let h = m(&["Web.Shop", "api.*", "*.EXAMPLE.com"], true);
        for yes in ["web.shop", "WEB.SHOP", "API.x", "a.example.COM"] {
            assert!(h.matches(yes), "{yes}");
        }
        for no in ["web.shop:80", "ap", "example.com"] {
            assert!(!h.matches(no), "{no}");
        }
    }

    #[test]
    fn ip_sets_merge_and_bisect() {
        let nets = [
            "198.19.1.0/24",
            "198.19.2.0/24",
            "10.0.0.7/32",
            "fd00::/64",
            "::ffff:192.0.2.0/120",
        ]
        .map(|n| n.parse::<IpNet>().unwrap());
        let set = IpSet::new(nets).unwrap();
        assert_eq!(set.v4.len(), 3, "{:?}", set.v4);
        for yes in [
            "198.19.1.0",
            "198.19.2.255",
            "10.0.0.7",
            "fd00::1",
            "192.0.2.9",
            "::ffff:198.19.1.5",
        ] {
            assert!(set.contains(yes.parse().unwrap()), "{yes}");
        }
        for no in [
            "198.19.3.0",
            "10.0.0.8",
            "fd00:0:0:1::",
            "0.0.0.0",
            "255.255.255.255",
        ] {
            assert!(!set.contains(no.parse().unwrap()), "{no}");
        }
        let all = IpSet::new(["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()]).unwrap();
        assert!(all.contains("255.255.255.255".parse().unwrap()));
        assert!(all.contains("ffff::1".parse().unwrap()));
        assert!(IpSet::new(std::iter::empty()).is_none());
    }

    #[test]
    fn port_sets() {
        let p = PortSet::new([8080, 80, 80]).unwrap();
        assert_eq!(p.ports(), &[80, 8080]);
        assert!(p.contains(80) && !p.contains(81));
        let many = PortSet::new(1000..1100).unwrap();
        assert!(many.contains(1000) && many.contains(1099) && !many.contains(1100));
        assert!(PortSet::new([]).is_none());
    }
}
