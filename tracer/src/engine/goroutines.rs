//! Goroutines, from Go's scheduler (uprobes on `runtime.gopark`, `ready`, `execute` and
//! `goexit1`). A goroutine's time is the time of the thread running it while it runs (on a
//! CPU, in the kernel's run queue, blocked in a syscall: that thread's own timeline), its
//! park's cause while parked (Go's wait reason: a mutex, a channel, the netpoller, a sleep,
//! the GC), and `go_runqueue` while runnable, waiting for Go's scheduler. Requests read and
//! answered by a goroutine are timed on it, whichever threads it hops across.
//!
//! A goroutine that stops running on a thread without parking (preempted, `Gosched`) is
//! runnable from the moment another goroutine runs on that thread, until it runs again.
//! Otherwise (work stealing while its old thread spins) it is seen leaving only when it runs
//! again, and its old thread's time until then counts as its own. One readied before it
//! runs again was not runnable: the GC had stopped it to scan its stack (`suspendG`,
//! `preemptPark`, then `resumeG` readies it), and its wait until the `ready` is `gc`.
//!
//! A thread that sleeps in a futex does so in the runtime, never for a goroutine's wait (a
//! goroutine parks): either its goroutine left it (its syscall lost the P and no P was
//! free, and the idle thread sleeps in `stopm`), or the goroutine is still on it, waiting
//! for a contended runtime lock (a channel's, the scheduler's: `lock2` sleeps in a futex,
//! runtime/lock_futex.go). Which one is known only later: if the thread next runs a
//! goroutine (`execute`), or the goroutine runs elsewhere, the goroutine left at the
//! sleep and was runnable from then; if the thread next does the goroutine's socket I/O,
//! or the goroutine's own scheduler events come from it, the goroutine stayed, and the
//! futex wait was its own (`lock`). A goroutine woken by
//! the netpoller is not seen becoming runnable (`netpollready` bypasses `ready`): its whole
//! wait until it runs again is its park's cause (`IO wait`: `net_io`).
//!
//! While the world is stopped (`stopTheWorldWithSema` to `startTheWorldWithSema`: the GC's
//! stop-the-world phases, most often), a runnable goroutine waits for the GC, not for the
//! scheduler: `gc`, not `go_runqueue`. So does the goroutine that stops it (`gcStart`, from
//! its allocation): `stopTheWorldWithSema` runs on its thread, which sleeps in a futex
//! (`notetsleep(&sched.stopnote)`) until the other Ps have stopped; the goroutine cannot
//! leave the thread meanwhile, and that sleep is `gc`, not a runtime lock's.
//!
//! A park for a semaphore (`sync.Mutex`, `RWMutex`, `WaitGroup`) is a wait on the address
//! `runtime.semacquire1` was entered with just before; its waiter goroutine, the goroutine
//! that readied it and how long it waited go to [`super::GoLocks`].

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::{
    cause::{go_wait_cause, semaphore_wait, Breakdown, Cause, SemaphoreOwner},
    context::{ExecCtx, GoroutineId, Tid},
    event::GoSched,
    locks::{GoLocks, GoWaker},
    requests::{RequestOn, WaitingRequests},
    sites::StackRef,
    timeline::{GoroutineTimeline, Snapshot},
    Engine, FdResolver,
};

/// Goroutines kept at most: beyond, those parked with no open request are forgotten (an exit
/// lost with a ring-buffer overrun must not leak them).
const MAX_GOROUTINES: usize = 1 << 18;

/// A goroutine seen by the scheduler probes.
pub(super) struct Goroutine {
    pub timeline: GoroutineTimeline,
    /// Its requests still waiting for their response.
    pub open_requests: WaitingRequests,
    /// Go's wait reason of its current park.
    parked_for: Option<u8>,
    /// Its park began before events were lost: its end may be among them, so the next park
    /// seen is a new one, not the park probe firing again.
    parked_before_loss: bool,
    /// The semaphore `runtime.semacquire1` was last entered with (a park for a semaphore
    /// wait reason that follows waits on it).
    semaphore: Option<Semaphore>,
    /// The semaphore its current park waits on.
    waits_on: Option<u64>,
    /// Where in its code its current park began.
    parked_at: Option<StackRef>,
    /// The semaphore it released last (`runtime.semrelease1`), and where in its code.
    released: Option<(u64, Option<StackRef>)>,
    /// It moves an HTTP/2 connection's frames for every stream (net/http's `serve` or
    /// `readFrames`): its socket I/O delimits no request.
    serves_http2: bool,
    /// It left its thread without a park (runnable, as far as is known): when, and what it
    /// had accrued then. A `ready` before it runs again tells the GC had suspended it.
    left_unparked: Option<(u64, Breakdown)>,
}

