//! Redaction of headers and query parameters: secrets are replaced before a
//! row is written, so the database (and every backup or `logs` output made
//! from it) never sees them.

use std::borrow::Cow;

use http::HeaderMap;

/// The value that replaces a redacted header value.
pub const REDACTED: &str = "[redacted]";

/// Headers that carry credentials in practically every deployment; they are
/// always redacted, whatever the configuration says.
const ALWAYS_REDACTED: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Query parameters that carry credentials (OAuth tokens, API keys, signed
/// URL signatures); always redacted.
const ALWAYS_REDACTED_PARAMS: [&str; 14] = [
    "access_token",
    "id_token",
    "refresh_token",
    "token",
    "api_key",
    "apikey",
    "password",
    "secret",
    "client_secret",
    "sig",
    "signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-amz-signature",
];

/// Replaces the values of sensitive headers and query parameters with
/// [`REDACTED`].
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    extra: Vec<String>,
    extra_params: Vec<String>,
}

impl Redactor {
    /// A redactor for the built-in names plus `extra` (case-insensitive).
    pub fn new<I, S>(extra: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Redactor {
            extra: lowercase_names(extra),
            extra_params: Vec::new(),
        }
    }

    /// Also redacts the query parameters named in `params`, on top of the
    /// built-in ones (case-insensitive).
    pub fn with_query_params<I, S>(mut self, params: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.extra_params = lowercase_names(params);
        self
    }

    /// Whether values of query parameter `name` are redacted.
    pub fn is_sensitive_param(&self, name: &str) -> bool {
        ALWAYS_REDACTED_PARAMS
            .iter()
            .copied()
            .chain(self.extra_params.iter().map(String::as_str))
            .any(|secret| secret.eq_ignore_ascii_case(name))
    }

    /// `query` (without the `?`) with the values of sensitive parameters
    /// replaced; borrowed when nothing needed replacing. Names, order and
    /// everything else stay as they were.
    pub fn redact_query<'a>(&self, query: &'a str) -> Cow<'a, str> {
        let sensitive = |pair: &str| {
            pair.split_once('=')
                .is_some_and(|(name, _)| self.is_sensitive_param(name))
        };
        if !query.split('&').any(sensitive) {
            return Cow::Borrowed(query);
        }
        let mut out = String::with_capacity(query.len());
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) if self.is_sensitive_param(name) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                _ => out.push_str(pair),
            }
        }
        Cow::Owned(out)
    }

    /// Whether values of header `name` are redacted.
    pub fn is_sensitive(&self, name: &str) -> bool {
        ALWAYS_REDACTED
            .iter()
            .copied()
            .chain(self.extra.iter().map(String::as_str))
            .any(|secret| secret.eq_ignore_ascii_case(name))
    }

    /// Appends `headers` to `out` as the JSON stored in a row: an array of
    /// `[name, value]` pairs in order, with sensitive values replaced by
    /// [`REDACTED`]. Names and order survive, so a reader can still tell the
    /// header was sent. Values that are not UTF-8 are kept lossily.
    ///
    /// Written by hand rather than through serde: it runs once per stored
    /// exchange, and this is the writer's busiest code outside SQLite.
    pub fn encode_json(&self, headers: &HeaderMap, out: &mut Vec<u8>) {
        out.push(b'[');
        for (i, (name, value)) in headers.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'[');
            push_json_string(out, name.as_str());
            out.push(b',');
            if self.is_sensitive(name.as_str()) {
                push_json_string(out, REDACTED);
            } else {
                match value.to_str() {
                    Ok(text) => push_json_string(out, text),
                    Err(_) => push_json_string(out, &String::from_utf8_lossy(value.as_bytes())),
                }
            }
            out.push(b']');
        }
        out.push(b']');
    }
}

fn lowercase_names<I, S>(names: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    names
        .into_iter()
        .map(|name| name.as_ref().trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect()
}

/// Appends `s` as a JSON string literal.
fn push_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain..i]);
        if escape.is_empty() {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.extend_from_slice(escape);
        }
        plain = i + 1;
    }
    out.extend_from_slice(&bytes[plain..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(redactor: &Redactor, list: &[(&str, &[u8])]) -> Vec<(String, String)> {
        let mut map = HeaderMap::new();
        for (n, v) in list {
            map.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        let mut out = Vec::new();
        redactor.encode_json(&map, &mut out);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn built_in_and_configured_names_are_redacted_case_insensitively() {
        let redactor = Redactor::new(["X-Api-Key", " x-session "]);
        let headers = encode(
            &redactor,
            &[
                ("Authorization", b"Bearer abc"),
                ("PROXY-AUTHORIZATION", b"Basic xyz"),
                ("cookie", b"sid=1"),
                ("Set-Cookie", b"sid=2; HttpOnly"),
                ("x-api-key", b"k"),
                ("X-SESSION", b"s"),
                ("accept", b"*/*"),
                ("x-api-key-hint", b"not a secret"),
                ("accept", b"text/html"),
            ],
        );
        let values: Vec<&str> = headers.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(
            values,
            [
                REDACTED,
                REDACTED,
                REDACTED,
                REDACTED,
                REDACTED,
                REDACTED,
                "*/*",
                "text/html",
                "not a secret",
            ]
        );
        // Names survive, so the reader can tell the header was sent; repeated
        // names stay together in the order they came.
        assert_eq!(headers[0].0, "authorization");
        assert_eq!(headers[3].0, "set-cookie");
        assert_eq!(headers[7].0, "accept");
    }

    #[test]
    fn quotes_backslashes_and_control_bytes_are_escaped() {
        let headers = encode(&Redactor::default(), &[("x-odd", b"a\"b\\c\td \xc3\xa9")]);
        assert_eq!(headers[0].1, "a\"b\\c\td \u{e9}");
        // Header values cannot hold the other control bytes, but the encoder
        // does not rely on that.
        let mut out = Vec::new();
        push_json_string(&mut out, "\u{1}\n\r\u{7f}x");
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "\u{1}\n\r\u{7f}x");
    }

    #[test]
    fn values_that_are_not_utf8_are_kept_lossily() {
        let headers = encode(&Redactor::default(), &[("x-bin", b"caf\xe9")]);
        assert_eq!(headers[0].0, "x-bin");
        assert_eq!(headers[0].1, "caf\u{fffd}");
    }

    #[test]
    fn sensitive_query_parameters_are_redacted_and_the_rest_kept() {
        let redactor = Redactor::default().with_query_params(["Session"]);
        assert_eq!(
            redactor.redact_query("page=2&ACCESS_TOKEN=abc&flag&session=s1&q=a%3Db"),
            "page=2&ACCESS_TOKEN=[redacted]&flag&session=[redacted]&q=a%3Db"
        );
        assert!(matches!(
            redactor.redact_query("page=2&q=x"),
            Cow::Borrowed(_)
        ));
        assert_eq!(redactor.redact_query(""), "");
        // A parameter without a value has nothing to hide.
        assert_eq!(redactor.redact_query("token"), "token");
        assert!(!Redactor::default().is_sensitive_param("session"));
    }

    #[test]
    fn default_redactor_still_covers_the_built_ins() {
        let redactor = Redactor::default();
        assert!(redactor.is_sensitive("Cookie"));
        assert!(!redactor.is_sensitive("x-api-key"));
        assert!(!Redactor::new([""]).is_sensitive(""));
    }
}
