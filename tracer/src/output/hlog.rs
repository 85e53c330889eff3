//! `latency.hlog`: an HdrHistogram V2 interval log, one histogram per tag (`request`, then
//! each cause) per interval. Its format is a contract, described in the README.

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

use super::{
    aggregate::RequestHistograms,
    files::{self, OutFile, Outcome, OutputDir},
};
use crate::engine::Cause;

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
            file: OutFile::create(dir, files::HLOG),
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