impl Goroutine {
    fn new() -> Self {
        Goroutine {
            timeline: GoroutineTimeline::unseen(),
            open_requests: WaitingRequests::default(),
            parked_for: None,
            parked_before_loss: false,
            semaphore: None,
            waits_on: None,
            parked_at: None,
            released: None,
            serves_http2: false,
            left_unparked: None,
        }
    }
}

/// A goroutine's park, as its probe reported it.
#[derive(Clone, Copy)]
struct Park {
    reason: u8,
    /// A wait for an HTTP/2 body from the peer (see [`GoSched::Park`]).
    request_body: bool,
    stack: Option<StackRef>,
}

/// A semaphore a goroutine takes (`runtime.semacquire1`).
#[derive(Clone, Copy)]
struct Semaphore {
    address: u64,
    /// One of the GC's own (taken from the GC's code): a wait on it is `gc`, and it is no
    /// lock of the target's.
    for_gc: bool,
}

/// Whether the world is stopped, since when, its last stop, and the goroutines made to wait
/// for it to start again.
#[derive(Default)]
struct World {
    /// `Some(ts)`: stopped since `ts`.
    stopped_since: Option<u64>,
    /// The thread that stops it (`stopTheWorldWithSema` runs there), until it starts again.
    stopper: Option<Tid>,
    /// The last stop that ended: when it began and ended.
    last_stop: Option<(u64, u64)>,
    waiting: Vec<u64>,
}

impl World {
    /// `goid` (`g`) is runnable from `ts`: it waits for Go's scheduler, or for the world to
    /// start again. `ts` may be past: a goroutine found, at its next `execute`, to have left
    /// its thread when the thread slept (`left_at_sleep`), the usual case of one preempted
    /// for a stop (its thread then sleeps in `stopm` until the world starts); the part of
    /// its wait inside the last stop, or inside the current one, is the GC's.
    fn runnable(&mut self, ts: u64, goid: u64, g: &mut Goroutine) {
        self.wait_pieces(ts, |at, cause| g.timeline.park(at, cause));
        if self.stopped_since.is_some() {
            self.waiting.push(goid);
        }
    }

    /// The pieces of a wait for Go's scheduler from `ts`, as [`World::runnable`] counts it:
    /// each piece's start and cause, in time order.
    fn wait_pieces(&self, ts: u64, mut piece: impl FnMut(u64, Cause)) {
        piece(ts, Cause::GoRunqueue);
        if let Some((began, ended)) = self.last_stop.filter(|&(_, ended)| ended > ts) {
            piece(began.max(ts), Cause::Gc);
            piece(ended, Cause::GoRunqueue);
        }
        if let Some(since) = self.stopped_since {
            piece(since.max(ts), Cause::Gc);
        }
    }

    /// What a wait for Go's scheduler from `from` had accrued by `to`, by cause.
    fn waited(&self, from: u64, to: u64) -> Breakdown {
        let mut wait = GoroutineTimeline::unseen();
        self.wait_pieces(from, |at, cause| wait.park(at.clamp(from, to), cause));
        wait.snapshot(to.max(from), None).at
    }
}

/// What a Go wait reason means for the tracer.
#[derive(Clone, Copy)]
struct ReasonMeaning {
    cause: Cause,
    /// A wait on a semaphore (`semacquire1` parks with it).
    on_semaphore: bool,
}

impl ReasonMeaning {
    fn of(name: &str) -> Self {
        ReasonMeaning {
            cause: go_wait_cause(name),
            on_semaphore: semaphore_wait(name).is_some(),
        }
    }
}

