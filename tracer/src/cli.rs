//! Command line.

use std::path::PathBuf;

use clap::{error::ErrorKind, Parser};

/// Shortest `--duration` and `--interval`, in seconds: a live row per 0.1 s is already more
/// than anyone reads, and each row costs a drain and a latency.hlog interval.
pub const MIN_SECS: f64 = 0.1;
/// Longest `--duration` and `--interval`: 30 days (timers cannot hold arbitrary durations;
/// `-d 1e300` used to panic after attaching).
pub const MAX_SECS: f64 = 30.0 * 24.0 * 3600.0;

const AFTER_HELP: &str = "\
Examples:
  tracer -p 1234                 trace PID 1234 until Ctrl-C, SIGTERM or its exit
  tracer -p 1234 -d 30 -i 1      30 seconds, live breakdown every second
  tracer -p 1234 --slow 100      also log each request slower than 100 ms

Causes: on_cpu, runqueue, steal, go_runqueue, lock, chan, net_io, disk_io, sleep, gc, other,
tls_handshake.
Files in the output directory: summary.json, latency.hlog, requests.jsonl, waits.folded,
waits.svg.
Needs root. Without root: CAP_BPF + CAP_PERFMON; CAP_SYS_PTRACE for another user's process;
CAP_SYS_ADMIN for TLS uprobes and --bpf-stats (see the README).";

/// Attribute every request's latency in a running process to CPU, run queue, locks, network
/// and disk I/O, sleep and TLS handshakes, with kernel tracepoints and uprobes: no restart, no
/// instrumentation.
#[derive(Parser, Debug)]
#[command(name = "tracer", version, after_help = AFTER_HELP)]
pub struct Args {
    /// PID of the process to trace (all of its threads, including ones created later)
    #[arg(short = 'p', long, value_name = "PID", value_parser = pid, allow_negative_numbers = true)]
    pub pid: u32,

    /// Stop after SECS seconds, 0.1 to 2592000 (30 days) [default: until Ctrl-C, SIGTERM or the
    /// target exits]
    #[arg(short = 'd', long, value_name = "SECS", value_parser = secs, allow_negative_numbers = true)]
    pub duration: Option<f64>,

    /// Print the live breakdown every SECS seconds, 0.1 to 2592000 (also the latency.hlog
    /// interval)
    #[arg(short = 'i', long, value_name = "SECS", default_value_t = 5.0, value_parser = secs, allow_negative_numbers = true)]
    pub interval: f64,

    /// Directory for summary.json, latency.hlog and requests.jsonl (created if missing)
    #[arg(short = 'o', long, value_name = "DIR", default_value = "tracer-out")]
    pub output: PathBuf,

    /// Write each request slower than MS milliseconds to DIR/requests.jsonl [default: none]
    #[arg(long, value_name = "MS", value_parser = non_negative_ms, allow_negative_numbers = true)]
    pub slow: Option<f64>,

    /// Time TLS handshakes (cause `tls_handshake`): uprobes on OpenSSL (shared or static)
    /// and Go's crypto/tls, and the TLS record framing on the socket for other servers
    /// (only record headers are classified, in the kernel; never payloads)
    #[arg(long, value_enum, default_value_t = Tls::On)]
    pub tls: Tls,

    /// Also probe OpenSSL's SSL_read/SSL_write family: handshakes that a first read or write
    /// starts implicitly are then timed by uprobes instead of the record framing. Costs a
    /// uprobe and a uretprobe on every TLS read and write (halved keep-alive HTTPS
    /// throughput in the bench), so it is off by default
    #[arg(long)]
    pub tls_io_probes: bool,

    /// For a Go target (Go 1.17+, x86-64): follow its goroutines with uprobes on the Go
    /// scheduler (runtime.gopark, ready, injectglist, execute, goexit1), which report when a
    /// goroutine parks and why, who woke it, which thread runs it, and when it exits
    #[arg(long, value_enum, default_value_t = Goroutines::On)]
    pub goroutines: Goroutines,

    /// Take the user stack where a request's thread blocks or its goroutine parks, and report
    /// the call sites where requests wait (summary.json wait_sites, waits.folded, waits.svg)
    #[arg(long, value_enum, default_value_t = Stacks::On)]
    pub stacks: Stacks,

    /// Attribute the requests of one connection in N, for very hot servers: the kernel side
    /// picks a connection by its socket's address and ports and skips the others' reads and writes at
    /// its first checks, so they cost almost nothing and are neither counted nor attributed
    /// (Go targets whose goroutines are followed: every request) [default: 1, every request]
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = one_in, allow_negative_numbers = true)]
    pub sample: u32,

    /// Turn on the kernel's BPF run-time statistics while tracing and report each kernel
    /// program's runs and ns per run in summary.json (costs some ns per program run)
    #[arg(long)]
    pub bpf_stats: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    On,
    Off,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stacks {
    On,
    Off,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goroutines {
    On,
    Off,
}

/// Parse the command line. A usage error is one `tracer: error: ...` line on stderr and exit
/// status 2, like every other error of the tracer; `--help` and `--version` print as usual.
pub fn parse() -> Args {
    Args::try_parse().unwrap_or_else(|e| match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => {
            eprintln!("tracer: error: {}", one_line(&e));
            std::process::exit(2)
        }
    })
}

