//! Client identities read from verified certificates, the header that
//! carries them upstream, and allowlists over them.

use std::fmt::Write as _;
use std::sync::OnceLock;

use http::HeaderValue;

use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A certificate or pattern that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IdentityError(String);

/// What a verified client certificate says about its holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// Subject common name, when present.
    pub common_name: Option<String>,
    /// The whole subject as an RFC 4514 string.
    pub subject: String,
    /// SAN DNS names.
    pub dns: Vec<String>,
    /// SAN URIs, SPIFFE IDs among them.
    pub uris: Vec<String>,
    /// SAN email addresses (rfc822Name).
    pub emails: Vec<String>,
    /// SHA-256 of the leaf certificate's DER, lowercase hex.
    pub fingerprint: String,
    /// [`Self::forwarded_header`] as a header value, made on first use: a
    /// connection sends the same identity with every request.
    forwarded: OnceLock<Option<HeaderValue>>,
}

impl ClientIdentity {
    /// Reads the identity out of a leaf certificate in DER form.
    pub fn from_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| IdentityError(format!("client certificate: {e}")))?;
        let mut id = ClientIdentity {
            common_name: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            subject: cert.subject().to_string(),
            fingerprint: hex::encode(Sha256::digest(der)),
            ..Default::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => id.dns.push((*d).to_owned()),
                    GeneralName::URI(u) => id.uris.push((*u).to_owned()),
                    GeneralName::RFC822Name(e) => id.emails.push((*e).to_owned()),
                    _ => {}
                }
            }
        }
        Ok(id)
    }

    /// The single name that best identifies the client: a SPIFFE ID or other
    /// URI first, then a DNS name, then the common name, then an email.
    pub fn primary(&self) -> &str {
        self.uris
            .first()
            .or(self.dns.first())
            .or(self.common_name.as_ref())
            .or(self.emails.first())
            .unwrap_or(&self.subject)
    }

    /// [`Self::forwarded_header`] as a header value; `None` if the
    /// certificate holds characters a header cannot carry.
    pub fn forwarded_header_value(&self) -> Option<&HeaderValue> {
        self.forwarded
            .get_or_init(|| HeaderValue::from_str(&self.forwarded_header()).ok())
            .as_ref()
    }

    /// The value of an `x-forwarded-client-cert` style header, in the
    /// `Key=value;Key=value` form Envoy uses, quoted as Envoy quotes it: a
    /// value holding `,`, `;`, `=`, `"`, `\\` or white space is put in double
    /// quotes with `"` and `\\` escaped, so no name in a certificate can
    /// add a field or an element of its own. The subject is always quoted.
    pub fn forwarded_header(&self) -> String {
        let mut out = format!("Hash={}", self.fingerprint);
        out.push_str(";Subject=");
        push_quoted(&mut out, &self.subject);
        for (key, values) in [
            ("URI", &self.uris),
            ("DNS", &self.dns),
            ("Email", &self.emails),
        ] {
            for v in values {
                let _ = write!(out, ";{key}=");
                if needs_quotes(v) {
                    push_quoted(&mut out, v);
                } else {
                    out.push_str(v);
                }
            }
        }
        out
    }
}

/// Whether an XFCC value must be quoted.
fn needs_quotes(v: &str) -> bool {
    v.is_empty()
        || v.bytes()
            .any(|b| matches!(b, b',' | b';' | b'=' | b'"' | b'\\') || b.is_ascii_whitespace())
}

fn push_quoted(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// A name pattern where `*` matches within one segment and `**` across any
/// number of segments. Segments are separated by `.`, `/`, `:` and `@`, so one
/// syntax serves DNS names, SPIFFE IDs and email addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    raw: String,
    tokens: Vec<Token>,
    case_insensitive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(u8),
    /// `*`: one or more characters, none a separator.
    Segment,
    /// `**`: one or more characters of any kind.
    Any,
}

fn is_separator(b: u8) -> bool {
    matches!(b, b'.' | b'/' | b':' | b'@')
}

/// Characters no wildcard matches: they structure the identity header, so
/// a name holding them is only let through when a pattern spells them out.
fn is_structural(b: u8) -> bool {
    matches!(b, b';' | b',' | b'=' | b'"')
}

