//! Requests, delimited on server-side connections: a request starts when its first bytes are
//! read (or at the wakeup that ended the read's block), its response is every write until the
//! next read of request bytes, and it ends after its last response write.

use rustc_hash::FxHashMap as HashMap;
use tracer_common::StretchRequest;

use super::{
    cause::{Breakdown, Cause},
    context::{ExecCtx, GoroutineId, Tid},
    fds::FdKind,
    sites::StackRef,
    timeline::{Snapshot, StolenTime},
    Engine, FdResolver,
};

/// A finished request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub ctx: ExecCtx,
    /// The connection's fd; `None` for an HTTP/2 stream (delimited by its handler goroutine).
    pub fd: Option<u32>,
    pub start_ns: u64,
    pub latency_ns: u64,
    pub breakdown: Breakdown,
    /// Events were lost while it was open: the breakdown may be wrong.
    pub incomplete: bool,
    /// Its context served another request at the same time (an event loop): the context's
    /// time was counted in full for each of them.
    pub shared_context: bool,
    /// Its longest blocking wait (a thread's block, a goroutine's park), if it had one.
    pub largest_wait: Option<LargestWait>,
}

/// What a request is open on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestOn {
    /// A connection, by fd: one request at a time, from its request bytes read to its last
    /// response write (HTTP/1.x, and any protocol that answers in turn).
    Connection(u32),
    /// An HTTP/2 stream, by the goroutine that runs its handler (Go's net/http): from the
    /// handler's start to the goroutine's exit.
    Stream(GoroutineId),
}

impl RequestOn {
    fn fd(self) -> Option<u32> {
        match self {
            RequestOn::Connection(fd) => Some(fd),
            RequestOn::Stream(_) => None,
        }
    }
}

/// A request's longest blocking wait: its cause, the part of it inside the request, and
/// where its context blocked (when the stack was taken).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LargestWait {
    pub cause: Cause,
    pub ns: u64,
    pub site: Option<StackRef>,
}

/// A connection's completed TLS handshake, carried by its first request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeTime {
    pub start_ns: u64,
    pub duration_ns: u64,
}

/// A context's requests still waiting for their response (read, not yet answered), and how
/// many it has opened so far: a request that sees that count move while it waits shared its
/// context with the one opened meanwhile, with no pass over the other open requests.
#[derive(Clone, Copy, Debug, Default)]
pub struct WaitingRequests {
    pub now: u32,
    pub opened: u64,
}

struct OpenRequest {
    ctx: ExecCtx,
    /// Its context's `WaitingRequests::opened` once it was opened.
    opened_as: u64,
    start: Snapshot,
    /// The last response write so far: its context's timeline when it completed.
    last_write: Option<Snapshot>,
    incomplete: bool,
    shared_context: bool,
    tls: Option<HandshakeTime>,
    largest_wait: Option<LargestWait>,
    /// Answered: its context's longest wait since its last write so far, which is inside it
    /// only if another write of its response follows.
    wait_since_write: Option<LargestWait>,
}

/// Contexts with no open request kept in `Requests::open_by_ctx` beyond twice the open
/// requests, before the empty entries are dropped (amortized: a pass per that many inserts).
const MAX_IDLE_CONTEXTS: usize = 1024;

/// Requests open on connections (by fd) and HTTP/2 streams, and those finished since last
/// taken.
#[derive(Default)]
pub(super) struct Requests {
    open: HashMap<RequestOn, OpenRequest>,
    /// The keys of `open`, by the context serving them: a context's requests are looked up
    /// at each of its waits and at its exit, without a scan of every open request. A
    /// context's entry stays when its last request closes, so that its next one (a
    /// keep-alive connection's) reuses it; [`Requests::sweep`] drops the empty ones now and then.
    open_by_ctx: HashMap<ExecCtx, Vec<RequestOn>>,
    /// The context that served each connection's last request.
    served_by: HashMap<u32, ExecCtx>,
    finished: Vec<Request>,
    /// Events were lost until this time (the newest the collector had read when it found the
    /// loss): a request opened later that started by then was open during the loss.
    lost_until: Option<u64>,
    /// Requests that never got a response (connection closed, thread exited).
    pub aborted: u64,
    /// Requests that shared their context with another open request.
    pub shared: u64,
    /// Requests the kernel side delimited and timed itself (aborted ones included).
    pub in_kernel: u64,
}

