//! One load phase's client: `workload load`, `openssl s_time` or the bench's own paced HTTP
//! client, and what it measured.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use tracer_support::load::LoadResult;

use crate::cmdline;

/// What one load phase measured (from the JSON line `workload load` prints at the end, or
/// from `s_time`).
#[derive(Default)]
pub struct Load {
    pub rps: Option<f64>,
    pub p99_us: Option<f64>,
    pub errors: Option<f64>,
    /// The target's CPU time per request served in the phase, in µs (see
    /// `targets::with_target_cpu`).
    pub target_cpu_us: Option<f64>,
}

/// Runs `workload load` to completion and parses its JSON line.
pub fn run_workload_load(cmd: &mut Command) -> Result<Load> {
    let line = cmdline(cmd);
    let stdout = run_client(cmd, "")?;
    let json = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("`{line}` printed no JSON line: {:?}", stdout.trim()))?;
    let result: LoadResult = serde_json::from_str(json)
        .with_context(|| format!("`{line}` printed malformed JSON: {json}"))?;
    Ok(Load {
        rps: Some(result.rps),
        p99_us: Some(result.p99_us),
        errors: Some(result.errors as f64),
        ..Load::default()
    })
}

/// `openssl s_time` for `seconds`: new TLS connections back to back; connections per wall
/// second (s_time prints whole seconds only, so the bench times it itself).
pub fn s_time(port: u16, flags: &[&str], seconds: u32) -> Result<Load> {
    let started = Instant::now();
    let out = Command::new("openssl")
        .args(["s_time", "-connect", &format!("127.0.0.1:{port}")])
        .args(flags)
        .args(["-time", &seconds.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("running openssl s_time")?;
    let elapsed = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    let connections = text
        .lines()
        .find_map(|l| {
            l.split_once(" connections in ")?
                .0
                .trim()
                .parse::<f64>()
                .ok()
        })
        .with_context(|| format!("no connection count in s_time's output: {text}"))?;
    Ok(Load {
        rps: Some(connections / elapsed),
        p99_us: None,
        errors: Some(0.0),
        ..Load::default()
    })
}

/// Pause before a paced connection reconnects after an error.
const RECONNECT_DELAY: Duration = Duration::from_millis(10);
/// How long a paced connection waits for a response before counting an error.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A fixed request rate on keep-alive HTTP/1.1 connections (`workload load` sends back to
/// back only, so the bench paces its own client).
pub struct Paced {
    pub addr: SocketAddr,
    pub path: &'static str,
    /// Requests per second, over all connections.
    pub rate: u32,
    pub connections: u32,
    pub seconds: u32,
}

/// Sends `rate * seconds` requests, request `i` due at `i / rate` s after the start: each
/// connection takes the next request due, waits for its time and sends it (at once when it
/// is late: every connection was busy). A request's latency runs from the time it was due,
/// so a server that falls behind shows in the p99 (no coordinated omission). Throughput is
/// the requests answered over the time from the start to the last answer: the offered rate
/// when the server keeps up.
pub fn paced(spec: &Paced) -> Result<Load> {
    println!(
        "$ (bench client) GET http://{}{} at {} req/s on {} keep-alive connections for {} s",
        spec.addr, spec.path, spec.rate, spec.connections, spec.seconds
    );
    let total = u64::from(spec.rate) * u64::from(spec.seconds);
    let interval_ns = 1e9 / f64::from(spec.rate);
    let next = AtomicU64::new(0);
    let mut streams = Vec::new();
    for _ in 0..spec.connections {
        streams.push(PacedConnection::connect(spec.addr)?);
    }
    let start = Instant::now() + Duration::from_millis(50);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tracer-bench\r\n\r\n",
        spec.path, spec.addr
    );
    let results: Vec<(Vec<u64>, u64, Instant)> = thread::scope(|scope| {
        let workers: Vec<_> = streams
            .into_iter()
            .map(|mut conn| {
                let (next, request) = (&next, request.as_bytes());
                scope.spawn(move || {
                    let (mut latencies, mut errors, mut last) = (Vec::new(), 0u64, start);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            break;
                        }
                        let due = start + Duration::from_nanos((i as f64 * interval_ns) as u64);
                        let now = Instant::now();
                        if due > now {
                            thread::sleep(due - now);
                        }
                        match conn.exchange(request) {
                            Ok(()) => {
                                last = Instant::now();
                                latencies.push(last.duration_since(due).as_nanos() as u64);
                            }
                            Err(_) => {
                                errors += 1;
                                thread::sleep(RECONNECT_DELAY);
                                if let Ok(fresh) = PacedConnection::connect(conn.addr) {
                                    conn = fresh;
                                }
                            }
                        }
                    }
                    (latencies, errors, last)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a paced load connection panicked"))
            .collect()
    });
    let mut latencies: Vec<u64> = Vec::with_capacity(total as usize);
    let (mut errors, mut last) = (0, start);
    for (l, e, t) in results {
        latencies.extend(l);
        errors += e;
        last = last.max(t);
    }
    latencies.sort_unstable();
    let elapsed = last.saturating_duration_since(start).as_secs_f64();
    let p99_us = percentile(&latencies, 0.99).map(|ns| ns as f64 / 1e3);
    Ok(Load {
        rps: (elapsed > 0.0).then(|| latencies.len() as f64 / elapsed),
        p99_us,
        errors: Some(errors as f64),
        ..Load::default()
    })
}

/// The value at quantile `q` (0..=1) of `sorted` (nearest rank); `None` when empty.
fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    let rank = (sorted.len() as f64 * q).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// One keep-alive connection of [`paced`].
struct PacedConnection {
    addr: SocketAddr,
    stream: BufReader<TcpStream>,
}

impl PacedConnection {
    fn connect(addr: SocketAddr) -> Result<PacedConnection> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
        Ok(PacedConnection {
            addr,
            stream: BufReader::new(stream),
        })
    }

    /// Sends `request` and reads the response: a 200 with a `Content-Length` body.
    fn exchange(&mut self, request: &[u8]) -> Result<()> {
        self.stream.get_mut().write_all(request)?;
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        ensure!(
            line.starts_with("HTTP/1.1 200"),
            "unexpected status line {line:?}"
        );
        let mut length = None;
        loop {
            line.clear();
            ensure!(self.stream.read_line(&mut line)? > 0, "connection closed");
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.trim().parse::<usize>()?);
                }
            }
        }
        let length = length.context("a response without Content-Length")?;
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&[], 0.99), None);
        assert_eq!(percentile(&[5], 0.99), Some(5));
        assert_eq!(percentile(&[5], 0.0), Some(5));
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.99), Some(99));
        assert_eq!(percentile(&values, 0.5), Some(50));
        assert_eq!(percentile(&values, 1.0), Some(100));
    }
}

