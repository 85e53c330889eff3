//! The bench's report: a table per scenario, and the verdict against the targets.

use std::{collections::BTreeMap, path::Path};

use tracer::output::summary::{Program, Summary};

use super::{
    load::Load,
    phases::{Measured, Traced},
    scenarios::{
        Scenario, UprobeCostUnit, Variant, MAX_ATTACH_OR_STOP_S, MAX_FIXED_RATE_LOSS_PCT,
        MAX_THROUGHPUT_LOSS_PCT, MAX_TLS_THROUGHPUT_LOSS_PCT,
    },
    stats::{max, mean, mean_ratio, median, ratio, sum},
};

/// A phase's load, in one line.
pub fn describe(load: &Load) -> String {
    format!(
        "{} req/s, p99 {} us, {} errors",
        fmt(load.rps, 0),
        fmt(load.p99_us, 0),
        fmt(load.errors, 0)
    )
}

/// `value` with `decimals` decimals; `n/a` when missing (or not finite).
fn fmt(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "n/a".to_string(),
    }
}

/// Prints a scenario's table (`rounds` phases of `seconds` per mode); returns the targets it
/// missed.
pub fn report(scenario: &Scenario, rounds: u32, seconds: u32, measured: &Measured) -> Vec<String> {
    let load = LoadFigures::of(measured);
    let tracer = TracerFigures::of(&measured.traced);
    let stats_summary = measured.stats.as_ref().and_then(|t| t.summary.as_ref());
    println!();
    println!(
        "== scenario {}: {} ({rounds} x {seconds} s per mode)",
        scenario.name, scenario.about
    );
    print_load_rows(&load);
    print_tool_rows(measured, &load, scenario);
    print_target_cpu(measured, scenario.compare_variant);
    print_tracer_rows(&tracer);
    print_program_costs(&program_costs(stats_summary));
    if let Some(unit) = scenario.target.uprobe_cost_unit() {
        print_uprobe_cost(stats_summary, unit);
    }
    if scenario.target.go_scheduler() {
        print_go_scheduler_cost(stats_summary);
    }
    print_stacks_cost(measured);
    misses(scenario, &load, &tracer)
}

/// The comparison tools beside the tracer: each round's throughput with the tool attached
/// over its own baseline phase beside it, and their median, as for the tracer.
fn print_tool_rows(measured: &Measured, load: &LoadFigures, scenario: &Scenario) {
    let variant = scenario.compare_variant;
    if measured.tools.iter().all(|tool| tool.loads.is_empty()) && variant.is_none() {
        return;
    }
    println!(
        "  attached to the same target, same rounds (throughput / its own baseline phase beside it):"
    );
    print_rounds("tracer", &load.round_ratios);
    for tool in measured.tools.iter().filter(|tool| !tool.loads.is_empty()) {
        print_rounds(
            tool.name,
            &paired_ratios(&tool.baseline, &tool.loads, |l| l.rps),
        );
    }
    if let Some(variant) = variant {
        print_variant_rows(measured, variant, scenario.max_loss_pct);
    }
}

/// The tracer run the scenario's other way (`--sample N`, `--goroutines off`): its
/// throughput ratios as the tools', and what its collector and the ring carry.
fn print_variant_rows(measured: &Measured, variant: Variant, max_loss_pct: f64) {
    let loads = measured.variant.iter().map(|t| &t.load);
    let baseline = &measured.variant_baseline;
    let ratios = paired_ratios(baseline, loads, |l| l.rps);
    print_rounds(&variant.label(), &ratios);
    if let (Variant::Sampled(_), Some(kept)) = (variant, median(&ratios)) {
        // Sampling is the way a very hot server meets the target: said against it (the
        // verdict is the default tracer's, which attributes every request).
        let loss = (1.0 - kept) * 100.0;
        let within = if loss <= max_loss_pct {
            "within"
        } else {
            "over"
        };
        println!(
            "    {:<14} throughput loss {loss:.1}% (median pair): {within} the {max_loss_pct}% target",
            ""
        );
    }
    let figures = TracerFigures::of(&measured.variant);
    println!(
        "    {:<14} requests attributed {}/s, collector CPU {}% of a core ({} ns/request), ring records per request attributed {}, lost {}",
        "",
        fmt(figures.requests_per_s, 0),
        fmt(figures.cpu_pct, 1),
        fmt(figures.cpu_ns_per_request, 0),
        fmt(figures.records_per_request, 2),
        fmt(figures.lost, 0),
    );
}

