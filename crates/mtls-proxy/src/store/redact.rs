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

    /// Whether values of header `name`, already lowercase as every
    /// [`http::HeaderName`] is, are redacted. The configured names are
    /// lowercased when the redactor is built, so a plain comparison does.
    fn is_sensitive_lowercase(&self, name: &str) -> bool {
        ALWAYS_REDACTED
            .iter()
            .copied()
            .chain(self.extra.iter().map(String::as_str))
            .any(|secret| secret == name)
    }

    /// The JSON stored in a row for `headers`: an array of `[name, value]`
    /// pairs in order, with sensitive values replaced by [`REDACTED`]. Names
    /// and order survive, so a reader can still tell the header was sent.
    /// Values that are not UTF-8 are kept lossily.
    ///
    /// Written by hand rather than through serde: it runs on the proxy's
    /// thread twice per recorded exchange, so the common case (plain ASCII
    /// values) is one scan and one copy per value.
    pub fn encode_json(&self, headers: &HeaderMap) -> String {
        // Quotes, brackets and commas add eight bytes per pair; reserving it
        // all up front saves the reallocation of a growing buffer. Escapes
        // and redactions may still outgrow it; they are rare.
        let needed: usize = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 8)
            .sum();
        let mut out = Vec::with_capacity(needed + 2);
        out.push(b'[');
        for (i, (name, value)) in headers.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Header names are lowercase tokens: never anything to escape.
            out.push(b'[');
            out.push(b'"');
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b"\",");
            if self.is_sensitive_lowercase(name.as_str()) {
                push_json_string(&mut out, REDACTED);
            } else {
                push_json_value(&mut out, value.as_bytes());
            }
            out.push(b']');
        }
        out.push(b']');
        // Everything above was pushed from `str`s or checked to be ASCII.
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
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

/// Whether byte `b` cannot appear as itself inside a JSON string (DEL is
/// escaped too, so stored text never carries it raw).
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\' || b == 0x7f
}

/// Appends a header value as a JSON string literal. Plain ASCII without
/// anything to escape (practically every value) is copied as it is; the
/// rest goes through UTF-8 decoding (lossy) and escaping.
fn push_json_value(out: &mut Vec<u8>, value: &[u8]) {
    if is_plain_ascii(value) {
        out.push(b'"');
        out.extend_from_slice(value);
        out.push(b'"');
    } else {
        push_json_string(out, &String::from_utf8_lossy(value));
    }
}

/// Whether `bytes` is ASCII with nothing JSON needs escaped. Runs eight
/// bytes at a time: each test below sets a byte's high bit in its result
/// when that byte matches, and no byte sets one when none matches.
fn is_plain_ascii(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    /// Bytes of `word` below `n` (for `n` up to 0x80).
    fn below(word: u64, n: u8) -> u64 {
        word.wrapping_sub(ONES * u64::from(n)) & !word & HIGH
    }
    /// Bytes of `word` equal to `b`.
    fn equal(word: u64, b: u8) -> u64 {
        below(word ^ (ONES * u64::from(b)), 1)
    }
    let mut words = bytes.chunks_exact(8);
    for chunk in words.by_ref() {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let odd = (word & HIGH)
            | below(word, 0x20)
            | equal(word, b'"')
            | equal(word, b'\\')
            | equal(word, 0x7f);
        if odd != 0 {
            return false;
        }
    }
    words
        .remainder()
        .iter()
        .all(|&b| b.is_ascii() && !needs_escape(b))
}

/// Appends `s` as a JSON string literal, copying it run by run between the
/// bytes JSON requires escaped. Every escaped byte is ASCII, so the runs
/// always start and end on character boundaries.
fn push_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        out.extend_from_slice(&bytes[plain..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
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
        serde_json::from_str(&redactor.encode_json(&map)).unwrap()
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
        assert_eq!(out, br#""\u0001\n\r\u007fx""#);
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "\u{1}\n\r\u{7f}x");
        // Text between the escapes, multi-byte characters included, is
        // copied as it is.
        out.clear();
        push_json_value(&mut out, "é\"ü\\ß\t".as_bytes());
        assert_eq!(out, r#""é\"ü\\ß\t""#.as_bytes());
    }

    #[test]
    fn a_byte_to_escape_is_found_wherever_it_sits() {
        // Values are checked eight bytes at a time; every byte value is
        // tried at either end of a word and in the tail after the last full
        // one, among plain bytes and among bytes above 0x7f (which must not
        // hide a neighbour).
        for len in [1, 7, 8, 9, 15, 16, 17, 40] {
            let plain = vec![b'a'; len];
            assert!(is_plain_ascii(&plain), "len {len}");
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut v = plain.clone();
                    v[at] = b;
                    let expected = b.is_ascii() && !needs_escape(b);
                    assert_eq!(is_plain_ascii(&v), expected, "len {len}, {b:#x} at {at}");
                }
            }
        }
        assert!(is_plain_ascii(b""));
        assert!(is_plain_ascii(b" ~!#$%&'()*+,-./09:;<=>?@AZ[]^_`az{|}"));
        assert!(!is_plain_ascii(b"\xffabcdefg\x01"));
    }

    #[test]
    fn the_buffer_for_plain_headers_is_allocated_once() {
        let mut map = HeaderMap::new();
        map.insert("host", http::HeaderValue::from_static("example.test"));
        map.insert("accept", http::HeaderValue::from_static("*/*"));
        map.append("x-many", http::HeaderValue::from_static("1"));
        map.append("x-many", http::HeaderValue::from_static("2"));
        let json = Redactor::default().encode_json(&map);
        assert_eq!(
            json,
            r#"[["host","example.test"],["accept","*/*"],["x-many","1"],["x-many","2"]]"#
        );
        // What was reserved up front, exactly: one byte spare, for the
        // comma the first pair does without.
        assert_eq!(json.capacity(), json.len() + 1);
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
