//! The request a destination checks is the request its app gets: before the hook sees a
//! request, its target is rewritten in place — the path normalized (`path`), an HTTP/1
//! absolute-form target (`GET http://host/p`) turned into origin-form with its authority
//! as `Host` (RFC 9112 3.2.2: the target's authority wins over a `Host` header) — and a
//! request whose host is ambiguous is refused: several `Host` headers (RFC 9112 3.2), or
//! an HTTP/2 `Host` that names another authority than `:authority` (RFC 9113 8.3.1).
//! The query string is kept untouched; `CONNECT` (no path) and `OPTIONS *` pass as they
//! are.
use http::{HeaderValue, Method, Request, Uri, header::HOST, uri::PathAndQuery};

use super::{
    HttpVersion,
    path::{self, EscapedSlashes, PathError},
};

/// Why a request was refused (400) before the hook saw it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    #[error("invalid path: {0}")]
    Path(#[from] PathError),
    #[error("invalid host: more than one Host header")]
    SeveralHosts,
    #[error("invalid host: the Host header ({host}) is not the :authority ({authority})")]
    HostMismatch { host: String, authority: String },
}

impl InvalidRequest {
    /// True for a path refused, false for a host.
    pub fn is_path(&self) -> bool {
        matches!(self, Self::Path(_))
    }
}

/// Rewrites `request`'s target to the form policy matches and the app receives, or says
/// why the request is refused (then `request` is left as it was).
pub fn normalize<B>(
    request: &mut Request<B>,
    version: HttpVersion,
    escaped_slashes: EscapedSlashes,
) -> Result<(), InvalidRequest> {
    let mut hosts = request.headers().get_all(HOST).iter();
    let host = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(InvalidRequest::SeveralHosts);
    }
    if request.method() == Method::CONNECT {
        return Ok(());
    }
    let uri = request.uri();
    let authority = uri
        .authority()
        .map(|a| without_userinfo(a.as_str()).to_owned());
    if version == HttpVersion::Http2
        && let (Some(host), Some(authority)) = (&host, &authority)
        && !host.as_bytes().eq_ignore_ascii_case(authority.as_bytes())
    {
        return Err(InvalidRequest::HostMismatch {
            host: String::from_utf8_lossy(host.as_bytes()).into_owned(),
            authority: authority.clone(),
        });
    }
    if is_options_star(request.method(), uri) {
        return Ok(());
    }
    let absolute_form = version == HttpVersion::Http1 && authority.is_some();
    // Absolute form is rewritten to origin form even when its path is normal already.
    let Some(path_and_query) = normalized_path(uri, escaped_slashes, absolute_form)? else {
        return Ok(());
    };
    let mut parts = uri.clone().into_parts();
    if absolute_form {
        parts.scheme = None;
        parts.authority = None;
    }
    parts.path_and_query = Some(path_and_query);
    let uri = Uri::from_parts(parts).map_err(|_| PathError::NotAbsolute)?;
    if absolute_form && let Some(authority) = authority {
        let value = HeaderValue::try_from(authority).map_err(|_| PathError::NotAbsolute)?;
        request.headers_mut().insert(HOST, value);
    }
    *request.uri_mut() = uri;
    Ok(())
}

/// An origin-form target (`/path?query`, or `*`) normalized, for the lean HTTP/1 path:
/// `None` when it already is; refused when the request has several `Host` headers or its
/// path cannot be normalized.
pub(super) fn normalize_origin(
    method: &Method,
    uri: &Uri,
    hosts: usize,
    escaped_slashes: EscapedSlashes,
) -> Result<Option<Uri>, InvalidRequest> {
    if hosts > 1 {
        return Err(InvalidRequest::SeveralHosts);
    }
    if is_options_star(method, uri) {
        return Ok(None);
    }
    match normalized_path(uri, escaped_slashes, false)? {
        None => Ok(None),
        Some(path_and_query) => Ok(Some(Uri::from(path_and_query))),
    }
}

/// `uri`'s path normalized, with its query as it was: `None` when the path already is
/// (unless `always`).
fn normalized_path(
    uri: &Uri,
    escaped_slashes: EscapedSlashes,
    always: bool,
) -> Result<Option<PathAndQuery>, PathError> {
    let normalized = path::normalize(uri.path(), escaped_slashes)?;
    if !always && normalized == uri.path() {
        return Ok(None);
    }
    let path_and_query = match uri.query() {
        Some(query) => format!("{normalized}?{query}"),
        None => normalized.into_owned(),
    };
    // Built from a valid path and query, and our own escapes: cannot fail, but a failure
    // refuses the request rather than forwarding what was not checked.
    PathAndQuery::try_from(path_and_query)
        .map(Some)
        .map_err(|_| PathError::NotAbsolute)
}

