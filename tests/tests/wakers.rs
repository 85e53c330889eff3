//! Who woke a blocked thread, checked on a third-party threaded server (CPython's
//! `threading` and `http.server`, in `tests/python/lock_server.py`), traced for real.
//!
//! - A lock handed between the server's threads can only be released by one of them, so every
//!   thread named as a waker of any of its futexes belongs to the server process: a waker from
//!   another process (`swapper`, the load generator, a kworker) means the tracer named the
//!   task that happened to be running, not the one that woke.
//! - The `ticker` thread waits with a timeout on a lock nobody ever releases, so only the
//!   timer can end its waits: its wakers are `(timer)` interrupts, never a thread.
//!
//! A waker may also be `unknown`: the kernel skips a tracepoint program while another tracing
//! program runs on the same CPU (a timer interrupt that lands while a thread is inside
//! `task_newtask` or `sched_process_exit`, or another tool's program), and then the wakeup's
//! `sched_waking` is not seen. That is an honest answer, not a wrong one; it must stay rare.

use std::{io::Write as _, net::UdpSocket, path::PathBuf, process::Command, time::Duration};

use tracer::output::summary::{Lock, LockWaker, WakerContext};
use tracer_tests::{session::Tracer, workspace_root, TempDir, Workload};

const CLIENTS: usize = 4;
const REQUESTS_PER_CLIENT: usize = 8;

fn lock_server() -> PathBuf {
    workspace_root().join("tests/python/lock_server.py")
}

fn thread_wakers(lock: &Lock) -> impl Iterator<Item = &LockWaker> {
    lock.wakers
        .iter()
        .filter(|w| w.context == WakerContext::Thread)
}

