//! Errors that know which side failed and whether a retry is safe.

use std::fmt;

use http::StatusCode;

/// Which side of the proxy an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSide {
    /// The client sent something we refuse (too large, not allowed, malformed).
    Downstream,
    /// The upstream could not be reached or misbehaved.
    Upstream,
    /// Our own configuration or state.
    Internal,
}

/// What went wrong, in terms a status code and a metric label can be derived from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// No route matches the request's host and path.
    NoRoute,
    /// The product, or the engine's own checks of the request, refused it
    /// with this status; `reason` is a short stable label such as
    /// `invalid_host`.
    Refused {
        /// The status the client sees.
        status: StatusCode,
        /// A stable label for metrics and records.
        reason: &'static str,
    },
    /// The request headers exceed the configured size.
    HeadersTooLarge,
    /// The request body exceeds the configured size.
    BodyTooLarge,
    /// Connecting to the upstream was refused or failed.
    ConnectFailed,
    /// Connecting to the upstream took longer than the connect timeout.
    ConnectTimeout,
    /// The TLS handshake with the upstream failed (unknown CA, bad name...).
    UpstreamTls,
    /// The upstream did not send response headers in time.
    HeaderTimeout,
    /// The whole exchange took longer than the request timeout.
    RequestTimeout,
    /// The upstream broke the HTTP protocol or closed the connection.
    UpstreamProtocol,
    /// The client went away or sent a broken body.
    DownstreamProtocol,
    /// Anything our own code got wrong.
    Internal,
}

impl ErrorKind {
    /// The side the error is blamed on.
    pub fn side(&self) -> ErrorSide {
        match self {
            ErrorKind::NoRoute
            | ErrorKind::Refused { .. }
            | ErrorKind::HeadersTooLarge
            | ErrorKind::BodyTooLarge
            | ErrorKind::DownstreamProtocol => ErrorSide::Downstream,
            ErrorKind::ConnectFailed
            | ErrorKind::ConnectTimeout
            | ErrorKind::UpstreamTls
            | ErrorKind::HeaderTimeout
            | ErrorKind::RequestTimeout
            | ErrorKind::UpstreamProtocol => ErrorSide::Upstream,
            ErrorKind::Internal => ErrorSide::Internal,
        }
    }

    /// A short stable label for metrics and stored records.
    pub fn reason(&self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no_route",
            ErrorKind::Refused { reason, .. } => reason,
            ErrorKind::HeadersTooLarge => "headers_too_large",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::ConnectFailed => "upstream_connect_failed",
            ErrorKind::ConnectTimeout => "upstream_connect_timeout",
            ErrorKind::UpstreamTls => "upstream_tls",
            ErrorKind::HeaderTimeout => "upstream_header_timeout",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::UpstreamProtocol => "upstream_protocol",
            ErrorKind::DownstreamProtocol => "downstream_protocol",
            ErrorKind::Internal => "internal",
        }
    }

    /// The status the client sees when this error ends an exchange.
    pub fn status(&self) -> StatusCode {
        match self {
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::Refused { status, .. } => *status,
            ErrorKind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::ConnectFailed | ErrorKind::UpstreamTls | ErrorKind::UpstreamProtocol => {
                StatusCode::BAD_GATEWAY
            }
            ErrorKind::ConnectTimeout | ErrorKind::HeaderTimeout | ErrorKind::RequestTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ErrorKind::DownstreamProtocol => StatusCode::BAD_REQUEST,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the request can be sent again to another upstream: only when
    /// we know the upstream never saw it.
    pub fn retry_safe(&self) -> bool {
        matches!(self, ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout)
    }
}

/// An error ending or interrupting an exchange.
#[derive(Debug, Clone)]
pub struct Error {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Detail for logs; never sent to clients.
    pub detail: String,
}

impl Error {
    /// Builds an error of `kind` with a detail for the logs.
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Error {
            kind,
            detail: detail.into(),
        }
    }

    /// A refusal with `status` and a stable `reason` label.
    pub fn refused(status: StatusCode, reason: &'static str, detail: impl Into<String>) -> Self {
        Error::new(ErrorKind::Refused { status, reason }, detail)
    }

    /// Shorthand for [`ErrorKind::side`].
    pub fn side(&self) -> ErrorSide {
        self.kind.side()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            f.write_str(self.kind.reason())
        } else {
            write!(f, "{}: {}", self.kind.reason(), self.detail)
        }
    }
}

impl std::error::Error for Error {}

/// Errors building engine parts from configuration (certificates, keys, CAs).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A PEM file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{path}: {what}")]
    Pem { path: String, what: String },
    /// rustls refused the certificate, key or verifier settings.
    #[error("{context}: {source}")]
    Tls {
        context: String,
        source: rustls::Error,
    },
    /// The client verifier could not be built (no trust anchors, bad CRL...).
    #[error("{context}: {detail}")]
    Verifier { context: String, detail: String },
    /// A value is out of its allowed range or malformed.
    #[error("{0}")]
    Invalid(String),
}
