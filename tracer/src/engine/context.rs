//! Execution contexts: what a request is timed on. A kernel thread today; a goroutine once Go
//! scheduling is traced (a goroutine hops between threads, so its time is the time of
//! whichever thread runs it, see [`super::timeline::GoroutineTimeline`]).

use std::fmt;

/// A kernel thread id (the kernel's `pid`, userspace's `gettid()`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tid(pub u32);

impl Tid {
    /// No thread: the envelope of an event that concerns none (a loss).
    pub const NONE: Tid = Tid(0);
}

impl fmt::Display for Tid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A goroutine, by the address of its `runtime.g` (what the Go probes read from r14): stable
/// for the goroutine's life, reused by a later goroutine after it exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GoroutineId(pub u64);

/// What runs code and so accrues time: a request's breakdown is the difference of two
/// snapshots of its context's timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExecCtx {
    Thread(Tid),
    Goroutine(GoroutineId),
}

impl ExecCtx {
    /// The thread, for a thread context.
    pub fn thread(self) -> Option<Tid> {
        match self {
            ExecCtx::Thread(tid) => Some(tid),
            ExecCtx::Goroutine(_) => None,
        }
    }
}
