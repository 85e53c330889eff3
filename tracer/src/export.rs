//! Output files: `latency.hlog` (HdrHistogram V2 interval log), `requests.jsonl` (slow
//! requests) and `summary.json`. Their formats are a contract, described in the README.

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use hdrhistogram::{
    serialization::{
        interval_log::{IntervalLogWriter, IntervalLogWriterBuilder, Tag},
        V2DeflateSerializer,
    },
    Histogram,
};
use serde_json::{json, Map, Value};

use crate::{
    attribution::{Breakdown, Cause, Request},
    stats::RequestHistograms,
};

/// Writes one histogram per tag per interval to `latency.hlog`.
pub struct HlogWriter {
    writer: IntervalLogWriter<'static, 'static, File, V2DeflateSerializer>,
}

impl HlogWriter {
    pub fn create(path: &Path, start: SystemTime) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        // The interval-log writer borrows its sink and serializer; both live as long as the
        // process, so they are leaked once instead of threading lifetimes through the collector.
        let file: &'static mut File = Box::leak(Box::new(file));
        let serializer: &'static mut V2DeflateSerializer =
            Box::leak(Box::new(V2DeflateSerializer::new()));
        let writer = IntervalLogWriterBuilder::new()
            .add_comment("tracer request latency by cause; values in nanoseconds")
            .with_start_time(start)
            .with_base_time(start)
            .begin_log_with(file, serializer)
            .context("writing the latency.hlog header")?;
        Ok(HlogWriter { writer })
    }

    /// Write the interval `[offset, offset + length)` (seconds since the start) for every tag.
    pub fn write_interval(
        &mut self,
        h: &RequestHistograms,
        offset: Duration,
        length: Duration,
    ) -> Result<()> {
        self.write_one(&h.latency, "request", offset, length)?;
        for c in Cause::ALL {
            self.write_one(&h.causes[c.index()], c.name(), offset, length)?;
        }
        Ok(())
    }

    fn write_one(
        &mut self,
        h: &Histogram<u64>,
        tag: &str,
        offset: Duration,
        length: Duration,
    ) -> Result<()> {
        self.writer
            .write_histogram(h, offset, length, Tag::new(tag))
            .map_err(|e| anyhow::anyhow!("writing latency.hlog: {e:?}"))
    }
}

/// Appends requests slower than a threshold to `requests.jsonl`.
pub struct SlowRequests {
    out: BufWriter<File>,
    threshold_ns: u64,
    pub written: u64,
}

impl SlowRequests {
    pub fn create(path: &Path, threshold_ns: u64) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(SlowRequests {
            out: BufWriter::new(file),
            threshold_ns,
            written: 0,
        })
    }

    pub fn offer(&mut self, r: &Request, boot_to_unix_ns: i128) -> Result<()> {
        if r.latency_ns < self.threshold_ns {
            return Ok(());
        }
        serde_json::to_writer(&mut self.out, &request_json(r, boot_to_unix_ns))?;
        self.out.write_all(b"\n")?;
        self.written += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().context("writing requests.jsonl")
    }
}

pub fn breakdown_json(breakdown: &Breakdown) -> Value {
    let map: Map<String, Value> = Cause::ALL
        .iter()
        .map(|c| (c.name().to_string(), json!(breakdown[c.index()])))
        .collect();
    Value::Object(map)
}

fn request_json(r: &Request, boot_to_unix_ns: i128) -> Value {
    let start_unix_ns = r.start_ns as i128 + boot_to_unix_ns;
    json!({
        "tid": r.ctx,
        "fd": r.fd,
        "start_ns": r.start_ns,
        "start_unix_ns": start_unix_ns.max(0) as u64,
        "latency_ns": r.latency_ns,
        "breakdown": breakdown_json(&r.breakdown),
        "incomplete": r.incomplete,
        "shared_context": r.shared_context,
    })
}

/// `{p50, p90, p99, max, mean}` of a histogram (zeros when empty).
pub fn latency_json(h: &Histogram<u64>) -> Value {
    json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "max": h.max(),
        "mean": h.mean().round() as u64,
    })
}

/// `{count, p50, p99, max}`.
pub fn wait_json(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.50),
        "p99": h.value_at_quantile(0.99),
        "max": h.max(),
    })
}

pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
