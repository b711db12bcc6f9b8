//! The validated scalar values of a policy: string patterns (exact, `prefix*`, `*suffix`,
//! `*`), HTTP path patterns, IP blocks and ports. Each checks itself as it is parsed, so a
//! bad value is reported at its own line, and serializes back to the text it was written as.
//! Their JSON schemas (for the custom resource definition) are written by hand: strings
//! with a `pattern` close to the checks (never stricter), ports as int-or-string.
use std::{borrow::Cow, fmt, marker::PhantomData, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// How a string pattern matches (Istio: "Any string field in the rule supports Exact,
/// Prefix, Suffix and Presence match").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatternKind {
    /// `abc` matches `abc` only.
    Exact,
    /// `abc*` matches `abc` and `abcd`.
    Prefix,
    /// `*abc` matches `abc` and `xabc`.
    Suffix,
    /// `*` matches any non-empty value (so never an absent one).
    Any,
}

/// Splits a checked pattern into its kind and literal part.
pub(super) fn split_pattern(pattern: &str) -> (PatternKind, &str) {
    if pattern == "*" {
        (PatternKind::Any, "")
    } else if let Some(rest) = pattern.strip_prefix('*') {
        (PatternKind::Suffix, rest)
    } else if let Some(rest) = pattern.strip_suffix('*') {
        (PatternKind::Prefix, rest)
    } else {
        (PatternKind::Exact, pattern)
    }
}

fn check_pattern(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty value (Istio rejects empty values too)".to_string());
    }
    let literal = split_pattern(s).1;
    if literal.contains('*') {
        return Err(format!(
            "{s:?}: `*` may only stand alone (any value), lead (suffix match `*x`) or trail \
             (prefix match `x*`); no other wildcard or regular expression is supported"
        ));
    }
    Ok(())
}

fn check_principal(s: &str) -> Result<(), String> {
    check_pattern(s)?;
    if s.starts_with("spiffe://") {
        return Err(format!(
            "{s:?}: write principals without `spiffe://`, e.g. \"cluster.local/ns/shop/sa/web\""
        ));
    }
    Ok(())
}

/// Characters that never appear unescaped in a request path (RFC 3986), so a pattern
/// holding one is a mistake, most often a regular expression.
const NOT_IN_PATHS: &[char] = &['\\', '^', '[', ']', '|', '"', '<', '>', '`'];

fn check_path(s: &str) -> Result<(), String> {
    if s.contains('{') || s.contains('}') {
        return Err(format!(
            "{s:?}: path templates (`{{*}}`, `{{**}}`) are not supported; use exact, prefix \
             `x*`, suffix `*x` or `*`"
        ));
    }
    check_pattern(s)?;
    let (kind, literal) = split_pattern(s);
    if matches!(kind, PatternKind::Exact | PatternKind::Prefix) && !literal.starts_with('/') {
        return Err(format!(
            "{s:?}: a path starts with `/` (or `*` for a suffix match)"
        ));
    }
    if let Some(c) = s.chars().find(|c| matches!(c, '?' | '#')) {
        return Err(format!(
            "{s:?}: `{c}` never matches: paths are matched without the query string and fragment"
        ));
    }
    if s.contains(".*") || s.contains(|c: char| NOT_IN_PATHS.contains(&c) || c.is_whitespace()) {
        return Err(format!(
            "{s:?}: looks like a regular expression; paths are exact, prefix `x*`, suffix \
             `*x` or `*`"
        ));
    }
    Ok(())
}

/// The schema `pattern` of [`Pattern`] and [`Principal`]: `*` alone, leading or trailing
/// (not both). (That a principal has no `spiffe://` would need a look-ahead, which the RE2
/// syntax of Kubernetes' `pattern` lacks.)
pub(super) const PATTERN_REGEX: &str = r"^(\*|\*[^*]+|[^*]+\*?)$";
/// The schema `pattern` of [`PathPattern`]: `*`, `*suffix`, `/exact` or `/prefix*`, without
/// `?`, `#`, templates, regular-expression characters or whitespace, and no `.*`.
pub(super) const PATH_REGEX: &str = concat!(
    r#"^(\*|\*[^*{}?#\\^\[\]|"<>\x60\s]+|/[^*{}?#\\^\[\]|"<>\x60\s]*"#,
    r#"|/([^*{}?#\\^\[\]|"<>\x60\s]*[^*{}?#\\^\[\]|"<>\x60\s.])?\*)$"#
);
/// The schema `pattern` of [`IpBlock`]: the characters of an address, an optional prefix
/// length. Looser than the check.
pub(super) const IP_BLOCK_REGEX: &str = r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$";