impl NamePattern {
    /// Parses a pattern. Three stars in a row are refused because they have
    /// no clear meaning.
    pub fn parse(raw: &str, case_insensitive: bool) -> Result<Self, IdentityError> {
        if raw.is_empty() {
            return Err(IdentityError("empty name pattern".into()));
        }
        if raw.contains("***") {
            return Err(IdentityError(format!(
                "pattern {raw:?}: `***` is not allowed; use `*` for one segment or `**` for any number"
            )));
        }
        let text = if case_insensitive {
            raw.to_ascii_lowercase()
        } else {
            raw.to_owned()
        };
        let bytes = text.as_bytes();
        let mut tokens = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'*' {
                if bytes.get(i + 1) == Some(&b'*') {
                    tokens.push(Token::Any);
                    i += 2;
                } else {
                    tokens.push(Token::Segment);
                    i += 1;
                }
            } else {
                tokens.push(Token::Literal(bytes[i]));
                i += 1;
            }
        }
        Ok(NamePattern {
            raw: raw.to_owned(),
            tokens,
            case_insensitive,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether `name` matches the whole pattern.
    pub fn matches(&self, name: &str) -> bool {
        if self.case_insensitive {
            matches_at(&self.tokens, name.to_ascii_lowercase().as_bytes())
        } else {
            matches_at(&self.tokens, name.as_bytes())
        }
    }
}

/// Backtracking matcher; patterns and names are short, so the worst case does
/// not matter in practice.
fn matches_at(tokens: &[Token], name: &[u8]) -> bool {
    match tokens.split_first() {
        None => name.is_empty(),
        Some((Token::Literal(c), rest)) => name.first() == Some(c) && matches_at(rest, &name[1..]),
        Some((Token::Segment, rest)) => {
            let mut n = 0;
            while n < name.len() && !is_separator(name[n]) && !is_structural(name[n]) {
                n += 1;
                if matches_at(rest, &name[n..]) {
                    return true;
                }
            }
            false
        }
        Some((Token::Any, rest)) => {
            let run = name.iter().take_while(|&&b| !is_structural(b)).count();
            (1..=run).any(|n| matches_at(rest, &name[n..]))
        }
    }
}

/// Which identities a route lets through. An empty allowlist lets every
/// verified certificate through; otherwise one field must match one pattern
/// of its own kind.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    /// Patterns for the subject common name.
    pub common_names: Vec<NamePattern>,
    /// Patterns for SAN DNS names (case-insensitive).
    pub dns: Vec<NamePattern>,
    /// Patterns for SAN URIs such as SPIFFE IDs.
    pub uris: Vec<NamePattern>,
    /// Patterns for SAN email addresses (case-insensitive).
    pub emails: Vec<NamePattern>,
}

impl Allowlist {
    /// Builds an allowlist from pattern strings, naming the bad one on error.
    pub fn parse(
        common_names: &[String],
        dns: &[String],
        uris: &[String],
        emails: &[String],
    ) -> Result<Self, IdentityError> {
        let all = |v: &[String], ci: bool| -> Result<Vec<NamePattern>, IdentityError> {
            v.iter().map(|p| NamePattern::parse(p, ci)).collect()
        };
        Ok(Allowlist {
            common_names: all(common_names, false)?,
            dns: all(dns, true)?,
            uris: all(uris, false)?,
            emails: all(emails, true)?,
        })
    }

    /// Whether the allowlist has no patterns at all.
    pub fn is_empty(&self) -> bool {
        self.common_names.is_empty()
            && self.dns.is_empty()
            && self.uris.is_empty()
            && self.emails.is_empty()
    }

