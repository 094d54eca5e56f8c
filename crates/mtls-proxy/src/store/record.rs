//! What the proxy hands the store ([`Record`]) and what queries give back
//! ([`RecordRow`]).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::HeaderMap;

use super::Redactor;

use super::from_micros;

/// What a row describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An HTTP exchange that reached the proxy after a successful handshake
    /// (including ones the proxy answered itself, e.g. identity not allowed).
    Request,
    /// A TLS handshake that failed; there is no HTTP request.
    Handshake,
}

impl Kind {
    /// The name stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Handshake => "handshake",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "request" => Ok(Kind::Request),
            "handshake" => Ok(Kind::Handshake),
            _ => Err(()),
        }
    }
}

/// How the bodies of a row are stored. Maintenance rewrites old rows from
/// `Identity` to `Zstd`; queries always return plain bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyEncoding {
    Identity,
    Zstd,
}

impl BodyEncoding {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BodyEncoding::Identity => "identity",
            BodyEncoding::Zstd => "zstd",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "identity" => Some(BodyEncoding::Identity),
            "zstd" => Some(BodyEncoding::Zstd),
            _ => None,
        }
    }
}

/// One exchange or failed handshake, as the proxy reports it.
///
/// Headers may still contain secrets: the store redacts them before the row
/// is written. Bodies must already be cut to the route's capture limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When the exchange (or handshake) started.
    pub ts: SystemTime,
    /// How long it took, until the response was fully sent or the failure.
    pub duration: Duration,
    /// Request or failed handshake.
    pub kind: Kind,
    /// The configured route that matched, if any.
    pub route: Option<Arc<str>>,
    /// The upstream address the request was sent to, if any.
    pub upstream: Option<Arc<str>>,
    /// HTTP method.
    pub method: Option<http::Method>,
    /// Request path without the query string.
    pub path: Option<String>,
    /// Query string without the leading `?`.
    pub query: Option<String>,
    /// Response status sent to the client.
    pub status: Option<u16>,
    /// Bytes received from the client (request body).
    pub bytes_in: u64,
    /// Bytes sent to the client (response body).
    pub bytes_out: u64,
    /// The client certificate identity (e.g. its SPIFFE ID or subject).
    pub client_identity: Option<String>,
    /// The client's remote address.
    pub peer: Option<SocketAddr>,
    /// Negotiated TLS version, e.g. `TLSv1.3`.
    pub tls_version: Option<&'static str>,
    /// The server name the client asked for in its TLS handshake.
    pub sni: Option<String>,
    /// Why the exchange failed, as a stable reason such as
    /// `upstream_connect_refused`, `identity_not_allowed` or `tls:unknown_issuer`.
    pub error: Option<String>,
    /// Request headers as received, encoded and redacted.
    pub request_headers: StoredHeaders,
    /// Response headers as sent, encoded and redacted.
    pub response_headers: StoredHeaders,
    /// Captured request body, already truncated to the capture limit.
    pub request_body: Option<Bytes>,
    /// Captured response body, already truncated to the capture limit.
    pub response_body: Option<Bytes>,
    /// Whether either captured body was cut short.
    pub truncated: bool,
}

impl Record {
    /// An empty record of `kind` starting now; fill in the fields that apply.
    pub fn new(kind: Kind) -> Self {
        Record {
            ts: SystemTime::now(),
            duration: Duration::ZERO,
            kind,
            route: None,
            upstream: None,
            method: None,
            path: None,
            query: None,
            status: None,
            bytes_in: 0,
            bytes_out: 0,
            client_identity: None,
            peer: None,
            tls_version: None,
            sni: None,
            error: None,
            request_headers: StoredHeaders::default(),
            response_headers: StoredHeaders::default(),
            request_body: None,
            response_body: None,
            truncated: false,
        }
    }
}

/// Headers the way a row stores them: a JSON array of `[name, value]` pairs
/// in order, sensitive values already replaced by `[redacted]`.
///
/// The proxy encodes headers while it still holds them (see
/// [`super::Recorder::encode_headers`]), so a record never keeps the
/// connection's buffers alive and secrets never travel to the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHeaders(String);

impl StoredHeaders {
    /// Encodes `headers`, redacting what `redactor` says is sensitive.
    pub fn encode(headers: &HeaderMap, redactor: &Redactor) -> Self {
        StoredHeaders(redactor.encode_json(headers))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for StoredHeaders {
    /// No headers.
    fn default() -> Self {
        StoredHeaders("[]".to_owned())
    }
}

/// One stored row, as queries return it. Bodies are already decompressed
/// and headers already redacted. Serialises to the JSON shape documented in
/// [`super::format`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRow {
    /// Row id; increases with insertion order.
    pub id: i64,
    /// Start of the exchange in unix microseconds.
    pub ts_us: i64,
    /// Duration in microseconds.
    pub duration_us: i64,
    /// Request or failed handshake.
    pub kind: Kind,
    /// Matched route.
    pub route: Option<String>,
    /// Upstream address.
    pub upstream: Option<String>,
    /// HTTP method.
    pub method: Option<String>,
    /// Request path.
    pub path: Option<String>,
    /// Query string.
    pub query: Option<String>,
    /// Response status.
    pub status: Option<u16>,
    /// Bytes received from the client.
    pub bytes_in: u64,
    /// Bytes sent to the client.
    pub bytes_out: u64,
    /// Client certificate identity.
    pub client_identity: Option<String>,
    /// Client's remote address as text.
    pub peer: Option<String>,
    /// Negotiated TLS version.
    pub tls_version: Option<String>,
    /// Server name from the TLS handshake.
    pub sni: Option<String>,
    /// Failure reason.
    pub error: Option<String>,
    /// Redacted request headers.
    pub request_headers: Vec<(String, String)>,
    /// Redacted response headers.
    pub response_headers: Vec<(String, String)>,
    /// Captured request body.
    pub request_body: Option<Bytes>,
    /// Captured response body.
    pub response_body: Option<Bytes>,
    /// Whether a captured body was cut short.
    pub truncated: bool,
}

impl RecordRow {
    /// Start of the exchange.
    pub fn time(&self) -> SystemTime {
        from_micros(self.ts_us)
    }

    /// Duration of the exchange.
    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.duration_us.max(0).unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for kind in [Kind::Request, Kind::Handshake] {
            assert_eq!(kind.as_str().parse::<Kind>(), Ok(kind));
        }
        assert!("tcp".parse::<Kind>().is_err());
    }
}
