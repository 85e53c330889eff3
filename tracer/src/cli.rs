//! Command line.

use std::path::PathBuf;

use clap::Parser;

const AFTER_HELP: &str = "\
Examples:
  tracer -p 1234                 trace PID 1234 until Ctrl-C, SIGTERM or its exit
  tracer -p 1234 -d 30 -i 1      30 seconds, live breakdown every second
  tracer -p 1234 --slow 100      also log each request slower than 100 ms

Causes: on_cpu, runqueue, lock, net_io, disk_io, sleep, other, tls_handshake.
Files in the output directory: summary.json, latency.hlog, requests.jsonl.
Needs root (or CAP_BPF + CAP_PERFMON, and CAP_SYS_ADMIN if tracefs must be mounted).";

/// Attribute every request's latency in a running process to CPU, run queue, locks, network
/// and disk I/O, sleep and TLS handshakes, with kernel tracepoints and uprobes: no restart, no
/// instrumentation.
#[derive(Parser, Debug)]
#[command(name = "tracer", version, after_help = AFTER_HELP)]
pub struct Args {
    /// PID of the process to trace (all of its threads, including ones created later)
    #[arg(short = 'p', long, value_name = "PID")]
    pub pid: u32,

    /// Stop after SECS seconds [default: until Ctrl-C, SIGTERM or the target exits]
    #[arg(short = 'd', long, value_name = "SECS", value_parser = positive_secs)]
    pub duration: Option<f64>,

    /// Print the live breakdown every SECS seconds (also the latency.hlog interval)
    #[arg(short = 'i', long, value_name = "SECS", default_value_t = 5.0, value_parser = positive_secs)]
    pub interval: f64,

    /// Directory for summary.json, latency.hlog and requests.jsonl (created if missing)
    #[arg(short = 'o', long, value_name = "DIR", default_value = "tracer-out")]
    pub output: PathBuf,

    /// Write each request slower than MS milliseconds to DIR/requests.jsonl [default: none]
    #[arg(long, value_name = "MS", value_parser = non_negative_ms)]
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

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a positive number of seconds")),
    }
}

fn non_negative_ms(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a number of milliseconds")),
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
}
