//! SPIFFE IDs of workloads, `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`:
//! strict parsing (nothing else is a workload identity here) and display.
use std::{cmp::Ordering, fmt, hash, str::FromStr, sync::Arc};

/// Longest SPIFFE ID the spec allows (bytes, scheme included).
const MAX_ID_LEN: usize = 2048;
/// Longest trust domain the spec allows.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

/// A workload identity: trust domain, Kubernetes namespace, service account. Holds the
/// URI once (cheap to clone, free to display) with the offsets of its parts.
#[derive(Clone)]
#[allow(
    dead_code,
    reason = "namespace and service account are read by telemetry and tests"
)]
pub struct SpiffeId {
    uri: Arc<str>,
    td_end: usize,
    ns_start: usize,
    ns_end: usize,
    sa_start: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid SPIFFE ID {input:?}: {reason}")]
pub struct SpiffeIdError {
    input: String,
    reason: String,
}

impl SpiffeId {
    /// Builds an ID from its parts, with the same checks as parsing.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        let input = format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}");
        let fail = |reason: String| SpiffeIdError {
            input: input.clone(),
            reason,
        };
        check_trust_domain(trust_domain).map_err(fail)?;
        check_segment(namespace, "namespace").map_err(fail)?;
        check_segment(service_account, "service account").map_err(fail)?;
        if input.len() > MAX_ID_LEN {
            return Err(fail(format!("longer than {MAX_ID_LEN} bytes")));
        }
        let td_end = SCHEME.len() + trust_domain.len();
        let ns_start = td_end + "/ns/".len();
        let ns_end = ns_start + namespace.len();
        Ok(Self {
            uri: input.into(),
            td_end,
            ns_start,
            ns_end,
            sa_start: ns_end + "/sa/".len(),
        })
    }

    /// Parses exactly `spiffe://TD/ns/NS/sa/SA`: lowercase scheme, no port, user, query,
    /// fragment, percent-encoding, empty or dot segments, or trailing slash.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        let fail = |reason: &str| SpiffeIdError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if input.len() > MAX_ID_LEN {
            return Err(fail("longer than 2048 bytes"));
        }
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or_else(|| fail("must start with spiffe://"))?;
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| fail("has no path; expected /ns/<namespace>/sa/<service account>"))?;
        let segments: Vec<&str> = path.split('/').collect();
        let [ns_key, namespace, sa_key, service_account] = segments[..] else {
            return Err(fail(
                "path must be exactly /ns/<namespace>/sa/<service account>",
            ));
        };
        if ns_key != "ns" || sa_key != "sa" {
            return Err(fail(
                "path must be exactly /ns/<namespace>/sa/<service account>",
            ));
        }
        Self::new(trust_domain, namespace, service_account).map_err(|e| SpiffeIdError {
            input: input.to_string(),
            reason: e.reason,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.td_end]
    }

    pub fn namespace(&self) -> &str {
        &self.uri[self.ns_start..self.ns_end]
    }

    pub fn service_account(&self) -> &str {
        &self.uri[self.sa_start..]
    }

    /// The whole URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SpiffeId").field(&&*self.uri).finish()
    }
}

// The URI determines the offsets: compare and hash it alone.
impl PartialEq for SpiffeId {
    fn eq(&self, other: &Self) -> bool {
        self.uri == other.uri
    }
}

impl Eq for SpiffeId {}

impl hash::Hash for SpiffeId {
    fn hash<H: hash::Hasher>(&self, state: &mut H) {
        self.uri.hash(state);
    }
}

impl PartialOrd for SpiffeId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SpiffeId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.uri.cmp(&other.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// SPIFFE: a trust domain is lowercase letters, digits, '.', '-' and '_'.
pub(crate) fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() {
        return Err("empty trust domain".to_string());
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(format!(
            "trust domain longer than {MAX_TRUST_DOMAIN_LEN} bytes"
        ));
    }
    if td.contains(':') {
        return Err("trust domain must not carry a port".to_string());
    }
    if td.contains('@') {
        return Err("trust domain must not carry user info".to_string());
    }
    if let Some(bad) = td
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(*c)))
    {
        return Err(format!(
            "trust domain has {bad:?}; only lowercase letters, digits, '.', '-', '_' are allowed"
        ));
    }
    Ok(())
}

/// SPIFFE: a path segment is letters, digits, '.', '-' and '_', and neither `.` nor `..`.
fn check_segment(segment: &str, what: &str) -> Result<(), String> {
    if segment.is_empty() {
        return Err(format!("empty {what}"));
    }
    if segment == "." || segment == ".." {
        return Err(format!("{what} must not be {segment:?}"));
    }
    if let Some(bad) = segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
    {
        return Err(format!(
            "{what} has {bad:?}; only letters, digits, '.', '-', '_' are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_a_workload_id() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web-1").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "web-1");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/web-1");
        assert_eq!(id.as_str(), "spiffe://cluster.local/ns/shop/sa/web-1");
        assert_eq!(
            format!("{id:?}"),
            "SpiffeId(\"spiffe://cluster.local/ns/shop/sa/web-1\")"
        );
        assert_eq!(SpiffeId::new("cluster.local", "shop", "web-1").unwrap(), id);
        assert_eq!(
            "spiffe://td/ns/a/sa/b"
                .parse::<SpiffeId>()
                .unwrap()
                .namespace(),
            "a"
        );
    }

    #[test]
    fn refuses_everything_else() {
        for (input, why) in [
            ("", "start with spiffe://"),
            ("http://cluster.local/ns/a/sa/b", "start with spiffe://"),
            ("SPIFFE://cluster.local/ns/a/sa/b", "start with spiffe://"),
            ("spiffe://cluster.local", "no path"),
            ("spiffe:///ns/a/sa/b", "empty trust domain"),
            ("spiffe://Cluster.local/ns/a/sa/b", "trust domain has 'C'"),
            ("spiffe://cluster.local:443/ns/a/sa/b", "port"),
            ("spiffe://u@cluster.local/ns/a/sa/b", "user info"),
            ("spiffe://cluster.local/ns/a/sa/b/", "exactly"),
            ("spiffe://cluster.local/ns/a/sa", "exactly"),
            ("spiffe://cluster.local/ns/a/sa/b/c", "exactly"),
            ("spiffe://cluster.local/sa/b/ns/a", "exactly"),
            ("spiffe://cluster.local//ns/a/sa/b", "exactly"),
            ("spiffe://cluster.local/ns//sa/b", "empty namespace"),
            ("spiffe://cluster.local/ns/a/sa/", "empty service account"),
            ("spiffe://cluster.local/ns/../sa/b", "must not be \"..\""),
            (
                "spiffe://cluster.local/ns/a/sa/b%20c",
                "service account has '%'",
            ),
            (
                "spiffe://cluster.local/ns/a/sa/b?x=1",
                "service account has '?'",
            ),
            (
                "spiffe://cluster.local/ns/a/sa/b#f",
                "service account has '#'",
            ),
        ] {
            let err = SpiffeId::parse(input).unwrap_err().to_string();
            assert!(err.contains(why), "{input:?}: {err}");
            assert!(err.contains(&format!("{input:?}")), "{input:?}: {err}");
        }
        let long = format!("spiffe://td/ns/a/sa/{}", "b".repeat(2048));
        assert!(
            SpiffeId::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("2048")
        );
        assert!(SpiffeId::new("td", "a", "b/c").is_err());
    }
}
