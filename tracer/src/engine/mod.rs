//! The attribution engine: turns a time-ordered stream of scheduler, syscall and TLS events
//! into per-request latency breakdowns. Pure logic, no kernel or /proc access (fd kinds come
//! through [`FdResolver`]), so it is unit-tested with synthetic event sequences.
//!
//! Every execution context ([`ExecCtx`]: a thread today) has a [`timeline`]: each nanosecond
//! since the context was first seen is credited to exactly one [`Cause`]. A request's
//! breakdown is the difference of two snapshots of its context's timeline, so its causes
//! always sum to its latency.
//!
//! - [`threads`]: thread timelines from the scheduler's events;
//! - [`requests`]: requests delimited on server-side connections;
//! - [`goroutines`]: goroutine timelines from Go's scheduler, for Go targets;
//! - [`locks`]: futex and Go semaphore contention, waiters and wakers;
//! - [`tls`]: TLS handshakes (timed, and kept out of requests).

pub mod cause;
pub mod context;
pub mod event;
pub mod fds;
mod goroutines;
pub mod locks;
pub mod requests;
pub mod sites;
mod tally;
mod threads;
pub mod timeline;
pub mod tls;

pub use cause::{syscall_name, Breakdown, Cause, CAUSES};
pub use context::{ExecCtx, GoroutineId, Tid};
pub use event::{
    Event, EventKind, GoProbe, GoSched, InSyscall, Interrupt, SocketOrigin, SslCall, SyscallReturn,
    Waker, Woken,
};
pub use fds::{FdKind, FdResolver};
pub use locks::{FutexLocks, GoLocks, GoWaker, LISTED_LOCKS, LISTED_PER_LOCK};
pub use requests::{LargestWait, Request, RequestOn};
pub use tally::Tally;
pub use tls::{Handshake, TlsKind, TlsPhases, TlsVersion};

use rustc_hash::FxHashMap as HashMap;
use tracer_common::{is_read, is_write, EAGAIN};

use fds::FdTable;
use goroutines::Goroutines;
use requests::Requests;
use sites::{StackRef, WaitSites};
use threads::Threads;
use tls::TlsState;

/// A per-event measurement that needs no request boundaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// A futex wait syscall, entry to return.
    Futex(u64),
    /// Runnable until on a CPU (after a wakeup or a preemption).
    Runqueue(u64),
    /// Blocked inside a read-family syscall on a socket.
    SocketRead(u64),
}

/// The attribution engine. Feed it events in time order with [`Engine::handle`]; take finished
/// requests, wait samples and handshakes with the `take_*` methods.
pub struct Engine<R> {
    fds: FdTable<R>,
    threads: Threads,
    goroutines: Goroutines,
    requests: Requests,
    tls: TlsState,
    waits: Vec<Wait>,
    /// Futex contention by address.
    pub locks: FutexLocks,
    /// A Go target's semaphore contention (`sync.Mutex`, ...), by the semaphore's address.
    pub go_locks: GoLocks,
    /// Request time in blocking waits, by cause and call site.
    pub wait_sites: WaitSites,
    /// Events that carried a user stack (a blocking switch-out, a park, a release).
    pub stacks_taken: u64,
    /// Time blocked in `other`, by the syscall the thread was in (`None`: not in a traced
    /// syscall).
    pub other_by_syscall: HashMap<Option<u32>, u64>,
}

impl<R: FdResolver> Engine<R> {
    pub fn new(resolver: R) -> Self {
        Engine {
            fds: FdTable::new(resolver),
            threads: Threads::default(),
            goroutines: Goroutines::default(),
            requests: Requests::default(),
            tls: TlsState::default(),
            waits: Vec::new(),
            locks: FutexLocks::default(),
            go_locks: GoLocks::default(),
            wait_sites: WaitSites::default(),
            stacks_taken: 0,
            other_by_syscall: HashMap::default(),
        }
    }

    /// `--sample N`: the kernel side reports the reads and writes of one connection in N.
    pub fn set_connections_sampled(&mut self, sampled: bool) {
        self.tls.connections_sampled = sampled;
    }

    /// Tell the engine what an fd is.
    pub fn set_fd_kind(&mut self, fd: u32, kind: FdKind) {
        self.fds.set(fd, kind);
    }

    /// `fd` is a server-side connection found in /proc at attach time, the socket `inode`.
    pub fn seed_connection(&mut self, fd: u32, inode: u64) {
        self.fds.seed_connection(fd, inode);
    }

    #[cfg(test)]
    pub fn take_requests(&mut self) -> Vec<Request> {
        self.drain_requests().collect()
    }

