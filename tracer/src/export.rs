//! Output files: `latency.hlog` (HdrHistogram V2 interval log), `requests.jsonl` (slow
//! requests) and `summary.json`. Their formats are a contract, described in the README.

use std::{
    io,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

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
    output::{self, OutFile, Outcome, OutputDir},
    stats::RequestHistograms,
};

/// Writes one histogram per tag per interval to `latency.hlog`, each interval with one write.
pub struct HlogWriter {
    writer: IntervalLogWriter<'static, 'static, SharedBuf, V2DeflateSerializer>,
    /// What the interval-log writer has written and the file has not received yet.
    buf: SharedBuf,
    pub file: OutFile,
}

/// A byte buffer the interval-log writer writes into while we keep a handle to drain it.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl io::Write for SharedBuf {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl HlogWriter {
    pub fn create(dir: &Arc<OutputDir>, start: SystemTime) -> Self {
        let buf = SharedBuf::default();
        // The interval-log writer borrows its sink and serializer; both live as long as the
        // process, so they are leaked once instead of threading lifetimes through the collector.
        let sink: &'static mut SharedBuf = Box::leak(Box::new(buf.clone()));
        let serializer: &'static mut V2DeflateSerializer =
            Box::leak(Box::new(V2DeflateSerializer::new()));
        let writer = IntervalLogWriterBuilder::new()
            .add_comment("tracer request latency by cause; values in nanoseconds")
            .with_start_time(start)
            .with_base_time(start)
            .begin_log_with(sink, serializer)
            .expect("writing to memory cannot fail");
        let mut hlog = HlogWriter {
            writer,
            buf,
            file: OutFile::create(dir, output::HLOG),
        };
        hlog.write_out();
        hlog
    }

    /// Write the interval `[offset, offset + length)` (seconds since the start) for every tag.
    pub fn write_interval(&mut self, h: &RequestHistograms, offset: Duration, length: Duration) {
        if !self.file.is_writable() {
            return;
        }
        self.write_one(&h.latency, "request", offset, length);
        for c in Cause::ALL {
            self.write_one(&h.causes[c.index()], c.name(), offset, length);
        }
        self.write_out();
    }

    fn write_one(&mut self, h: &Histogram<u64>, tag: &str, offset: Duration, length: Duration) {
        if let Err(e) = self
            .writer
            .write_histogram(h, offset, length, Tag::new(tag))
        {
            self.file
                .fail(&format!("encoding the {tag} histogram: {e}"));
        }
    }

    /// Hand what was written to memory to the file, in one write.
    fn write_out(&mut self) {
        let bytes = std::mem::take(&mut *self.buf.0.lock().unwrap());
        self.file.write(&bytes);
    }

    pub fn commit(&mut self) -> Outcome {
        self.file.commit()
    }
}

/// Appends requests slower than a threshold to `requests.jsonl`. Lines are collected in
/// memory and written by [`SlowRequests::write_out`] (after each drain of the ring buffer):
/// one write of whole lines, so a killed tracer leaves no cut line (see the README).
pub struct SlowRequests {
    pub file: OutFile,
    pending: Vec<u8>,
    pending_lines: u64,
    threshold_ns: u64,
    /// Lines in the file.
    pub written: u64,
}

impl SlowRequests {
    pub fn create(dir: &Arc<OutputDir>, threshold_ns: u64) -> Self {
        SlowRequests {
            file: OutFile::create(dir, output::REQUESTS),
            pending: Vec::new(),
            pending_lines: 0,
            threshold_ns,
            written: 0,
        }
    }

    pub fn offer(&mut self, r: &Request, boot_to_unix_ns: i128) {
        if r.latency_ns < self.threshold_ns || !self.file.is_writable() {
            return;
        }
        serde_json::to_writer(&mut self.pending, &request_json(r, boot_to_unix_ns))
            .expect("writing JSON to memory cannot fail");
        self.pending.push(b'\n');
        self.pending_lines += 1;
    }

    /// Write the lines collected since the last call, in one write.
    pub fn write_out(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let kept = self.file.write(&self.pending);
        self.written += if kept == self.pending.len() {
            self.pending_lines
        } else {
            self.pending[..kept].iter().filter(|&&b| b == b'\n').count() as u64
        };
        self.pending.clear();
        self.pending_lines = 0;
    }

    pub fn commit(&mut self) -> Outcome {
        self.write_out();
        self.file.commit()
    }
}

impl Drop for SlowRequests {
    /// On an error or a panic, the lines collected so far still reach the file (which is
    /// then moved into place as it drops).
    fn drop(&mut self) {
        self.write_out();
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

/// Write `summary.json` (pretty, one write, then renamed into place).
pub fn write_json(dir: &Arc<OutputDir>, name: &'static str, value: &Value) -> Outcome {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize") + "\n";
    output::write_file(dir, name, text.as_bytes())
}
