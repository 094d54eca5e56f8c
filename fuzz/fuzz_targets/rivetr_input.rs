//! What Rivetr parses from others: a cloned repository's `rivetr.toml`,
//! and the names, domains, git addresses and branches the API takes.
//!
//! Properties: nothing panics; what parses holds what the engine relies on
//! (a domain and an app name are DNS labels and parse to themselves, a
//! Dockerfile path stays inside the repository, limits are in range).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rivetr::domain::{parse_branch, AppName, Domain, GitUrl, RepoConfig, MAX_REPLICAS};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = RepoConfig::parse(text) {
        assert!((1..=MAX_REPLICAS).contains(&config.replicas));
        assert!(config.port > 0);
        assert!(!config.dockerfile.starts_with('/'));
        assert!(config.dockerfile.split('/').all(|p| p != ".."));
        assert!(config.health.path.starts_with('/'));
    }
    let line = text.lines().next().unwrap_or("");
    if let Ok(name) = AppName::parse(line) {
        assert!(name.as_str().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
    }
    if let Ok(domain) = Domain::parse(line) {
        assert_eq!(Domain::parse(domain.as_str()).unwrap(), domain);
        assert!(!domain.as_str().contains(['/', ':', '*', ' ']));
    }
    if let Ok(url) = GitUrl::parse(line) {
        assert!(!url.as_str().starts_with('-'));
        assert!(!url.as_str().chars().any(char::is_control));
    }
    if let Ok(branch) = parse_branch(line) {
        assert!(!branch.contains("..") && !branch.starts_with('-'));
    }
});
