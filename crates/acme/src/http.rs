//! The HTTPS client instant-acme talks through: the workspace's reqwest
//! with rustls on ring, so no second TLS stack (instant-acme's own client
//! would bring hyper-rustls with the platform verifier, or aws-lc).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

use crate::config::Trust;
use crate::error::Error;

pub(crate) struct Client(reqwest::Client);

impl Client {
    pub(crate) fn new(trust: &Trust) -> Result<Self, Error> {
        let mut roots = rustls::RootCertStore::empty();
        match trust {
            Trust::System => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
            Trust::Only(certs) => {
                for cert in certs {
                    roots.add(cert.clone()).map_err(|e| Error::Config {
                        what: "trusted root",
                        reason: e.to_string(),
                    })?;
                }
            }
        }
        if roots.is_empty() {
            return Err(Error::Config {
                what: "trusted roots",
                reason: "no root certificate to verify the ACME server with".into(),
            });
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config {
            what: "TLS client",
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Config {
                what: "HTTP client",
                reason: e.to_string(),
            })?;
        Ok(Self(client))
    }
}

impl HttpClient for Client {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.0.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            let rsp = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            let status = rsp.status();
            let headers = rsp.headers().clone();
            let body = rsp
                .bytes()
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            let mut out = http::Response::new(Full::new(body));
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok(BytesResponse::from(out))
        })
    }
}
