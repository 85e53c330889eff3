//! The run of one scenario: its target started once, then rounds of load phases, then one
//! traced phase with `--bpf-stats`. In each round, every way of running the load (traced,
//! `--sample N`, each comparison tool) is paired with a baseline phase of its own, right
//! before it in odd rounds and right after it in even ones: the machine's speed drifts
//! (by 15% within a minute on this VM), and a ratio of neighbours, in both orders, keeps
//! that drift and one disturbed baseline out of every other pair.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, Result};
use tracer::output::summary::Summary;

use super::{
    load::Load,
    report::describe,
    scenarios::{Scenario, Variant},
    targets::{self, Running},
    tools::TOOLS,
    tracer::{read_summary, RunningTracer, TracerSpec},
};
use crate::workload::Proc;

/// The row of the tracer attached to an idle process while the load runs on the target:
/// every hook the tracer has fires on the target's syscalls and switches too, and returns
/// at its first check (the thread is not the traced process's). What is left is what
/// attaching the programs at all costs the target, the floor under any work they do.
pub const IDLE_TRACER_ROW: &str = "tracer on idle";

/// The row of the tracer with `TRACER_COST_FLOOR=1` attached to the target: on each read
/// and write of the target's, its socket programs look the socket up and read the clock, the
/// least any design that times every request does, and stop there. What is left between this
/// row and the tracer's is what the tracer's own work costs; what this row costs, no way of
/// timing every request can save.
pub const FLOOR_TRACER_ROW: &str = "tracer floor";

/// Quiet time between phases.
const SETTLE: Duration = Duration::from_secs(1);

/// One traced phase's results.
pub struct Traced {
    pub load: Load,
    /// The tracer's `summary.json`, if it wrote a readable one.
    pub summary: Option<Summary>,
    /// From the tracer's start to its `attached` line, if it came.
    pub attach: Option<Duration>,
    /// From SIGTERM to its clean exit, files written, if the bench stopped it.
    pub stop: Option<Duration>,
}

/// Everything measured for one scenario.
pub struct Measured {
    /// Each round's baseline paired with its traced phase.
    pub baseline: Vec<Load>,
    pub traced: Vec<Traced>,
    /// For a scenario that compares them: a traced phase with `--stacks off` after each
    /// traced one.
    pub without_stacks: Vec<Traced>,
    /// One more traced phase with `--bpf-stats`, for the per-program costs only: the kernel's
    /// run-time statistics cost time themselves, so throughput is compared without them.
    pub stats: Option<Traced>,
    /// For a scenario that compares them: each round's phase with each of [`TOOLS`] attached,
    /// by tool, then the tracer attached to an idle process and with its cost floor, each
    /// with its own baselines.
    pub tools: Vec<ToolRuns>,
    /// For a scenario that compares one: each round's traced phase run its other way.
    pub variant: Vec<Traced>,
    /// The baselines paired with `variant`.
    pub variant_baseline: Vec<Load>,
}

impl Measured {
    /// The comparison row named `name` (one of [`TOOLS`] or the tracer's own rows).
    fn tool_mut(&mut self, name: &str) -> &mut ToolRuns {
        self.tools
            .iter_mut()
            .find(|tool| tool.name == name)
            .expect("every comparison row is listed when Measured is made")
    }
}

/// A comparison tool's phases, and the baseline phase paired with each.
pub struct ToolRuns {
    pub name: &'static str,
    pub baseline: Vec<Load>,
    pub loads: Vec<Load>,
}

impl ToolRuns {
    /// One round's phase with the tool, and its paired baseline phase.
    fn push(&mut self, (load, baseline): (Load, Load)) {
        self.loads.push(load);
        self.baseline.push(baseline);
    }
}

/// What every scenario's phases share, and the tracer's failures so far.
pub struct Bench {
    /// Length of each load phase.
    pub seconds: u32,
    /// Phases per mode.
    pub rounds: u32,
    pub workload: PathBuf,
    pub tracer: PathBuf,
    /// The traced phases' output directories, the certificate and the Go build.
    pub tmp: PathBuf,
    /// Tracer runs that did not end cleanly (their phase still counts).
    pub failures: Vec<String>,
}

