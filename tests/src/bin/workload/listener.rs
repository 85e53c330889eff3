//! Thread per connection, for the server and the backend.

use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use anyhow::Result;

/// Pause after a failed `accept` (e.g. out of file descriptors) before the next one.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Accepts connections forever, handing each to `handle` on its own thread named `name`.
pub fn accept_loop(
    listener: &TcpListener,
    name: &str,
    handle: impl Fn(TcpStream) -> Result<()> + Clone + Send + 'static,
) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => spawn_connection(name, stream, handle.clone()),
            Err(e) => {
                eprintln!("workload: accept: {e}");
                thread::sleep(ACCEPT_ERROR_PAUSE);
            }
        }
    }
}

/// Runs `f(stream)` on a new named thread, logging its error if it fails.
fn spawn_connection(
    name: &str,
    stream: TcpStream,
    f: impl FnOnce(TcpStream) -> Result<()> + Send + 'static,
) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let thread_peer = peer.clone();
    let spawned = thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            if let Err(e) = f(stream) {
                eprintln!("workload: connection from {thread_peer}: {e:#}");
            }
        });
    if let Err(e) = spawned {
        eprintln!("workload: cannot spawn a thread for {peer}: {e}");
    }
}
