//! The attribution engine: turns a time-ordered stream of scheduler and syscall events into
//! per-request latency breakdowns. Pure logic, no kernel or /proc access (fd kinds come through
//! [`FdResolver`]), so it is unit-tested with synthetic event sequences.
//!
//! Every execution context (a thread today; a goroutine later, keyed the same way) carries a
//! cumulative breakdown: each nanosecond since the context was first seen is credited to exactly
//! one [`Cause`]. A request's breakdown is the difference of two snapshots of its context's
//! cumulative breakdown, so its causes always sum to its latency.

mod go_tls;
mod locks;
mod tally;
mod tls_shape;

pub use locks::{Locks, LISTED_LOCKS, LISTED_PER_LOCK};
pub use tls_shape::{TlsKind, TlsVersion};

use rustc_hash::FxHashMap as HashMap;

use tracer_common::{
    is_change_cipher_spec, is_read, is_write, nr, record_content, record_len, tls, tls_content,
    EAGAIN, PREEMPT_STATE_BIT, STATE_UNINTERRUPTIBLE,
};

/// Where a nanosecond of a request went. The names are a file-format contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    OnCpu,
    Runqueue,
    Lock,
    NetIo,
    DiskIo,
    Sleep,
    Other,
    /// Time of the connection's TLS handshake, carried by its first request.
    TlsHandshake,
}

/// How many causes there are.
pub const CAUSES: usize = 8;

impl Cause {
    pub const ALL: [Cause; CAUSES] = [
        Cause::OnCpu,
        Cause::Runqueue,
        Cause::Lock,
        Cause::NetIo,
        Cause::DiskIo,
        Cause::Sleep,
        Cause::Other,
        Cause::TlsHandshake,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cause::OnCpu => "on_cpu",
            Cause::Runqueue => "runqueue",
            Cause::Lock => "lock",
            Cause::NetIo => "net_io",
            Cause::DiskIo => "disk_io",
            Cause::Sleep => "sleep",
            Cause::Other => "other",
            Cause::TlsHandshake => "tls_handshake",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Nanoseconds per cause, indexed by [`Cause::index`].
pub type Breakdown = [u64; CAUSES];

fn diff(end: &Breakdown, start: &Breakdown) -> Breakdown {
    std::array::from_fn(|i| end[i].saturating_sub(start[i]))
}

/// An execution context id: a thread id today.
pub type ContextId = u32;

/// Who woke a context. A thread's name is kept as the kernel's fixed 16 bytes: wakeups are
/// among the most frequent events, and they must not allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Waker {
    /// A thread (of any process), in its own context: a futex wake, a write to a pipe.
    Thread { tid: u32, pid: u32, comm: [u8; 16] },
    /// An interrupt: the task it happened to hit is not the waker.
    Interrupt(Interrupt),
    /// Not seen: the wakeup began before the programs attached, or the kernel skipped the
    /// program that names wakers.
    Unknown,
}

/// The interrupt a wakeup was done from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Interrupt {
    /// A device interrupt handler, by IRQ number.
    Hardirq(u32),
    /// A softirq, by vector (NET_RX: a packet arrived).
    Softirq(u32),
    /// An hrtimer callback: a sleep or a timeout expired.
    Timer,
}

impl Interrupt {
    /// `timer`, `softirq net_rx`, `hardirq 24`.
    pub fn name(self) -> String {
        // kernel/softirq.c `softirq_to_name` (Linux 6.18).
        const SOFTIRQS: [&str; 10] = [
            "hi", "timer", "net_tx", "net_rx", "block", "irq_poll", "tasklet", "sched", "hrtimer",
            "rcu",
        ];
        match self {
            Interrupt::Hardirq(irq) => format!("hardirq {irq}"),
            Interrupt::Softirq(vec) => match SOFTIRQS.get(vec as usize) {
                Some(name) => format!("softirq {name}"),
                None => format!("softirq {vec}"),
            },
            Interrupt::Timer => "timer".to_string(),
        }
    }
}

/// The syscall a context was inside when it switched out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InSyscall {
    pub nr: u32,
    pub arg0: u64,
}

/// Engine input, in timestamp order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    SwitchOut {
        ts: u64,
        tid: ContextId,
        /// The sched_switch `prev_state`.
        state: u32,
        syscall: Option<InSyscall>,
    },
    SwitchIn {
        ts: u64,
        tid: ContextId,
    },
    Wakeup {
        ts: u64,
        tid: ContextId,
        waker: Waker,
    },
    Syscall {
        ts: u64,
        tid: ContextId,
        nr: u32,
        arg0: u64,
        ret: i64,
        enter_ts: u64,
        /// For reads and writes: `tracer_common::tls_record` of the bytes moved (0: none).
        tls_record: u32,
    },
    ThreadNew {
        ts: u64,
        tid: ContextId,
    },
    ThreadExit {
        ts: u64,
        tid: ContextId,
        /// The thread's name as it exited (kept for the lock detail).
        comm: String,
    },
    /// A TLS library call on a connection still in its handshake began (`what` is a
    /// `tracer_common::tls` entry kind) or returned (`tls::RETURN`, with `ret`).
    Tls {
        ts: u64,
        tid: ContextId,
        ssl: u64,
        what: u32,
        ret: i64,
    },
    /// The kernel side lost events around this time.
    Lost {
        ts: u64,
    },
}

/// What an fd refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdKind {
    /// A server-side connection socket: requests are delimited on it.
    Connection,
    /// Any other socket (a backend connection, a listener, a UDP socket).
    Socket,
    /// A regular file or block device.
    File,
    /// Anything else (pipe, eventfd, tty, unknown).
    Other,
}

