//! Redaction of secret-looking text in tool output, before it is stored in
//! the session or sent to a provider.
//!
//! Two kinds of match: the key formats of the providers and services PiCode
//! knows (a prefix and a length), and long tokens that look random (Shannon
//! entropy above 4.2 bits per character over 32 or more characters of the
//! URL-safe base64 alphabet, with upper and lower case and digits mixed).
//! `/` is left out of that alphabet because paths of generated names
//! (`/tmp/.tmpAb12Cd/target/debug/deps/...`) were redacted with it. Hex digests (git
//! hashes, SHA-256 sums) top out at 4 bits per character and stay readable,
//! which is why the threshold sits above that.

use std::sync::LazyLock;

use regex::Regex;

/// Keys with a recognisable shape: Anthropic, OpenAI (project and user),
/// OpenRouter, Groq, Google, Hugging Face, GitHub, GitLab, Slack, Stripe,
/// AWS access key ids, and PEM private keys.
static KNOWN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"sk-ant-[A-Za-z0-9_-]{20,}",
        r"|sk-or-v1-[A-Za-z0-9]{20,}",
        r"|sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}",
        r"|gsk_[A-Za-z0-9]{20,}",
        r"|AIza[0-9A-Za-z_-]{35}",
        r"|hf_[A-Za-z0-9]{30,}",
        r"|gh[pousr]_[A-Za-z0-9]{30,}",
        r"|github_pat_[A-Za-z0-9_]{40,}",
        r"|glpat-[A-Za-z0-9_-]{20,}",
        r"|xox[abprs]-[A-Za-z0-9-]{10,}",
        r"|[sr]k_(?:live|test)_[A-Za-z0-9]{20,}",
        r"|(?:AKIA|ASIA)[0-9A-Z]{16}",
        r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    ))
    .expect("the known-key pattern is valid")
});

/// Candidates for the entropy test.
static TOKEN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9_=-]{32,}").expect("the token pattern is valid"));

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// Replaces secret-looking substrings of `text`; returns whether any were found.
pub fn redact(text: &str) -> (String, bool) {
    let known = KNOWN.replace_all(text, REDACTED);
    let mut found = matches!(known, std::borrow::Cow::Owned(_));
    let out = TOKEN.replace_all(&known, |caps: &regex::Captures<'_>| {
        let token = &caps[0];
        if looks_random(token) {
            found = true;
            REDACTED.to_owned()
        } else {
            token.to_owned()
        }
    });
    (out.into_owned(), found)
}

fn looks_random(token: &str) -> bool {
    let has_digit = token.bytes().any(|b| b.is_ascii_digit());
    let has_upper = token.bytes().any(|b| b.is_ascii_uppercase());
    let has_lower = token.bytes().any(|b| b.is_ascii_lowercase());
    has_digit && has_upper && has_lower && entropy(token) > 4.2
}

/// Shannon entropy in bits per byte.
fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let len = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / len;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_keys_are_redacted() {
        for key in [
            "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789",
            "sk-proj-abcdefghijklmnopqrstuvwxyz0123",
            "gsk_abcdefghijklmnopqrstuvwxyz01",
            "AKIAABCDEFGHIJKLMNOP",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        ] {
            let (out, found) = redact(&format!("KEY={key}\n"));
            assert!(found, "{key}");
            assert_eq!(out, format!("KEY={REDACTED}\n"));
        }
    }

    #[test]
    fn random_tokens_go_and_ordinary_text_and_hashes_stay() {
        let (out, found) = redact("token: q8Zr4Lx0pW2mN7vB1kT9yH3cJ6gF5dS0aE8uR\n");
        assert!(found);
        assert_eq!(out, format!("token: {REDACTED}\n"));
        let plain = "commit 3b90296f0a1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e\n\
                     sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n\
                     src/very_long_module_name/with_many_parts_in_it.rs\n\
                     fn a_function_name_that_is_quite_long_indeed() {}\n\
                     /tmp/.tmpjrLEyd/targetO7vXJp/debug/deps/tiny-3f2a9c1b7d4e6f80.o\n";
        let (out, found) = redact(plain);
        assert!(!found, "{out}");
        assert_eq!(out, plain);
    }
}
