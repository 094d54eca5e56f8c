//! Integration tests for mtls-proxy: the real proxy on port 0, certificates
//! made by rcgen in each test, a real echo backend and real clients.

mod attacks;
mod binary;
mod client_certs;
mod limits;
mod proxying;
mod recorder_load;
mod recording;
mod reload;
mod revocation;
mod support;