/// One line of per-round ratios and their median, under a heading.
fn print_rounds(name: &str, per_round: &[f64]) {
    println!(
        "    {name:<14} per round {:<40} median {}",
        ratios(per_round),
        fmt(median(per_round), 3)
    )
}

/// The target's own CPU time per request, each phase's over its paired baseline (see
/// `targets::with_target_cpu`), for the tracer, the tools and the scenario's other way of
/// tracing.
fn print_target_cpu(measured: &Measured, variant: Option<Variant>) {
    let base: Vec<f64> = measured
        .baseline
        .iter()
        .filter_map(|l| l.target_cpu_us)
        .collect();
    if base.is_empty() {
        return;
    }
    println!(
        "  target CPU per request (us), baseline median {} (each / its paired baseline):",
        fmt(median(&base), 2)
    );
    let traced = measured.traced.iter().map(|t| &t.load);
    print_rounds(
        "tracer",
        &paired_ratios(&measured.baseline, traced, |l| l.target_cpu_us),
    );
    for tool in &measured.tools {
        if !tool.loads.is_empty() {
            print_rounds(
                tool.name,
                &paired_ratios(&tool.baseline, &tool.loads, |l| l.target_cpu_us),
            );
        }
    }
    if let Some(variant) = variant {
        let loads = measured.variant.iter().map(|t| &t.load);
        print_rounds(
            &variant.label(),
            &paired_ratios(&measured.variant_baseline, loads, |l| l.target_cpu_us),
        );
    }
}