/// `wrk -t1 -c<connections>` for `seconds` against `url` on CPU `cpu`: throughput and p99.
pub fn wrk(url: &str, connections: u32, seconds: u32, cpu: u32) -> Result<Load> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &cpu.to_string(), "wrk", "-t1", "--latency"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg(url);
    Ok(parse_wrk(&run_client(&mut cmd, " (package wrk)")?))
}

/// Prints and runs a load client to completion (its stderr passed through); its stdout.
/// `hint` follows the error when it cannot start.
fn run_client(cmd: &mut Command, hint: &str) -> Result<String> {
    let line = cmdline(cmd);
    println!("$ {line}");
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{line}`{hint}"))?;
    crate::check(out.status, &line)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// From wrk's report: `Requests/sec:`, the `99%` line of `--latency`, and socket errors.
fn parse_wrk(report: &str) -> Load {
    let value_after = |label: &str| {
        report.lines().find_map(|l| {
            l.trim()
                .strip_prefix(label)
                .map(|rest| rest.trim().to_string())
        })
    };
    let rps = value_after("Requests/sec:").and_then(|v| v.parse().ok());
    let p99_us = value_after("99%").and_then(|v| duration_us(&v));
    let errors = value_after("Socket errors:").map_or(Some(0.0), |v| {
        Some(
            v.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<f64>().ok())
                .sum(),
        )
    });
    Load {
        rps,
        p99_us,
        errors,
        ..Load::default()
    }
}

/// wrk's `1.23ms`, `850.00us`, `2.01s` in microseconds.
fn duration_us(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    match unit {
        "us" => Some(number),
        "ms" => Some(number * 1e3),
        "s" => Some(number * 1e6),
        _ => None,
    }
}

#[cfg(test)]
mod wrk_tests {
    use super::*;

    #[test]
    fn wrk_reports_are_parsed() {
        let report = "Running 5s test @ http://127.0.0.1:18080/
  1 threads and 32 connections
  Latency Distribution
     50%    0.98ms
     99%    2.50ms
  142857 requests in 5.00s, 20.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  28577.23
";
        let load = parse_wrk(report);
        assert_eq!(load.rps, Some(28577.23));
        assert_eq!(load.p99_us, Some(2500.0));
        assert_eq!(load.errors, Some(3.0));
        assert_eq!(duration_us("850.00us"), Some(850.0));
    }
}
