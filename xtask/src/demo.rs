//! `cargo xtask demo`: trace the workload server for 10 s while a load generator drives a mix
//! of CPU, lock, I/O, sleep and disk requests at it, and leave the tracer's output in
//! `tracer-out/`.

use std::{os::unix::process::ExitStatusExt, process::Command, thread, time::Duration};

use anyhow::{Context, Result};

use crate::{
    bin_dir, build_workspace, cmdline, root, setup,
    workload::{load_command, Proc, Server},
};

const OUTPUT_DIR: &str = "tracer-out";
/// Longer than the tracer runs (1 s warm-up + 10 s), so it is traced under load throughout.
const LOAD_SECONDS: u32 = 14;
const PATHS: &[&str] = &[
    "/cpu?ms=2",
    "/lock?ms=5",
    "/io?ms=5",
    "/sleep?ms=3",
    "/disk?kb=128",
    "/",
];

pub fn run() -> Result<()> {
    setup::run()?;
    build_workspace(true)?;
    let bins = bin_dir(true);
    let workload = bins.join("workload");
    let root = root();

    println!("== demo");
    let server = Server::start(&workload).context("demo: starting the workload server")?;
    let mut load = load_command(&workload, &server.addr, 4, LOAD_SECONDS, PATHS);
    let load = Proc::spawn(&mut load).context("demo: starting the load generator")?;
    thread::sleep(Duration::from_secs(1));

    let mut tracer = Command::new(bins.join("tracer"));
    tracer
        .current_dir(&root)
        .args(["--pid", &server.pid.to_string()])
        .args(["--duration", "10", "--interval", "2"])
        .args(["--output", OUTPUT_DIR, "--slow", "20"]);
    let line = cmdline(&tracer);
    println!("$ {line}");
    let status = tracer
        .status()
        .with_context(|| format!("demo: could not start `{line}`"));

    load.stop();
    server.stop();

    let status = status?;
    if !status.success() {
        eprintln!("demo: `{line}` failed ({status})");
        // Like a shell: 128 + signal number when the tracer was killed by a signal.
        let code = status
            .code()
            .or_else(|| status.signal().map(|signal| 128 + signal))
            .unwrap_or(1);
        std::process::exit(code);
    }

    let out = root.join(OUTPUT_DIR);
    println!("== demo done; the tracer wrote:");
    for file in [
        "summary.json",
        "latency.hlog",
        "requests.jsonl",
        "waits.folded",
        "waits.svg (a flame graph: open it in a browser)",
    ] {
        println!("  {}", out.join(file).display());
    }
    Ok(())
}
