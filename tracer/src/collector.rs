//! The collector: drains the ring buffer, orders events, feeds the attribution engine and
//! keeps the aggregates, the interval log and the slow-request log current.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{BufWriter, Write as _},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tracer_common::{StretchRequest, LOSS_KINDS};

use crate::{
    engine::{requests::stretch_request, Breakdown, Cause, Engine, Event, EventKind, Tid, CAUSES},
    kernel::{
        names_wakers_only,
        ring::{decode, decode_kept, decode_pair_batch, Decoded, Reorder},
        Gathered, Probes,
    },
    output::{
        self,
        aggregate::{RequestHistograms, Totals},
        files::Outcome,
        hlog::HlogWriter,
        jsonl::SlowRequests,
        sites::{ResolvedSites, SiteNamer},
        summary::CollectorUsage,
    },
    target::{fds::ProcFds, read_comm},
};

/// Records read from the ring per drain while attached (a 20 ms tick): about 10 M/s.
const MAX_RECORDS_PER_DRAIN: usize = 200_000;

/// Records read between two releases of the events older than the reorder window, within a
/// drain: the held events stay a few milliseconds' worth, in the CPU's caches, instead of a
/// whole drain's (about 10,000 events of 112 bytes on a busy thread-per-connection server).
const RECORDS_PER_RELEASE: usize = 1024;

/// Thread names held before the ones no lock detail needs are forgotten.
const MAX_NAMES: usize = 16_384;

/// Events are held this long so records from other CPUs can be put in order.
const REORDER_WINDOW_NS: u64 = 5_000_000;

pub struct Collector {
    engine: Engine<ProcFds>,
    reorder: Reorder,
    totals: Totals,
    /// This interval's requests, for the live table and latency.hlog.
    interval: RequestHistograms,
    interval_breakdown: Breakdown,
    interval_events: u64,
    /// [`Collector::lost`] when this interval began.
    lost_before_interval: u64,
    received: u64,
    malformed: u64,
    lost_seen: u64,
    lost_by_reason: [u64; LOSS_KINDS as usize],
    lost_by_cpu: Vec<u64>,
    /// Runs the kernel skipped, per program (see `Probes::skipped_runs`), read once before
    /// detaching: they are reported, not used while tracing.
    skipped_by_program: Vec<(String, u64)>,
    /// Stacks the kernel's stack maps had no room for, read once before detaching.
    stacks_not_stored: u64,
    /// A loss was seen while the ring still held a backlog older than it.
    loss_in_backlog: bool,
    /// The newest event read when the loss counters were last read: a loss they count later
    /// happened after it.
    losses_checked_at: u64,
    hlog: HlogWriter,
    slow: SlowRequests,
    /// Names the slow requests' wait sites while tracing, and every site at the end.
    site_names: SiteNamer,
    started: Instant,
    stopped: Option<Instant>,
    /// The process's CPU seconds at the start and at the stop.
    cpu_s_at_start: f64,
    cpu_s_at_stop: Option<f64>,
    interval_started: Instant,
    boot_to_unix_ns: i128,
    /// Thread names, for the lock detail.
    comms: HashMap<Tid, String>,
    pid: u32,
    /// `TRACER_EVENT_DUMP=FILE`: every event, in the order the engine sees it (for debugging
    /// the attribution; it holds no payload, like the events themselves).
    dump: Option<BufWriter<File>>,
}

impl Collector {
    pub fn new(
        pid: u32,
        engine: Engine<ProcFds>,
        hlog: HlogWriter,
        slow: SlowRequests,
        site_names: SiteNamer,
    ) -> Self {
        let now = Instant::now();
        Collector {
            engine,
            reorder: Reorder::new(REORDER_WINDOW_NS),
            totals: Totals::default(),
            interval: RequestHistograms::default(),
            interval_breakdown: [0; CAUSES],
            interval_events: 0,
            lost_before_interval: 0,
            received: 0,
            malformed: 0,
            lost_seen: 0,
            lost_by_reason: [0; LOSS_KINDS as usize],
            lost_by_cpu: Vec::new(),
            skipped_by_program: Vec::new(),
            stacks_not_stored: 0,
            loss_in_backlog: false,
            losses_checked_at: 0,
            hlog,
            slow,
            site_names,
            started: now,
            stopped: None,
            cpu_s_at_start: CollectorUsage::now().cpu_s,
            cpu_s_at_stop: None,
            interval_started: now,
            boot_to_unix_ns: boot_to_unix_ns(),
            comms: HashMap::new(),
            pid,
            dump: std::env::var_os("TRACER_EVENT_DUMP")
                .and_then(|path| File::create(path).ok())
                .map(BufWriter::new),
        }
    }

