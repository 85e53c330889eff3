//! Timelines: each execution context's time, nanosecond by nanosecond, as exactly one cause.
//! A timeline keeps a cumulative breakdown; anything timed on a context (a request, a TLS
//! handshake) is the difference of two [`Snapshot`]s of it, so its causes always sum to its
//! duration.

use super::{
    cause::{diff, Breakdown, Cause, CAUSES},
    context::Tid,
    event::InSyscall,
};

/// A context's cumulative breakdown at a moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub ts: u64,
    pub at: Breakdown,
}

impl Snapshot {
    /// What happened between `start` and this snapshot.
    pub fn since(&self, start: &Snapshot) -> Breakdown {
        diff(&self.at, &start.at)
    }

    /// Count the share of `stolen` that fell before this snapshot as steal, not on CPU.
    pub fn charge_steal(&mut self, stolen: &StolenTime) {
        move_ns(
            &mut self.at,
            Cause::OnCpu,
            Cause::Steal,
            stolen.before(self.ts),
        );
    }
}

/// Moves up to `ns` of `from`'s time to `to`.
fn move_ns(at: &mut Breakdown, from: Cause, to: Cause, ns: u64) {
    let ns = ns.min(at[from.index()]);
    at[from.index()] -= ns;
    at[to.index()] += ns;
}

/// A thread's stretch on a CPU (from switch-in to switch-out) and how much of it the
/// hypervisor took: the steal its CPU's run queue accounted meanwhile, which the kernel
/// also leaves out of the thread's CPU time. When in the stretch it was taken is not known:
/// it is spread evenly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StolenTime {
    pub from: u64,
    pub to: u64,
    pub ns: u64,
}

impl StolenTime {
    /// The steal in a stretch from `from` to `to` during which its CPU accounted
    /// `steal_ns` of steal (no more than the stretch: the kernel accounts steal lazily, at
    /// its clock updates), if there was any.
    pub fn of_stretch(from: u64, to: u64, steal_ns: u64) -> Option<StolenTime> {
        let ns = steal_ns.min(to.checked_sub(from)?);
        (ns > 0).then_some(StolenTime { from, to, ns })
    }

    /// The share of it taken before `ts`.
    pub fn before(&self, ts: u64) -> u64 {
        if ts <= self.from {
            return 0;
        }
        if ts >= self.to {
            return self.ns;
        }
        let share =
            u128::from(self.ns) * u128::from(ts - self.from) / u128::from(self.to - self.from);
        share as u64
    }
}

/// What a context is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Running,
    Runnable,
    Blocked {
        cause: Cause,
        /// The syscall it blocked in (for the `other` detail and the lock table).
        syscall: Option<InSyscall>,
    },
}

impl RunState {
    /// Blocked for a reason not seen (before the tracer attached, or not started yet).
    pub const UNKNOWN_BLOCK: RunState = RunState::Blocked {
        cause: Cause::Other,
        syscall: None,
    };

    pub fn cause(self) -> Cause {
        match self {
            RunState::Running => Cause::OnCpu,
            RunState::Runnable => Cause::Runqueue,
            RunState::Blocked { cause, .. } => cause,
        }
    }
}

/// A context whose own state says where its time goes: a thread (from the scheduler's
/// events), or a goroutine while parked or runnable in Go's scheduler.
#[derive(Clone, Debug)]
pub struct Timeline {
    state: RunState,
    since: u64,
    cum: Breakdown,
}

impl Timeline {
    pub fn new(ts: u64, state: RunState) -> Self {
        Timeline {
            state,
            since: ts,
            cum: [0; CAUSES],
        }
    }

    pub fn state(&self) -> RunState {
        self.state
    }

    /// When it entered its current state.
    pub fn state_since(&self) -> u64 {
        self.since
    }

    /// The cumulative breakdown at `ts` (not before the last transition).
    pub fn snapshot(&self, ts: u64) -> Snapshot {
        let mut at = self.cum;
        at[self.state.cause().index()] += ts.saturating_sub(self.since);
        Snapshot { ts, at }
    }

