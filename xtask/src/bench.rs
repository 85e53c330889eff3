//! `cargo xtask bench`: the tracer's overhead, measured as ratios within one run.
//!
//! For each scenario one workload server runs while load phases alternate: baseline (no
//! tracer), traced, baseline, traced, ..., then one traced phase with `--bpf-stats` for the
//! kernel programs' costs (the statistics cost time themselves). The traced phases
//! also yield the tracer's own summary: events received and lost, collector CPU and memory, and
//! the kernel programs' run counts and times.

use std::{
    collections::BTreeMap,
    env, fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{
    bin_dir, build_workspace, cmdline, setup,
    workload::{load_command, signal, Proc, Server},
};

/// Targets the verdict is judged against.
const MAX_THROUGHPUT_LOSS_PCT: f64 = 5.0;
/// The TLS target: new-connection-per-request HTTPS.
const MAX_TLS_THROUGHPUT_LOSS_PCT: f64 = 7.0;
/// How long a traced phase waits for the tracer to report `attached` before starting load
/// (attaching ~75 tracepoints takes seconds on a saturated 2-core machine).
const ATTACH_WAIT: Duration = Duration::from_secs(120);
/// How long the tracer gets to write its summary after SIGTERM.
const STOP_WAIT: Duration = Duration::from_secs(15);
/// Quiet time between phases.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
pub struct Args {
    /// Length of each load phase, in seconds
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    seconds: u32,
    /// Phases per mode (baseline and traced alternate)
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Run only these scenarios (A, B, E, G, F, C, D; repeatable) [default: all]
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
}

struct Scenario {
    name: &'static str,
    about: &'static str,
    target: Target,
    max_loss_pct: f64,
}

/// What a scenario loads.
enum Target {
    /// The workload server, with `workload load` on keep-alive connections (HTTPS when
    /// `https`).
    Workload {
        connections: u32,
        paths: &'static [&'static str],
        https: bool,
    },
    /// The workload server serving HTTPS (OpenSSL linked in), loaded by `openssl s_time`
    /// with these flags.
    WorkloadTls { client: &'static [&'static str] },
    /// The Go HTTPS test server (`tests/go/https_server.go`, crypto/tls), built with the
    /// system's Go, loaded by `openssl s_time` with these flags.
    GoTls { client: &'static [&'static str] },
    /// `openssl s_server` (libssl.so.3) with these flags, loaded by `openssl s_time`: a new
    /// TLS connection per request.
    OpenSsl {
        server: &'static [&'static str],
        client: &'static [&'static str],
    },
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "A",
        about: "saturating keep-alive load on /, 8 connections",
        target: Target::Workload {
            connections: 8,
            paths: &["/"],
            https: false,
        },
        max_loss_pct: MAX_THROUGHPUT_LOSS_PCT,
    },
    Scenario {
        name: "B",
        about: "mixed load, /cpu?ms=1, 4 connections",
        target: Target::Workload {
            connections: 4,
            paths: &["/cpu?ms=1"],
            https: false,
        },
        max_loss_pct: MAX_THROUGHPUT_LOSS_PCT,
    },
    Scenario {
        name: "E",
        about: "HTTPS against the workload server (libssl.so.3, uprobes), a new connection per request: s_time -new -www /",
        target: Target::WorkloadTls {
            client: &["-new", "-www", "/"],
        },
        max_loss_pct: MAX_TLS_THROUGHPUT_LOSS_PCT,
    },
    Scenario {
        name: "G",
        about: "HTTPS keep-alive against the workload server (libssl.so.3; only handshakes are probed), 8 connections, /",
        target: Target::Workload {
            connections: 8,
            paths: &["/"],
            https: true,
        },
        max_loss_pct: MAX_TLS_THROUGHPUT_LOSS_PCT,
    },
    Scenario {
        name: "F",
        about: "HTTPS against a Go net/http server (crypto/tls, uprobes at entry and RETs), a new connection per request: s_time -new -www /",
        target: Target::GoTls {
            client: &["-new", "-www", "/"],
        },
        max_loss_pct: MAX_TLS_THROUGHPUT_LOSS_PCT,
    },
    Scenario {
        name: "C",
        about: "HTTPS, a new connection per request: s_server -www (record framing), s_time -new -www /",
        target: Target::OpenSsl {
            server: &["-www"],
            client: &["-new", "-www", "/"],
        },
        max_loss_pct: MAX_TLS_THROUGHPUT_LOSS_PCT,
    },
    Scenario {
        name: "D",
        about: "TLS handshakes only: s_server (SSL_accept, uprobes), s_time -new",
        target: Target::OpenSsl {
            server: &[],
            client: &["-new"],
        },
        max_loss_pct: MAX_TLS_THROUGHPUT_LOSS_PCT,
    },
];

