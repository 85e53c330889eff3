//! `requests.jsonl`: one JSON line per request slower than `--slow`, written as whole lines
//! (see the README for the contract).

use std::{collections::BTreeMap, sync::Arc};

use serde::{Deserialize, Serialize};

use super::files::{self, OutFile, Outcome, OutputDir};
use crate::engine::{Cause, Request};

/// One line of requests.jsonl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The thread that served it.
    pub tid: u32,
    pub fd: u32,
    /// CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    pub start_unix_ns: u64,
    pub latency_ns: u64,
    /// Every cause, summing to `latency_ns`.
    pub breakdown: BTreeMap<Cause, u64>,
    pub incomplete: bool,
    pub shared_context: bool,
}

impl RequestRecord {
    fn new(r: &Request, boot_to_unix_ns: i128) -> Self {
        let start_unix_ns = r.start_ns as i128 + boot_to_unix_ns;
        RequestRecord {
            tid: r.ctx.thread().map_or(0, |tid| tid.0),
            fd: r.fd,
            start_ns: r.start_ns,
            start_unix_ns: start_unix_ns.max(0) as u64,
            latency_ns: r.latency_ns,
            breakdown: Cause::ALL
                .iter()
                .map(|&c| (c, r.breakdown[c.index()]))
                .collect(),
            incomplete: r.incomplete,
            shared_context: r.shared_context,
        }
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
            file: OutFile::create(dir, files::REQUESTS),
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
        serde_json::to_writer(&mut self.pending, &RequestRecord::new(r, boot_to_unix_ns))
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