    /// Whether `id` may pass.
    pub fn allows(&self, id: &ClientIdentity) -> bool {
        if self.is_empty() {
            return true;
        }
        fn any<'a>(pats: &[NamePattern], mut names: impl Iterator<Item = &'a String>) -> bool {
            names.any(|n| pats.iter().any(|p| p.matches(n)))
        }
        any(&self.common_names, id.common_name.iter())
            || any(&self.dns, id.dns.iter())
            || any(&self.uris, id.uris.iter())
            || any(&self.emails, id.emails.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> NamePattern {
        NamePattern::parse(s, true).unwrap()
    }

    #[test]
    fn single_star_matches_exactly_one_segment() {
        assert!(p("*.example.com").matches("api.example.com"));
        assert!(!p("*.example.com").matches("example.com"));
        assert!(!p("*.example.com").matches("a.b.example.com"));
        assert!(!p("*.example.com").matches(".example.com"));
        assert!(p("api-*.example.com").matches("api-eu.example.com"));
        assert!(!p("api-*.example.com").matches("api-.example.com"));
    }

    #[test]
    fn double_star_spans_segments() {
        assert!(p("**.example.com").matches("a.b.example.com"));
        assert!(p("**.example.com").matches("a.example.com"));
        assert!(!p("**.example.com").matches("example.com"));
        assert!(!p("**.example.com").matches("example.com.evil.org"));
        let spiffe = NamePattern::parse("spiffe://prod.local/ns/*/sa/**", false).unwrap();
        assert!(spiffe.matches("spiffe://prod.local/ns/pay/sa/api"));
        assert!(spiffe.matches("spiffe://prod.local/ns/pay/sa/api/v2"));
        assert!(!spiffe.matches("spiffe://prod.local/ns/pay/x/sa/api"));
        assert!(!spiffe.matches("spiffe://dev.local/ns/pay/sa/api"));
    }

    #[test]
    fn case_rules_and_bad_patterns() {
        assert!(p("API.Example.com").matches("api.example.COM"));
        let uri = NamePattern::parse("spiffe://a/B", false).unwrap();
        assert!(!uri.matches("spiffe://a/b"));
        assert!(NamePattern::parse("***.x", true).is_err());
        assert!(NamePattern::parse("", true).is_err());
    }

    #[test]
    fn wildcards_never_match_the_header_s_structural_characters() {
        let uri = NamePattern::parse("spiffe://t/ns/*/sa/**", false).unwrap();
        assert!(uri.matches("spiffe://t/ns/a/sa/b"));
        for evil in [
            "spiffe://t/ns/a;URI=x/sa/b",
            "spiffe://t/ns/a,b/sa/b",
            "spiffe://t/ns/a/sa/b;DNS=admin",
            "spiffe://t/ns/a/sa/b\",By=x",
            "spiffe://t/ns/a=1/sa/b",
        ] {
            assert!(!uri.matches(evil), "{evil}");
        }
        assert!(NamePattern::parse("a;b", false).unwrap().matches("a;b"));
    }

    #[test]
    fn header_values_are_quoted_so_a_name_cannot_add_fields() {
        let id = ClientIdentity {
            subject: "CN=a\"b".into(),
            fingerprint: "ab".into(),
            uris: vec![
                "spiffe://t/x;URI=spiffe://admin".into(),
                "spiffe://t/y".into(),
            ],
            dns: vec!["a,DNS=b".into()],
            emails: vec!["x=y@z".into()],
            ..Default::default()
        };
        assert_eq!(
            id.forwarded_header(),
            "Hash=ab;Subject=\"CN=a\\\"b\";URI=\"spiffe://t/x;URI=spiffe://admin\";URI=spiffe://t/y;DNS=\"a,DNS=b\";Email=\"x=y@z\""
        );
    }

    #[test]
    fn allowlist_checks_each_field_against_its_own_kind() {
        let id = ClientIdentity {
            common_name: Some("svc-a".into()),
            dns: vec!["a.internal".into()],
            uris: vec!["spiffe://t/ns/x".into()],
            emails: vec!["ops@example.com".into()],
            ..Default::default()
        };
        let none = Allowlist::default();
        assert!(none.allows(&id));
        let by_email = Allowlist::parse(&[], &[], &[], &["*@example.com".into()]).unwrap();
        assert!(by_email.allows(&id));
        // A DNS pattern is never compared with the common name.
        let dns_only = Allowlist::parse(&[], &["svc-a".into()], &[], &[]).unwrap();
        assert!(!dns_only.allows(&id));
        let cn = Allowlist::parse(&["svc-*".into()], &[], &[], &[]).unwrap();
        assert!(cn.allows(&id));
    }
}
