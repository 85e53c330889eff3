//! Go `crypto/tls` handshakes, from uprobes on the handshake function's entry and RETs,
//! keyed by the goroutine.
//!
//! A goroutine hops between threads: when its read finds no data (EAGAIN) it parks in Go's
//! netpoller and its thread runs other goroutines; when the peer's flight arrives, any thread
//! may resume it. So a handshake is timed on the goroutine's [`GoroutineTimeline`]: each
//! stretch on a thread adds that thread's own timeline (cpu, runqueue, other), each park in
//! the netpoller adds `net_io` (the phases' `peer_wait`).
//!
//! The handshake's connection is the first socket its goroutine reads or writes after the
//! entry (the ClientHello read for a server); from then on every read and write on it during
//! the handshake is a handshake flight, never a request.

use rustc_hash::FxHashMap as HashMap;
use tracer_common::{is_read, record_content, tls_content, EAGAIN};

use super::{
    super::{
        cause::Cause,
        context::{ExecCtx, GoroutineId, Tid},
        event::SyscallReturn,
        fds::FdKind,
        threads::Threads,
        timeline::{GoroutineTimeline, RunState},
        Engine, FdResolver,
    },
    framing::read_past_finished,
    TlsPhases,
};

/// A Go handshake in progress.
struct GoHandshake {
    start_ts: u64,
    fd: Option<u32>,
    timeline: GoroutineTimeline,
    /// Its goroutine's id, when Go's scheduler is followed (the handshake is keyed by the
    /// `runtime.g` the entry's r14 held; Go's `execute` reports the goroutine's id).
    goid: Option<u64>,
    /// The last read that returned data went past the client's Finished: the first request
    /// came with it.
    read_past_finished: bool,
}

/// Go handshakes in progress, by goroutine; the goroutine each thread runs one for; the
/// connection each is on.
#[derive(Default)]
pub(in crate::engine) struct GoHandshakes {
    by_goroutine: HashMap<GoroutineId, GoHandshake>,
    by_thread: HashMap<Tid, GoroutineId>,
    by_fd: HashMap<u32, GoroutineId>,
    /// The handshakes' goroutines by id (an entry whose handshake is gone, or is another
    /// goroutine's since, is stale: checked against the handshake's `goid` on use).
    by_goid: HashMap<u64, GoroutineId>,
}

impl GoHandshakes {
    pub fn any(&self) -> bool {
        !self.by_goroutine.is_empty()
    }

    /// The connection `fd` closed: forget its handshake.
    pub fn forget_fd(&mut self, fd: u32) {
        if let Some(g) = self.by_fd.remove(&fd) {
            if let Some(goid) = self.by_goroutine.remove(&g).and_then(|h| h.goid) {
                self.by_goid.remove(&goid);
            }
        }
    }

    pub fn forget_thread(&mut self, tid: Tid) {
        self.by_thread.remove(&tid);
    }

    /// The connections of the handshakes in progress.
    pub fn connections(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_fd.keys().copied()
    }

    /// Events were lost: a RET may be among them. Forget every Go handshake rather than
    /// keep swallowing a connection's reads and writes as handshake flights.
    pub fn forget_all(&mut self) {
        self.by_goroutine.clear();
        self.by_thread.clear();
        self.by_fd.clear();
        self.by_goid.clear();
    }