    /// Read everything in the ring buffer, and process what the reorder window releases.
    /// Returns how many records were read.
    pub fn drain(
        &mut self,
        ring: &mut RingBuf<MapData>,
        probes: Option<&Probes>,
        all: bool,
    ) -> usize {
        // While the programs are attached, the ring can fill as fast as it is read: a bounded
        // batch lets the run loop tick (live rows, signals, the deadline) on a saturated
        // target; whatever the collector cannot keep up with is lost and counted in the
        // kernel. Once detached, the ring holds a finite rest, read to the end.
        let budget = if probes.is_some() {
            MAX_RECORDS_PER_DRAIN
        } else {
            usize::MAX
        };
        let mut read = 0;
        while read < budget {
            let Some(item) = ring.next() else { break };
            read += 1;
            self.received += 1;
            self.interval_events += 1;
            // Straight into the reorder window: an event is moved once less.
            match decode(&item, &mut self.reorder) {
                Some(Decoded::Events) => {}
                Some(Decoded::StretchRequests(batch)) => {
                    self.collect_stretch_requests(batch.requests())
                }
                None => self.malformed += 1,
            }
            if read.is_multiple_of(RECORDS_PER_RELEASE) {
                self.release(false);
            }
        }
        match probes {
            Some(probes) => self.check_losses(probes, read == budget),
            None if self.loss_in_backlog => {
                // Detached: this drain read the rest of the backlog.
                self.lost_since_last_check();
                self.loss_in_backlog = false;
            }
            None => {}
        }
        self.release(all);
        if self.comms.len() > MAX_NAMES {
            let _ = self.forget_names_of_non_waiters();
        }
        self.collect();
        read
    }

    /// Process synthetic events as if drained from the ring (for tests of the outputs).
    #[cfg(test)]
    pub fn feed(&mut self, events: impl IntoIterator<Item = Event>) {
        for event in events {
            self.received += 1;
            self.interval_events += 1;
            self.reorder.push(event);
        }
        self.release(true);
        self.collect();
    }

    /// What the CPUs held and had not sent when the programs were detached, read from their
    /// maps: the socket read/write pairs they had gathered, the requests timed in the kernel
    /// and not yet sent, and those still kept there (replayed as a handover).
    pub fn receive_gathered(&mut self, gathered: &Gathered) {
        for batch in &gathered.pairs {
            self.received += 1;
            self.interval_events += 1;
            decode_pair_batch(batch, &mut self.reorder);
        }
        for batch in &gathered.stretch_done {
            self.received += 1;
            self.interval_events += 1;
            self.collect_stretch_requests(batch.requests());
        }
        decode_kept(&gathered.stretch_kept, &mut self.reorder);
    }

    /// Hand the engine what the reorder window releases (everything, if `all`).
    fn release(&mut self, all: bool) {
        let (engine, dump, comms) = (&mut self.engine, &mut self.dump, &mut self.comms);
        self.reorder.release(all, |e| {
            if let Some(dump) = dump {
                let _ = writeln!(dump, "{e:?}");
            }
            if let EventKind::ThreadExit { comm } = &e.kind {
                comms.insert(e.tid, comm.clone());
            }
            engine.handle(e)
        });
    }

