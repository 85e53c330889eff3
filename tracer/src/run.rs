//! One trace, start to end: pre-flight checks, attach, the select loop (drain the ring
//! buffer, print a live row per interval, watch the target and the signals), then detach and
//! write everything.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    cli::{self, Args, Stacks},
    collector::Collector,
    engine::Engine,
    engine::Tid,
    kernel::{
        self, privileges,
        uprobes::{GoSchedStatus, TlsStatus},
        Probes,
    },
    output::{
        self, console,
        files::{self, OutputDir},
        flame,
        hlog::HlogWriter,
        jsonl::SlowRequests,
        live,
        sites::{SiteNamer, StackSource},
        summary::{CollectorUsage, IncompleteFile, StoppedBy, Summary, TraceEnd},
    },
    symbols::{self, Symbolizer},
    target::{self, fds::ProcFds, go, go::runtime::GoProbeFacts, Executable, Target},
};

/// How often the ring buffer is drained while records arrive (programs submit without
/// waking us).
const DRAIN_EVERY: Duration = Duration::from_millis(20);
/// After drains that found the ring empty, the wait doubles up to this: an idle target costs
/// about 5 wakeups a second instead of 50 (each drain is a wakeup, an epoll round and the
/// loss counters' reads: about 0.2 ms here, so 50 a second were 0.9% of a core).
const DRAIN_IDLE_MAX: Duration = Duration::from_millis(200);
/// How often the target is checked for exit.
const LIVENESS_EVERY: Duration = Duration::from_millis(250);
/// Uprobes whose removal takes about a second (see [`warn_of_slow_uprobe_detach`]).
const SLOW_UPROBE_DETACH: usize = 10;

/// The wait before the next drain, after one that read `records`.
fn next_drain_after(records: usize, waited: Duration) -> Duration {
    if records > 0 {
        DRAIN_EVERY
    } else {
        (waited * 2).min(DRAIN_IDLE_MAX)
    }
}

