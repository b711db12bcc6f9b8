//! What an HBONE CONNECT carries, as ztunnel sends it: `:authority` = the original
//! destination `ip:port`, `baggage` (W3C baggage with the source's `k8s.*` and `service.*`
//! keys), `forwarded: for="<source ip>"` (RFC 7239) and `traceparent` (W3C trace context).
//! Built on the client ([`ConnectRequest::to_http`]) and parsed on the server.
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use http::{HeaderMap, HeaderValue, Method, Request, Version, header::FORWARDED};

use super::HboneError;

pub const BAGGAGE: &str = "baggage";
pub const TRACEPARENT: &str = "traceparent";

/// `ip:port`, IPv6 in brackets, without an IPv6 zone (not valid in an authority).
pub fn format_authority(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// One CONNECT to open through a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The original destination, sent as `:authority`.
    pub authority: SocketAddr,
    /// The source workload's IP, sent as `forwarded: for=…`.
    pub source: Option<IpAddr>,
    /// Sent as `baggage` when it has any key.
    pub baggage: Baggage,
    pub traceparent: Option<TraceParent>,
}

impl ConnectRequest {
    pub fn new(authority: SocketAddr) -> Self {
        Self {
            authority,
            source: None,
            baggage: Baggage::default(),
            traceparent: None,
        }
    }

    pub fn with_source(mut self, source: IpAddr) -> Self {
        self.source = Some(source);
        self
    }

    pub fn with_baggage(mut self, baggage: Baggage) -> Self {
        self.baggage = baggage;
        self
    }

    pub fn with_traceparent(mut self, traceparent: TraceParent) -> Self {
        self.traceparent = Some(traceparent);
        self
    }

    /// The HTTP/2 request (no body: the stream is the tunnel).
    pub fn to_http(&self) -> Result<Request<()>, HboneError> {
        let authority = format_authority(self.authority);
        let invalid = |reason: String| HboneError::InvalidRequest {
            authority: authority.clone(),
            reason,
        };
        let mut builder = Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri(authority.as_str());
        if let Some(baggage) = self.baggage.header_value() {
            let value = HeaderValue::from_str(&baggage)
                .map_err(|_| invalid(format!("baggage {baggage:?} is not a header value")))?;
            builder = builder.header(BAGGAGE, value);
        }
        if let Some(source) = self.source {
            builder = builder.header(FORWARDED, forwarded_for(source));
        }
        if let Some(traceparent) = &self.traceparent {
            builder = builder.header(TRACEPARENT, traceparent.to_string());
        }
        builder.body(()).map_err(|e| invalid(e.to_string()))
    }

    /// What a server reads back from a request's authority and headers.
    pub fn from_parts(authority: SocketAddr, headers: &HeaderMap) -> Self {
        Self {
            authority,
            source: headers
                .get(FORWARDED)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_forwarded_for),
            baggage: headers
                .get_all(BAGGAGE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .fold(Baggage::default(), |b, v| b.merge(Baggage::parse(v))),
            traceparent: headers
                .get(TRACEPARENT)
                .and_then(|v| v.to_str().ok())
                .and_then(TraceParent::parse),
        }
    }
}

/// `for="1.2.3.4"` or `for="[2001:db8::1]"` (RFC 7239: IPv6 quoted and in brackets).
fn forwarded_for(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => format!("for=\"{ip}\""),
        IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
    }
}

/// The IP of the first `for=` of a `forwarded` header. Also takes the `ip:port` form
/// some ztunnel versions send, and unquoted values.
pub fn parse_forwarded_for(value: &str) -> Option<IpAddr> {
    let first = value.split(',').next()?;
    let node = first.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim().trim_matches('"'))
    })?;
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    node.parse::<IpAddr>()
        .ok()
        .or_else(|| node.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// The source workload's metadata ztunnel sends as W3C `baggage`, key by key
/// (`k8s.cluster.name`, `k8s.namespace.name`, `k8s.<kind>.name`, `service.name`,
/// `service.version`, `cloud.region`, `cloud.availability_zone`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baggage {
    pub cluster: Option<String>,
    pub namespace: Option<String>,
    /// The workload's kind (`deployment`, `pod`, …) and name: `k8s.<kind>.name=<name>`.
    pub workload: Option<(String, String)>,
    pub service_name: Option<String>,
    pub service_version: Option<String>,
    pub region: Option<String>,
    pub zone: Option<String>,
    /// The Service the source dialed (`name.namespace.svc.<cluster domain>`), so the
    /// destination's metrics name it too; the destination believes it only when the
    /// Service has the destination pod among its endpoints.
    pub destination_service: Option<String>,
}