/// Finds the kind of an fd the engine has not seen opened.
pub trait FdResolver {
    fn resolve(&mut self, fd: u32) -> FdKind;
}

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

/// A finished request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub ctx: ContextId,
    pub fd: u32,
    pub start_ns: u64,
    pub latency_ns: u64,
    pub breakdown: Breakdown,
    /// Events were lost while it was open: the breakdown may be wrong.
    pub incomplete: bool,
    /// Its context served another request at the same time (an event loop): the context's
    /// time was counted in full for each of them.
    pub shared_context: bool,
}

/// Phases of a TLS handshake: the thread ran (key exchange, signatures), waited for the
/// peer's next flight, waited for a CPU, or anything else.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsPhases {
    pub cpu: u64,
    pub peer_wait: u64,
    pub runqueue: u64,
    pub other: u64,
}

impl TlsPhases {
    fn from_breakdown(b: &Breakdown) -> Self {
        let cpu = b[Cause::OnCpu.index()];
        let peer_wait = b[Cause::NetIo.index()];
        let runqueue = b[Cause::Runqueue.index()];
        TlsPhases {
            cpu,
            peer_wait,
            runqueue,
            other: b.iter().sum::<u64>() - cpu - peer_wait - runqueue,
        }
    }

    pub fn total(&self) -> u64 {
        self.cpu + self.peer_wait + self.runqueue + self.other
    }

    fn add(&mut self, other: &TlsPhases) {
        self.cpu += other.cpu;
        self.peer_wait += other.peer_wait;
        self.runqueue += other.runqueue;
        self.other += other.other;
    }

    /// Make the phases sum to `total`: what no stretch covered is `other`; an excess (stretches
    /// that overlapped) comes off `other`, then `runqueue`, `cpu` and `peer_wait`.
    fn fit(&mut self, total: u64) {
        let sum = self.total();
        if sum <= total {
            self.other += total - sum;
            return;
        }
        let mut excess = sum - total;
        for phase in [
            &mut self.other,
            &mut self.runqueue,
            &mut self.cpu,
            &mut self.peer_wait,
        ] {
            let cut = excess.min(*phase);
            *phase -= cut;
            excess -= cut;
        }
    }
}

/// A completed TLS handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub ctx: ContextId,
    pub fd: Option<u32>,
    pub start_ns: u64,
    pub phases: TlsPhases,
    pub kind: TlsKind,
}

/// What a syscall return carries, besides its thread and time.
#[derive(Clone, Copy)]
struct SyscallReturn {
    nr: u32,
    arg0: u64,
    ret: i64,
    enter_ts: u64,
    tls_record: u32,
}

/// A connection's TLS state as its record framing shows it (for servers whose handshake no
/// uprobe sees, e.g. OpenSSL driven through a BIO).
struct TlsWire {
    phase: WirePhase,
    rx: Records,
}

/// Where a connection's incoming bytes stand in their TLS records: the record being read (its
/// content type) and how many of its bytes are still to come (OpenSSL reads a 5-byte header,
/// then the body).
#[derive(Debug, Default)]
struct Records {
    content: u32,
    left: i64,
}

impl Records {
    /// Account a read of `ret` bytes whose first 5 bytes classified as `record`; returns the
    /// content type of the record it belongs to (0: unknown), and whether it also holds bytes
    /// past the end of that record.
    fn read(&mut self, ret: i64, record: u32) -> (u32, bool) {
        if self.left > 0 {
            let overflow = ret > self.left;
            self.left = (self.left - ret).max(0);
            return (self.content, overflow);
        }
        if record == 0 {
            return (0, false);
        }
        // A TLS 1.3 alert travels as application_data: classify it by its size.
        self.content = if is_encrypted_alert(record) {
            tls_content::ALERT
        } else {
            record_content(record)
        };
        let whole = 5 + record_len(record) as i64;
        self.left = (whole - ret).max(0);
        (self.content, ret > whole)
    }

    /// The next read starts a new record.
    fn at_record_start(&self) -> bool {
        self.left == 0
    }
}

enum WirePhase {
    Handshaking {
        ctx: ContextId,
        start_ts: u64,
        start: Breakdown,
        /// The server has sent its first flight.
        server_flight: bool,
        /// The client has sent its second flight (TLS 1.2 key exchange).
        client_flight: bool,
        /// The server's last flight: when it was written, and the context's breakdown then.
        server_write: Option<(u64, Breakdown)>,
    },
    Established,
}

impl TlsWire {
    fn new(phase: WirePhase) -> Self {
        TlsWire {
            phase,
            rx: Records::default(),
        }
    }

    fn read(&mut self, ret: i64, record: u32) -> (u32, bool) {
        self.rx.read(ret, record)
    }
}

/// Whether a read of `ret` bytes that ends a client's handshake flight, starting with
/// `record`, goes on past the client's Finished: request bytes came with the end of the
/// handshake. The flight's first record says where its Finished ends:
/// - a change_cipher_spec: the Finished follows it, as application_data (TLS 1.3) or as a
///   handshake record (TLS 1.2 resumed);
/// - a handshake record: a TLS 1.2 client's key exchange, then its change_cipher_spec and
///   Finished (a client certificate flight is longer: it looks past, and a request that did
///   not come is then only looked for in the next write, see `after_handshake`);
/// - application_data: a TLS 1.3 Finished.
fn read_past_finished(ret: i64, record: u32) -> bool {
    if is_change_cipher_spec(record & 0x00ff_ffff) {
        let finished = if tracer_common::record_next_content(record) == tls_content::HANDSHAKE {
            MAX_TLS12_FINISHED_RECORD
        } else {
            MAX_FINISHED_RECORD
        };
        return ret > 6 + finished;
    }
    let first = 5 + record_len(record) as i64;
    match record_content(record) {
        0 => false,
        tls_content::HANDSHAKE => ret > first + 6 + MAX_TLS12_FINISHED_RECORD,
        _ => ret > first,
    }
}

