//! Header redaction: secrets are replaced before a row is written, so the
//! database (and every backup or `logs` output made from it) never sees them.

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

    /// Redacts `headers` in place, keeping names and order so the stored
    /// record still shows that the header was sent.
    pub fn redact(&self, headers: &mut [(String, String)]) {
        for (name, value) in headers.iter_mut() {
            if self.is_sensitive(name) {
                REDACTED.clone_into(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn built_in_and_configured_names_are_redacted_case_insensitively() {
        let redactor = Redactor::new(["X-Api-Key", " x-session "]);
        let mut headers = pairs(&[
            ("Authorization", "Bearer abc"),
            ("PROXY-AUTHORIZATION", "Basic xyz"),
            ("cookie", "sid=1"),
            ("Set-Cookie", "sid=2; HttpOnly"),
            ("x-api-key", "k"),
            ("X-SESSION", "s"),
            ("accept", "*/*"),
            ("x-api-key-hint", "not a secret"),
        ]);
        redactor.redact(&mut headers);
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
                "not a secret"
            ]
        );
        // Names and order survive, so the reader can tell the header was sent.
        assert_eq!(headers[0].0, "Authorization");
        assert_eq!(headers[3].0, "Set-Cookie");
    }

    #[test]
    fn default_redactor_still_covers_the_built_ins() {
        let redactor = Redactor::default();
        assert!(redactor.is_sensitive("Cookie"));
        assert!(!redactor.is_sensitive("x-api-key"));
        assert!(!Redactor::new([""]).is_sensitive(""));
    }
}