/// Taking the stacks: each round's traced throughput (stacks on) over the `--stacks off`
/// phase right after it, their median; stacks taken per second and the naming at the end.
fn print_stacks_cost(measured: &Measured) {
    if measured.without_stacks.is_empty() {
        return;
    }
    let ratios: Vec<f64> = measured
        .traced
        .iter()
        .zip(&measured.without_stacks)
        .filter_map(|(on, off)| Some(on.load.rps? / off.load.rps?))
        .collect();
    let pairs: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    let median = median(&ratios);
    let stacks: Vec<_> = measured
        .traced
        .iter()
        .filter_map(|t| t.summary.as_ref().map(|s| &s.stacks))
        .collect();
    let per_s: Vec<f64> = stacks.iter().map(|s| s.taken_per_s).collect();
    let symbolize: Vec<f64> = stacks.iter().map(|s| s.symbolize_ms).collect();
    println!(
        "  stacks: throughput with / without (--stacks off) per round {}; median {}{}",
        pairs.join(", "),
        median.map_or_else(|| "n/a".to_string(), |m| format!("{m:.3}")),
        median.map_or_else(String::new, |m| format!(
            " (cost {:.1}%)",
            (1.0 - m) * 100.0
        )),
    );
    println!(
        "  stacks taken per second: {}; naming the sites at the end: {} ms ({} addresses)",
        per_s
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        symbolize
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(", "),
        stacks
            .iter()
            .map(|s| s.addresses.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    );
}

/// Prints where the tracer's output is, and the verdict over every scenario's `misses`.
pub fn print_verdict(tracer_output: &Path, misses: &[String]) {
    println!();
    println!(
        "tracer output of the traced phases: {}",
        tracer_output.display()
    );
    let targets = format!(
        "targets: throughput loss <= {MAX_THROUGHPUT_LOSS_PCT}% ({MAX_TLS_THROUGHPUT_LOSS_PCT}% \
         for TLS, {MAX_FIXED_RATE_LOSS_PCT}% at a fixed request rate), zero lost events, \
         attach and stop each within {MAX_ATTACH_OR_STOP_S} s"
    );
    if misses.is_empty() {
        println!("verdict: PASS ({targets})");
    } else {
        println!("verdict: MISS ({targets}): {}", misses.join("; "));
    }
}

/// The load's figures over a scenario's baseline and traced phases.
struct LoadFigures {
    base_rps: Option<f64>,
    traced_rps: Option<f64>,
    /// Each traced phase's throughput over that of the baseline phase beside it.
    round_ratios: Vec<f64>,
    /// The median of `round_ratios`.
    rps_ratio: Option<f64>,
    loss_pct: Option<f64>,
    base_p99: Option<f64>,
    traced_p99: Option<f64>,
    /// Each traced phase's p99 over that of the baseline phase beside it.
    p99_round_ratios: Vec<f64>,
    base_errors: Option<f64>,
    traced_errors: Option<f64>,
}

impl LoadFigures {
    fn of(measured: &Measured) -> Self {
        let baseline = &measured.baseline;
        let traced: Vec<&Load> = measured.traced.iter().map(|t| &t.load).collect();
        // Each traced phase against the baseline phase beside it: the machine's own drift
        // between phases (large for TLS loads on this VM) cancels out of a pair, and the median
        // of the pairs ignores one disturbed phase.
        let round_ratios = paired_ratios(baseline, traced.iter().copied(), |l| l.rps);
        let rps_ratio = median(&round_ratios);
        let p99_round_ratios = paired_ratios(baseline, traced.iter().copied(), |l| l.p99_us);
        LoadFigures {
            base_rps: mean(baseline.iter().map(|l| l.rps)),
            traced_rps: mean(traced.iter().map(|l| l.rps)),
            round_ratios,
            rps_ratio,
            loss_pct: rps_ratio.map(|r| (1.0 - r) * 100.0),
            base_p99: mean(baseline.iter().map(|l| l.p99_us)),
            traced_p99: mean(traced.iter().map(|l| l.p99_us)),
            p99_round_ratios,
            base_errors: sum(baseline.iter().map(|l| l.errors)),
            traced_errors: sum(traced.iter().map(|l| l.errors)),
        }
    }
}

/// The tracer's figures over a scenario's traced phases (without the `--bpf-stats` one),
/// from their summaries.
struct TracerFigures {
    events_per_s: Option<f64>,
    /// Requests attributed per second (all those served, unless sampled).
    requests_per_s: Option<f64>,
    /// Ring records received per request reported (the kernel's main cost per request).
    records_per_request: Option<f64>,
    /// The share of requests delimited and timed in the kernel (served in one stretch on a
    /// CPU: no record per read or write), in %.
    in_kernel_pct: Option<f64>,
    lost: Option<f64>,
    /// The collector's CPU time while attached and tracing, in % of one core.
    cpu_pct: Option<f64>,
    /// The same, in ns per request reported.
    cpu_ns_per_request: Option<f64>,
    /// The collector's CPU time over its whole run (attach and the files included), in s.
    run_cpu_s: Option<f64>,
    rss_mib: Option<f64>,
    /// From the tracer's start to its `attached` line, in s, over the phases.
    attach_s: Spread,
    /// From SIGTERM to the tracer's exit (drained, detached, files written), in s.
    stop_s: Spread,
}

/// The median and the largest of a figure over phases.
struct Spread {
    median: Option<f64>,
    max: Option<f64>,
}

impl Spread {
    fn of(values: Vec<f64>) -> Self {
        Spread {
            median: median(&values),
            max: max(values.into_iter().map(Some)),
        }
    }

    fn show(&self) -> String {
        format!("{} / {}", fmt(self.median, 2), fmt(self.max, 2))
    }
}

impl TracerFigures {
    fn of(phases: &[Traced]) -> Self {
        let summaries: Vec<Option<&Summary>> = phases.iter().map(|t| t.summary.as_ref()).collect();
        // A figure of each phase; `None` for a phase without a summary.
        let field = |figure: fn(&Summary) -> f64| -> Vec<Option<f64>> {
            summaries.iter().map(|s| s.map(figure)).collect()
        };
        let durations = field(|s| s.duration_s);
        let per_second = |values: Vec<Option<f64>>| mean_ratio(&values, &durations);
        let requests = field(|s| s.requests.count as f64);
        let per_request = |values: Vec<Option<f64>>| mean_ratio(&values, &requests);
        TracerFigures {
            events_per_s: per_second(field(|s| s.events.received as f64)),
            requests_per_s: per_second(requests.clone()),
            records_per_request: per_request(field(|s| s.events.received as f64)),
            in_kernel_pct: per_request(field(|s| s.requests.in_kernel as f64))
                .map(|share| share * 100.0),
            lost: sum(field(|s| s.events.lost as f64)),
            cpu_pct: per_second(field(|s| s.collector.tracing_cpu_s)).map(|share| share * 100.0),
            cpu_ns_per_request: per_request(field(|s| s.collector.tracing_cpu_s * 1e9)),
            run_cpu_s: mean(field(|s| s.collector.cpu_s)),
            rss_mib: max(field(|s| s.collector.max_rss_kb as f64)).map(|kb| kb / 1024.0),
            attach_s: Spread::of(
                phases
                    .iter()
                    .filter_map(|t| t.attach)
                    .map(|d| d.as_secs_f64())
                    .collect(),
            ),
            stop_s: Spread::of(
                phases
                    .iter()
                    .filter_map(|t| t.stop)
                    .map(|d| d.as_secs_f64())
                    .collect(),
            ),
        }
    }
}

/// One row of a scenario's table.
fn row(label: &str, baseline: &str, traced: &str, ratio: &str) {
    println!("  {label:<30} {baseline:>12} {traced:>12} {ratio:>10}");
}

fn print_load_rows(load: &LoadFigures) {
    row("", "baseline", "traced", "ratio");
    row(
        "throughput (req/s, mean)",
        &fmt(load.base_rps, 0),
        &fmt(load.traced_rps, 0),
        &fmt(ratio(load.traced_rps, load.base_rps), 3),
    );
    println!(
        "  {:<30} {}",
        "traced/baseline per round",
        ratios(&load.round_ratios)
    );
    row(
        "throughput loss (%, median pair)",
        "",
        &fmt(load.loss_pct, 1),
        &fmt(load.rps_ratio, 3),
    );
    row(
        "p99 latency (us)",
        &fmt(load.base_p99, 0),
        &fmt(load.traced_p99, 0),
        &fmt(ratio(load.traced_p99, load.base_p99), 3),
    );
    if !load.p99_round_ratios.is_empty() {
        println!(
            "  {:<30} {}",
            "p99 traced/baseline per round",
            ratios(&load.p99_round_ratios)
        );
        row(
            "p99 ratio (median pair)",
            "",
            "",
            &fmt(median(&load.p99_round_ratios), 3),
        );
    }
    row(
        "load errors",
        &fmt(load.base_errors, 0),
        &fmt(load.traced_errors, 0),
        "",
    );
}

/// Per-round ratios, with three decimals.
/// Each phase's `figure` over that of the baseline phase paired with it (rounds where either
/// is missing are left out).
fn paired_ratios<'a>(
    baseline: &[Load],
    phases: impl IntoIterator<Item = &'a Load>,
    figure: fn(&Load) -> Option<f64>,
) -> Vec<f64> {
    baseline
        .iter()
        .zip(phases)
        .filter_map(|(b, p)| ratio(figure(p), figure(b)))
        .collect()
}

