//! Reading credentials from request headers: a bearer token or a cookie.

use http::header::{AUTHORIZATION, COOKIE};
use http::HeaderMap;

/// The token of an `Authorization: Bearer ...` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The value of cookie `name`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value for a session cookie: HttpOnly, SameSite=Strict,
/// `Secure` when the site is served over HTTPS.
pub fn session_cookie(name: &str, value: &str, max_age_secs: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bearer_and_cookie() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Bearer abc.def".parse().unwrap());
        h.insert(COOKIE, "a=1; session=xyz; b=2".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc.def"));
        assert_eq!(cookie(&h, "session"), Some("xyz"));
        assert_eq!(cookie(&h, "missing"), None);
        h.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn session_cookie_is_locked_down() {
        let c = session_cookie("s", "v", 60, true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
    }
}
