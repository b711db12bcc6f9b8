//! Request path normalization: the one form of a path that policy matches and the app
//! receives, so that no spelling of a path reaches the app past a rule written for
//! another. Envoy's `normalize_path` (Istio's default `BASE`) with `merge_slashes`:
//!
//! 1. `%XX` escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded (RFC 3986
//!    6.2.2.2), other escapes kept with upper-case hex digits (6.2.2.1); an escape is
//!    decoded once only, so `%252e` stays `%252e`. `%2F` and `%5C` (any case) follow
//!    [`EscapedSlashes`]: refused by default.
//! 2. Empty segments are dropped (`//a` is `/a`, as nginx's `merge_slashes`), then dot
//!    segments removed (RFC 3986 5.2.4): `/a/./b/../c` is `/a/c`; `..` never climbs above
//!    the root.
//! 3. A `.` or `..` segment with `;` parameters (`/public/..;/private`) is refused: Tomcat
//!    and Jetty strip the parameters and climb, Envoy does not (Istio issue 27409), and no
//!    honest client writes one. Other `;` parameters are kept as written.
//!
//! Refused outright (400), whatever the setting: a path not starting with `/`, a raw `\`
//! (Envoy would turn it into `/`; apps disagree on it, so a policy cannot know what it
//! means), control characters, and `%` not followed by two hex digits. The query string is
//! not part of the path and is forwarded untouched (the caller keeps it apart).
use std::borrow::Cow;

pub use crate::config::EscapedSlashes;

/// Why a path was refused. `Display` is the reason logged and sent with the 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with `/`")]
    NotAbsolute,
    #[error("the path holds a backslash")]
    Backslash,
    #[error("the path holds a control character")]
    Control,
    #[error("the path holds `%` not followed by two hex digits")]
    BadEscape,
    #[error("the path holds an encoded `/` or `\\` (%2F, %5C)")]
    EscapedSlash,
    #[error("the path holds a `.` or `..` segment with `;` parameters")]
    DotSegmentParameters,
}

/// `path` (without its query) in normal form; borrowed when it already was.
pub fn normalize(path: &str, escaped_slashes: EscapedSlashes) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode(path, escaped_slashes)?;
    let mut segments: Vec<&str> = Vec::new();
    // Whether the output ends with `/`: the last segment was empty, `.` or `..`.
    let mut trailing = false;
    for segment in decoded[1..].split('/') {
        trailing = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => {
                if is_dot_with_parameters(segment) {
                    return Err(PathError::DotSegmentParameters);
                }
                segments.push(segment);
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    Ok(if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    })
}

/// Step 1, and the character checks: one pass over the bytes.
fn decode(path: &str, escaped_slashes: EscapedSlashes) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let value = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| h << 4 | l),
                    _ => None,
                }
                .ok_or(PathError::BadEscape)?;
                if is_unreserved(value) {
                    out.push(char::from(value));
                } else if value == b'/' || value == b'\\' {
                    match escaped_slashes {
                        EscapedSlashes::RejectRequest => return Err(PathError::EscapedSlash),
                        EscapedSlashes::KeepUnchanged => push_escape(&mut out, value),
                        EscapedSlashes::UnescapeAndForward => out.push('/'),
                    }
                } else {
                    push_escape(&mut out, value);
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(PathError::Backslash),
            b if b < 0x20 || b == 0x7f => return Err(PathError::Control),
            _ => {}
        }
        // Copy the run up to the next byte that needs a look (keeps UTF-8 whole).
        let end = bytes[i..]
            .iter()
            .position(|&b| b == b'%' || b == b'\\' || b < 0x20 || b == 0x7f)
            .map_or(bytes.len(), |n| i + n);
        out.push_str(&path[i..end]);
        i = end;
    }
    Ok(out)
}

/// `..;x`, `.;`, and the same with `;` written `%3B`.
fn is_dot_with_parameters(segment: &str) -> bool {
    let head = segment
        .split(';')
        .next()
        .and_then(|s| s.split("%3B").next())
        .unwrap_or(segment);
    head.len() < segment.len() && matches!(head, "." | "..")
}

