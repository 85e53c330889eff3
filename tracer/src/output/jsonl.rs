//! `requests.jsonl`: one JSON line per request slower than `--slow`, written as whole lines
//! (see the README for the contract).

use std::{collections::BTreeMap, sync::Arc};

use serde::{Deserialize, Serialize};

use super::{
    files::{self, OutFile, Outcome, OutputDir},
    sites::SiteNamer,
};
use crate::engine::{Cause, ExecCtx, LargestWait, Request};

/// One line of requests.jsonl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The thread that served it (0: a goroutine, see `goid`).
    pub tid: u32,
    /// The goroutine that served it (a Go target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goid: Option<u64>,
    /// Its connection's fd; null for an HTTP/2 stream (its handler goroutine's request).
    pub fd: Option<u32>,
    /// CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    pub start_unix_ns: u64,
    pub latency_ns: u64,
    /// Every cause, summing to `latency_ns`.
    pub breakdown: BTreeMap<Cause, u64>,
    pub incomplete: bool,
    pub shared_context: bool,
    /// Its longest blocking wait, and where it waited (absent: it never blocked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub largest_wait: Option<WaitRecord>,
}

/// A request's longest blocking wait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitRecord {
    pub cause: Cause,
    /// Its part inside the request.
    pub wait_ns: u64,
    /// Where it waited, as `wait_sites` names sites: `main.waitLock ← main.main.func3
    /// (sync.(*Mutex).Lock)`; absent when no stack was taken (`--stacks off`, a wait
    /// between the kernel's checks) or it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Its frames, innermost first (`function (file:line)`); empty without a site.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<String>,
    /// Frames may be missing (code built without frame pointers on the way).
    #[serde(default)]
    pub truncated: bool,
}

impl WaitRecord {
    fn new(wait: &LargestWait, names: &mut SiteNamer) -> Self {
        let named = wait.site.and_then(|site| names.name(site));
        WaitRecord {
            cause: wait.cause,
            wait_ns: wait.ns,
            site: named.as_ref().map(|n| n.site.clone()),
            frames: named.as_ref().map_or_else(Vec::new, |n| n.frames.clone()),
            truncated: named.is_some_and(|n| n.truncated),
        }
    }
}

impl RequestRecord {
    /// The cause that holds most of its time (`None`: no causes at all).
    pub fn dominant_cause(&self) -> Option<Cause> {
        let (&cause, _) = self.breakdown.iter().max_by_key(|(_, &ns)| ns)?;
        Some(cause)
    }

    fn new(r: &Request, boot_to_unix_ns: i128, names: &mut SiteNamer) -> Self {
        let start_unix_ns = r.start_ns as i128 + boot_to_unix_ns;
        RequestRecord {
            tid: r.ctx.thread().map_or(0, |tid| tid.0),
            goid: match r.ctx {
                ExecCtx::Goroutine(g) => Some(g.0),
                ExecCtx::Thread(_) => None,
            },
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
            largest_wait: r.largest_wait.map(|w| WaitRecord::new(&w, names)),
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

    /// Whether a request this long is logged.
    pub fn takes(&self, latency_ns: u64) -> bool {
        latency_ns >= self.threshold_ns && self.file.is_writable()
    }

    /// Logs `r` if it is slow; its largest wait's site is named by `names` (each distinct
    /// stack once per run, so only the first slow request waiting there pays for it).
    pub fn offer(&mut self, r: &Request, boot_to_unix_ns: i128, names: &mut SiteNamer) {
        if !self.takes(r.latency_ns) {
            return;
        }
        let record = RequestRecord::new(r, boot_to_unix_ns, names);
        serde_json::to_writer(&mut self.pending, &record)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        engine::{sites::StackRef, Tid, CAUSES},
        output::sites::StackSource,
    };

    struct OneStack;
    impl StackSource for OneStack {
        fn addresses(&self, id: u32) -> Option<Vec<u64>> {
            (id == 4).then(|| vec![0xa0, 0xb0])
        }
    }

    fn request(largest_wait: Option<LargestWait>) -> Request {
        let mut breakdown = [0; CAUSES];
        breakdown[Cause::Lock.index()] = 900;
        breakdown[Cause::OnCpu.index()] = 100;
        Request {
            ctx: ExecCtx::Thread(Tid(7)),
            fd: Some(5),
            start_ns: 1_000,
            latency_ns: 1_000,
            breakdown,
            incomplete: false,
            shared_context: false,
            largest_wait,
        }
    }

    #[test]
    fn a_line_carries_the_largest_wait_and_its_site() {
        let mut names = SiteNamer::new(Some(Box::new(OneStack)), None);
        let wait = LargestWait {
            cause: Cause::Lock,
            ns: 800,
            site: Some(StackRef { id: 4, caller: 0 }),
        };
        let line = serde_json::to_string(&RequestRecord::new(&request(Some(wait)), 0, &mut names))
            .unwrap();
        let back: RequestRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(
            back.largest_wait,
            Some(WaitRecord {
                cause: Cause::Lock,
                wait_ns: 800,
                site: Some("0xa0 ← 0xb0".to_string()),
                frames: vec!["0xa0".to_string(), "0xb0".to_string()],
                truncated: false,
            }),
            "{line}"
        );
        assert!(
            line.contains(r#""largest_wait":{"cause":"lock","wait_ns":800,"site":"0xa0 ← 0xb0""#)
        );

        // No stack: the cause and time alone. Never blocked: no field at all.
        let unnamed = LargestWait { site: None, ..wait };
        let line =
            serde_json::to_string(&RequestRecord::new(&request(Some(unnamed)), 0, &mut names))
                .unwrap();
        assert!(
            line.ends_with(r#""largest_wait":{"cause":"lock","wait_ns":800,"truncated":false}}"#),
            "{line}"
        );
        let line =
            serde_json::to_string(&RequestRecord::new(&request(None), 0, &mut names)).unwrap();
        assert!(!line.contains("largest_wait"), "{line}");
    }
}