/// `EXIT_DEAD | EXIT_ZOMBIE` as sched_switch reports an exiting task's state (`X`, `Z`).
const STATE_EXITING: u32 = 0x30;

/// How soon after a wakeup that came while the thread was still running its switch-out must
/// follow to be the sleep that wakeup cancelled.
const PENDING_WAKEUP_NS: u64 = 100_000;

/// The size of a TLS 1.3 encrypted alert record's body (2-byte alert, content type, 16-byte
/// AEAD tag): a close_notify, not request bytes.
const ENCRYPTED_ALERT_LEN: u32 = 19;

/// The longest TLS 1.3 client Finished record: a 5-byte record header, the Finished message
/// (4-byte handshake header, 48-byte SHA-384 verify_data), the content type and a 16-byte
/// AEAD tag. 74 bytes with TLS_AES_256_GCM_SHA384, 58 with the SHA-256 suites.
const MAX_FINISHED_RECORD: i64 = 5 + 4 + 48 + 1 + 16;

/// The longest TLS 1.2 Finished record: a 5-byte record header, a CBC suite's 16-byte
/// explicit IV, the Finished message (4-byte header, 12-byte verify_data) with its 48-byte
/// HMAC-SHA384, padded to the 16-byte block. 45 bytes with AES-GCM.
const MAX_TLS12_FINISHED_RECORD: i64 = 5 + 16 + 4 + 12 + 48 + 16;

/// A handshake in progress, keyed by its `SSL*`.
struct OpenHandshake {
    ctx: ContextId,
    start_ts: u64,
    start: Breakdown,
    /// The connection its socket traffic went to.
    fd: Option<u32>,
    /// Started by a handshake function (not by a read or write).
    explicit: bool,
    /// A handshake record went over the socket during its calls.
    saw_records: bool,
    /// Its last read went past the client's Finished: the first request may have come
    /// with it.
    read_past_finished: bool,
}

/// Where a handshake ended whose last read went past the client's Finished (Go, and OpenSSL
/// with read-ahead as nginx sets it, read as much as the socket holds): the first request
/// may be in the TLS library's buffer already, and no read of it will cross the socket.
struct HandshakeEnd {
    ctx: ContextId,
    ts: u64,
    at: Breakdown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunState {
    Running,
    Runnable,
    Blocked {
        cause: Cause,
        syscall: Option<InSyscall>,
    },
}

impl RunState {
    fn cause(self) -> Cause {
        match self {
            RunState::Running => Cause::OnCpu,
            RunState::Runnable => Cause::Runqueue,
            RunState::Blocked { cause, .. } => cause,
        }
    }
}

struct Context {
    state: RunState,
    since: u64,
    cum: Breakdown,
    /// The wakeup that ended the last block: when, and the cumulative breakdown then. A
    /// request whose first read blocked starts here, so its run-queue delay is counted.
    last_wakeup: Option<(u64, Breakdown)>,
    /// A wakeup that arrived while the context was still on a CPU, and when.
    pending_wakeup: Option<u64>,
    /// How many requests on this context are still waiting for their response.
    open_requests: u32,
    /// The TLS call (`SSL*`, entry kind) the context is inside, on a connection still in its
    /// handshake: its socket reads and writes are handshake flights, not requests.
    tls_call: Option<(u64, u32)>,
}

impl Context {
    fn new(ts: u64, state: RunState) -> Self {
        Context {
            state,
            since: ts,
            cum: [0; CAUSES],
            last_wakeup: None,
            pending_wakeup: None,
            open_requests: 0,
            tls_call: None,
        }
    }

    /// The cumulative breakdown at `ts` (not before the last transition).
    fn snapshot(&self, ts: u64) -> Breakdown {
        let mut cum = self.cum;
        cum[self.state.cause().index()] += ts.saturating_sub(self.since);
        cum
    }

