//! Starting what a scenario traces (the workload server, the Go HTTPS server, the Go test
//! service or `openssl s_server`) and the load to run against it.

use std::{
    ffi::OsStr,
    net::TcpListener,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result};
use tracer_support::{
    go::{build_go_program, build_https_server, go_service_source, GoBuild, Toolchain},
    tls::{make_cert, start_s_server, wait_until_listening, CertKey, LISTEN_WAIT},
};

use super::{
    load::{paced, run_workload_load, s_time, wrk, Load, Paced},
    scenarios::{GoLoad, Target},
};
use crate::workload::{load_command, Proc, Server};

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
/// Go build (made with `tracer-support`, as the tests make theirs).
pub fn start(target: &Target, workload: &Path, tmp: &Path, seconds: u32) -> Result<Running> {
    let Running { pid, stop, load } = start_target(target, workload, tmp, seconds)?;
    Ok(Running {
        pid,
        stop,
        load: with_target_cpu(pid, load),
    })
}

/// `load`, also measuring the target's CPU time per request served: the process's user and
/// system time (/proc/PID/stat, exited threads included, in clock ticks) over the requests.
/// The kernel leaves steal time out of a task's CPU time; the tracer's programs that run in
/// the target's context are in it (its collector is not: that is reported on its own).
fn with_target_cpu(pid: u32, mut load: LoadFn) -> LoadFn {
    Box::new(move || {
        let before = process_cpu_ticks(pid);
        let started = std::time::Instant::now();
        let mut measured = load()?;
        let elapsed = started.elapsed().as_secs_f64();
        let after = process_cpu_ticks(pid);
        measured.target_cpu_us = match (before, after, measured.rps) {
            (Some(before), Some(after), Some(rps)) if after >= before && rps > 0.0 => {
                let cpu_us = (after - before) as f64 * 1e6 / CLOCK_TICKS_PER_S;
                Some(cpu_us / (rps * elapsed))
            }
            _ => None,
        };
        Ok(measured)
    })
}

/// USER_HZ, the unit of /proc/PID/stat's times (100 on every Linux architecture's ABI).
const CLOCK_TICKS_PER_S: f64 = 100.0;

/// utime + stime of process `pid` (all its threads, live and exited), in clock ticks.
fn process_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(field(14)? + field(15)?)
}

fn start_target(target: &Target, workload: &Path, tmp: &Path, seconds: u32) -> Result<Running> {
    match *target {
        Target::Workload {
            connections,
            paths,
            https,
        } => {
            let server = if https {
                Server::start_with(workload, &tls_server_args(&make_cert(tmp)?))?
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
            let server = Server::start_with(workload, &tls_server_args(&make_cert(tmp)?))?;
            s_time_against(server, client, seconds)
        }
        Target::GoTls { client } => {
            let CertKey { cert, key } = make_cert(tmp)?;
            let go_server = build_https_server(tmp, GoBuild::default())
                .context("building the Go HTTPS server")?;
            let mut cmd = Command::new(go_server);
            cmd.arg(&cert).arg(&key);
            s_time_against(Server::start_command(cmd)?, client, seconds)
        }
        Target::GoService(ref go_load) => go_service(go_load, workload, tmp, seconds),
        Target::Nginx { connections } => nginx(tmp, connections, seconds),
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

/// The Go test service, built with the system's Go into `tmp`, under `go_load`.
fn go_service(go_load: &GoLoad, workload: &Path, tmp: &Path, seconds: u32) -> Result<Running> {
    let exe = build_go_program(
        &go_service_source(),
        tmp,
        GoBuild::default(),
        Toolchain::System,
    )
    .context("building the Go test service")?;
    let server = Server::start_command(Command::new(exe))?;
    let addr = server.addr.clone();
    let load: LoadFn = match *go_load {
        GoLoad::Saturating { connections, path } => {
            let workload = workload.to_path_buf();
            Box::new(move || {
                run_workload_load(&mut load_command(
                    &workload,
                    &addr,
                    connections,
                    seconds,
                    &[path],
                ))
            })
        }
        GoLoad::FixedRate {
            connections,
            path,
            rate,
        } => {
            let spec = Paced {
                addr: addr
                    .parse()
                    .with_context(|| format!("the Go service's address {addr}"))?,
                path,
                rate,
                connections,
                seconds,
            };
            Box::new(move || paced(&spec))
        }
    };
    Ok(Running {
        pid: server.pid,
        stop: Box::new(move || server.stop()),
        load,
    })
}

/// The CPU the nginx scenario's server runs on, and its client's.
const NGINX_CPU: u32 = 0;
const WRK_CPU: u32 = 1;

/// nginx as one process serving plain HTTP keep-alive (`master_process off`: the process we
/// start is the worker, whose pid is traced) on CPU [`NGINX_CPU`], loaded by `wrk -t1` on
/// the other CPU, so the two do not trade CPUs between phases.
fn nginx(tmp: &Path, connections: u32, seconds: u32) -> Result<Running> {
    let dir = tmp.join("nginx");
    std::fs::create_dir_all(dir.join("logs"))?;
    std::fs::create_dir_all(dir.join("html"))?;
    std::fs::write(dir.join("html/index.html"), "hello\n")?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let conf = format!(
        "worker_processes 1;\nmaster_process off;\ndaemon off;\npid {pid};\n\
         error_log {log} error;\nevents {{ worker_connections 1024; }}\n\
         http {{ access_log off; keepalive_requests 100000000; \
         server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n",
        pid = dir.join("nginx.pid").display(),
        log = dir.join("logs/error.log").display(),
        root = dir.join("html").display(),
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &NGINX_CPU.to_string(), "nginx", "-p"])
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("logs/error.log"))
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let proc = Proc::spawn(&mut cmd).context("starting nginx (package nginx-light)")?;
    wait_until_listening("nginx", port, LISTEN_WAIT)?;
    let url = format!("http://127.0.0.1:{port}/");
    Ok(Running {
        // taskset executes nginx in its own process.
        pid: proc.id(),
        stop: Box::new(move || proc.stop()),
        load: Box::new(move || wrk(&url, connections, seconds, WRK_CPU)),
    })
}

/// `workload serve` arguments for HTTPS with `tls`'s certificate and key.
fn tls_server_args(tls: &CertKey) -> [&OsStr; 4] {
    [
        "--tls-cert".as_ref(),
        tls.cert.as_os_str(),
        "--tls-key".as_ref(),
        tls.key.as_os_str(),
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
        let (proc, port) = start_s_server(&make_cert(tmp)?, flags, Proc::spawn)?;
        println!(
            "$ openssl s_server -accept 127.0.0.1:{port} {} (pid {})",
            flags.join(" "),
            proc.id()
        );
        Ok(SServer { proc, port })
    }
}