/// The target's goroutines, by goid, and which one each thread runs.
#[derive(Default)]
pub(super) struct Goroutines {
    by_goid: HashMap<u64, Goroutine>,
    running: HashMap<Tid, u64>,
    /// Threads that slept in a futex with a goroutine on them, not yet known to have left
    /// it or kept it (see the module's doc).
    slept: HashMap<Tid, ThreadSleep>,
    /// Go's wait-reason strings, by `waitReason` value (from the target's executable).
    wait_reasons: Vec<String>,
    /// What each of them means, worked out once (a park is looked up by its value).
    reason_meanings: Vec<ReasonMeaning>,
    /// Time parked, by Go's wait reason.
    parked_ns: HashMap<u8, u64>,
    /// Any scheduler event was seen: requests are timed on goroutines.
    seen: bool,
    /// The threads seen running goroutines (Go's scheduler threads, not a cgo or C
    /// library thread of the target's).
    scheduler_threads: HashSet<Tid>,
    /// The scheduler threads that have not run an `execute` since events were lost: the
    /// goroutine that reads a request there is not known, so the request is timed on its
    /// thread, and marked incomplete.
    unknown_since_loss: HashSet<Tid>,
    world: World,
    /// Go's wait reason of the waits on each semaphore address (the first seen).
    semaphore_reasons: HashMap<u64, u8>,
    /// Goroutines forgotten to stay within [`MAX_GOROUTINES`].
    pub forgotten: u64,
    /// Where the runtime functions that take the GC's own semaphores are in the target's
    /// memory (`runtime.gcStart`, `gcMarkDone`, `stopTheWorld`, `stopTheWorldGC`).
    gc_callers: Vec<std::ops::Range<u64>>,
}

/// A thread's futex sleep with a goroutine on it: when, the thread's breakdown then, and the
/// goroutine.
struct ThreadSleep {
    goid: u64,
    ts: u64,
    thread_at: Option<Snapshot>,
    /// The thread's waits that ended since (the sleep's own, first): the goroutine's if it
    /// kept the thread, noted as its wait sites then; nobody's if it left at the sleep.
    waits: Vec<ThreadWait>,
}

/// A wait of a thread that slept with a goroutine, not yet known to be the goroutine's: its
/// cause, how long it lasted until `ts`, and where the thread blocked.
struct ThreadWait {
    ts: u64,
    cause: Cause,
    lasted: u64,
    site: Option<StackRef>,
}

impl Goroutines {
    /// The goroutine thread `tid` runs, if any.
    pub fn running_on(&self, tid: Tid) -> Option<u64> {
        self.running.get(&tid).copied()
    }

    pub fn get_mut(&mut self, goid: u64) -> Option<&mut Goroutine> {
        self.by_goid.get_mut(&goid)
    }

    /// Goroutine `goid`'s cumulative breakdown at `ts`.
    pub fn snapshot(
        &self,
        goid: u64,
        ts: u64,
        thread_now: impl Fn(Tid) -> Option<Snapshot>,
    ) -> Option<Snapshot> {
        let g = self.by_goid.get(&goid)?;
        let now = g.timeline.thread().and_then(thread_now);
        Some(g.timeline.snapshot(ts, now))
    }

    pub fn seen(&self) -> bool {
        self.seen
    }

    /// Time parked by Go's wait-reason string (`waitReason N` for one the target's table
    /// does not name).
    pub fn parked_by_reason(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.parked_ns
            .iter()
            .map(|(reason, ns)| (self.reason_name(*reason), *ns))
    }

    fn reason_name(&self, reason: u8) -> String {
        self.wait_reasons
            .get(reason as usize)
            .filter(|name| !name.is_empty())
            .cloned()
            .unwrap_or_else(|| format!("waitReason {reason}"))
    }

    fn meaning_of(&self, reason: u8) -> ReasonMeaning {
        self.reason_meanings
            .get(reason as usize)
            .copied()
            .unwrap_or_else(|| ReasonMeaning::of(&self.reason_name(reason)))
    }

    /// What thread `tid`'s block for `cause` is: a futex sleep of the thread that stops
    /// the world, while it does, waits for the other Ps to stop (the GC's), not for a lock.
    pub fn block_cause(&self, tid: Tid, cause: Cause) -> Cause {
        if cause == Cause::Lock && self.world.stopper == Some(tid) {
            Cause::Gc
        } else {
            cause
        }
    }

    pub fn forget_thread(&mut self, tid: Tid) {
        self.running.remove(&tid);
        self.slept.remove(&tid);
        self.scheduler_threads.remove(&tid);
        self.unknown_since_loss.remove(&tid);
    }

    /// Whether `tid` is a scheduler thread whose goroutine has not been known since events
    /// were lost.
    pub fn unknown_since_loss(&self, tid: Tid) -> bool {
        self.unknown_since_loss.contains(&tid)
    }

    /// Thread `tid` did what only its goroutine does (its socket I/O): the goroutine it ran
    /// before a futex sleep is still the one on it. Returns that sleep.
    fn kept_by_thread(&mut self, tid: Tid) -> Option<ThreadSleep> {
        self.slept.remove(&tid)
    }