/// Our `baggage` member naming the Service dialed (Istio has none; others ignore it).
pub const DESTINATION_SERVICE_KEY: &str = "outrider.destination.service";

impl Baggage {
    /// `k=v,k=v`, or `None` when there is nothing to send.
    pub fn header_value(&self) -> Option<String> {
        let workload_key = self
            .workload
            .as_ref()
            .map(|(kind, _)| format!("k8s.{kind}.name"));
        let pairs = [
            ("k8s.cluster.name", self.cluster.as_deref()),
            ("k8s.namespace.name", self.namespace.as_deref()),
            (
                workload_key.as_deref().unwrap_or_default(),
                self.workload.as_ref().map(|(_, name)| name.as_str()),
            ),
            ("service.name", self.service_name.as_deref()),
            ("service.version", self.service_version.as_deref()),
            ("cloud.region", self.region.as_deref()),
            ("cloud.availability_zone", self.zone.as_deref()),
            (DESTINATION_SERVICE_KEY, self.destination_service.as_deref()),
        ];
        let value = pairs
            .iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(",");
        (!value.is_empty()).then_some(value)
    }

    /// Reads the keys above from a `baggage` value; other members (and W3C properties
    /// after `;`) are ignored.
    pub fn parse(value: &str) -> Self {
        let mut baggage = Self::default();
        for member in value.split(',') {
            let member = member.split(';').next().unwrap_or_default();
            let Some((key, val)) = member.split_once('=') else {
                continue;
            };
            let (key, val) = (key.trim(), val.trim().to_string());
            match key {
                "k8s.cluster.name" => baggage.cluster = Some(val),
                "k8s.namespace.name" => baggage.namespace = Some(val),
                "service.name" => baggage.service_name = Some(val),
                "service.version" => baggage.service_version = Some(val),
                "cloud.region" => baggage.region = Some(val),
                "cloud.availability_zone" => baggage.zone = Some(val),
                DESTINATION_SERVICE_KEY => baggage.destination_service = Some(val),
                _ => {
                    if let Some(kind) = key
                        .strip_prefix("k8s.")
                        .and_then(|k| k.strip_suffix(".name"))
                        .filter(|kind| !kind.is_empty() && !kind.contains('.'))
                    {
                        baggage.workload = Some((kind.to_string(), val));
                    }
                }
            }
        }
        baggage
    }

    fn merge(self, later: Self) -> Self {
        Self {
            cluster: later.cluster.or(self.cluster),
            namespace: later.namespace.or(self.namespace),
            workload: later.workload.or(self.workload),
            service_name: later.service_name.or(self.service_name),
            service_version: later.service_version.or(self.service_version),
            region: later.region.or(self.region),
            zone: later.zone.or(self.zone),
            destination_service: later.destination_service.or(self.destination_service),
        }
    }
}

/// A W3C `traceparent`: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// A new trace, sampled (flags 01), as ztunnel starts one per connection.
    pub fn random() -> Self {
        Self {
            trace_id: rand::random::<u128>().max(1),
            parent_id: rand::random::<u64>().max(1),
            flags: 1,
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        if version != "00"
            || parts.next().is_some()
            || !hex(trace, 32)
            || !hex(parent, 16)
            || !hex(flags, 2)
        {
            return None;
        }
        let parsed = Self {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            parent_id: u64::from_str_radix(parent, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (parsed.trace_id != 0 && parsed.parent_id != 0).then_some(parsed)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}