fn ratios(values: &[f64]) -> String {
    let pairs: Vec<String> = values.iter().map(|r| format!("{r:.3}")).collect();
    pairs.join(" ")
}

fn print_tracer_rows(tracer: &TracerFigures) {
    row("events/s", "", &fmt(tracer.events_per_s, 0), "");
    row(
        "ring records per request",
        "",
        &fmt(tracer.records_per_request, 2),
        "",
    );
    row(
        "requests timed in the kernel (%)",
        "",
        &fmt(tracer.in_kernel_pct, 1),
        "",
    );
    row("lost events", "", &fmt(tracer.lost, 0), "");
    row(
        "collector CPU tracing (% of one core)",
        "",
        &fmt(tracer.cpu_pct, 1),
        "",
    );
    row(
        "collector CPU tracing (ns/request)",
        "",
        &fmt(tracer.cpu_ns_per_request, 0),
        "",
    );
    row(
        "collector CPU whole run (s)",
        "",
        &fmt(tracer.run_cpu_s, 2),
        "",
    );
    row("collector max RSS (MiB)", "", &fmt(tracer.rss_mib, 1), "");
    row(
        "attach, start to attached (s)",
        "",
        &tracer.attach_s.show(),
        "median / max",
    );
    row(
        "stop, SIGTERM to exit (s)",
        "",
        &tracer.stop_s.show(),
        "median / max",
    );
}