    /// Move to `state` at `ts`; returns the state left and how long it lasted.
    fn transition(&mut self, ts: u64, state: RunState) -> (RunState, u64) {
        let ts = ts.max(self.since);
        let lasted = ts - self.since;
        self.cum[self.state.cause().index()] += lasted;
        self.since = ts;
        (std::mem::replace(&mut self.state, state), lasted)
    }
}

struct OpenRequest {
    ctx: ContextId,
    start_ts: u64,
    start: Breakdown,
    /// The last response write so far: when it completed and the context's breakdown then.
    last_write: Option<(u64, Breakdown)>,
    incomplete: bool,
    shared_context: bool,
    /// The connection's handshake, carried by its first request: when it started, and its
    /// duration.
    tls: Option<(u64, u64)>,
}

/// The attribution engine. Feed it events in time order with [`Engine::handle`]; take finished
/// requests and wait samples with [`Engine::take_requests`] and [`Engine::take_waits`].
pub struct Engine<R> {
    resolver: R,
    contexts: HashMap<ContextId, Context>,
    fds: HashMap<u32, FdKind>,
    open: HashMap<u32, OpenRequest>,
    finished: Vec<Request>,
    waits: Vec<Wait>,
    handshakes: HashMap<u64, OpenHandshake>,
    /// Completed handshakes waiting for their connection's first request: (start, duration).
    tls_pending: HashMap<u32, (u64, u64)>,
    handshakes_done: Vec<Handshake>,
    /// Handshakes seen only in the TLS record framing on the socket, by fd.
    tls_wire: HashMap<u32, TlsWire>,
    /// Go handshakes in progress, by goroutine (`g`); the goroutine each thread is running
    /// one for; the connection each is on.
    go_handshakes: HashMap<u64, go_tls::GoHandshake>,
    go_threads: HashMap<ContextId, u64>,
    go_fds: HashMap<u32, u64>,
    /// Server-side handshakes' record headers, by fd, until the handshake completes.
    tls_shapes: HashMap<u32, tls_shape::Shape>,
    /// Connections whose handshake just ended with a read past the client's Finished, until
    /// their next read or write.
    tls_done: HashMap<u32, HandshakeEnd>,
    /// Futex contention by address.
    pub locks: Locks,
    /// Time blocked in `other`, by the syscall the thread was in (`None`: not in a traced
    /// syscall).
    pub other_by_syscall: HashMap<Option<u32>, u64>,
    /// Requests that never got a response (connection closed, thread exited).
    pub aborted: u64,
    /// Requests that shared their context with another open request.
    pub shared: u64,
}

impl<R: FdResolver> Engine<R> {
    pub fn new(resolver: R) -> Self {
        Engine {
            resolver,
            contexts: HashMap::default(),
            fds: HashMap::default(),
            open: HashMap::default(),
            finished: Vec::new(),
            waits: Vec::new(),
            handshakes: HashMap::default(),
            tls_pending: HashMap::default(),
            handshakes_done: Vec::new(),
            tls_wire: HashMap::default(),
            go_handshakes: HashMap::default(),
            go_threads: HashMap::default(),
            go_fds: HashMap::default(),
            tls_done: HashMap::default(),
            tls_shapes: HashMap::default(),
            locks: Locks::default(),
            other_by_syscall: HashMap::default(),
            aborted: 0,
            shared: 0,
        }
    }

    /// Tell the engine what an fd is (sockets found in /proc at attach time).
    pub fn set_fd_kind(&mut self, fd: u32, kind: FdKind) {
        self.fds.insert(fd, kind);
    }

    pub fn take_requests(&mut self) -> Vec<Request> {
        std::mem::take(&mut self.finished)
    }

    pub fn take_waits(&mut self) -> Vec<Wait> {
        std::mem::take(&mut self.waits)
    }

    pub fn take_handshakes(&mut self) -> Vec<Handshake> {
        std::mem::take(&mut self.handshakes_done)
    }

    #[cfg(test)]
    pub fn open_requests(&self) -> usize {
        self.open.len()
    }

    pub fn handle(&mut self, event: Event) {
        match event {
            Event::SwitchOut {
                ts,
                tid,
                state,
                syscall,
            } => self.switch_out(ts, tid, state, syscall),
            Event::SwitchIn { ts, tid } => self.switch_in(ts, tid),
            Event::Wakeup { ts, tid, waker } => self.wakeup(ts, tid, waker),
            Event::Syscall {
                ts,
                tid,
                nr,
                arg0,
                ret,
                enter_ts,
                tls_record,
            } => self.syscall(
                ts,
                tid,
                SyscallReturn {
                    nr,
                    arg0,
                    ret,
                    enter_ts,
                    tls_record,
                },
            ),
            Event::ThreadNew { ts, tid } => {
                let not_started = RunState::Blocked {
                    cause: Cause::Other,
                    syscall: None,
                };
                self.contexts.insert(tid, Context::new(ts, not_started));
            }
            Event::ThreadExit { ts, tid, .. } => self.thread_exit(ts, tid),
            Event::Tls {
                ts,
                tid,
                ssl,
                what,
                ret,
            } => self.tls(ts, tid, ssl, what, ret),
            Event::Lost { .. } => {
                self.go_forget_all();
                self.tls_done.clear();
                for req in self.open.values_mut() {
                    req.incomplete = true;
                }
            }
        }
    }

    /// End of trace: requests that had their response written are complete.
    pub fn finish_all(&mut self) {
        let fds: Vec<u32> = self.open.keys().copied().collect();
        for fd in fds {
            self.finish(fd);
        }
    }

    fn context(&mut self, tid: ContextId, ts: u64, first_state: RunState) -> &mut Context {
        self.contexts
            .entry(tid)
            .or_insert_with(|| Context::new(ts, first_state))
    }

    /// Move a context to `state`, keeping the per-syscall detail of `other`.
    fn transition(&mut self, tid: ContextId, ts: u64, state: RunState) -> (RunState, u64) {
        let Some(ctx) = self.contexts.get_mut(&tid) else {
            return (state, 0);
        };
        let (left, lasted) = ctx.transition(ts, state);
        if let RunState::Blocked {
            cause: Cause::Other,
            syscall,
        } = left
        {
            *self
                .other_by_syscall
                .entry(syscall.map(|s| s.nr))
                .or_default() += lasted;
        }
        (left, lasted)
    }

