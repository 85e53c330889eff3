//! Thread timelines from the scheduler's events: switch-out (blocked with a cause, or still
//! runnable), switch-in, wakeup, thread creation and exit.

use rustc_hash::FxHashMap as HashMap;
use tracer_common::{
    is_futex, is_poll, is_read, is_write, PREEMPT_STATE_BIT, STATE_UNINTERRUPTIBLE,
};

use super::{
    cause::{blocked_cause, Cause},
    context::{ExecCtx, Tid},
    event::{InSyscall, Waker, Woken},
    requests::{RequestOn, WaitingRequests},
    sites::StackRef,
    timeline::{RunState, Snapshot, StolenTime, Timeline},
    Engine, FdResolver, Wait,
};

/// `EXIT_DEAD | EXIT_ZOMBIE` as sched_switch reports an exiting task's state (`X`, `Z`).
const STATE_EXITING: u32 = 0x30;

/// How long before a thread's switch-out into a block a wakeup its switch-in reports may have
/// come and still be that block's (it came as the thread went to sleep); an older one is
/// not the block's.
const PENDING_WAKEUP_NS: u64 = 100_000;

/// The wakeup that ended a thread's block, and what it was blocked in.
#[derive(Clone, Copy)]
pub(super) struct BlockEnd {
    pub at: Snapshot,
    pub syscall: Option<InSyscall>,
}

impl BlockEnd {
    /// The block was a read of `fd`.
    pub fn blocked_reading(&self, fd: u32) -> bool {
        self.syscall
            .is_some_and(|s| is_read(s.nr) && s.arg0 as u32 == fd)
    }

    /// The block was a wait for readiness (poll, select, epoll): an event loop's.
    pub fn blocked_polling(&self) -> bool {
        self.syscall.is_some_and(|s| is_poll(s.nr))
    }
}

/// A thread's futex wait in progress: the futex address, and when it blocked.
#[derive(Clone, Copy)]
struct FutexWait {
    address: u64,
    since: u64,
}

/// A thread of the target.
pub(super) struct Thread {
    pub timeline: Timeline,
    /// The wakeup that ended the last block, until the socket I/O after it. A request whose
    /// first read blocked starts here, so its run-queue delay is counted.
    pub last_wakeup: Option<BlockEnd>,
    /// Blocked in a futex wait: it ends when the thread runs again.
    futex_wait: Option<FutexWait>,
    /// Its requests still waiting for their response.
    pub open_requests: WaitingRequests,
    /// The OpenSSL call (`SSL*`, call) the thread is inside, on a connection still in its
    /// handshake: its socket reads and writes are handshake flights, not requests.
    pub ssl_call: Option<(u64, super::event::SslCall)>,
    /// Where in its code it blocked, or was preempted, last (that switch-out's stack), until
    /// the wait that followed is over.
    blocked_at: Option<StackRef>,
    /// Its current stretch on a CPU (when the kernel reports its CPU's steal).
    on_cpu_since: Option<OnCpuSince>,
    /// When it last blocked, and its total wait for a CPU then (when the kernel read it).
    run_delay_at_block: Option<RunDelayAt>,
}

/// A thread's total wait for a CPU (the kernel's `sched_info.run_delay`) at a switch-out.
#[derive(Clone, Copy)]
struct RunDelayAt {
    ts: u64,
    total: u64,
}

/// When a thread's stretch on a CPU began, and the steal that CPU had accounted then.
#[derive(Clone, Copy)]
struct OnCpuSince {
    ts: u64,
    cpu_steal: u64,
}

impl Thread {
    fn new(ts: u64, state: RunState) -> Self {
        Thread {
            timeline: Timeline::new(ts, state),
            last_wakeup: None,
            futex_wait: None,
            open_requests: WaitingRequests::default(),
            ssl_call: None,
            blocked_at: None,
            on_cpu_since: None,
            run_delay_at_block: None,
        }
    }
}

/// The target's threads, by tid.
#[derive(Default)]
pub(super) struct Threads(HashMap<Tid, Thread>);