/// Runs one load phase to completion.
type LoadFn = Box<dyn FnMut() -> Result<Load>>;

/// `workload serve` arguments for HTTPS with `cert` and `key`.
fn tls_server_args<'a>(cert: &'a Path, key: &'a Path) -> [&'a std::ffi::OsStr; 4] {
    [
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
    ]
}

/// A scenario's running target: its pid, how to stop it, and the load to run against it.
type Running = (u32, Box<dyn FnOnce()>, LoadFn);

/// The JSON line `workload load` prints at the end.
struct Load {
    rps: Option<f64>,
    p99_us: Option<f64>,
    errors: Option<f64>,
}

struct Traced {
    load: Load,
    /// The tracer's `summary.json`, if it wrote one.
    summary: Option<Value>,
}

/// Everything measured for one scenario.
struct Measured {
    baseline: Vec<Load>,
    traced: Vec<Traced>,
    /// One more traced phase with `--bpf-stats`, for the per-program costs only: the kernel's
    /// run-time statistics cost time themselves, so throughput is compared without them.
    stats: Option<Traced>,
}

pub fn run(args: &Args) -> Result<()> {
    setup::run()?;
    build_workspace(true)?;
    let bins = bin_dir(true);
    let workload = bins.join("workload");
    let tracer = bins.join("tracer");
    let tmp = env::temp_dir().join(format!("tracer-bench-{}", std::process::id()));

    println!(
        "== bench: {} s phases, {} per mode, baseline and traced alternating",
        args.seconds, args.rounds
    );
    let mut failures = Vec::new();
    let mut results = Vec::new();
    let chosen = |s: &Scenario| {
        args.scenarios.is_empty()
            || args
                .scenarios
                .iter()
                .any(|n| n.eq_ignore_ascii_case(s.name))
    };
    for scenario in SCENARIOS.iter().filter(|s| chosen(s)) {
        let measured = measure(scenario, args, &workload, &tracer, &tmp, &mut failures)
            .with_context(|| format!("bench: scenario {} ({})", scenario.name, scenario.about))?;
        results.push((scenario, measured));
    }

    let mut misses = Vec::new();
    for (scenario, measured) in &results {
        misses.extend(report(scenario, args, measured));
    }
    println!();
    println!("tracer output of the traced phases: {}", tmp.display());
    let targets =
        format!("targets: throughput loss <= {MAX_THROUGHPUT_LOSS_PCT}% ({MAX_TLS_THROUGHPUT_LOSS_PCT}% for TLS), zero lost events");
    if misses.is_empty() {
        println!("verdict: PASS ({targets})");
    } else {
        println!("verdict: MISS ({targets}): {}", misses.join("; "));
    }
    if !failures.is_empty() {
        bail!(
            "bench: the tracer did not run cleanly:\n  {}",
            failures.join("\n  ")
        );
    }
    Ok(())
}

