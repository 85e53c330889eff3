//! Starting what a scenario traces (the workload server, the Go HTTPS server or
//! `openssl s_server`) and the load to run against it.

use std::{
    ffi::OsStr,
    fs,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};

use super::{
    load::{run_workload_load, s_time, Load},
    scenarios::Target,
};
use crate::workload::{load_command, Proc, Server};

/// How long `openssl s_server` may take to listen.
const S_SERVER_LISTEN_WAIT: Duration = Duration::from_secs(20);

/// Runs one load phase to completion.
pub type LoadFn = Box<dyn FnMut() -> Result<Load>>;

/// A scenario's running target: its pid, how to stop it, and the load to run against it.
pub struct Running {
    pub pid: u32,
    stop: Box<dyn FnOnce()>,
    pub load: LoadFn,
}

impl Running {
    /// Stops the target.
    pub fn stop(self) {
        (self.stop)()
    }
}

/// Starts `target`; each load phase lasts `seconds`. `tmp` takes the certificate and the
/// Go build.
pub fn start(target: &Target, workload: &Path, tmp: &Path, seconds: u32) -> Result<Running> {
    match *target {
        Target::Workload {
            connections,
            paths,
            https,
        } => {
            let server = if https {
                let (key, cert) = make_cert(tmp)?;
                Server::start_with(workload, &tls_server_args(&cert, &key))?
            } else {
                Server::start(workload)?
            };
            let addr = server.addr.clone();
            let workload = workload.to_path_buf();
            let load = move || {
                let mut cmd = load_command(&workload, &addr, connections, seconds, paths);
                if https {
                    cmd.args(["--tls", "on"]);
                }
                run_workload_load(&mut cmd)
            };
            Ok(Running {
                pid: server.pid,
                stop: Box::new(move || server.stop()),
                load: Box::new(load),
            })
        }
        Target::WorkloadTls { client } => {
            let (key, cert) = make_cert(tmp)?;
            let server = Server::start_with(workload, &tls_server_args(&cert, &key))?;
            s_time_against(server, client, seconds)
        }
        Target::GoTls { client } => {
            let (key, cert) = make_cert(tmp)?;
            let mut cmd = Command::new(build_go_server(tmp)?);
            cmd.arg(&cert).arg(&key);
            s_time_against(Server::start_command(cmd)?, client, seconds)
        }
        Target::OpenSsl { server, client } => {
            let s_server = SServer::start(tmp, server)?;
            let (pid, port) = (s_server.proc.id(), s_server.port);
            Ok(Running {
                pid,
                stop: Box::new(move || s_server.proc.stop()),
                load: Box::new(move || s_time(port, client, seconds)),
            })
        }
    }
}

/// `workload serve` arguments for HTTPS with `cert` and `key`.
fn tls_server_args<'a>(cert: &'a Path, key: &'a Path) -> [&'a OsStr; 4] {
    [
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
    ]
}

/// `server` as a running target loaded by `openssl s_time` with the flags `client`.
fn s_time_against(
    server: Server,
    client: &'static [&'static str],
    seconds: u32,
) -> Result<Running> {
    let port: u16 = server
        .addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in the server's address {}", server.addr))?;
    Ok(Running {
        pid: server.pid,
        stop: Box::new(move || server.stop()),
        load: Box::new(move || s_time(port, client, seconds)),
    })
}

/// `openssl s_server` with a throw-away certificate, for the TLS scenarios.
struct SServer {
    proc: Proc,
    port: u16,
}

impl SServer {
    /// Starts it with the extra `flags` on a free port, and waits until it listens.
    fn start(tmp: &Path, flags: &[&str]) -> Result<SServer> {
        let (key, cert) = make_cert(tmp)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut cmd = Command::new("openssl");
        cmd.args([
            "s_server",
            "-quiet",
            "-accept",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .args(flags)
        // stdin stays open: on EOF the plain mode stops serving
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let proc = Proc::spawn(&mut cmd)?;
        let deadline = Instant::now() + S_SERVER_LISTEN_WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(Instant::now() < deadline, "s_server did not listen");
            thread::sleep(Duration::from_millis(20));
        }
        println!(
            "$ openssl s_server -accept 127.0.0.1:{port} {} (pid {})",
            flags.join(" "),
            proc.id()
        );
        Ok(SServer { proc, port })
    }
}

/// Build `tests/go/https_server.go` with the system's Go (installed by `cargo xtask setup`)
/// into `tmp`.
fn build_go_server(tmp: &Path) -> Result<PathBuf> {
    let out = tmp.join("https_server");
    let mut cmd = Command::new("go");
    cmd.arg("build")
        .arg("-o")
        .arg(&out)
        .arg(crate::root().join("tests/go/https_server.go"))
        .env("GOCACHE", tmp.join("gocache"))
        .env("GOPATH", tmp.join("gopath"))
        .env("GO111MODULE", "off");
    crate::run_cmd(&mut cmd).context("building the Go HTTPS server")?;
    Ok(out)
}

/// A throw-away P-256 certificate in `tmp`: (key, cert).
fn make_cert(tmp: &Path) -> Result<(PathBuf, PathBuf)> {
    fs::create_dir_all(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let (key, cert) = (tmp.join("key.pem"), tmp.join("cert.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-subj", "/CN=localhost", "-days", "1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running openssl req")?;
    ensure!(status.success(), "openssl req failed");
    Ok((key, cert))
}
