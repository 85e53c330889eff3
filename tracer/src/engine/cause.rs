//! Where a nanosecond went: the causes (one list, used by every output), and the table from
//! what a thread blocked in to its cause.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use syscalls::x86_64::Sysno;
use tracer_common::{is_read, is_write, nr, STATE_UNINTERRUPTIBLE};

use super::{event::InSyscall, fds::FdKind};

/// Where a nanosecond of a request went. The names are a file-format contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    OnCpu,
    /// Runnable, waiting for a CPU in the kernel's run queue.
    Runqueue,
    /// On a virtual CPU as far as the guest kernel knows, while the hypervisor ran something
    /// else on it (steal time).
    Steal,
    /// A goroutine runnable, waiting for Go's scheduler to run it.
    GoRunqueue,
    Lock,
    /// A goroutine parked on a channel send, receive or select.
    Chan,
    NetIo,
    DiskIo,
    Sleep,
    /// A goroutine waiting for Go's garbage collector (assist, sweep, a GC cycle).
    Gc,
    Other,
    /// Time of the connection's TLS handshake, carried by its first request.
    TlsHandshake,
}

/// How many causes there are.
pub const CAUSES: usize = Cause::ALL.len();

impl Cause {
    /// Every cause, in the order of the outputs' columns.
    pub const ALL: [Cause; 12] = [
        Cause::OnCpu,
        Cause::Runqueue,
        Cause::Steal,
        Cause::GoRunqueue,
        Cause::Lock,
        Cause::Chan,
        Cause::NetIo,
        Cause::DiskIo,
        Cause::Sleep,
        Cause::Gc,
        Cause::Other,
        Cause::TlsHandshake,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cause::OnCpu => "on_cpu",
            Cause::Runqueue => "runqueue",
            Cause::Steal => "steal",
            Cause::GoRunqueue => "go_runqueue",
            Cause::Lock => "lock",
            Cause::Chan => "chan",
            Cause::NetIo => "net_io",
            Cause::DiskIo => "disk_io",
            Cause::Sleep => "sleep",
            Cause::Gc => "gc",
            Cause::Other => "other",
            Cause::TlsHandshake => "tls_handshake",
        }
    }

    pub fn from_name(name: &str) -> Option<Cause> {
        Cause::ALL.into_iter().find(|c| c.name() == name)
    }

    pub const fn index(self) -> usize {
        self as usize
    }

    /// A wait where the context blocked or parked, at a call site a stack names (not time on
    /// a CPU, in a run queue, or a handshake carried whole).
    pub fn is_blocking_wait(self) -> bool {
        !matches!(
            self,
            Cause::OnCpu | Cause::Runqueue | Cause::Steal | Cause::GoRunqueue | Cause::TlsHandshake
        )
    }
}

impl Serialize for Cause {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Cause {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Cause::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown cause `{name}`")))
    }
}

/// Nanoseconds per cause, indexed by [`Cause::index`].
pub type Breakdown = [u64; CAUSES];

/// `end - start`, per cause.
pub fn diff(end: &Breakdown, start: &Breakdown) -> Breakdown {
    std::array::from_fn(|i| end[i].saturating_sub(start[i]))
}

