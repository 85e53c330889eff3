//! The engine's input: one envelope (when, which thread, what happened), in timestamp order.

use super::{
    context::{GoroutineId, Tid},
    sites::StackRef,
};

/// An engine event: `kind` happened on thread `tid` at `ts` (ns, CLOCK_MONOTONIC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub ts: u64,
    pub tid: Tid,
    pub kind: EventKind,
}

impl Event {
    pub fn new(ts: u64, tid: Tid, kind: EventKind) -> Self {
        Event { ts, tid, kind }
    }

    /// The kernel side lost events around `ts`.
    pub fn lost(ts: u64) -> Self {
        Event::new(ts, Tid::NONE, EventKind::Lost)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The thread left its CPU.
    SwitchOut {
        /// The sched_switch `prev_state`.
        state: u32,
        /// The syscall it was inside, if any.
        syscall: Option<InSyscall>,
        /// Where in its own code it blocked (a blocking switch-out, stacks on).
        stack: Option<StackRef>,
        /// The steal time its CPU had accounted so far, when known.
        cpu_steal: Option<u64>,
        /// Its total wait for a CPU so far (the kernel's `sched_info.run_delay`), when it
        /// blocked and that was read.
        run_delay: Option<u64>,
    },
    /// The thread got a CPU.
    SwitchIn {
        /// The steal time that CPU had accounted so far, when known.
        cpu_steal: Option<u64>,
        /// The wakeup that made it runnable since it last ran, if seen: the kernel side
        /// sends a wakeup with the switch-in it leads to.
        woken: Option<Woken>,
        /// For a switch-in the kernel did not report and whose wakeup was not seen either:
        /// its total wait for a CPU so far, the wait that just ended included.
        run_delay: Option<u64>,
    },
    /// The thread became runnable.
    Wakeup {
        waker: Waker,
    },
    /// A socket read or write returned.
    Syscall(SyscallReturn),
    /// The read that started a request the kernel side kept, handed over: `woken`, it blocked
    /// for its bytes and its request starts at the wakeup that ended the block, which the
    /// thread's timeline holds; otherwise it did not block, and the request starts at the
    /// read (the kernel side may have kept a read after the thread's last wakeup, unseen
    /// here).
    HandedOverRead {
        read: SyscallReturn,
        woken: bool,
    },
    /// The kernel side keeps the requests of connection `fd` from now on (they are served in
    /// stretches on a CPU): the request open there, answered, is over.
    StretchTakesConnection {
        fd: u32,
        connection: u64,
    },
    ThreadNew,
    ThreadExit {
        /// The thread's name as it exited (kept for the lock detail).
        comm: String,
    },
    /// An OpenSSL call on a connection still in its handshake began, or returned.
    OpenSsl {
        ssl: u64,
        call: SslCall,
    },
    /// Go crypto/tls: a goroutine entered its handshake function, or returned from it.
    GoHandshake {
        g: GoroutineId,
        probe: GoProbe,
    },
    /// Go's scheduler: a goroutine parked, became runnable, ran on the event's thread, or
    /// exited.
    Go(GoSched),
    /// The kernel side lost events around this time.
    Lost,
}

impl EventKind {
    /// The user stack the event carries, if any.
    pub fn stack(&self) -> Option<StackRef> {
        match self {
            EventKind::SwitchOut { stack, .. }
            | EventKind::Go(GoSched::Park { stack, .. })
            | EventKind::Go(GoSched::Semrelease { stack, .. }) => *stack,
            _ => None,
        }
    }
}

/// The syscall a thread was inside when it switched out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InSyscall {
    pub nr: u32,
    pub arg0: u64,
}

/// The return of a socket read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallReturn {
    pub nr: u32,
    /// The fd read or written (the syscall's first argument).
    pub fd: u32,
    pub ret: i64,
    /// The connection's identity (see `tracer_common::SyscallEvent::connection`): another
    /// one behind the same fd is another connection.
    pub connection: u64,
    pub origin: SocketOrigin,
    /// `tracer_common::tls_record` of the bytes moved (0: none).
    pub tls_record: u32,
}

/// How the socket of a read or write came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketOrigin {
    /// The server side of a TCP connection: a connection to serve.
    TcpServer,
    /// A TCP socket that connected out.
    TcpClient,
    /// Not a TCP socket the kernel side saw open (Unix, UDP, or open before the tracer).
    Unknown,
}

impl SocketOrigin {
    /// From a `tracer_common::socket_origin` value.
    pub fn from_kernel(origin: u32) -> Self {
        match origin {
            tracer_common::socket_origin::TCP_SERVER => SocketOrigin::TcpServer,
            tracer_common::socket_origin::TCP_CLIENT => SocketOrigin::TcpClient,
            _ => SocketOrigin::Unknown,
        }
    }
}