    /// `goid`'s own scheduler event came from `tid`: if `tid` slept with it, it kept it.
    /// Returns that sleep.
    fn seen_on(&mut self, tid: Tid, goid: u64) -> Option<ThreadSleep> {
        if self.slept.get(&tid).is_some_and(|sleep| sleep.goid == goid) {
            return self.slept.remove(&tid);
        }
        None
    }

    /// The sleep of thread `tid` not yet settled, while the goroutine it slept with is still
    /// taken to be on it: the waits that end on the thread meanwhile wait with it.
    fn unsettled_sleep(&mut self, tid: Tid) -> Option<&mut ThreadSleep> {
        let running = self.running.get(&tid).copied();
        self.slept
            .get_mut(&tid)
            .filter(|sleep| Some(sleep.goid) == running)
    }

    /// The goroutine thread `tid` slept with left it at the sleep: it was runnable from
    /// then, and the thread's time since is not its own. Returns, when its history since
    /// the sleep was so rewritten, the goroutine, the sleep's time and what it had accrued
    /// then.
    fn left_at_sleep(&mut self, tid: Tid) -> Option<(u64, u64, Breakdown)> {
        let sleep = self.slept.remove(&tid)?;
        if self.running.get(&tid) != Some(&sleep.goid) {
            return None;
        }
        self.running.remove(&tid);
        let g = self.by_goid.get_mut(&sleep.goid)?;
        if g.timeline.thread() != Some(tid) {
            return None;
        }
        g.timeline.leave_thread(sleep.thread_at);
        let at_sleep = g.timeline.accrued();
        g.left_unparked = Some((sleep.ts, at_sleep));
        self.world.runnable(sleep.ts, sleep.goid, g);
        Some((sleep.goid, sleep.ts, at_sleep))
    }

    /// The thread that slept with `goid` on it (a goroutine is on one thread at a time:
    /// its execute elsewhere settles the sleep first).
    fn slept_with(&self, goid: u64) -> Option<Tid> {
        self.slept
            .iter()
            .find(|(_, sleep)| sleep.goid == goid)
            .map(|(tid, _)| *tid)
    }

    /// Events were lost: which goroutine each thread runs is no longer known, nor where the
    /// goroutines on a thread stand (their requests are marked incomplete), nor which
    /// semaphore a goroutine entered last. Returns the sleeps not settled, left as the
    /// goroutines' own.
    fn lost(&mut self) -> Vec<ThreadSleep> {
        self.running.clear();
        let unsettled = self.slept.drain().map(|(_, sleep)| sleep).collect();
        self.unknown_since_loss.clone_from(&self.scheduler_threads);
        for g in self.by_goid.values_mut() {
            g.timeline.leave_thread(None);
            g.semaphore = None;
            g.left_unparked = None;
            g.parked_before_loss = g.parked_for.is_some();
        }
        unsettled
    }

    fn is_gc_caller(&self, caller: u64) -> bool {
        self.gc_callers.iter().any(|r| r.contains(&caller))
    }

    /// What the semaphore at `address` belongs to, as the lock detail names it: the sync
    /// object and its address when the wait reason tells (`sync.Mutex`), else the wait
    /// reason and the semaphore's own address.
    pub fn semaphore_owner(&self, address: u64) -> (String, u64) {
        let reason = self
            .semaphore_reasons
            .get(&address)
            .map_or_else(|| "semacquire".to_string(), |r| self.reason_name(*r));
        match semaphore_wait(&reason).flatten() {
            Some(SemaphoreOwner { kind, sema_offset }) => {
                (kind.to_string(), address.wrapping_sub(sema_offset))
            }
            None => (reason, address),
        }
    }

    /// A new goroutine's entry, forgetting parked ones without requests when there are too
    /// many.
    fn entry(&mut self, goid: u64) -> &mut Goroutine {
        if self.by_goid.len() >= MAX_GOROUTINES && !self.by_goid.contains_key(&goid) {
            let before = self.by_goid.len();
            self.by_goid
                .retain(|_, g| g.open_requests.now > 0 || g.timeline.parked_for().is_none());
            self.forgotten += (before - self.by_goid.len()) as u64;
        }
        self.by_goid.entry(goid).or_insert_with(Goroutine::new)
    }