/// A kernel program's cost in the `--bpf-stats` phase.
struct ProgramCost {
    run_count: f64,
    run_time_ns: f64,
    /// The phase's `duration_s`.
    duration_s: f64,
}

/// Each kernel program's cost in the `--bpf-stats` phase's summary, by name.
fn program_costs(stats_summary: Option<&Summary>) -> BTreeMap<String, ProgramCost> {
    let Some(summary) = stats_summary else {
        return BTreeMap::new();
    };
    let cost = |program: &Program| ProgramCost {
        run_count: program.run_count as f64,
        run_time_ns: program.run_time_ns as f64,
        duration_s: summary.duration_s,
    };
    summary
        .programs
        .iter()
        .map(|program| (program.name.clone(), cost(program)))
        .collect()
}

fn print_program_costs(costs: &BTreeMap<String, ProgramCost>) {
    if costs.is_empty() {
        println!("  kernel programs: n/a");
        return;
    }
    println!(
        "  {:<30} {:>12} {:>12}",
        "kernel program", "ns/run", "runs/s"
    );
    for (name, cost) in costs {
        let ns_per_run = ratio(Some(cost.run_time_ns), Some(cost.run_count));
        let runs_per_s = ratio(Some(cost.run_count), Some(cost.duration_s));
        println!(
            "  {:<30} {:>12} {:>12}",
            name,
            fmt(ns_per_run, 0),
            fmt(runs_per_s, 0)
        );
    }
}

/// The TLS handshakes the `--bpf-stats` phase traced, and its uprobe programs' BPF time per
/// `unit`.
fn print_uprobe_cost(stats_summary: Option<&Summary>, unit: UprobeCostUnit) {
    let handshakes = stats_summary.map(|s| s.tls.handshakes.duration_ns.count as f64);
    let requests = stats_summary.map(|s| s.requests.count as f64);
    let uprobe_ns: f64 = stats_summary.map_or(0.0, |s| {
        s.programs
            .iter()
            .filter(|p| p.name.starts_with("ssl_") || p.name.starts_with("go_"))
            .map(|p| p.run_time_ns as f64)
            .sum()
    });
    let count = match unit {
        UprobeCostUnit::Request => requests,
        UprobeCostUnit::Handshake => handshakes,
    };
    println!(
        "  TLS handshakes traced (stats phase): {}; uprobe programs: {} ns per {} \
         (BPF run time only: the uprobe trap itself is not in the kernel's BPF stats)",
        fmt(handshakes, 0),
        fmt(ratio(Some(uprobe_ns), count), 0),
        unit.name()
    );
}