impl Threads {
    pub fn get(&self, tid: Tid) -> Option<&Thread> {
        self.0.get(&tid)
    }

    pub fn get_mut(&mut self, tid: Tid) -> Option<&mut Thread> {
        self.0.get_mut(&tid)
    }

    /// Thread `tid`, first seen at `ts` in `first_state` if it was not known.
    pub fn seen(&mut self, tid: Tid, ts: u64, first_state: RunState) -> &mut Thread {
        self.0
            .entry(tid)
            .or_insert_with(|| Thread::new(ts, first_state))
    }

    pub fn snapshot(&self, tid: Tid, ts: u64) -> Option<Snapshot> {
        self.0.get(&tid).map(|t| t.timeline.snapshot(ts))
    }

    pub fn remove(&mut self, tid: Tid) {
        self.0.remove(&tid);
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<R: FdResolver> Engine<R> {
    pub(super) fn thread_new(&mut self, ts: u64, tid: Tid) {
        // Not started until the scheduler first runs it.
        self.threads
            .0
            .insert(tid, Thread::new(ts, RunState::UNKNOWN_BLOCK));
    }

    /// Move a thread to `state`, keeping the per-syscall detail of `other`.
    pub(super) fn transition(&mut self, tid: Tid, ts: u64, state: RunState) -> (RunState, u64) {
        let Some(thread) = self.threads.get_mut(tid) else {
            return (state, 0);
        };
        let (left, lasted) = thread.timeline.transition(ts, state);
        if let RunState::Blocked { cause, syscall } = left {
            let site = thread.blocked_at.take();
            if cause == Cause::Other {
                *self
                    .other_by_syscall
                    .entry(syscall.map(|s| s.nr))
                    .or_default() += lasted;
            }
            // The thread's wait is the wait of the context it runs (a goroutine in a
            // blocking syscall), or, after a futex sleep, maybe of none.
            if !self.wait_with_sleep(tid, ts, cause, lasted, site) {
                let ctx = self.current_ctx(tid);
                self.note_wait_site(ctx, ts, cause, lasted, site);
            }
        }
        (left, lasted)
    }

    pub(super) fn switch_out(
        &mut self,
        ts: u64,
        tid: Tid,
        state: u32,
        syscall: Option<InSyscall>,
        stack: Option<StackRef>,
        cpu_steal: Option<u64>,
    ) {
        if state & STATE_EXITING != 0 {
            // The last switch of an exiting thread comes after sched_process_exit: do not
            // bring its context back.
            self.threads.remove(tid);
            return;
        }
        let thread = self.threads.seen(tid, ts, RunState::Running);
        // The same CPU's steal clock at both ends: a stretch on a CPU never migrates.
        let stolen = match (thread.on_cpu_since.take(), cpu_steal) {
            (Some(since), Some(steal_now)) if thread.timeline.state() == RunState::Running => {
                StolenTime::of_stretch(since.ts, ts, steal_now.saturating_sub(since.cpu_steal))
            }
            _ => None,
        };
        let still_runnable = state == 0 || state >= PREEMPT_STATE_BIT;
        let next = if still_runnable {
            RunState::Runnable
        } else {
            // What its fd holds may be a closed fd's, its number reused unseen.
            if let Some(s) = syscall.filter(|s| is_read(s.nr) || is_write(s.nr)) {
                let fd = s.arg0 as u32;
                if self
                    .fds
                    .recheck_at_block(fd, state & STATE_UNINTERRUPTIBLE != 0)
                {
                    self.connection_gone(fd);
                }
            }
            let fds = &mut self.fds;
            let cause = blocked_cause(syscall, state, |fd| fds.kind(fd));
            RunState::Blocked {
                cause: self.goroutines.block_cause(tid, cause),
                syscall,
            }
        };
        self.transition(tid, ts, next);
        if let Some(stolen) = stolen {
            self.charge_steal(tid, &stolen);
        }
        if let Some(thread) = self.threads.get_mut(tid) {
            thread.blocked_at = stack;
            thread.futex_wait = match (next, syscall) {
                (RunState::Blocked { .. }, Some(s)) if is_futex(s.nr) => Some(FutexWait {
                    address: s.arg0,
                    since: ts,
                }),
                _ => None,
            };
        }
        if matches!(
            next,
            RunState::Blocked {
                cause: Cause::Lock,
                ..
            }
        ) {
            self.go_thread_sleeps(ts, tid);
        }
        // Back to reading a connection it has answered: that response is complete.
        if let Some(s) = syscall.filter(|s| is_read(s.nr)) {
            let fd = s.arg0 as u32;
            if self.requests.answered(fd) {
                self.finish(RequestOn::Connection(fd));
            }
        }
    }

    pub(super) fn switch_in(&mut self, ts: u64, tid: Tid, cpu_steal: Option<u64>) {
        let thread = self.threads.seen(tid, ts, RunState::Runnable);
        thread.on_cpu_since = cpu_steal.map(|cpu_steal| OnCpuSince { ts, cpu_steal });
        let futex_wait = thread.futex_wait.take();
        let (left, lasted) = self.transition(tid, ts, RunState::Running);
        if left == RunState::Runnable && lasted > 0 {
            self.waits.push(Wait::Runqueue(lasted));
            // Preempted inside a request: its switch-out's stack, where its code was, names
            // this wait. (A woken thread's blocked site went with its block.)
            let preempted_at = self.threads.get_mut(tid).and_then(|t| t.blocked_at.take());
            if preempted_at.is_some()
                && !self.wait_with_sleep(tid, ts, Cause::Runqueue, lasted, preempted_at)
            {
                let ctx = self.current_ctx(tid);
                self.note_wait_site(ctx, ts, Cause::Runqueue, lasted, preempted_at);
            }
        }
        // The futex wait syscall returns as the thread runs again (no syscall hook: its
        // block, from switch-out to switch-in, is the wait).
        if let Some(wait) = futex_wait {
            let waited = ts.saturating_sub(wait.since);
            self.waits.push(Wait::Futex(waited));
            self.locks.wait(wait.address, tid, waited);
        }
    }

    /// Part of the stretch on a CPU that `tid` just left was steal: the thread's timeline and
    /// the requests it serves count that share as steal. Goroutines take their threads'
    /// stretches as they were when they left them, so on a Go target the time stays on CPU.
    fn charge_steal(&mut self, tid: Tid, stolen: &StolenTime) {
        if self.on_goroutines() {
            return;
        }
        if let Some(thread) = self.threads.get_mut(tid) {
            thread.timeline.charge_steal(stolen);
        }
        self.requests.charge_steal(ExecCtx::Thread(tid), stolen);
    }

    /// A switch-out's total wait for a CPU so far (`None`: not a block, or not read): kept
    /// for a switch-in that would come unreported.
    pub(super) fn note_run_delay_at_block(&mut self, tid: Tid, ts: u64, total: Option<u64>) {
        if let Some(thread) = self.threads.get_mut(tid) {
            thread.run_delay_at_block = total.map(|total| RunDelayAt { ts, total });
        }
    }

    /// The wakeup of a switch-in whose wakeup the kernel side did not see (seen on this VM,
    /// with or without the switch-in itself), which carries the thread's total wait for a
    /// CPU through `ts`: the thread waited for its CPU as long as that total grew since it
    /// blocked, so it was woken that long before `ts` (by whom is unknown). Without this,
    /// that wait would count as the cause it blocked on. (A preempted thread's switch-in
    /// carries its total too; its switch-out, not a block, noted none.)
    pub(super) fn wakeup_from_run_delay(
        &mut self,
        tid: Tid,
        ts: u64,
        total_now: Option<u64>,
    ) -> Option<Woken> {
        let total_now = total_now?;
        let at_block = self.threads.get_mut(tid)?.run_delay_at_block.take()?;
        let waited = total_now
            .checked_sub(at_block.total)
            .filter(|&waited| waited > 0)?;
        Some(Woken {
            at: ts.saturating_sub(waited).max(at_block.ts),
            waker: Waker::Unknown,
            unlocker: None,
        })
    }

    /// The wakeup a switch-in reports, applied at its own time: the thread has no event
    /// between its switch-out and its switch-in, so its timeline is still as it was then.
    pub(super) fn woken_before_switch_in(&mut self, tid: Tid, woken: Woken) {
        let Some(thread) = self.threads.get(tid) else {
            return self.wakeup(woken.at, tid, woken.waker, woken.unlocker); // first seen
        };
        let RunState::Blocked { .. } = thread.timeline.state() else {
            // Preempted, or gone to sleep with the wakeup already there (a zero state):
            // a wakeup that came while it ran changes nothing.
            return;
        };
        let blocked_since = thread.timeline.state_since();
        if woken.at >= blocked_since {
            self.wakeup(woken.at, tid, woken.waker, woken.unlocker);
        } else if blocked_since - woken.at <= PENDING_WAKEUP_NS {
            // Woken on its way to sleep: no block, runnable from its switch-out.
            if let Some(thread) = self.threads.get_mut(tid) {
                thread.futex_wait = None;
            }
            self.wakeup(blocked_since, tid, woken.waker, woken.unlocker);
        }
        // Older: not this block's (its own wakeup was not seen); the block lasts until now.
    }

    /// `tid` became runnable at `ts`, woken by `waker`; `unlocker`: where the waker released
    /// the lock, when it took its stack.
    pub(super) fn wakeup(&mut self, ts: u64, tid: Tid, waker: Waker, unlocker: Option<StackRef>) {
        let thread = self.threads.seen(tid, ts, RunState::UNKNOWN_BLOCK);
        match thread.timeline.state() {
            // A wakeup of a thread that is not blocked changes nothing. (Only a new thread's
            // first wakeup comes on its own: the others come with the switch-in they lead
            // to, see `woken_before_switch_in`.)
            RunState::Running | RunState::Runnable => {}
            RunState::Blocked { cause, syscall } => {
                let blocked_at = thread.blocked_at;
                let (_, lasted) = self.transition(tid, ts, RunState::Runnable);
                let thread = self.threads.get_mut(tid).expect("thread exists");
                thread.last_wakeup = Some(BlockEnd {
                    at: thread.timeline.snapshot(ts),
                    syscall,
                });
                self.note_block_end(cause, syscall, lasted, waker);
                // A lock wait whose site was taken (inside a request), ended by a release
                // whose site was taken: the unlocker's site, beside the waiter's.
                if let (Cause::Lock, Some(waiter), Some(unlocker)) = (cause, blocked_at, unlocker) {
                    self.wait_sites.woken(waiter, unlocker);
                }
            }
        }
    }

    fn note_block_end(
        &mut self,
        cause: Cause,
        syscall: Option<InSyscall>,
        lasted: u64,
        waker: Waker,
    ) {
        let Some(s) = syscall else { return };
        if cause == Cause::NetIo && is_read(s.nr) {
            self.waits.push(Wait::SocketRead(lasted));
        }
        // Every futex wait is in the futex table, with its waker (a Go thread stopping the
        // world waits in one for the GC, not for a lock).
        if is_futex(s.nr) {
            self.locks.woken(s.arg0, waker);
        }
    }

    /// A syscall returned on `tid`: it runs on a CPU (a lost switch-in is made up for).
    pub(super) fn syscall_returned(&mut self, ts: u64, tid: Tid) {
        let thread = self.threads.seen(tid, ts, RunState::Running);
        if thread.timeline.state() != RunState::Running {
            self.transition(tid, ts, RunState::Running);
        }
    }

    pub(super) fn thread_exit(&mut self, ts: u64, tid: Tid) {
        self.transition(tid, ts, RunState::Runnable);
        for on in self.requests.open_on(ExecCtx::Thread(tid)) {
            self.finish(on);
        }
        self.threads.remove(tid);
        self.tls.go.forget_thread(tid);
        self.goroutines.forget_thread(tid);
    }
}