    fn switch_out(&mut self, ts: u64, tid: ContextId, state: u32, syscall: Option<InSyscall>) {
        if state & STATE_EXITING != 0 {
            // The last switch of an exiting thread comes after sched_process_exit: do not
            // bring its context back.
            self.contexts.remove(&tid);
            return;
        }
        let ctx = self.context(tid, ts, RunState::Running);
        // A wakeup that came while the thread was still on its way to sleep: only a switch
        // right after it is that sleep (a stale one must not turn a later block into
        // run-queue time).
        let woken_already = ctx
            .pending_wakeup
            .take()
            .is_some_and(|woke| ts.saturating_sub(woke) <= PENDING_WAKEUP_NS);
        let still_runnable = state == 0 || state >= PREEMPT_STATE_BIT;
        let next = if still_runnable || woken_already {
            RunState::Runnable
        } else {
            RunState::Blocked {
                cause: self.blocked_cause(syscall, state),
                syscall,
            }
        };
        self.transition(tid, ts, next);
        // Back to reading a connection it has answered: that response is complete.
        if let Some(s) = syscall.filter(|s| is_read(s.nr)) {
            let fd = s.arg0 as u32;
            if self.open.get(&fd).is_some_and(|r| r.last_write.is_some()) {
                self.finish(fd);
            }
        }
    }

    fn switch_in(&mut self, ts: u64, tid: ContextId) {
        let ctx = self.context(tid, ts, RunState::Runnable);
        ctx.pending_wakeup = None;
        let (left, lasted) = self.transition(tid, ts, RunState::Running);
        if left == RunState::Runnable && lasted > 0 {
            self.waits.push(Wait::Runqueue(lasted));
        }
    }