    /// `goid`'s park ended at `ts` (it is runnable, or runs): its time by wait reason, and
    /// its semaphore wait. Returns the park's cause, how long it lasted, and where it began.
    fn end_park(
        &mut self,
        ts: u64,
        goid: u64,
        locks: &mut GoLocks,
    ) -> Option<(Cause, u64, Option<StackRef>)> {
        let g = self.by_goid.get_mut(&goid)?;
        g.parked_before_loss = false;
        let reason = g.parked_for.take()?;
        let waits_on = g.waits_on.take();
        let site = g.parked_at.take();
        let (cause, lasted) = g.timeline.end_park(ts)?;
        *self.parked_ns.entry(reason).or_default() += lasted;
        if let Some(address) = waits_on {
            locks.wait(address, GoroutineId(goid), lasted);
            self.semaphore_reasons.entry(address).or_insert(reason);
            if self.semaphore_reasons.len() > 4 * super::locks::MAX_LOCKS {
                self.semaphore_reasons.retain(|a, _| locks.contains(*a));
            }
        }
        Some((cause, lasted, site))
    }
}

impl<R: FdResolver> Engine<R> {
    /// Go's wait-reason strings of the target's release, by `waitReason` value.
    pub fn set_go_wait_reasons(&mut self, reasons: Vec<String>) {
        self.goroutines.reason_meanings = reasons.iter().map(|r| ReasonMeaning::of(r)).collect();
        self.goroutines.wait_reasons = reasons;
    }

    /// Where the runtime functions that take the GC's own semaphores are, in the target's
    /// memory: a goroutine parked on a semaphore taken there waits for the GC (`gc`).
    pub fn set_go_gc_callers(&mut self, ranges: Vec<std::ops::Range<u64>>) {
        self.goroutines.gc_callers = ranges;
    }

    /// `ctx` is a goroutine that moves an HTTP/2 connection's frames.
    pub(super) fn serves_http2(&self, ctx: ExecCtx) -> bool {
        match ctx {
            ExecCtx::Goroutine(g) => self
                .goroutines
                .by_goid
                .get(&g.0)
                .is_some_and(|g| g.serves_http2),
            ExecCtx::Thread(_) => false,
        }
    }

    /// The context thread `tid` runs now: its goroutine, in a Go target, else itself.
    pub(super) fn current_ctx(&self, tid: Tid) -> ExecCtx {
        match self.goroutines.running_on(tid) {
            Some(goid) => ExecCtx::Goroutine(super::GoroutineId(goid)),
            None => ExecCtx::Thread(tid),
        }
    }

    /// Context `ctx`'s cumulative breakdown at `ts`.
    pub(super) fn ctx_snapshot(&self, ctx: ExecCtx, ts: u64) -> Option<Snapshot> {
        match ctx {
            ExecCtx::Thread(tid) => self.threads.snapshot(tid, ts),
            ExecCtx::Goroutine(g) => self
                .goroutines
                .snapshot(g.0, ts, |tid| self.threads.snapshot(tid, ts)),
        }
    }

    /// The count of open requests not answered yet on `ctx`.
    pub(super) fn open_requests_mut(&mut self, ctx: ExecCtx) -> Option<&mut WaitingRequests> {
        match ctx {
            ExecCtx::Thread(tid) => self.threads.get_mut(tid).map(|t| &mut t.open_requests),
            ExecCtx::Goroutine(g) => self.goroutines.get_mut(g.0).map(|g| &mut g.open_requests),
        }
    }

    pub(super) fn go_sched(&mut self, ts: u64, tid: Tid, event: GoSched) {
        self.goroutines.seen = true;
        // A uprobe fired: the thread is on a CPU (its first event, after an attach mid-flight).
        self.threads
            .seen(tid, ts, super::timeline::RunState::Running);
        if let Some(goid) = event.own_goroutine() {
            let kept = self.goroutines.seen_on(tid, goid);
            self.kept_at_sleep(kept);
        }
        match event {
            GoSched::Execute { goid } => {
                // A Go handshake's goroutine taken to run on `tid` is not there any more,
                // unless it is the one `tid` runs now.
                if self.tls.go.any() {
                    self.tls.go.thread_runs(tid, ts, goid, &self.threads);
                }
                self.go_execute(ts, tid, goid);
            }
            GoSched::Park {
                goid,
                reason,
                request_body,
                stack,
            } => {
                let park = Park {
                    reason,
                    request_body,
                    stack,
                };
                self.go_park(ts, tid, goid, park)
            }
            GoSched::Ready { goid, waker } => self.go_ready(ts, tid, goid, waker),
            GoSched::Exit { goid } => self.go_exit(ts, tid, goid),
            // The probe fires on the goroutine itself: known or not, it is running.
            GoSched::Http2Connection { goid } => {
                self.goroutines.entry(goid).serves_http2 = true;
                self.goroutine_serves_http2(super::GoroutineId(goid));
            }
            GoSched::Http2Handler { goid } => {
                self.stream_handler_started(ts, super::GoroutineId(goid));
            }
            GoSched::Semacquire {
                goid,
                address,
                caller,
            } => {
                let for_gc = self.goroutines.is_gc_caller(caller);
                if let Some(g) = self.goroutines.by_goid.get_mut(&goid) {
                    g.semaphore = Some(Semaphore { address, for_gc });
                }
            }
            GoSched::Semrelease {
                goid,
                address,
                stack,
            } => {
                if let Some(g) = self.goroutines.by_goid.get_mut(&goid) {
                    g.released = Some((address, stack));
                }
            }
            GoSched::StopTheWorld => self.stop_the_world(ts, tid),
            GoSched::StartTheWorld => self.start_the_world(ts),
        }
    }