fn measure(
    scenario: &Scenario,
    args: &Args,
    workload: &Path,
    tracer: &Path,
    tmp: &Path,
    failures: &mut Vec<String>,
) -> Result<Measured> {
    println!();
    println!("== scenario {}: {}", scenario.name, scenario.about);
    let (pid, stop, mut load): Running = match scenario.target {
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
            let (pid, addr) = (server.pid, server.addr.clone());
            let workload = workload.to_path_buf();
            let seconds = args.seconds;
            (
                pid,
                Box::new(move || server.stop()),
                Box::new(move || {
                    let mut cmd = load_command(&workload, &addr, connections, seconds, paths);
                    if https {
                        cmd.args(["--tls", "on"]);
                    }
                    run_load(&mut cmd)
                }),
            )
        }
        Target::WorkloadTls { client } => {
            let (key, cert) = make_cert(tmp)?;
            let tls_args = [
                "--tls-cert".as_ref(),
                cert.as_os_str(),
                "--tls-key".as_ref(),
                key.as_os_str(),
            ];
            s_time_against(
                Server::start_with(workload, &tls_args)?,
                client,
                args.seconds,
            )?
        }
        Target::GoTls { client } => {
            let (key, cert) = make_cert(tmp)?;
            let mut cmd = Command::new(build_go_server(tmp)?);
            cmd.arg(&cert).arg(&key);
            s_time_against(Server::start_command(cmd)?, client, args.seconds)?
        }
        Target::OpenSsl { server, client } => {
            let tls = TlsServer::start(tmp, server)?;
            let (pid, port) = (tls.proc.id(), tls.port);
            let seconds = args.seconds;
            (
                pid,
                Box::new(move || tls.proc.stop()),
                Box::new(move || s_time(port, client, seconds)),
            )
        }
    };
    let mut measured = Measured {
        baseline: Vec::new(),
        traced: Vec::new(),
        stats: None,
    };
    for round in 1..=args.rounds {
        let phase = format!("{} baseline {round}", scenario.name);
        let baseline = load().with_context(|| phase.clone())?;
        println!("{phase}: {}", describe(&baseline));
        measured.baseline.push(baseline);
        thread::sleep(SETTLE);

        let phase = format!("{} traced {round}", scenario.name);
        let out_dir = tmp.join(format!("{}-{round}", scenario.name));
        let traced = traced_phase(
            TracerSpec {
                tracer,
                pid,
                seconds: args.seconds,
                bpf_stats: false,
            },
            &out_dir,
            &mut load,
            &phase,
            failures,
        )
        .with_context(|| phase.clone())?;
        println!("{phase}: {}", describe(&traced.load));
        measured.traced.push(traced);
        thread::sleep(SETTLE);
    }
    let phase = format!("{} traced with --bpf-stats", scenario.name);
    let out_dir = tmp.join(format!("{}-stats", scenario.name));
    let stats = traced_phase(
        TracerSpec {
            tracer,
            pid,
            seconds: args.seconds,
            bpf_stats: true,
        },
        &out_dir,
        &mut load,
        &phase,
        failures,
    )
    .with_context(|| phase.clone())?;
    println!("{phase}: {}", describe(&stats.load));
    measured.stats = Some(stats);
    stop();
    Ok(measured)
}

/// Run `workload load` to completion and parse its JSON line.
fn run_load(cmd: &mut Command) -> Result<Load> {
    let line = cmdline(cmd);
    println!("$ {line}");
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    crate::check(out.status, &line)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("`{line}` printed no JSON line: {:?}", stdout.trim()))?;
    let value: Value = serde_json::from_str(json)
        .with_context(|| format!("`{line}` printed malformed JSON: {json}"))?;
    Ok(Load {
        rps: number(&value, "/rps"),
        p99_us: number(&value, "/p99_us"),
        errors: number(&value, "/errors"),
    })
}

/// One traced phase: start the tracer, wait until it has attached (or [`ATTACH_WAIT`]), run
/// the load, then stop the tracer with SIGTERM and read its summary.
/// What a traced phase runs: which tracer, on which PID, for how long, with BPF stats or not.
struct TracerSpec<'a> {
    tracer: &'a Path,
    pid: u32,
    seconds: u32,
    bpf_stats: bool,
}