macro_rules! string_value {
    ($(#[$doc:meta])* $name:ident, $expecting:literal, $check:path, $regex:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Checks `value` as the YAML reader does.
            pub fn new(value: impl Into<String>) -> Result<Self, String> {
                let value = value.into();
                $check(&value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// How it matches, and the literal part.
            pub fn kind(&self) -> (PatternKind, &str) {
                split_pattern(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(StrVisitor::<Self>(PhantomData, $expecting))
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "description": $expecting,
                    "minLength": 1,
                    "pattern": $regex,
                })
            }
        }
    };
}

string_value!(
    /// A pattern for `namespaces`, `methods` and `hosts` (and their `not` forms).
    Pattern,
    "a string: exact, `prefix*`, `*suffix` or `*`",
    check_pattern,
    PATTERN_REGEX
);
string_value!(
    /// A pattern for `principals`/`notPrincipals`: a SPIFFE ID without `spiffe://`,
    /// e.g. `cluster.local/ns/shop/sa/web`, or a prefix/suffix/`*` pattern of one.
    Principal,
    "a principal such as cluster.local/ns/shop/sa/web",
    check_principal,
    PATTERN_REGEX
);
string_value!(
    /// A pattern for `paths`/`notPaths`: exact `/a`, prefix `/a/*`, suffix `*.html` or `*`.
    PathPattern,
    "an HTTP path pattern: exact, `/prefix*`, `*suffix` or `*`",
    check_path,
    PATH_REGEX
);

/// Deserializes a string through `T::from_str`, so that an error is raised while the
/// YAML reader still knows where the value is (it then reports its line and index).
struct StrVisitor<T>(PhantomData<T>, &'static str);

impl<T: FromStr<Err = String>> de::Visitor<'_> for StrVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        T::from_str(v).map_err(E::custom)
    }
}

/// An entry of `ipBlocks`/`notIpBlocks`: one address (`198.19.1.7`) or a CIDR block
/// (`198.19.1.0/24`). Host bits below the prefix are ignored, as Envoy's `CidrRange` does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IpBlock {
    text: String,
    net: IpNet,
}

impl IpBlock {
    pub fn new(text: impl Into<String>) -> Result<Self, String> {
        let text = text.into();
        let net = match text.parse::<IpNet>() {
            Ok(net) => net.trunc(),
            Err(_) => match text.parse::<IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => {
                    return Err(format!(
                        "{text:?} is not an IP address or CIDR block (e.g. 198.19.1.7, \
                         198.19.1.0/24, fd00::/64)"
                    ));
                }
            },
        };
        Ok(Self { text, net })
    }

    /// The block as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn net(&self) -> IpNet {
        self.net
    }
}

impl FromStr for IpBlock {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::new(s)
    }
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for IpBlock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for IpBlock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor::<Self>(
            PhantomData,
            "an IP address or CIDR block",
        ))
    }
}

impl JsonSchema for IpBlock {
    fn schema_name() -> Cow<'static, str> {
        "IpBlock".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "an IP address or CIDR block (198.19.1.7, 198.19.1.0/24, fd00::/64)",
            "pattern": IP_BLOCK_REGEX,
        })
    }
}

/// An entry of `ports`/`notPorts`: a destination port, 1–65535. Istio writes ports as
/// strings (`"8080"`); a YAML number (`8080`) is accepted too and written back as a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(u16);

