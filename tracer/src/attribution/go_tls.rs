//! Go `crypto/tls` handshakes, from uprobes on the handshake function's entry and RETs,
//! keyed by the goroutine (`g`).
//!
//! A goroutine hops between threads: when its read finds no data (EAGAIN) it parks in Go's
//! netpoller and its thread runs other goroutines; when the peer's flight arrives, any thread
//! may resume it. So a handshake is a sequence of stretches, each on the thread that ran the
//! goroutine then:
//! - running: from the entry (or the read that resumed it) to the read that parked it (or
//!   the RET), attributed with that thread's own kernel timeline (cpu, runqueue, other);
//! - parked: from the EAGAIN to the read that resumed it: `peer_wait`.
//!
//! The handshake's connection is the first socket its goroutine reads or writes after the
//! entry (the ClientHello read for a server); from then on every read and write on it during
//! the handshake is a handshake flight, never a request.

use tracer_common::{is_read, record_content, tls_content, EAGAIN};

use super::{
    diff, read_past_finished, Breakdown, ContextId, Engine, FdKind, FdResolver, SyscallReturn,
    TlsPhases, TlsWire, WirePhase,
};

/// A Go handshake in progress.
pub(super) struct GoHandshake {
    start_ts: u64,
    fd: Option<u32>,
    /// The thread running the goroutine in this stretch, and its breakdown when it began.
    running: Option<(ContextId, Breakdown)>,
    /// Parked in the netpoller since (a read or write returned EAGAIN).
    parked_since: Option<u64>,
    phases: TlsPhases,
    /// The last read that returned data went past the client's Finished: the first request
    /// came with it.
    read_past_finished: bool,
}

/// How long a morestack re-entry can come after the first entry.
const REENTRY_NS: u64 = 100_000;

impl<R: FdResolver> Engine<R> {
    /// `serverHandshake` / `clientHandshake` was entered by goroutine `g` on thread `tid`.
    pub(super) fn go_handshake_enter(&mut self, ts: u64, tid: ContextId, g: u64) {
        if let Some(h) = self.go_handshakes.get(&g) {
            let morestack = h.fd.is_none()
                && h.running.is_some_and(|(thread, _)| thread == tid)
                && ts.saturating_sub(h.start_ts) < REENTRY_NS;
            if morestack {
                return; // the entry again after Go grew the goroutine's stack
            }
            // A handshake whose RET was never seen (lost, or a panic): forget it.
            if let Some(fd) = self.go_handshakes.remove(&g).and_then(|h| h.fd) {
                self.go_fds.remove(&fd);
            }
        }
        let Some(start) = self.contexts.get(&tid).map(|c| c.snapshot(ts)) else {
            return;
        };
        self.go_handshakes.insert(
            g,
            GoHandshake {
                start_ts: ts,
                fd: None,
                running: Some((tid, start)),
                parked_since: None,
                phases: TlsPhases::default(),
                read_past_finished: false,
            },
        );
        self.go_threads.insert(tid, g);
    }

    /// A RET of the handshake function: the handshake is over. `error` is the returned
    /// error's type word: not 0, the handshake failed, and it is not counted.
    pub(super) fn go_handshake_return(&mut self, ts: u64, tid: ContextId, g: u64, error: i64) {
        let Some(mut h) = self.go_handshakes.remove(&g) else {
            return; // it began before the tracer attached
        };
        self.go_stretch_end(&mut h, g, ts);
        if self.go_threads.get(&tid) == Some(&g) {
            self.go_threads.remove(&tid);
        }
        if let Some(fd) = h.fd {
            self.go_fds.remove(&fd);
        }
        if error != 0 {
            return; // a failed handshake (a scanner, a plaintext request, a bad certificate)
        }
        let total = ts.saturating_sub(h.start_ts);
        h.phases.fit(total);
        self.handshake_done(tid, h.fd, h.start_ts, h.phases);
        if let Some(fd) =
            h.fd.filter(|fd| self.fds.get(fd) == Some(&FdKind::Connection))
        {
            self.tls_pending.insert(fd, (h.start_ts, total));
            if h.read_past_finished {
                self.handshake_ended_past_finished(tid, fd, ts);
            }
        }
    }