    /// The world stops at `ts`, stopped by thread `tid`: the goroutines waiting for Go's
    /// scheduler wait for it to start again.
    fn stop_the_world(&mut self, ts: u64, tid: Tid) {
        let World {
            stopped_since,
            stopper,
            waiting,
            ..
        } = &mut self.goroutines.world;
        stopped_since.get_or_insert(ts);
        *stopper = Some(tid);
        for (goid, g) in self.goroutines.by_goid.iter_mut() {
            if g.timeline.parked_for() == Some(Cause::GoRunqueue) {
                g.timeline.park(ts, Cause::Gc);
                waiting.push(*goid);
            }
        }
    }

    /// What the Go semaphore at `address` belongs to, as the lock detail names it: the sync
    /// object's type and address when Go's wait reason tells (`sync.Mutex`), else the wait
    /// reason and the semaphore's own address.
    pub fn go_semaphore_owner(&self, address: u64) -> (String, u64) {
        self.goroutines.semaphore_owner(address)
    }

    /// Goroutines forgotten to keep the engine's memory bounded.
    pub fn goroutines_forgotten(&self) -> u64 {
        self.goroutines.forgotten
    }

    /// The world starts again at `ts`: the goroutines that became runnable while it was
    /// stopped wait for Go's scheduler from now.
    pub(super) fn start_the_world(&mut self, ts: u64) {
        let gs = &mut self.goroutines;
        gs.world.stopper = None;
        if let Some(began) = gs.world.stopped_since.take() {
            gs.world.last_stop = Some((began, ts));
        }
        for goid in std::mem::take(&mut gs.world.waiting) {
            if let Some(g) = gs.by_goid.get_mut(&goid) {
                if g.timeline.parked_for() == Some(Cause::Gc) && g.parked_for.is_none() {
                    g.timeline.park(ts, Cause::GoRunqueue);
                }
            }
        }
    }

    /// `goid` runs on `tid` from `ts`; the goroutine `tid` ran until now, if it did not
    /// park, is runnable.
    fn go_execute(&mut self, ts: u64, tid: Tid, goid: u64) {
        let thread_now = self.threads.snapshot(tid, ts);
        let gs = &mut self.goroutines;
        if !gs.unknown_since_loss.is_empty() {
            gs.unknown_since_loss.remove(&tid);
        }
        // A thread that slept with a goroutine and now runs one (the same, or another) was
        // idle: that goroutine had left it. So had `goid` any thread it slept on.
        let left_here = gs.left_at_sleep(tid);
        let left_there = gs.slept_with(goid).and_then(|old| gs.left_at_sleep(old));
        // The snapshots its open requests took since the sleep counted the thread's wait
        // as the goroutine's: taken again in its history as now told, or a wait for Go's
        // scheduler back-dated to the sleep would count its part before a request started.
        for (left, since, at_sleep) in left_here.into_iter().chain(left_there) {
            let world = &gs.world;
            self.requests
                .rebase(ExecCtx::Goroutine(GoroutineId(left)), since, |ts| {
                    let waited = world.waited(since, ts);
                    std::array::from_fn(|i| at_sleep[i] + waited[i])
                });
        }
        let gs = &mut self.goroutines;
        let previous = gs.running.insert(tid, goid);
        if previous.is_none() {
            gs.scheduler_threads.insert(tid); // from idle: its first goroutine, maybe
        }
        if let Some(previous) = previous.filter(|&p| p != goid) {
            if let Some(p) = gs.by_goid.get_mut(&previous) {
                if p.timeline.thread() == Some(tid) {
                    p.timeline.leave_thread(thread_now);
                    p.left_unparked = Some((ts, p.timeline.accrued()));
                    gs.world.runnable(ts, previous, p);
                }
            }
        }
        let park = gs.end_park(ts, goid, &mut self.go_locks);
        let g = gs.entry(goid);
        // Executed again without a park (it yielded, or was preempted, and was put back at
        // once): the stretch on its thread so far is its time too.
        let left = g.timeline.thread();
        if let Some(old) = left {
            g.timeline.leave_thread(self.threads.snapshot(old, ts));
        }
        g.timeline.run_on(ts, tid, thread_now);
        g.left_unparked = None;
        if let Some(old) = left.filter(|&old| old != tid) {
            if gs.running.get(&old) == Some(&goid) {
                gs.running.remove(&old);
            }
        }
        self.note_park_site(ts, goid, park);
    }

