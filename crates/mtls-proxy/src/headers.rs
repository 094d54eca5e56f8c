//! Per-route request header rules: names removed, and values set from
//! templates that may name the verified client identity.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config;
use crate::identity::ClientIdentity;

/// A piece of the verified identity a template can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    Subject,
    Uri,
    Dns,
    CommonName,
    Email,
    Fingerprint,
}

impl Var {
    fn parse(name: &str) -> Option<Var> {
        Some(match name {
            "client.subject" => Var::Subject,
            "client.uri" => Var::Uri,
            "client.dns" => Var::Dns,
            "client.cn" => Var::CommonName,
            "client.email" => Var::Email,
            "client.fingerprint" => Var::Fingerprint,
            _ => return None,
        })
    }

    fn value(self, id: &ClientIdentity) -> Option<&str> {
        match self {
            Var::Subject => Some(id.subject.as_str()),
            Var::Uri => id.uris.first().map(String::as_str),
            Var::Dns => id.dns.first().map(String::as_str),
            Var::CommonName => id.common_name.as_deref(),
            Var::Email => id.emails.first().map(String::as_str),
            Var::Fingerprint => Some(id.fingerprint.as_str()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

/// A header value with `{client.*}` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderTemplate {
    parts: Vec<Part>,
}

impl HeaderTemplate {
    /// Parses a template; an unknown variable or a lone brace is an error
    /// that names it.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = raw;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(format!("{raw:?}: `}}` without `{{`"));
            }
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("{raw:?}: `{{` without `}}`"))?;
            let name = &after[..close];
            let var = Var::parse(name).ok_or_else(|| {
                format!(
                    "{raw:?}: unknown variable {{{name}}}; known: client.subject, client.uri, \
                     client.dns, client.cn, client.email, client.fingerprint"
                )
            })?;
            parts.push(Part::Var(var));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        let template = HeaderTemplate { parts };
        if !template.uses_identity() {
            HeaderValue::from_str(raw)
                .map_err(|_| format!("{raw:?} is not a valid header value"))?;
        }
        Ok(template)
    }

    fn uses_identity(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Var(_)))
    }

    /// The value for a request; `None` when a variable has no value (no
    /// certificate, or no such name in it) or the result is no valid header
    /// value.
    pub fn render(&self, id: Option<&ClientIdentity>) -> Option<HeaderValue> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => out.push_str(v.value(id?)?),
            }
        }
        HeaderValue::from_str(&out).ok()
    }
}

/// A route's compiled header rules.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderTemplate)>,
}

impl HeaderRules {
    /// Compiles the rules of a route's configuration (already validated).
    pub fn build(config: &config::HeaderRules) -> Result<Self, String> {
        let name = |n: &str| {
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("{n:?} is not a header name"))
        };
        Ok(HeaderRules {
            remove: config
                .remove
                .iter()
                .map(|n| name(n))
                .collect::<Result<_, _>>()?,
            set: config
                .set
                .iter()
                .map(|(n, v)| Ok((name(n)?, HeaderTemplate::parse(v)?)))
                .collect::<Result<_, String>>()?,
        })
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }

    /// Removes, then sets, on the headers going upstream.
    pub fn apply(&self, headers: &mut HeaderMap, id: Option<&ClientIdentity>) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, template) in &self.set {
            match template.render(id) {
                Some(v) => {
                    headers.insert(name.clone(), v);
                }
                None => {
                    headers.remove(name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ClientIdentity {
        let mut id = ClientIdentity::default();
        id.subject = "CN=svc,O=corp".into();
        id.common_name = Some("svc".into());
        id.uris = vec!["spiffe://corp/ns/a".into()];
        id.fingerprint = "ff".into();
        id
    }

    #[test]
    fn templates_fill_in_the_verified_identity() {
        let t = HeaderTemplate::parse("id={client.uri};fp={client.fingerprint}").unwrap();
        assert_eq!(
            t.render(Some(&id())).unwrap(),
            "id=spiffe://corp/ns/a;fp=ff"
        );
        assert_eq!(t.render(None), None);
        let dns = HeaderTemplate::parse("{client.dns}").unwrap();
        assert_eq!(
            dns.render(Some(&id())),
            None,
            "no DNS name in the certificate"
        );
        let plain = HeaderTemplate::parse("static").unwrap();
        assert_eq!(plain.render(None).unwrap(), "static");
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        let e = HeaderTemplate::parse("{client.password}").unwrap_err();
        assert!(e.contains("unknown variable {client.password}"), "{e}");
        assert!(HeaderTemplate::parse("{client.uri")
            .unwrap_err()
            .contains("without"));
        assert!(HeaderTemplate::parse("a}").unwrap_err().contains("without"));
        assert!(HeaderTemplate::parse("a\nb")
            .unwrap_err()
            .contains("not a valid header value"));
    }

    #[test]
    fn rules_remove_then_set_replacing_what_the_client_sent() {
        let rules = HeaderRules::build(&config::HeaderRules {
            remove: vec!["forwarded".into(), "x-real-ip".into()],
            set: [
                ("x-client-subject".to_owned(), "{client.subject}".to_owned()),
                ("x-client-dns".to_owned(), "{client.dns}".to_owned()),
            ]
            .into(),
        })
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("forwarded", HeaderValue::from_static("for=1.2.3.4"));
        h.insert("x-real-ip", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-client-subject", HeaderValue::from_static("CN=admin"));
        h.insert("x-client-dns", HeaderValue::from_static("admin.corp"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        rules.apply(&mut h, Some(&id()));
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-client-subject"], "CN=svc,O=corp");
        assert_eq!(h["accept"], "*/*");
    }
}
