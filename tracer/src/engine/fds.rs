//! What the target's fds are, as far as attribution cares.

use rustc_hash::FxHashMap as HashMap;

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

/// The kinds of fds seen so far, asking the resolver for the others once, and the connection
/// last seen behind each socket fd.
pub struct FdTable<R> {
    resolver: R,
    kinds: HashMap<u32, FdKind>,
    connections: HashMap<u32, u64>,
}

impl<R: FdResolver> FdTable<R> {
    pub fn new(resolver: R) -> Self {
        FdTable {
            resolver,
            kinds: HashMap::default(),
            connections: HashMap::default(),
        }
    }

    /// The connection (its identity) last seen behind `fd`.
    pub fn connection(&self, fd: u32) -> Option<u64> {
        self.connections.get(&fd).copied()
    }

    /// `fd` is `connection`, of `kind`.
    pub fn set_connection(&mut self, fd: u32, connection: u64, kind: FdKind) {
        self.connections.insert(fd, connection);
        self.kinds.insert(fd, kind);
    }

    pub fn kind(&mut self, fd: u32) -> FdKind {
        if let Some(kind) = self.kinds.get(&fd) {
            return *kind;
        }
        let kind = self.resolver.resolve(fd);
        self.kinds.insert(fd, kind);
        kind
    }

    /// What is known of `fd`, without asking the resolver.
    pub fn known(&self, fd: u32) -> Option<FdKind> {
        self.kinds.get(&fd).copied()
    }

    pub fn set(&mut self, fd: u32, kind: FdKind) {
        self.kinds.insert(fd, kind);
    }

    pub fn forget(&mut self, fd: u32) {
        self.kinds.remove(&fd);
        self.connections.remove(&fd);
    }
}