    fn go_park(&mut self, ts: u64, tid: Tid, goid: u64, park: Park) {
        let Park {
            reason,
            request_body,
            stack,
        } = park;
        let ReasonMeaning {
            mut cause,
            on_semaphore,
        } = self.goroutines.meaning_of(reason);
        if request_body {
            cause = Cause::NetIo;
        }
        let gs = &mut self.goroutines;
        if gs.running.get(&tid) == Some(&goid) {
            gs.running.remove(&tid);
        }
        let Some(g) = gs.by_goid.get_mut(&goid) else {
            return; // first seen parking: its time before is unknown, and so is this park's
        };
        if g.parked_for.is_some() {
            if !g.parked_before_loss {
                return; // the probe again after a morestack re-entry
            }
            // The park before the loss ended among the lost records (its wakeup, and the
            // run that led to this park): it ends here, as far as is known.
            let ended = gs.end_park(ts, goid, &mut self.go_locks);
            self.note_park_site(ts, goid, ended);
            return self.go_park(ts, tid, goid, park);
        }
        // A semaphore wait parks inside semacquire1, so it is on the address semacquire1
        // was last entered with (kept: semacquire1 parks again, without being entered
        // again, when another goroutine took the semaphore first after the wakeup).
        let semaphore = g.semaphore.filter(|_| on_semaphore);
        if semaphore.is_some_and(|s| s.for_gc) {
            cause = Cause::Gc;
        }
        // Left the thread its stretch began on (normally `tid`; another one when the
        // execute that moved it was lost).
        if let Some(on) = g.timeline.thread() {
            g.timeline.leave_thread(self.threads.snapshot(on, ts));
        }
        g.timeline.park(ts, cause);
        g.left_unparked = None;
        g.parked_for = Some(reason);
        g.parked_at = stack;
        g.waits_on = semaphore.filter(|s| !s.for_gc).map(|s| s.address);
    }

    /// Thread `tid` went to sleep in a futex at `ts`, in the runtime: whether its goroutine
    /// left it or waits on it for a runtime lock is known later (see the module's doc).
    pub(super) fn go_thread_sleeps(&mut self, ts: u64, tid: Tid) {
        let Some(goid) = self.goroutines.running_on(tid) else {
            return;
        };
        let thread_at = self.threads.snapshot(tid, ts);
        self.goroutines.slept.entry(tid).or_insert(ThreadSleep {
            goid,
            ts,
            thread_at,
            waits: Vec::new(),
        });
    }

    /// Thread `tid`'s wait for `cause` at `site`, which lasted `lasted` ns until `ts`, while
    /// it has a sleep not settled: kept with the sleep (returns `true`), to be the
    /// goroutine's wait if it kept the thread.
    pub(super) fn wait_with_sleep(
        &mut self,
        tid: Tid,
        ts: u64,
        cause: Cause,
        lasted: u64,
        site: Option<StackRef>,
    ) -> bool {
        let Some(sleep) = self.goroutines.unsettled_sleep(tid) else {
            return false;
        };
        sleep.waits.push(ThreadWait {
            ts,
            cause,
            lasted,
            site,
        });
        true
    }

    /// Thread `tid` did what only its goroutine does (its socket I/O): a sleep it had is
    /// settled, its waits since are the goroutine's.
    pub(super) fn kept_by_thread(&mut self, tid: Tid) {
        let kept = self.goroutines.kept_by_thread(tid);
        self.kept_at_sleep(kept);
    }

    /// The goroutine stayed on its thread through `sleep`: the thread's waits since were its
    /// own, at their sites.
    fn kept_at_sleep(&mut self, sleep: Option<ThreadSleep>) {
        let Some(sleep) = sleep else { return };
        let ctx = ExecCtx::Goroutine(GoroutineId(sleep.goid));
        for w in sleep.waits {
            self.note_wait_site(ctx, w.ts, w.cause, w.lasted, w.site);
        }
    }

