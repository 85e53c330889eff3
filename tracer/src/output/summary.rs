//! `summary.json`: the contract later tools (and our tests and bench) read, as serde types.
//! [`Summary::build`] fills it from the collector at the end of a trace; the console summary
//! is rendered from it too, so the two never disagree.

use std::{collections::BTreeMap, fmt, sync::Arc};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::{
    collector::Collector,
    engine::{
        locks::{Key, LockStats, Locks},
        syscall_name, Cause, Tally, Waker, LISTED_LOCKS, LISTED_PER_LOCK,
    },
    kernel::{ring::comm, uprobes::TlsStatus, ProgramStat},
    output::{
        aggregate::{TlsStats, WaitHist},
        files::{self, Outcome, OutputDir},
        sites::{self, ResolvedSites},
    },
    target::Target,
};

/// The whole document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub target: TargetInfo,
    pub duration_s: f64,
    pub stopped_by: StoppedBy,
    pub requests: Requests,
    /// Every cause, zero where unseen.
    pub breakdown: BTreeMap<Cause, CauseTotal>,
    /// Time blocked in `other`, by the syscall the thread was in (`none`: outside any).
    pub other_by_syscall_ns: BTreeMap<String, u64>,
    /// Time goroutines spent parked, by Go's own wait reason (`chan receive`,
    /// `sync.Mutex.Lock`, ...); empty for a target that is not Go.
    pub go_wait_reasons_ns: BTreeMap<String, u64>,
    pub waits: Waits,
    /// The most waited-on futexes, most waited first.
    pub locks: Vec<Lock>,
    pub locks_not_listed: WaitCount,
    /// A Go target's most waited-on semaphores (`sync.Mutex`, ...), most waited first;
    /// empty for a target that is not Go.
    pub go_locks: Vec<GoLock>,
    pub go_locks_not_listed: WaitCount,
    /// Where requests waited: per blocking cause, the heaviest call sites.
    pub wait_sites: BTreeMap<Cause, CauseSites>,
    /// What taking and naming the stacks cost.
    pub stacks: StacksUsage,
    pub tls: Tls,
    pub events: Events,
    pub attribution: Attribution,
    pub programs: Vec<Program>,
    /// Files that stop early or were not written (empty when all are whole).
    pub incomplete_files: Vec<IncompleteFile>,
    /// The tracer's own cost, taken last.
    pub collector: CollectorUsage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetInfo {
    pub pid: u32,
    pub comm: String,
    /// Its name when the trace began (differs after an `exec`).
    pub comm_at_start: String,
}

/// Why the trace ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoppedBy {
    /// `--duration` elapsed.
    Duration,
    /// SIGINT or SIGTERM.
    Signal,
    /// The target exited.
    TargetExit,
}

impl fmt::Display for StoppedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoppedBy::Duration => "duration",
            StoppedBy::Signal => "signal",
            StoppedBy::TargetExit => "target_exit",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Requests {
    pub count: u64,
    pub latency_ns: Latency,
    /// Open while events were lost: their breakdown may be wrong.
    pub incomplete: u64,
    /// Never answered (connection closed, thread exited).
    pub aborted: u64,
    /// Shared their execution context with another open request (event loops).
    pub shared_context: u64,
    /// Delimited and timed in the kernel: served by their thread in one stretch on a CPU,
    /// all of their time on it (see the README's cost section).
    #[serde(default)]
    pub in_kernel: u64,
    /// Lines in requests.jsonl.
    pub slow_logged: u64,
    /// 1: every request was attributed; N: the requests of one connection in N (`--sample
    /// N`), and every figure here is of those.
    #[serde(default = "every_request")]
    pub sampled_one_in: u32,
}

fn every_request() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: u64,
}

impl Latency {
    /// `max` is the largest value recorded, exactly (see [`quantile`]), and `sum` all of
    /// them added up: the mean is exact, not the histogram's (each value taken as the
    /// middle of its bucket).
    fn of(h: &Histogram<u64>, max: u64, sum: u128) -> Self {
        let count = u128::from(h.len());
        Latency {
            p50: quantile(h, 0.50, max),
            p90: quantile(h, 0.90, max),
            p99: quantile(h, 0.99, max),
            max,
            mean: (sum + count / 2).checked_div(count).unwrap_or(0) as u64,
        }
    }
}