impl Port {
    pub fn new(port: u16) -> Result<Self, String> {
        if port == 0 {
            return Err("port 0 is not a destination port (1 to 65535)".to_string());
        }
        Ok(Self(port))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl FromStr for Port {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a port (a number from 1 to 65535; no ranges or names)");
        if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u32 = s.parse().map_err(|_| bad())?;
        let n = u16::try_from(n).map_err(|_| bad())?;
        Self::new(n).map_err(|_| bad())
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl de::Visitor<'_> for PortVisitor {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port, 1 to 65535")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Port, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Port, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Port, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(PortVisitor)
    }
}

/// Int-or-string, as Kubernetes' own ports. The range is only checked when read: kube's
/// structural rewriter drops the `type` of `anyOf` branches, so a range on the integer branch
/// and a pattern on the string branch would not survive.
impl JsonSchema for Port {
    fn schema_name() -> Cow<'static, str> {
        "Port".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "a destination port, 1 to 65535, as a string (\"8080\") or a number",
            "x-kubernetes-int-or-string": true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_exact_prefix_suffix_or_any() {
        let kind = |s: &str| Pattern::new(s).map(|p| p.kind().0);
        assert_eq!(kind("web.shop"), Ok(PatternKind::Exact));
        assert_eq!(kind("web.*"), Ok(PatternKind::Prefix));
        assert_eq!(kind("*.shop"), Ok(PatternKind::Suffix));
        assert_eq!(kind("*"), Ok(PatternKind::Any));
        assert_eq!(Pattern::new("web.*").unwrap().kind().1, "web.");
        for bad in ["", "a*b", "*a*", "**", "a**"] {
            assert!(Pattern::new(bad).is_err(), "{bad:?}");
        }
        assert!(Principal::new("cluster.local/ns/shop/sa/*").is_ok());
        let err = Principal::new("spiffe://cluster.local/ns/a/sa/b").unwrap_err();
        assert!(err.contains("without `spiffe://`"), "{err}");
    }

    #[test]
    fn paths_refuse_what_istio_cannot_match() {
        for good in ["/exact", "/api/*", "*.html", "*", "/", "/a(b)+c$"] {
            assert!(PathPattern::new(good).is_ok(), "{good:?}");
        }
        for (bad, why) in [
            ("/api/*/x", "`*` may only"),
            ("api/*", "starts with `/`"),
            ("/a?b=1", "query string"),
            ("/a#top", "query string"),
            ("/api/{*}/x", "path templates"),
            ("/api/.*", "regular expression"),
            ("^/api", "starts with `/`"),
            ("/api/[0-9]", "regular expression"),
            ("/a|/b", "regular expression"),
            ("/a b", "regular expression"),
        ] {
            let err = PathPattern::new(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn ip_blocks_take_addresses_and_cidrs() {
        assert_eq!(
            IpBlock::new("198.19.1.7").unwrap().net(),
            "198.19.1.7/32".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            IpBlock::new("198.19.1.7/24").unwrap().net(),
            "198.19.1.0/24".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            IpBlock::new("198.19.1.7/24").unwrap().as_str(),
            "198.19.1.7/24"
        );
        assert!(IpBlock::new("fd00::/64").is_ok());
        for bad in ["198.19.1.300", "198.19.1.0/33", "web", "", "10.0.0.0/8/8"] {
            assert!(IpBlock::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ports_are_1_to_65535() {
        assert_eq!("8080".parse::<Port>().unwrap().get(), 8080);
        assert_eq!("65535".parse::<Port>().unwrap().get(), 65535);
        for bad in [
            "0", "65536", "99999999", "-1", "+80", "80-90", "http", "", " 80",
        ] {
            assert!(bad.parse::<Port>().is_err(), "{bad:?}");
        }
        let ports: Vec<Port> = serde_yaml_ng::from_str("[8080, '9090']").unwrap();
        assert_eq!(ports, vec![Port(8080), Port(9090)]);
        assert_eq!(
            serde_yaml_ng::to_string(&ports).unwrap(),
            "- '8080'\n- '9090'\n"
        );
        assert!(serde_yaml_ng::from_str::<Vec<Port>>("[0]").is_err());
    }
}