    /// The on-CPU time of a stretch that ended was `stolen` in part: count that as steal.
    pub fn charge_steal(&mut self, stolen: &StolenTime) {
        move_ns(&mut self.cum, Cause::OnCpu, Cause::Steal, stolen.ns);
    }

    /// Move to `state` at `ts`; returns the state left and how long it lasted.
    pub fn transition(&mut self, ts: u64, state: RunState) -> (RunState, u64) {
        let ts = ts.max(self.since);
        let lasted = ts - self.since;
        self.cum[self.state.cause().index()] += lasted;
        self.since = ts;
        (std::mem::replace(&mut self.state, state), lasted)
    }
}

/// Where a goroutine is: running on a thread (whose timeline then says where its time goes:
/// on CPU, in the run queue, blocked in a syscall), parked with a cause, or not seen.
#[derive(Clone, Copy, Debug)]
enum Hosting {
    OnThread { tid: Tid, start: Breakdown },
    Parked { cause: Cause, since: u64 },
    Unseen,
}

/// A goroutine's timeline. It hops between threads: each stretch on a thread adds what that
/// thread's timeline accrued meanwhile; a park adds its own cause. Between a stretch that
/// ended without a park and the next one, nothing is accrued (the caller fits the total).
#[derive(Clone, Debug)]
pub struct GoroutineTimeline {
    cum: Breakdown,
    now: Hosting,
}

impl GoroutineTimeline {
    /// A goroutine not seen running or parked yet.
    pub fn unseen() -> Self {
        GoroutineTimeline {
            cum: [0; CAUSES],
            now: Hosting::Unseen,
        }
    }

    /// A goroutine seen running on thread `tid`, whose timeline was at `thread_now` then.
    pub fn running_on(tid: Tid, thread_now: Snapshot) -> Self {
        GoroutineTimeline {
            cum: [0; CAUSES],
            now: Hosting::OnThread {
                tid,
                start: thread_now.at,
            },
        }
    }

    /// The thread running it, if any.
    pub fn thread(&self) -> Option<Tid> {
        match self.now {
            Hosting::OnThread { tid, .. } => Some(tid),
            _ => None,
        }
    }

    /// It runs on `tid` from `ts` (`thread_now`: that thread's timeline then, `None` when the
    /// thread is not known). A park ends at `ts`.
    pub fn run_on(&mut self, ts: u64, tid: Tid, thread_now: Option<Snapshot>) {
        self.end_park(ts);
        self.now = match thread_now {
            Some(now) => Hosting::OnThread { tid, start: now.at },
            None => Hosting::Unseen,
        };
    }

    /// Its stretch on a thread ends: `thread_now` is that thread's timeline now (`None`: the
    /// thread is gone, and the stretch is not counted). Returns the thread it left.
    pub fn leave_thread(&mut self, thread_now: Option<Snapshot>) -> Option<Tid> {
        let Hosting::OnThread { tid, start } = self.now else {
            return None;
        };
        if let Some(now) = thread_now {
            for (sum, ns) in self.cum.iter_mut().zip(diff(&now.at, &start)) {
                *sum += ns;
            }
        }
        self.now = Hosting::Unseen;
        Some(tid)
    }

    /// It parks at `ts` for `cause` (its stretch on a thread must have been left).
    pub fn park(&mut self, ts: u64, cause: Cause) {
        self.end_park(ts); // a park whose end was not seen ends here
        self.now = Hosting::Parked { cause, since: ts };
    }

    /// A park (if it is parked) ends at `ts`; returns its cause and how long it lasted.
    pub fn end_park(&mut self, ts: u64) -> Option<(Cause, u64)> {
        let Hosting::Parked { cause, since } = self.now else {
            return None;
        };
        let lasted = ts.saturating_sub(since);
        self.cum[cause.index()] += lasted;
        self.now = Hosting::Unseen;
        Some((cause, lasted))
    }

    /// Its history since `since` is told anew: it had accrued `accrued` then, and has been
    /// parked for `cause` since (its stretch on a thread must have been left).
    pub fn parked_since(&mut self, since: u64, accrued: Breakdown, cause: Cause) {
        self.cum = accrued;
        self.now = Hosting::Parked { cause, since };
    }

