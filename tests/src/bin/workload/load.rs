//! `workload load`: keep-alive connections sending requests back to back against a loopback
//! server, then one JSON [`LoadResult`] line on stdout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, ValueEnum};
use tracer_tests::LoadResult;

use crate::load_client::{LoadConnection, Target};
use crate::{announce, nanos, tls};

/// Pause before a load connection reconnects after an error.
const RECONNECT_DELAY: Duration = Duration::from_millis(10);

/// Options of `workload load`. Every option but `--path` may be repeated: the last one wins.
#[derive(Args)]
#[command(args_override_self = true)]
pub struct LoadArgs {
    /// The server: a loopback IP:PORT (127.0.0.0/8, [::1]) or localhost:PORT
    #[arg(long, value_name = "HOST:PORT", value_parser = loopback_addr)]
    pub addr: SocketAddr,
    /// A path to request, with its query; repeat it to cycle through several
    #[arg(long = "path", value_name = "PATH", required = true, value_parser = request_path)]
    pub paths: Vec<String>,
    /// Keep-alive connections, each sending its requests back to back
    #[arg(long, value_name = "C", default_value_t = 4, value_parser = connection_count)]
    pub connections: usize,
    /// Seconds of load
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = load_duration)]
    pub duration: Duration,
    /// Stop after N requests over all connections
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// HTTPS (the server's certificate is not verified: it is a throw-away one)
    #[arg(long, value_enum, default_value_t = Switch::Off)]
    pub tls: Switch,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// Parses `HOST:PORT`, accepting only loopback IPs (127.0.0.0/8, ::1) or `localhost`.
fn loopback_addr(s: &str) -> Result<SocketAddr, String> {
    let addr = match s.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            let port = s
                .strip_prefix("localhost:")
                .ok_or("want IP:PORT or localhost:PORT")?;
            let port: u16 = port
                .parse()
                .map_err(|e| format!("bad port {port:?}: {e}"))?;
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
        }
    };
    if !addr.ip().is_loopback() {
        return Err(format!(
            "refusing non-loopback address {addr}: load is only generated against 127.0.0.0/8 or ::1"
        ));
    }
    Ok(addr)
}

/// `--path`: starts with '/' and has no spaces (it goes into the request line as is).
fn request_path(path: &str) -> Result<String, String> {
    if path.starts_with('/') && !path.contains(' ') {
        Ok(path.to_string())
    } else {
        Err("must start with '/' and contain no spaces".to_string())
    }
}

/// `--connections`: at least 1.
fn connection_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// `--duration`: seconds, more than zero.
fn load_duration(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "must be a number of seconds above zero".to_string())
}

/// Settings of `workload load`, shared by its connections.
struct LoadConfig {
    target: Target,
    paths: Vec<String>,
    max_requests: Option<u64>,
}

/// Latencies and errors seen by one load connection.
#[derive(Default)]
struct WorkerStats {
    latencies_ns: Vec<u64>,
    errors: u64,
}

/// `workload load`: prints one JSON [`LoadResult`] line.
pub fn run(args: LoadArgs) -> Result<()> {
    let tls = match args.tls {
        Switch::On => Some(tls::unverified_connector()?),
        Switch::Off => None,
    };
    let cfg = LoadConfig {
        target: Target {
            addr: args.addr,
            tls,
        },
        paths: args.paths,
        max_requests: args.requests,
    };
    let start = Instant::now();
    let deadline = start + args.duration;
    let issued = AtomicU64::new(0);
    let stats: Vec<WorkerStats> = thread::scope(|s| {
        let workers: Vec<_> = (0..args.connections)
            .map(|i| {
                let (cfg, issued) = (&cfg, &issued);
                s.spawn(move || load_worker(cfg, i, deadline, issued))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("load worker panicked"))
            .collect()
    });
    let result = summarize(stats, start.elapsed());
    announce(&serde_json::to_string(&result)?)
}

/// Reserves one request slot; false once `--requests` is used up.
fn take_request(issued: &AtomicU64, max: Option<u64>) -> bool {
    let n = issued.fetch_add(1, Ordering::Relaxed);
    max.is_none_or(|max| n < max)
}

/// One load connection: requests back to back, cycling through the paths from the
/// `index`-th; it reconnects after an error or a closing response.
fn load_worker(
    cfg: &LoadConfig,
    index: usize,
    deadline: Instant,
    issued: &AtomicU64,
) -> WorkerStats {
    let mut stats = WorkerStats::default();
    let mut client: Option<Box<dyn LoadConnection>> = None;
    let mut next_path = index;
    while Instant::now() < deadline {
        if client.is_none() {
            client = cfg.target.connect(deadline);
        }
        let Some(conn) = client.as_mut() else {
            stats.errors += 1;
            thread::sleep(RECONNECT_DELAY);
            continue;
        };
        if !take_request(issued, cfg.max_requests) {
            break;
        }
        let path = &cfg.paths[next_path % cfg.paths.len()];
        next_path += 1;
        let start = Instant::now();
        match conn.get(path) {
            Ok(resp) => {
                if (200..300).contains(&resp.status) {
                    stats.latencies_ns.push(nanos(start.elapsed()));
                } else {
                    stats.errors += 1;
                }
                if resp.header("Connection") == Some("close") {
                    client = None;
                }
            }
            Err(_) => {
                stats.errors += 1;
                client = None;
                thread::sleep(RECONNECT_DELAY);
            }
        }
    }
    stats
}

/// Nearest-rank percentile `p` (0..=1) of sorted `values`; 0 when empty.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The connections' stats over `elapsed`, as printed.
fn summarize(stats: Vec<WorkerStats>, elapsed: Duration) -> LoadResult {
    let errors = stats.iter().map(|s| s.errors).sum();
    let mut latencies: Vec<u64> = stats.into_iter().flat_map(|s| s.latencies_ns).collect();
    latencies.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    let duration_s = elapsed.as_secs_f64();
    LoadResult {
        requests: latencies.len() as u64,
        errors,
        duration_s,
        rps: latencies.len() as f64 / duration_s.max(f64::MIN_POSITIVE),
        p50_us: us(percentile(&latencies, 0.50)),
        p99_us: us(percentile(&latencies, 0.99)),
        max_us: us(latencies.last().copied().unwrap_or(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only() {
        assert_eq!(
            loopback_addr("127.0.0.1:80").unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert!(loopback_addr("127.3.4.5:80").is_ok());
        assert!(loopback_addr("[::1]:80").is_ok());
        assert_eq!(loopback_addr("localhost:9").unwrap().port(), 9);
        assert!(loopback_addr("10.0.0.1:80").is_err());
        assert!(loopback_addr("[::ffff:127.0.0.1]:80").is_err());
        assert!(loopback_addr("example.com:80").is_err());
        assert!(loopback_addr("127.0.0.1").is_err());
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&[7], 0.5), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn request_cap() {
        let issued = AtomicU64::new(0);
        assert!(take_request(&issued, Some(2)));
        assert!(take_request(&issued, Some(2)));
        assert!(!take_request(&issued, Some(2)));
        assert!(take_request(&issued, None));
    }
}