impl Requests {
    pub fn is_open(&self, fd: u32) -> bool {
        self.open.contains_key(&RequestOn::Connection(fd))
    }

    /// A request is open on `fd` and its response has begun.
    pub fn answered(&self, fd: u32) -> bool {
        self.open
            .get(&RequestOn::Connection(fd))
            .is_some_and(|r| r.last_write.is_some())
    }

    /// A request served by `ctx` is open on `fd` and its response has begun.
    pub fn answered_by(&self, fd: u32, ctx: ExecCtx) -> bool {
        self.open
            .get(&RequestOn::Connection(fd))
            .is_some_and(|r| r.ctx == ctx && r.last_write.is_some())
    }

    #[cfg(test)]
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// The connections and streams whose open request `ctx` serves.
    pub fn open_on(&self, ctx: ExecCtx) -> Vec<RequestOn> {
        self.open_by_ctx.get(&ctx).cloned().unwrap_or_default()
    }

    /// `ctx` lost `stolen` to the hypervisor: the snapshots its open requests took during
    /// that stretch count their share of it as steal.
    pub fn charge_steal(&mut self, ctx: ExecCtx, stolen: &StolenTime) {
        let Some(keys) = self.open_by_ctx.get(&ctx) else {
            return;
        };
        for on in keys {
            let Some(req) = self.open.get_mut(on) else {
                continue;
            };
            req.start.charge_steal(stolen);
            if let Some(last_write) = req.last_write.as_mut() {
                last_write.charge_steal(stolen);
            }
        }
    }

    /// `ctx`'s history since `since` was told anew (a goroutine found to have left its
    /// thread when the thread slept): the snapshots its open requests took after `since`
    /// are taken again, `at(ts)` being its breakdown at `ts` as now told.
    pub fn rebase(&mut self, ctx: ExecCtx, since: u64, at: impl Fn(u64) -> Breakdown) {
        let Some(keys) = self.open_by_ctx.get(&ctx) else {
            return;
        };
        for on in keys {
            let Some(req) = self.open.get_mut(on) else {
                continue;
            };
            for snapshot in std::iter::once(&mut req.start).chain(req.last_write.as_mut()) {
                if snapshot.ts > since {
                    snapshot.at = at(snapshot.ts);
                }
            }
        }
    }

    /// `ctx` waited `lasted` ns for `cause` until `ts`, at `site`: the longest wait so far of
    /// each open request it serves, for the part inside it (an answered one ends at its last
    /// write so far: the part of a wait after that is inside it only once another write of
    /// its response follows, and is else a wait of its context for another request).
    /// Returns the part inside the earliest of them (`None`: it serves none).
    pub fn note_wait(
        &mut self,
        ctx: ExecCtx,
        ts: u64,
        cause: Cause,
        lasted: u64,
        site: Option<StackRef>,
    ) -> Option<u64> {
        let keys = self.open_by_ctx.get(&ctx)?;
        let mut inside_earliest = None;
        for on in keys {
            let Some(req) = self.open.get_mut(on) else {
                continue;
            };
            let from = ts.saturating_sub(lasted).max(req.start.ts).min(ts);
            let answered_at = req.last_write.map_or(ts, |w| w.ts.clamp(from, ts));
            let ns = answered_at - from;
            if ns > req.largest_wait.map_or(0, |w| w.ns) {
                req.largest_wait = Some(LargestWait { cause, ns, site });
            }
            let after = ts - answered_at;
            if after > req.wait_since_write.map_or(0, |w| w.ns) {
                req.wait_since_write = Some(LargestWait {
                    cause,
                    ns: after,
                    site,
                });
            }
            inside_earliest = inside_earliest.max(Some(ns));
        }
        inside_earliest
    }

    /// `request` is open `on` a connection or stream (replacing one left open there).
    fn insert(&mut self, on: RequestOn, request: OpenRequest) {
        let ctx = request.ctx;
        if let Some(replaced) = self.open.insert(on, request) {
            self.unindex(replaced.ctx, on);
        }
        self.open_by_ctx.entry(ctx).or_default().push(on);
        if self.open_by_ctx.len() > 2 * self.open.len() + MAX_IDLE_CONTEXTS {
            self.sweep();
        }
    }

