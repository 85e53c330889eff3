//! `tracer --pid PID`: attach kernel programs to a running process and attribute each
//! request's latency to on_cpu, runqueue, lock, net_io, disk_io, sleep or other.
//!
//! Data flow: kernel tracepoints (tracer-ebpf) -> ring buffer -> [`decode`] -> reorder window
//! -> [`attribution::Engine`] -> [`stats`] aggregates -> live table, [`export`] files.

mod attribution;
mod cli;
mod collector;
mod decode;
mod export;
mod fds;
mod go_tls;
mod gopclntab;
mod kernel_limits;
mod output;
mod preflight;
mod probes;
mod report;
mod stats;
mod tls;
mod tracefs;

use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::{bail, Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    attribution::{Engine, FdKind},
    cli::Args,
    collector::Collector,
    export::{write_json, HlogWriter, SlowRequests},
    fds::ProcFds,
    output::OutputDir,
    preflight::Target,
    probes::Probes,
};

/// How often the ring buffer is drained (programs submit without waking us).
const DRAIN_EVERY: Duration = Duration::from_millis(20);
/// How often the target is checked for exit.
const LIVENESS_EVERY: Duration = Duration::from_millis(250);

fn main() -> ExitCode {
    let args = cli::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    preflight::check_privileges(args.bpf_stats)?;
    let target = preflight::check_target(args.pid)?;
    if let Some(tid) = target.thread {
        eprintln!(
            "tracer: {tid} is a thread of process {} ({}): tracing the process, all of its threads",
            target.pid, target.comm
        );
    }
    let out = preflight::prepare_output(&args.output)?;
    if tracefs::ensure_mounted()? {
        eprintln!(
            "tracer: tracefs was not mounted; mounted it at {}",
            tracefs::TRACEFS
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(trace(args, target, Arc::new(out)))
}

async fn trace(args: Args, mut target: Target, out: Arc<OutputDir>) -> Result<()> {
    // Signals are caught before anything is attached, so a Ctrl-C at any point detaches.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    let fds = ProcFds::new(target.pid);
    let connections = fds.open_connections();
    let mut engine = Engine::new(fds);
    for fd in &connections {
        engine.set_fd_kind(*fd, FdKind::Connection);
    }

    let tls_on = args.tls == cli::Tls::On;
    let go = tls_on.then(|| go_tls::find_go_tls(target.pid));
    let report_eagain = matches!(go, Some(Ok(Some(_))));
    let (mut probes, mut ring) = Probes::attach(target.pid, args.bpf_stats, tls_on, report_eagain)?;
    let tls_status = match go {
        Some(go) => probes.attach_tls(target.pid, go, args.tls_io_probes),
        None => tls::TlsStatus {
            reason: Some("turned off (--tls off)".into()),
            ..Default::default()
        },
    };
    eprintln!(
        "tracer: attached to PID {} ({}): {} threads, {} open connections, {} kernel hooks",
        target.pid,
        target.comm,
        probes.threads,
        connections.len(),
        probes.attached(),
    );
    eprintln!("tracer: {}", tls_status.line());
    // Created once attached, so a refused attach leaves an earlier run's files alone.
    let hlog = HlogWriter::create(&out, std::time::SystemTime::now());
    let slow_ns = args.slow.map_or(u64::MAX, |ms| (ms * 1e6) as u64);
    let slow = SlowRequests::create(&out, slow_ns);
    let mut collector = Collector::new(target.pid, engine, hlog, slow);

    let mut drain = tokio::time::interval(DRAIN_EVERY);
    let mut liveness = tokio::time::interval(LIVENESS_EVERY);
    let interval = Duration::from_secs_f64(args.interval);
    let mut report = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let deadline = args.duration.map(Duration::from_secs_f64);
    let stop = async {
        match deadline {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);

    println!("{}", report::live_header());
    let stopped_by = loop {
        tokio::select! {
            _ = drain.tick() => collector.drain(&mut ring, Some(&probes), false),
            _ = report.tick() => {
                collector.drain(&mut ring, Some(&probes), false);
                println!("{}", report::live_row(&collector, args.interval));
                collector.end_interval();
            }
            _ = liveness.tick() => {
                if !preflight::target_alive(target.pid) {
                    break "target_exit";
                }
            }
            _ = &mut stop => break "duration",
            _ = sigint.recv() => break "signal",
            _ = sigterm.recv() => break "signal",
        }
    };

    collector.stop();
    eprintln!(
        "tracer: stopping ({stopped_by}): detaching and writing {}",
        args.output.display()
    );
    // Final read of the kernel side, then detach everything before writing the files.
    collector.drain(&mut ring, Some(&probes), false);
    let programs = probes.program_stats();
    collector.skipped_by_program = probes.skipped_runs();
    probes.detach();
    // Records submitted while the programs were being detached.
    collector.drain(&mut ring, None, true);
    collector.finish();
    // The last, partial interval, with the requests the final drain settled: the live rows add
    // up to the summary's request count.
    let last = collector.interval_length().as_secs_f64();
    println!("{}", report::live_row(&collector, last));
    collector.end_interval();
    target.refresh_comm(collector.comms.get(&target.pid).map(String::as_str));

    // A failed write never stops the run: the summary is printed, every file is attempted,
    // and the exit status tells that files are incomplete.
    let hlog = collector.hlog.commit();
    let requests = collector.slow.commit();
    let mut summary = report::summary_json(&collector, &target, stopped_by, &programs, &tls_status);
    summary["incomplete_files"] =
        output::incomplete_json(&[(output::HLOG, &hlog), (output::REQUESTS, &requests)]);
    print!("{}", report::final_summary(&collector, &target, stopped_by));
    // Taken last, so the peak covers the whole run, the final summary included.
    summary["collector"] = report::collector_usage();
    let summary = write_json(&out, output::SUMMARY, &summary);
    let files = [
        (output::SUMMARY, &summary),
        (output::HLOG, &hlog),
        (output::REQUESTS, &requests),
    ];
    match output::incomplete(out.path(), &files) {
        None => {
            println!(
                "files: {}/summary.json, latency.hlog, requests.jsonl",
                out.path().display()
            );
            Ok(())
        }
        Some(incomplete) => bail!(incomplete),
    }
}