    /// Thread `tid` runs goroutine `goid` from `ts` (Go's `execute`). Another goroutine: the
    /// handshake goroutine taken to run there has left it (parked, or preempted: at its
    /// entry's stack check, it enters again wherever it resumes), and the thread's socket I/O
    /// is no longer its. A handshake's own goroutine, resumed before its first socket I/O:
    /// the thread's socket I/O is its again (its connection is still to be found there).
    pub fn thread_runs(&mut self, tid: Tid, ts: u64, goid: u64, threads: &Threads) {
        let own = |h: &GoHandshake| h.goid == Some(goid);
        if let Some(&g) = self.by_thread.get(&tid) {
            if self.by_goroutine.get(&g).is_some_and(own) {
                return; // its own goroutine, on the thread it runs on
            }
            self.by_thread.remove(&tid);
            if let Some(mut h) = self.by_goroutine.remove(&g) {
                if h.timeline.thread() == Some(tid) {
                    h.timeline.leave_thread(threads.snapshot(tid, ts));
                }
                self.by_goroutine.insert(g, h);
            }
        }
        let Some(&g) = self.by_goid.get(&goid) else {
            return;
        };
        let Some(mut h) = self.by_goroutine.remove(&g) else {
            self.by_goid.remove(&goid); // its handshake is over
            return;
        };
        if own(&h) && h.fd.is_none() && h.timeline.thread().is_none() {
            self.run_on(&mut h, g, tid, ts, threads);
        }
        self.by_goroutine.insert(g, h);
    }

    /// End `g`'s stretch on its thread at `ts`.
    fn leave_thread(&mut self, h: &mut GoHandshake, g: GoroutineId, ts: u64, threads: &Threads) {
        let now = h
            .timeline
            .thread()
            .and_then(|tid| threads.snapshot(tid, ts));
        if let Some(left) = h.timeline.leave_thread(now) {
            if self.by_thread.get(&left) == Some(&g) {
                self.by_thread.remove(&left);
            }
        }
    }

    /// `g` runs on `tid` from `ts`.
    fn run_on(
        &mut self,
        h: &mut GoHandshake,
        g: GoroutineId,
        tid: Tid,
        ts: u64,
        threads: &Threads,
    ) {
        let now = threads.snapshot(tid, ts);
        h.timeline.run_on(ts, tid, now);
        if now.is_some() {
            self.by_thread.insert(tid, g);
        }
    }

    /// The handshake whose connection `fd` is, or, on its goroutine's first socket I/O since
    /// the entry, the one thread `tid` runs (which then takes `fd` as its connection).
    fn claim(
        &mut self,
        tid: Tid,
        fd: u32,
        sys: &SyscallReturn,
        kind: impl FnOnce() -> FdKind,
    ) -> Option<GoroutineId> {
        if let Some(&g) = self.by_fd.get(&fd) {
            return Some(g);
        }
        let &g = self.by_thread.get(&tid)?;
        // A handshake's first socket I/O moves a handshake record (the ClientHello), or is a
        // read that found nothing yet.
        let first_flight = record_content(sys.tls_record) == tls_content::HANDSHAKE
            || (is_read(sys.nr) && sys.ret == -EAGAIN);
        let h = self.by_goroutine.get_mut(&g)?;
        if !first_flight || !matches!(kind(), FdKind::Connection | FdKind::Socket) || h.fd.is_some()
        {
            return None;
        }
        h.fd = Some(fd);
        self.by_fd.insert(fd, g);
        Some(g)
    }
}

impl<R: FdResolver> Engine<R> {
    /// `serverHandshake` / `clientHandshake` was entered by goroutine `g` on thread `tid`.
    pub(in crate::engine) fn go_handshake_enter(&mut self, ts: u64, tid: Tid, g: GoroutineId) {
        self.threads.seen(tid, ts, RunState::Running);
        let go = &mut self.tls.go;
        if let Some(mut h) = go.by_goroutine.remove(&g) {
            if h.fd.is_none() {
                // The entry again before any socket I/O: the same call, run again from its
                // entry by `morestack`, after Go grew the goroutine's stack (on the same
                // thread, at once) or preempted it at this very stack check (`newstack`:
                // `gopreempt_m`, or `preemptPark` for a stack scan), which resumes it from
                // its entry later, on any thread. It began at the first entry; its wait
                // since it left its thread is on no thread's timeline.
                if h.timeline.thread() != Some(tid) {
                    if let Some(left) = h.timeline.leave_thread(None) {
                        if go.by_thread.get(&left) == Some(&g) {
                            go.by_thread.remove(&left);
                        }
                    }
                    go.run_on(&mut h, g, tid, ts, &self.threads);
                }
                go.by_goroutine.insert(g, h);
                return;
            }
            // A handshake whose RET was never seen (lost, or a panic): forget it.
            if let Some(fd) = h.fd {
                go.by_fd.remove(&fd);
            }
        }
        let Some(start) = self.threads.snapshot(tid, ts) else {
            return;
        };
        let goid = self.goroutines.running_on(tid);
        if let Some(goid) = goid {
            go.by_goid.insert(goid, g);
        }
        go.by_goroutine.insert(
            g,
            GoHandshake {
                start_ts: ts,
                fd: None,
                timeline: GoroutineTimeline::running_on(tid, start),
                goid,
                read_past_finished: false,
            },
        );
        go.by_thread.insert(tid, g);
    }

