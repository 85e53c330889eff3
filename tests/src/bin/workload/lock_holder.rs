//! `/lock`: a thread that holds the one contended mutex on request, so that the handler's
//! own `lock()` waits on a futex for the time asked for.

use std::sync::{mpsc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::measure::Span;

/// The one mutex `/lock` contends on.
static GLOBAL_LOCK: Mutex<()> = Mutex::new(());

/// Asks the lock holder to take [`GLOBAL_LOCK`] for `hold`, replying once it has it.
struct HoldRequest {
    hold: Duration,
    locked: mpsc::Sender<()>,
}

/// The handle of the thread that takes [`GLOBAL_LOCK`] on behalf of `/lock`.
pub struct LockHolder {
    requests: mpsc::Sender<HoldRequest>,
}

impl LockHolder {
    /// Starts the holder thread.
    pub fn spawn() -> Result<Self> {
        let (tx, rx) = mpsc::channel::<HoldRequest>();
        thread::Builder::new()
            .name("lock-holder".into())
            .spawn(move || {
                for req in rx {
                    let guard = GLOBAL_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
                    // A requester that went away will not contend; skip the hold.
                    if req.locked.send(()).is_ok() {
                        thread::sleep(req.hold);
                    }
                    drop(guard);
                }
            })
            .context("spawn lock holder")?;
        Ok(Self { requests: tx })
    }

    /// `/lock`: has the holder take the lock for `hold`, then times our own `lock()`.
    pub fn wait_for_lock(&self, hold: Duration) -> Result<Span> {
        let (locked_tx, locked_rx) = mpsc::channel();
        let req = HoldRequest {
            hold,
            locked: locked_tx,
        };
        self.requests
            .send(req)
            .ok()
            .context("lock holder is gone")?;
        locked_rx.recv().context("lock holder is gone")?;
        let (guard, waited) =
            Span::measure(|| GLOBAL_LOCK.lock().unwrap_or_else(PoisonError::into_inner));
        drop(guard);
        Ok(waited)
    }
}
