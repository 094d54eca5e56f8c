//! Header redaction: secrets are replaced before a row is written, so the
//! database (and every backup or `logs` output made from it) never sees them.

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

/// Replaces the values of sensitive headers with [`REDACTED`].
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    extra: Vec<String>,
}

impl Redactor {
    /// A redactor for the built-in names plus `extra` (case-insensitive).
    pub fn new<I, S>(extra: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Redactor {
            extra: extra
                .into_iter()
                .map(|name| name.as_ref().trim().to_ascii_lowercase())
                .filter(|name| !name.is_empty())
                .collect(),
        }
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
    fn default_redactor_still_covers_the_built_ins() {
        let redactor = Redactor::default();
        assert!(redactor.is_sensitive("Cookie"));
        assert!(!redactor.is_sensitive("x-api-key"));
        assert!(!Redactor::new([""]).is_sensitive(""));
    }
}