#[test]
#[ignore = "needs root"]
fn lock_handoff_wakers_are_the_servers_own_threads_and_timeouts_are_the_timer() {
    let server = Workload::spawn_exe(&lock_server(), &[]);
    let tracer = Tracer::attach(server.pid).args(["-i", "1"]).start();

    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut client = tracer_tests::http::HttpClient::connect(addr).expect("connect");
                for _ in 0..REQUESTS_PER_CLIENT {
                    let response = client.get("/lock?ms=15").expect("request");
                    assert_eq!(response.status, 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    let done = tracer.stop();
    assert!(done.status.success(), "tracer failed: {}", done.stderr);
    let locks = &done.summary().locks;
    assert!(!locks.is_empty(), "no lock seen: {:?}", done.summary());

    for lock in locks {
        for w in &lock.wakers {
            match w.context {
                WakerContext::Thread => assert_eq!(
                    w.pid,
                    Some(server.pid),
                    "a waker outside the server woke {lock:?}"
                ),
                WakerContext::Interrupt | WakerContext::Unknown => {
                    assert!(w.tid.is_none(), "an interrupt named as a thread: {w:?}");
                    assert!(w.comm.starts_with('('), "{w:?}");
                }
            }
        }
    }

    // The handed-off lock (and the GIL): woken by several of the server's threads.
    assert!(
        locks.iter().any(|l| {
            let tids: std::collections::BTreeSet<u32> =
                thread_wakers(l).filter_map(|w| w.tid).collect();
            tids.len() >= 2
        }),
        "no lock woken by two server threads: {locks:?}"
    );

    // The ticker's lock: only ever woken by its timeout.
    let ticker = locks
        .iter()
        .find(|l| l.waiters.first().is_some_and(|w| w.comm == "ticker"))
        .unwrap_or_else(|| panic!("the ticker's lock is not listed: {locks:?}"));
    assert!(ticker.waits >= 10, "{ticker:?}");
    let wakers = &ticker.wakers;
    let count = |context: WakerContext| -> u64 {
        wakers
            .iter()
            .filter(|w| w.context == context)
            .map(|w| w.count)
            .sum()
    };
    for w in wakers {
        assert!(
            w.interrupt.as_deref() == Some("timer") || w.context == WakerContext::Unknown,
            "the ticker was woken by {w:?}: {ticker:?}"
        );
    }
    assert!(
        count(WakerContext::Interrupt) > 4 * count(WakerContext::Unknown),
        "the timer is named for most of the ticker's wakeups: {ticker:?}"
    );

    // The console's lock list says the same: the timer, never a thread, woke the ticker.
    let line = done
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with(&ticker.address))
        .unwrap_or_else(|| panic!("the ticker's lock is not in the console\n{}", done.stdout));
    let (_, woken_by) = line
        .split_once("woken by ")
        .unwrap_or_else(|| panic!("no wakers in {line:?}"));
    let timer = count(WakerContext::Interrupt);
    assert!(
        woken_by.starts_with(&format!("(timer) x{timer}")) && !woken_by.contains('/'),
        "the console names the ticker's wakers {woken_by:?}, the summary {ticker:?}"
    );
}

/// The x86-64 syscalls the readers block in: Python's `socket.recvfrom` and a FIFO's
/// unbuffered `read(1)`.
const SYS_READ: u32 = 0;
const SYS_RECVFROM: u32 = 45;

/// Wakeups each source sends in `a_packet_is_a_softirq_and_a_fifo_write_is_its_writer`.
const WAKEUPS: usize = 30;
/// Of which at least this many must find their reader blocked: on loaded cores a reader can
/// still be on its way back to its blocking call when the next datagram or byte arrives.
const WAKEUPS_SEEN: usize = 5;

/// Which context woke a blocked thread, as the kernel side tells interrupts from tasks:
/// without following softirqs, by the stack the wakeup ran on. A datagram sent on loopback is
/// delivered by the NET_RX softirq that the sender's own `local_bh_enable()` runs, so the
/// current task there is the sender (this test), but the waker is the softirq. A write to a
/// FIFO wakes the reader in the writer's own context: the waker is this test's thread.
/// Checked in the tracer's event stream (`TRACER_EVENT_DUMP`), where every wakeup is.
#[test]
#[ignore = "needs root"]
fn a_packet_is_a_softirq_and_a_fifo_write_is_its_writer() {
    let fifo = TempDir::absent("wake-fifo");
    let script = workspace_root().join("tests/python/wake_sources.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg(fifo.path()).arg(WAKEUPS.to_string());
    let target = Workload::start(cmd);
    let dump = TempDir::absent("wake-dump");
    let tracer = Tracer::attach(target.pid)
        .env("TRACER_EVENT_DUMP", dump.path())
        .start();

    let udp = UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .open(fifo.path())
        .expect("the target's FIFO");
    let readers = thread_ids_by_name(target.pid);
    for _ in 0..WAKEUPS {
        // Apart, so that each finds its reader blocked again.
        std::thread::sleep(Duration::from_millis(10));
        udp.send_to(b"x", target.addr).expect("send a datagram");
        writer.write_all(b"x").expect("write the FIFO");
    }
    let done = tracer.stop();
    assert!(done.status.success(), "{}", done.describe());

    let dump = std::fs::read_to_string(dump.path()).expect("the event dump");
    let me = std::process::id();
    // The wakers of the thread `name`'s blocks in syscall `nr`. A reader also blocks on
    // Python's GIL after its read returns (a futex wait with a 5 ms timeout, which a timer
    // ends when the GIL is not handed over in time): those wakeups are not the source's.
    let wakers_of = |name: &str, nr: u32| -> Vec<&str> {
        let tid = readers
            .iter()
            .find(|(_, n)| n == name)
            .unwrap_or_else(|| panic!("no thread {name} in the target: {readers:?}"))
            .0;
        // A wakeup comes with the switch-in it led to (`woken`), or on its own (a new
        // thread's first); the block it ended is the thread's last switch-out's syscall.
        let this_thread = format!("tid: Tid({tid}), kind: ");
        let in_nr = format!("syscall: Some(InSyscall {{ nr: {nr},");
        let mut blocked_in_nr = false;
        let mut wakers = Vec::new();
        for event in dump
            .lines()
            .filter_map(|l| Some(l.split_once(&this_thread)?.1))
        {
            if event.starts_with("SwitchOut") {
                blocked_in_nr = event.contains(&in_nr);
            } else if let Some((_, waker)) = event.split_once("waker: ") {
                if blocked_in_nr {
                    wakers.push(waker);
                }
            }
        }
        wakers
    };
    let by_me = format!("pid: {me},");
    let udp_wakers = wakers_of("udp-reader", SYS_RECVFROM);
    let softirqs = udp_wakers
        .iter()
        .filter(|w| w.starts_with("Interrupt(Softirq)"))
        .count();
    assert!(
        softirqs >= WAKEUPS_SEEN,
        "{softirqs} of {WAKEUPS} datagrams woke their reader from a softirq: {udp_wakers:#?}"
    );
    assert!(
        !udp_wakers.iter().any(|w| w.contains(&by_me)),
        "a datagram's arrival named the sending thread as the waker: {udp_wakers:#?}"
    );
    let fifo_wakers = wakers_of("fifo-reader", SYS_READ);
    let writes = fifo_wakers
        .iter()
        .filter(|w| w.starts_with("Thread {") && w.contains(&by_me))
        .count();
    assert!(
        writes >= WAKEUPS_SEEN,
        "{writes} of {WAKEUPS} FIFO writes named their writer: {fifo_wakers:#?}"
    );
    assert!(
        !fifo_wakers.iter().any(|w| w.starts_with("Interrupt")),
        "a FIFO write was taken for an interrupt: {fifo_wakers:#?}"
    );
}

/// The target's threads: (tid, name).
fn thread_ids_by_name(pid: u32) -> Vec<(u32, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc/PID/task")
        .flatten()
        .filter_map(|e| {
            let tid = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            Some((tid, comm.trim_end().to_string()))
        })
        .collect()
}