/// The syscalls whose blocking has one cause whatever their arguments. Path and metadata
/// syscalls of the file system block on the disk (the inode, the directory, the journal).
const BLOCKING_SYSCALLS: &[(u32, Cause)] = &[
    (nr::FUTEX, Cause::Lock),
    (nr::FUTEX_WAITV, Cause::Lock),
    (nr::NANOSLEEP, Cause::Sleep),
    (nr::CLOCK_NANOSLEEP, Cause::Sleep),
    (nr::POLL, Cause::NetIo),
    (nr::PPOLL, Cause::NetIo),
    (nr::SELECT, Cause::NetIo),
    (nr::PSELECT6, Cause::NetIo),
    (nr::EPOLL_WAIT, Cause::NetIo),
    (nr::EPOLL_PWAIT, Cause::NetIo),
    (nr::EPOLL_PWAIT2, Cause::NetIo),
    (nr::ACCEPT, Cause::NetIo),
    (nr::ACCEPT4, Cause::NetIo),
    (nr::CONNECT, Cause::NetIo),
    (nr::FSYNC, Cause::DiskIo),
    (nr::FDATASYNC, Cause::DiskIo),
    (nr::SYNC_FILE_RANGE, Cause::DiskIo),
    (Sysno::open as u32, Cause::DiskIo),
    (Sysno::openat as u32, Cause::DiskIo),
    (Sysno::openat2 as u32, Cause::DiskIo),
    (Sysno::creat as u32, Cause::DiskIo),
    (Sysno::stat as u32, Cause::DiskIo),
    (Sysno::lstat as u32, Cause::DiskIo),
    (Sysno::fstat as u32, Cause::DiskIo),
    (Sysno::newfstatat as u32, Cause::DiskIo),
    (Sysno::statx as u32, Cause::DiskIo),
    (Sysno::getdents64 as u32, Cause::DiskIo),
    (Sysno::unlink as u32, Cause::DiskIo),
    (Sysno::unlinkat as u32, Cause::DiskIo),
    (Sysno::rename as u32, Cause::DiskIo),
    (Sysno::renameat as u32, Cause::DiskIo),
    (Sysno::renameat2 as u32, Cause::DiskIo),
    (Sysno::mkdir as u32, Cause::DiskIo),
    (Sysno::mkdirat as u32, Cause::DiskIo),
    (Sysno::rmdir as u32, Cause::DiskIo),
    (Sysno::truncate as u32, Cause::DiskIo),
    (Sysno::ftruncate as u32, Cause::DiskIo),
    (Sysno::fallocate as u32, Cause::DiskIo),
];

/// What a read or write blocked on, by what its fd is.
fn fd_cause(kind: FdKind) -> Cause {
    match kind {
        FdKind::Connection | FdKind::Http2Connection | FdKind::Socket => Cause::NetIo,
        FdKind::File => Cause::DiskIo,
        FdKind::Other => Cause::Other,
    }
}

/// Why a thread that switched out in state `state` (sched_switch `prev_state`) inside
/// `syscall` is blocked; `fd_kind` says what a read's or write's fd is.
pub fn blocked_cause(
    syscall: Option<InSyscall>,
    state: u32,
    fd_kind: impl FnOnce(u32) -> FdKind,
) -> Cause {
    let Some(s) = syscall else {
        // Outside any syscall, uninterruptible sleep is (nearly always) a major page
        // fault waiting for the disk.
        return if state & STATE_UNINTERRUPTIBLE != 0 {
            Cause::DiskIo
        } else {
            Cause::Other
        };
    };
    if let Some(&(_, cause)) = BLOCKING_SYSCALLS.iter().find(|(n, _)| *n == s.nr) {
        return cause;
    }
    if is_read(s.nr) || is_write(s.nr) {
        return fd_cause(fd_kind(s.arg0 as u32));
    }
    Cause::Other
}

/// Go's wait reasons (`runtime.waitReasonStrings`, Go 1.17 to 1.27) by the cause they are:
/// the strings, not the numbers, which change between releases. A reason not listed is
/// `other`, and named in `go_wait_reasons_ns`.
const GO_WAIT_REASONS: &[(&str, Cause)] = &[
    ("semacquire", Cause::Lock), // sync.Mutex, RWMutex, WaitGroup before Go 1.20
    ("sync.Mutex.Lock", Cause::Lock),
    ("sync.RWMutex.RLock", Cause::Lock),
    ("sync.RWMutex.Lock", Cause::Lock),
    ("sync.WaitGroup.Wait", Cause::Lock),
    ("sync.WaitGroup.Wait (durable)", Cause::Lock),
    ("sync.Cond.Wait", Cause::Lock),
    ("chan receive", Cause::Chan),
    ("chan send", Cause::Chan),
    ("chan receive (nil chan)", Cause::Chan),
    ("chan send (nil chan)", Cause::Chan),
    ("select", Cause::Chan),
    ("select (no cases)", Cause::Chan),
    ("chan receive (durable)", Cause::Chan),
    ("chan send (durable)", Cause::Chan),
    ("select (durable)", Cause::Chan),
    ("chan receive (synctest)", Cause::Chan),
    ("chan send (synctest)", Cause::Chan),
    ("select (synctest)", Cause::Chan),
    ("IO wait", Cause::NetIo),
    ("sleep", Cause::Sleep),
    ("GC assist marking", Cause::Gc),
    ("GC assist wait", Cause::Gc),
    ("GC sweep wait", Cause::Gc),
    ("GC scavenge wait", Cause::Gc),
    ("GC weak to strong wait", Cause::Gc),
    ("GC mark termination", Cause::Gc),
    ("wait for GC cycle", Cause::Gc),
    ("garbage collection", Cause::Gc),
    ("garbage collection scan", Cause::Gc),
    ("stopping the world", Cause::Gc),
];

