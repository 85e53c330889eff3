//! One load phase's client: `workload load` or `openssl s_time`, and what it measured.

use std::{
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::cmdline;

/// What one load phase measured (from the JSON line `workload load` prints at the end, or
/// from `s_time`).
pub struct Load {
    pub rps: Option<f64>,
    pub p99_us: Option<f64>,
    pub errors: Option<f64>,
}

/// Runs `workload load` to completion and parses its JSON line.
pub fn run_workload_load(cmd: &mut Command) -> Result<Load> {
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

/// A number at a JSON pointer; `None` when missing or not a number.
fn number(value: &Value, pointer: &str) -> Option<f64> {
    value.pointer(pointer)?.as_f64()
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
    })
}
