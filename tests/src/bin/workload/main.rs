//! `workload`: a deliberately simple thread-per-connection HTTP/1.1 server whose
//! endpoints each spend a known time in one latency cause, the backend it talks
//! to for `/io`, and a keep-alive load generator.
//!
//! ```text
//! workload serve   [--port P] [--data-dir D] [--tls-cert CERT --tls-key KEY]
//! workload backend [--port P]
//! workload load    --addr HOST:PORT --path PATH [--path PATH ...]
//!                  [--connections C] [--duration SECS] [--requests N] [--tls on|off]
//! ```
//!
//! Endpoints of `serve` (each response carries `X-Cpu-Ns`, the time the handler's thread
//! spent on a CPU, by its perf task clock, and `X-Handler-Ns`, the time spent in the endpoint's characteristic work; `/cpu`,
//! `/sleep`, `/lock`, `/io` and `/disk` also carry `X-Runqueue-Ns`, the part of that time the thread spent
//! waiting for a CPU, from the kernel's own account; every endpoint but `/` also carries
//! `X-Queued-Before-Ns`, the time the thread waited for a CPU between the connection's
//! previous response and the handler's start, and `X-Queued-After-Ns`, the time it waited
//! for a CPU between the handler's end and the response's write):
//! `/` (nothing), `/cpu?ms=N` (busy spin), `/sleep?ms=N` (nanosleep),
//! `/lock?ms=N` (futex wait on a mutex held by another thread),
//! `/io?ms=N` (blocking round trip to the backend, which sleeps N ms),
//! `/disk?kb=N` (N KiB of writes plus fsync; also `X-Fsync-Ns`).
//!
//! With `--tls-cert`/`--tls-key` it serves HTTPS instead: each connection does an explicit
//! `SSL_accept`, then `SSL_read`/`SSL_write` (the system's libssl.so.3, through the
//! `openssl` crate). An `HTTP/1.0` request closes its connection
//! after the response (what `openssl s_time -www` expects).
//!
//! Modules: `server` (connections and endpoints) with `reply`, `measure` (the handler's own
//! account of its time), `lock_holder`, `scratch` (`/disk`'s file) and `backend` (the
//! process `/io` talks to); `tls`; `load` (the load generator) with `load_client`; `listener`
//! (a thread per connection, for the server and the backend).

mod backend;
mod listener;
mod load;
mod load_client;
mod lock_holder;
mod measure;
mod reply;
mod scratch;
mod server;
mod tls;

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// Largest `ms` any endpoint accepts (also the backend's longest sleep).
const MAX_MS: u64 = 60_000;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help goes to stdout and succeeds; a bad command line fails like any other error.
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Cmd::Serve(args) => server::serve(&args),
        Cmd::Backend(args) => backend::serve(&args),
        Cmd::Load(args) => load::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("workload: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A thread-per-connection HTTP/1.1 server whose endpoints each spend a known time in one
/// latency cause, the backend it talks to for `/io`, and a keep-alive load generator.
#[derive(Parser)]
#[command(name = "workload")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve HTTP (or HTTPS) on 127.0.0.1; prints `listening ADDR pid PID` once ready
    Serve(server::ServeArgs),
    /// The backend of `/io`: answers `N\n` with `ok\n` after N ms; prints its port
    Backend(backend::BackendArgs),
    /// Keep-alive load against a loopback server; prints one JSON line of results
    Load(load::LoadArgs),
}

/// Saturating `Duration` to whole nanoseconds.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Prints one line to stdout and flushes it (readiness handshakes, the load's result).
fn announce(line: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush().context("flush stdout")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{LoadArgs, Switch};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("workload").chain(args.iter().copied()))
    }

    fn load_args(args: &[&str]) -> LoadArgs {
        match parse(&[&["load"], args].concat()) {
            Ok(Cli {
                command: Cmd::Load(args),
            }) => args,
            Ok(_) => unreachable!("not `load`"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn load_options() {
        let args = load_args(&["--addr", "127.0.0.1:80", "--path", "/a", "--path=/b"]);
        assert_eq!(args.paths, ["/a", "/b"]);
        assert_eq!(args.connections, 4);
        assert_eq!(args.duration, Duration::from_secs(10));
        assert_eq!(args.requests, None);
        assert!(args.tls == Switch::Off);
        let args = load_args(&[
            "--addr=localhost:9",
            "--path",
            "/",
            "--connections",
            "3",
            "--connections",
            "5",
            "--duration",
            "0.5",
            "--requests",
            "20",
            "--tls",
            "on",
        ]);
        assert_eq!(args.addr.port(), 9);
        assert_eq!(args.connections, 5, "the last one wins");
        assert_eq!(args.duration, Duration::from_millis(500));
        assert_eq!(args.requests, Some(20));
        assert!(args.tls == Switch::On);
    }

    #[test]
    fn bad_command_lines() {
        let load = |rest: &[&str]| parse(&[&["load", "--addr", "127.0.0.1:80"], rest].concat());
        assert!(load(&["--path", "/"]).is_ok());
        assert!(load(&[]).is_err(), "--path is required");
        assert!(load(&["--path"]).is_err());
        assert!(load(&["--path", "x"]).is_err());
        assert!(load(&["--path", "/a b"]).is_err());
        assert!(load(&["--path", "/", "--connections", "0"]).is_err());
        assert!(load(&["--path", "/", "--duration", "0"]).is_err());
        assert!(load(&["--path", "/", "--tls", "maybe"]).is_err());
        assert!(load(&["--path", "/", "--bogus", "1"]).is_err());
        assert!(load(&["--path", "/", "stray"]).is_err());
        assert!(parse(&["serve", "--port", "x"]).is_err());
        assert!(parse(&["serve", "--tls-cert", "c"]).is_err());
        assert!(parse(&["serve", "--tls-key", "k"]).is_err());
        assert!(parse(&["serve", "--tls-cert", "c", "--tls-key", "k"]).is_ok());
        assert!(parse(&["backend", "--port", "0", "--port", "1"]).is_ok());
        assert!(parse(&["bogus"]).is_err());
        assert!(parse(&[]).is_err());
    }
}