fn traced_phase(
    spec: TracerSpec,
    out_dir: &Path,
    load: &mut dyn FnMut() -> Result<Load>,
    phase: &str,
    failures: &mut Vec<String>,
) -> Result<Traced> {
    let TracerSpec {
        tracer,
        pid,
        seconds,
        bpf_stats,
    } = spec;
    if out_dir.exists() {
        fs::remove_dir_all(out_dir).with_context(|| format!("removing {}", out_dir.display()))?;
    }
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    let mut cmd = Command::new(tracer);
    cmd.args(["--pid", &pid.to_string()])
        .args(bpf_stats.then_some("--bpf-stats"))
        .args(["--duration", &(seconds + 1).to_string()])
        .arg("--output")
        .arg(out_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut proc = Proc::spawn(&mut cmd)?;
    let stderr = proc
        .child()
        .stderr
        .take()
        .context("tracer stderr is not piped")?;

    // Echo the tracer's stderr and report when it says it has attached.
    let (attached_tx, attached_rx) = mpsc::channel();
    let echo = thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("  {line}");
            if line.contains("attached to PID") {
                let _ = attached_tx.send(());
            }
        }
    });
    match attached_rx.recv_timeout(ATTACH_WAIT) {
        Ok(()) => {}
        Err(RecvTimeoutError::Timeout) => println!(
            "{phase}: no `attached` from the tracer within {} s; starting the load anyway",
            ATTACH_WAIT.as_secs()
        ),
        // Its stderr closed: it is exiting.
        Err(RecvTimeoutError::Disconnected) => {
            let _ = echo.join();
            let status = proc.wait_timeout(Duration::from_secs(5))?;
            bail!(
                "`{}` stopped before the load started ({})",
                proc.cmdline(),
                status.map_or("closed its stderr".to_string(), |s| s.to_string())
            );
        }
    }
    if let Some(status) = proc.child().try_wait().context("checking on the tracer")? {
        // Even a clean exit is a failure: it ended before there was anything to trace.
        let _ = echo.join();
        bail!(
            "`{}` exited before the load started ({status})",
            proc.cmdline()
        );
    }

    let load = load()?;

    // It may already have stopped by itself (its --duration has passed).
    if proc
        .child()
        .try_wait()
        .context("checking on the tracer")?
        .is_none()
    {
        signal(proc.id(), "TERM").context("stopping the tracer")?;
    }
    match proc.wait_timeout(STOP_WAIT)? {
        Some(status) if status.success() => {}
        Some(status) => failures.push(format!("{phase}: `{}` failed ({status})", proc.cmdline())),
        None => failures.push(format!(
            "{phase}: `{}` did not exit within {} s of SIGTERM and was killed",
            proc.cmdline(),
            STOP_WAIT.as_secs()
        )),
    }
    let _ = echo.join();

    let summary = read_summary(&out_dir.join("summary.json"));
    if summary.is_none() {
        println!("{phase}: no readable summary.json in {}", out_dir.display());
    }
    Ok(Traced { load, summary })
}

fn read_summary(path: &Path) -> Option<Value> {
    serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
}

/// A number at a JSON pointer; `None` when missing or not a number.
fn number(value: &Value, pointer: &str) -> Option<f64> {
    value.pointer(pointer)?.as_f64()
}

fn describe(load: &Load) -> String {
    format!(
        "{} req/s, p99 {} us, {} errors",
        fmt(load.rps, 0),
        fmt(load.p99_us, 0),
        fmt(load.errors, 0)
    )
}

fn fmt(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "n/a".to_string(),
    }
}

/// Mean of the values that are present; `None` when none is.
fn mean(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let present: Vec<f64> = values.into_iter().flatten().collect();
    (!present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64)
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

fn sum(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    values.into_iter().flatten().reduce(|a, b| a + b)
}

fn max(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    values.into_iter().flatten().reduce(f64::max)
}

fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d != 0.0 => Some(n / d),
        _ => None,
    }
}

/// Per kernel program, summed over the traced phases.
#[derive(Default)]
struct ProgramTotals {
    run_count: f64,
    run_time_ns: f64,
    /// Sum of the phases' `duration_s`; `None` once a phase lacked it.
    duration_s: Option<f64>,
}