    /// `request` is open `on` a connection or stream in place of the answered one there,
    /// which is returned. Served by the same context (a keep-alive connection's next
    /// request), it takes its place without a change to the index.
    fn replace(&mut self, on: RequestOn, request: OpenRequest) -> Option<OpenRequest> {
        match self.open.get_mut(&on) {
            Some(open) if open.ctx == request.ctx => Some(std::mem::replace(open, request)),
            _ => {
                let answered = self.remove(on);
                self.insert(on, request);
                answered
            }
        }
    }

    /// The request open `on` a connection or stream, no longer open.
    fn remove(&mut self, on: RequestOn) -> Option<OpenRequest> {
        let request = self.open.remove(&on)?;
        self.unindex(request.ctx, on);
        Some(request)
    }

    /// Drops `on` from `ctx`'s open requests.
    fn unindex(&mut self, ctx: ExecCtx, on: RequestOn) {
        if let Some(keys) = self.open_by_ctx.get_mut(&ctx) {
            // Each key is there once.
            if let Some(at) = keys.iter().position(|&k| k == on) {
                keys.remove(at);
            }
        }
    }

    /// Drops the contexts that serve no open request from the index, once there are many
    /// (a context that exits or goes unseen leaves no entry behind for long).
    fn sweep(&mut self) {
        self.open_by_ctx.retain(|_, keys| !keys.is_empty());
    }

    pub fn open_keys(&self) -> Vec<RequestOn> {
        self.open.keys().copied().collect()
    }

    pub fn drain_finished(&mut self) -> std::vec::Drain<'_, Request> {
        self.finished.drain(..)
    }

    /// `fd` was closed, or is a new connection.
    pub fn forget_fd(&mut self, fd: u32) {
        self.served_by.remove(&fd);
    }

    /// Events were lost: every open request may be wrong.
    pub fn mark_incomplete(&mut self) {
        for req in self.open.values_mut() {
            req.incomplete = true;
        }
    }

    /// Events were lost at some time from `since` to `until`: every request open then may be
    /// wrong, the open ones, those finished since `since` and not taken yet, and those opened
    /// later that started by `until`.
    pub fn lost_between(&mut self, since: u64, until: u64) {
        self.mark_incomplete();
        for req in &mut self.finished {
            // Its end: its start (its handshake's, if it had one) and all its time after.
            req.incomplete |= req.start_ns + req.latency_ns >= since;
        }
        self.lost_until = self.lost_until.max(Some(until));
    }
}

/// A request the kernel side delimited and timed, served by its thread in one stretch on a
/// CPU: all of it on that CPU (a request that ended before its thread's stretch did keeps the
/// stretch's steal as on-CPU time, as here), but for the wait for it after the wakeup that
/// delivered its bytes, when its read blocked.
pub fn stretch_request(r: &StretchRequest) -> Request {
    let mut breakdown = Breakdown::default();
    breakdown[Cause::OnCpu.index()] = r.on_cpu_ns();
    breakdown[Cause::Runqueue.index()] = r.waiting_for_cpu_ns();
    Request {
        ctx: ExecCtx::Thread(Tid(r.tid)),
        fd: Some(r.fd),
        start_ns: r.start_ns,
        latency_ns: r.latency_ns,
        breakdown,
        incomplete: false,
        shared_context: r.shared_context(),
        largest_wait: None,
    }
}

impl<R: FdResolver> Engine<R> {
    /// Count requests the kernel side delimited and timed itself. The caller aggregates the
    /// completed ones (see [`StretchRequest::completed`]) with no [`Request`] built for each:
    /// a saturated event loop sends almost all its requests this way (see
    /// [`stretch_request`]).
    pub fn count_stretch_requests(&mut self, requests: &[StretchRequest]) {
        for r in requests {
            self.requests.in_kernel += 1;
            if !r.completed() {
                self.requests.aborted += 1;
            } else if r.shared_context() {
                self.requests.shared += 1;
            }
        }
    }

