//! Throw-away TLS certificates for the HTTPS test servers (`openssl s_server`, nginx,
//! `tls-server`, the Go server, the workload's HTTPS mode), and `openssl s_server` started
//! with one.

use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};

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

/// How long a TLS test server (`openssl s_server`, nginx) may take to listen.
pub const LISTEN_WAIT: Duration = Duration::from_secs(20);

/// Starts `openssl s_server -quiet -accept 127.0.0.1:PORT -cert CERT -key KEY EXTRA...` in
/// its plain mode on a free port, and waits (up to [`LISTEN_WAIT`]) until it
/// listens: (the process, its port). `spawn` starts the command (the caller's own process
/// handle, e.g. one that kills the server when dropped); `extra` are more s_server flags, e.g.
/// `-www`. Its stdin stays open (piped, never written: on EOF the plain mode stops serving),
/// its stdout and stderr are discarded.
///
/// The connection that found it listening was a (failed) handshake of its own.
pub fn start_s_server<P>(
    cert: &CertKey,
    extra: &[&str],
    spawn: impl FnOnce(&mut Command) -> Result<P>,
) -> Result<(P, u16)> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("picking a free port for openssl s_server")?
        .port();
    let mut cmd = Command::new("openssl");
    cmd.args(["s_server", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert.cert)
        .arg("-key")
        .arg(&cert.key)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = spawn(&mut cmd).context("starting openssl s_server")?;
    wait_until_listening("s_server", port, LISTEN_WAIT)?;
    Ok((server, port))
}

/// Waits up to `timeout` until a connection to 127.0.0.1:`port` succeeds; `what` names the
/// server in the error. The connection is closed at once (to a TLS server: a failed
/// handshake).
pub fn wait_until_listening(what: &str, port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(
            Instant::now() < deadline,
            "{what} did not listen on port {port}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
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

    #[test]
    fn starts_s_server_and_it_listens() {
        let dir =
            std::env::temp_dir().join(format!("tracer-support-s-server-{}", std::process::id()));
        let cert = make_cert(&dir).unwrap();
        let (mut child, port) = start_s_server(&cert, &["-www"], |cmd| Ok(cmd.spawn()?)).unwrap();
        let listening = TcpStream::connect(("127.0.0.1", port)).is_ok();
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(listening);
    }
}
