//! What the target is, read from /proc and its executable: the process and its threads,
//! what its file descriptors are, and the TLS libraries it uses (OpenSSL, Go's crypto/tls).

mod executable;
pub mod fds;
pub mod go;
pub mod openssl;
mod process;

pub use executable::{mappings as executable_mappings, Executable};
pub use process::{check_target, read_comm, target_alive, Target};
