//! Routing on what the upstream will see: the request's one authority,
//! normalised, and its path, normalised (RFC 3986, section 6), matched
//! against a table of host patterns and segment-wise path prefixes.
//!
//! Both the request router of a product and the SNI certificate lookup in
//! [`crate::tls`] go through [`HostMap`], so a name means the same thing at
//! the handshake and at the request.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use http::{header, HeaderMap, Uri, Version};

/// Why a request's authority was refused. Each maps to a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorityError {
    /// More than one `Host` header.
    DuplicateHost,
    /// An HTTP/1.1 request without `Host` (RFC 9112, section 3.2).
    MissingHost,
    /// The absolute-form target or HTTP/2 `:authority` names another host
    /// than the `Host` header.
    HostMismatch,
    /// The host holds userinfo, an empty name or characters a host cannot.
    InvalidHost,
}

impl AuthorityError {
    /// A stable label for metrics and records.
    pub fn reason(self) -> &'static str {
        match self {
            AuthorityError::DuplicateHost => "duplicate_host",
            AuthorityError::MissingHost => "missing_host",
            AuthorityError::HostMismatch => "host_mismatch",
            AuthorityError::InvalidHost => "invalid_host",
        }
    }
}

impl fmt::Display for AuthorityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// The authority a request addresses, as it goes upstream (`host[:port]`,
/// as received) and as routes match it (the host alone, normalised).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// The `Host` value to send upstream, exactly as the client gave it.
    pub raw: String,
    /// The host for matching: lowercase, no port, no trailing dot, IPv6
    /// literals without brackets.
    pub host: String,
}

/// Finds the one authority of a request: from the URI (absolute-form or
/// HTTP/2 `:authority`) and the `Host` header, which must agree when both
/// are present. `Ok(None)` only for an HTTP/1.0 request without either.
pub fn authority_of(
    uri: &Uri,
    headers: &HeaderMap,
    version: Version,
) -> Result<Option<Authority>, AuthorityError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(AuthorityError::DuplicateHost);
    }
    let from_header = match host_header {
        Some(v) => Some(v.to_str().map_err(|_| AuthorityError::InvalidHost)?),
        None => None,
    };
    let from_uri = uri.authority().map(|a| a.as_str());
    let raw = match (from_uri, from_header) {
        (Some(u), Some(h)) => {
            if normalize_host(u)? != normalize_host(h)? {
                return Err(AuthorityError::HostMismatch);
            }
            u
        }
        (Some(u), None) => u,
        (None, Some(h)) => h,
        (None, None) if version == Version::HTTP_11 => return Err(AuthorityError::MissingHost),
        (None, None) if version == Version::HTTP_10 || version == Version::HTTP_09 => {
            return Ok(None)
        }
        (None, None) => return Err(AuthorityError::MissingHost),
    };
    Ok(Some(Authority {
        host: normalize_host(raw)?,
        raw: raw.to_owned(),
    }))
}