/// Trace as `args` say; an error is one line for the operator.
pub fn run(args: Args) -> Result<()> {
    privileges::check_privileges(args.bpf_stats)?;
    let target = target::check_target(args.pid)?;
    if let Some(tid) = target.thread {
        eprintln!(
            "tracer: {tid} is a thread of process {} ({}): tracing the process, all of its threads",
            target.pid, target.comm
        );
    }
    let out = files::prepare_output(&args.output)?;
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
    for &(fd, inode) in &connections {
        engine.seed_connection(fd, inode);
    }

    let tls_on = args.tls == cli::Tls::On;
    let goroutines_on = args.goroutines == cli::Goroutines::On;
    // Read once, for Go's crypto/tls and runtime, and a statically linked OpenSSL.
    let exe = (tls_on || goroutines_on).then(|| Executable::read(target.pid));
    let go = if tls_on {
        look_in(&exe, go::find_go_tls)
    } else {
        None
    };
    let go_runtime = if goroutines_on {
        look_in(&exe, go::runtime::find_go_runtime)
    } else {
        None
    };
    // Where the executable is in memory, for the runtime functions' code the probes and the
    // engine compare return addresses with.
    let go_load_bias = match (&exe, &go_runtime) {
        (Some(Ok(exe)), Some(Ok(Some(_)))) => Some(exe.load_bias(target.pid)),
        _ => None,
    };
    let go_facts = match (&go_runtime, &go_load_bias) {
        (Some(Ok(Some(runtime))), Some(bias)) => Some(GoProbeFacts {
            offsets: runtime.offsets,
            body_reads: bias
                .as_ref()
                .map(|&bias| runtime.body_read_waits(bias))
                .unwrap_or_default(),
        }),
        _ => None,
    };
    let go_offsets = go_facts.map(|facts| facts.offsets);
    // A Go program's goroutines park after a read or write that found nothing (EAGAIN):
    // where a handshake's wait for the peer starts, and where a served connection is back
    // to waiting for its next request.
    let report_eagain = matches!(go, Some(Ok(Some(_)))) || go_offsets.is_some();
    let stacks_on = args.stacks == Stacks::On;
    // A goroutine's requests are delimited by what its reads and writes say about the
    // connection's state (EAGAIN, net/http's background read), which needs all of them.
    let sample_one_in = if go_offsets.is_some() { 1 } else { args.sample };
    if sample_one_in != args.sample {
        eprintln!(
            "tracer: --sample {} is ignored: a Go target's goroutines are followed, and every request is attributed",
            args.sample
        );
    }
    engine.set_connections_sampled(sample_one_in > 1);
    let (mut probes, mut ring) = Probes::attach(
        target.pid,
        args.bpf_stats,
        tls_on,
        report_eagain,
        go_facts,
        stacks_on,
        sample_one_in,
    )?;
    let go_sched = match (&exe, go_runtime) {
        (Some(Ok(exe)), Some(Ok(Some(runtime)))) => {
            engine.set_go_wait_reasons(runtime.wait_reasons.clone());
            match go_load_bias {
                Some(Ok(bias)) => {
                    engine.set_go_gc_callers(runtime.gc_semaphore_callers_loaded(bias))
                }
                None => {}
                Some(Err(e)) => eprintln!(
                    "tracer: the GC's own semaphore waits and HTTP/2 request body reads will \
                     count as lock: cannot place the executable in memory: {e:#}"
                ),
            }
            probes.attach_go_sched(target.pid, &exe.path, &runtime)
        }
        (Some(Err(e)), Some(_)) => GoSchedStatus::Off {
            reason: format!("cannot tell whether the target is a Go program: {e:#}"),
        },
        (_, Some(Err(e))) => GoSchedStatus::Off {
            reason: format!("{e:#}"),
        },
        _ => GoSchedStatus::NotGo,
    };
    let tls_status = match go {
        Some(go) => {
            let exe = exe.as_ref().and_then(|exe| exe.as_ref().ok());
            probes.attach_tls(target.pid, exe, go, args.tls_io_probes)
        }
        None => TlsStatus {
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
    if let Some(line) = go_sched.line() {
        eprintln!("tracer: {line}");
    }
    if sample_one_in > 1 {
        let chosen_by = if probes.picks_by_ports {
            "each socket's address and ports"
        } else {
            "each socket's address (this kernel's BTF does not place its ports)"
        };
        eprintln!(
            "tracer: sampling: the requests of one connection in {sample_one_in} are attributed (chosen by the kernel from {chosen_by}); counts and rates are of those"
        );
    }
    if kernel::cost_floor_requested() {
        eprintln!(
            "tracer: TRACER_COST_FLOOR=1: the socket programs only look the socket up and read the clock; no stack is taken and no request is attributed"
        );
    }
    // Read now, while the target surely runs: its executable and mappings name the stacks
    // at the end.
    let symbolizer = if stacks_on {
        // The executable read above is handed over, not read again.
        let exe = match exe {
            Some(Ok(exe)) => Ok(exe),
            _ => Executable::read(target.pid),
        };
        exe.and_then(|exe| {
            if let Some(line) = symbols::frame_pointer_warning(&exe, &target.comm) {
                eprintln!("tracer: {line}");
            }
            Symbolizer::with_executable(target.pid, exe)
        })
        .map_err(|e| eprintln!("tracer: call sites will not be named: {e:#}"))
        .ok()
    } else {
        None
    };
    // Created once attached, so a refused attach leaves an earlier run's files alone.
    let hlog = HlogWriter::create(&out, std::time::SystemTime::now());
    let slow_ns = args.slow.map_or(u64::MAX, |ms| (ms * 1e6) as u64);
    let slow = SlowRequests::create(&out, slow_ns);
    let stacks = probes
        .take_stacks()
        .map(|stacks| Box::new(stacks) as Box<dyn StackSource>);
    let site_names = SiteNamer::new(stacks, symbolizer);
    let mut collector = Collector::new(target.pid, engine, hlog, slow, site_names);

    let mut drain_wait = DRAIN_EVERY;
    let drain = tokio::time::sleep(drain_wait);
    tokio::pin!(drain);
    let mut liveness = ticks(tokio::time::interval(LIVENESS_EVERY));
    let interval = Duration::from_secs_f64(args.interval);
    // Every interval boundary gets its row, late or not (missed ticks come in a burst).
    let mut report = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let deadline = args.duration.map(Duration::from_secs_f64);
    let stop = async {
        match deadline {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);

    println!("{}", live::header());
    let stopped_by = loop {
        // Biased, in this order: an interval that ended before the stop gets its row even when
        // both are due at once (a slow drain on a loaded machine), and the stop and the
        // signals come before the drain, which can be due again as soon as it returns.
        tokio::select! {
            biased;
            _ = report.tick() => {
                collector.drain(&mut ring, Some(&probes), false);
                println!("{}", live::row(&collector, collector.interval_length().as_secs_f64()));
                collector.end_interval();
            }
            _ = &mut stop => break StoppedBy::Duration,
            _ = sigint.recv() => break StoppedBy::Signal,
            _ = sigterm.recv() => break StoppedBy::Signal,
            _ = liveness.tick() => {
                if !target::target_alive(target.pid) {
                    break StoppedBy::TargetExit;
                }
            }
            _ = &mut drain => {
                let records = collector.drain(&mut ring, Some(&probes), false);
                drain_wait = next_drain_after(records, drain_wait);
                drain.as_mut().reset(tokio::time::Instant::now() + drain_wait);
            }
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
    collector.read_counts_before_detach(&probes);
    // Named now, while the target surely still runs (a native target's libraries are read
    // through its memory map); the few sites the last drain adds are named after.
    collector.resolve_sites();
    warn_of_slow_uprobe_detach(probes.perf_event_uprobes());
    match probes.detach() {
        Ok(gathered) => collector.receive_gathered(&gathered),
        Err(e) => eprintln!("tracer: warning: the last requests may be missing: {e:#}"),
    }
    // Records submitted while the programs were being detached.
    collector.drain(&mut ring, None, true);
    collector.finish();
    // The last, partial interval, with the requests the final drain settled: the live rows add
    // up to the summary's request count.
    let last = collector.interval_length().as_secs_f64();
    println!("{}", live::row(&collector, last));
    collector.end_interval();
    target.refresh_comm(collector.thread_name(Tid(target.pid)));

    // A failed write never stops the run: the summary is printed, every file is attempted,
    // and the exit status tells that files are incomplete.
    let [(hlog_name, hlog), (requests_name, requests)] = collector.commit_files();
    let sites = collector.resolve_sites();
    let end = TraceEnd {
        target: &target,
        stopped_by,
        programs: &programs,
        tls: &tls_status,
        sites: &sites,
        sample_one_in,
    };
    let mut summary = Summary::build(&collector, &end);
    let totals = summary
        .breakdown
        .iter()
        .map(|(cause, c)| (*cause, c.total_ns))
        .collect();
    let title = format!(
        "Request time by cause and call site: PID {} ({})",
        target.pid, target.comm
    );
    let (folded, svg) = flame::write_waits(&out, &sites.flame_stacks(&totals), &title);
    summary.incomplete_files = IncompleteFile::list(&[
        (hlog_name, &hlog),
        (requests_name, &requests),
        (output::WAITS_FOLDED, &folded),
        (output::WAITS_SVG, &svg),
    ]);
    print!("{}", console::final_summary(&summary, collector.totals()));
    if sample_one_in > 1 && summary.requests.count == 0 {
        eprintln!(
            "tracer: no request of a picked connection was seen: if the target served requests, its connections were too few for 1 in {sample_one_in} (use a smaller --sample N)"
        );
    }
    // Taken last, so the peak covers the whole run, the final summary included, all but
    // the writing of summary.json itself (bounded: a few hundred kB at most).
    summary.collector = CollectorUsage {
        tracing_cpu_s: collector.tracing_cpu_s(),
        ..CollectorUsage::now()
    };
    let summary = summary.write(&out);
    let outcomes = [
        (output::SUMMARY, &summary),
        (output::HLOG, &hlog),
        (output::REQUESTS, &requests),
        (output::WAITS_FOLDED, &folded),
        (output::WAITS_SVG, &svg),
    ];
    match files::incomplete(out.path(), &outcomes) {
        None => {
            println!(
                "files: {}/summary.json, latency.hlog, requests.jsonl, waits.folded, waits.svg",
                out.path().display()
            );
            Ok(())
        }
        Some(incomplete) => bail!(incomplete),
    }
}

/// What `find` says about the target's executable, if it was read (`None` when it was not
/// asked for); a failed read is `find`'s error.
fn look_in<T>(
    exe: &Option<Result<Executable>>,
    find: impl Fn(&Executable) -> Result<Option<T>>,
) -> Option<Result<Option<T>>> {
    exe.as_ref().map(|exe| match exe {
        Ok(exe) => find(exe),
        Err(e) => Err(anyhow::anyhow!("{e:#}")),
    })
}

/// An interval that, after a tick it could not deliver on time, goes on from the late tick
/// instead of firing the missed ones in a burst.
fn ticks(mut interval: tokio::time::Interval) -> tokio::time::Interval {
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// The kernel removes uprobes one at a time, about 0.1 s each on this VM (see
/// `Probes::detach`): say so when that makes the stop take a second or more, as it does for
/// a Go target (its scheduler probes, and crypto/tls's handshake entries and returns).
fn warn_of_slow_uprobe_detach(uprobes: usize) {
    if uprobes >= SLOW_UPROBE_DETACH {
        eprintln!(
            "tracer: removing {uprobes} uprobes from the target: the kernel takes them one at a time, about 0.1 s each"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_back_off_while_the_ring_is_empty_and_return_at_the_first_record() {
        let mut wait = DRAIN_EVERY;
        let mut waits = Vec::new();
        for _ in 0..6 {
            wait = next_drain_after(0, wait);
            waits.push(wait.as_millis());
        }
        assert_eq!(waits, [40, 80, 160, 200, 200, 200]);
        assert_eq!(next_drain_after(1, wait), DRAIN_EVERY);
    }
}
