//! What the target's fds are, from /proc: the connections already open at attach time, and the
//! kind of an fd first seen in a syscall.

use std::{collections::HashSet, fs, os::unix::fs::FileTypeExt as _, path::PathBuf};

use crate::attribution::{FdKind, FdResolver};

/// Resolves fds of one process through /proc/PID/fd.
pub struct ProcFds {
    pid: u32,
}

impl ProcFds {
    pub fn new(pid: u32) -> Self {
        ProcFds { pid }
    }

    fn fd_path(&self, fd: u32) -> PathBuf {
        PathBuf::from(format!("/proc/{}/fd/{fd}", self.pid))
    }

    /// Inodes of the server-side TCP connections open now: established sockets whose local
    /// port is one that is listened on in the process's network namespace.
    fn server_side_inodes(&self) -> HashSet<u64> {
        let mut sockets = Vec::new();
        for table in ["tcp", "tcp6"] {
            if let Ok(text) = fs::read_to_string(format!("/proc/{}/net/{table}", self.pid)) {
                sockets.extend(parse_tcp_table(&text));
            }
        }
        server_side_inodes(&sockets)
    }

    /// Server-side TCP connections open now, by fd.
    pub fn open_connections(&self) -> Vec<u32> {
        let inodes = self.server_side_inodes();
        let Ok(dir) = fs::read_dir(format!("/proc/{}/fd", self.pid)) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|entry| {
                let fd: u32 = entry.file_name().to_str()?.parse().ok()?;
                let link = fs::read_link(entry.path()).ok()?;
                let inode = socket_inode(link.to_str()?)?;
                inodes.contains(&inode).then_some(fd)
            })
            .collect()
    }
}

impl FdResolver for ProcFds {
    fn resolve(&mut self, fd: u32) -> FdKind {
        // The fd may have been closed since the event; then it is reported as `Other`.
        let Ok(link) = fs::read_link(self.fd_path(fd)) else {
            return FdKind::Other;
        };
        let link = link.to_string_lossy();
        if let Some(inode) = socket_inode(&link) {
            // Accepted before the tracer saw the accept (or by a path it does not trace).
            return if self.server_side_inodes().contains(&inode) {
                FdKind::Connection
            } else {
                FdKind::Socket
            };
        }
        if !link.starts_with('/') {
            return FdKind::Other; // pipe:, anon_inode:
        }
        match fs::metadata(self.fd_path(fd)) {
            Ok(m) if m.is_file() || m.file_type().is_block_device() => FdKind::File,
            _ => FdKind::Other,
        }
    }
}

/// One row of /proc/net/tcp{,6}.
#[derive(Debug, PartialEq, Eq)]
pub struct TcpSocket {
    pub local_port: u16,
    pub state: u8,
    pub inode: u64,
}

const TCP_ESTABLISHED: u8 = 0x01;
const TCP_LISTEN: u8 = 0x0A;

/// Parse /proc/net/tcp: `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout
/// inode ...`, addresses as `HEXADDR:HEXPORT`.
pub fn parse_tcp_table(text: &str) -> Vec<TcpSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local = cols.get(1)?;
            let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            let state = u8::from_str_radix(cols.get(3)?, 16).ok()?;
            let inode = cols.get(9)?.parse().ok()?;
            Some(TcpSocket {
                local_port: port,
                state,
                inode,
            })
        })
        .collect()
}

fn server_side_inodes(sockets: &[TcpSocket]) -> HashSet<u64> {
    let listening: HashSet<u16> = sockets
        .iter()
        .filter(|s| s.state == TCP_LISTEN)
        .map(|s| s.local_port)
        .collect();
    sockets
        .iter()
        .filter(|s| s.state == TCP_ESTABLISHED && listening.contains(&s.local_port))
        .map(|s| s.inode)
        .collect()
}

fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D432 0100007F:2328 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn server_side_connections_are_those_on_listening_ports() {
        let sockets = parse_tcp_table(TABLE);
        assert_eq!(
            sockets[1],
            TcpSocket {
                local_port: 8080,
                state: TCP_ESTABLISHED,
                inode: 1002
            }
        );
        let inodes = server_side_inodes(&sockets);
        assert_eq!(
            inodes,
            HashSet::from([1002]),
            "not the listener, not the outgoing one"
        );
    }

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode("socket:[1234]"), Some(1234));
        assert_eq!(socket_inode("pipe:[1234]"), None);
    }
}