/// Print a scenario's table; returns the targets it missed.
fn report(scenario: &Scenario, args: &Args, measured: &Measured) -> Vec<String> {
    let summaries: Vec<Option<&Value>> =
        measured.traced.iter().map(|t| t.summary.as_ref()).collect();
    let field = |pointer: &str| -> Vec<Option<f64>> {
        summaries
            .iter()
            .map(|summary| number((*summary)?, pointer))
            .collect()
    };
    let durations = field("/duration_s");
    let per_second = |values: Vec<Option<f64>>| {
        mean(
            values
                .into_iter()
                .zip(&durations)
                .map(|(value, duration)| ratio(value, *duration)),
        )
    };

    let base_rps = mean(measured.baseline.iter().map(|l| l.rps));
    let traced_rps = mean(measured.traced.iter().map(|t| t.load.rps));
    // Each traced phase against the baseline phase just before it: the machine's own drift
    // between phases (large for TLS loads on this VM) cancels out of a pair, and the median
    // of the pairs ignores one disturbed phase.
    let round_ratios: Vec<f64> = measured
        .baseline
        .iter()
        .zip(&measured.traced)
        .filter_map(|(b, t)| ratio(t.load.rps, b.rps))
        .collect();
    let rps_ratio = median(&round_ratios);
    let loss_pct = rps_ratio.map(|r| (1.0 - r) * 100.0);
    let base_p99 = mean(measured.baseline.iter().map(|l| l.p99_us));
    let traced_p99 = mean(measured.traced.iter().map(|t| t.load.p99_us));
    let base_errors = sum(measured.baseline.iter().map(|l| l.errors));
    let traced_errors = sum(measured.traced.iter().map(|t| t.load.errors));
    let events_per_s = per_second(field("/events/received"));
    let lost = sum(field("/events/lost"));
    let cpu_pct = per_second(field("/collector/cpu_s")).map(|share| share * 100.0);
    let rss_mib = max(field("/collector/max_rss_kb")).map(|kb| kb / 1024.0);

    let mut programs: BTreeMap<String, ProgramTotals> = BTreeMap::new();
    let stats_summary = measured.stats.as_ref().and_then(|t| t.summary.as_ref());
    let stats_duration = stats_summary.and_then(|s| number(s, "/duration_s"));
    for (summary, duration) in [(stats_summary, stats_duration)].iter() {
        let Some(list) = summary.and_then(|s| s.get("programs")?.as_array()) else {
            continue;
        };
        for program in list {
            let Some(name) = program.get("name").and_then(Value::as_str) else {
                continue;
            };
            let totals = programs
                .entry(name.to_string())
                .or_insert_with(|| ProgramTotals {
                    duration_s: Some(0.0),
                    ..ProgramTotals::default()
                });
            totals.run_count += number(program, "/run_count").unwrap_or(0.0);
            totals.run_time_ns += number(program, "/run_time_ns").unwrap_or(0.0);
            totals.duration_s = totals.duration_s.zip(*duration).map(|(a, b)| a + b);
        }
    }

    println!();
    println!(
        "== scenario {}: {} ({} x {} s per mode)",
        scenario.name, scenario.about, args.rounds, args.seconds
    );
    let row = |label: &str, baseline: String, traced: String, ratio: String| {
        println!("  {label:<30} {baseline:>12} {traced:>12} {ratio:>10}");
    };
    row("", "baseline".into(), "traced".into(), "ratio".into());
    row(
        "throughput (req/s, mean)",
        fmt(base_rps, 0),
        fmt(traced_rps, 0),
        fmt(ratio(traced_rps, base_rps), 3),
    );
    let pairs: Vec<String> = round_ratios.iter().map(|r| format!("{r:.3}")).collect();
    println!("  {:<30} {}", "traced/baseline per round", pairs.join(" "));
    row(
        "throughput loss (%, median pair)",
        String::new(),
        fmt(loss_pct, 1),
        fmt(rps_ratio, 3),
    );
    row(
        "p99 latency (us)",
        fmt(base_p99, 0),
        fmt(traced_p99, 0),
        fmt(ratio(traced_p99, base_p99), 3),
    );
    row(
        "load errors",
        fmt(base_errors, 0),
        fmt(traced_errors, 0),
        String::new(),
    );
    row(
        "events/s",
        String::new(),
        fmt(events_per_s, 0),
        String::new(),
    );
    row("lost events", String::new(), fmt(lost, 0), String::new());
    row(
        "collector CPU (% of one core)",
        String::new(),
        fmt(cpu_pct, 1),
        String::new(),
    );
    row(
        "collector max RSS (MiB)",
        String::new(),
        fmt(rss_mib, 1),
        String::new(),
    );
    if programs.is_empty() {
        println!("  kernel programs: n/a");
    } else {
        println!(
            "  {:<30} {:>12} {:>12}",
            "kernel program", "ns/run", "runs/s"
        );
        for (name, totals) in &programs {
            let ns_per_run = ratio(Some(totals.run_time_ns), Some(totals.run_count));
            let runs_per_s = ratio(Some(totals.run_count), totals.duration_s);
            println!(
                "  {:<30} {:>12} {:>12}",
                name,
                fmt(ns_per_run, 0),
                fmt(runs_per_s, 0)
            );
        }
    }

    let https_keep_alive = matches!(scenario.target, Target::Workload { https: true, .. });
    if https_keep_alive
        || matches!(
            scenario.target,
            Target::OpenSsl { .. } | Target::WorkloadTls { .. } | Target::GoTls { .. }
        )
    {
        let handshakes = stats_summary.and_then(|s| number(s, "/tls/handshakes/count"));
        let requests = stats_summary.and_then(|s| number(s, "/requests/count"));
        let uprobe_ns: f64 = stats_summary
            .and_then(|s| s.get("programs")?.as_array())
            .map(|list| {
                list.iter()
                    .filter(|p| {
                        p["name"]
                            .as_str()
                            .is_some_and(|n| n.starts_with("ssl_") || n.starts_with("go_"))
                    })
                    .filter_map(|p| number(p, "/run_time_ns"))
                    .sum()
            })
            .unwrap_or(0.0);
        let (per, count) = if https_keep_alive {
            ("request", requests)
        } else {
            ("handshake", handshakes)
        };
        println!(
            "  TLS handshakes traced (stats phase): {}; uprobe programs: {} ns per {per} \
             (BPF run time only: the uprobe trap itself is not in the kernel's BPF stats)",
            fmt(handshakes, 0),
            fmt(ratio(Some(uprobe_ns), count), 0)
        );
    }

    let mut misses = Vec::new();
    match loss_pct {
        Some(loss) if loss <= scenario.max_loss_pct => {}
        Some(loss) => misses.push(format!(
            "{}: throughput loss {loss:.1}% > {}%",
            scenario.name, scenario.max_loss_pct
        )),
        None => misses.push(format!("{}: throughput loss n/a", scenario.name)),
    }
    match lost {
        Some(0.0) => {}
        Some(lost) => misses.push(format!("{}: {lost:.0} lost events", scenario.name)),
        None => misses.push(format!("{}: lost events n/a", scenario.name)),
    }
    misses
}