impl Bench {
    /// Runs `scenario`'s phases: [`Bench::rounds`] rounds of pairs, then the `--bpf-stats`
    /// phase.
    pub fn measure(&mut self, scenario: &Scenario) -> Result<Measured> {
        println!();
        println!("== scenario {}: {}", scenario.name, scenario.about);
        let target = targets::start(&scenario.target, &self.workload, &self.tmp, self.seconds)?;
        // Killed when dropped, at the scenario's end.
        let idle = scenario
            .compare_tools
            .then(start_idle_process)
            .transpose()?;
        let (name, rounds) = (scenario.name, self.rounds);
        let mut run = ScenarioRun {
            bench: self,
            target,
        };
        let mut measured = Measured {
            baseline: Vec::new(),
            traced: Vec::new(),
            without_stacks: Vec::new(),
            stats: None,
            tools: TOOLS
                .iter()
                .map(|tool| tool.name)
                .chain([IDLE_TRACER_ROW, FLOOR_TRACER_ROW])
                .map(|name| ToolRuns {
                    name,
                    baseline: Vec::new(),
                    loads: Vec::new(),
                })
                .collect(),
            variant: Vec::new(),
            variant_baseline: Vec::new(),
        };
        for round in 1..=rounds {
            let baseline_first = round % 2 == 1;
            let baseline_phase = |of: &str| format!("{name} baseline {round} (for {of})");
            let ((traced, without_stacks), baseline) =
                run.paired(&baseline_phase("tracer"), baseline_first, |run| {
                    let phase = format!("{name} traced {round}");
                    let traced =
                        run.traced_phase(&phase, &format!("{name}-{round}"), Mode::Traced)?;
                    if !scenario.compare_stacks {
                        return Ok((traced, None));
                    }
                    // Right after the traced phase, whatever the order of the pair.
                    thread::sleep(SETTLE);
                    let phase = format!("{name} traced --stacks off {round}");
                    let out = format!("{name}-nostacks-{round}");
                    let without = run.traced_phase(&phase, &out, Mode::WithoutStacks)?;
                    Ok((traced, Some(without)))
                })?;
            measured.baseline.push(baseline);
            measured.traced.push(traced);
            measured.without_stacks.extend(without_stacks);
            if let Some(variant) = scenario.compare_variant {
                let flags = variant.args().join(" ");
                let of = format!("tracer {flags}");
                let (traced, baseline) =
                    run.paired(&baseline_phase(&of), baseline_first, |run| {
                        let phase = format!("{name} traced {flags} {round}");
                        let out = format!("{name}-{}-{round}", variant.out_stem());
                        run.traced_phase(&phase, &out, Mode::Variant(variant))
                    })?;
                measured.variant.push(traced);
                measured.variant_baseline.push(baseline);
            }
            if scenario.compare_tools {
                for (tool, runs) in TOOLS.iter().zip(&mut measured.tools) {
                    runs.push(
                        run.paired(&baseline_phase(tool.name), baseline_first, |run| {
                            let phase = format!("{name} {} {round}", tool.name);
                            let load = tool
                                .measure(run.target.pid, &mut run.target.load)
                                .with_context(|| phase.clone())?;
                            println!("{phase}: {}", describe(&load));
                            Ok(load)
                        })?,
                    );
                }
            }
            if let Some(idle) = &idle {
                let paired =
                    run.paired(&baseline_phase(IDLE_TRACER_ROW), baseline_first, |run| {
                        let phase = format!("{name} tracer attached to an idle process {round}");
                        let out = format!("{name}-idle-{round}");
                        let traced = run.traced_phase_of(idle.id(), &phase, &out, Mode::Traced)?;
                        Ok(traced.load)
                    })?;
                measured.tool_mut(IDLE_TRACER_ROW).push(paired);
            }
            if scenario.compare_tools {
                let paired =
                    run.paired(&baseline_phase(FLOOR_TRACER_ROW), baseline_first, |run| {
                        let phase = format!("{name} tracer with TRACER_COST_FLOOR=1 {round}");
                        let out = format!("{name}-floor-{round}");
                        Ok(run.traced_phase(&phase, &out, Mode::CostFloor)?.load)
                    })?;
                measured.tool_mut(FLOOR_TRACER_ROW).push(paired);
            }
        }
        let phase = format!("{name} traced with --bpf-stats");
        let stats = run.traced_phase(&phase, &format!("{name}-stats"), Mode::BpfStats)?;
        measured.stats = Some(stats);
        run.target.stop();
        Ok(measured)
    }
}