/// Normalises a `host[:port]` for matching: lowercase, port removed, one
/// trailing dot removed, brackets of an IPv6 literal removed. Userinfo, an
/// empty host and characters outside a registered name or IP literal are
/// refused.
pub fn normalize_host(raw: &str) -> Result<String, AuthorityError> {
    if raw.contains('@') {
        return Err(AuthorityError::InvalidHost);
    }
    let host = if let Some(rest) = raw.strip_prefix('[') {
        let (literal, after) = rest.split_once(']').ok_or(AuthorityError::InvalidHost)?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return Err(AuthorityError::InvalidHost);
        }
        // Only IPv6 goes in brackets; written the one canonical way, so
        // `[0:0::1]` and `[::1]` are the same host.
        let ip: std::net::Ipv6Addr = literal.parse().map_err(|_| AuthorityError::InvalidHost)?;
        return Ok(ip.to_string());
    } else {
        match raw.split_once(':') {
            Some((h, port)) if is_port(port) => h,
            Some(_) => return Err(AuthorityError::InvalidHost),
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty()
        || host.len() > 253
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        || host.split('.').any(str::is_empty)
    {
        return Err(AuthorityError::InvalidHost);
    }
    Ok(host.to_ascii_lowercase())
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

/// What normalising a path found that a route must opt in to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathCheck {
    /// A `..` tried to climb above `/` (it was stopped at `/`).
    pub climbs: bool,
    /// The path holds an encoded `/` (`%2F`) or `\` (`%5C`).
    pub encoded_slash: bool,
    /// The path holds an encoded NUL (`%00`).
    pub nul: bool,
}

impl PathCheck {
    /// Whether the path needs a route that opts in to unusual paths.
    pub fn is_unusual(&self) -> bool {
        self.climbs || self.encoded_slash || self.nul
    }

    /// What was unusual, as a stable label (`None` when nothing was).
    pub fn reason(&self) -> Option<&'static str> {
        if self.climbs {
            Some("path_climbs_above_root")
        } else if self.encoded_slash {
            Some("path_encoded_slash")
        } else if self.nul {
            Some("path_encoded_nul")
        } else {
            None
        }
    }
}

/// A request path normalised for matching, and what normalising found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath<'a> {
    /// Unreserved characters decoded, `.` and `..` resolved, `//` merged;
    /// other percent-escapes kept (with uppercase hex).
    pub path: Cow<'a, str>,
    /// What it found.
    pub check: PathCheck,
}