    /// Read the kernel's loss counters; a new loss marks the requests open now incomplete.
    /// The kernel dropped its records after everything still in the ring, so while a backlog
    /// remains (`backlog`: this drain stopped at its budget), every drain marks the requests
    /// open then too, until one empties the ring.
    fn check_losses(&mut self, probes: &Probes, backlog: bool) {
        let (by_reason, by_cpu) = probes.losses();
        self.note_losses(by_reason, by_cpu, backlog);
    }

    /// The loss counters read now (see [`Collector::check_losses`]).
    fn note_losses(
        &mut self,
        by_reason: [u64; LOSS_KINDS as usize],
        by_cpu: Vec<u64>,
        backlog: bool,
    ) {
        let lost = by_reason.iter().sum::<u64>();
        if lost > self.lost_seen || self.loss_in_backlog {
            self.lost_since_last_check();
            self.lost_seen = lost;
            self.loss_in_backlog = backlog;
        }
        self.losses_checked_at = self.reorder.newest();
        self.lost_by_reason = by_reason;
        self.lost_by_cpu = by_cpu;
    }

    /// Events were lost since the counters were last read: when is not known, so every
    /// request open at any time from the newest event read then to the newest read now is
    /// marked, not only those still open now (a request that was open during the loss and
    /// has been answered since, in the events this drain read, is as wrong).
    fn lost_since_last_check(&mut self) {
        let newest = self.reorder.newest();
        self.engine.lost_between(self.losses_checked_at, newest);
        self.reorder.push(Event::lost(newest));
    }

    /// The engine's wait sites, each read from the kernel's stack map and named.
    pub fn resolve_sites(&mut self) -> ResolvedSites {
        self.site_names.resolve(&self.engine.wait_sites)
    }

    /// Take finished requests and wait samples from the engine into the aggregates, and
    /// write the slow ones.
    fn collect(&mut self) {
        for r in self.engine.drain_requests() {
            self.totals.record_request(&r);
            self.interval.record(&r);
            for (sum, ns) in self.interval_breakdown.iter_mut().zip(r.breakdown) {
                *sum += ns;
            }
            self.slow
                .offer(&r, self.boot_to_unix_ns, &mut self.site_names);
        }
        self.slow.write_out();
        for w in self.engine.drain_waits() {
            self.totals.record_wait(w);
        }
        for h in self.engine.take_handshakes() {
            self.totals.tls.record(&h);
        }
    }

    /// Requests the kernel side timed, straight into the aggregates as they are decoded (in
    /// the cache): each is its latency on its CPU, so only a slow one is built into a
    /// [`Request`], for its line. Building each and collecting it later cost a third of the
    /// collector's time (perf, on nginx at 110k requests/s).
    fn collect_stretch_requests(&mut self, requests: &[StretchRequest]) {
        self.engine.count_stretch_requests(requests);
        for r in requests.iter().filter(|r| r.completed()) {
            self.totals.record_complete(r.latency_ns);
            self.interval
                .record_kernel_timed(r.latency_ns, r.waiting_for_cpu_ns());
            self.interval_breakdown[Cause::OnCpu.index()] += r.on_cpu_ns();
            self.interval_breakdown[Cause::Runqueue.index()] += r.waiting_for_cpu_ns();
            if self.slow.takes(r.latency_ns) {
                let request = stretch_request(r);
                self.slow
                    .offer(&request, self.boot_to_unix_ns, &mut self.site_names);
            }
        }
    }

    /// Close the current interval: write it to latency.hlog and start the next one. Once
    /// stopped, the interval ends at the stop, as its live row does (the final drain and
    /// the detach after it trace nothing new).
    pub fn end_interval(&mut self) {
        let offset = self.interval_started.duration_since(self.started);
        let length = self.interval_length();
        self.interval.settle();
        self.hlog.write_interval(&self.interval, offset, length);
        self.totals.requests.add(&self.interval);
        self.totals.add_breakdown(&self.interval_breakdown);
        self.name_threads();
        self.interval.reset();
        self.interval_breakdown = [0; CAUSES];
        self.interval_events = 0;
        self.lost_before_interval = self.lost();
        self.interval_started = Instant::now();
    }