    /// A read returned request bytes on a connection.
    pub(super) fn request_bytes(&mut self, ts: u64, tid: Tid, fd: u32) {
        let on = RequestOn::Connection(fd);
        // An answered request open on the connection: this is the next one.
        let next = match self.requests.open.get(&on) {
            Some(req) if req.last_write.is_none() => return, // more of the same request
            Some(_) => true,
            None => false,
        };
        let ctx = self.serving_ctx(fd, self.current_ctx(tid), ts);
        let start = match (ctx, self.threads.get(tid)) {
            // A thread: from the wakeup that ended the read's block, if it blocked.
            (ExecCtx::Thread(_), Some(thread)) => match thread.last_wakeup {
                Some(woke) if woke.blocked_reading(fd) => Some(woke.at),
                _ => Some(thread.timeline.snapshot(ts)),
            },
            // A goroutine: its reads do not block (they park, for `IO wait`), so from the
            // read that returned the request, as net/http sees it.
            _ => self.ctx_snapshot(ctx, ts),
        };
        let request = start.and_then(|start| self.new_request(ctx, on, start));
        // Read by a goroutine not known since events were lost: timed on its thread.
        let request = request.map(|mut request| {
            request.incomplete |=
                matches!(ctx, ExecCtx::Thread(_)) && self.goroutines.unknown_since_loss(tid);
            request
        });
        match request {
            // In place of the answered one (a keep-alive connection's next request).
            Some(request) if next => {
                if let Some(answered) = self.requests.replace(on, request) {
                    self.settle(on, answered);
                }
            }
            Some(request) => self.requests.insert(on, request),
            None if next => self.finish(on),
            None => {}
        }
    }

    /// Goroutine `goid` starts to run an HTTP/2 stream's handler: its request, from now.
    pub(super) fn stream_handler_started(&mut self, ts: u64, goid: GoroutineId) {
        let ctx = ExecCtx::Goroutine(goid);
        if self.requests.open.contains_key(&RequestOn::Stream(goid)) {
            return; // the probe again (a morestack re-entry): the stream is open from the first
        }
        if let Some(start) = self.ctx_snapshot(ctx, ts) {
            self.open_request(ctx, RequestOn::Stream(goid), start);
        }
    }

    /// The handler goroutine of an HTTP/2 stream exits at `ts`: its request is complete (the
    /// response is handed to the connection's goroutine, which writes its last frames).
    pub(super) fn stream_handler_done(&mut self, ts: u64, goid: GoroutineId) {
        let on = RequestOn::Stream(goid);
        let Some(end) = self.ctx_snapshot(ExecCtx::Goroutine(goid), ts) else {
            return self.finish(on); // not seen running: aborted
        };
        // A stream's request has no response write of its own: it is still waiting.
        let Some(req) = self.take_open(on) else {
            return;
        };
        self.complete(on, req, end);
    }

    /// `fd` (`connection`) was moved by an HTTP/2 connection's goroutine: its streams are the
    /// requests. A request opened on it by its first reads (the connection preface) is
    /// none, and what its handshake left for a first request goes.
    pub(super) fn connection_carries_http2(&mut self, fd: u32, connection: u64) {
        self.fds
            .set_connection(fd, connection, FdKind::Http2Connection);
        self.no_request_on(fd);
    }

    /// No request is on connection `fd`: the one open there is none, and what its TLS
    /// handshake left for a first request goes.
    fn no_request_on(&mut self, fd: u32) {
        let _ = self.take_open(RequestOn::Connection(fd));
        self.tls.forget_fd(fd);
    }

    /// Goroutine `goid` serves an HTTP/2 connection (its probe, at the serve loop's entry):
    /// no request is on a connection it read, and its TLS handshake is left for none. Its
    /// handshake's last read can carry the client's connection preface with the Finished
    /// (a busy server reads both at once): that read would open a request at the
    /// connection's next write, which another goroutine makes (the server's SETTINGS), with
    /// no read of the marked goroutine in between to say the connection is HTTP/2's.
    pub(super) fn goroutine_serves_http2(&mut self, goid: GoroutineId) {
        let ctx = ExecCtx::Goroutine(goid);
        let opened = self
            .requests
            .open_on(ctx)
            .into_iter()
            .filter_map(|on| match on {
                RequestOn::Connection(fd) => Some(fd),
                RequestOn::Stream(_) => None,
            });
        let fds: Vec<u32> = opened.chain(self.tls.ended_past_finished_by(ctx)).collect();
        for fd in fds {
            self.no_request_on(fd);
        }
    }