/// Normalises a request path (no query) as RFC 3986, section 6.2.2 says:
/// percent-encodings of unreserved characters decoded and the rest written
/// with uppercase hex, dot segments removed, and, beyond the RFC, runs of
/// `/` merged into one. Case stays significant. A path that needs none of
/// this is returned borrowed.
pub fn normalize_path(raw: &str) -> NormalPath<'_> {
    let plain =
        raw.starts_with('/') && !raw.contains('%') && !raw.contains("//") && !raw.contains("/.");
    if plain {
        return NormalPath {
            path: Cow::Borrowed(raw),
            check: PathCheck::default(),
        };
    }
    let mut check = PathCheck::default();
    // Decode what may be decoded first, so `%2e%2e` is a dot segment. Only
    // escapes of ASCII characters are decoded, and every other byte is
    // kept as it is, so the result stays the UTF-8 the path was.
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let escape = (b == b'%')
            .then(|| Some(hex(*bytes.get(i + 1)?)? * 16 + hex(*bytes.get(i + 2)?)?))
            .flatten();
        if let Some(v) = escape {
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                decoded.push(v);
            } else {
                match v {
                    b'/' | b'\\' => check.encoded_slash = true,
                    0 => check.nul = true,
                    _ => {}
                }
                decoded.extend_from_slice(&[
                    b'%',
                    bytes[i + 1].to_ascii_uppercase(),
                    bytes[i + 2].to_ascii_uppercase(),
                ]);
            }
            i += 3;
        } else if b == b'%' {
            // A `%` that starts no escape is written as one, so that no
            // escape can be put together from what decoding leaves behind
            // (`%%41` must not become `%A`).
            decoded.extend_from_slice(b"%25");
            i += 1;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    let mut segments: Vec<&str> = Vec::new();
    let trailing = decoded.ends_with('/')
        || decoded.ends_with("/.")
        || decoded.ends_with("/..")
        || decoded == "."
        || decoded == "..";
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    check.climbs = true;
                }
            }
            s => segments.push(s),
        }
    }
    let mut path = String::with_capacity(decoded.len() + 1);
    for s in &segments {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() || (trailing && !segments.is_empty()) {
        path.push('/');
    }
    NormalPath {
        path: Cow::Owned(path),
        check,
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether route prefix `prefix` covers normalised `path`, segment by
/// segment: `/admin` covers `/admin`, `/admin/` and `/admin/x`, not
/// `/administrator`. A segment's `;parameters` do not count, so `/admin;x`
/// is covered too: an upstream that drops them must not see an `/admin`
/// that the route for `/admin` never judged.
pub fn prefix_covers(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    let mut want = prefix.split('/').skip(1);
    let mut have = path.split('/').skip(1);
    loop {
        match (want.next(), have.next()) {
            (None, _) => return true,
            (Some(_), None) => return false,
            (Some(w), Some(h)) => {
                let h = h.split_once(';').map_or(h, |(s, _)| s);
                if w != h {
                    return false;
                }
            }
        }
    }
}

/// A host pattern: an exact name or `*.suffix` (exactly one label before
/// the suffix).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// This name only.
    Exact(String),
    /// One label in front of this suffix.
    Wildcard(String),
}

impl HostPattern {
    /// Parses `name` or `*.suffix`, normalised like a request's host.
    pub fn parse(raw: &str) -> Result<Self, AuthorityError> {
        match raw.strip_prefix("*.") {
            Some(suffix) => Ok(HostPattern::Wildcard(normalize_host(suffix)?)),
            None => Ok(HostPattern::Exact(normalize_host(raw)?)),
        }
    }

    /// Whether normalised `host` matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// Values by host: exact names first, then `*.suffix` wildcards, then an
/// optional default for any other name (or none).
#[derive(Debug, Clone)]
pub struct HostMap<T> {
    exact: HashMap<String, T>,
    wildcard: HashMap<String, T>,
    default: Option<T>,
}

impl<T> Default for HostMap<T> {
    fn default() -> Self {
        HostMap {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: None,
        }
    }
}

impl<T> HostMap<T> {
    /// Sets the value for `pattern`, or the default with `None`; gives back
    /// what was there.
    pub fn insert(&mut self, pattern: Option<HostPattern>, value: T) -> Option<T> {
        match pattern {
            Some(HostPattern::Exact(h)) => self.exact.insert(h, value),
            Some(HostPattern::Wildcard(s)) => self.wildcard.insert(s, value),
            None => self.default.replace(value),
        }
    }

    /// The value stored under exactly this pattern (or the default).
    pub fn get_pattern(&self, pattern: Option<&HostPattern>) -> Option<&T> {
        match pattern {
            Some(HostPattern::Exact(h)) => self.exact.get(h),
            Some(HostPattern::Wildcard(s)) => self.wildcard.get(s),
            None => self.default.as_ref(),
        }
    }

    /// The most specific entries for normalised `host`, most specific
    /// first: its exact entry, its wildcard entry, the default.
    pub fn candidates<'a>(&'a self, host: Option<&str>) -> impl Iterator<Item = &'a T> + 'a {
        let (exact, wild) = match host {
            Some(h) => (
                self.exact.get(h),
                h.split_once('.')
                    .filter(|(label, _)| !label.is_empty())
                    .and_then(|(_, suffix)| self.wildcard.get(suffix)),
            ),
            None => (None, None),
        };
        exact.into_iter().chain(wild).chain(self.default.as_ref())
    }

    /// The most specific entry for normalised `host`.
    pub fn lookup(&self, host: Option<&str>) -> Option<&T> {
        self.candidates(host).next()
    }

    /// Every value held.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .chain(self.default.iter())
    }
}

/// Routes by host pattern and path prefix. A request goes to the longest
/// prefix among the routes of its most specific host entry that has one
/// covering the path: an exact host, then a wildcard, then the routes for
/// any host.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    hosts: HostMap<Vec<(String, T)>>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable {
            hosts: HostMap::default(),
        }
    }
}

