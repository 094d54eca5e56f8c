//! Request routing input: a path and a host, as a client sends them.
//!
//! Properties: normalising a path gives a path that starts with `/`, holds
//! no `//` and no dot segment, and normalises to itself; a host name that
//! normalises does so to itself; the route table answers for any input
//! without panicking, and a route's prefix covers the normalised path only
//! segment by segment.
#![no_main]

use edge::route::{normalize_host, normalize_path, prefix_covers};
use edge::{HostPattern, RouteTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (host, path) = text.split_once('\n').unwrap_or(("", text));
    let once = normalize_path(path);
    let p = once.path.as_ref();
    assert!(p.starts_with('/'), "{path:?} -> {p:?}");
    assert!(!p.contains("//"), "{path:?} -> {p:?}");
    assert!(
        p.split('/').all(|s| s != "." && s != ".."),
        "{path:?} -> {p:?}"
    );
    assert_eq!(normalize_path(p).path, p, "not idempotent: {path:?}");
    if let Ok(h) = normalize_host(host) {
        // An IPv6 literal comes out without its brackets, which only the
        // bracketed form takes.
        if !h.contains(':') {
            assert_eq!(normalize_host(&h).as_deref(), Ok(h.as_str()), "{host:?}");
        }
    }
    let mut table = RouteTable::default();
    table.add(None, "/", 0);
    table.add(None, "/admin", 1);
    if let Ok(pattern) = HostPattern::parse("*.example.test") {
        table.add(Some(pattern), "/api", 2);
    }
    let routed = table.lookup(normalize_host(host).ok().as_deref(), p);
    assert!(routed.is_some(), "the root route covers every path");
    if routed == Some(&1) {
        assert!(prefix_covers("/admin", p));
        let first = p.split('/').nth(1).unwrap_or("");
        assert_eq!(first.split(';').next(), Some("admin"), "{p:?}");
    }
});
