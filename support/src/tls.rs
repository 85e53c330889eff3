//! Throw-away TLS certificates for the HTTPS test servers (`openssl s_server`, nginx,
//! `tls-server`, the Go server, the workload's HTTPS mode).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::run_quietly;

/// A certificate and its private key, PEM files.
#[derive(Debug, Clone)]
pub struct CertKey {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A self-signed P-256 certificate for `localhost`, valid for a day, and its key: `cert.pem`
/// and `key.pem` in `dir` (created if missing), made with `openssl req` (the `openssl`
/// package, which `cargo xtask setup` installs).
pub fn make_cert(dir: &Path) -> Result<CertKey> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-nodes", "-subj", "/CN=localhost", "-days", "1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert);
    run_quietly(
        &mut cmd,
        "openssl req (the openssl package: `cargo xtask setup` installs it)",
    )?;
    Ok(CertKey { cert, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_a_certificate_and_a_key() {
        let dir = std::env::temp_dir().join(format!("tracer-support-cert-{}", std::process::id()));
        let made = make_cert(&dir).unwrap();
        let cert = std::fs::read_to_string(&made.cert).unwrap();
        let key = std::fs::read_to_string(&made.key).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    }
}