    /// Events were lost (see [`Goroutines::lost`]): the sleeps not settled stay the
    /// goroutines' own waits, as their timelines tell.
    pub(super) fn goroutines_lost(&mut self) {
        for sleep in self.goroutines.lost() {
            self.kept_at_sleep(Some(sleep));
        }
    }

    /// End of trace: the sleeps not settled stay the goroutines' own waits, as their
    /// timelines tell.
    pub(super) fn settle_sleeps(&mut self) {
        let tids: Vec<Tid> = self.goroutines.slept.keys().copied().collect();
        for tid in tids {
            self.kept_by_thread(tid);
        }
    }

    /// `goid` is runnable from `ts`, readied by `waker` on thread `tid`: its park ends.
    fn go_ready(&mut self, ts: u64, tid: Tid, goid: u64, waker: Option<u64>) {
        let gs = &mut self.goroutines;
        let Some(g) = gs.by_goid.get_mut(&goid) else {
            return;
        };
        if g.parked_for.is_none() {
            return self.go_resumed(ts, goid);
        }
        if let Some(address) = g.waits_on {
            self.go_locks.woken(address, GoWaker { goid: waker, tid });
            // Where the waker released that semaphore: the unlocker's site.
            let parked_at = g.parked_at;
            let released = waker
                .and_then(|w| gs.by_goid.get(&w))
                .and_then(|w| w.released)
                .filter(|(at, _)| *at == address)
                .and_then(|(_, stack)| stack);
            if let (Some(waiter), Some(waker)) = (parked_at, released) {
                self.wait_sites.woken(waiter, waker);
            }
        }
        let park = gs.end_park(ts, goid, &mut self.go_locks);
        if let Some(g) = gs.by_goid.get_mut(&goid) {
            gs.world.runnable(ts, goid, g);
        }
        self.note_park_site(ts, goid, park);
    }

    /// `goid` is readied at `ts` with no park: `ready` takes only a waiting goroutine (it
    /// throws otherwise), and one that left its thread without `gopark` waits only when the
    /// GC stopped it to scan its stack (`suspendG`: `preemptPark` leaves it `_Gpreempted`,
    /// `waitReasonPreempted`, in no run queue; `resumeG` readies it once the scan is done).
    /// Its wait since it left its thread is the GC's; from `ts`, Go's scheduler's.
    fn go_resumed(&mut self, ts: u64, goid: u64) {
        let gs = &mut self.goroutines;
        // Still taken to be on a thread that slept: it left it at the sleep (preempted,
        // nothing else to run, the thread slept in `stopm`).
        if let Some(tid) = gs.slept_with(goid) {
            gs.left_at_sleep(tid);
        }
        let Some(g) = gs.by_goid.get_mut(&goid) else {
            return;
        };
        let Some((since, at_left)) = g.left_unparked.take() else {
            return; // the probe again after a morestack re-entry, or a park lost
        };
        g.timeline.parked_since(since, at_left, Cause::Gc);
        let lasted = g.timeline.end_park(ts).map_or(0, |(_, lasted)| lasted);
        gs.world.runnable(ts, goid, g);
        // The snapshots its open requests took since it left counted that wait otherwise.
        let ctx = ExecCtx::Goroutine(GoroutineId(goid));
        self.requests.rebase(ctx, since, |at| {
            let mut now = at_left;
            now[Cause::Gc.index()] += at.min(ts).saturating_sub(since);
            now
        });
        self.note_wait_site(ctx, ts, Cause::Gc, lasted, None);
    }

    /// A park of `goid` ended at `ts`: its wait site, if inside a request.
    fn note_park_site(&mut self, ts: u64, goid: u64, park: Option<(Cause, u64, Option<StackRef>)>) {
        if let Some((cause, lasted, site)) = park {
            let ctx = ExecCtx::Goroutine(GoroutineId(goid));
            self.note_wait_site(ctx, ts, cause, lasted, site);
        }
    }

    /// `goid` is done: its open requests end (answered ones are complete, and an HTTP/2
    /// stream's, whose handler it ran).
    fn go_exit(&mut self, ts: u64, tid: Tid, goid: u64) {
        let ctx = ExecCtx::Goroutine(super::GoroutineId(goid));
        for on in self.requests.open_on(ctx) {
            match on {
                RequestOn::Stream(handler) => self.stream_handler_done(ts, handler),
                RequestOn::Connection(_) => self.finish(on),
            }
        }
        let gs = &mut self.goroutines;
        if gs.running.get(&tid) == Some(&goid) {
            gs.running.remove(&tid);
        }
        gs.by_goid.remove(&goid);
    }
}