/// The kernel programs on Go's scheduler (`runtime.gopark`, `ready`, `injectglist`,
/// `execute`, `goexit1`, `semacquire1`, `semrelease1`, `stopTheWorldWithSema`,
/// `startTheWorldWithSema`) and on net/http's HTTP/2 server, one uprobe each.
const GO_SCHEDULER_PROGRAMS: &[&str] = &[
    "go_park",
    "go_ready",
    "go_inject",
    "go_execute",
    "go_exit",
    "go_semacquire",
    "go_semrelease",
    "go_stop_the_world",
    "go_start_the_world",
    "go_http2_connection",
    "go_http2_handler",
];

/// The requests the `--bpf-stats` phase traced, the Go scheduler uprobes' hits (their
/// programs' runs) per request, and the BPF time per request of those programs and of all.
fn print_go_scheduler_cost(stats_summary: Option<&Summary>) {
    let Some(summary) = stats_summary else {
        println!("  Go scheduler uprobes: n/a (no --bpf-stats summary)");
        return;
    };
    let requests = Some(summary.requests.count as f64);
    let go: Vec<&Program> = summary
        .programs
        .iter()
        .filter(|p| GO_SCHEDULER_PROGRAMS.contains(&p.name.as_str()))
        .collect();
    let go_runs: f64 = go.iter().map(|p| p.run_count as f64).sum();
    let go_ns: f64 = go.iter().map(|p| p.run_time_ns as f64).sum();
    let all_ns: f64 = summary.programs.iter().map(|p| p.run_time_ns as f64).sum();
    let per_program: Vec<String> = go
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                p.name.trim_start_matches("go_"),
                fmt(ratio(Some(p.run_count as f64), requests), 2)
            )
        })
        .collect();
    println!(
        "  requests traced (stats phase): {}; Go scheduler uprobe hits per request: {} ({})",
        fmt(requests, 0),
        fmt(ratio(Some(go_runs), requests), 2),
        per_program.join(", ")
    );
    println!(
        "  BPF ns per request: {} in the Go scheduler uprobes, {} in all programs (these \
         include the host-wide hooks, which run for every process's syscalls and switches; \
         BPF run time only: the uprobe trap itself is not in the kernel's BPF stats)",
        fmt(ratio(Some(go_ns), requests), 0),
        fmt(ratio(Some(all_ns), requests), 0)
    );
}

/// The targets a scenario missed: its throughput loss, and any lost event.
fn misses(scenario: &Scenario, load: &LoadFigures, tracer: &TracerFigures) -> Vec<String> {
    let mut misses = Vec::new();
    match load.loss_pct {
        Some(loss) if loss <= scenario.max_loss_pct => {}
        Some(loss) => misses.push(format!(
            "{}: throughput loss {loss:.1}% > {}%",
            scenario.name, scenario.max_loss_pct
        )),
        None => misses.push(format!("{}: throughput loss n/a", scenario.name)),
    }
    match tracer.lost {
        Some(0.0) => {}
        Some(lost) => misses.push(format!("{}: {lost:.0} lost events", scenario.name)),
        None => misses.push(format!("{}: lost events n/a", scenario.name)),
    }
    for (what, spread) in [("attach", &tracer.attach_s), ("stop", &tracer.stop_s)] {
        match spread.max {
            Some(s) if s <= MAX_ATTACH_OR_STOP_S => {}
            Some(s) => misses.push(format!(
                "{}: {what} took up to {s:.2} s > {MAX_ATTACH_OR_STOP_S} s",
                scenario.name
            )),
            None => misses.push(format!("{}: {what} time n/a", scenario.name)),
        }
    }
    misses
}
