//! OpenSSL set-up (the system's libssl.so.3, through the `openssl` crate): the server's
//! acceptor and the load generator's connector.

use anyhow::{Context, Result};
use openssl::ssl::{SslAcceptor, SslConnector, SslFiletype, SslMethod, SslVerifyMode};

/// The HTTPS server's acceptor, with the PEM certificate chain `cert` and key `key`.
pub fn acceptor(cert: &str, key: &str) -> Result<SslAcceptor> {
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())?;
    builder
        .set_certificate_chain_file(cert)
        .with_context(|| format!("TLS certificate {cert}"))?;
    builder
        .set_private_key_file(key, SslFiletype::PEM)
        .with_context(|| format!("TLS key {key}"))?;
    Ok(builder.build())
}

/// The load generator's connector. It does not verify certificates: the server's is a
/// throw-away one.
pub fn unverified_connector() -> Result<SslConnector> {
    let mut builder = SslConnector::builder(SslMethod::tls())?;
    builder.set_verify(SslVerifyMode::NONE);
    Ok(builder.build())
}