impl<T> RouteTable<T> {
    /// Adds a route for `host` (any host with `None`) and `prefix`.
    pub fn add(&mut self, host: Option<HostPattern>, prefix: &str, value: T) {
        let prefix = match prefix.trim_end_matches('/') {
            "" => String::from("/"),
            p => p.to_owned(),
        };
        let mut list = self
            .hosts
            .insert(host.clone(), Vec::new())
            .unwrap_or_default();
        list.push((prefix, value));
        // Longest prefix first; equal lengths keep the order they came in.
        list.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        self.hosts.insert(host, list);
    }

    /// The route for normalised `host` and normalised `path`.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<&T> {
        self.hosts.candidates(host).find_map(|routes| {
            routes
                .iter()
                .find(|(p, _)| prefix_covers(p, path))
                .map(|(_, v)| v)
        })
    }

    /// Every route, for checks that look at all of them.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.hosts.values().flat_map(|v| v.iter().map(|(_, t)| t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(hosts: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in hosts {
            h.append(header::HOST, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_one_authority_of_a_request() {
        let origin: Uri = "/x".parse().unwrap();
        let a = authority_of(&origin, &headers(&["Example.COM.:8443"]), Version::HTTP_11)
            .unwrap()
            .unwrap();
        assert_eq!(a.host, "example.com");
        assert_eq!(a.raw, "Example.COM.:8443");
        assert_eq!(
            authority_of(&origin, &headers(&["a", "b"]), Version::HTTP_11),
            Err(AuthorityError::DuplicateHost)
        );
        assert_eq!(
            authority_of(&origin, &headers(&["a", "a"]), Version::HTTP_11),
            Err(AuthorityError::DuplicateHost)
        );
        assert_eq!(
            authority_of(&origin, &HeaderMap::new(), Version::HTTP_11),
            Err(AuthorityError::MissingHost)
        );
        assert_eq!(
            authority_of(&origin, &HeaderMap::new(), Version::HTTP_10),
            Ok(None)
        );
        let absolute: Uri = "http://admin.internal/x".parse().unwrap();
        assert_eq!(
            authority_of(&absolute, &headers(&["public.example"]), Version::HTTP_11),
            Err(AuthorityError::HostMismatch)
        );
        let same: Uri = "http://Public.Example/x".parse().unwrap();
        assert_eq!(
            authority_of(&same, &headers(&["public.example"]), Version::HTTP_11)
                .unwrap()
                .unwrap()
                .host,
            "public.example"
        );
        for bad in [
            "user@host",
            "a b",
            "host:port",
            "",
            ".",
            "a..b",
            "[::1",
            "[zz]",
            "h/x",
        ] {
            assert_eq!(
                normalize_host(bad),
                Err(AuthorityError::InvalidHost),
                "{bad:?}"
            );
        }
        assert_eq!(normalize_host("[::1]:80").unwrap(), "::1");
        assert_eq!(normalize_host("[0:0::1]").unwrap(), "::1");
        assert_eq!(normalize_host("[.]"), Err(AuthorityError::InvalidHost));
    }

    fn norm(p: &str) -> String {
        normalize_path(p).path.into_owned()
    }

    #[test]
    fn paths_are_normalised_as_rfc_3986_says() {
        assert_eq!(norm("/a/b"), "/a/b");
        assert_eq!(norm("/a/./b/../c"), "/a/c");
        assert_eq!(norm("/a//b///c"), "/a/b/c");
        assert_eq!(norm("/%61dmin"), "/admin");
        assert_eq!(norm("/%2e%2E/admin"), "/admin");
        assert_eq!(norm("/x/%2e%2e/admin"), "/admin");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/a/."), "/a/");
        assert_eq!(norm("/a%3fb"), "/a%3Fb");
        assert_eq!(norm("/Admin"), "/Admin");
        assert!(normalize_path("/../etc").check.climbs);
        assert_eq!(norm("/../etc"), "/etc");
        assert!(normalize_path("/a%2Fb").check.encoded_slash);
        assert!(normalize_path("/a%5cb").check.encoded_slash);
        assert!(normalize_path("/a%00b").check.nul);
        assert!(!normalize_path("/a/b").check.is_unusual());
        assert!(matches!(
            normalize_path("/plain/path").path,
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn normalising_is_idempotent_and_leaves_no_dot_segment_or_empty_segment() {
        // Paths built from the pieces attackers combine, by a fixed
        // pseudo-random sequence so that a failure reproduces.
        let pieces = [
            "/",
            "//",
            ".",
            "..",
            "%2e",
            "%2E%2e",
            "a",
            "B",
            "%61",
            "%2F",
            "%00",
            ";x",
            "%7e",
            "%25",
            "caf\u{e9}",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut path = String::from("/");
            for _ in 0..(seed % 9) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                path.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            }
            seed = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
            let once = normalize_path(&path);
            let p = once.path.as_ref();
            assert!(p.starts_with('/'), "{path:?} -> {p:?}");
            assert!(!p.contains("//"), "{path:?} -> {p:?}");
            for seg in p.split('/') {
                assert!(seg != "." && seg != "..", "{path:?} -> {p:?}");
            }
            let twice = normalize_path(p);
            assert_eq!(twice.path, p, "not idempotent: {path:?}");
            // What the first pass flagged stays flagged even when the
            // segment holding it was removed; nothing new appears.
            assert!(
                !twice.check.encoded_slash || once.check.encoded_slash,
                "{path:?}"
            );
            assert!(!twice.check.nul || once.check.nul, "{path:?}");
            assert!(!twice.check.climbs, "{path:?} -> {p:?}");
        }
    }

    #[test]
    fn prefixes_cover_whole_segments() {
        assert!(prefix_covers("/", "/anything"));
        assert!(prefix_covers("/admin", "/admin"));
        assert!(prefix_covers("/admin", "/admin/"));
        assert!(prefix_covers("/admin/", "/admin/x"));
        assert!(prefix_covers("/admin", "/admin;jsessionid=1/x"));
        assert!(!prefix_covers("/admin", "/administrator"));
        assert!(!prefix_covers("/admin", "/Admin"));
        assert!(!prefix_covers("/a/b", "/a"));
    }

    #[test]
    fn hosts_match_exact_then_one_label_wildcards_then_default() {
        let mut m = HostMap::default();
        m.insert(Some(HostPattern::parse("API.example.com").unwrap()), 1);
        m.insert(Some(HostPattern::parse("*.example.com").unwrap()), 2);
        m.insert(None, 3);
        assert_eq!(m.lookup(Some("api.example.com")), Some(&1));
        assert_eq!(m.lookup(Some("www.example.com")), Some(&2));
        assert_eq!(m.lookup(Some("a.b.example.com")), Some(&3));
        assert_eq!(m.lookup(Some("example.com")), Some(&3));
        assert_eq!(m.lookup(None), Some(&3));
    }

    #[test]
    fn routes_fall_back_from_host_to_wildcard_to_any_host() {
        let mut t = RouteTable::default();
        t.add(
            Some(HostPattern::parse("a.example").unwrap()),
            "/api",
            "a-api",
        );
        t.add(None, "/", "any-root");
        t.add(None, "/admin", "any-admin");
        t.add(
            Some(HostPattern::parse("*.example").unwrap()),
            "/",
            "wild-root",
        );
        assert_eq!(t.lookup(Some("a.example"), "/api/x"), Some(&"a-api"));
        assert_eq!(t.lookup(Some("a.example"), "/other"), Some(&"wild-root"));
        assert_eq!(t.lookup(Some("b.example"), "/admin"), Some(&"wild-root"));
        assert_eq!(t.lookup(Some("other.org"), "/admin/x"), Some(&"any-admin"));
        assert_eq!(
            t.lookup(Some("other.org"), "/administrator"),
            Some(&"any-root")
        );
        assert_eq!(t.lookup(None, "/x"), Some(&"any-root"));
    }
}