/// A percentile of `h`, never above `max`, the largest value recorded: the histogram gives
/// the top of the value's bucket (up to 1% more), which for the top percentiles is more
/// than any request took.
fn quantile(h: &Histogram<u64>, q: f64, max: u64) -> u64 {
    h.value_at_quantile(q).min(max)
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CauseTotal {
    pub total_ns: u64,
    /// Of all requests' time.
    pub share: f64,
    pub per_request_ns: PerRequest,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PerRequest {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// Per-event waits, request or not.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Waits {
    pub futex_ns: WaitStats,
    pub runqueue_ns: WaitStats,
    pub socket_read_ns: WaitStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WaitStats {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl WaitStats {
    /// `max` is the longest wait recorded, exactly (see [`quantile`]).
    fn of(h: &Histogram<u64>, max: u64) -> Self {
        WaitStats {
            count: h.len(),
            p50: quantile(h, 0.50, max),
            p99: quantile(h, 0.99, max),
            max,
        }
    }

    fn of_waits(w: &WaitHist) -> Self {
        Self::of(&w.hdr, w.max)
    }
}

/// One contended futex: who waited, and who woke them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lock {
    /// `0x7f..`
    pub address: String,
    pub wait_ns: u64,
    pub waits: u64,
    pub waiters: Vec<Waiter>,
    pub waiters_not_listed: WaitCount,
    pub wakers: Vec<LockWaker>,
    pub wakers_not_listed: WakeupCount,
}

/// What taking and naming the stacks cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StacksUsage {
    /// Events that carried a user stack (blocking switch-outs, parks, releases), and per
    /// second of the trace.
    pub taken: u64,
    pub taken_per_s: f64,
    /// Stacks the kernel took that none of its stack maps had room for: their waits are
    /// under `without_stack`.
    pub not_stored: u64,
    /// Distinct addresses symbolized at the end, and how long naming every site took.
    pub addresses: usize,
    pub symbolize_ms: f64,
}

/// The call sites of one cause's waits inside requests, heaviest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CauseSites {
    pub sites: Vec<WaitSite>,
    /// Waits at sites not listed.
    pub not_listed: WaitCount,
    /// Waits whose stack was not taken or could not be read.
    pub without_stack: WaitCount,
}

/// One call site where requests waited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitSite {
    /// The innermost frame of the target's own code, its caller, and the library call it
    /// waited in: `main.waitLock ← main.main.func3 (sync.(*Mutex).Lock)`.
    pub site: String,
    /// The whole stack, innermost first: `function (file:line)` where the line is known.
    pub frames: Vec<String>,
    /// The stack may be cut short (code built without frame pointers on the way).
    pub truncated: bool,
    pub total_ns: u64,
    pub count: u64,
    /// Of all requests' time.
    pub share: f64,
    /// For a lock wait: where the threads or goroutines that woke it released the lock (the
    /// unlockers), most frequent first (at most 3).
    pub woken_by: Vec<WakerSite>,
}

/// Where a waker released what a site waited for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WakerSite {
    pub site: String,
    pub frames: Vec<String>,
    pub truncated: bool,
    pub count: u64,
}

/// One contended Go semaphore: the goroutines that waited, and the goroutines that woke them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoLock {
    /// `sync.Mutex`, `sync.RWMutex` when Go's wait reason tells (Go 1.20+), else the wait
    /// reason (`semacquire`, `sync.WaitGroup.Wait`).
    pub kind: String,
    /// The sync object's address (`0xc000...`) for a `sync.Mutex` or `sync.RWMutex`, else
    /// the semaphore's.
    pub address: String,
    /// The semaphore's address (the `sema` field inside the object).
    pub semaphore: String,
    pub wait_ns: u64,
    pub waits: u64,
    pub waiters: Vec<GoWaiter>,
    pub waiters_not_listed: WaitCount,
    pub wakers: Vec<GoLockWaker>,
    pub wakers_not_listed: WakeupCount,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoWaiter {
    pub goid: u64,
    pub wait_ns: u64,
    pub waits: u64,
}