/// `openssl s_server` with a throw-away certificate, for the TLS scenarios.
struct TlsServer {
    proc: Proc,
    port: u16,
}

impl TlsServer {
    fn start(tmp: &Path, flags: &[&str]) -> Result<TlsServer> {
        let (key, cert) = make_cert(tmp)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
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
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "s_server did not listen"
            );
            thread::sleep(Duration::from_millis(20));
        }
        println!(
            "$ openssl s_server -accept 127.0.0.1:{port} {} (pid {})",
            flags.join(" "),
            proc.id()
        );
        Ok(TlsServer { proc, port })
    }
}

/// A scenario's target pid, how to stop it, and its load: `openssl s_time` against `server`.
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
    Ok((
        server.pid,
        Box::new(move || server.stop()),
        Box::new(move || s_time(port, client, seconds)),
    ))
}

/// Build `tests/go/https_server.go` with the system's Go (installed by `cargo xtask setup`)
/// into `tmp`.
fn build_go_server(tmp: &Path) -> Result<std::path::PathBuf> {
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
fn make_cert(tmp: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
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
    anyhow::ensure!(status.success(), "openssl req failed");
    Ok((key, cert))
}

/// `openssl s_time` for `seconds`: new TLS connections back to back; connections per wall
/// second (s_time prints whole seconds only, so the bench times it itself).
fn s_time(port: u16, flags: &[&str], seconds: u32) -> Result<Load> {
    let started = std::time::Instant::now();
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
    })
}
