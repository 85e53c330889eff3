//! What the target's fds are, as far as attribution cares.

use rustc_hash::FxHashMap as HashMap;

/// What an fd refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdKind {
    /// A server-side connection socket: requests are delimited on it.
    Connection,
    /// A server-side connection carrying HTTP/2 (told by the Go goroutines that move its
    /// frames): its streams' requests are delimited by their handler goroutines, not by its
    /// reads and writes.
    Http2Connection,
    /// Any other socket (a backend connection, a listener, a UDP socket).
    Socket,
    /// A regular file or block device.
    File,
    /// Anything else (pipe, eventfd, tty, unknown).
    Other,
}

impl FdKind {
    /// What an fd of this kind is, whichever socket: any socket is [`FdKind::Socket`] (which
    /// socket, a connection or not, is for the socket records to say).
    pub fn class(self) -> FdKind {
        match self {
            FdKind::Connection | FdKind::Http2Connection => FdKind::Socket,
            kind => kind,
        }
    }
}

/// Finds the kind of an fd the engine has not seen opened.
pub trait FdResolver {
    fn resolve(&mut self, fd: u32) -> FdKind;

    /// Whether `fd` is now the socket whose inode is `inode` (`None`: not known, or `fd` is
    /// not open).
    fn is_socket_inode(&mut self, _fd: u32, _inode: u64) -> Option<bool> {
        None
    }

    /// What `fd` is now, asked again because what the table holds for it may be stale (its
    /// number closed and reused, unseen): any socket is [`FdKind::Socket`] (which socket is
    /// for the socket records to say), and `None` when `fd` is not open now.
    fn recheck(&mut self, fd: u32) -> Option<FdKind> {
        Some(self.resolve(fd).class())
    }
}

/// The kinds of fds seen so far, asking the resolver for the others once, and the connection
/// last seen behind each socket fd: one entry per fd, so a socket read or write looks its fd
/// up once.
pub struct FdTable<R> {
    resolver: R,
    fds: HashMap<u32, FdEntry>,
    /// The socket inodes of the connections found open at attach time, until the first
    /// socket read or write on their fd says which connection is behind it now.
    seeded: HashMap<u32, u64>,
}

#[derive(Clone, Copy)]
struct FdEntry {
    kind: FdKind,
    /// The connection (its identity) last seen behind a socket fd.
    connection: Option<u64>,
}

impl<R: FdResolver> FdTable<R> {
    pub fn new(resolver: R) -> Self {
        FdTable {
            resolver,
            fds: HashMap::default(),
            seeded: HashMap::default(),
        }
    }

    /// What is known of `fd` without asking the resolver, and the connection (its identity)
    /// last seen behind it.
    pub fn known_connection(&self, fd: u32) -> Option<(FdKind, Option<u64>)> {
        self.fds.get(&fd).map(|e| (e.kind, e.connection))
    }

    /// `fd` is a server-side connection found open at attach time, the socket `inode`.
    pub fn seed_connection(&mut self, fd: u32, inode: u64) {
        self.set(fd, FdKind::Connection);
        self.seeded.insert(fd, inode);
    }

    /// Whether `fd`, found open as a connection at attach time and not read or written
    /// since, still holds that connection. Its close is not seen, and the number may be
    /// another socket's by now, one the kernel side cannot place either (a Unix or UDP
    /// socket: no origin): asked of the resolver once, at the first socket read or write on
    /// it. When the resolver cannot tell (closed again by now), it is taken to be.
    pub fn seeded_connection_still_open(&mut self, fd: u32) -> bool {
        match self.seeded.remove(&fd) {
            Some(inode) => self.resolver.is_socket_inode(fd, inode) != Some(false),
            None => true,
        }
    }

    /// `fd` is `connection`, of `kind`.
    pub fn set_connection(&mut self, fd: u32, connection: u64, kind: FdKind) {
        self.seeded.remove(&fd);
        self.fds.insert(
            fd,
            FdEntry {
                kind,
                connection: Some(connection),
            },
        );
    }

    pub fn kind(&mut self, fd: u32) -> FdKind {
        if let Some(entry) = self.fds.get(&fd) {
            return entry.kind;
        }
        let kind = self.resolver.resolve(fd);
        self.set(fd, kind);
        kind
    }

    /// What is known of `fd`, without asking the resolver.
    pub fn known(&self, fd: u32) -> Option<FdKind> {
        self.fds.get(&fd).map(|e| e.kind)
    }

    /// A thread blocked reading or writing `fd`, in uninterruptible sleep or not. Closes are
    /// not seen, and only a socket's reads and writes say what their fd is, so what the
    /// table holds for `fd` may be a closed fd's whose number is now another file's. The
    /// way it sleeps tells when to ask again: a regular file's reads and writes wait for
    /// the disk uninterruptibly (the page cache, direct I/O, the inode's lock), while
    /// sockets, pipes, eventfds and ttys wait for their peer interruptibly. A block that
    /// does not fit the kind held (uninterruptible on a socket or an `other` fd,
    /// interruptible on a file) asks the resolver what `fd` is now, and a kind of another
    /// class replaces what was held. Returns whether that replaced a socket with a known
    /// connection (that connection is gone).
    pub fn recheck_at_block(&mut self, fd: u32, uninterruptible: bool) -> bool {
        let Some(entry) = self.fds.get(&fd).copied() else {
            return false; // asked for the first time by the block itself
        };
        if uninterruptible == (entry.kind == FdKind::File) {
            return false;
        }
        match self.resolver.recheck(fd) {
            Some(now) if now != entry.kind.class() => {
                self.seeded.remove(&fd);
                self.fds.insert(
                    fd,
                    FdEntry {
                        kind: now,
                        connection: None,
                    },
                );
                entry.connection.is_some()
            }
            // The same, or closed again by now: nothing better is known.
            _ => false,
        }
    }

    pub fn set(&mut self, fd: u32, kind: FdKind) {
        self.fds
            .entry(fd)
            .and_modify(|e| e.kind = kind)
            .or_insert(FdEntry {
                kind,
                connection: None,
            });
    }
}
