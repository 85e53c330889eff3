//! Aggregates: HdrHistograms of request latency and per-cause time (per interval and in
//! total), per-event wait histograms, and bcc-style log2 histograms for the console.

use hdrhistogram::Histogram;

use crate::engine::{Breakdown, Cause, Handshake, Request, TlsPhases, TlsVersion, Wait, CAUSES};

const ON_CPU: usize = Cause::OnCpu.index();
const RUNQUEUE: usize = Cause::Runqueue.index();

fn histogram() -> Histogram<u64> {
    // 2 significant digits (values within 1%), auto-resizing: nanoseconds up to hours. The
    // collector records several values per request into these; with 3 digits each histogram
    // is ~170 KB of counts spread over the cache, and recording cost a fifth of the
    // collector's time on a saturated target (1.9 vs 2.3 us per request, scenario A).
    let mut h = Histogram::new(2).expect("2 significant digits is valid");
    h.auto(true);
    h
}

/// The largest value a latency histogram (latency.hlog's) reports for one whose largest
/// recorded value is `value`: the top of `value`'s bucket, as every HdrHistogram
/// implementation reads it back.
pub fn bucket_top(value: u64) -> u64 {
    histogram().highest_equivalent(value)
}

/// A request's `ns` of one cause: counted as a zero (not recorded: most causes are zero in
/// most requests), or recorded, and the cause's exact maximum kept.
fn record_cause(h: &mut Histogram<u64>, zeros: &mut u64, max: &mut u64, ns: u64) {
    if ns == 0 {
        *zeros += 1;
    } else {
        let _ = h.record(ns);
        *max = (*max).max(ns);
    }
}

/// A request-latency histogram and one per cause (ns of that cause in each request).
pub struct RequestHistograms {
    pub latency: Histogram<u64>,
    /// Complete once [`RequestHistograms::settle`] has run.
    pub causes: [Histogram<u64>; CAUSES],
    /// The largest latency recorded, exactly: a histogram's `max()` is the top of its
    /// bucket (up to 1% more than any request took).
    pub latency_max: u64,
    /// The largest ns of each cause in one request, exactly.
    pub cause_max: [u64; CAUSES],
    /// The requests' latencies added up, for their exact mean (a histogram's `mean()` takes
    /// each value as the middle of its bucket).
    pub latency_sum: u128,
    /// Requests with none of a cause, not yet in its histogram: most causes of most requests
    /// are zero, and one count per interval costs less than one record per request.
    zeros: [u64; CAUSES],
}

impl Default for RequestHistograms {
    fn default() -> Self {
        RequestHistograms {
            latency: histogram(),
            causes: std::array::from_fn(|_| histogram()),
            latency_max: 0,
            cause_max: [0; CAUSES],
            latency_sum: 0,
            zeros: [0; CAUSES],
        }
    }
}

impl RequestHistograms {
    pub fn record(&mut self, r: &Request) {
        self.record_latency(r.latency_ns);
        for (((h, zeros), max), ns) in self
            .causes
            .iter_mut()
            .zip(&mut self.zeros)
            .zip(&mut self.cause_max)
            .zip(r.breakdown)
        {
            record_cause(h, zeros, max, ns);
        }
    }

    /// [`RequestHistograms::record`] for a request the kernel side timed, with no
    /// [`Request`] built: its time on its CPU, but for `runqueue_ns` waiting for it.
    pub fn record_kernel_timed(&mut self, latency_ns: u64, runqueue_ns: u64) {
        self.record_latency(latency_ns);
        for (cause, ((h, zeros), max)) in self
            .causes
            .iter_mut()
            .zip(&mut self.zeros)
            .zip(&mut self.cause_max)
            .enumerate()
        {
            let ns = match cause {
                ON_CPU => latency_ns.saturating_sub(runqueue_ns),
                RUNQUEUE => runqueue_ns,
                _ => 0,
            };
            record_cause(h, zeros, max, ns);
        }
    }

    /// A request's latency, in the histogram and in the exact maximum and sum beside it.
    fn record_latency(&mut self, latency_ns: u64) {
        let _ = self.latency.record(latency_ns);
        self.latency_max = self.latency_max.max(latency_ns);
        self.latency_sum += u128::from(latency_ns);
    }