/// clap's message without its `error:` prefix, usage and tips, on one line.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let text = text.trim_start().strip_prefix("error:").unwrap_or(&text);
    let message = text.split("\n\n").next().unwrap_or_default();
    let words: Vec<&str> = message.split_whitespace().collect();
    format!("{}; see `tracer --help`", words.join(" "))
}

fn pid(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(format!(
            "`{s}` is not a process ID: pass a positive PID (e.g. from `pgrep -f NAME`)"
        )),
    }
}

fn one_in(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "`{s}` is not a sampling rate: pass N >= 1 to attribute the requests of one connection in N (1: all)"
        )),
    }
}

fn secs(s: &str) -> Result<f64, String> {
    let range = format!("SECS must be from {MIN_SECS} to {MAX_SECS} (30 days)");
    match s.parse::<f64>() {
        Ok(v) if (MIN_SECS..=MAX_SECS).contains(&v) => Ok(v),
        Ok(v) if v.is_finite() => Err(format!("out of range: {range}")),
        _ => Err(format!("`{s}` is not a number of seconds: {range}")),
    }
}

fn non_negative_ms(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!(
            "`{s}` is not a number of milliseconds: MS must be 0 or more (0 logs every request)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn flags_parse_like_bcc_tools() {
        let a = Args::try_parse_from([
            "tracer", "-p", "42", "-d", "1.5", "-i", "2", "-o", "x", "--slow", "10",
        ])
        .unwrap();
        assert_eq!(
            (a.pid, a.duration, a.interval, a.slow),
            (42, Some(1.5), 2.0, Some(10.0))
        );
        assert_eq!(a.output, PathBuf::from("x"));
        let a = Args::try_parse_from(["tracer", "--pid", "7"]).unwrap();
        assert_eq!((a.duration, a.interval, a.slow), (None, 5.0, None));
        assert_eq!((a.tls, a.goroutines), (Tls::On, Goroutines::On));
        let a = Args::try_parse_from(["tracer", "-p", "7", "--goroutines", "off"]).unwrap();
        assert_eq!(a.goroutines, Goroutines::Off);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(
            Args::try_parse_from(["tracer"]).is_err(),
            "--pid is required"
        );
        assert!(Args::try_parse_from(["tracer", "-p", "x"]).is_err());
        assert!(Args::try_parse_from(["tracer", "-p", "1", "-i", "0"]).is_err());
        assert!(Args::try_parse_from(["tracer", "-p", "1", "-d", "-3"]).is_err());
        Args::command().debug_assert();
    }

    /// The message of a refused command line, checked to come from a value parser.
    fn value_error(args: &[&str]) -> String {
        let e = Args::try_parse_from(args).expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::ValueValidation, "{e}");
        e.to_string()
    }

    #[test]
    fn negative_numbers_are_values_not_flags() {
        for (args, says) in [
            (&["tracer", "--pid", "-1"][..], "`-1` is not a process ID"),
            (&["tracer", "-p", "-1"], "`-1` is not a process ID"),
            (
                &["tracer", "-p", "1", "--duration", "-5"],
                "SECS must be from 0.1",
            ),
            (&["tracer", "-p", "1", "-i", "-2"], "SECS must be from 0.1"),
            (
                &["tracer", "-p", "1", "--slow", "-1"],
                "MS must be 0 or more",
            ),
            (
                &["tracer", "-p", "1", "--sample", "0"],
                "`0` is not a sampling rate: pass N >= 1",
            ),
            (
                &["tracer", "-p", "1", "--sample", "-2"],
                "`-2` is not a sampling rate",
            ),
        ] {
            let message = value_error(args);
            assert!(message.contains(says), "{args:?}: {message}");
        }
        // The same message as the `=` form, which always was a value.
        assert_eq!(
            value_error(&["tracer", "-p", "1", "--slow", "-1"]),
            value_error(&["tracer", "-p", "1", "--slow=-1"])
        );
    }

    #[test]
    fn seconds_out_of_range_are_refused_with_the_range() {
        for value in ["1e300", "inf", "2592001", "0", "0.0001", "0.09"] {
            for flag in ["-d", "-i"] {
                let message = value_error(&["tracer", "-p", "1", flag, value]);
                assert!(
                    message.contains("SECS must be from 0.1 to 2592000 (30 days)"),
                    "{flag} {value}: {message}"
                );
            }
        }
        let a = Args::try_parse_from(["tracer", "-p", "1", "-d", "2592000", "-i", "0.1"]).unwrap();
        assert_eq!((a.duration, a.interval), (Some(2_592_000.0), 0.1));
        // Accepted values convert to a Duration without panicking.
        assert!(std::time::Duration::from_secs_f64(MAX_SECS).as_secs() > 0);
    }

    #[test]
    fn usage_errors_are_one_line() {
        for args in [
            &["tracer"][..],
            &["tracer", "-p", "1", "-x"],
            &["tracer", "-p", "1", "--tls", "maybe"],
            &["tracer", "-p", "1", "--slow", "-1"],
        ] {
            let line = one_line(&Args::try_parse_from(args).unwrap_err());
            assert!(!line.contains('\n') && !line.starts_with("error"), "{line}");
            assert!(line.ends_with("; see `tracer --help`"), "{line}");
        }
        let line = one_line(&Args::try_parse_from(["tracer"]).unwrap_err());
        assert!(line.contains("--pid <PID>"), "{line}");
        let line =
            one_line(&Args::try_parse_from(["tracer", "-p", "1", "--tls", "x"]).unwrap_err());
        assert!(line.contains("on, off"), "{line}");
    }
}