    /// A RET of the handshake function: the handshake is over. `error` is the returned
    /// error's type word: not 0, the handshake failed, and it is not counted.
    pub(in crate::engine) fn go_handshake_return(
        &mut self,
        ts: u64,
        tid: Tid,
        g: GoroutineId,
        error: i64,
    ) {
        let go = &mut self.tls.go;
        let Some(mut h) = go.by_goroutine.remove(&g) else {
            return; // it began before the tracer attached
        };
        go.leave_thread(&mut h, g, ts, &self.threads);
        h.timeline.end_park(ts);
        if let Some(goid) = h.goid {
            go.by_goid.remove(&goid);
        }
        if go.by_thread.get(&tid) == Some(&g) {
            go.by_thread.remove(&tid);
        }
        if let Some(fd) = h.fd {
            go.by_fd.remove(&fd);
        }
        if error != 0 {
            return; // a failed handshake (a scanner, a plaintext request, a bad certificate)
        }
        let total = ts.saturating_sub(h.start_ts);
        let mut phases = TlsPhases::from_breakdown(&h.timeline.accrued());
        phases.fit(total);
        self.handshake_done(
            ExecCtx::Goroutine(g),
            h.fd,
            h.fd.is_some(),
            h.start_ts,
            phases,
        );
        if let Some(fd) =
            h.fd.filter(|fd| self.fds.known(*fd) == Some(FdKind::Connection))
        {
            self.handshake_pending(fd, h.start_ts, total);
            if h.read_past_finished {
                self.handshake_ended_past_finished(tid, fd, ts);
            }
        }
    }

    /// A read or write returned: returns true when it was a Go handshake's flight.
    pub(in crate::engine) fn go_handshake_io(
        &mut self,
        ts: u64,
        tid: Tid,
        sys: SyscallReturn,
    ) -> bool {
        let fd = sys.fd;
        let known = self.tls.go.by_fd.contains_key(&fd);
        let fds = &mut self.fds;
        let Some(g) = self.tls.go.claim(tid, fd, &sys, || fds.kind(fd)) else {
            return false;
        };
        if !known {
            // The goroutine's first socket I/O since the entry: its connection. The uprobes
            // time this handshake, so the record framing must not.
            self.tls.timed_by_uprobes(fd);
        }
        let go = &mut self.tls.go;
        let Some(mut h) = go.by_goroutine.remove(&g) else {
            return false;
        };
        if h.timeline.thread().is_some_and(|thread| thread != tid) {
            // It moved to another thread without parking (preempted, or its thread went
            // into a blocking syscall): the old stretch ends here (Go's socket syscalls do
            // not block: this one began a moment ago).
            go.leave_thread(&mut h, g, ts, &self.threads);
        }
        if h.timeline.thread().is_none() {
            go.run_on(&mut h, g, tid, ts, &self.threads);
        }
        if sys.ret == -EAGAIN {
            go.leave_thread(&mut h, g, ts, &self.threads);
            h.timeline.park(ts, Cause::NetIo);
        } else if is_read(sys.nr) && sys.ret > 0 {
            h.read_past_finished = read_past_finished(sys.ret, sys.tls_record);
        }
        go.by_goroutine.insert(g, h);
        true
    }
}