    /// Put the zeros counted so far into the cause histograms: before they are read.
    pub fn settle(&mut self) {
        for (h, zeros) in self.causes.iter_mut().zip(&mut self.zeros) {
            if *zeros > 0 {
                let _ = h.record_n(0, std::mem::take(zeros));
            }
        }
    }

    /// Add another set (an interval's, settled) into this one.
    pub fn add(&mut self, other: &RequestHistograms) {
        debug_assert!(other.zeros.iter().all(|&z| z == 0), "add a settled set");
        let _ = self.latency.add(&other.latency);
        self.latency_max = self.latency_max.max(other.latency_max);
        self.latency_sum += other.latency_sum;
        for (h, o) in self.causes.iter_mut().zip(&other.causes) {
            let _ = h.add(o);
        }
        for (max, o) in self.cause_max.iter_mut().zip(other.cause_max) {
            *max = (*max).max(o);
        }
    }

    pub fn reset(&mut self) {
        self.latency.reset();
        self.causes.iter_mut().for_each(Histogram::reset);
        self.latency_max = 0;
        self.cause_max = [0; CAUSES];
        self.latency_sum = 0;
        self.zeros = [0; CAUSES];
    }
}

/// bcc-style power-of-two histogram (`print_log2_hist` in libbpf-tools' trace_helpers.c).
#[derive(Clone)]
pub struct Log2Hist {
    slots: [u64; 64],
}

impl Default for Log2Hist {
    fn default() -> Self {
        Log2Hist { slots: [0; 64] }
    }
}

impl Log2Hist {
    pub fn record(&mut self, value: u64) {
        // floor(log2(value)), with 0 and 1 both in slot 0, as bcc's log2l().
        let slot = if value < 2 {
            0
        } else {
            63 - value.leading_zeros() as usize
        };
        self.slots[slot] += 1;
    }

    /// Render as bcc does: `low -> high : count |****|`.
    pub fn render(&self, unit: &str) -> String {
        let Some(last) = self.slots.iter().rposition(|&c| c > 0) else {
            return format!("{:>16} : count    distribution\n  (no samples)\n", unit);
        };
        let max = *self.slots.iter().max().unwrap_or(&1);
        let mut out = format!("{unit:>24} : count    distribution\n");
        for (i, &count) in self.slots.iter().enumerate().take(last + 1) {
            let high = (1u128 << (i + 1)) - 1;
            let low = if i == 0 { 0 } else { 1u128 << i };
            let stars = (count * 40).div_ceil(max.max(1)) as usize;
            out.push_str(&format!(
                "{low:>10} -> {high:<10} : {count:<8} |{:<40}|\n",
                "*".repeat(stars.min(40))
            ));
        }
        out
    }
}

/// A per-event wait: HdrHistogram for percentiles, log2 for the console, and the longest
/// exactly (the histogram knows it only to its bucket's top).
pub struct WaitHist {
    pub hdr: Histogram<u64>,
    pub log2_us: Log2Hist,
    pub max: u64,
}

impl WaitHist {
    fn new() -> Self {
        WaitHist {
            hdr: histogram(),
            log2_us: Log2Hist::default(),
            max: 0,
        }
    }

    pub fn record(&mut self, ns: u64) {
        let _ = self.hdr.record(ns);
        self.log2_us.record(ns / 1000);
        self.max = self.max.max(ns);
    }
}

/// TLS handshakes: durations, phase totals, versions and resumption.
pub struct TlsStats {
    pub durations: Histogram<u64>,
    /// The longest handshake, exactly.
    pub longest: u64,
    pub phases: TlsPhases,
    /// Handshakes by version: unknown, TLS 1.2, TLS 1.3.
    pub by_version: [u64; 3],
    pub resumed: u64,
    pub full: u64,
}

impl TlsStats {
    fn new() -> Self {
        TlsStats {
            durations: histogram(),
            longest: 0,
            phases: TlsPhases::default(),
            by_version: [0; 3],
            resumed: 0,
            full: 0,
        }
    }

    pub fn record(&mut self, h: &Handshake) {
        let version = match h.kind.version {
            TlsVersion::Unknown => 0,
            TlsVersion::Tls12 => 1,
            TlsVersion::Tls13 => 2,
        };
        self.by_version[version] += 1;
        match h.kind.resumed {
            Some(true) => self.resumed += 1,
            Some(false) => self.full += 1,
            None => {}
        }
        let _ = self.durations.record(h.phases.total());
        self.longest = self.longest.max(h.phases.total());
        self.phases.cpu += h.phases.cpu;
        self.phases.peer_wait += h.phases.peer_wait;
        self.phases.runqueue += h.phases.runqueue;
        self.phases.other += h.phases.other;
    }
}