/// An OpenSSL library call seen by the uprobes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslCall {
    /// `SSL_do_handshake` (or `SSL_accept` / `SSL_connect`) entered.
    Handshake,
    /// `SSL_read` and the like entered.
    Read,
    /// `SSL_write` and the like entered.
    Write,
    /// The call entered last returned `ret`.
    Return { ret: i64 },
    /// `SSL_free`.
    Free,
}

/// Go's scheduler, from uprobes on `runtime.gopark`, `ready`, `execute` and `goexit1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoSched {
    /// The goroutine running on the event's thread parks, for Go's wait reason `reason` (a
    /// `waitReason` value of the target's Go release).
    Park {
        goid: u64,
        reason: u8,
        /// A wait for an HTTP/2 body from the peer (a `sync.Cond` wait in HTTP/2's body
        /// read, which is otherwise `lock`): `net_io`.
        request_body: bool,
        /// Where in its code it parked (stacks on).
        stack: Option<StackRef>,
    },
    /// `goid` became runnable, woken by goroutine `waker` (`None`: not from a goroutine, e.g.
    /// a timer, or the waker could not be read). Wakeups from the netpoller do not come
    /// through here: a goroutine parked for I/O goes from its park straight to
    /// [`GoSched::Execute`].
    Ready { goid: u64, waker: Option<u64> },
    /// The goroutine `goid` running on the event's thread takes the semaphore at `address`
    /// (`runtime.semacquire1`), called from code at `caller` (a return address; 0 when
    /// unknown): if it parks next, for a semaphore wait reason, it waits for that address.
    Semacquire {
        goid: u64,
        address: u64,
        caller: u64,
    },
    /// The goroutine `goid` releases the semaphore at `address` (`runtime.semrelease1`), at
    /// `stack` in its code, and readies a waiter next if there is one.
    Semrelease {
        goid: u64,
        address: u64,
        stack: Option<StackRef>,
    },
    /// `goid` serves an HTTP/2 connection (net/http's `(*http2serverConn).serve` or
    /// `.readFrames`): it moves the frames of every stream, so its socket I/O is no request.
    Http2Connection { goid: u64 },
    /// `goid` starts to run one HTTP/2 stream's handler (`(*http2serverConn).runHandler`):
    /// the request, until the goroutine exits.
    Http2Handler { goid: u64 },
    /// The runtime stops every goroutine (`stopTheWorldWithSema`): the GC, most often.
    StopTheWorld,
    /// The world runs again (`startTheWorldWithSema`).
    StartTheWorld,
    /// `goid` starts running on the event's thread.
    Execute { goid: u64 },
    /// The goroutine running on the event's thread is done.
    Exit { goid: u64 },
}

impl GoSched {
    /// The goroutine whose own code the event comes from (it runs on the event's thread),
    /// if the event names one: the waker of a wakeup, not the goroutine woken, nor one
    /// starting to run.
    pub fn own_goroutine(&self) -> Option<u64> {
        match *self {
            GoSched::Ready { waker, .. } => waker,
            GoSched::Park { goid, .. }
            | GoSched::Semacquire { goid, .. }
            | GoSched::Semrelease { goid, .. }
            | GoSched::Http2Connection { goid }
            | GoSched::Http2Handler { goid }
            | GoSched::Exit { goid } => Some(goid),
            GoSched::Execute { .. } | GoSched::StopTheWorld | GoSched::StartTheWorld => None,
        }
    }
}

/// Go crypto/tls's handshake probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoProbe {
    /// `serverHandshake` / `clientHandshake` entered.
    Enter,
    /// It returned; `error` is the returned error's type word (0: success).
    Return { error: i64 },
}

/// A thread became runnable at `at` (ns), woken by `waker`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Woken {
    pub at: u64,
    pub waker: Waker,
    /// Where the waker released the lock the thread waited on (a target thread's futex
    /// wake, stacks on): the unlocker's site.
    pub unlocker: Option<StackRef>,
}

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
    /// Any other interrupt: a softirq (NET_RX: a packet arrived; a timer-wheel timeout),
    /// by the kernel side's stack check, which cannot say which one; or the softirq daemon
    /// `ksoftirqd`.
    Softirq,
    /// An hrtimer callback: a sleep or a timeout expired.
    Timer,
}

impl Interrupt {
    /// `timer`, `softirq`, `hardirq 24`.
    pub fn name(self) -> String {
        match self {
            Interrupt::Hardirq(irq) => format!("hardirq {irq}"),
            Interrupt::Softirq => "softirq".to_string(),
            Interrupt::Timer => "timer".to_string(),
        }
    }
}