fn push_escape(out: &mut String, value: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(value >> 4)]));
    out.push(char::from(HEX[usize::from(value & 0xf)]));
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// RFC 3986's unreserved characters.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    const REJECT: EscapedSlashes = EscapedSlashes::RejectRequest;

    /// Hostile and ordinary paths, and what each becomes under the default setting.
    #[test]
    fn hostile_paths_become_one_form_or_are_refused() {
        use PathError::*;
        let table: &[(&str, Result<&str, PathError>)] = &[
            // The three, against `paths: ["/public/*"]`.
            ("/public/../private.html", Ok("/private.html")),
            ("/public/%2e%2e/private.html", Ok("/private.html")),
            ("/public/..%2fprivate.html", Err(EscapedSlash)),
            ("/public/..%2Fprivate.html", Err(EscapedSlash)),
            ("/public/..%5cprivate.html", Err(EscapedSlash)),
            ("/public/%2E%2E/private", Ok("/private")),
            ("/public/.%2e/private", Ok("/private")),
            ("/public/%2e/private", Ok("/public/private")),
            ("//public/../private", Ok("/private")),
            ("/public//../private", Ok("/private")),
            ("/public/./../../../private", Ok("/private")),
            ("/..", Ok("/")),
            ("/../private", Ok("/private")),
            ("/public/..", Ok("/")),
            ("/public/a/..", Ok("/public/")),
            ("/public/.", Ok("/public/")),
            ("/public/", Ok("/public/")),
            ("/public//", Ok("/public/")),
            ("/", Ok("/")),
            ("//", Ok("/")),
            // Tomcat's path parameters.
            ("/public/..;/private", Err(DotSegmentParameters)),
            ("/public/..;jsessionid=1/private", Err(DotSegmentParameters)),
            ("/public/.;/private", Err(DotSegmentParameters)),
            ("/public/%2e%2e;/private", Err(DotSegmentParameters)),
            ("/public/..%3b/private", Err(DotSegmentParameters)),
            (
                "/public/index.html;jsessionid=1",
                Ok("/public/index.html;jsessionid=1"),
            ),
            ("/public;x/../private", Ok("/private")),
            ("/public/...;x", Ok("/public/...;x")),
            // Double encoding stays literal: one decoding only.
            (
                "/public/%252e%252e/private",
                Ok("/public/%252e%252e/private"),
            ),
            ("/public/%252f", Ok("/public/%252f")),
            // Unreserved characters decoded, others kept with upper-case hex.
            ("/%7Euser/%41b%2d", Ok("/~user/Ab-")),
            ("/a%20b/%3f%23", Ok("/a%20b/%3F%23")),
            ("/caf%c3%a9", Ok("/caf%C3%A9")),
            // Case is kept: paths are case-sensitive.
            ("/PUBLIC/index.html", Ok("/PUBLIC/index.html")),
            ("/Public/../PRIVATE", Ok("/PRIVATE")),
            // Invalid.
            ("public/index.html", Err(NotAbsolute)),
            ("", Err(NotAbsolute)),
            ("*", Err(NotAbsolute)),
            ("/public\\..\\private", Err(Backslash)),
            ("/a\0b", Err(Control)),
            ("/a\tb", Err(Control)),
            ("/a\x7fb", Err(Control)),
            ("/a%", Err(BadEscape)),
            ("/a%2", Err(BadEscape)),
            ("/a%zz", Err(BadEscape)),
            ("/a%%32e", Err(BadEscape)),
            // Already normal: borrowed as is.
            ("/api/v1/items", Ok("/api/v1/items")),
            ("/caf\u{e9}", Ok("/caf\u{e9}")),
        ];
        for &(input, expected) in table {
            let got = normalize(input, REJECT);
            assert_eq!(got.as_deref().map_err(|e| *e), expected, "{input:?}");
            if let Ok(out) = got {
                let again = normalize(&out, REJECT).unwrap();
                assert_eq!(again, out, "normalizing {input:?} twice");
                assert!(matches!(again, Cow::Borrowed(_)), "normal form is borrowed");
            }
        }
    }

    #[test]
    fn escaped_slashes_follow_the_setting() {
        let keep = EscapedSlashes::KeepUnchanged;
        let unescape = EscapedSlashes::UnescapeAndForward;
        assert_eq!(
            normalize("/public/..%2fprivate.html", keep).unwrap(),
            "/public/..%2Fprivate.html",
            "one segment, as Envoy's KEEP_UNCHANGED"
        );
        assert_eq!(normalize("/a%5cb", keep).unwrap(), "/a%5Cb");
        assert_eq!(
            normalize("/public/..%2fprivate.html", unescape).unwrap(),
            "/private.html"
        );
        assert_eq!(
            normalize("/public/..%5Cprivate", unescape).unwrap(),
            "/private"
        );
        assert_eq!(normalize("/a%2F%2Fb", unescape).unwrap(), "/a/b");
        // The other checks hold under every setting.
        for setting in [keep, unescape] {
            assert_eq!(normalize("/a\\b", setting), Err(PathError::Backslash));
            assert_eq!(
                normalize("/p/..;/x", setting),
                Err(PathError::DotSegmentParameters)
            );
            assert_eq!(normalize("/%252f", setting).unwrap(), "/%252f");
        }
    }
}