    /// The request open `on` a connection or stream, no longer open: if it was still
    /// waiting for its response, its context waits for one fewer.
    fn take_open(&mut self, on: RequestOn) -> Option<OpenRequest> {
        let req = self.requests.remove(on)?;
        if req.last_write.is_none() {
            if let Some(waiting) = self.open_requests_mut(req.ctx) {
                waiting.now = waiting.now.saturating_sub(1);
            }
        }
        Some(req)
    }

    /// The context that serves a request read on `fd` by `reader`: the goroutine that served
    /// the connection's previous request, when another goroutine read it (net/http's
    /// background read reads on behalf of the connection's goroutine, then exits), else the
    /// reader.
    fn serving_ctx(&self, fd: u32, reader: ExecCtx, ts: u64) -> ExecCtx {
        match self.requests.served_by.get(&fd) {
            Some(&server @ ExecCtx::Goroutine(_))
                if server != reader
                    && matches!(reader, ExecCtx::Goroutine(_))
                    && self.ctx_snapshot(server, ts).is_some() =>
            {
                server
            }
            _ => reader,
        }
    }

    /// Open a request `on` a connection or stream, served by `ctx`, that started at `start`.
    pub(super) fn open_request(&mut self, ctx: ExecCtx, on: RequestOn, start: Snapshot) {
        if let Some(request) = self.new_request(ctx, on, start) {
            self.requests.insert(on, request);
        }
    }

    /// A request `on` a connection or stream, served by `ctx`, that started at `start`,
    /// counted among its context's waiting ones, to be put in the open set; `None` where no
    /// request opens (an HTTP/2 connection, a context not followed).
    fn new_request(&mut self, ctx: ExecCtx, on: RequestOn, start: Snapshot) -> Option<OpenRequest> {
        if let RequestOn::Connection(fd) = on {
            if self.fds.known(fd) == Some(FdKind::Http2Connection) {
                return None; // its streams are the requests
            }
        }
        let waiting = self.open_requests_mut(ctx)?;
        waiting.now += 1;
        waiting.opened += 1;
        // Another request of its context is waiting; the ones opened while it waits are
        // noticed as it is answered.
        let shared_context = waiting.now > 1;
        let opened_as = waiting.opened;
        let tls = on.fd().and_then(|fd| {
            self.requests.served_by.insert(fd, ctx);
            self.tls.take_pending(fd)
        });
        // Its connection's handshake lost events: it may start at one of its flights.
        let after_lost_handshake = on
            .fd()
            .is_some_and(|fd| self.tls.first_request_after_loss(fd));
        Some(OpenRequest {
            ctx,
            opened_as,
            start,
            last_write: None,
            incomplete: after_lost_handshake
                || self
                    .requests
                    .lost_until
                    .is_some_and(|until| start.ts <= until),
            shared_context,
            tls,
            largest_wait: None,
            wait_since_write: None,
        })
    }

    /// A write sent response bytes on a connection.
    pub(super) fn response_bytes(&mut self, ts: u64, fd: u32) {
        let on = RequestOn::Connection(fd);
        let Some(req) = self.requests.open.get(&on) else {
            return; // a greeting or an unsolicited write: no request is open
        };
        let (ctx, answering, opened_as) = (req.ctx, req.last_write.is_none(), req.opened_as);
        let Some(now) = self.ctx_snapshot(ctx, ts) else {
            return;
        };
        let mut opened_meanwhile = false;
        if answering {
            if let Some(waiting) = self.open_requests_mut(ctx) {
                waiting.now = waiting.now.saturating_sub(1);
                opened_meanwhile = waiting.opened > opened_as;
            }
        }
        if let Some(req) = self.requests.open.get_mut(&on) {
            req.last_write = Some(now);
            req.shared_context |= opened_meanwhile;
            // Its response goes on: its context's waits since its last write were its own.
            if let Some(wait) = req.wait_since_write.take() {
                if wait.ns > req.largest_wait.map_or(0, |w| w.ns) {
                    req.largest_wait = Some(wait);
                }
            }
        }
    }