/// How a traced phase runs the tracer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Traced,
    WithoutStacks,
    /// With `--bpf-stats`, for the per-program costs.
    BpfStats,
    /// The scenario's other way ([`Variant`]).
    Variant(Variant),
    /// With `TRACER_COST_FLOOR=1` ([`FLOOR_TRACER_ROW`]).
    CostFloor,
}

/// A scenario's running target, and the bench it runs in.
struct ScenarioRun<'a> {
    bench: &'a mut Bench,
    target: Running,
}

impl ScenarioRun<'_> {
    /// Runs `measure` and a baseline phase named `baseline_phase` beside it, the baseline
    /// first when `baseline_first`, with a quiet time after each.
    fn paired<T>(
        &mut self,
        baseline_phase: &str,
        baseline_first: bool,
        measure: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<(T, Load)> {
        if baseline_first {
            let baseline = self.settled(|run| run.baseline_phase(baseline_phase))?;
            Ok((self.settled(measure)?, baseline))
        } else {
            let measured = self.settled(measure)?;
            Ok((
                measured,
                self.settled(|run| run.baseline_phase(baseline_phase))?,
            ))
        }
    }

    /// Runs `phase`, then waits the quiet time.
    fn settled<T>(&mut self, phase: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let result = phase(self)?;
        thread::sleep(SETTLE);
        Ok(result)
    }

    /// One load phase without the tracer.
    fn baseline_phase(&mut self, phase: &str) -> Result<Load> {
        let load = (self.target.load)().with_context(|| phase.to_string())?;
        println!("{phase}: {}", describe(&load));
        Ok(load)
    }

    /// One load phase with the tracer attached to the target, which writes into
    /// `<tmp>/<out_name>`.
    fn traced_phase(&mut self, phase: &str, out_name: &str, mode: Mode) -> Result<Traced> {
        self.traced_phase_of(self.target.pid, phase, out_name, mode)
    }

    /// One load phase on the target, with the tracer attached to process `pid`.
    fn traced_phase_of(
        &mut self,
        pid: u32,
        phase: &str,
        out_name: &str,
        mode: Mode,
    ) -> Result<Traced> {
        let out_dir = self.bench.tmp.join(out_name);
        let traced = self
            .trace_load(pid, phase, &out_dir, mode)
            .with_context(|| phase.to_string())?;
        println!("{phase}: {}", describe(&traced.load));
        Ok(traced)
    }

    /// Starts the tracer, waits until it has attached, runs the load, then stops the tracer
    /// with SIGTERM and reads its summary.
    fn trace_load(&mut self, pid: u32, phase: &str, out_dir: &Path, mode: Mode) -> Result<Traced> {
        let spec = TracerSpec {
            tracer: &self.bench.tracer,
            pid,
            seconds: self.bench.seconds,
            bpf_stats: mode == Mode::BpfStats,
            stacks: mode != Mode::WithoutStacks,
            cost_floor: mode == Mode::CostFloor,
            variant: match mode {
                Mode::Variant(variant) => Some(variant),
                _ => None,
            },
        };
        let mut tracer = RunningTracer::start(&spec, out_dir)?;
        let attach = tracer.wait_until_attached(phase)?;
        let load = (self.target.load)()?;
        let stop = tracer.stop(phase, &mut self.bench.failures)?;
        let summary = read_summary(out_dir)
            .inspect_err(|e| {
                println!(
                    "{phase}: no readable summary.json in {}: {e:#}",
                    out_dir.display()
                )
            })
            .ok();
        Ok(Traced {
            load,
            summary,
            attach,
            stop,
        })
    }
}

/// A process that does nothing while the load runs, for [`IDLE_TRACER_ROW`].
fn start_idle_process() -> Result<Proc> {
    Proc::spawn(
        Command::new("sleep")
            .arg("infinity")
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    )
}