    /// End of trace: everything still held is processed; answered requests are complete.
    /// They join the current interval, which the caller then closes with
    /// [`Collector::end_interval`].
    pub fn finish(&mut self) {
        self.release(true);
        if let Some(dump) = &mut self.dump {
            if let Err(e) = dump.flush() {
                eprintln!("tracer: TRACER_EVENT_DUMP: {e}");
            }
        }
        self.engine.finish_all();
        self.collect();
    }

    /// How long the current interval has run (until the stop, once stopped).
    pub fn interval_length(&self) -> Duration {
        self.stopped
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(self.interval_started)
    }

    pub fn lost(&self) -> u64 {
        self.lost_by_reason.iter().sum()
    }

    /// Events lost in the kernel: per reason, and per CPU.
    pub fn losses(&self) -> ([u64; LOSS_KINDS as usize], &[u64]) {
        (self.lost_by_reason, &self.lost_by_cpu)
    }

    pub fn engine(&self) -> &Engine<ProcFds> {
        &self.engine
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// This interval's requests, and the sum of their breakdowns.
    pub fn interval(&self) -> (&RequestHistograms, &Breakdown) {
        (&self.interval, &self.interval_breakdown)
    }

    /// Records read from the ring this interval.
    pub fn interval_events(&self) -> u64 {
        self.interval_events
    }

    /// Events the kernel counted lost this interval (as far as its counters were read).
    pub fn interval_lost(&self) -> u64 {
        self.lost().saturating_sub(self.lost_before_interval)
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Lines written to requests.jsonl.
    pub fn slow_logged(&self) -> u64 {
        self.slow.written
    }

    /// A thread's name, for the lock detail (kept for the listed waiters and the main
    /// thread).
    pub fn thread_name(&self, tid: Tid) -> Option<&str> {
        self.comms.get(&tid).map(String::as_str)
    }

    /// Program runs the kernel skipped, per program, as read before detaching.
    pub fn skipped_by_program(&self) -> &[(String, u64)] {
        &self.skipped_by_program
    }

    /// Stacks the kernel's stack maps had no room for, as read before detaching.
    pub fn stacks_not_stored(&self) -> u64 {
        self.stacks_not_stored
    }

    /// Read the kernel's skipped-run and stacks-not-stored counts (once, before detaching).
    pub fn read_counts_before_detach(&mut self, probes: &Probes) {
        self.skipped_by_program = probes.skipped_runs();
        self.stacks_not_stored = probes.stacks_not_stored();
    }

    /// Commit latency.hlog and requests.jsonl; returns what became of each.
    pub fn commit_files(&mut self) -> [(&'static str, Outcome); 2] {
        [
            (output::HLOG, self.hlog.commit()),
            (output::REQUESTS, self.slow.commit()),
        ]
    }

    /// Skipped runs of the programs that build the timeline, and of those that only name
    /// wakers (a skipped `sched_waking` or interrupt-nesting run costs only a waker's name,
    /// reported as unknown or as the enclosing interrupt).
    ///
    /// Neither makes requests incomplete: the kernel counts a program's skipped runs for
    /// every task on the machine, before the program could tell whether the event concerned
    /// the target, and most concern other processes.
    pub fn skipped_runs(&self) -> (u64, u64) {
        let (wakers_only, timeline): (Vec<_>, Vec<_>) = self
            .skipped_by_program
            .iter()
            .partition(|(name, _)| names_wakers_only(name));
        let sum = |v: Vec<&(String, u64)>| v.iter().map(|(_, n)| n).sum();
        (sum(timeline), sum(wakers_only))
    }

    /// Time traced: from attach to the stop (or to now while running).
    pub fn elapsed(&self) -> Duration {
        self.stopped.unwrap_or_else(Instant::now) - self.started
    }

    pub fn stop(&mut self) {
        self.stopped = Some(Instant::now());
        self.cpu_s_at_stop = Some(CollectorUsage::now().cpu_s);
    }

    /// This process's CPU seconds from the collector's start (the programs attached) to its
    /// stop, or until now while it runs.
    pub fn tracing_cpu_s(&self) -> f64 {
        let now = self
            .cpu_s_at_stop
            .unwrap_or_else(|| CollectorUsage::now().cpu_s);
        (now - self.cpu_s_at_start).max(0.0)
    }

    /// Remember the names of the waiters the lock detail lists (while they are alive: an
    /// exited thread's name comes with its exit), and forget the others.
    fn name_threads(&mut self) {
        for tid in self.forget_names_of_non_waiters() {
            self.comms
                .entry(tid)
                .or_insert_with(|| read_comm(tid.0).unwrap_or_else(|| "?".to_string()));
        }
    }

    /// Names are kept only for the waiters the lock detail lists (and the threads of the Go
    /// lock detail's wakers), and for the target's main
    /// thread (its name at exit names the target after an `exec`): a target that creates
    /// threads by the hundred thousand must not grow the collector. Returns the listed
    /// waiters.
    fn forget_names_of_non_waiters(&mut self) -> HashSet<Tid> {
        let go_wakers = self.engine.go_locks.listed_wakers().map(|w| w.tid);
        let listed: HashSet<Tid> = self
            .engine
            .locks
            .listed_waiters()
            .chain(go_wakers)
            .collect();
        let main_thread = Tid(self.pid);
        self.comms
            .retain(|tid, _| *tid == main_thread || listed.contains(tid));
        listed
    }
}

/// CLOCK_REALTIME - CLOCK_MONOTONIC: turns `bpf_ktime_get_ns()` stamps into Unix time.
fn boot_to_unix_ns() -> i128 {
    use nix::time::{clock_gettime, ClockId};
    let now = |clock| {
        let ts = clock_gettime(clock).expect("the realtime and monotonic clocks exist");
        ts.tv_sec() as i128 * 1_000_000_000 + ts.tv_nsec() as i128
    };
    now(ClockId::CLOCK_REALTIME) - now(ClockId::CLOCK_MONOTONIC)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tracer_common::nr;

    use super::*;
    use crate::{
        engine::{FdKind, InSyscall, SocketOrigin, SyscallReturn, Woken},
        output::files,
    };

    /// Above the kernel's PID_MAX_LIMIT: no such process or thread exists.
    const PID: u32 = 4_194_401;
    const T: Tid = Tid(PID + 1);
    /// Another thread of the target, busy with no request.
    const OTHER: Tid = Tid(PID + 2);
    const CONN: u32 = 7;
    const MS: u64 = 1_000_000;

    fn io(ts: u64, nr: u32, ret: i64) -> Event {
        let sys = SyscallReturn {
            nr,
            fd: CONN,
            ret,
            connection: 0xffff_0000_0007,
            origin: SocketOrigin::TcpServer,
            tls_record: 0,
        };
        Event::new(ts, T, EventKind::Syscall(sys))
    }

    fn blocked_reading(ts: u64) -> Event {
        Event::new(
            ts,
            T,
            EventKind::SwitchOut {
                run_delay: None,
                state: 1,
                syscall: Some(InSyscall {
                    nr: nr::READ,
                    arg0: CONN.into(),
                }),
                stack: None,
                cpu_steal: None,
            },
        )
    }

    fn runs(ts: u64, tid: Tid, woken_at: u64) -> Event {
        let woken = (woken_at != 0).then_some(Woken {
            at: woken_at,
            waker: crate::engine::Waker::Unknown,
            unlocker: None,
        });
        Event::new(
            ts,
            tid,
            EventKind::SwitchIn {
                run_delay: None,
                cpu_steal: None,
                woken,
            },
        )
    }

    /// One drain as [`Collector::drain`] does it: the records go into the reorder window,
    /// which releases what is old enough on the way (every `RECORDS_PER_RELEASE` records),
    /// then the loss counters are read (`lost` in all), and the rest is released and the
    /// finished requests collected.
    fn drain(c: &mut Collector, events: Vec<Event>, lost: u64) {
        for event in events {
            c.reorder.push(event);
        }
        c.release(false);
        c.note_losses([lost, 0, 0], vec![lost], false);
        c.release(false);
        c.collect();
    }

    /// A collector over `engine` writing its files to a fresh directory named for `test`
    /// (returned for the test to read and remove).
    fn collector_for(test: &str, engine: Engine<ProcFds>) -> (Collector, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("tracer-{test}-{}", std::process::id()));
        let out = Arc::new(files::prepare_output(&dir).unwrap());
        let hlog = HlogWriter::create(&out, std::time::SystemTime::UNIX_EPOCH);
        let slow = SlowRequests::create(&out, u64::MAX);
        let c = Collector::new(PID, engine, hlog, slow, SiteNamer::none());
        (c, dir)
    }

    /// The loss counters say how many records were lost, not when: a request open at any
    /// time since they were last read may have lost its records, not only one still open
    /// at the newest record read. Here the request read at 2 ms (its thread's block in it
    /// lost) is answered and finished in the same drain that finds the loss; it used to be
    /// counted complete, while the one finished before the previous read of the counters
    /// is.
    #[test]
    fn a_loss_marks_every_request_open_since_the_counters_were_last_read() {
        let mut engine = Engine::new(ProcFds::new(PID));
        engine.set_fd_kind(CONN, FdKind::Connection);
        let (mut c, dir) = collector_for("collector-losses", engine);
        // Before the counters' first read: a request from 0.2 to 0.3 ms, nothing lost.
        drain(
            &mut c,
            vec![
                runs(0, T, 0),
                io(MS / 5, nr::READ, 50),
                io(3 * MS / 10, nr::WRITE, 10),
                blocked_reading(4 * MS / 10),
                runs(MS, OTHER, 0),
            ],
            0,
        );
        // The next drain: a request from 2 to 3 ms, then records to 30 ms; the counters
        // then say a record was lost.
        drain(
            &mut c,
            vec![
                runs(2 * MS, T, 2 * MS),
                io(2 * MS, nr::READ, 50),
                io(3 * MS, nr::WRITE, 10),
                blocked_reading(4 * MS),
                runs(30 * MS, OTHER, 0),
            ],
            1,
        );
        c.finish();
        assert_eq!(c.interval().0.latency.len(), 2);
        assert_eq!(
            c.totals().incomplete,
            1,
            "the request from 2 to 3 ms was open after the counters' first read"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The last interval ends at the stop: the final drain, naming the sites and detaching
    /// (seconds for many uprobes) come after it and trace nothing. Its `latency.hlog`
    /// length is the live row's (`interval_length`), so the intervals end at `duration_s`;
    /// it used to run on to when the file was written (300 ms here, for a trace of none).
    #[test]
    fn the_last_hlog_interval_ends_at_the_stop() {
        let (mut c, dir) = collector_for("collector-hlog", Engine::new(ProcFds::new(PID)));
        c.stop();
        std::thread::sleep(Duration::from_millis(300));
        c.finish();
        let length = c.interval_length().as_secs_f64();
        c.end_interval();
        let hlog = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().contains(files::HLOG))
            .unwrap();
        let text = std::fs::read_to_string(hlog).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("Tag=request,"))
            .unwrap_or_else(|| panic!("{text}"));
        let fields: Vec<&str> = line.split(',').collect();
        let (offset, logged): (f64, f64) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
        assert!(length < 0.1, "{length}");
        assert_eq!(offset, 0.0, "{line}");
        assert!(
            (logged - length).abs() < 0.002,
            "{line}: {length} s to the stop"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The live row's `lost` is its interval's, beside its interval's events (it was the
    /// run's total).
    #[test]
    fn an_intervals_losses_are_its_own() {
        let (mut c, dir) = collector_for("collector-lost", Engine::new(ProcFds::new(PID)));
        c.note_losses([5, 0, 0], vec![5], false);
        assert_eq!(c.interval_lost(), 5);
        c.end_interval();
        assert_eq!(c.interval_lost(), 0);
        c.note_losses([5, 2, 0], vec![7], false);
        assert_eq!((c.interval_lost(), c.lost()), (2, 7));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