/// The sync object a Go semaphore belongs to: its type, and the semaphore's offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SemaphoreOwner {
    pub kind: &'static str,
    pub sema_offset: u64,
}

/// Go's wait reasons for a park in `runtime.semacquire1`, with the sync object the
/// semaphore belongs to where the reason tells it (`sync.Mutex{state int32; sema uint32}`;
/// `sync.RWMutex{w Mutex; writerSem, readerSem uint32; ...}`: Go 1.20 to 1.27.3 sources).
/// Before Go 1.20 every semaphore wait is `semacquire`.
const SEMAPHORE_WAIT_REASONS: &[(&str, Option<SemaphoreOwner>)] = &[
    ("semacquire", None),
    (
        "sync.Mutex.Lock",
        Some(SemaphoreOwner {
            kind: "sync.Mutex",
            sema_offset: 4,
        }),
    ),
    (
        "sync.RWMutex.Lock",
        Some(SemaphoreOwner {
            kind: "sync.RWMutex",
            sema_offset: 8,
        }),
    ),
    (
        "sync.RWMutex.RLock",
        Some(SemaphoreOwner {
            kind: "sync.RWMutex",
            sema_offset: 12,
        }),
    ),
    ("sync.WaitGroup.Wait", None),
    ("sync.WaitGroup.Wait (durable)", None),
];

/// Whether Go's wait reason `reason` is a semaphore wait (a park in `runtime.semacquire1`),
/// and if so the object its semaphore belongs to, when the reason tells.
pub fn semaphore_wait(reason: &str) -> Option<Option<SemaphoreOwner>> {
    SEMAPHORE_WAIT_REASONS
        .iter()
        .find(|(name, _)| *name == reason)
        .map(|(_, owner)| *owner)
}

/// The cause of a goroutine parked for Go's wait reason `reason` (its string).
pub fn go_wait_cause(reason: &str) -> Cause {
    GO_WAIT_REASONS
        .iter()
        .find(|(name, _)| *name == reason)
        .map_or(Cause::Other, |(_, cause)| *cause)
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
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for cause in Cause::ALL {
            assert_eq!(Cause::from_name(cause.name()), Some(cause));
            let json = serde_json::to_string(&cause).unwrap();
            assert_eq!(json, format!("\"{}\"", cause.name()));
            assert_eq!(serde_json::from_str::<Cause>(&json).unwrap(), cause);
        }
        assert!(serde_json::from_str::<Cause>("\"nope\"").is_err());
    }

    #[test]
    fn go_wait_reasons_map_to_causes_by_their_strings() {
        assert_eq!(go_wait_cause("sync.Mutex.Lock"), Cause::Lock);
        assert_eq!(go_wait_cause("semacquire"), Cause::Lock);
        assert_eq!(go_wait_cause("chan receive"), Cause::Chan);
        assert_eq!(go_wait_cause("select"), Cause::Chan);
        assert_eq!(go_wait_cause("IO wait"), Cause::NetIo);
        assert_eq!(go_wait_cause("sleep"), Cause::Sleep);
        assert_eq!(go_wait_cause("GC assist wait"), Cause::Gc);
        assert_eq!(go_wait_cause("force gc (idle)"), Cause::Other);
    }

    #[test]
    fn blocking_reasons_map_to_causes() {
        let syscall = |nr| Some(InSyscall { nr, arg0: 3 });
        let socket = |_| FdKind::Socket;
        assert_eq!(blocked_cause(syscall(nr::FUTEX), 1, socket), Cause::Lock);
        assert_eq!(blocked_cause(syscall(nr::READ), 1, socket), Cause::NetIo);
        assert_eq!(
            blocked_cause(syscall(nr::READ), 2, |_| FdKind::File),
            Cause::DiskIo
        );
        assert_eq!(
            blocked_cause(None, STATE_UNINTERRUPTIBLE, socket),
            Cause::DiskIo
        );
        assert_eq!(blocked_cause(None, 1, socket), Cause::Other);
        assert_eq!(
            blocked_cause(syscall(61 /* wait4 */), 1, socket),
            Cause::Other
        );
        assert_eq!(
            blocked_cause(syscall(Sysno::openat as u32), 2, socket),
            Cause::DiskIo,
            "creating a file waits on the journal"
        );
    }
}