/// Everything aggregated over the whole trace.
pub struct Totals {
    pub requests: RequestHistograms,
    pub request_log2_us: Log2Hist,
    pub breakdown: Breakdown,
    pub incomplete: u64,
    pub futex: WaitHist,
    pub runqueue: WaitHist,
    pub socket_read: WaitHist,
    pub tls: TlsStats,
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            requests: RequestHistograms::default(),
            request_log2_us: Log2Hist::default(),
            breakdown: [0; CAUSES],
            incomplete: 0,
            futex: WaitHist::new(),
            runqueue: WaitHist::new(),
            socket_read: WaitHist::new(),
            tls: TlsStats::new(),
        }
    }
}

impl Totals {
    /// Count a request; its histograms and its breakdown are added per interval
    /// ([`RequestHistograms::add`], [`Totals::add_breakdown`]).
    pub fn record_request(&mut self, r: &Request) {
        self.record_complete(r.latency_ns);
        self.incomplete += r.incomplete as u64;
    }

    /// Count a request known complete (one the kernel side timed).
    pub fn record_complete(&mut self, latency_ns: u64) {
        self.request_log2_us.record(latency_ns / 1000);
    }

    /// Add an interval's summed request breakdown.
    pub fn add_breakdown(&mut self, interval: &Breakdown) {
        for (sum, ns) in self.breakdown.iter_mut().zip(interval) {
            *sum += ns;
        }
    }

    pub fn record_wait(&mut self, w: Wait) {
        match w {
            Wait::Futex(ns) => self.futex.record(ns),
            Wait::Runqueue(ns) => self.runqueue.record(ns),
            Wait::SocketRead(ns) => self.socket_read.record(ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_slots_follow_bcc() {
        let mut h = Log2Hist::default();
        for v in [0, 1, 2, 3, 4, 7, 8, 1000] {
            h.record(v);
        }
        let text = h.render("usecs");
        assert!(text.contains("         0 -> 1          : 2 "), "{text}");
        assert!(text.contains("         2 -> 3          : 2 "), "{text}");
        assert!(text.contains("         4 -> 7          : 2 "), "{text}");
        assert!(text.contains("       512 -> 1023       : 1 "), "{text}");
    }

    /// The kernel side's requests take the fast path; it must leave the histograms as the
    /// general one does with the same requests built whole (0 ns included).
    #[test]
    fn a_kernel_timed_request_is_recorded_as_the_general_path_records_it() {
        // (latency, of which waiting for a CPU)
        let requests = [
            (0, 0),
            (1, 0),
            (999, 0),
            (50_000, 0),
            (1_234_567, 0),
            (50_000, 0),
            (50_000, 7_000),
            (7_000, 7_000),
            (2_000_000, 1),
        ];
        let (mut fast, mut general) = (RequestHistograms::default(), RequestHistograms::default());
        let (mut fast_totals, mut general_totals) = (Totals::default(), Totals::default());
        for (i, &(latency_ns, runqueue_ns)) in requests.iter().enumerate() {
            fast.record_kernel_timed(latency_ns, runqueue_ns.min(latency_ns));
            fast_totals.record_complete(latency_ns);
            let r = crate::engine::requests::stretch_request(&tracer_common::StretchRequest {
                start_ns: i as u64,
                latency_ns,
                runqueue_ns: runqueue_ns as u32,
                ..Default::default()
            });
            general.record(&r);
            general_totals.record_request(&r);
        }
        fast.settle();
        general.settle();
        assert_eq!(fast.latency, general.latency);
        assert_eq!(fast.latency_max, general.latency_max);
        assert_eq!(fast.cause_max, general.cause_max);
        assert_eq!(fast.latency_sum, general.latency_sum);
        for (cause, (f, g)) in fast.causes.iter().zip(&general.causes).enumerate() {
            assert_eq!(f, g, "cause {cause}");
            assert_eq!(f.len(), requests.len() as u64, "cause {cause}");
        }
        assert_eq!(
            fast_totals.request_log2_us.slots,
            general_totals.request_log2_us.slots
        );
    }
}