    fn wakeup(&mut self, ts: u64, tid: ContextId, waker: Waker) {
        let unknown = RunState::Blocked {
            cause: Cause::Other,
            syscall: None,
        };
        let ctx = self.context(tid, ts, unknown);
        match ctx.state {
            RunState::Running => ctx.pending_wakeup = Some(ts),
            RunState::Runnable => {}
            RunState::Blocked { cause, syscall } => {
                let (_, lasted) = self.transition(tid, ts, RunState::Runnable);
                let ctx = self.contexts.get_mut(&tid).expect("context exists");
                ctx.last_wakeup = Some((ts, ctx.cum));
                self.note_block_end(cause, syscall, lasted, waker);
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
        if cause == Cause::Lock {
            self.locks.woken(s.arg0, waker);
        }
    }

    fn syscall(&mut self, ts: u64, tid: ContextId, sys: SyscallReturn) {
        let SyscallReturn {
            nr,
            arg0,
            ret,
            enter_ts,
            tls_record,
        } = sys;
        let ctx = self.context(tid, ts, RunState::Running);
        ctx.pending_wakeup = None;
        if ctx.state != RunState::Running {
            // A returning syscall runs on a CPU: a switch-in was lost.
            self.transition(tid, ts, RunState::Running);
        }
        let fd = arg0 as u32;
        if is_read(nr) || is_write(nr) {
            if tls_record != 0 || !self.tls_shapes.is_empty() {
                self.tls_shape(fd, nr, ret, tls_record);
            }
            if !self.go_handshakes.is_empty() && self.go_handshake_io(ts, tid, sys) {
                return;
            }
            if !self.tls_done.is_empty() && ret != -EAGAIN {
                self.after_handshake(fd, nr, ret, tls_record);
            }
        }
        let in_tls_call = self.contexts.get(&tid).and_then(|c| c.tls_call);
        if let Some((ssl, _)) = in_tls_call {
            if (is_read(nr) || is_write(nr)) && self.fd_kind(fd) == FdKind::Connection {
                // A handshake flight: it belongs to the handshake, not to a request.
                if let Some(h) = self.handshakes.get_mut(&ssl) {
                    h.fd.get_or_insert(fd);
                    h.saw_records |= record_content(tls_record) == tls_content::HANDSHAKE;
                    if is_read(nr) && ret > 0 && h.fd == Some(fd) {
                        h.read_past_finished = read_past_finished(ret, tls_record);
                    }
                }
                // The uprobes time this connection's handshake: the framing must not.
                self.tls_wire
                    .insert(fd, TlsWire::new(WirePhase::Established));
                return;
            }
        }
        match nr {
            nr::FUTEX | nr::FUTEX_WAITV => {
                let waited = ts.saturating_sub(enter_ts);
                self.waits.push(Wait::Futex(waited));
                self.locks.wait(arg0, tid, waited);
            }
            nr::ACCEPT | nr::ACCEPT4 if ret >= 0 => {
                self.finish(ret as u32); // its close was not seen
                self.handshakes.retain(|_, h| h.fd != Some(ret as u32));
                self.tls_pending.remove(&(ret as u32));
                self.tls_done.remove(&(ret as u32));
                self.tls_wire.remove(&(ret as u32));
                self.go_forget_fd(ret as u32);
                self.tls_shapes.remove(&(ret as u32));
                self.fds.insert(ret as u32, FdKind::Connection);
            }
            nr::CLOSE => {
                if self.open.contains_key(&fd) {
                    self.finish(fd);
                }
                self.fds.remove(&fd);
                self.tls_pending.remove(&fd);
                self.tls_done.remove(&fd);
                self.tls_wire.remove(&fd);
                self.go_forget_fd(fd);
                self.tls_shapes.remove(&fd);
                self.handshakes.retain(|_, h| h.fd != Some(fd));
            }
            n if is_read(n) && self.fd_kind(fd) == FdKind::Connection => {
                if ret > 0 {
                    if !self.tls_wire_read(ts, tid, fd, ret, tls_record) {
                        self.request_bytes(ts, tid, fd, enter_ts);
                    }
                } else if ret == 0 && self.open.contains_key(&fd) {
                    self.finish(fd); // the peer closed
                }
            }
            n if is_write(n)
                && ret > 0
                && self.fd_kind(fd) == FdKind::Connection
                && !self.tls_wire_write(ts, fd, tls_record) =>
            {
                self.response_bytes(ts, fd)
            }
            _ => {}
        }
        if let Some(ctx) = self.contexts.get_mut(&tid) {
            ctx.last_wakeup = None;
        }
    }

    /// A read returned request bytes on a connection.
    fn request_bytes(&mut self, ts: u64, tid: ContextId, fd: u32, enter_ts: u64) {
        match self.open.get(&fd) {
            Some(req) if req.last_write.is_none() => return, // more of the same request
            Some(_) => self.finish(fd),                      // the next request
            None => {}
        }
        let ctx = self.contexts.get_mut(&tid).expect("context exists");
        let (start_ts, start) = match ctx.last_wakeup {
            Some((woke, cum)) if woke >= enter_ts => (woke, cum),
            _ => (ts, ctx.snapshot(ts)),
        };
        self.open_request(tid, fd, start_ts, start);
    }

    /// Open a request on `fd`, served by `tid`, that started at `start_ts` (the context's
    /// breakdown then: `start`).
    fn open_request(&mut self, tid: ContextId, fd: u32, start_ts: u64, start: Breakdown) {
        let Some(ctx) = self.contexts.get_mut(&tid) else {
            return;
        };
        ctx.open_requests += 1;
        let shared_context = ctx.open_requests > 1;
        if shared_context {
            let waiting = |r: &&mut OpenRequest| r.ctx == tid && r.last_write.is_none();
            for req in self.open.values_mut().filter(waiting) {
                req.shared_context = true;
            }
        }
        self.open.insert(
            fd,
            OpenRequest {
                ctx: tid,
                start_ts,
                start,
                last_write: None,
                incomplete: false,
                shared_context,
                tls: self.tls_pending.remove(&fd),
            },
        );
    }

    /// A write sent response bytes on a connection.
    fn response_bytes(&mut self, ts: u64, fd: u32) {
        let Some(req) = self.open.get_mut(&fd) else {
            return; // a greeting or an unsolicited write: no request is open
        };
        if let Some(ctx) = self.contexts.get_mut(&req.ctx) {
            if req.last_write.is_none() {
                ctx.open_requests = ctx.open_requests.saturating_sub(1); // now answering
            }
            req.last_write = Some((ts, ctx.snapshot(ts)));
        }
    }

    fn finish(&mut self, fd: u32) {
        let Some(req) = self.open.remove(&fd) else {
            return;
        };
        if req.last_write.is_none() {
            if let Some(ctx) = self.contexts.get_mut(&req.ctx) {
                ctx.open_requests = ctx.open_requests.saturating_sub(1);
            }
        }
        let Some((_, end)) = req.last_write else {
            self.aborted += 1;
            return;
        };
        let mut breakdown = diff(&end, &req.start);
        let mut start_ns = req.start_ts;
        if let Some((tls_start, tls_ns)) = req.tls {
            breakdown[Cause::TlsHandshake.index()] = tls_ns;
            start_ns = tls_start;
        }
        if req.shared_context {
            self.shared += 1;
        }
        self.finished.push(Request {
            ctx: req.ctx,
            fd,
            start_ns,
            latency_ns: breakdown.iter().sum(),
            breakdown,
            incomplete: req.incomplete,
            shared_context: req.shared_context,
        });
    }

    fn tls(&mut self, ts: u64, tid: ContextId, ssl: u64, what: u32, ret: i64) {
        match what {
            tls::GO_SERVER_ENTER | tls::GO_CLIENT_ENTER => {
                self.context(tid, ts, RunState::Running);
                return self.go_handshake_enter(ts, tid, ssl);
            }
            tls::GO_RETURN => return self.go_handshake_return(ts, tid, ssl, ret),
            _ => {}
        }
        let ctx = self.context(tid, ts, RunState::Running);
        if what == tls::FREE {
            self.handshakes.remove(&ssl);
            return;
        }
        if what != tls::RETURN {
            ctx.tls_call = Some((ssl, what));
            let start = ctx.snapshot(ts);
            let h = self.handshakes.entry(ssl).or_insert(OpenHandshake {
                ctx: tid,
                start_ts: ts,
                start,
                fd: None,
                explicit: false,
                saw_records: false,
                read_past_finished: false,
            });
            h.explicit |= what == tls::HANDSHAKE_ENTER;
            return;
        }
        let call = ctx.tls_call.take();
        if ret <= 0 {
            return; // a step of a handshake that goes on (WANT_READ / WANT_WRITE) or failed
        }
        let Some(h) = self.handshakes.remove(&ssl) else {
            return;
        };
        // Without a handshake record on the socket, a read or write that "completed" the
        // handshake was the first call since the tracer attached on a connection whose
        // handshake was over before: nothing to time.
        if h.explicit || h.saw_records {
            let Some(hctx) = self.contexts.get(&h.ctx) else {
                return;
            };
            let phases = TlsPhases::from_breakdown(&diff(&hctx.snapshot(ts), &h.start));
            self.handshake_done(h.ctx, h.fd, h.start_ts, phases);
            if let Some(fd) = h.fd {
                self.tls_pending.insert(fd, (h.start_ts, phases.total()));
                // A handshake function returned: the request bytes read with the Finished
                // (if any) are still in OpenSSL's buffer.
                let explicit_call = matches!(call, Some((_, tls::HANDSHAKE_ENTER)));
                if explicit_call && h.read_past_finished {
                    self.handshake_ended_past_finished(tid, fd, ts);
                }
            }
        }
        // A read that returned data returned a request's bytes (after the handshake, if any).
        if let Some(fd) = h.fd {
            if matches!(call, Some((_, tls::READ_ENTER))) && self.fd_kind(fd) == FdKind::Connection
            {
                self.request_bytes(ts, tid, fd, ts);
            }
        }
    }

    /// A handshake on `fd` ended at `ts` on `tid` with a read past the client's Finished.
    fn handshake_ended_past_finished(&mut self, tid: ContextId, fd: u32, ts: u64) {
        if self.fd_kind(fd) != FdKind::Connection {
            return;
        }
        if let Some(ctx) = self.contexts.get(&tid) {
            let at = ctx.snapshot(ts);
            self.tls_done.insert(fd, HandshakeEnd { ctx: tid, ts, at });
        }
    }

    /// The first read or write on a connection after a handshake whose last read went past
    /// the client's Finished (not counting reads that found nothing: net/http reads in the
    /// background while a request runs, and nginx reads until EAGAIN). The TLS library read
    /// as much as the socket held, so the Finished and the first request often arrived in
    /// one read, inside the handshake: a response written before any further read answers
    /// that request, which started when the handshake ended. It is timed on the thread that
    /// ended the handshake.
    fn after_handshake(&mut self, fd: u32, nr: u32, ret: i64, record: u32) {
        let Some(done) = self.tls_done.remove(&fd) else {
            return;
        };
        let alert = record_content(record) == tls_content::ALERT || is_encrypted_alert(record);
        if !is_write(nr) || ret <= 0 || alert || self.open.contains_key(&fd) {
            return;
        }
        self.open_request(done.ctx, fd, done.ts, done.at);
    }

    /// A read on a connection, seen through TLS record framing. Returns true when the bytes
    /// were handshake or alert records, not request bytes.
    fn tls_wire_read(&mut self, ts: u64, tid: ContextId, fd: u32, ret: i64, record: u32) -> bool {
        let Some(wire) = self.tls_wire.get_mut(&fd) else {
            if record_content(record) == tls_content::HANDSHAKE {
                self.tls_wire_start(ts, tid, fd, ret, record);
                return true;
            }
            if record != 0 {
                // An established TLS connection (open before the tracer attached).
                let mut wire = TlsWire::new(WirePhase::Established);
                let (content, _) = wire.read(ret, record);
                self.tls_wire.insert(fd, wire);
                return content == tls_content::ALERT;
            }
            return false; // plaintext
        };
        let header = record;
        let (content, overflow) = wire.read(ret, record);
        match &mut wire.phase {
            WirePhase::Established => {
                content == tls_content::ALERT || content == tls_content::HANDSHAKE
            }
            WirePhase::Handshaking {
                server_flight,
                client_flight,
                server_write,
                ..
            } => {
                if *client_flight && content == tls_content::APPLICATION_DATA {
                    // TLS 1.2 whose last server flight did not start with change_cipher_spec
                    // (NewSessionTicket first, or an abbreviated handshake): it ended with that
                    // flight, and this is the first request.
                    let end = *server_write;
                    self.tls_wire_done_at(fd, end);
                    return false;
                }
                if !*server_flight || content != tls_content::APPLICATION_DATA {
                    if *server_flight && content == tls_content::HANDSHAKE {
                        *client_flight = true; // TLS 1.2: key exchange and Finished
                    }
                    // A read that starts with the change_cipher_spec and goes on past it holds
                    // the client's Finished (and maybe the request) too.
                    let finished_inside = *server_flight
                        && content == tls_content::CHANGE_CIPHER_SPEC
                        && header != 0
                        && overflow
                        && !*client_flight;
                    if !finished_inside {
                        return true;
                    }
                    wire.rx.left = 0; // the records after it are not tracked
                    self.tls_wire_done(ts, fd);
                    if read_past_finished(ret, header) {
                        self.request_bytes(ts, tid, fd, ts); // the request came with it
                    }
                    return true;
                }
                // TLS 1.3: the client's Finished, in an application_data record.
                if !wire.rx.at_record_start() {
                    return true; // its body is still to come
                }
                self.tls_wire_done(ts, fd);
                if overflow {
                    self.request_bytes(ts, tid, fd, ts);
                }
                true
            }
        }
    }

    fn tls_wire_start(&mut self, ts: u64, tid: ContextId, fd: u32, ret: i64, record: u32) {
        let Some(ctx) = self.contexts.get(&tid) else {
            return;
        };
        let (start_ts, start) = match ctx.last_wakeup {
            Some(woke) => woke,
            None => (ts, ctx.snapshot(ts)),
        };
        let mut wire = TlsWire::new(WirePhase::Handshaking {
            ctx: tid,
            start_ts,
            start,
            server_flight: false,
            client_flight: false,
            server_write: None,
        });
        wire.read(ret, record);
        self.tls_wire.insert(fd, wire);
    }

    /// A write on a connection, seen through TLS record framing. Returns true when it was a
    /// handshake flight or an alert, not response bytes.
    fn tls_wire_write(&mut self, ts: u64, fd: u32, record: u32) -> bool {
        let content = record_content(record);
        let handshake_ctx = match self.tls_wire.get(&fd) {
            None => return content == tls_content::ALERT,
            Some(TlsWire {
                phase: WirePhase::Handshaking { ctx, .. },
                ..
            }) => *ctx,
            Some(_) => return content == tls_content::ALERT || is_encrypted_alert(record),
        };
        let now = self
            .contexts
            .get(&handshake_ctx)
            .map(|c| (ts, c.snapshot(ts)));
        let Some(TlsWire {
            phase:
                WirePhase::Handshaking {
                    server_flight,
                    client_flight,
                    server_write,
                    ..
                },
            ..
        }) = self.tls_wire.get_mut(&fd)
        else {
            return true;
        };
        if *client_flight && content == tls_content::CHANGE_CIPHER_SPEC {
            self.tls_wire_done(ts, fd); // TLS 1.2: the server's Finished
        } else {
            *server_flight = true;
            *server_write = now;
        }
        true
    }

    fn tls_wire_done(&mut self, ts: u64, fd: u32) {
        let end = self
            .tls_wire
            .get(&fd)
            .and_then(|w| match &w.phase {
                WirePhase::Handshaking { ctx, .. } => self.contexts.get(ctx),
                WirePhase::Established => None,
            })
            .map(|c| (ts, c.snapshot(ts)));
        self.tls_wire_done_at(fd, end);
    }

    /// The framing handshake on `fd` ended at `end` (time, its context's breakdown then).
    fn tls_wire_done_at(&mut self, fd: u32, end: Option<(u64, Breakdown)>) {
        let Some(wire) = self.tls_wire.get_mut(&fd) else {
            return;
        };
        let WirePhase::Handshaking {
            ctx,
            start_ts,
            start,
            ..
        } = std::mem::replace(&mut wire.phase, WirePhase::Established)
        else {
            return;
        };
        let Some((_, end)) = end else {
            return;
        };
        let phases = TlsPhases::from_breakdown(&diff(&end, &start));
        self.handshake_done(ctx, Some(fd), start_ts, phases);
        self.tls_pending.insert(fd, (start_ts, phases.total()));
    }

    /// A handshake completed: keep it, with what the record framing said of it.
    fn handshake_done(
        &mut self,
        ctx: ContextId,
        fd: Option<u32>,
        start_ns: u64,
        phases: TlsPhases,
    ) {
        let kind = fd
            .and_then(|fd| self.tls_shapes.remove(&fd))
            .map(|shape| shape.kind())
            .unwrap_or_default();
        self.handshakes_done.push(Handshake {
            ctx,
            fd,
            start_ns,
            phases,
            kind,
        });
    }

    /// Follow the record headers of a server-side connection's handshake (version and
    /// resumption, see `tls_shape`).
    fn tls_shape(&mut self, fd: u32, nr: u32, ret: i64, record: u32) {
        if ret <= 0 {
            return;
        }
        if let Some(shape) = self.tls_shapes.get_mut(&fd) {
            if is_read(nr) {
                shape.read(ret, record);
            } else {
                shape.write(ret, record);
            }
        } else if is_read(nr)
            && record_content(record) == tls_content::HANDSHAKE
            && self.fd_kind(fd) == FdKind::Connection
        {
            self.tls_shapes
                .insert(fd, tls_shape::Shape::start(ret, record));
        }
    }

    fn thread_exit(&mut self, ts: u64, tid: ContextId) {
        self.transition(tid, ts, RunState::Runnable);
        let fds: Vec<u32> = self
            .open
            .iter()
            .filter(|(_, r)| r.ctx == tid)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in fds {
            self.finish(fd);
        }
        self.contexts.remove(&tid);
        self.go_forget_thread(tid);
    }

    fn fd_kind(&mut self, fd: u32) -> FdKind {
        if let Some(kind) = self.fds.get(&fd) {
            return *kind;
        }
        let kind = self.resolver.resolve(fd);
        self.fds.insert(fd, kind);
        kind
    }

    fn blocked_cause(&mut self, syscall: Option<InSyscall>, state: u32) -> Cause {
        let Some(s) = syscall else {
            // Outside any traced syscall, uninterruptible sleep is (nearly always) a major
            // page fault waiting for the disk.
            return if state & STATE_UNINTERRUPTIBLE != 0 {
                Cause::DiskIo
            } else {
                Cause::Other
            };
        };
        match s.nr {
            nr::FUTEX | nr::FUTEX_WAITV => Cause::Lock,
            nr::NANOSLEEP | nr::CLOCK_NANOSLEEP => Cause::Sleep,
            nr::POLL
            | nr::PPOLL
            | nr::SELECT
            | nr::PSELECT6
            | nr::EPOLL_WAIT
            | nr::EPOLL_PWAIT
            | nr::EPOLL_PWAIT2
            | nr::ACCEPT
            | nr::ACCEPT4
            | nr::CONNECT => Cause::NetIo,
            nr::FSYNC | nr::FDATASYNC | nr::SYNC_FILE_RANGE => Cause::DiskIo,
            n if is_read(n) || is_write(n) => match self.fd_kind(s.arg0 as u32) {
                FdKind::Connection | FdKind::Socket => Cause::NetIo,
                FdKind::File => Cause::DiskIo,
                FdKind::Other => Cause::Other,
            },
            _ => Cause::Other,
        }
    }
}

/// A TLS 1.3 alert: an application_data record of an alert's encrypted size.
fn is_encrypted_alert(record: u32) -> bool {
    record_content(record) == tls_content::APPLICATION_DATA
        && record_len(record) == ENCRYPTED_ALERT_LEN
}

/// Name of an x86-64 syscall, for the `other` detail (`none`: blocked outside any syscall).
pub fn syscall_name(syscall_nr: Option<u32>) -> String {
    let Some(n) = syscall_nr else {
        return "none".to_string();
    };
    syscalls::x86_64::Sysno::new(n as usize)
        .map_or_else(|| format!("syscall_{n}"), |s| s.name().to_string())
}

#[cfg(test)]
mod tests;