    /// The request `on` a connection or stream is over: finished if answered, else aborted.
    pub(super) fn finish(&mut self, on: RequestOn) {
        if let Some(req) = self.take_open(on) {
            self.settle(on, req);
        }
    }

    /// `req`, no longer open `on` a connection or stream, is over: finished if answered,
    /// else aborted.
    fn settle(&mut self, on: RequestOn, req: OpenRequest) {
        match req.last_write {
            Some(end) => self.complete(on, req, end),
            None => self.requests.aborted += 1,
        }
    }

    /// `req` ended at `end`: its breakdown, among the finished requests.
    fn complete(&mut self, on: RequestOn, req: OpenRequest, end: Snapshot) {
        let mut breakdown = end.since(&req.start);
        if let ExecCtx::Goroutine(_) = req.ctx {
            // A goroutine's timeline has gaps where it was not seen (a lost event, a thread
            // gone): the request's time there is `other`, so its causes still sum to its
            // wall-clock latency.
            let seen: u64 = breakdown.iter().sum();
            let wall = end.ts.saturating_sub(req.start.ts);
            breakdown[Cause::Other.index()] += wall.saturating_sub(seen);
        }
        let mut start_ns = req.start.ts;
        if let Some(tls) = req.tls {
            breakdown[Cause::TlsHandshake.index()] = tls.duration_ns;
            start_ns = tls.start_ns;
        }
        if req.shared_context {
            self.requests.shared += 1;
        }
        self.requests.finished.push(Request {
            ctx: req.ctx,
            fd: on.fd(),
            start_ns,
            latency_ns: breakdown.iter().sum(),
            breakdown,
            incomplete: req.incomplete,
            shared_context: req.shared_context,
            largest_wait: req.largest_wait,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_request(ctx: ExecCtx) -> OpenRequest {
        OpenRequest {
            ctx,
            opened_as: 1,
            start: Snapshot {
                ts: 0,
                at: Breakdown::default(),
            },
            last_write: None,
            incomplete: false,
            shared_context: false,
            tls: None,
            largest_wait: None,
            wait_since_write: None,
        }
    }

    /// A connection's next request takes the answered one's place: in place when the same
    /// context serves it, else moved in the index to the context that does.
    #[test]
    fn the_next_request_replaces_the_answered_one() {
        let mut requests = Requests::default();
        let on = RequestOn::Connection(5);
        let (first, second) = (ExecCtx::Thread(Tid(1)), ExecCtx::Thread(Tid(2)));
        requests.insert(on, open_request(first));
        let answered = requests.replace(on, open_request(first)).expect("answered");
        assert_eq!(answered.ctx, first);
        assert_eq!(requests.open_by_ctx[&first], [on]);
        let answered = requests
            .replace(on, open_request(second))
            .expect("answered");
        assert_eq!(answered.ctx, first);
        assert!(requests.open_by_ctx[&first].is_empty());
        assert_eq!(requests.open_by_ctx[&second], [on]);
        assert_eq!(requests.open[&on].ctx, second);
        assert_eq!(requests.open.len(), 1);
    }

    /// A keep-alive context keeps its index entry between requests, but contexts that come
    /// and go (a thread or goroutine per connection) leave no entry behind for long.
    #[test]
    fn the_index_of_contexts_stays_bounded() {
        let mut requests = Requests::default();
        // A sweep runs at an insert that finds more than 2 x open + MAX_IDLE_CONTEXTS.
        let bound = 2 + MAX_IDLE_CONTEXTS;
        for tid in 0..20_000 {
            let on = RequestOn::Connection(tid % 7);
            requests.insert(on, open_request(ExecCtx::Thread(Tid(tid))));
            requests.remove(on);
            assert!(
                requests.open_by_ctx.len() <= bound,
                "{} contexts indexed after {tid}",
                requests.open_by_ctx.len()
            );
        }
        assert!(requests.open.is_empty());
        // The same context again and again: one entry, reused.
        let keep_alive = ExecCtx::Thread(Tid(99_999));
        for _ in 0..10 {
            let on = RequestOn::Connection(3);
            requests.insert(on, open_request(keep_alive));
            assert_eq!(requests.open_by_ctx[&keep_alive], [on]);
            requests.remove(on);
        }
        assert!(requests.open_by_ctx[&keep_alive].is_empty());
    }
}
