//! The CONNECT request's authority and HBONE headers, both ways.
use std::net::{IpAddr, SocketAddr};

use super::super::{PORT, format_authority, headers::parse_forwarded_for};
use super::*;

#[test]
fn authorities_are_ip_port_with_ipv6_in_brackets() {
    let v4: SocketAddr = "10.1.2.3:8080".parse().unwrap();
    assert_eq!(format_authority(v4), "10.1.2.3:8080");
    let v6: SocketAddr = "[fd00::1%3]:443".parse().unwrap();
    assert_eq!(format_authority(v6), "[fd00::1]:443");
    let request = ConnectRequest::new(v6).to_http().unwrap();
    assert_eq!(request.method(), http::Method::CONNECT);
    assert_eq!(request.uri().authority().unwrap().as_str(), "[fd00::1]:443");
    assert!(request.headers().is_empty());
    assert_eq!(PORT, 15008);
}

#[test]
fn forwarded_for_is_read_in_its_usual_forms() {
    let cases = [
        ("for=\"10.0.0.1\"", "10.0.0.1"),
        ("for=10.0.0.1", "10.0.0.1"),
        ("for=\"10.0.0.1:4567\"", "10.0.0.1"),
        ("For=\"[fd00::7]\";host=web.shop", "fd00::7"),
        ("for=\"[fd00::7]:80\"", "fd00::7"),
        ("proto=https;for=\"10.0.0.2\", for=10.9.9.9", "10.0.0.2"),
    ];
    for (value, ip) in cases {
        assert_eq!(
            parse_forwarded_for(value),
            Some(ip.parse::<IpAddr>().unwrap()),
            "{value}"
        );
    }
    for value in [
        "",
        "for=unknown",
        "for=_hidden",
        "host=x",
        "for=\"[fd00::7\"",
    ] {
        assert_eq!(parse_forwarded_for(value), None, "{value}");
    }
}

#[test]
fn baggage_round_trips_and_ignores_what_it_does_not_know() {
    let baggage = Baggage {
        cluster: Some("c1".into()),
        namespace: Some("ns".into()),
        workload: Some(("statefulset".into(), "db".into())),
        service_name: Some("db".into()),
        service_version: Some("v2".into()),
        region: Some("eu".into()),
        zone: Some("eu-1a".into()),
        destination_service: Some("db.data.svc.cluster.local".into()),
    };
    let value = baggage.header_value().unwrap();
    assert_eq!(
        value,
        "k8s.cluster.name=c1,k8s.namespace.name=ns,k8s.statefulset.name=db,service.name=db,\
         service.version=v2,cloud.region=eu,cloud.availability_zone=eu-1a,\
         outrider.destination.service=db.data.svc.cluster.local"
    );
    assert_eq!(Baggage::parse(&value), baggage);
    assert_eq!(Baggage::default().header_value(), None);
    assert_eq!(
        Baggage::parse("other=1, k8s.namespace.name = ns ;prop=x,k8s.a.b.name=no,junk"),
        Baggage {
            namespace: Some("ns".into()),
            ..Baggage::default()
        }
    );
}

#[test]
fn traceparent_round_trips_and_rejects_malformed() {
    let tp = TraceParent::random();
    let text = tp.to_string();
    assert_eq!(text.len(), 55);
    assert_eq!(TraceParent::parse(&text), Some(tp));
    let fixed = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let parsed = TraceParent::parse(fixed).unwrap();
    assert_eq!(parsed.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    assert_eq!(parsed.to_string(), fixed);
    for bad in [
        "",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xx",
        "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        assert_eq!(TraceParent::parse(bad), None, "{bad}");
    }
}
