//! What the target's fds are, from /proc: the connections already open at attach time, and the
//! kind of an fd first seen in a syscall.

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
};

use procfs::{
    net::{TcpNetEntry, TcpState},
    process::{FDTarget, Process},
};

use crate::engine::{FdKind, FdResolver};

/// Resolves fds of one process through /proc/PID/fd (the process's /proc directory is held
/// open, so a PID reused after the target exits is never read instead).
pub struct ProcFds {
    process: Option<Process>,
}

impl ProcFds {
    pub fn new(pid: u32) -> Self {
        ProcFds {
            process: Process::new(pid as i32).ok(),
        }
    }

    /// Inodes of the server-side TCP connections open now: established sockets whose local
    /// port is one that is listened on in the process's network namespace.
    fn server_side_inodes(&self) -> HashSet<u64> {
        let Some(process) = &self.process else {
            return HashSet::new();
        };
        let tcp4 = process.tcp().unwrap_or_default();
        let tcp6 = process.tcp6().unwrap_or_default();
        let sockets: Vec<TcpSocket> = tcp4.iter().chain(&tcp6).map(TcpSocket::from).collect();
        server_side_inodes(&sockets)
    }

    /// Server-side TCP connections open now: each one's fd and socket inode.
    pub fn open_connections(&self) -> Vec<(u32, u64)> {
        let inodes = self.server_side_inodes();
        let Some(fds) = self.process.as_ref().and_then(|p| p.fd().ok()) else {
            return Vec::new();
        };
        fds.flatten()
            .filter_map(|fd| match fd.target {
                FDTarget::Socket(inode) if inodes.contains(&inode) => Some((fd.fd as u32, inode)),
                _ => None,
            })
            .collect()
    }
}

impl FdResolver for ProcFds {
    fn resolve(&mut self, fd: u32) -> FdKind {
        // The fd may have been closed since the event; then it is reported as `Other`.
        let Some(info) = self
            .process
            .as_ref()
            .and_then(|p| p.fd_from_fd(fd as i32).ok())
        else {
            return FdKind::Other;
        };
        match info.target {
            // Accepted before the tracer saw the accept (or by a path it does not trace).
            FDTarget::Socket(inode) if self.server_side_inodes().contains(&inode) => {
                FdKind::Connection
            }
            FDTarget::Socket(_) => FdKind::Socket,
            FDTarget::Path(_) => match self.fd_metadata(fd) {
                Some(m) if is_file(&m) => FdKind::File,
                _ => FdKind::Other,
            },
            _ => FdKind::Other, // pipe:, anon_inode:
        }
    }

    /// One `stat` through the fd's link.
    fn is_socket_inode(&mut self, fd: u32, inode: u64) -> Option<bool> {
        let meta = self.fd_metadata(fd)?;
        Some(meta.file_type().is_socket() && meta.ino() == inode)
    }

    /// One `stat` through the fd's link: a socket's inode is a socket, whichever it is.
    fn recheck(&mut self, fd: u32) -> Option<FdKind> {
        let meta = self.fd_metadata(fd)?;
        Some(if meta.file_type().is_socket() {
            FdKind::Socket
        } else if is_file(&meta) {
            FdKind::File
        } else {
            FdKind::Other
        })
    }
}

impl ProcFds {
    /// What the target's `fd` refers to, by one `stat` through its /proc link (`None`: not
    /// open, or the target gone).
    fn fd_metadata(&self, fd: u32) -> Option<fs::Metadata> {
        let pid = self.process.as_ref()?.pid;
        fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok()
    }
}

/// A regular file or a block device: what waits for the disk.
fn is_file(meta: &fs::Metadata) -> bool {
    meta.is_file() || meta.file_type().is_block_device()
}

/// What of a TCP socket table entry tells a server-side connection.
struct TcpSocket {
    local_port: u16,
    state: TcpState,
    inode: u64,
}

impl From<&TcpNetEntry> for TcpSocket {
    fn from(e: &TcpNetEntry) -> Self {
        TcpSocket {
            local_port: e.local_address.port(),
            state: e.state.clone(),
            inode: e.inode,
        }
    }
}

fn server_side_inodes(sockets: &[TcpSocket]) -> HashSet<u64> {
    let listening: HashSet<u16> = sockets
        .iter()
        .filter(|s| s.state == TcpState::Listen)
        .map(|s| s.local_port)
        .collect();
    sockets
        .iter()
        .filter(|s| s.state == TcpState::Established && listening.contains(&s.local_port))
        .map(|s| s.inode)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(local_port: u16, state: TcpState, inode: u64) -> TcpSocket {
        TcpSocket {
            local_port,
            state,
            inode,
        }
    }

    #[test]
    fn server_side_connections_are_those_on_listening_ports() {
        let sockets = [
            socket(8080, TcpState::Listen, 1001),
            socket(8080, TcpState::Established, 1002),
            socket(54322, TcpState::Established, 1003),
        ];
        assert_eq!(
            server_side_inodes(&sockets),
            HashSet::from([1002]),
            "not the listener, not the outgoing one"
        );
    }

    #[test]
    fn sockets_of_this_process_are_resolved() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut fds = ProcFds::new(std::process::id());
        use std::os::fd::AsRawFd as _;
        assert_eq!(fds.resolve(server.as_raw_fd() as u32), FdKind::Connection);
        assert_eq!(fds.resolve(client.as_raw_fd() as u32), FdKind::Socket);
        let inode = fs::metadata(format!("/proc/self/fd/{}", server.as_raw_fd()))
            .unwrap()
            .ino();
        assert!(fds
            .open_connections()
            .contains(&(server.as_raw_fd() as u32, inode)));
        assert_eq!(
            fds.is_socket_inode(server.as_raw_fd() as u32, inode),
            Some(true)
        );
        assert_eq!(
            fds.is_socket_inode(client.as_raw_fd() as u32, inode),
            Some(false),
            "another socket"
        );
        assert_eq!(fds.recheck(server.as_raw_fd() as u32), Some(FdKind::Socket));
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        assert_eq!(fds.recheck(file.as_raw_fd() as u32), Some(FdKind::File));
        let (reader, _writer) = std::io::pipe().unwrap();
        assert_eq!(fds.recheck(reader.as_raw_fd() as u32), Some(FdKind::Other));
    }
}