    #[cfg(test)]
    pub fn take_waits(&mut self) -> Vec<Wait> {
        self.drain_waits().collect()
    }

    /// The requests finished since the last drain (the buffer keeps its capacity).
    pub fn drain_requests(&mut self) -> impl Iterator<Item = Request> + '_ {
        self.requests.drain_finished()
    }

    /// The waits ended since the last drain.
    pub fn drain_waits(&mut self) -> impl Iterator<Item = Wait> + '_ {
        self.waits.drain(..)
    }

    pub fn take_handshakes(&mut self) -> Vec<Handshake> {
        self.tls.take_done()
    }

    /// Requests that never got a response (connection closed, thread exited).
    pub fn aborted(&self) -> u64 {
        self.requests.aborted
    }

    /// Requests the kernel side delimited and timed itself.
    pub fn in_kernel(&self) -> u64 {
        self.requests.in_kernel
    }

    /// Requests that shared their context with another open request.
    pub fn shared(&self) -> u64 {
        self.requests.shared
    }

    /// Requests were timed on goroutines (Go's scheduler was seen), not threads.
    pub fn on_goroutines(&self) -> bool {
        self.goroutines.seen()
    }

    /// Time goroutines spent parked, by Go's wait reason.
    pub fn go_parked_by_reason(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.goroutines.parked_by_reason()
    }

    #[cfg(test)]
    pub fn open_requests(&self) -> usize {
        self.requests.open_count()
    }

    pub fn handle(&mut self, event: Event) {
        if event.kind.stack().is_some() {
            self.stacks_taken += 1;
        }
        let Event { ts, tid, kind } = event;
        match kind {
            EventKind::SwitchOut {
                state,
                syscall,
                stack,
                cpu_steal,
                run_delay,
            } => {
                self.switch_out(ts, tid, state, syscall, stack, cpu_steal);
                self.note_run_delay_at_block(tid, ts, run_delay);
            }
            EventKind::SwitchIn {
                cpu_steal,
                woken,
                run_delay,
            } => {
                let woken = woken.or_else(|| self.wakeup_from_run_delay(tid, ts, run_delay));
                if let Some(woken) = woken {
                    self.woken_before_switch_in(tid, woken);
                }
                self.switch_in(ts, tid, cpu_steal);
            }
            EventKind::Wakeup { waker } => self.wakeup(ts, tid, waker, None),
            EventKind::Syscall(sys) => self.syscall(ts, tid, sys),
            EventKind::HandedOverRead { read, woken } => {
                if !woken {
                    self.forget_wakeup(tid);
                }
                self.syscall(ts, tid, read);
            }
            EventKind::StretchTakesConnection { fd, connection } => {
                if self.note_socket(fd, connection, SocketOrigin::TcpServer) == FdKind::Connection {
                    self.finish(RequestOn::Connection(fd));
                }
            }
            EventKind::ThreadNew => self.thread_new(ts, tid),
            EventKind::ThreadExit { .. } => self.thread_exit(ts, tid),
            EventKind::OpenSsl { ssl, call } => self.ssl_call(ts, tid, ssl, call),
            EventKind::GoHandshake { g, probe } => match probe {
                GoProbe::Enter => self.go_handshake_enter(ts, tid, g),
                GoProbe::Return { error } => self.go_handshake_return(ts, tid, g, error),
            },
            EventKind::Go(event) => self.go_sched(ts, tid, event),
            EventKind::Lost => {
                self.tls.lost();
                self.goroutines_lost();
                // The world's restart may be among the lost records: it runs from here, or
                // every runnable goroutine would wait for the GC until the next stop ends.
                self.start_the_world(ts);
                self.requests.mark_incomplete();
            }
        }
    }

    /// A wait of `ctx` for `cause` at `site` lasted `lasted` ns until `ts`: the part of it
    /// inside a request `ctx` serves is that request's time at that site.
    fn note_wait_site(
        &mut self,
        ctx: ExecCtx,
        ts: u64,
        cause: Cause,
        lasted: u64,
        site: Option<StackRef>,
    ) {
        if self.open_requests_mut(ctx).is_none_or(|open| open.now == 0) {
            return;
        }
        if let Some(inside) = self.requests.note_wait(ctx, ts, cause, lasted, site) {
            self.wait_sites.add(cause, site, inside);
        }
    }

    /// The kernel side lost events at some time from `since` to `until` (found by its loss
    /// counters, which say how many, not when): every request open then is marked
    /// incomplete, including those that finished meanwhile and have not been taken, and
    /// those still to be opened from events up to `until`.
    pub fn lost_between(&mut self, since: u64, until: u64) {
        self.requests.lost_between(since, until);
    }

    /// End of trace: requests that had their response written are complete.
    pub fn finish_all(&mut self) {
        self.settle_sleeps();
        for on in self.requests.open_keys() {
            self.finish(on);
        }
    }

    fn syscall(&mut self, ts: u64, tid: Tid, sys: SyscallReturn) {
        self.syscall_returned(ts, tid);
        // Socket I/O is goroutine code: a thread that slept in a futex kept its goroutine.
        self.kept_by_thread(tid);
        let mut kind = self.note_socket(sys.fd, sys.connection, sys.origin);
        if kind == FdKind::Connection
            && self.on_goroutines()
            && self.serves_http2(self.current_ctx(tid))
        {
            kind = FdKind::Http2Connection;
            self.connection_carries_http2(sys.fd, sys.connection);
        }
        let handshake = self.tls_io(ts, tid, sys) || self.ssl_flight(tid, sys);
        if !handshake && kind == FdKind::Connection {
            self.connection_io(ts, tid, sys);
        }
        // A wakeup starts only the socket I/O right after it (a read that blocked).
        self.forget_wakeup(tid);
    }

    /// A read or write on a server-side connection, outside any TLS handshake.
    fn connection_io(&mut self, ts: u64, tid: Tid, sys: SyscallReturn) {
        let (fd, nr, ret) = (sys.fd, sys.nr, sys.ret);
        if is_read(nr) {
            if ret > 0 {
                if !self.tls_wire_read(ts, tid, fd, ret, sys.tls_record) {
                    self.request_bytes(ts, tid, fd);
                }
            } else if ret == 0 && self.requests.is_open(fd) {
                self.finish(RequestOn::Connection(fd)); // the peer closed
            } else if ret == -EAGAIN && self.requests.answered_by(fd, self.current_ctx(tid)) {
                // Back to reading a connection it has answered, which has nothing yet
                // (a non-blocking reader: Go's net/http, between keep-alive requests).
                // Only the serving context's own read: net/http's background read runs
                // in another goroutine while a handler may still write.
                self.finish(RequestOn::Connection(fd));
            }
        } else if is_write(nr) && ret > 0 && !self.tls_wire_write(ts, fd, sys.tls_record) {
            self.response_bytes(ts, fd);
        }
    }

    /// `fd` moved bytes on `connection`. Accepts and closes are not hooked (no syscall hook
    /// at all: see tracer-ebpf `probes/sockets.rs`), so another connection behind a known fd
    /// is the previous one closed and a new one in its place, and a socket is a connection to
    /// serve when the kernel side saw it created as the server side of a TCP connection (or
    /// /proc says so, for a connection opened before the socket hooks were attached). Returns
    /// what `fd` is now.
    fn note_socket(&mut self, fd: u32, connection: u64, origin: SocketOrigin) -> FdKind {
        let seeded = match self.fds.known_connection(fd) {
            Some((kind, Some(known))) if known == connection => return kind,
            Some((_, Some(_))) => {
                self.connection_gone(fd);
                false
            }
            // Found open at attach time (or by a lookup): still that connection, unless
            // its number was closed unseen and is another socket's now, which the kernel
            // side could not place either.
            Some((kind, None)) => {
                kind == FdKind::Connection
                    && (origin != SocketOrigin::Unknown
                        || self.fds.seeded_connection_still_open(fd))
            }
            // A socket the kernel side never saw created was opened before its hook was
            // attached: /proc says whether it is a connection to serve. The connections
            // listed before attaching are already known; this is one accepted while the
            // programs were being attached.
            None if origin == SocketOrigin::Unknown => self.fds.kind(fd) == FdKind::Connection,
            None => false,
        };
        let kind = match origin {
            SocketOrigin::TcpServer => FdKind::Connection,
            SocketOrigin::Unknown if seeded => FdKind::Connection,
            SocketOrigin::TcpClient | SocketOrigin::Unknown => FdKind::Socket,
        };
        self.fds.set_connection(fd, connection, kind);
        kind
    }

    /// The connection last seen behind `fd` was closed (unseen): its number now holds
    /// another file or connection.
    fn connection_gone(&mut self, fd: u32) {
        self.finish(RequestOn::Connection(fd)); // its close was not seen
        self.tls.forget_fd(fd);
        self.requests.forget_fd(fd);
    }

    /// The thread's last wakeup has been taken by the socket I/O that followed it, or is not
    /// the start of anything.
    fn forget_wakeup(&mut self, tid: Tid) {
        if let Some(thread) = self.threads.get_mut(tid) {
            thread.last_wakeup = None;
        }
    }
}

#[cfg(test)]
mod tests;
