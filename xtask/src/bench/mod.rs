//! `cargo xtask bench`: the tracer's overhead, measured as ratios within one run.
//!
//! For each scenario one workload server runs while load phases alternate: baseline (no
//! tracer), traced, baseline, traced, ..., then one traced phase with `--bpf-stats` for the
//! kernel programs' costs (the statistics cost time themselves). The traced phases
//! also yield the tracer's own summary: events received and lost, collector CPU and memory, and
//! the kernel programs' run counts and times.
//!
//! Modules: `scenarios` (what is measured), `targets` (starting what a scenario traces) and
//! `load` (its clients), `phases` (the run of one scenario) and `tracer` (the tracer of one
//! traced phase), `stats` and `report`.

mod load;
mod phases;
mod report;
mod scenarios;
mod stats;
mod targets;
mod tools;
mod tracer;

use std::env;

use anyhow::{bail, Context, Result};

use crate::{bin_dir, build_workspace, setup};
use phases::Bench;

#[derive(clap::Args)]
pub struct Args {
    /// Length of each load phase, in seconds
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    seconds: u32,
    /// Phases per mode (baseline and traced alternate)
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Run only these scenarios (N, A, B, E, G, F, H, I, C, D; repeatable) [default: all]
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    setup::run()?;
    build_workspace(true)?;
    let bins = bin_dir(true);
    let mut bench = Bench {
        seconds: args.seconds,
        rounds: args.rounds,
        workload: bins.join("workload"),
        tracer: bins.join("tracer"),
        tmp: env::temp_dir().join(format!("tracer-bench-{}", std::process::id())),
        failures: Vec::new(),
    };

    println!(
        "== bench: {} s phases, {} per mode, baseline and traced alternating",
        args.seconds, args.rounds
    );
    let mut results = Vec::new();
    for scenario in scenarios::chosen(&args.scenarios) {
        let measured = bench
            .measure(scenario)
            .with_context(|| format!("bench: scenario {} ({})", scenario.name, scenario.about))?;
        results.push((scenario, measured));
    }

    let misses: Vec<String> = results
        .iter()
        .flat_map(|(scenario, measured)| {
            report::report(scenario, args.rounds, args.seconds, measured)
        })
        .collect();
    report::print_verdict(&bench.tmp, &misses);
    if !bench.failures.is_empty() {
        bail!(
            "bench: the tracer did not run cleanly:\n  {}",
            bench.failures.join("\n  ")
        );
    }
    Ok(())
}
