//! `handoff-server ROUNDS`: an event-loop thread that leaves some answers to a writer thread
//! on the other CPU without leaving its own CPU, for the test of the kernel side's count of
//! the requests a stretch keeps unanswered (tracer-ebpf's `stretch.rs`, test
//! `stretch_requests`).
//!
//! Prints `listening 127.0.0.1:PORT pid PID`, accepts two connections, A then B, and waits
//! until each has its requests there: `ROUNDS + 1` on A, `2 * ROUNDS` on B, each
//! [`REQUEST_LEN`] bytes (`GET /xx HTTP/1.1\r\n\r\n`). Then the event loop, pinned to the last
//! CPU, answers A's first request itself, and in each round, without a system call that can
//! block and so without leaving its CPU:
//! - reads A's next request, and has the writer (pinned to CPU 0, spinning) answer it;
//! - once that answer is written, reads B's next two requests, answering each itself.
//!
//! B's requests never wait for another's answer (none is open when each is read). Each of
//! B's responses says `X-Stretch-Held: 1` when the event loop had not left its CPU since its
//! round began (its thread's context switches by `getrusage(RUSAGE_THREAD)` unchanged).
//! Then it spins for at most 60 s with no system call.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tracer_tests::pin_this_thread_to_cpu;

/// Every request's length: one `read` takes one request.
pub const REQUEST_LEN: usize = 22;

fn main() -> Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .context("usage: handoff-server ROUNDS")?
        .parse()
        .context("ROUNDS")?;
    let listener = tracer_tests::listen_and_announce().context("listen")?;
    let (mut a, _) = listener.accept()?;
    let (mut b, _) = listener.accept()?;
    wait_for_bytes(&a, (rounds + 1) * REQUEST_LEN)?;
    wait_for_bytes(&b, 2 * rounds * REQUEST_LEN)?;

    // 0: nothing to do; 1: answer A's request; 2: answered.
    let turn = Arc::new(AtomicU32::new(0));
    let writer = {
        let (turn, mut a) = (Arc::clone(&turn), a.try_clone()?);
        std::thread::spawn(move || -> Result<()> {
            pin_this_thread_to_cpu(0);
            for _ in 0..rounds {
                spin_until(&turn, 1);
                a.write_all(&response(false))?;
                turn.store(2, Ordering::Release);
            }
            Ok(())
        })
    };
    pin_this_thread_to_cpu(tracer_tests::last_cpu());
    read_request(&mut a)?;
    a.write_all(&response(false))?;
    for _ in 0..rounds {
        let switches = context_switches();
        read_request(&mut a)?;
        turn.store(1, Ordering::Release);
        spin_until(&turn, 2);
        turn.store(0, Ordering::Relaxed);
        for _ in 0..2 {
            read_request(&mut b)?;
            let held = context_switches() == switches;
            b.write_all(&response(held))?;
        }
    }
    writer.join().expect("the writer thread")?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        std::hint::spin_loop();
    }
    Ok(())
}

/// Until `socket` has `len` bytes to read (a peek, which the tracer does not count as a read).
fn wait_for_bytes(socket: &TcpStream, len: usize) -> Result<()> {
    let mut buf = vec![0u8; len];
    let deadline = Instant::now() + Duration::from_secs(30);
    while socket.peek(&mut buf)? < len {
        anyhow::ensure!(Instant::now() < deadline, "the requests did not all come");
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn read_request(socket: &mut TcpStream) -> Result<()> {
    let mut request = [0u8; REQUEST_LEN];
    socket.read_exact(&mut request)?;
    Ok(())
}

fn spin_until(turn: &AtomicU32, value: u32) {
    while turn.load(Ordering::Acquire) != value {
        std::hint::spin_loop();
    }
}

fn response(held: bool) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Stretch-Held: {}\r\n\r\n",
        u8::from(held)
    )
    .into_bytes()
}

/// The calling thread's voluntary and involuntary context switches so far.
fn context_switches() -> i64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    usage.ru_nvcsw + usage.ru_nivcsw
}