    /// A read or write returned: returns true when it was a Go handshake's flight.
    pub(super) fn go_handshake_io(&mut self, ts: u64, tid: ContextId, sys: SyscallReturn) -> bool {
        let SyscallReturn {
            nr,
            arg0,
            ret,
            enter_ts,
            tls_record: record,
        } = sys;
        let fd = arg0 as u32;
        let g = match self.go_fds.get(&fd) {
            Some(g) => *g,
            None => {
                let Some(&g) = self.go_threads.get(&tid) else {
                    return false;
                };
                // A handshake's first socket I/O moves a handshake record (the ClientHello), or
                // is a read that found nothing yet.
                let first_flight = record_content(record) == tls_content::HANDSHAKE
                    || (is_read(nr) && ret == -EAGAIN);
                if !first_flight
                    || !matches!(self.fd_kind(fd), FdKind::Connection | FdKind::Socket)
                    || self.go_handshakes.get(&g).is_none_or(|h| h.fd.is_some())
                {
                    return false;
                }
                // The goroutine's first socket I/O since the entry: its connection. The
                // uprobes time this handshake, so the record framing must not.
                self.go_handshakes.get_mut(&g).expect("checked").fd = Some(fd);
                self.go_fds.insert(fd, g);
                self.tls_wire
                    .insert(fd, TlsWire::new(WirePhase::Established));
                g
            }
        };
        let Some(mut h) = self.go_handshakes.remove(&g) else {
            return false;
        };
        if h.running.is_some_and(|(thread, _)| thread != tid) {
            // It moved to another thread without parking (preempted, or its thread went
            // into a blocking syscall): the old stretch ends as this syscall began.
            self.go_stretch_end(&mut h, g, enter_ts);
        }
        if h.running.is_none() {
            if let Some(parked) = h.parked_since.take() {
                h.phases.peer_wait += enter_ts.saturating_sub(parked);
            }
            if let Some(ctx) = self.contexts.get(&tid) {
                h.running = Some((tid, ctx.snapshot(enter_ts)));
                self.go_threads.insert(tid, g);
            }
        }
        if ret == -EAGAIN {
            self.go_stretch_end(&mut h, g, ts);
            h.parked_since = Some(ts);
        } else if is_read(nr) && ret > 0 {
            h.read_past_finished = read_past_finished(ret, record);
        }
        self.go_handshakes.insert(g, h);
        true
    }

    /// End the handshake's running stretch at `ts`, adding its thread's timeline to the phases.
    fn go_stretch_end(&mut self, h: &mut GoHandshake, g: u64, ts: u64) {
        let Some((thread, start)) = h.running.take() else {
            if let Some(parked) = h.parked_since.take() {
                h.phases.peer_wait += ts.saturating_sub(parked);
            }
            return;
        };
        if self.go_threads.get(&thread) == Some(&g) {
            self.go_threads.remove(&thread);
        }
        let Some(ctx) = self.contexts.get(&thread) else {
            return;
        };
        let stretch = TlsPhases::from_breakdown(&diff(&ctx.snapshot(ts), &start));
        h.phases.add(&stretch);
    }

    /// The connection `fd` closed, or a thread exited: forget what pointed at them.
    pub(super) fn go_forget_fd(&mut self, fd: u32) {
        if let Some(g) = self.go_fds.remove(&fd) {
            self.go_handshakes.remove(&g);
        }
    }

    pub(super) fn go_forget_thread(&mut self, tid: ContextId) {
        self.go_threads.remove(&tid);
    }

    /// Events were lost: a RET may be among them. Forget every Go handshake rather than
    /// keep swallowing a connection's reads and writes as handshake flights.
    pub(super) fn go_forget_all(&mut self) {
        self.go_handshakes.clear();
        self.go_threads.clear();
        self.go_fds.clear();
    }
}