/// `OPTIONS *`: a request for the server, not a path; it passes as it is.
fn is_options_star(method: &Method, uri: &Uri) -> bool {
    uri.path() == "*" && method == Method::OPTIONS && uri.query().is_none()
}

fn without_userinfo(authority: &str) -> &str {
    authority.rsplit('@').next().unwrap_or(authority)
}

#[cfg(test)]
mod tests {
    use http::Version;

    use super::*;

    const REJECT: EscapedSlashes = EscapedSlashes::RejectRequest;

    fn run(request: &mut Request<()>, version: HttpVersion) -> Result<(), InvalidRequest> {
        normalize(request, version, REJECT)
    }

    fn get(uri: &str) -> Request<()> {
        Request::get(uri).body(()).unwrap()
    }

    fn host(request: &Request<()>) -> Vec<&str> {
        request
            .headers()
            .get_all(HOST)
            .iter()
            .map(|h| h.to_str().unwrap())
            .collect()
    }

    #[test]
    fn origin_form_paths_are_rewritten_and_queries_kept() {
        let mut r = get("/public/%2e%2e/private.html?a=%2e%2e/&b=..%2f#frag");
        run(&mut r, HttpVersion::Http1).unwrap();
        assert_eq!(r.uri(), "/private.html?a=%2e%2e/&b=..%2f");
        let mut r = get("/public/index.html?x=1");
        run(&mut r, HttpVersion::Http1).unwrap();
        assert_eq!(r.uri(), "/public/index.html?x=1", "already normal");
        let mut r = get("/public/..%2fprivate.html?q");
        assert_eq!(
            run(&mut r, HttpVersion::Http1),
            Err(InvalidRequest::Path(PathError::EscapedSlash))
        );
        assert_eq!(r.uri(), "/public/..%2fprivate.html?q", "left as it was");
    }

    #[test]
    fn absolute_form_becomes_origin_form_with_its_authority_as_host() {
        let mut r = Request::get("http://user@admin.shop:8080/public/../private?x=1")
            .header(HOST, "web.shop")
            .body(())
            .unwrap();
        run(&mut r, HttpVersion::Http1).unwrap();
        assert_eq!(r.uri(), "/private?x=1");
        assert_eq!(r.uri().authority(), None);
        assert_eq!(host(&r), ["admin.shop:8080"]);
        let mut r = get("http://web.shop");
        run(&mut r, HttpVersion::Http1).unwrap();
        assert_eq!(
            (r.uri().to_string(), host(&r)),
            ("/".into(), vec!["web.shop"])
        );
    }

    #[test]
    fn http2_keeps_scheme_and_authority_and_refuses_another_host() {
        let mut r = Request::get("http://web.shop:8080//public/./../private")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        run(&mut r, HttpVersion::Http2).unwrap();
        assert_eq!(r.uri(), "http://web.shop:8080/private");
        let mut same = Request::get("http://web.shop/")
            .header(HOST, "WEB.shop")
            .body(())
            .unwrap();
        run(&mut same, HttpVersion::Http2).unwrap();
        let mut other = Request::get("http://web.shop/")
            .header(HOST, "admin.shop")
            .body(())
            .unwrap();
        assert!(matches!(
            run(&mut other, HttpVersion::Http2),
            Err(InvalidRequest::HostMismatch { .. })
        ));
    }

    #[test]
    fn several_host_headers_are_refused() {
        let mut r = Request::get("/")
            .header(HOST, "web.shop")
            .header(HOST, "admin.shop")
            .body(())
            .unwrap();
        let err = run(&mut r, HttpVersion::Http1).unwrap_err();
        assert_eq!(err, InvalidRequest::SeveralHosts);
        assert!(!err.is_path());
    }

    #[test]
    fn connect_and_options_star_pass_other_stars_do_not() {
        let mut connect = Request::connect("web.shop:443").body(()).unwrap();
        run(&mut connect, HttpVersion::Http1).unwrap();
        assert_eq!(connect.uri(), "web.shop:443");
        let mut options = Request::options("*").body(()).unwrap();
        run(&mut options, HttpVersion::Http1).unwrap();
        let mut star = get("*");
        assert_eq!(
            run(&mut star, HttpVersion::Http1),
            Err(InvalidRequest::Path(PathError::NotAbsolute))
        );
    }
}