/// The goroutine that readied a waiter (`goid` null: the thread ran no goroutine, or it
/// could not be read), and the thread it ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoLockWaker {
    pub goid: Option<u64>,
    pub tid: u32,
    pub comm: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waiter {
    pub tid: u32,
    pub comm: String,
    pub wait_ns: u64,
    pub waits: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct WaitCount {
    pub waits: u64,
    pub wait_ns: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct WakeupCount {
    pub count: u64,
}

/// A thread waker has its `tid`, `pid` and `comm`; an interrupt has `interrupt` (`timer`,
/// `softirq`, `hardirq N`) and a `comm` in parentheses, never a thread's name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockWaker {
    pub context: WakerContext,
    pub tid: Option<u32>,
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupt: Option<String>,
    pub comm: String,
    pub count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WakerContext {
    Thread,
    Interrupt,
    Unknown,
}

impl LockWaker {
    fn new(w: &Waker, count: u64) -> Self {
        match *w {
            Waker::Thread {
                tid,
                pid,
                comm: name,
            } => LockWaker {
                context: WakerContext::Thread,
                tid: Some(tid),
                pid: Some(pid),
                interrupt: None,
                comm: comm(&name),
                count,
            },
            Waker::Interrupt(i) => LockWaker {
                context: WakerContext::Interrupt,
                tid: None,
                pid: None,
                interrupt: Some(i.name()),
                comm: format!("({})", i.name()),
                count,
            },
            Waker::Unknown => LockWaker {
                context: WakerContext::Unknown,
                tid: None,
                pid: None,
                interrupt: None,
                comm: "(unknown)".to_string(),
                count,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tls {
    /// The libraries hooked, e.g. `OpenSSL libssl.so.3`.
    pub library: Option<String>,
    pub hooked: Vec<String>,
    pub not_hooked_because: Option<String>,
    pub handshakes: Handshakes,
    pub phases: TlsPhaseTotals,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Handshakes {
    #[serde(flatten)]
    pub duration_ns: WaitStats,
    pub by_version: ByVersion,
    pub resumed: u64,
    pub full: u64,
    pub resumption_unknown: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ByVersion {
    #[serde(rename = "TLSv1.3")]
    pub tls13: u64,
    #[serde(rename = "TLSv1.2")]
    pub tls12: u64,
    pub unknown: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TlsPhaseTotals {
    pub cpu: Total,
    pub peer_wait: Total,
    pub runqueue: Total,
    pub other: Total,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Total {
    pub total_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Events {
    pub received: u64,
    pub lost: u64,
    pub lost_by_reason: LostByReason,
    pub lost_per_cpu: Vec<u64>,
    pub skipped_runs: SkippedRuns,
    pub malformed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LostByReason {
    pub ring_full: u64,
    pub map_full: u64,
    pub read_failed: u64,
}

/// Program runs the kernel skipped (another BPF program ran on that CPU); counted for every
/// task on the machine, so they do not mark the target's requests incomplete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedRuns {
    /// Of the programs that build the timeline.
    pub timeline: u64,
    /// Of the programs that only name wakers.
    pub wakers_only: u64,
    pub by_program: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attribution {
    /// What a request is timed on: `thread`, or `goroutine` for a Go target.
    pub context: String,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Program {
    pub name: String,
    pub run_count: u64,
    pub run_time_ns: u64,
    pub ns_per_run: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncompleteFile {
    pub file: String,
    pub error: String,
}

impl IncompleteFile {
    /// The files of `files` that are not whole.
    pub fn list(files: &[(&str, &Outcome)]) -> Vec<IncompleteFile> {
        files
            .iter()
            .filter_map(|(name, outcome)| match outcome {
                Outcome::Written => None,
                Outcome::StopsEarly(e) | Outcome::NotWritten(e) => Some(IncompleteFile {
                    file: name.to_string(),
                    error: e.clone(),
                }),
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CollectorUsage {
    /// The whole run: attaching (loading and verifying the programs), tracing, detaching
    /// and writing the files.
    pub cpu_s: f64,
    /// While attached and tracing only (from attach to stop): the steady cost per second of
    /// `duration_s`.
    #[serde(default)]
    pub tracing_cpu_s: f64,
    pub user_s: f64,
    pub sys_s: f64,
    pub max_rss_kb: i64,
}

impl CollectorUsage {
    /// This process's CPU seconds and peak RSS so far.
    pub fn now() -> Self {
        use nix::sys::resource::{getrusage, UsageWho};
        let Ok(ru) = getrusage(UsageWho::RUSAGE_SELF) else {
            return CollectorUsage::default();
        };
        let secs = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        let (user_s, sys_s) = (secs(ru.user_time()), secs(ru.system_time()));
        CollectorUsage {
            cpu_s: user_s + sys_s,
            tracing_cpu_s: 0.0,
            user_s,
            sys_s,
            max_rss_kb: ru.max_rss(),
        }
    }
}

/// What ended the trace and what the kernel side reported, besides the collector.
pub struct TraceEnd<'a> {
    pub target: &'a Target,
    pub stopped_by: StoppedBy,
    pub programs: &'a [ProgramStat],
    pub tls: &'a TlsStatus,
    pub sites: &'a ResolvedSites,
    /// `--sample N` as applied (1: every request).
    pub sample_one_in: u32,
}

const GOROUTINE_NOTE: &str = "a request is timed on the goroutine that read it, across the threads that ran it: parked (Go's wait reason), runnable in Go's scheduler (go_runqueue), or whatever its thread did while running it";
const ATTRIBUTION_NOTE: &str = "a request is timed on the thread that read it; requests sharing a thread (event loops) each count the thread's whole time (see shared_context)";

impl Summary {
    /// The `summary.json` a trace wrote in `dir` (for the tests and the bench).
    pub fn read(dir: &std::path::Path) -> anyhow::Result<Summary> {
        use anyhow::Context as _;
        let path = dir.join(files::SUMMARY);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a summary.json", path.display()))
    }

    /// The summary of a finished trace (`incomplete_files` and `collector` are filled by the
    /// caller once the other files are committed).
    pub fn build(c: &Collector, end: &TraceEnd) -> Summary {
        let t = c.totals();
        let engine = c.engine();
        let total: u64 = t.breakdown.iter().sum();
        let breakdown = Cause::ALL
            .iter()
            .map(|&cause| {
                let h = &t.requests.causes[cause.index()];
                let max = t.requests.cause_max[cause.index()];
                let ns = t.breakdown[cause.index()];
                let total = CauseTotal {
                    total_ns: ns,
                    share: share(ns, total),
                    per_request_ns: PerRequest {
                        p50: quantile(h, 0.5, max),
                        p99: quantile(h, 0.99, max),
                        max,
                    },
                };
                (cause, total)
            })
            .collect();
        let other_by_syscall_ns = engine
            .other_by_syscall
            .iter()
            .filter(|(_, ns)| **ns > 0)
            .map(|(nr, ns)| (syscall_name(*nr), *ns))
            .collect();
        let (lost, lost_by_cpu) = c.losses();
        let (timeline, wakers_only) = c.skipped_runs();
        Summary {
            target: TargetInfo {
                pid: end.target.pid,
                comm: end.target.comm.clone(),
                comm_at_start: end
                    .target
                    .comm_at_start
                    .clone()
                    .unwrap_or_else(|| end.target.comm.clone()),
            },
            duration_s: c.elapsed().as_secs_f64(),
            stopped_by: end.stopped_by,
            requests: Requests {
                count: t.requests.latency.len(),
                latency_ns: Latency::of(
                    &t.requests.latency,
                    t.requests.latency_max,
                    t.requests.latency_sum,
                ),
                incomplete: t.incomplete,
                aborted: engine.aborted(),
                shared_context: engine.shared(),
                in_kernel: engine.in_kernel(),
                slow_logged: c.slow_logged(),
                sampled_one_in: end.sample_one_in,
            },
            breakdown,
            other_by_syscall_ns,
            go_wait_reasons_ns: engine
                .go_parked_by_reason()
                .filter(|(_, ns)| *ns > 0)
                .collect(),
            waits: Waits {
                futex_ns: WaitStats::of_waits(&t.futex),
                runqueue_ns: WaitStats::of_waits(&t.runqueue),
                socket_read_ns: WaitStats::of_waits(&t.socket_read),
            },
            locks: top_locks(c),
            locks_not_listed: not_listed(&engine.locks),
            go_locks: top_go_locks(c),
            wait_sites: wait_sites(end.sites, total),
            stacks: StacksUsage {
                taken: engine.stacks_taken,
                taken_per_s: engine.stacks_taken as f64 / c.elapsed().as_secs_f64().max(1e-9),
                not_stored: c.stacks_not_stored(),
                addresses: end.sites.addresses,
                symbolize_ms: end.sites.resolve_ms,
            },
            go_locks_not_listed: not_listed(&engine.go_locks),
            tls: tls(end.tls, &t.tls),
            events: Events {
                received: c.received(),
                lost: lost.iter().sum(),
                lost_by_reason: LostByReason {
                    ring_full: lost[0],
                    map_full: lost[1],
                    read_failed: lost[2],
                },
                lost_per_cpu: lost_by_cpu.to_vec(),
                skipped_runs: SkippedRuns {
                    timeline,
                    wakers_only,
                    by_program: c.skipped_by_program().iter().cloned().collect(),
                },
                malformed: c.malformed(),
            },
            attribution: if engine.on_goroutines() {
                Attribution {
                    context: "goroutine".to_string(),
                    note: GOROUTINE_NOTE.to_string(),
                }
            } else {
                Attribution {
                    context: "thread".to_string(),
                    note: ATTRIBUTION_NOTE.to_string(),
                }
            },
            programs: end
                .programs
                .iter()
                .map(|p| Program {
                    name: p.name.clone(),
                    run_count: p.run_count,
                    run_time_ns: p.run_time_ns,
                    ns_per_run: p.run_time_ns.checked_div(p.run_count).unwrap_or(0),
                })
                .collect(),
            incomplete_files: Vec::new(),
            collector: CollectorUsage::default(),
        }
    }

    /// Write it to `summary.json` (pretty, one write, then renamed into place).
    pub fn write(&self, dir: &Arc<OutputDir>) -> Outcome {
        let text = serde_json::to_string_pretty(self).expect("the summary serializes") + "\n";
        files::write_file(dir, files::SUMMARY, text.as_bytes())
    }
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn top_locks(c: &Collector) -> Vec<Lock> {
    c.engine()
        .locks
        .top(LISTED_LOCKS)
        .into_iter()
        .map(|(addr, l)| {
            let listed = Contention::listed(
                l,
                |tid, t| Waiter {
                    tid: tid.0,
                    comm: c.thread_name(*tid).unwrap_or("?").to_string(),
                    wait_ns: t.ns,
                    waits: t.count,
                },
                |w, t| LockWaker::new(w, t.count),
            );
            Lock {
                address: format!("{addr:#x}"),
                wait_ns: listed.wait_ns,
                waits: listed.waits,
                waiters: listed.waiters,
                waiters_not_listed: listed.waiters_not_listed,
                wakers: listed.wakers,
                wakers_not_listed: listed.wakers_not_listed,
            }
        })
        .collect()
}

/// What the lock detail lists of one contended address, thread or Go lock alike: its top
/// waiters and wakers, each made by `waiter` and `waker`, and what the others did.
struct Contention<ListedWaiter, ListedWaker> {
    wait_ns: u64,
    waits: u64,
    waiters: Vec<ListedWaiter>,
    waiters_not_listed: WaitCount,
    wakers: Vec<ListedWaker>,
    wakers_not_listed: WakeupCount,
}

impl<ListedWaiter, ListedWaker> Contention<ListedWaiter, ListedWaker> {
    fn listed<W: Key, K: Key>(
        l: &LockStats<W, K>,
        waiter: impl Fn(&W, &Tally) -> ListedWaiter,
        waker: impl Fn(&K, &Tally) -> ListedWaker,
    ) -> Self {
        let (waiters, other_waits) = l.waiters.top(LISTED_PER_LOCK);
        let (wakers, other_wakeups) = l.wakers.top(LISTED_PER_LOCK);
        Contention {
            wait_ns: l.wait_ns,
            waits: l.waits,
            waiters: waiters.iter().map(|(w, t)| waiter(w, t)).collect(),
            waiters_not_listed: WaitCount {
                waits: other_waits.count,
                wait_ns: other_waits.ns,
            },
            wakers: wakers.iter().map(|(k, t)| waker(k, t)).collect(),
            wakers_not_listed: WakeupCount {
                count: other_wakeups.count,
            },
        }
    }
}

/// Sites listed per cause.
const LISTED_SITES: usize = 5;

fn wait_sites(sites: &ResolvedSites, total_request_ns: u64) -> BTreeMap<Cause, CauseSites> {
    let count = |(waits, wait_ns): (u64, u64)| WaitCount { waits, wait_ns };
    let mut out = BTreeMap::new();
    for cause in Cause::ALL {
        let resolved = sites.by_cause.get(&cause).map_or(&[][..], Vec::as_slice);
        let without_stack = sites.without_stack.get(&cause).copied();
        if resolved.is_empty() && without_stack.is_none() {
            continue;
        }
        let mut not_listed = sites.not_listed.get(&cause).copied().unwrap_or((0, 0));
        for s in resolved.iter().skip(LISTED_SITES) {
            not_listed.0 += s.count;
            not_listed.1 += s.total_ns;
        }
        let listed = resolved
            .iter()
            .take(LISTED_SITES)
            .map(|s| WaitSite {
                site: sites::short_name(&s.frames),
                frames: s.frames.iter().map(sites::frame_name).collect(),
                truncated: s.truncated,
                total_ns: s.total_ns,
                count: s.count,
                share: share(s.total_ns, total_request_ns),
                woken_by: s
                    .woken_by
                    .iter()
                    .map(|w| WakerSite {
                        site: sites::short_name(&w.frames),
                        frames: w.frames.iter().map(sites::frame_name).collect(),
                        truncated: w.truncated,
                        count: w.count,
                    })
                    .collect(),
            })
            .collect();
        out.insert(
            cause,
            CauseSites {
                sites: listed,
                not_listed: count(not_listed),
                without_stack: count(without_stack.unwrap_or((0, 0))),
            },
        );
    }
    out
}

fn top_go_locks(c: &Collector) -> Vec<GoLock> {
    let engine = c.engine();
    engine
        .go_locks
        .top(LISTED_LOCKS)
        .into_iter()
        .map(|(semaphore, l)| {
            let (kind, address) = engine.go_semaphore_owner(semaphore);
            let listed = Contention::listed(
                l,
                |g, t| GoWaiter {
                    goid: g.0,
                    wait_ns: t.ns,
                    waits: t.count,
                },
                |w, t| GoLockWaker {
                    goid: w.goid,
                    tid: w.tid.0,
                    comm: c.thread_name(w.tid).unwrap_or("?").to_string(),
                    count: t.count,
                },
            );
            GoLock {
                kind,
                address: format!("{address:#x}"),
                semaphore: format!("{semaphore:#x}"),
                wait_ns: listed.wait_ns,
                waits: listed.waits,
                waiters: listed.waiters,
                waiters_not_listed: listed.waiters_not_listed,
                wakers: listed.wakers,
                wakers_not_listed: listed.wakers_not_listed,
            }
        })
        .collect()
}

/// Addresses the lock detail does not list: beyond the top ones, and those folded to keep the
/// collector bounded.
fn not_listed<W: Key, K: Key>(locks: &Locks<W, K>) -> WaitCount {
    let listed: Vec<_> = locks.top(LISTED_LOCKS);
    let (kept_waits, kept_ns) = locks
        .iter()
        .fold((0, 0), |(w, ns), (_, l)| (w + l.waits, ns + l.wait_ns));
    let (listed_waits, listed_ns) = listed
        .iter()
        .fold((0, 0), |(w, ns), (_, l)| (w + l.waits, ns + l.wait_ns));
    WaitCount {
        waits: kept_waits - listed_waits + locks.folded.count,
        wait_ns: kept_ns - listed_ns + locks.folded.ns,
    }
}

fn tls(status: &TlsStatus, stats: &TlsStats) -> Tls {
    let count = stats.durations.len();
    Tls {
        library: status.library.clone(),
        hooked: status.hooked.clone(),
        not_hooked_because: status.reason.clone(),
        handshakes: Handshakes {
            duration_ns: WaitStats::of(&stats.durations, stats.longest),
            by_version: ByVersion {
                tls13: stats.by_version[2],
                tls12: stats.by_version[1],
                unknown: stats.by_version[0],
            },
            resumed: stats.resumed,
            full: stats.full,
            resumption_unknown: count.saturating_sub(stats.resumed + stats.full),
        },
        phases: TlsPhaseTotals {
            cpu: Total {
                total_ns: stats.phases.cpu,
            },
            peer_wait: Total {
                total_ns: stats.phases.peer_wait,
            },
            runqueue: Total {
                total_ns: stats.phases.runqueue,
            },
            other: Total {
                total_ns: stats.phases.other,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::nr;

    use super::*;
    use crate::{
        engine::{
            Engine, Event, EventKind, FdKind, InSyscall, Interrupt, SocketOrigin, SyscallReturn,
            Tid,
        },
        output::{hlog::HlogWriter, jsonl::SlowRequests},
        target::fds::ProcFds,
    };

    /// Above the kernel's PID_MAX_LIMIT (4194304): no such process or thread exists, so the
    /// names read from /proc are the same on every machine.
    const PID: u32 = 4_194_400;
    const T: Tid = Tid(PID + 1);
    const CONN: u32 = 7;

    /// A read or write on the server-side connection `CONN`.
    fn syscall(ts: u64, nr: u32, fd: u32, ret: i64) -> Event {
        let sys = SyscallReturn {
            nr,
            fd,
            ret,
            connection: 0xffff_0000_0007,
            origin: SocketOrigin::TcpServer,
            tls_record: 0,
        };
        Event::new(ts, T, EventKind::Syscall(sys))
    }

    fn block(ts: u64, nr: u32, arg0: u64) -> Event {
        let syscall = Some(InSyscall { nr, arg0 });
        Event::new(
            ts,
            T,
            EventKind::SwitchOut {
                run_delay: None,
                state: 1,
                syscall,
                stack: None,
                cpu_steal: None,
            },
        )
    }

    fn wake(ts: u64, waker: Waker) -> Event {
        Event::new(ts, T, EventKind::Wakeup { waker })
    }

    fn run(ts: u64) -> Event {
        Event::new(
            ts,
            T,
            EventKind::SwitchIn {
                run_delay: None,
                cpu_steal: None,
                woken: None,
            },
        )
    }

    /// Two requests: one waits for a futex a thread releases, one blocks in an untraced
    /// syscall until a timer fires.
    fn synthetic_summary() -> Summary {
        let dir = std::env::temp_dir().join(format!("tracer-summary-{}", std::process::id()));
        let out = Arc::new(files::prepare_output(&dir).unwrap());
        let mut engine = Engine::new(ProcFds::new(std::process::id()));
        engine.set_fd_kind(CONN, FdKind::Connection);
        let hlog = HlogWriter::create(&out, std::time::SystemTime::UNIX_EPOCH);
        let slow = SlowRequests::create(&out, u64::MAX);
        let mut c = Collector::new(
            PID,
            engine,
            hlog,
            slow,
            crate::output::sites::SiteNamer::none(),
        );
        let mut holder = [0; 16];
        holder[..6].copy_from_slice(b"holder");
        let thread = Waker::Thread {
            tid: PID + 2,
            pid: PID,
            comm: holder,
        };
        c.feed([
            syscall(1_000, nr::READ, CONN, 100),
            block(2_000, nr::FUTEX, 0xabc0),
            wake(5_000, thread),
            run(6_000),
            syscall(7_000, nr::WRITE, CONN, 10),
            block(8_000, nr::READ, CONN.into()),
            wake(9_000, Waker::Interrupt(Interrupt::Softirq)),
            run(9_500),
            syscall(10_000, nr::READ, CONN, 100),
            block(11_000, 61, 0), // wait4: `other`
            wake(31_000, Waker::Interrupt(Interrupt::Timer)),
            run(31_000),
            syscall(32_000, nr::WRITE, CONN, 10),
        ]);
        c.stop();
        c.finish();
        c.end_interval();
        let target = Target {
            pid: PID,
            comm: "synthetic".to_string(),
            comm_at_start: None,
            thread: None,
        };
        let programs = [ProgramStat {
            name: "sched_switch".to_string(),
            run_count: 10,
            run_time_ns: 3_620,
        }];
        let tls = TlsStatus {
            reason: Some("turned off (--tls off)".to_string()),
            ..Default::default()
        };
        let frame = |function: &str, line| crate::symbols::Frame {
            function: function.to_string(),
            file: Some("/src/server.c".to_string()),
            line,
            inlined: false,
        };
        let sites = ResolvedSites {
            addresses: 3,
            resolve_ms: 1.5,
            by_cause: BTreeMap::from([(
                Cause::Lock,
                vec![sites::ResolvedSite {
                    frames: vec![
                        frame("__futex_abstimed_wait_common", None),
                        frame("handle_lock", Some(42)),
                        frame("serve", Some(7)),
                    ],
                    truncated: false,
                    total_ns: 1_000,
                    count: 1,
                    woken_by: vec![sites::ResolvedWaker {
                        frames: vec![
                            frame("__futex_wake", None),
                            frame("handle_unlock", Some(50)),
                        ],
                        truncated: false,
                        count: 1,
                    }],
                }],
            )]),
            not_listed: BTreeMap::new(),
            without_stack: BTreeMap::from([(Cause::NetIo, (1, 500))]),
        };
        let end = TraceEnd {
            target: &target,
            stopped_by: StoppedBy::Duration,
            programs: &programs,
            tls: &tls,
            sites: &sites,
            sample_one_in: 1,
        };
        let mut summary = Summary::build(&c, &end);
        drop(c);
        let _ = std::fs::remove_dir_all(&dir);
        summary.duration_s = 2.5; // wall-clock time, not the events'
        summary
    }

    /// The contract: a change to summary.json's shape shows up here (review the snapshot,
    /// then update the README's description of the file).
    #[test]
    fn summary_json_contract() {
        let summary = synthetic_summary();
        assert_eq!(summary.requests.count, 2);
        insta::assert_json_snapshot!(summary);
    }

    /// The two requests took 6 and 23 us, 3 us of it in `lock` (one request) and 20 us in
    /// `other` (the other): a max is the largest a request took, not the top of its
    /// histogram bucket (23039, and 3007 of lock against a lock total of 3000), and no
    /// percentile is above it.
    #[test]
    fn a_max_is_the_largest_value_a_request_had() {
        let summary = synthetic_summary();
        let lat = summary.requests.latency_ns;
        assert_eq!(lat.max, 23_000);
        assert!(lat.p50 <= lat.max && lat.p90 <= lat.max && lat.p99 <= lat.max);
        for (cause, max) in [(Cause::Lock, 3_000), (Cause::Other, 20_000)] {
            let c = &summary.breakdown[&cause];
            assert_eq!(c.per_request_ns.max, max, "{cause:?}");
            assert!(c.per_request_ns.max <= c.total_ns, "{cause:?}");
            assert!(c.per_request_ns.p99 <= c.per_request_ns.max, "{cause:?}");
        }
    }

    /// A wait's max (and a TLS handshake's) is the longest recorded, not the top of its
    /// histogram bucket (23039 for 23000), and no percentile is above it.
    #[test]
    fn a_wait_max_is_the_longest_wait() {
        let mut totals = crate::output::aggregate::Totals::default();
        for ns in [6_000, 23_000] {
            totals.futex.record(ns);
        }
        let futex = WaitStats::of_waits(&totals.futex);
        assert_eq!((futex.count, futex.max), (2, 23_000));
        assert!(
            futex.p50 <= futex.max && futex.p99 <= futex.max,
            "{futex:?}"
        );

        let tls = &mut totals.tls;
        tls.record(&crate::engine::Handshake {
            ctx: crate::engine::ExecCtx::Thread(crate::engine::Tid(1)),
            fd: Some(4),
            start_ns: 0,
            phases: crate::engine::TlsPhases {
                cpu: 20_000,
                peer_wait: 3_000,
                ..Default::default()
            },
            kind: Default::default(),
        });
        let handshakes = WaitStats::of(&tls.durations, tls.longest);
        assert_eq!(handshakes.max, 23_000);
        assert!(handshakes.p99 <= handshakes.max, "{handshakes:?}");
    }

    /// The two requests took 6 and 23 us: their mean is 14500 ns, their whole time (the
    /// causes' totals added up) over their count, not the histogram's 14488 (each latency
    /// taken as the middle of its bucket).
    #[test]
    fn the_mean_latency_is_the_requests_time_over_their_count() {
        let summary = synthetic_summary();
        let time: u64 = summary.breakdown.values().map(|c| c.total_ns).sum();
        assert_eq!(time, 29_000);
        assert_eq!(
            summary.requests.latency_ns.mean,
            time / summary.requests.count
        );
    }

    #[test]
    fn summary_json_reads_back_into_the_same_types() {
        let summary = synthetic_summary();
        let text = serde_json::to_string_pretty(&summary).unwrap();
        assert_eq!(serde_json::from_str::<Summary>(&text).unwrap(), summary);
    }
}
