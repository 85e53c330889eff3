//! A handler's own account of its time, which the tests compare with the tracer's: wall
//! time, time waiting for a CPU (the kernel's schedstat) and time on a CPU (the perf task
//! clock).

use std::cell::RefCell;
use std::fs;
use std::io;
use std::time::{Duration, Instant};

/// A handler's own account of a stretch of its thread's time: the wall time, and how much of
/// it the thread spent runnable, waiting for a CPU (the kernel's schedstat `run_delay`, which
/// covers every completed wait). So what the thread spent blocked is `wall - runqueue` (less
/// a few µs of CPU), whatever else the machine is doing.
#[derive(Clone, Copy)]
pub struct Span {
    pub wall: Duration,
    pub runqueue_ns: u64,
}

impl Span {
    /// Runs `work`, returning its output and the span it took.
    pub fn measure<T>(work: impl FnOnce() -> T) -> (T, Span) {
        let (delay_before, start) = run_delay_at(Instant::now);
        let out = work();
        let (delay_after, end) = run_delay_at(Instant::now);
        let span = Span {
            wall: end - start,
            runqueue_ns: delay_after.saturating_sub(delay_before),
        };
        (out, span)
    }
}

/// The calling thread's run delay so far, read as a mark: [`RunDelayMark::since`] gives the
/// time the thread has spent waiting for a CPU after it. A connection's server thread marks
/// it after each response, so the time it waited for a CPU before its next handler began
/// (after the wakeup that delivered the request, or a preemption while it read and parsed)
/// is the server's own measurement too.
pub struct RunDelayMark(u64);

impl RunDelayMark {
    pub fn now() -> Self {
        Self(run_delay_ns())
    }

    /// Run delay of the calling thread since the mark (taken on the same thread).
    pub fn since(&self) -> u64 {
        run_delay_ns().saturating_sub(self.0)
    }
}

/// `clock()` and the thread's run delay at that instant. `run_delay` grows when a wait for a
/// CPU ends, so a preemption between reading it and reading the clock would put that wait
/// on the wrong side: read it on both sides of the clock until no wait ended in between.
fn run_delay_at(clock: impl Fn() -> Instant) -> (u64, Instant) {
    loop {
        let before = run_delay_ns();
        let now = clock();
        if run_delay_ns() == before {
            return (before, now);
        }
    }
}

/// This thread's total time spent runnable, waiting for a CPU: the second field of
/// /proc/thread-self/schedstat (`sched_info.run_delay`, fs/proc/base.c `proc_pid_schedstat`).
fn run_delay_ns() -> u64 {
    fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

thread_local! {
    /// The calling thread's perf task clock, opened at its first use on the thread (as its
    /// connection starts with `serve --task-clock`; else at its first measured request, so
    /// the benchmark's `/`, which does not measure, runs without one) and closed at its exit.
    static TASK_CLOCK: RefCell<Option<perf_event::Counter>> = const { RefCell::new(None) };
}

/// Time the calling thread has spent on a CPU, from the perf task clock: subtract two reads.
///
/// Not `CLOCK_THREAD_CPUTIME_ID`: that is the scheduler's `sum_exec_runtime`, charged from
/// the run queue's clock, which can be stale when the thread is switched in (the clock
/// update skipped after a wakeup preemption, `rq_clock_skip_update()`, kernel/sched/core.c,
/// Linux 6.18). After a wakeup it then charges time the thread spent off a CPU: measured
/// here, 10–30 µs in a 20 ms `/sleep`, and up to 165 µs in a `/lock` with both cores busy.
/// The task clock advances between perf's own hooks in the context switch
/// (`perf_event_task_sched_in`/`_out`, kernel/events/core.c), the moments the tracer's
/// `sched_switch` times too.
pub fn on_cpu_ns() -> io::Result<u64> {
    TASK_CLOCK.with_borrow_mut(|clock| {
        let counter = match clock {
            Some(counter) => counter,
            None => clock.insert(open_task_clock()?),
        };
        counter.read()
    })
}

/// A task clock counting the calling thread (pid 0: this thread only, not its children).
fn open_task_clock() -> io::Result<perf_event::Counter> {
    let mut counter = perf_event::Builder::new(perf_event::events::Software::TASK_CLOCK)
        .observe_self()
        .any_cpu()
        .build()?;
    counter.enable()?;
    Ok(counter)
}
