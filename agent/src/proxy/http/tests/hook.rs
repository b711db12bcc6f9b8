//! The hook's view of a request: authority from `:authority`/absolute form or `Host`,
//! host without its port, Envoy's flags.
use http::{Method, Version};

use super::*;
use crate::proxy::http::Failure;

fn info(request: Request<()>) -> RequestInfo {
    RequestInfo::from_request(&request)
}

#[test]
fn authority_and_host() {
    let origin = info(
        Request::get("/a/b?c=d")
            .header("host", "svc.ns.svc.cluster.local:8080")
            .body(())
            .unwrap(),
    );
    assert_eq!(origin.path(), "/a/b");
    assert_eq!(
        origin.authority.as_deref(),
        Some("svc.ns.svc.cluster.local:8080")
    );
    assert_eq!(origin.host(), Some("svc.ns.svc.cluster.local"));
    assert_eq!(origin.version, Version::HTTP_11);

    let h2 = info(
        Request::post("http://[fd00::1]:9090/x")
            .version(Version::HTTP_2)
            .header("host", "ignored")
            .body(())
            .unwrap(),
    );
    assert_eq!(h2.method, Method::POST);
    assert_eq!(h2.authority.as_deref(), Some("[fd00::1]:9090"));
    assert_eq!(h2.host(), Some("[fd00::1]"));

    let bare = info(
        Request::get("/")
            .header("host", "[fd00::1]")
            .body(())
            .unwrap(),
    );
    assert_eq!(bare.host(), Some("[fd00::1]"));
    assert_eq!(info(Request::get("/").body(()).unwrap()).authority, None);
}

#[test]
fn response_flags() {
    assert_eq!(Failure::UpstreamReset.flags().as_str(), "UC");
    assert_eq!(Failure::UpstreamProtocol.flags().as_str(), "UPE");
    assert_eq!(Failure::DownstreamReset.flags().as_str(), "DC");
    assert_eq!(Failure::Revoked.flags().as_str(), "DENY");
    assert!(!Failure::DownstreamReset.is_upstream());
    assert!(!Failure::Revoked.is_upstream());
    let Verdict::Deny { status, body } = Verdict::rbac_denied() else {
        panic!("rbac_denied is a deny");
    };
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, Bytes::from_static(b"RBAC: access denied"));
}