    /// What it accrued in the stretches and parks that ended.
    pub fn accrued(&self) -> Breakdown {
        self.cum
    }

    /// Its cumulative breakdown at `ts`; `thread_now` is the timeline, at `ts`, of the thread
    /// it runs on, if it runs.
    pub fn snapshot(&self, ts: u64, thread_now: Option<Snapshot>) -> Snapshot {
        let mut at = self.cum;
        match self.now {
            Hosting::OnThread { start, .. } => {
                if let Some(now) = thread_now {
                    for (sum, ns) in at.iter_mut().zip(diff(&now.at, &start)) {
                        *sum += ns;
                    }
                }
            }
            Hosting::Parked { cause, since } => at[cause.index()] += ts.saturating_sub(since),
            Hosting::Unseen => {}
        }
        Snapshot { ts, at }
    }

    /// The cause it is parked for, if parked.
    pub fn parked_for(&self) -> Option<Cause> {
        match self.now {
            Hosting::Parked { cause, .. } => Some(cause),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_timeline_credits_each_state_to_its_cause() {
        let mut t = Timeline::new(0, RunState::Running);
        t.transition(10, RunState::Runnable);
        t.transition(15, RunState::UNKNOWN_BLOCK);
        let at = t.snapshot(40).at;
        assert_eq!(at[Cause::OnCpu.index()], 10);
        assert_eq!(at[Cause::Runqueue.index()], 5);
        assert_eq!(at[Cause::Other.index()], 25);
        assert_eq!(at.iter().sum::<u64>(), 40);
        assert_eq!(
            t.transition(5, RunState::Running),
            (RunState::UNKNOWN_BLOCK, 0)
        );
    }

    #[test]
    fn stolen_time_is_spread_over_its_stretch() {
        assert_eq!(StolenTime::of_stretch(1_000, 50_000, 0), None);
        assert_eq!(StolenTime::of_stretch(50_000, 1_000, 10), None);
        assert_eq!(StolenTime::of_stretch(0, 10, 60_000).unwrap().ns, 10);
        let stolen = StolenTime::of_stretch(0, 100_000, 60_000).unwrap();
        assert_eq!(stolen.ns, 60_000);
        assert_eq!(stolen.before(0), 0);
        assert_eq!(stolen.before(50_000), 30_000);
        assert_eq!(stolen.before(200_000), 60_000);

        let mut t = Timeline::new(0, RunState::Running);
        let mut mid = t.snapshot(50_000);
        t.transition(100_000, RunState::UNKNOWN_BLOCK);
        t.charge_steal(&stolen);
        mid.charge_steal(&stolen);
        let end = t.snapshot(100_000);
        assert_eq!(end.at[Cause::OnCpu.index()], 40_000);
        assert_eq!(end.at[Cause::Steal.index()], 60_000);
        let second_half = end.since(&mid);
        assert_eq!(second_half[Cause::OnCpu.index()], 20_000);
        assert_eq!(second_half[Cause::Steal.index()], 30_000);
    }

    #[test]
    fn a_goroutine_accrues_its_threads_stretches_and_its_parks() {
        let mut thread_a = Timeline::new(0, RunState::Running);
        let mut g = GoroutineTimeline::running_on(Tid(1), thread_a.snapshot(0));
        thread_a.transition(30, RunState::Runnable);
        assert_eq!(g.leave_thread(Some(thread_a.snapshot(40))), Some(Tid(1)));
        g.park(40, Cause::NetIo);
        let thread_b = Timeline::new(0, RunState::Running);
        g.run_on(100, Tid(2), Some(thread_b.snapshot(100)));
        assert_eq!(g.thread(), Some(Tid(2)));
        g.leave_thread(Some(thread_b.snapshot(120)));
        let got = g.accrued();
        assert_eq!(got[Cause::OnCpu.index()], 30 + 20);
        assert_eq!(got[Cause::Runqueue.index()], 10);
        assert_eq!(got[Cause::NetIo.index()], 60);
    }
}
