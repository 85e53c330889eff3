//! Synthetic event sequences for the attribution engine.

use super::*;
use tracer_common::{nr, tls_content, PREEMPT_STATE_BIT};

use super::tls::framing::read_past_finished;

const T: u32 = 100; // the server thread
const CONN: u32 = 7; // an accepted connection
const BACKEND: u32 = 8; // a socket to a backend
const FILE: u32 = 9; // a regular file
const ACCEPTED_EARLY: u32 = 10; // a connection accepted before the socket hooks were attached
const S: u32 = 1; // TASK_INTERRUPTIBLE as sched_switch reports it
const D: u32 = 2; // TASK_UNINTERRUPTIBLE

struct Fds;
impl FdResolver for Fds {
    fn resolve(&mut self, fd: u32) -> FdKind {
        match fd {
            BACKEND => FdKind::Socket,
            FILE => FdKind::File,
            ACCEPTED_EARLY => FdKind::Connection,
            _ => FdKind::Other,
        }
    }
}

thread_local! {
    /// Each fd's connection in this test (tests run on threads of their own).
    static CONNECTIONS: std::cell::RefCell<std::collections::HashMap<u32, u64>> =
        Default::default();
}

/// The connection behind `fd` now: a socket read or write event carries its identity.
fn connection_of(fd: u32) -> u64 {
    let generation = CONNECTIONS.with(|c| c.borrow().get(&fd).copied().unwrap_or(0));
    0xffff_0000_0000 | generation << 16 | u64::from(fd)
}

/// `fd` was closed and its number reused for a new connection (neither seen).
fn new_connection(fd: u32) {
    CONNECTIONS.with(|c| *c.borrow_mut().entry(fd).or_default() += 1);
}

/// What the kernel side says of `fd`'s socket: the server side of a TCP connection, except
/// the backend's.
fn origin_of(fd: u32) -> SocketOrigin {
    match fd {
        BACKEND | FILE => SocketOrigin::TcpClient,
        _ => SocketOrigin::TcpServer,
    }
}

fn engine() -> Engine<Fds> {
    let mut e = Engine::new(Fds);
    e.set_fd_kind(CONN, FdKind::Connection);
    e
}

fn waker(tid: u32) -> Waker {
    let mut comm = [0; 16];
    comm[..4].copy_from_slice(&tid.to_le_bytes());
    Waker::Thread {
        tid,
        pid: tid,
        comm,
    }
}

fn read(ts: u64, fd: u32, ret: i64) -> Event {
    Event::new(
        ts,
        Tid(T),
        EventKind::Syscall(SyscallReturn {
            nr: nr::READ,
            fd,
            ret,
            connection: connection_of(fd),
            origin: origin_of(fd),
            tls_record: 0,
        }),
    )
}

/// A read whose bytes start with a TLS record of `content` type and `len` bytes.
fn tls_read(ts: u64, ret: i64, content: u32, len: u32) -> Event {
    Event::new(
        ts,
        Tid(T),
        EventKind::Syscall(SyscallReturn {
            nr: nr::READ,
            fd: CONN,
            ret,
            connection: connection_of(CONN),
            origin: SocketOrigin::TcpServer,
            tls_record: content << 16 | len,
        }),
    )
}

fn tls_write(ts: u64, content: u32, len: u32) -> Event {
    Event::new(
        ts,
        Tid(T),
        EventKind::Syscall(SyscallReturn {
            nr: nr::WRITE,
            fd: CONN,
            ret: len as i64 + 5,
            connection: connection_of(CONN),
            origin: origin_of(CONN),
            tls_record: content << 16 | len,
        }),
    )
}

fn write(ts: u64, fd: u32) -> Event {
    Event::new(
        ts,
        Tid(T),
        EventKind::Syscall(SyscallReturn {
            nr: nr::WRITE,
            fd,
            ret: 10,
            connection: connection_of(fd),
            origin: origin_of(fd),
            tls_record: 0,
        }),
    )
}

fn block(ts: u64, nr: u32, arg0: u64) -> Event {
    block_in(ts, nr, arg0, S)
}

/// A blocking switch-out in `state` inside `nr` on `arg0`.
fn block_in(ts: u64, nr: u32, arg0: u64, state: u32) -> Event {
    Event::new(
        ts,
        Tid(T),
        EventKind::SwitchOut {
            run_delay: None,
            state,
            syscall: Some(InSyscall { nr, arg0 }),
            stack: None,
            cpu_steal: None,
        },
    )
}

fn wake(ts: u64) -> Event {
    Event::new(ts, Tid(T), EventKind::Wakeup { waker: waker(200) })
}

fn run(ts: u64) -> Event {
    Event::new(
        ts,
        Tid(T),
        EventKind::SwitchIn {
            run_delay: None,
            cpu_steal: None,
            woken: None,
        },
    )
}

/// A switch-in that reports the wakeup that led to it (as the kernel side sends them).
fn run_woken(ts: u64, woken_at: u64) -> Event {
    run_woken_by(ts, woken_at, None)
}

/// [`run_woken`], by a waker that took its stack where it released a lock (`unlocker`).
fn run_woken_by(ts: u64, woken_at: u64, unlocker: Option<StackRef>) -> Event {
    Event::new(
        ts,
        Tid(T),
        EventKind::SwitchIn {
            run_delay: None,
            cpu_steal: None,
            woken: Some(Woken {
                at: woken_at,
                waker: waker(200),
                unlocker,
            }),
        },
    )
}

fn feed<R: FdResolver>(e: &mut Engine<R>, events: impl IntoIterator<Item = Event>) -> Vec<Request> {
    for ev in events {
        e.handle(ev);
    }
    e.take_requests()
}

fn cause(r: &Request, c: Cause) -> u64 {
    r.breakdown[c.index()]
}

fn assert_sums(r: &Request) {
    assert_eq!(r.breakdown.iter().sum::<u64>(), r.latency_ns, "{r:?}");
}

#[test]
fn causes_sum_to_latency_across_lock_runqueue_and_cpu() {
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            read(100, CONN, 50),
            block(200, nr::FUTEX, 0xabc),
            wake(500),
            run(600),
            write(700, CONN),
            block(800, nr::READ, CONN as u64), // back to reading: response complete
        ],
    );
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!((r.start_ns, r.latency_ns), (100, 600));
    assert_eq!(cause(r, Cause::OnCpu), 200);
    assert_eq!(cause(r, Cause::Lock), 300);
    assert_eq!(cause(r, Cause::Runqueue), 100);
    assert_sums(r);
    assert!(!r.incomplete && !r.shared_context);
}

/// A blocking switch-out with the stack the kernel took there.
fn block_at(ts: u64, nr: u32, arg0: u64, site: StackRef) -> Event {
    Event::new(
        ts,
        Tid(T),
        EventKind::SwitchOut {
            run_delay: None,
            state: S,
            syscall: Some(InSyscall { nr, arg0 }),
            stack: Some(site),
            cpu_steal: None,
        },
    )
}

/// A request keeps its longest block (not its most frequent cause's) with where it blocked;
/// a block that began before the request counts for its part inside it, and a request that
/// never blocked has none.
#[test]
fn a_request_keeps_its_longest_wait_and_where_it_waited() {
    let mut e = engine();
    let lock_site = StackRef { id: 1, caller: 0 };
    let sleep_site = StackRef { id: 2, caller: 0 };
    let reqs = feed(
        &mut e,
        [
            read(100, CONN, 50),
            block_at(200, nr::FUTEX, 0xabc, lock_site),
            wake(300),
            run(300),
            block_at(400, nr::NANOSLEEP, 0, sleep_site),
            wake(650),
            run(650),
            block_at(700, nr::FUTEX, 0xabc, lock_site),
            wake(800),
            run(800),
            write(900, CONN),
            block(1000, nr::READ, CONN as u64),
            // The next request: read after a block that began before it.
            wake(1500),
            run(1500),
            read(1500, CONN, 50),
            write(1600, CONN),
            block(1700, nr::READ, CONN as u64),
        ],
    );
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(
        reqs[0].largest_wait,
        Some(LargestWait {
            cause: Cause::Sleep,
            ns: 250,
            site: Some(sleep_site),
        })
    );
    assert_eq!(
        cause(&reqs[0], Cause::Lock),
        200,
        "two lock waits, more in all"
    );
    // It started at the wakeup that ended its read's block: no wait inside it.
    assert_eq!(reqs[1].largest_wait, None, "{:?}", reqs[1]);
}

/// A request answered and still open (its connection's next request not read yet) ended at
/// its last write: a wait of its thread after that, for another connection's request, is not
/// its wait. (It used to be taken as its largest wait, longer than the request itself.)
#[test]
fn an_answered_requests_largest_wait_is_none_of_its_threads_later_waits() {
    let mut e = engine();
    e.set_fd_kind(11, FdKind::Connection);
    let lock_site = StackRef { id: 1, caller: 0 };
    let mut reqs = feed(
        &mut e,
        [
            read(100, CONN, 50),
            write(200, CONN), // answered: over at 200, still open until CONN's next read
            read(300, 11, 50),
            block_at(400, nr::FUTEX, 0xabc, lock_site), // for 11's request
            wake(10_000),
            run(10_000),
            write(10_100, 11),
            read(11_000, CONN, 50),
        ],
    );
    e.finish_all();
    reqs.extend(e.take_requests());
    let on = |fd| {
        reqs.iter()
            .find(|r| r.fd == Some(fd) && r.start_ns < 1_000)
            .unwrap()
    };
    let (first, other) = (on(CONN), on(11));
    assert_eq!(first.latency_ns, 100);
    assert!(!first.shared_context && !other.shared_context, "{reqs:?}");
    assert_eq!(first.largest_wait, None, "{first:?}");
    assert_eq!(
        other.largest_wait,
        Some(LargestWait {
            cause: Cause::Lock,
            ns: 9_600,
            site: Some(lock_site),
        })
    );
    assert_eq!(e.wait_sites.top(Cause::Lock, 1).0[0].1.ns, 9_600);
}

/// A wait between two writes of a response is inside it: once the next write comes, it is
/// the request's largest wait, though its thread serves another request meanwhile.
#[test]
fn a_wait_between_two_writes_of_a_response_is_its_largest_wait() {
    let mut e = engine();
    e.set_fd_kind(11, FdKind::Connection);
    let write_site = StackRef { id: 3, caller: 0 };
    let mut reqs = feed(
        &mut e,
        [
            read(100, 11, 50),
            read(200, CONN, 50),
            write(300, CONN),                                  // the first part
            block_at(400, nr::WRITE, CONN as u64, write_site), // socket buffer full
            wake(900),
            run(900),
            write(1_000, CONN), // the rest
            write(1_100, 11),
            read(2_000, CONN, 50),
        ],
    );
    e.finish_all();
    reqs.extend(e.take_requests());
    let r = reqs.iter().find(|r| r.start_ns == 200).unwrap();
    assert_eq!(r.latency_ns, 800);
    assert_eq!(cause(r, Cause::NetIo), 500);
    assert_eq!(
        r.largest_wait,
        Some(LargestWait {
            cause: Cause::NetIo,
            ns: 500,
            site: Some(write_site),
        })
    );
}

/// The thread is preempted (still runnable), with the stack taken there, if any.
fn preempted(ts: u64, stack: Option<StackRef>) -> Event {
    Event::new(
        ts,
        Tid(T),
        EventKind::SwitchOut {
            run_delay: None,
            state: PREEMPT_STATE_BIT,
            syscall: None,
            stack,
            cpu_steal: None,
        },
    )
}

#[test]
fn preemption_counts_as_runqueue() {
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            read(0, CONN, 5),
            preempted(100, None),
            run(350),
            write(400, CONN),
            read(1000, CONN, 5),
        ],
    );
    let r = &reqs[0];
    assert_eq!(cause(r, Cause::Runqueue), 250);
    assert_eq!(cause(r, Cause::OnCpu), 150);
    assert_sums(r);
    assert_eq!(e.take_waits(), vec![Wait::Runqueue(250)]);
}

/// A switch-out into a `nanosleep`, with the thread's total wait for a CPU so far.
fn asleep_with_run_delay(ts: u64, total: u64) -> Event {
    Event::new(
        ts,
        Tid(T),
        EventKind::SwitchOut {
            state: S,
            syscall: Some(InSyscall {
                nr: nr::NANOSLEEP,
                arg0: 0,
            }),
            stack: None,
            cpu_steal: None,
            run_delay: Some(total),
        },
    )
}

/// A switch-in whose wakeup was not seen, with the thread's total wait for a CPU through it.
fn run_with_run_delay(ts: u64, total: u64) -> Event {
    Event::new(
        ts,
        Tid(T),
        EventKind::SwitchIn {
            cpu_steal: None,
            woken: None,
            run_delay: Some(total),
        },
    )
}

/// A switch-in whose wakeup the kernel side did not see carries the thread's total wait for
/// a CPU through it (`probes::sched`): after a block, the wait since the wakeup is
/// `runqueue`, however many run queues it waited on; after a preemption, whose switch-out
/// noted no total, it changes nothing.
#[test]
fn a_seen_switch_in_without_its_wakeup_waits_as_long_as_the_run_delay_grew() {
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            read(0, CONN, 5),
            asleep_with_run_delay(100, 7_000),
            run_with_run_delay(21_600, 8_500),
            preempted(21_700, None),
            run_with_run_delay(22_000, 8_800),
            write(22_100, CONN),
            read(30_000, CONN, 5),
        ],
    );
    let r = &reqs[0];
    assert_eq!(cause(r, Cause::Sleep), 20_000);
    assert_eq!(cause(r, Cause::Runqueue), 1_500 + 300);
    assert_eq!(cause(r, Cause::OnCpu), 100 + 100 + 100);
    assert_sums(r);
}

/// A preemption inside a request whose stack was taken: the run-queue wait that follows is
/// at that site, and it can be the request's largest wait. A wait for a CPU after a wakeup
/// has no site of its own.
#[test]
fn a_run_queue_wait_after_preemption_is_at_the_preempted_site() {
    let mut e = engine();
    let spinning = StackRef { id: 5, caller: 0 };
    let reqs = feed(
        &mut e,
        [
            read(0, CONN, 5),
            preempted(100, Some(spinning)),
            run(350),
            block(400, nr::NANOSLEEP, 0),
            wake(450),
            run(500),
            write(600, CONN),
            read(1000, CONN, 5),
        ],
    );
    let r = &reqs[0];
    assert_eq!(cause(r, Cause::Runqueue), 300);
    assert_eq!(
        r.largest_wait,
        Some(LargestWait {
            cause: Cause::Runqueue,
            ns: 250,
            site: Some(spinning),
        })
    );
    let (sites, rest) = e.wait_sites.top(Cause::Runqueue, 5);
    assert_eq!(sites, vec![(spinning, tally::Tally { count: 1, ns: 250 })]);
    assert_eq!(rest.count, 0);
    assert_eq!(e.wait_sites.without_stack(Cause::Runqueue).count, 0);
}

/// A switch with the steal clock of its CPU.
fn switch_with_steal(ts: u64, out: Option<u32>, steal: u64) -> Event {
    let cpu_steal = Some(steal);
    match out {
        Some(nr) => Event::new(
            ts,
            Tid(T),
            EventKind::SwitchOut {
                run_delay: None,
                state: S,
                syscall: Some(InSyscall {
                    nr,
                    arg0: u64::from(CONN),
                }),
                stack: None,
                cpu_steal,
            },
        ),
        None => Event::new(
            ts,
            Tid(T),
            EventKind::SwitchIn {
                run_delay: None,
                cpu_steal,
                woken: None,
            },
        ),
    }
}

#[test]
fn steal_in_a_stretch_is_spread_over_it_and_leaves_on_cpu() {
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            block(0, nr::READ, u64::from(CONN)),
            wake(100),
            switch_with_steal(200, None, 5_000),
            read(300, CONN, 5),
            write(1_000, CONN), // the response, 800 ns into a 1000 ns stretch
            // back to reading the connection: the stretch had 500 ns of steal
            switch_with_steal(1_200, Some(nr::READ), 5_500),
        ],
    );
    let r = &reqs[0];
    assert_eq!((r.start_ns, r.latency_ns), (100, 900));
    assert_eq!(cause(r, Cause::Runqueue), 100);
    assert_eq!(cause(r, Cause::Steal), 400, "{r:?}"); // 800 of the stretch's 1000 ns
    assert_eq!(cause(r, Cause::OnCpu), 400);
    assert_sums(r);
}

#[test]
fn an_unreported_switch_in_waits_for_its_cpu_as_long_as_the_kernels_run_delay_grew() {
    // A 20 µs sleep inside a request; the kernel reported neither the wakeup nor the
    // switch-in (the kernel side then sends the thread's total wait for a CPU, which grew by
    // 4 µs since it blocked).
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            read(0, CONN, 30),
            asleep_with_run_delay(1_000, 50_000),
            run_with_run_delay(25_000, 54_000),
            write(26_000, CONN),
            read(27_000, CONN, 0), // the client closed
        ],
    );
    let r = &reqs[0];
    assert_eq!(r.latency_ns, 26_000);
    assert_eq!(cause(r, Cause::Runqueue), 4_000);
    assert_eq!(cause(r, Cause::Sleep), 20_000);
    assert_eq!(cause(r, Cause::OnCpu), 2_000);
    assert_sums(r);

    // Without the kernel's totals, the whole gap stays in the sleep (as before).
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            read(0, CONN, 30),
            block(1_000, nr::NANOSLEEP, 0),
            run(25_000),
            write(26_000, CONN),
            read(27_000, CONN, 0),
        ],
    );
    assert_eq!(cause(&reqs[0], Cause::Sleep), 24_000);
    assert_eq!(cause(&reqs[0], Cause::Runqueue), 0);
}

#[test]
fn request_starts_at_the_wakeup_of_a_blocked_read() {
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            block(0, nr::READ, CONN as u64), // idle keep-alive connection
            wake(1000),                      // request bytes arrive
            run(1040),
            read(1050, CONN, 80),
            write(1100, CONN),
            block(1200, nr::READ, CONN as u64),
        ],
    );
    let r = &reqs[0];
    assert_eq!((r.start_ns, r.latency_ns), (1000, 100));
    assert_eq!(cause(r, Cause::Runqueue), 40);
    assert_eq!(
        cause(r, Cause::NetIo),
        0,
        "idle time before the request is not counted"
    );
    assert_sums(r);
}

/// With no syscall hook, a wakeup is known only by the block it ended: a wakeup from epoll
/// (or from a read of another fd) is not the start of the request read after it.
#[test]
fn only_a_blocked_read_of_the_connection_starts_its_request_at_the_wakeup() {
    let mut e = engine();
    let mut reqs = feed(
        &mut e,
        [
            block(0, nr::EPOLL_WAIT, 3), // an event loop, idle
            wake(1000),
            run(1040),
            read(1050, CONN, 80), // the request, read without blocking
            write(1100, CONN),
            block(1200, nr::READ, BACKEND as u64), // a backend call...
            wake(1500),
            run(1510),
            read(1520, BACKEND, 10),
            read(2000, CONN, 80), // ...then the next request, read without blocking
            write(2100, CONN),
            block(2200, nr::EPOLL_WAIT, 3),
        ],
    );
    e.finish_all();
    reqs.extend(e.take_requests());
    assert_eq!(reqs.len(), 2);
    assert_eq!((reqs[0].start_ns, reqs[0].latency_ns), (1050, 50));
    assert_eq!((reqs[1].start_ns, reqs[1].latency_ns), (2000, 100));
    assert_sums(&reqs[1]);
}

#[test]
fn thread_exit_mid_request() {
    let mut e = engine();
    let answered = feed(
        &mut e,
        [
            read(0, CONN, 5),
            write(100, CONN),
            Event::new(
                150,
                Tid(T),
                EventKind::ThreadExit {
                    comm: String::new(),
                },
            ),
        ],
    );
    assert_eq!(answered.len(), 1);
    assert_eq!(answered[0].latency_ns, 100);

    let unanswered = feed(
        &mut e,
        [
            Event::new(200, Tid(T), EventKind::ThreadNew),
            wake(210),
            run(220),
            read(300, CONN, 5),
            Event::new(
                400,
                Tid(T),
                EventKind::ThreadExit {
                    comm: String::new(),
                },
            ),
        ],
    );
    assert!(unanswered.is_empty());
    assert_eq!(e.aborted(), 1);
    assert_eq!(e.open_requests(), 0);
}

#[test]
fn keep_alive_connection_carries_many_requests() {
    let mut e = engine();
    let mut events = Vec::new();
    for i in 0..5u64 {
        let t = i * 1000;
        events.extend([
            block(t, nr::READ, CONN as u64),
            wake(t + 100),
            run(t + 110),
            read(t + 120, CONN, 30),
            block(t + 200, nr::NANOSLEEP, 0),
            wake(t + 500),
            run(t + 520),
            write(t + 600, CONN),
        ]);
    }
    events.push(read(9000, CONN, 0)); // the client closed
    let reqs = feed(&mut e, events);
    assert_eq!(reqs.len(), 5);
    for r in &reqs {
        assert_eq!(r.latency_ns, 500);
        assert_eq!(cause(r, Cause::Sleep), 300);
        assert_eq!(cause(r, Cause::Runqueue), 10 + 20);
        assert_eq!(cause(r, Cause::OnCpu), 170);
        assert_sums(r);
    }
}

#[test]
fn pipelined_requests_are_split_at_each_read_after_a_response() {
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            read(0, CONN, 200), // two requests arrived together; the server reads one
            write(100, CONN),
            read(110, CONN, 100), // the second is already buffered: no block
            write(300, CONN),
        ],
    );
    assert_eq!(
        reqs.len(),
        1,
        "the second ends only at the next read or close"
    );
    e.finish_all();
    let reqs2 = e.take_requests();
    assert_eq!(reqs[0].latency_ns, 100);
    assert_eq!((reqs2[0].start_ns, reqs2[0].latency_ns), (110, 190));
}

#[test]
fn multi_write_response_ends_at_last_write() {
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            read(0, CONN, 20),
            write(100, CONN),
            block(150, nr::WRITE, CONN as u64), // socket buffer full
            wake(250),
            run(260),
            write(300, CONN),
            read(900, CONN, 20),
        ],
    );
    let r = &reqs[0];
    assert_eq!(r.latency_ns, 300);
    assert_eq!(cause(r, Cause::NetIo), 100);
    assert_sums(r);
}

#[test]
fn lost_events_mark_open_requests_incomplete_and_keep_the_identity() {
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            read(0, CONN, 20),
            block(100, nr::FUTEX, 0x10),
            Event::lost(150),
            // the wakeup and switch-in were lost: the next socket I/O repairs the state
            read(400, BACKEND, 10),
            write(500, CONN),
            read(900, CONN, 20),
        ],
    );
    let r = &reqs[0];
    assert!(r.incomplete);
    assert_eq!(r.latency_ns, 500);
    assert_sums(r);
    let next = feed(&mut e, [write(950, CONN), read(1000, CONN, 5)]);
    assert!(
        !next[0].incomplete,
        "only requests open during the loss are marked"
    );
}

/// A loss the collector finds later, known only to have happened between two reads of the
/// loss counters: the requests open at any time in between are marked, the one that ended
/// before it is not.
#[test]
fn a_loss_between_two_times_marks_every_request_open_in_between() {
    let mut e = engine();
    e.set_fd_kind(11, FdKind::Connection);
    for event in [
        read(0, CONN, 20),
        write(100, CONN),
        read(200, CONN, 20), // the first ends at 100, before the loss could have happened
        write(1_000, CONN),
        read(1_100, CONN, 20), // the second, answered at 1_000, is not taken yet
    ] {
        e.handle(event);
    }
    e.lost_between(500, 3_000);
    // Requests opened from events read before the loss was found.
    let reqs = feed(
        &mut e,
        [
            read(2_000, 11, 20),
            write(2_500, 11),
            read(3_500, 11, 20),
            write(3_600, 11),
            write(3_700, CONN),
        ],
    );
    let mut reqs: Vec<_> = reqs.iter().map(|r| (r.start_ns, r.incomplete)).collect();
    e.finish_all();
    reqs.extend(e.take_requests().iter().map(|r| (r.start_ns, r.incomplete)));
    reqs.sort();
    assert_eq!(
        reqs,
        [
            (0, false),
            (200, true),
            (1_100, true),
            (2_000, true),
            (3_500, false)
        ]
    );
}

#[test]
fn blocking_causes_follow_the_syscall_and_the_fd() {
    let cases = [
        (Some((nr::READ, BACKEND as u64)), S, Cause::NetIo),
        (Some((nr::RECVFROM, BACKEND as u64)), S, Cause::NetIo),
        (Some((nr::READ, FILE as u64)), D, Cause::DiskIo),
        (Some((nr::WRITE, FILE as u64)), D, Cause::DiskIo),
        (Some((nr::FSYNC, FILE as u64)), D, Cause::DiskIo),
        (Some((nr::EPOLL_WAIT, 3)), S, Cause::NetIo),
        (Some((nr::POLL, 0)), S, Cause::NetIo),
        (Some((nr::CLOCK_NANOSLEEP, 0)), S, Cause::Sleep),
        (Some((nr::FUTEX_WAITV, 0)), S, Cause::Lock),
        (Some((nr::READ, 42)), S, Cause::Other), // a pipe
        (None, D, Cause::DiskIo),                // a major page fault
        (None, S, Cause::Other),
    ];
    for (syscall, state, want) in cases {
        let mut e = engine();
        let syscall = syscall.map(|(nr, arg0)| InSyscall { nr, arg0 });
        let reqs = feed(
            &mut e,
            [
                read(0, CONN, 5),
                Event::new(
                    10,
                    Tid(T),
                    EventKind::SwitchOut {
                        run_delay: None,
                        state,
                        syscall,
                        stack: None,
                        cpu_steal: None,
                    },
                ),
                wake(110),
                run(110),
                write(120, CONN),
                read(200, CONN, 5),
            ],
        );
        assert_eq!(cause(&reqs[0], want), 100, "{syscall:?} state {state}");
    }
}

#[test]
fn other_is_detailed_by_syscall() {
    let mut e = engine();
    feed(
        &mut e,
        [
            read(0, CONN, 5),
            block(10, nr::READ, 42),
            wake(60),
            block(70, nr::CONNECT, 3), // net, not other
            wake(80),
        ],
    );
    assert_eq!(e.other_by_syscall.get(&Some(nr::READ)), Some(&50));
    assert_eq!(e.other_by_syscall.len(), 1);
}

#[test]
fn lock_detail_names_waiters_and_wakers() {
    let mut e = engine();
    feed(
        &mut e,
        [
            block(0, nr::FUTEX, 0xf00),
            wake(300),
            run(310), // the futex wait returns
        ],
    );
    let lock = e.locks.get(0xf00).expect("the futex is listed");
    assert_eq!((lock.wait_ns, lock.waits), (310, 1));
    assert_eq!(
        lock.waiters.keys().copied().collect::<Vec<_>>(),
        vec![Tid(T)]
    );
    assert_eq!(lock.wakers.get(&waker(200)).map(|t| t.count), Some(1));
    assert_eq!(
        e.take_waits(),
        vec![Wait::Runqueue(10), Wait::Futex(310)],
        "runqueue delay after the wakeup, then the futex wait"
    );
}

#[test]
fn socket_read_blocking_is_sampled_without_requests() {
    let mut e = engine();
    feed(&mut e, [block(0, nr::READ, BACKEND as u64), wake(700)]);
    assert_eq!(e.take_waits(), vec![Wait::SocketRead(700)]);
}

#[test]
fn event_loop_requests_are_marked_shared() {
    let mut e = engine();
    e.set_fd_kind(11, FdKind::Connection);
    let reqs = feed(
        &mut e,
        [
            read(0, CONN, 5),
            read(10, 11, 5),
            write(50, CONN),
            write(60, 11),
            block(70, nr::EPOLL_WAIT, 3),
            wake(500),
            run(500),
            read(510, CONN, 5),
        ],
    );
    assert_eq!(reqs.len(), 1);
    assert!(reqs[0].shared_context);
    e.finish_all();
    assert!(e.take_requests()[0].shared_context);
    assert_eq!(e.shared(), 2);
}

#[test]
fn requests_answered_before_the_next_is_read_share_nothing() {
    let mut e = engine();
    e.set_fd_kind(11, FdKind::Connection);
    let reqs = feed(
        &mut e,
        [
            read(0, CONN, 5),
            write(50, CONN),
            read(60, 11, 5),
            write(70, 11),
            read(100, CONN, 5),
            read(110, 11, 5),
        ],
    );
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|r| !r.shared_context), "{reqs:?}");
    assert_eq!(e.shared(), 0);
}

/// A read or write on `fd`'s socket `sock`, of which the kernel side says `origin`.
fn io_on(ts: u64, nr: u32, fd: u32, ret: i64, sock: u64, origin: SocketOrigin) -> Event {
    let sys = SyscallReturn {
        nr,
        fd,
        ret,
        connection: sock,
        origin,
        tls_record: 0,
    };
    Event::new(ts, Tid(T), EventKind::Syscall(sys))
}

#[test]
fn a_server_side_socket_is_a_connection_and_a_new_socket_replaces_it() {
    let mut e = Engine::new(Fds);
    let (accepted, backend) = (0xa000, 0xb000);
    let reqs = feed(
        &mut e,
        [
            io_on(100, nr::READ, 12, 5, accepted, SocketOrigin::TcpServer),
            io_on(200, nr::WRITE, 12, 10, accepted, SocketOrigin::TcpServer),
            io_on(250, nr::READ, 12, 5, accepted, SocketOrigin::TcpServer), // the next request, unanswered
        ],
    );
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].latency_ns, 100);
    // fd 12 closed unseen and reused for a backend connection: the open request is over
    // (never answered), and the backend's reply starts no request
    let reqs = feed(
        &mut e,
        [
            io_on(400, nr::WRITE, 12, 5, backend, SocketOrigin::TcpClient),
            io_on(500, nr::READ, 12, 50, backend, SocketOrigin::TcpClient),
            io_on(600, nr::WRITE, 12, 5, backend, SocketOrigin::TcpClient),
        ],
    );
    assert!(reqs.is_empty());
    assert_eq!(e.aborted(), 1);
    assert_eq!(e.open_requests(), 0);
}

#[test]
fn a_connection_accepted_while_attaching_is_served_as_proc_says() {
    // Sockets the kernel side never saw created: the resolver (/proc) says one is the server
    // side of a TCP connection and the backend's a client's socket.
    let mut e = Engine::new(Fds);
    let unknown = SocketOrigin::Unknown;
    let reqs = feed(
        &mut e,
        [
            io_on(100, nr::READ, ACCEPTED_EARLY, 5, 0xa000, unknown),
            io_on(200, nr::WRITE, ACCEPTED_EARLY, 10, 0xa000, unknown),
            io_on(300, nr::WRITE, BACKEND, 5, 0xb000, unknown),
            io_on(400, nr::READ, BACKEND, 50, 0xb000, unknown),
            io_on(500, nr::READ, ACCEPTED_EARLY, 5, 0xa000, unknown),
            io_on(650, nr::WRITE, ACCEPTED_EARLY, 10, 0xa000, unknown),
            io_on(700, nr::READ, ACCEPTED_EARLY, 0, 0xa000, unknown), // the client closed
        ],
    );
    let latencies: Vec<u64> = reqs.iter().map(|r| r.latency_ns).collect();
    assert_eq!(latencies, [100, 150]);
}

/// The kernel side takes a connection back (its next request is kept there).
fn taken(ts: u64, fd: u32) -> Event {
    Event::new(
        ts,
        Tid(0),
        EventKind::StretchTakesConnection {
            fd,
            connection: connection_of(fd),
        },
    )
}

/// A request kept in the kernel: all on its CPU; one the peer closed before its answer is
/// aborted, not a request.
#[test]
fn a_request_kept_in_the_kernel_is_all_on_cpu() {
    let mut e = engine();
    let kept = |start_ns, latency_ns, flags| tracer_common::StretchRequest {
        start_ns,
        latency_ns,
        tid: T,
        fd: CONN,
        flags,
        runqueue_ns: 0,
    };
    let requests = [
        kept(100, 50, 0),
        kept(200, 40, tracer_common::stretch_flags::SHARED),
        kept(400, 5, tracer_common::stretch_flags::ABORTED),
    ];
    e.count_stretch_requests(&requests);
    let got: Vec<(u64, u64, u64, bool)> = requests
        .iter()
        .filter(|r| r.completed())
        .map(super::requests::stretch_request)
        .map(|r| {
            assert_sums(&r);
            assert_eq!((r.ctx, r.fd), (ExecCtx::Thread(Tid(T)), Some(CONN)));
            let on_cpu = cause(&r, Cause::OnCpu);
            (r.start_ns, r.latency_ns, on_cpu, r.shared_context)
        })
        .collect();
    assert_eq!(got, [(100, 50, 50, false), (200, 40, 40, true)]);
    assert_eq!((e.aborted(), e.shared(), e.in_kernel()), (1, 1, 3));
}

/// A request kept in the kernel, handed over when its thread left the CPU (its read and last
/// write so far), ends when the kernel side takes the connection back for its next request.
#[test]
fn a_handed_over_request_ends_when_the_kernel_side_takes_its_connection_back() {
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            run(50),
            read(100, CONN, 20), // handed over: its read,
            write(160, CONN),    // and its last write,
            block(300, nr::FUTEX, 0xabc),
            wake(400),
            run(450),
            write(500, CONN), // more of the response, after the switch
            taken(600, CONN), // the next request is kept in the kernel
        ],
    );
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let r = &reqs[0];
    assert_eq!((r.start_ns, r.latency_ns), (100, 400));
    assert_eq!(cause(r, Cause::Lock), 100);
    assert_eq!(cause(r, Cause::Runqueue), 50);
    assert_eq!(cause(r, Cause::OnCpu), 250);
    assert_sums(r);
    assert_eq!(
        e.open_requests(),
        0,
        "taken back, the request there is the kernel's"
    );
}

/// The handed-over read of a request the kernel side kept, read without blocking: the kernel
/// side kept the connection's request before it, read after the thread's last wakeup, and
/// that read was not seen here. The handed-over request starts at its own read, not at that
/// wakeup; one whose read blocked (`woken`) starts at the wakeup.
#[test]
fn a_handed_over_read_starts_at_the_wakeup_only_if_it_blocked() {
    let handed_over = |ts, woken| {
        let EventKind::Syscall(read) = read(ts, CONN, 20).kind else {
            unreachable!("a read")
        };
        Event::new(ts, Tid(T), EventKind::HandedOverRead { read, woken })
    };
    for (woken, start) in [(false, 300), (true, 100)] {
        let mut e = engine();
        let reqs = feed(
            &mut e,
            [
                run(10),
                block(50, nr::READ, u64::from(CONN)),
                run_woken(120, 100),
                // A request kept in the kernel from the wakeup (100) to 250, then:
                handed_over(300, woken),
                write(360, CONN),
                taken(600, CONN),
            ],
        );
        assert_eq!(reqs.len(), 1, "{reqs:?}");
        let r = &reqs[0];
        assert_eq!((r.start_ns, r.latency_ns), (start, 360 - start), "{r:?}");
        assert_eq!(cause(r, Cause::Runqueue), if woken { 20 } else { 0 });
        assert_sums(r);
    }
}

#[test]
fn syscalls_are_named_for_the_other_detail() {
    assert_eq!(syscall_name(Some(61)), "wait4");
    assert_eq!(syscall_name(Some(nr::FUTEX)), "futex");
    assert_eq!(syscall_name(None), "none");
    assert_eq!(syscall_name(Some(100_000)), "syscall_100000");
}

const SSL: u64 = 0x5000;

fn tls_call(ts: u64, call: SslCall) -> Event {
    Event::new(ts, Tid(T), EventKind::OpenSsl { ssl: SSL, call })
}

fn tls_return(ts: u64, ret: i64) -> Event {
    tls_call(ts, SslCall::Return { ret })
}

#[test]
fn explicit_handshake_is_carried_by_the_first_request_only() {
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            tls_call(100, SslCall::Handshake), // SSL_accept
            read(110, CONN, 300),              // ClientHello: a flight, not a request
            write(200, CONN),                  // ServerHello .. Finished
            block(210, nr::READ, CONN as u64), // waiting for the client's Finished
            wake(710),
            run(720),
            read(730, CONN, 80),
            tls_return(800, 1),
            read(900, CONN, 100), // the request (an established connection: no TLS events)
            write(1000, CONN),
            read(2000, CONN, 100), // the next request
            write(2100, CONN),
            block(2200, nr::READ, CONN as u64),
        ],
    );
    assert_eq!(reqs.len(), 2);
    let (first, second) = (&reqs[0], &reqs[1]);
    assert_eq!(cause(first, Cause::TlsHandshake), 700);
    assert_eq!(first.start_ns, 100, "starts with the handshake");
    assert_eq!(first.latency_ns, 700 + 100);
    assert_sums(first);
    assert_eq!(cause(second, Cause::TlsHandshake), 0);
    assert_eq!(second.latency_ns, 100);
    let hs = e.take_handshakes();
    assert_eq!(hs.len(), 1);
    assert_eq!(
        hs[0].phases,
        TlsPhases {
            cpu: 700 - 500 - 10,
            peer_wait: 500,
            runqueue: 10,
            other: 0
        }
    );
    assert_eq!(hs[0].fd, Some(CONN));
}

#[test]
fn implicit_handshake_in_ssl_read_starts_the_request() {
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            tls_call(0, SslCall::Read),
            tls_read(10, 300, HS, 295),
            tls_write(50, HS, 1200),
            tls_read(300, 200, HS, 70), // client Finished + the request, in one read
            tls_return(320, 90),        // SSL_read returned request bytes
            write(400, CONN),
            block(500, nr::READ, CONN as u64),
        ],
    );
    assert_eq!(reqs.len(), 1);
    assert_eq!(cause(&reqs[0], Cause::TlsHandshake), 320);
    assert_eq!(reqs[0].latency_ns, 320 + 80);
    assert_sums(&reqs[0]);
}

#[test]
fn non_blocking_handshake_spans_several_calls() {
    let mut e = engine();
    feed(
        &mut e,
        [
            tls_call(0, SslCall::Handshake),
            read(10, CONN, 300),
            write(20, CONN),
            tls_return(30, -1), // WANT_READ: back to the event loop
            block(40, nr::EPOLL_WAIT, 3),
            wake(540),
            run(540),
            tls_call(550, SslCall::Handshake),
            read(560, CONN, 80),
            tls_return(600, 1),
        ],
    );
    let hs = e.take_handshakes();
    assert_eq!(hs.len(), 1);
    assert_eq!(
        hs[0].phases.total(),
        600,
        "from the first step to completion"
    );
    assert_eq!(hs[0].phases.peer_wait, 500);
}

use tracer_common::tls_content::{
    ALERT, APPLICATION_DATA as APP, CHANGE_CIPHER_SPEC as CCS, HANDSHAKE as HS,
};

#[test]
fn tls13_handshake_seen_in_record_framing_is_not_a_request() {
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            block(0, nr::READ, CONN as u64),
            wake(100),
            run(110),
            tls_read(120, 517, HS, 512), // ClientHello
            tls_write(200, HS, 122),     // ServerHello, CCS, encrypted flight in one write
            block(210, nr::READ, CONN as u64),
            wake(710), // the client's Finished arrives
            run(710),
            tls_read(720, 6 + 58, CCS, 1), // CCS + Finished, no request yet
            tls_write(730, APP, 200),      // NewSessionTicket: not a response
            block(740, nr::READ, CONN as u64),
            wake(1000),
            run(1000),
            tls_read(1010, 100, APP, 95), // the request
            tls_write(1100, APP, 300),    // the response
            block(1200, nr::READ, CONN as u64),
            wake(5000),
            run(5000),
            tls_read(5010, 31, ALERT, 26), // close_notify: not a request
            Event::new(
                5020,
                Tid(T),
                EventKind::Syscall(SyscallReturn {
                    nr: nr::CLOSE,
                    fd: CONN,
                    ret: 0,
                    connection: connection_of(CONN),
                    origin: origin_of(CONN),
                    tls_record: 0,
                }),
            ),
        ],
    );
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let r = &reqs[0];
    assert_eq!(
        cause(r, Cause::TlsHandshake),
        720 - 100,
        "from the ClientHello's arrival"
    );
    assert_eq!(r.start_ns, 100);
    assert_eq!(
        r.latency_ns,
        620 + 100,
        "the handshake, then the request from its arrival"
    );
    assert_sums(r);
    let hs = e.take_handshakes();
    assert_eq!(hs.len(), 1);
    assert_eq!(hs[0].phases.peer_wait, 500);
    assert_eq!(e.aborted(), 0, "the close_notify opened no request");
}

#[test]
fn tls13_finished_with_the_request_in_one_read_starts_it() {
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            tls_read(0, 517, HS, 512),
            tls_write(100, HS, 122),
            // CCS + Finished (application_data: the kernel saw that header too) + the request
            tls_read(500, 6 + 58 + 120, CCS | APP << 8, 1),
            tls_write(600, APP, 300),
            block(700, nr::READ, CONN as u64),
        ],
    );
    assert_eq!(reqs.len(), 1);
    assert_eq!(cause(&reqs[0], Cause::TlsHandshake), 500);
    assert_eq!(reqs[0].latency_ns, 500 + 100);
    let hs = e.take_handshakes();
    assert_eq!(
        hs[0].kind,
        TlsKind {
            version: TlsVersion::Tls13,
            resumed: Some(true), // a 127-byte server flight has no certificate
        }
    );
}

/// A blocking reader (a thread per connection, an unhooked TLS library) woken by the client's
/// Finished with the request behind it: the handshake runs to that read's return, and the
/// request starts there, not back at the wakeup, whose wait for the CPU the handshake has
/// already counted.
#[test]
fn a_request_read_with_the_finished_after_a_block_is_not_counted_twice() {
    // The client's last flight: change_cipher_spec, Finished and the request; or, without
    // the compatibility change_cipher_spec, the Finished (an application_data record) first.
    for finished_and_request in [
        tls_read(760, 6 + 58 + 120, CCS | APP << 8, 1),
        tls_read(760, 58 + 120, APP, 53),
    ] {
        let mut e = engine();
        let reqs = feed(
            &mut e,
            [
                block(0, nr::READ, CONN as u64),
                wake(100),
                run(110),
                tls_read(120, 517, HS, 512), // ClientHello
                tls_write(200, HS, 122),
                block(210, nr::READ, CONN as u64),
                wake(700),
                run(750), // 50 ns waiting for a CPU
                finished_and_request,
                tls_write(800, APP, 300), // the response
                block(900, nr::READ, CONN as u64),
            ],
        );
        assert_eq!(reqs.len(), 1, "{reqs:?}");
        let r = &reqs[0];
        assert_eq!(r.start_ns, 100);
        assert_eq!(cause(r, Cause::TlsHandshake), 760 - 100);
        assert_eq!(
            r.latency_ns,
            800 - 100,
            "the handshake, then the request from the read that ended it: {r:?}"
        );
        assert_eq!(
            cause(r, Cause::Runqueue),
            0,
            "the handshake's, not again the request's"
        );
        assert_sums(r);
    }
}

#[test]
fn a_finished_alone_is_not_read_past_whatever_its_hash() {
    let ccs_then_app = tracer_common::tls_record_and_next(
        tracer_common::tls_record([20, 3, 3, 0, 1]),
        [23, 3, 3, 0, 0],
    );
    // change_cipher_spec (6 bytes), then the Finished: 58 bytes with SHA-256 suites, 74 with
    // TLS_AES_256_GCM_SHA384 (what OpenSSL clients and servers pick first).
    assert!(!read_past_finished(6 + 58, ccs_then_app));
    assert!(!read_past_finished(6 + 74, ccs_then_app));
    // The smallest request record after it: header, one byte, type, tag.
    assert!(read_past_finished(6 + 58 + 23, ccs_then_app));
    assert!(read_past_finished(6 + 74 + 23, ccs_then_app));
    // Without the change_cipher_spec: past the Finished record's own length.
    let finished = (APP << 16) | 69;
    assert!(!read_past_finished(74, finished));
    assert!(read_past_finished(74 + 23, finished));
    // TLS 1.2: the client's key exchange (here 37 bytes), change_cipher_spec and Finished
    // (45 bytes with AES-GCM, 101 with a CBC-SHA384 suite) in one read are not past it; a
    // False Start request after them is.
    let key_exchange = (HS << 16) | 37;
    assert!(!read_past_finished(42 + 6 + 45, key_exchange));
    assert!(!read_past_finished(42 + 6 + 101, key_exchange));
    assert!(read_past_finished(42 + 6 + 101 + 29, key_exchange));
    // TLS 1.2 resumed: change_cipher_spec, then the Finished as a handshake record.
    let ccs_then_hs = tracer_common::tls_record_and_next(
        tracer_common::tls_record([20, 3, 3, 0, 1]),
        [22, 3, 3, 0, 0],
    );
    assert!(!read_past_finished(6 + 101, ccs_then_hs));
    // After the shorter AES-GCM Finished, a request of a real size (a GET line and a Host
    // header: over 60 bytes, and 29 of record overhead) shows.
    assert!(read_past_finished(6 + 45 + 29 + 60, ccs_then_hs));
    // A read in the middle of a record tells nothing.
    assert!(!read_past_finished(500, 0));
}

#[test]
fn tls12_handshake_ends_with_the_servers_change_cipher_spec() {
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            tls_read(0, 300, HS, 295),  // ClientHello
            tls_write(50, HS, 1200),    // ServerHello .. ServerHelloDone
            tls_read(400, 126, HS, 70), // ClientKeyExchange, CCS, Finished
            tls_write(450, CCS, 1),     // CCS, Finished
            tls_read(900, 100, APP, 95),
            tls_write(1000, APP, 300),
            block(1100, nr::READ, CONN as u64),
        ],
    );
    assert_eq!(reqs.len(), 1);
    assert_eq!(cause(&reqs[0], Cause::TlsHandshake), 450);
    assert_eq!(reqs[0].latency_ns, 450 + 100);
    assert_eq!(
        e.take_handshakes()[0].kind,
        TlsKind {
            version: TlsVersion::Tls12,
            resumed: Some(false),
        }
    );
}

#[test]
fn plaintext_connections_are_untouched_by_tls_framing() {
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            read(0, CONN, 50),
            write(100, CONN),
            block(200, nr::READ, CONN as u64),
        ],
    );
    assert_eq!(reqs.len(), 1);
    assert_eq!(cause(&reqs[0], Cause::TlsHandshake), 0);
    assert!(e.take_handshakes().is_empty());
}

#[test]
fn openssl_reads_record_headers_then_bodies() {
    // The syscalls of `openssl s_server -www` serving one curl request over TLS 1.3.
    let mut e = engine();
    let body = |ts: u64, ret: i64| read(ts, CONN, ret);
    let reqs = feed(
        &mut e,
        [
            tls_read(100, 5, HS, 512), // ClientHello header, then body
            body(110, 512),
            tls_write(500, HS, 122),
            tls_read(1000, 5, CCS, 1),
            body(1010, 1),
            tls_read(1020, 5, APP, 69), // the client's Finished
            body(1030, 69),
            tls_write(1100, APP, 250), // two NewSessionTickets: not responses
            tls_write(1110, APP, 250),
            tls_read(1200, 5, APP, 96), // the request
            body(1210, 96),
            tls_write(1300, APP, 5195), // the response
            tls_write(1310, APP, 19),   // the server's close_notify
            tls_read(1400, 5, APP, 19), // the client's close_notify
            body(1410, 19),
            read(1500, CONN, 0),
        ],
    );
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let r = &reqs[0];
    assert_eq!(cause(r, Cause::TlsHandshake), 1030 - 100);
    assert_eq!(r.latency_ns, 930 + (1300 - 1200));
    assert_eq!(e.aborted(), 0, "the close_notify opened no request");
    assert_eq!(e.take_handshakes().len(), 1);
}

#[test]
fn first_ssl_read_on_an_established_connection_is_not_a_handshake() {
    // Attached to a server with a keep-alive TLS connection open: its next SSL_read is the
    // first call the uprobes see on that SSL*, but no handshake record crosses the socket.
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            tls_call(0, SslCall::Read),
            tls_read(5_000, 100, APP, 95),
            tls_return(5_010, 90),
            tls_write(5_100, APP, 300),
            block(5_200, nr::READ, CONN as u64),
        ],
    );
    assert!(e.take_handshakes().is_empty());
    assert_eq!(reqs.len(), 1);
    assert_eq!(cause(&reqs[0], Cause::TlsHandshake), 0);
    assert_eq!(reqs[0].latency_ns, 90);
}

#[test]
fn a_freed_ssl_forgets_its_unfinished_handshake() {
    let mut e = engine();
    feed(
        &mut e,
        [
            tls_call(0, SslCall::Handshake),
            tls_return(10, -1), // WANT_READ, then the peer went away
            tls_call(20, SslCall::Free),
            // The allocator hands the same address to the next connection.
            tls_call(1_000, SslCall::Handshake),
            tls_read(1_010, 300, HS, 295),
            tls_return(1_100, 1),
        ],
    );
    let hs = e.take_handshakes();
    assert_eq!(hs.len(), 1);
    assert_eq!(hs[0].start_ns, 1_000, "not the freed connection's start");
}

/// `--sample N`: a handshake function's probes fire on every connection, the socket reads
/// and writes of the sampled ones only. A handshake seen on no connection is an unsampled
/// one's, and counts only when every connection is traced.
#[test]
fn a_handshake_on_no_sampled_connection_is_not_counted() {
    let handshake_on_no_socket = [tls_call(100, SslCall::Handshake), tls_return(800, 1)];
    let mut every = engine();
    feed(&mut every, handshake_on_no_socket.clone());
    assert_eq!(every.take_handshakes().len(), 1);

    let mut sampled = engine();
    sampled.set_connections_sampled(true);
    feed(&mut sampled, handshake_on_no_socket);
    assert!(sampled.take_handshakes().is_empty());
    // A sampled connection's handshake (its flights seen) counts.
    feed(
        &mut sampled,
        [
            tls_call(1_000, SslCall::Handshake),
            read(1_010, CONN, 300),
            write(1_100, CONN),
            tls_return(1_200, 1),
        ],
    );
    let hs = sampled.take_handshakes();
    assert_eq!(hs.len(), 1);
    assert_eq!(hs[0].fd, Some(CONN));
    // A client handshake on a picked backend socket counts too (it carries no request).
    feed(
        &mut sampled,
        [
            tls_call(2_000, SslCall::Handshake),
            write(2_010, BACKEND),
            read(2_100, BACKEND, 300),
            tls_return(2_200, 1),
        ],
    );
    let hs = sampled.take_handshakes();
    assert_eq!(hs.len(), 1);
    assert_eq!((hs[0].fd, hs[0].start_ns), (None, 2_000));
}

/// nginx: one worker thread, an epoll event loop, non-blocking sockets.
mod nginx {
    use super::*;

    const EPOLL: u64 = 8;
    const CONN2: u32 = 11;
    const SSL2: u64 = 0x6000;

    /// A syscall of the worker on `fd` that returned `ret` (entered 5 ns before), moving bytes
    /// whose first record header was `content`/`len` (0/0: none).
    fn io(ts: u64, nr: u32, fd: u32, ret: i64, content: u32, len: u32) -> Event {
        Event::new(
            ts,
            Tid(T),
            EventKind::Syscall(SyscallReturn {
                nr,
                fd,
                ret,
                connection: connection_of(fd),
                origin: origin_of(fd),
                tls_record: content << 16 | len,
            }),
        )
    }

    fn ssl_call(ts: u64, ssl: u64) -> Event {
        let call = SslCall::Handshake;
        Event::new(ts, Tid(T), EventKind::OpenSsl { ssl, call })
    }

    fn ssl_return(ts: u64, ssl: u64, ret: i64) -> Event {
        let call = SslCall::Return { ret };
        Event::new(ts, Tid(T), EventKind::OpenSsl { ssl, call })
    }

    /// Back to epoll_wait until a wakeup at `woke`, on a CPU 10 ns later.
    fn epoll(ts: u64, woke: u64) -> [Event; 3] {
        [block(ts, nr::EPOLL_WAIT, EPOLL), wake(woke), run(woke + 10)]
    }

    /// nginx's TLS 1.3 handshake, as the kernel side reports it: accept4; when the
    /// ClientHello arrives, a one-byte MSG_PEEK receive (not reported) and the first
    /// SSL_do_handshake, which reads the ClientHello, writes the server's flight and returns
    /// WANT_READ; back in epoll until the client's Finished, read by the second
    /// SSL_do_handshake together with the request (nginx sets read-ahead), and then the
    /// NewSessionTickets. SSL_read returns the buffered request without a read syscall (its
    /// next read() finds EAGAIN, which is not reported), and the response goes out.
    #[test]
    fn tls13_request_read_with_the_finished_carries_the_handshake() {
        let mut e = Engine::new(Fds);
        let mut events = Vec::new(); // CONN accepted at 0 (not seen: no accept hook)
        events.extend(epoll(10, 100));
        events.extend([
            ssl_call(120, SSL),
            io(130, nr::READ, CONN, 517, HS, 512), // ClientHello
            io(400, nr::WRITE, CONN, 770, HS, 122), // ServerHello, CCS, encrypted flight
            ssl_return(410, SSL, -1),              // WANT_READ
        ]);
        events.extend(epoll(420, 1420));
        events.extend([
            ssl_call(1440, SSL),
            // change_cipher_spec (the kernel side saw the application_data header after it),
            // a SHA-384 Finished (74 bytes) and the request
            io(1450, nr::READ, CONN, 6 + 74 + 101, CCS | APP << 8, 1),
            io(1500, nr::WRITE, CONN, 287, APP, 282), // two NewSessionTickets
            io(1510, nr::WRITE, CONN, 287, APP, 282),
            ssl_return(1520, SSL, 1),
            io(1600, nr::WRITE, CONN, 262, APP, 257), // the response
        ]);
        events.extend(epoll(1610, 3000));
        events.extend([
            io(3020, nr::READ, CONN, 101, APP, 96), // the next request
            io(3100, nr::WRITE, CONN, 262, APP, 257),
        ]);
        events.extend(epoll(3110, 5000));
        events.extend([
            io(5020, nr::READ, CONN, 24, APP, 19), // close_notify
            io(5030, nr::READ, CONN, 0, 0, 0),     // the client closed
        ]);
        let reqs = feed(&mut e, events);
        assert_eq!(reqs.len(), 2, "{reqs:?}");
        let (first, second) = (&reqs[0], &reqs[1]);
        assert_eq!(first.start_ns, 120, "starts with the handshake");
        assert_eq!(cause(first, Cause::TlsHandshake), 1520 - 120);
        assert_eq!(first.latency_ns, 1400 + 80, "then answered 1520..1600");
        assert_eq!(
            cause(first, Cause::NetIo),
            0,
            "the handshake's waits are in it"
        );
        assert_sums(first);
        assert_eq!(cause(second, Cause::TlsHandshake), 0);
        assert_eq!(second.latency_ns, 3100 - 3020);
        assert_eq!(e.aborted(), 0);
        let hs = e.take_handshakes();
        assert_eq!(hs.len(), 1);
        assert_eq!(
            (hs[0].start_ns, hs[0].fd, hs[0].phases),
            (
                120,
                Some(CONN),
                TlsPhases {
                    cpu: 1400 - 1000 - 10,
                    peer_wait: 1000, // epoll_wait between the two calls
                    runqueue: 10,
                    other: 0,
                }
            )
        );
        assert_eq!(
            hs[0].kind,
            TlsKind {
                version: TlsVersion::Tls13,
                resumed: Some(false),
            }
        );
    }

    /// nginx's full TLS 1.2 handshake on CONN, accepted at 0: the ClientHello read and the
    /// server's flight in one SSL_do_handshake (120..410), then the client's key exchange,
    /// change_cipher_spec and Finished in one read (42 + 6 + 45 bytes: past its first record)
    /// and the server's change_cipher_spec and Finished in the next (1440..1510).
    fn tls12_handshake() -> Vec<Event> {
        let mut events = Vec::new(); // CONN accepted at 0 (not seen: no accept hook)
        events.extend(epoll(10, 100));
        events.extend([
            ssl_call(120, SSL),
            io(130, nr::READ, CONN, 517, HS, 512),
            io(400, nr::WRITE, CONN, 610, HS, 89), // ServerHello .. ServerHelloDone
            ssl_return(410, SSL, -1),
        ]);
        events.extend(epoll(420, 1420));
        events.extend([
            ssl_call(1440, SSL),
            io(1450, nr::READ, CONN, 42 + 6 + 45, HS, 37), // key exchange, CCS, Finished
            io(1500, nr::WRITE, CONN, 51, CCS | HS << 8, 1), // CCS, Finished
            ssl_return(1510, SSL, 1),
        ]);
        events
    }

    /// nginx 1.22's default protocols stop at TLS 1.2: the client's key exchange,
    /// change_cipher_spec and Finished come in one read (past its first record, but the
    /// request cannot come with it: the client waits for the server's Finished), and the
    /// request comes in a later read.
    #[test]
    fn tls12_request_read_after_the_handshake_carries_it() {
        let mut e = Engine::new(Fds);
        let mut events = tls12_handshake();
        events.extend(epoll(1520, 2000));
        events.extend([
            io(2020, nr::READ, CONN, 108, APP, 103), // the request
            io(2050, nr::PREAD64, FILE, 6, 0, 0),
            io(2100, nr::WRITE, CONN, 269, APP, 264),
        ]);
        events.extend(epoll(2110, 5000));
        events.extend([
            io(5020, nr::READ, CONN, 31, ALERT, 26),
            io(5030, nr::READ, CONN, 0, 0, 0), // the client closed
        ]);
        let reqs = feed(&mut e, events);
        assert_eq!(reqs.len(), 1, "{reqs:?}");
        let r = &reqs[0];
        assert_eq!(r.start_ns, 120);
        assert_eq!(cause(r, Cause::TlsHandshake), 1510 - 120);
        assert_eq!(r.latency_ns, 1390 + (2100 - 2020));
        assert_sums(r);
        let hs = e.take_handshakes();
        assert_eq!(
            hs[0].kind,
            TlsKind {
                version: TlsVersion::Tls12,
                resumed: Some(false),
            }
        );
    }

    /// nginx's mail proxy over implicit TLS (SMTPS) speaks first: after a TLS 1.2 handshake
    /// whose last read held the client's whole key exchange flight, its greeting is not the
    /// response to a request that came with the Finished (none did); the client's first
    /// command is the first request, and carries the handshake.
    #[test]
    fn a_greeting_after_a_tls12_handshake_is_not_a_response() {
        let mut e = Engine::new(Fds);
        let mut events = tls12_handshake();
        events.push(io(1550, nr::WRITE, CONN, 60, APP, 55)); // "220 ... ESMTP ready"
        events.extend(epoll(1560, 3000));
        events.extend([
            io(3020, nr::READ, CONN, 50, APP, 45), // EHLO
            io(3100, nr::WRITE, CONN, 120, APP, 115),
            io(3110, nr::READ, CONN, 0, 0, 0), // the client closed
        ]);
        let reqs = feed(&mut e, events);
        assert_eq!(reqs.len(), 1, "{reqs:?}");
        assert_eq!(reqs[0].start_ns, 120);
        assert_eq!(cause(&reqs[0], Cause::TlsHandshake), 1510 - 120);
        assert_eq!(reqs[0].latency_ns, 1390 + (3100 - 3020));
        assert_eq!(e.aborted(), 0);
    }

    /// The return of a handshake step (WANT_READ) is among lost records: the worker is out
    /// of that call, and the requests it serves on its other connections meanwhile are not
    /// that handshake's flights.
    #[test]
    fn a_handshake_call_whose_return_was_lost_does_not_take_other_connections_bytes() {
        let mut e = Engine::new(Fds);
        let mut events = Vec::new();
        events.extend(epoll(10, 100));
        events.extend([
            ssl_call(120, SSL),
            io(130, nr::READ, CONN, 517, HS, 512),
            io(400, nr::WRITE, CONN, 770, HS, 122),
            Event::lost(405), // ssl_return(410, SSL, -1) is among the lost records
        ]);
        events.extend(epoll(420, 1000));
        events.extend([
            // CONN2, a keep-alive connection past its handshake: its next request
            io(1020, nr::READ, CONN2, 101, APP, 96),
            io(1100, nr::WRITE, CONN2, 262, APP, 257),
        ]);
        events.extend(epoll(1110, 2000));
        events.extend([
            // CONN's handshake goes on: the client's Finished, alone
            ssl_call(2020, SSL),
            io(2030, nr::READ, CONN, 6 + 58, CCS | APP << 8, 1),
            ssl_return(2040, SSL, 1),
            io(2100, nr::READ, CONN2, 0, 0, 0), // CONN2's client closed
        ]);
        events.extend(epoll(2110, 3000));
        events.extend([
            io(3020, nr::READ, CONN, 101, APP, 96), // CONN's first request
            io(3100, nr::WRITE, CONN, 262, APP, 257),
            io(3200, nr::READ, CONN, 0, 0, 0),
        ]);
        let mut reqs = feed(&mut e, events);
        reqs.sort_by_key(|r| r.fd);
        assert_eq!(reqs.len(), 2, "{reqs:?}");
        let (first, second) = (&reqs[0], &reqs[1]);
        assert_eq!(first.fd, Some(CONN));
        assert_eq!(cause(first, Cause::TlsHandshake), 2040 - 120);
        assert_eq!(second.fd, Some(CONN2));
        assert_eq!(cause(second, Cause::TlsHandshake), 0);
        assert_eq!(second.latency_ns, 1100 - 1020);
    }

    /// Two connections' handshakes interleaved in the one event loop, keyed by their `SSL*`:
    /// each connection's first request carries its own handshake.
    #[test]
    fn interleaved_handshakes_each_go_to_their_connection() {
        let mut e = Engine::new(Fds);
        let mut events = Vec::new(); // CONN and CONN2 accepted
        events.extend(epoll(10, 100));
        events.extend([
            ssl_call(120, SSL),
            io(130, nr::READ, CONN, 517, HS, 512),
            io(200, nr::WRITE, CONN, 770, HS, 122),
            ssl_return(210, SSL, -1),
            ssl_call(220, SSL2),
            io(230, nr::READ, CONN2, 517, HS, 512),
            io(300, nr::WRITE, CONN2, 770, HS, 122),
            ssl_return(310, SSL2, -1),
        ]);
        events.extend(epoll(320, 1000));
        events.extend([
            // The second connection's Finished and request first.
            ssl_call(1020, SSL2),
            io(1030, nr::READ, CONN2, 6 + 58 + 101, CCS | APP << 8, 1),
            ssl_return(1040, SSL2, 1),
            io(1100, nr::WRITE, CONN2, 262, APP, 257),
            // Then the first one's Finished alone; its request comes later.
            ssl_call(1120, SSL),
            io(1130, nr::READ, CONN, 6 + 58, CCS | APP << 8, 1),
            ssl_return(1140, SSL, 1),
        ]);
        events.extend(epoll(1150, 2000));
        events.extend([
            io(2020, nr::READ, CONN, 101, APP, 96),
            io(2100, nr::WRITE, CONN, 262, APP, 257),
            io(2200, nr::READ, CONN, 0, 0, 0), // the clients closed
            io(2210, nr::READ, CONN2, 0, 0, 0),
        ]);
        let mut reqs = feed(&mut e, events);
        reqs.sort_by_key(|r| r.fd);
        assert_eq!(reqs.len(), 2, "{reqs:?}");
        let (first, second) = (&reqs[0], &reqs[1]);
        assert_eq!((first.fd, first.start_ns), (Some(CONN), 120));
        assert_eq!(cause(first, Cause::TlsHandshake), 1140 - 120);
        assert_eq!(first.latency_ns, 1020 + (2100 - 2020));
        assert_eq!((second.fd, second.start_ns), (Some(CONN2), 220));
        assert_eq!(cause(second, Cause::TlsHandshake), 1040 - 220);
        assert_eq!(second.latency_ns, 820 + (1100 - 1040));
        assert!(reqs
            .iter()
            .all(|r| r.breakdown.iter().sum::<u64>() == r.latency_ns));
        assert_eq!(e.take_handshakes().len(), 2);
    }
}

#[test]
fn exiting_threads_do_not_come_back_and_stale_wakeups_expire() {
    let mut e = engine();
    feed(
        &mut e,
        [
            read(0, CONN, 5),
            Event::new(
                10,
                Tid(T),
                EventKind::ThreadExit {
                    comm: String::new(),
                },
            ),
            Event::new(
                11,
                Tid(T),
                EventKind::SwitchOut {
                    run_delay: None,
                    state: 0x10,
                    syscall: None,
                    stack: None,
                    cpu_steal: None,
                },
            ), /* X: the exiting task's last switch */
        ],
    );
    assert!(
        e.threads.is_empty(),
        "no context left for the exited thread"
    );

    // A wakeup while running, with no switch after it, must not make a much later block
    // look runnable.
    let reqs = feed(
        &mut e,
        [
            read(100, CONN, 5),
            wake(110),
            block(5_000_000, nr::FUTEX, 0xabc),
            wake(5_500_000),
            run(5_500_000),
            write(5_600_000, CONN),
            block(5_700_000, nr::READ, CONN as u64),
        ],
    );
    assert_eq!(cause(&reqs[0], Cause::Lock), 500_000);
}

#[test]
fn tls12_with_session_tickets_ends_at_the_servers_last_flight() {
    // The server's last flight starts with NewSessionTicket (a handshake record), not with
    // change_cipher_spec: the first application_data read is the request.
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            tls_read(0, 300, HS, 295),
            tls_write(50, HS, 1200),
            tls_read(400, 126, HS, 70),
            tls_write(450, HS, 200), // NewSessionTicket, CCS, Finished
            tls_read(900, 100, APP, 95),
            tls_write(1000, APP, 300),
            block(1100, nr::READ, CONN as u64),
        ],
    );
    assert_eq!(reqs.len(), 1);
    assert_eq!(cause(&reqs[0], Cause::TlsHandshake), 450);
    assert_eq!(
        reqs[0].latency_ns,
        450 + 100,
        "the request starts at its own read"
    );
}

const G: u64 = 0xc000_0001; // a goroutine's g
const U: u32 = 101; // a second Go runtime thread

/// `event` as thread `tid` saw it.
fn on(tid: u32, event: Event) -> Event {
    Event {
        tid: Tid(tid),
        ..event
    }
}

fn go_tls(ts: u64, tid: u32, probe: GoProbe) -> Event {
    let g = GoroutineId(G);
    Event::new(ts, Tid(tid), EventKind::GoHandshake { g, probe })
}

#[test]
fn go_handshake_follows_its_goroutine_across_threads() {
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            go_tls(100, T, GoProbe::Enter),
            tls_read(110, 300, tls_content::HANDSHAKE, 295), // ClientHello: binds CONN
            tls_write(200, tls_content::HANDSHAKE, 1200),    // the server's flight
            read(210, CONN, -11),                            // EAGAIN: the goroutine parks
            read(300, FILE, 50), // T runs another goroutine meanwhile: not the handshake's
            on(U, run(600)),
            on(U, read(715, CONN, 80)), // resumed on thread U: the client's Finished
            on(
                U,
                Event::new(
                    750,
                    Tid(U),
                    EventKind::SwitchOut {
                        run_delay: None,
                        state: 0,
                        syscall: None,
                        stack: None,
                        cpu_steal: None,
                    },
                ),
            ), // preempted
            on(U, run(760)),
            go_tls(800, U, GoProbe::Return { error: 0 }),
            on(U, read(900, CONN, 100)), // the request
            on(U, write(1000, CONN)),
            on(U, read(2000, CONN, 100)), // the next request
            on(U, write(2100, CONN)),
            on(U, block(2200, nr::READ, CONN as u64)),
        ],
    );
    let hs = e.take_handshakes();
    assert_eq!(hs.len(), 1);
    assert_eq!(hs[0].fd, Some(CONN));
    assert_eq!(hs[0].start_ns, 100);
    assert_eq!(
        hs[0].phases,
        TlsPhases {
            // T until it parked, U before and after its preemption (from the read's return:
            // its entry is not seen)
            cpu: 110 + 35 + 40,
            peer_wait: 715 - 210,
            runqueue: 10,
            other: 0,
        }
    );
    assert_eq!(reqs.len(), 2, "the handshake's flights are not requests");
    assert_eq!(cause(&reqs[0], Cause::TlsHandshake), 700);
    assert_eq!(reqs[0].start_ns, 100);
    assert_sums(&reqs[0]);
    assert_eq!(cause(&reqs[1], Cause::TlsHandshake), 0);
    assert_eq!(reqs[1].latency_ns, 100);
}

#[test]
fn go_handshake_entry_twice_is_one_handshake_and_a_new_connection_forgets_it() {
    let mut e = engine();
    feed(
        &mut e,
        [
            go_tls(100, T, GoProbe::Enter),
            go_tls(105, T, GoProbe::Enter), // after morestack grew the stack
            tls_read(110, 300, tls_content::HANDSHAKE, 295),
            go_tls(200, T, GoProbe::Return { error: 0 }),
            go_tls(300, T, GoProbe::Return { error: 0 }), // a RET with no handshake open
        ],
    );
    let hs = e.take_handshakes();
    assert_eq!(hs.len(), 1);
    assert_eq!(hs[0].start_ns, 100);
    assert_eq!(hs[0].phases.total(), 100);

    // A connection closed mid-handshake, its fd's number reused by another connection
    // (served on thread U): the goroutine's RET later reports nothing.
    feed(
        &mut e,
        [
            go_tls(1000, T, GoProbe::Enter),
            tls_read(1010, 300, tls_content::HANDSHAKE, 295),
        ],
    );
    new_connection(CONN);
    feed(
        &mut e,
        [
            on(U, read(1100, CONN, 50)),
            go_tls(1200, T, GoProbe::Return { error: 0 }),
        ],
    );
    assert!(e.take_handshakes().is_empty());
}

#[test]
fn go_client_handshake_is_timed_without_a_request() {
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            go_tls(100, T, GoProbe::Enter),
            write(110, BACKEND), // ClientHello to a backend
            read(120, BACKEND, -11),
            on(U, read(600, BACKEND, 900)),
            go_tls(700, U, GoProbe::Return { error: 0 }),
        ],
    );
    assert!(reqs.is_empty());
    let hs = e.take_handshakes();
    assert_eq!(hs.len(), 1);
    assert_eq!(hs[0].fd, Some(BACKEND));
    assert_eq!(hs[0].phases.peer_wait, 600 - 120);
    assert_eq!(hs[0].phases.total(), 600);
}

#[test]
fn phases_are_fitted_to_the_handshake_duration() {
    let mut p = TlsPhases {
        cpu: 50,
        peer_wait: 30,
        runqueue: 5,
        other: 5,
    };
    p.fit(100);
    assert_eq!(p.other, 15);
    p.fit(70);
    assert_eq!(
        p,
        TlsPhases {
            cpu: 40,
            peer_wait: 30,
            runqueue: 0,
            other: 0,
        }
    );
}

#[test]
fn go_request_read_with_the_clients_finished_is_answered_after_the_handshake() {
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            go_tls(100, T, GoProbe::Enter),
            tls_read(110, 517, tls_content::HANDSHAKE, 512),
            tls_write(200, tls_content::HANDSHAKE, 1468),
            read(210, CONN, -11),
            // change_cipher_spec, Finished and the request in one read; Go buffers the request
            tls_read(500, 165, tls_content::CHANGE_CIPHER_SPEC, 1),
            go_tls(520, T, GoProbe::Return { error: 0 }),
            read(550, CONN, -11), // net/http's background read finds nothing
            tls_write(600, tls_content::APPLICATION_DATA, 136), // the response, no read before
            read(700, CONN, -11),
            read(1000, CONN, 112), // the next request
            tls_write(1100, tls_content::APPLICATION_DATA, 136),
            block(1200, nr::READ, CONN as u64),
        ],
    );
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].start_ns, 100);
    assert_eq!(cause(&reqs[0], Cause::TlsHandshake), 420);
    assert_eq!(
        reqs[0].latency_ns,
        420 + 80,
        "the handshake, then 520..600 answering"
    );
    assert_sums(&reqs[0]);
    assert_eq!(cause(&reqs[1], Cause::TlsHandshake), 0);
    assert_eq!(reqs[1].latency_ns, 100);
}

#[test]
fn failed_go_handshakes_and_server_first_writes_carry_nothing() {
    let mut e = engine();
    // A handshake that returns an error (here: a plaintext request on the TLS port).
    let reqs = feed(
        &mut e,
        [
            go_tls(100, T, GoProbe::Enter),
            read(110, CONN, -11),
            read(200, CONN, 90),
            go_tls(210, T, GoProbe::Return { error: 0x6a_1000 }), // a non-nil error
            write(220, CONN), // "400 Bad Request" on the raw connection
        ],
    );
    assert!(reqs.is_empty());
    assert!(
        e.take_handshakes().is_empty(),
        "failed handshakes are not counted"
    );

    // A server that writes first after the handshake (an HTTP/2 SETTINGS frame), whose last
    // handshake read held only the Finished: no request starts at that write.
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            go_tls(1000, T, GoProbe::Enter),
            tls_read(1010, 517, tls_content::HANDSHAKE, 512),
            tls_write(1100, tls_content::HANDSHAKE, 1468),
            tls_read(1500, 64, tls_content::CHANGE_CIPHER_SPEC, 1), // CCS + Finished only
            go_tls(1520, T, GoProbe::Return { error: 0 }),
            tls_write(1600, tls_content::APPLICATION_DATA, 40), // the server speaks first
            read(2000, CONN, 112),                              // the first request
            tls_write(2100, tls_content::APPLICATION_DATA, 136),
            block(2200, nr::READ, CONN as u64),
        ],
    );
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        reqs[0].start_ns, 1000,
        "the first request carries the handshake"
    );
    assert_eq!(cause(&reqs[0], Cause::TlsHandshake), 520);
}

#[test]
fn lost_events_forget_go_handshakes() {
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            go_tls(100, T, GoProbe::Enter),
            tls_read(110, 517, tls_content::HANDSHAKE, 512),
            Event::lost(150), // the RET is among the lost events
            read(1000, CONN, 100),
            write(1100, CONN),
            block(1200, nr::READ, CONN as u64),
        ],
    );
    assert_eq!(reqs.len(), 1, "the connection's requests are not swallowed");
}

/// A Go handshake forgotten at a loss leaves the rest of its flights to its connection: the
/// client's Finished, read after the loss, starts a request there, with the wait for the
/// real request in it. The loss was in that connection's handshake, before the request
/// opened: its first request is incomplete.
#[test]
fn the_first_request_after_a_loss_in_its_go_handshake_is_incomplete() {
    let mut e = engine();
    let reqs = feed(
        &mut e,
        [
            go_tls(100, T, GoProbe::Enter),
            tls_read(110, 517, tls_content::HANDSHAKE, 512), // the ClientHello
            tls_write(200, tls_content::HANDSHAKE, 1468),
            read(210, CONN, -11),
            Event::lost(300),
            tls_read(500, 64, tls_content::CHANGE_CIPHER_SPEC, 1), // CCS + Finished
            // the RET was among the lost records
            read(1000, CONN, 100), // the request
            write(1100, CONN),
            read(2000, CONN, 100), // the next request
            write(2100, CONN),
            block(2200, nr::READ, CONN as u64),
        ],
    );
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert!(reqs[0].incomplete, "{reqs:?}");
    assert!(!reqs[1].incomplete, "only the first: {reqs:?}");
}

/// The handshake function's entry probe sits on its stack check, where Go also preempts a
/// goroutine (`newstack`: `gopreempt_m`, or `preemptPark` for a stack scan): the goroutine
/// leaves its thread there and, resumed later on any thread, runs the function again from
/// its entry. That second entry is the same handshake, begun at the first; and the thread
/// it left runs other goroutines, whose socket I/O is not the handshake's.
#[test]
fn a_handshake_preempted_at_its_entry_begins_at_its_first_entry() {
    let handshake_after = |before: Vec<Event>| {
        let mut e = engine();
        let mut events = vec![go_tls(100, T, GoProbe::Enter)];
        events.extend(before);
        events.extend([
            go_tls(600, U, GoProbe::Enter), // resumed on U: its entry again
            on(U, tls_read(610, 517, tls_content::HANDSHAKE, 512)), // the ClientHello
            on(U, tls_write(700, tls_content::HANDSHAKE, 1468)),
            on(U, tls_read(800, 64, tls_content::CHANGE_CIPHER_SPEC, 1)), // CCS + Finished
            go_tls(900, U, GoProbe::Return { error: 0 }),
            on(U, read(1000, CONN, 100)), // the request
            on(U, write(1100, CONN)),
            on(U, block(1200, nr::READ, CONN as u64)),
        ]);
        let reqs = feed(&mut e, events);
        (reqs, e.take_handshakes())
    };
    let another_goroutine = Event::new(200, Tid(T), EventKind::Go(GoSched::Execute { goid: 50 }));
    for before in [
        vec![],
        // T runs another goroutine (Go's scheduler followed), whose read of a backend finds
        // nothing: not the handshake's first flight.
        vec![another_goroutine, read(300, BACKEND, -11)],
    ] {
        let (reqs, hs) = handshake_after(before);
        assert_eq!(hs.len(), 1, "{hs:?}");
        assert_eq!(hs[0].fd, Some(CONN));
        assert_eq!(hs[0].start_ns, 100, "{hs:?}");
        assert_eq!(hs[0].phases.total(), 800);
        assert_eq!(reqs.len(), 1, "{reqs:?}");
        assert_eq!(reqs[0].start_ns, 100);
        assert_eq!(cause(&reqs[0], Cause::TlsHandshake), 800, "{reqs:?}");
        assert_eq!(reqs[0].latency_ns, 800 + 100);
        assert_sums(&reqs[0]);
    }
}

/// A handshake goroutine that leaves its thread before its first socket I/O (a GC assist's
/// park while it allocates, a stack scan) and runs again, on the same thread after another
/// goroutine or on another thread (Go's scheduler followed: `execute` names it by its id):
/// its ClientHello read there is its connection's, and the handshake is timed by the uprobes
/// alone, once.
#[test]
fn a_handshake_goroutine_resumed_before_its_first_io_finds_its_connection() {
    const HANDSHAKER: u64 = 7;
    let execute =
        |ts, tid: u32, goid| Event::new(ts, Tid(tid), EventKind::Go(GoSched::Execute { goid }));
    for resumed_on in [T, U] {
        let mut e = engine();
        let reqs = feed(
            &mut e,
            [
                execute(90, T, HANDSHAKER),
                go_tls(100, T, GoProbe::Enter),
                execute(200, T, 50), // another goroutine: the handshake's left T
                execute(300, resumed_on, HANDSHAKER),
                on(resumed_on, tls_read(310, 517, tls_content::HANDSHAKE, 512)), // ClientHello
                on(resumed_on, tls_write(400, tls_content::HANDSHAKE, 1468)),
                on(
                    resumed_on,
                    tls_read(500, 64, tls_content::CHANGE_CIPHER_SPEC, 1),
                ),
                go_tls(600, resumed_on, GoProbe::Return { error: 0 }),
                on(resumed_on, read(700, CONN, 100)), // the request
                on(resumed_on, write(800, CONN)),
                on(resumed_on, block(900, nr::READ, CONN as u64)),
            ],
        );
        let hs = e.take_handshakes();
        assert_eq!(hs.len(), 1, "resumed on {resumed_on}: {hs:?}");
        assert_eq!(hs[0].fd, Some(CONN), "resumed on {resumed_on}: {hs:?}");
        assert_eq!(reqs.len(), 1, "resumed on {resumed_on}: {reqs:?}");
        assert_eq!(reqs[0].start_ns, 100);
        assert_eq!(cause(&reqs[0], Cause::TlsHandshake), 500, "{reqs:?}");
        assert_sums(&reqs[0]);
    }
}

/// Goroutines: requests timed on the goroutine that read them, across threads.
mod goroutines {
    use super::*;

    const G: u64 = 7; // the connection's goroutine
    const H: u64 = 8; // another goroutine
    const LOCK: u8 = 1;
    const CHAN: u8 = 2;
    const IO_WAIT: u8 = 3;
    const COND_WAIT: u8 = 4;

    fn go_engine() -> Engine<Fds> {
        let mut e = engine();
        let reasons = [
            "",
            "sync.Mutex.Lock",
            "chan receive",
            "IO wait",
            "sync.Cond.Wait",
        ];
        e.set_go_wait_reasons(reasons.iter().map(|s| s.to_string()).collect());
        e
    }

    fn go(ts: u64, tid: u32, event: GoSched) -> Event {
        Event::new(ts, Tid(tid), EventKind::Go(event))
    }

    fn execute(ts: u64, tid: u32, goid: u64) -> Event {
        go(ts, tid, GoSched::Execute { goid })
    }

    fn park(ts: u64, tid: u32, goid: u64, reason: u8) -> Event {
        go(
            ts,
            tid,
            GoSched::Park {
                goid,
                reason,
                request_body: false,
                stack: None,
            },
        )
    }

    fn ready(ts: u64, goid: u64) -> Event {
        go(
            ts,
            U,
            GoSched::Ready {
                goid,
                waker: Some(H),
            },
        )
    }

    fn on_conn(ts: u64, tid: u32, nr: u32, ret: i64) -> Event {
        let sys = SyscallReturn {
            nr,
            fd: CONN,
            ret,
            connection: connection_of(CONN),
            origin: origin_of(CONN),
            tls_record: 0,
        };
        Event::new(ts, Tid(tid), EventKind::Syscall(sys))
    }

    const U: u32 = 101; // a second thread of the Go runtime

    /// HTTP/2: the connection's goroutine reads every stream's frames (its first read, the
    /// connection preface, opens no request once it is known to serve HTTP/2), and each
    /// stream's request runs from its handler goroutine's start to that goroutine's exit,
    /// with the handler's own waits; two streams of one connection are two requests.
    #[test]
    fn each_http2_stream_is_its_handler_goroutines_request() {
        const H2: u64 = 20; // the second stream's handler
        const PREFACE: u64 = 21; // the goroutine that reads the client's preface
        const FLUSH: u64 = 22; // a goroutine that writes frames
        let mut e = go_engine();
        let reqs = feed(
            &mut e,
            [
                run(0),
                on(U, run(0)),
                execute(10, T, G),
                go(30, T, GoSched::Http2Connection { goid: G }),
                // The goroutine serve starts to read the client's preface: marked before its
                // read, which makes the connection HTTP/2's.
                execute(40, T, PREFACE),
                go(40, T, GoSched::Http2Connection { goid: PREFACE }),
                on_conn(42, T, nr::READ, 24),
                // SETTINGS, flushed by a goroutine of its own, which is not marked.
                execute(44, T, FLUSH),
                on_conn(46, T, nr::WRITE, 30),
                go(47, T, GoSched::Exit { goid: FLUSH }),
                execute(48, T, PREFACE),
                go(49, T, GoSched::Exit { goid: PREFACE }),
                execute(49, T, G),
                on_conn(50, T, nr::READ, 100), // HEADERS of two streams
                execute(60, U, H),
                go(60, U, GoSched::Http2Handler { goid: H }),
                park(70, U, H, LOCK),
                execute(80, T, H2),
                go(80, T, GoSched::Http2Handler { goid: H2 }),
                go(120, T, GoSched::Exit { goid: H2 }),
                ready(270, H),
                execute(280, U, H),
                go(300, U, GoSched::Exit { goid: H }),
                execute(310, T, G),
                on_conn(320, T, nr::WRITE, 200), // both responses' frames
                on_conn(330, T, nr::READ, -11),
            ],
        );
        assert_eq!(reqs.len(), 2, "{reqs:?}");
        let first = reqs
            .iter()
            .find(|r| r.ctx == ExecCtx::Goroutine(GoroutineId(H2)));
        let first = first.expect("the second stream's request");
        assert_eq!((first.start_ns, first.latency_ns, first.fd), (80, 40, None));
        assert_eq!(cause(first, Cause::OnCpu), 40);
        let second = reqs
            .iter()
            .find(|r| r.ctx == ExecCtx::Goroutine(GoroutineId(H)));
        let second = second.expect("the first stream's request");
        assert_eq!((second.start_ns, second.latency_ns), (60, 240));
        assert_eq!(cause(second, Cause::Lock), 200);
        assert_eq!(cause(second, Cause::GoRunqueue), 10);
        assert_sums(second);
    }

    /// A busy server's connection goroutine reads the client's connection preface with the
    /// client's Finished, the last read of its TLS handshake, before it enters the HTTP/2
    /// serve loop: no request is left for that read, which the server's SETTINGS, written
    /// by a goroutine of its own (not marked), would answer, carrying the handshake (a
    /// 5.7 ms request of nothing but the handshake, in a test with both cores busy). Nor is
    /// one opened on the connection when the goroutine reads the preface after the
    /// handshake, before its probe (it used to go with the goroutine's next read).
    #[test]
    fn a_preface_read_before_the_http2_probe_is_no_request() {
        let finished_then_preface = SyscallReturn {
            nr: nr::READ,
            fd: CONN,
            ret: 218,
            connection: connection_of(CONN),
            origin: SocketOrigin::TcpServer,
            tls_record: tracer_common::tls_record_and_next(
                tracer_common::tls_record([20, 3, 3, 0, 1]),
                [23, 3, 3, 0, 53],
            ),
        };
        for preface_in_the_handshake in [true, false] {
            let mut e = go_engine();
            let mut events = vec![
                run(0),
                execute(10, T, G),
                go_tls(20, T, GoProbe::Enter),
                tls_read(30, 300, tls_content::HANDSHAKE, 295), // ClientHello
                tls_write(40, tls_content::HANDSHAKE, 1200),    // the server's flight
            ];
            if preface_in_the_handshake {
                events.push(Event::new(
                    50,
                    Tid(T),
                    EventKind::Syscall(finished_then_preface),
                ));
                events.push(go_tls(60, T, GoProbe::Return { error: 0 }));
            } else {
                events.push(on_conn(50, T, nr::READ, 80)); // the Finished alone
                events.push(go_tls(60, T, GoProbe::Return { error: 0 }));
                events.push(on_conn(62, T, nr::READ, 100)); // the preface
            }
            // Frames written by goroutines of their own (not marked) before the marked
            // goroutines' next socket I/O, which would find the connection HTTP/2's.
            const WRITER: u64 = 30;
            events.extend([
                go(70, T, GoSched::Http2Connection { goid: G }),
                park(80, T, G, CHAN),
                execute(90, T, H), // the SETTINGS' writer
                on_conn(100, T, nr::WRITE, 67),
                go(110, T, GoSched::Exit { goid: H }),
                execute(120, T, WRITER),
                on_conn(130, T, nr::WRITE, 35),
                go(140, T, GoSched::Exit { goid: WRITER }),
            ]);
            let mut reqs = feed(&mut e, events);
            e.finish_all(); // the trace ends: what is open is settled
            reqs.extend(e.take_requests());
            assert!(
                reqs.is_empty(),
                "preface in the handshake {preface_in_the_handshake}: {reqs:?}"
            );
            assert_eq!(e.take_handshakes().len(), 1, "the handshake is counted");
        }
    }

    /// The handler probe firing twice for one stream (its function entered again after
    /// a morestack grew the goroutine's stack) opens its request once, from the first.
    #[test]
    fn a_stream_handler_probed_twice_is_one_request() {
        let mut e = go_engine();
        let reqs = feed(
            &mut e,
            [
                run(0),
                on(U, run(0)),
                execute(60, U, H),
                go(60, U, GoSched::Http2Handler { goid: H }),
                go(62, U, GoSched::Http2Handler { goid: H }), // the probe again
                park(70, U, H, LOCK),
                ready(270, H),
                execute(280, U, H),
                go(300, U, GoSched::Exit { goid: H }),
            ],
        );
        assert_eq!(reqs.len(), 1, "{reqs:?}");
        let r = &reqs[0];
        assert_eq!((r.start_ns, r.latency_ns), (60, 240), "{r:?}");
        assert!(!r.shared_context, "{r:?}");
        assert_sums(r);
    }

    #[test]
    fn a_request_follows_its_goroutine_across_threads_and_parks() {
        let mut e = go_engine();
        let reqs = feed(
            &mut e,
            [
                run(0),
                on(U, run(0)),
                execute(10, T, G),
                on_conn(20, T, nr::READ, 100), // the request, as net/http reads it
                park(30, T, G, LOCK),
                ready(230, G), // the holder unlocked
                execute(250, U, G),
                park(260, U, G, CHAN),
                ready(360, G),
                execute(370, T, G),
                on_conn(400, T, nr::WRITE, 10), // the response
                on_conn(410, T, nr::READ, -11), // EAGAIN: back to reading, nothing yet
            ],
        );
        assert_eq!(reqs.len(), 1, "{reqs:?}");
        let r = &reqs[0];
        assert_eq!(r.ctx, ExecCtx::Goroutine(GoroutineId(G)));
        assert_eq!((r.start_ns, r.latency_ns), (20, 380));
        assert_eq!(
            cause(r, Cause::OnCpu),
            10 + 10 + 30,
            "its time on T, U, then T"
        );
        assert_eq!(cause(r, Cause::Lock), 200);
        assert_eq!(cause(r, Cause::Chan), 100);
        assert_eq!(cause(r, Cause::GoRunqueue), 20 + 10, "ready until executed");
        assert_sums(r);
        let parked: std::collections::HashMap<String, u64> = e.go_parked_by_reason().collect();
        assert_eq!(parked["sync.Mutex.Lock"], 200);
        assert_eq!(parked["chan receive"], 100);
        assert!(e.on_goroutines());
    }

    #[test]
    fn preempted_is_go_runqueue_and_netpoll_waits_are_net_io() {
        let mut e = go_engine();
        let reqs = feed(
            &mut e,
            [
                run(0),
                on(U, run(0)),
                execute(10, T, G),
                on_conn(20, T, nr::READ, 100),
                execute(50, T, H), // G preempted without parking
                execute(80, U, G),
                park(90, U, G, IO_WAIT), // a backend read found nothing
                execute(190, T, G),      // the netpoller's pick, run at once: no ready
                on_conn(200, T, nr::WRITE, 10),
                on_conn(210, T, nr::READ, -11),
            ],
        );
        let r = &reqs[0];
        assert_eq!(r.latency_ns, 180);
        assert_eq!(cause(r, Cause::OnCpu), 30 + 10 + 10);
        assert_eq!(cause(r, Cause::GoRunqueue), 30);
        assert_eq!(cause(r, Cause::NetIo), 100);
        assert_sums(r);
    }

    /// A `sync.Cond` wait is `lock`, but inside the HTTP/2 server's request body read (the
    /// probe's `request_body`) it is the handler's wait for the client's DATA: `net_io`.
    #[test]
    fn a_cond_wait_for_the_request_body_is_net_io() {
        for (request_body, expected) in [(false, Cause::Lock), (true, Cause::NetIo)] {
            let mut e = go_engine();
            let cond_wait = GoSched::Park {
                goid: G,
                reason: COND_WAIT,
                request_body,
                stack: None,
            };
            let reqs = feed(
                &mut e,
                [
                    run(0),
                    execute(10, T, G),
                    on_conn(20, T, nr::READ, 100),
                    go(30, T, cond_wait),
                    ready(130, G),
                    execute(140, T, G),
                    on_conn(150, T, nr::WRITE, 10),
                    on_conn(160, T, nr::READ, -11),
                ],
            );
            let r = &reqs[0];
            assert_eq!(r.latency_ns, 130, "{r:?}");
            assert_eq!(
                cause(r, expected),
                100,
                "request_body {request_body}: {r:?}"
            );
            assert_eq!(cause(r, Cause::GoRunqueue), 10, "{r:?}");
            assert_sums(r);
        }
    }

    /// The netpoller found a parked goroutine's I/O ready and queued it (`injectglist`: a
    /// ready with no waker): the network wait ends there, and the goroutine waits for Go's
    /// scheduler until it runs.
    #[test]
    fn a_netpoll_wakeup_ends_the_network_wait() {
        let mut e = go_engine();
        let reqs = feed(
            &mut e,
            [
                run(0),
                on(U, run(0)),
                execute(10, T, G),
                on_conn(20, T, nr::READ, 100),
                park(90, T, G, IO_WAIT),
                go(
                    130,
                    U,
                    GoSched::Ready {
                        goid: G,
                        waker: None,
                    },
                ),
                execute(190, T, G),
                on_conn(200, T, nr::WRITE, 10),
                on_conn(210, T, nr::READ, -11),
            ],
        );
        let r = &reqs[0];
        assert_eq!(r.latency_ns, 180);
        assert_eq!(cause(r, Cause::OnCpu), 70 + 10);
        assert_eq!(cause(r, Cause::NetIo), 40);
        assert_eq!(cause(r, Cause::GoRunqueue), 60);
        assert_sums(r);
    }

    /// net/http's background read (another goroutine, on the same connection) finds nothing
    /// while the handler, which has flushed part of its response, waits: the request goes
    /// on until its own goroutine is back to reading.
    #[test]
    fn another_goroutines_empty_read_does_not_end_the_request() {
        let mut e = go_engine();
        let reqs = feed(
            &mut e,
            [
                run(0),
                execute(10, T, G),
                on_conn(20, T, nr::READ, 100),
                on_conn(30, T, nr::WRITE, 10), // part 1, flushed
                park(40, T, G, CHAN),
                execute(50, T, H), // the background reader
                on_conn(60, T, nr::READ, -11),
                park(70, T, H, IO_WAIT),
                ready(140, G),
                execute(150, T, G),
                on_conn(160, T, nr::WRITE, 10), // part 2
                on_conn(170, T, nr::READ, -11),
            ],
        );
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].latency_ns, 140, "to part 2, not to part 1");
        assert_eq!(cause(&reqs[0], Cause::Chan), 100);
    }

    /// A park seen on another thread than the goroutine's stretch began on (the execute that
    /// moved it was lost) ends that stretch with its own thread's time, and the request's
    /// unseen time is `other`: its causes still sum to its wall-clock latency.
    #[test]
    fn a_lost_execute_costs_no_foreign_time() {
        let mut e = go_engine();
        let reqs = feed(
            &mut e,
            [
                run(0),
                on(U, run(0)),
                on(U, block(5, nr::FUTEX, 0xf00)), // U idles in the scheduler
                execute(10, T, G),
                on_conn(20, T, nr::READ, 100),
                on(U, wake(100)),
                on(U, run(100)),
                // G's execute on U at 100 was lost (counted as such in the kernel).
                park(150, U, G, CHAN),
                ready(250, G),
                execute(260, T, G),
                on_conn(300, T, nr::WRITE, 10),
                on_conn(310, T, nr::READ, -11),
            ],
        );
        let r = &reqs[0];
        assert_eq!(r.latency_ns, 280);
        assert_eq!(cause(r, Cause::Lock), 0, "nothing of U's futex wait");
        assert_eq!(cause(r, Cause::Chan), 100);
        assert_sums(r);
    }

    /// Seen under load: the goroutine's syscall returns with no P free, the runtime queues it
    /// and its thread sleeps in a futex (`stopm`) until another thread runs it. That wait is
    /// for Go's scheduler, not a lock of the goroutine's.
    #[test]
    fn a_thread_sleeping_in_the_runtime_leaves_its_goroutine_runnable() {
        let mut e = go_engine();
        let reqs = feed(
            &mut e,
            [
                run(0),
                on(U, run(0)),
                execute(10, T, G),
                on_conn(20, T, nr::READ, 100),
                block(50, nr::FUTEX, 0xf00), // stopm
                execute(80, U, G),
                on(U, on_conn(100, U, nr::WRITE, 10)),
                on(U, on_conn(110, U, nr::READ, -11)),
            ],
        );
        let r = &reqs[0];
        assert_eq!(r.latency_ns, 80);
        assert_eq!(cause(r, Cause::Lock), 0);
        assert_eq!(cause(r, Cause::GoRunqueue), 30);
        assert_eq!(cause(r, Cause::OnCpu), 30 + 20);
        assert_sums(r);
    }

    /// Seen under load (Go 1.27, both cores busy): the goroutine waits for a contended
    /// runtime lock (`lock2` sleeps in a futex) and goes on on the same thread, with no
    /// `execute`: the request it reads next is its own, not its thread's.
    #[test]
    fn a_thread_waiting_for_a_runtime_lock_keeps_its_goroutine() {
        let mut e = go_engine();
        let reqs = feed(
            &mut e,
            [
                run(0),
                execute(10, T, G),
                block(20, nr::FUTEX, 0xf00), // a runtime lock
                wake(30),
                run(35),
                on_conn(40, T, nr::READ, 100), // the request
                block(50, nr::FUTEX, 0xf00),   // the runtime lock again, inside it
                wake(70),
                run(80),
                on_conn(100, T, nr::WRITE, 10),
                on_conn(110, T, nr::READ, -11),
            ],
        );
        assert_eq!(reqs.len(), 1, "{reqs:?}");
        let r = &reqs[0];
        assert_eq!(r.ctx, ExecCtx::Goroutine(GoroutineId(G)));
        assert_eq!(r.latency_ns, 60);
        assert_eq!(
            cause(r, Cause::Lock),
            20,
            "the futex wait is the goroutine's"
        );
        assert_eq!(cause(r, Cause::Runqueue), 10);
        assert_eq!(cause(r, Cause::GoRunqueue), 0);
        assert_eq!(cause(r, Cause::OnCpu), 10 + 20);
        assert_sums(r);
    }

    /// The thread slept in the runtime, then ran another goroutine: its goroutine had left it
    /// at the sleep, and waited for Go's scheduler from then until it ran again elsewhere.
    #[test]
    fn a_thread_that_sleeps_then_runs_another_goroutine_had_left_its_own() {
        const H: u64 = 9;
        let mut e = go_engine();
        let reqs = feed(
            &mut e,
            [
                run(0),
                on(U, run(0)),
                execute(10, T, G),
                on_conn(20, T, nr::READ, 100),
                block(50, nr::FUTEX, 0xf00), // stopm
                wake(70),
                run(75),
                execute(80, T, H),
                execute(120, U, G),
                on(U, on_conn(130, U, nr::WRITE, 10)),
                on(U, on_conn(140, U, nr::READ, -11)),
            ],
        );
        let r = &reqs[0];
        assert_eq!(r.ctx, ExecCtx::Goroutine(GoroutineId(G)));
        assert_eq!(r.latency_ns, 110);
        assert_eq!(
            cause(r, Cause::Lock),
            0,
            "the idle thread's futex wait is not G's"
        );
        assert_eq!(cause(r, Cause::GoRunqueue), 70);
        assert_eq!(cause(r, Cause::OnCpu), 30 + 10);
        assert_sums(r);
    }

    /// The thread slept in the runtime (`stopm`) inside G's request and was woken before its
    /// next `execute` told that G had left it at the sleep: the request's breakdown holds
    /// none of that futex wait, so neither do its largest wait nor the `lock` wait sites.
    #[test]
    fn a_sleep_found_later_to_have_left_its_goroutine_leaves_no_lock_site() {
        const H: u64 = 9;
        let stopm = StackRef { id: 3, caller: 0 };
        let mut e = go_engine();
        let reqs = feed(
            &mut e,
            [
                run(0),
                on(U, run(0)),
                execute(10, T, G),
                on_conn(20, T, nr::READ, 100),
                block_at(50, nr::FUTEX, 0xf00, stopm),
                wake(70), // still taken for G's: the execute that tells comes later
                run(75),
                execute(80, T, H),
                execute(120, U, G),
                on(U, on_conn(130, U, nr::WRITE, 10)),
                on(U, on_conn(140, U, nr::READ, -11)),
            ],
        );
        let r = &reqs[0];
        assert_eq!(cause(r, Cause::Lock), 0, "{r:?}");
        assert_eq!(r.largest_wait, None, "{r:?}");
        let (sites, rest) = e.wait_sites.top(Cause::Lock, 5);
        assert!(sites.is_empty() && rest.count == 0, "{sites:?}");
        assert_eq!(e.wait_sites.without_stack(Cause::Lock).count, 0);
    }

    /// A futex wait the goroutine is found later to have kept (its socket I/O comes from the
    /// same thread): its request's lock wait, at its site.
    #[test]
    fn a_sleep_found_later_to_have_kept_its_goroutine_is_its_lock_wait() {
        let runtime_lock = StackRef { id: 4, caller: 0 };
        let mut e = go_engine();
        let reqs = feed(
            &mut e,
            [
                run(0),
                execute(10, T, G),
                on_conn(40, T, nr::READ, 100),
                block_at(50, nr::FUTEX, 0xf00, runtime_lock),
                wake(70),
                run(80),
                on_conn(100, T, nr::WRITE, 10), // G's own I/O: it stayed
                on_conn(110, T, nr::READ, -11),
            ],
        );
        let r = &reqs[0];
        assert_eq!(cause(r, Cause::Lock), 20, "{r:?}");
        assert_eq!(
            r.largest_wait,
            Some(LargestWait {
                cause: Cause::Lock,
                ns: 20,
                site: Some(runtime_lock),
            })
        );
        let (sites, _) = e.wait_sites.top(Cause::Lock, 5);
        assert_eq!(sites, vec![(runtime_lock, Tally { count: 1, ns: 20 })]);
    }

    /// Seen under load with net/http over TLS: the next request's bytes are read by the
    /// background-read goroutine, which then exits; the connection's goroutine serves it.
    #[test]
    fn a_request_read_by_a_helper_goroutine_is_served_by_the_connections() {
        const B: u64 = 9; // the background reader
        let mut e = go_engine();
        let reqs = feed(
            &mut e,
            [
                run(0),
                on(U, run(0)),
                execute(10, T, G),
                on_conn(20, T, nr::READ, 100),
                on_conn(30, T, nr::WRITE, 10), // the first response
                execute(40, U, B),
                on(U, on_conn(50, U, nr::READ, 100)), // the next request, read by B
                go(60, U, GoSched::Exit { goid: B }),
                park(70, T, G, LOCK),
                ready(170, G),
                execute(180, T, G),
                on_conn(200, T, nr::WRITE, 10),
                on_conn(210, T, nr::READ, -11),
            ],
        );
        assert_eq!(reqs.len(), 2, "{reqs:?}");
        let r = &reqs[1];
        assert_eq!(r.ctx, ExecCtx::Goroutine(GoroutineId(G)));
        assert_eq!(r.latency_ns, 150);
        assert_eq!(cause(r, Cause::Lock), 100);
        assert_eq!(e.aborted(), 0);
    }

    /// The connection's goroutine G is found, at its next `execute`, to have left its thread
    /// when the thread slept in the runtime (`stopm`): it was runnable from the sleep. The
    /// next request, read meanwhile by the background reader, started after that sleep: its
    /// start had counted G's time since the sleep as the thread's futex wait, and the
    /// back-dated runnable wait must not count again the part of it before the request.
    #[test]
    fn a_back_dated_sleep_counts_nothing_before_the_request() {
        const B: u64 = 9; // the background reader
        let mut e = go_engine();
        let reqs = feed(
            &mut e,
            [
                run(0),
                on(U, run(0)),
                execute(10, T, G),
                on_conn(20, T, nr::READ, 100),
                on_conn(30, T, nr::WRITE, 10), // the first response
                block(40, nr::FUTEX, 0xf00),   // stopm: G back in Go's run queue
                execute(45, U, B),
                on(U, on_conn(50, U, nr::READ, 100)), // the next request, read by B
                go(60, U, GoSched::Exit { goid: B }),
                execute(100, U, G), // G had left T at its sleep
                on(U, on_conn(120, U, nr::WRITE, 10)),
                on(U, on_conn(130, U, nr::READ, -11)),
            ],
        );
        assert_eq!(reqs.len(), 2, "{reqs:?}");
        let r = &reqs[1];
        assert_eq!(r.ctx, ExecCtx::Goroutine(GoroutineId(G)));
        assert_eq!(r.start_ns, 50);
        assert_eq!(r.latency_ns, 120 - 50, "{r:?}");
        assert_eq!(cause(r, Cause::Lock), 0, "{r:?}");
        assert_eq!(cause(r, Cause::GoRunqueue), 100 - 50, "{r:?}");
        assert_eq!(cause(r, Cause::OnCpu), 20, "{r:?}");
        assert_sums(r);
    }

    /// Seen in Go 1.19 under load: `execute` of the goroutine already running on the thread
    /// (it yielded and was scheduled again at once); its time on the thread goes on.
    #[test]
    fn executed_again_without_a_park_keeps_its_time() {
        let mut e = go_engine();
        let reqs = feed(
            &mut e,
            [
                run(0),
                execute(10, T, G),
                on_conn(20, T, nr::READ, 100),
                execute(60, T, G),
                on_conn(100, T, nr::WRITE, 10),
                on_conn(110, T, nr::READ, -11),
            ],
        );
        let r = &reqs[0];
        assert_eq!(r.latency_ns, 80);
        assert_eq!(cause(r, Cause::OnCpu), 80);
    }

    #[test]
    fn a_goroutine_running_a_blocking_syscall_has_its_threads_cause() {
        let mut e = go_engine();
        let reqs = feed(
            &mut e,
            [
                run(0),
                execute(10, T, G),
                on_conn(20, T, nr::READ, 100),
                block(30, nr::FSYNC, 9),
                wake(530),
                run(540),
                on_conn(600, T, nr::WRITE, 10),
                on_conn(610, T, nr::READ, -11),
            ],
        );
        let r = &reqs[0];
        assert_eq!(cause(r, Cause::DiskIo), 500);
        assert_eq!(cause(r, Cause::Runqueue), 10);
        assert_eq!(r.latency_ns, 580);
        assert_sums(r);
    }

    #[test]
    fn an_exited_goroutine_ends_its_answered_request_and_is_forgotten() {
        let mut e = go_engine();
        let reqs = feed(
            &mut e,
            [
                run(0),
                execute(10, T, G),
                on_conn(20, T, nr::READ, 100),
                on_conn(40, T, nr::WRITE, 10),
                go(50, T, GoSched::Exit { goid: G }),
                park(60, T, G, LOCK), // a stale probe after the exit: ignored
            ],
        );
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].latency_ns, 20);
        assert_eq!(e.open_requests(), 0);
    }

    fn semacquire(ts: u64, tid: u32, goid: u64, address: u64) -> Event {
        go(
            ts,
            tid,
            GoSched::Semacquire {
                goid,
                address,
                caller: 0,
            },
        )
    }

    fn ready_by(ts: u64, tid: u32, goid: u64, waker: u64) -> Event {
        go(
            ts,
            tid,
            GoSched::Ready {
                goid,
                waker: Some(waker),
            },
        )
    }

    const MUTEX: u64 = 0xc000_0100;
    const SEMA: u64 = MUTEX + 4; // sync.Mutex{state int32; sema uint32}

    /// A goroutine parks on a sync.Mutex's semaphore and the holder's Unlock readies it: the
    /// wait is listed under the mutex, with the waiter and the goroutine (and thread) that
    /// woke it. A second park inside the same semacquire1 (another goroutine took the
    /// semaphore first after the wakeup) waits on the same address.
    #[test]
    fn a_semaphore_wait_names_the_mutex_its_waiter_and_its_waker() {
        let mut e = go_engine();
        feed(
            &mut e,
            [
                run(0),
                on(U, run(0)),
                execute(10, T, G),
                semacquire(20, T, G, SEMA),
                park(21, T, G, LOCK),
                ready_by(121, U, G, H), // H unlocks on U
                execute(130, T, G),
                park(140, T, G, LOCK), // lost the race: parks again, no new semacquire1
                ready_by(190, U, G, H),
                execute(200, T, G),
            ],
        );
        let (address, lock) = e.go_locks.top(1)[0];
        assert_eq!(address, SEMA);
        assert_eq!((lock.waits, lock.wait_ns), (2, 100 + 50));
        let (waiters, _) = lock.waiters.top(10);
        assert_eq!(waiters[0].0, GoroutineId(G));
        let (wakers, _) = lock.wakers.top(10);
        assert_eq!(
            wakers[0].0,
            GoWaker {
                goid: Some(H),
                tid: Tid(U)
            }
        );
        assert_eq!(wakers[0].1.count, 2);
        assert_eq!(
            e.go_semaphore_owner(SEMA),
            ("sync.Mutex".to_string(), MUTEX)
        );
    }

    /// semacquire1 entered without parking (the semaphore was free) does not make a later
    /// park for another reason a lock wait.
    #[test]
    fn only_a_semaphore_park_is_a_wait_on_the_semaphore() {
        let mut e = go_engine();
        feed(
            &mut e,
            [
                run(0),
                execute(10, T, G),
                semacquire(20, T, G, SEMA), // taken at once
                park(30, T, G, CHAN),
                ready(130, G),
                execute(140, T, G),
            ],
        );
        assert!(e.go_locks.top(1).is_empty());
    }

    /// While the world is stopped, a goroutine that is runnable (or becomes so, preempted)
    /// waits for the GC: `gc`; once the world starts again it waits for the scheduler.
    #[test]
    fn runnable_while_the_world_is_stopped_is_gc() {
        let mut e = go_engine();
        let reqs = feed(
            &mut e,
            [
                run(0),
                on(U, run(0)),
                execute(10, T, G),
                on_conn(20, T, nr::READ, 100),
                execute(30, T, H), // G preempted: runnable
                go(40, U, GoSched::StopTheWorld),
                go(90, U, GoSched::StartTheWorld),
                execute(100, U, G),
                on_conn(110, U, nr::WRITE, 10),
                on_conn(120, U, nr::READ, -11),
            ],
        );
        let r = &reqs[0];
        assert_eq!(r.latency_ns, 90);
        assert_eq!(cause(r, Cause::Gc), 50, "{r:?}");
        assert_eq!(cause(r, Cause::GoRunqueue), 10 + 10, "{r:?}");
        assert_eq!(cause(r, Cause::OnCpu), 10 + 10, "{r:?}");
        assert_sums(r);
    }

    /// G reads a request on T; at 30 the GC stops it to scan its stack (`suspendG`): it
    /// leaves T in `preemptPark`, without `gopark` (`leaves`: T runs another goroutine, or
    /// finds none and sleeps in `stopm`), and stays `_Gpreempted`, then `_Gwaiting`
    /// (`waitReasonPreempted`), in no run queue, until `resumeG` readies it at 80, the scan
    /// done; it runs on U at 90 and answers.
    fn suspended_for_a_stack_scan(leaves: Event) -> Request {
        const GC_WORKER: u64 = 30;
        let events = [
            run(0),
            on(U, run(0)),
            execute(10, T, G),
            on_conn(20, T, nr::READ, 100),
            leaves,
            execute(40, U, GC_WORKER),
            go(
                80,
                U,
                GoSched::Ready {
                    goid: G,
                    waker: Some(GC_WORKER),
                },
            ),
            execute(90, U, G),
            on_conn(100, U, nr::WRITE, 10),
            on_conn(110, U, nr::READ, -11),
        ];
        let r = feed(&mut go_engine(), events).remove(0);
        assert_sums(&r);
        r
    }

    /// A `ready` takes only a waiting goroutine: one readied after it left its thread with
    /// no park was suspended by the GC until then (`gc`), and waits for Go's scheduler only
    /// from the `ready`.
    #[test]
    fn a_stack_scan_suspension_readied_by_the_gc_is_gc() {
        let r = suspended_for_a_stack_scan(execute(30, T, H));
        assert_eq!(r.latency_ns, 80);
        assert_eq!(cause(&r, Cause::Gc), 50, "{r:?}");
        assert_eq!(cause(&r, Cause::GoRunqueue), 10, "{r:?}");
        assert_eq!(cause(&r, Cause::OnCpu), 10 + 10, "{r:?}");
    }

    /// The same, its thread left idle (it sleeps in `stopm`): the `ready` tells G had left
    /// it at the sleep.
    #[test]
    fn a_stack_scan_suspension_while_its_thread_sleeps_is_gc() {
        let r = suspended_for_a_stack_scan(block(30, nr::FUTEX, 0xf00));
        assert_eq!(cause(&r, Cause::Gc), 50, "{r:?}");
        assert_eq!(cause(&r, Cause::GoRunqueue), 10, "{r:?}");
    }

    /// G reads a request on T, the world stops at 30 and G stops running on T for it at 40
    /// (T runs H); then `rest`.
    fn preempted_for_a_stop(rest: impl IntoIterator<Item = Event>) -> Request {
        let events = [
            run(0),
            on(U, run(0)),
            execute(10, T, G),
            on_conn(20, T, nr::READ, 100),
            go(30, U, GoSched::StopTheWorld),
            execute(40, T, H),
        ];
        let r = feed(&mut go_engine(), events.into_iter().chain(rest)).remove(0);
        assert_sums(&r);
        r
    }

    /// A goroutine preempted after the world stopped waits for it to start again.
    #[test]
    fn preempted_for_a_stop_the_world_is_gc() {
        let r = preempted_for_a_stop([
            go(100, U, GoSched::StartTheWorld),
            execute(105, T, G),
            on_conn(110, T, nr::WRITE, 10),
            on_conn(120, T, nr::READ, -11),
        ]);
        assert_eq!(cause(&r, Cause::Gc), 60, "{r:?}");
        assert_eq!(cause(&r, Cause::GoRunqueue), 5, "{r:?}");
    }

    /// G reads a request on T; T sleeps in a futex at `sleep`, G back in Go's run queue; the
    /// world stops at `stop` and starts at 100; G runs on T again at 105 and answers.
    fn left_at_a_sleep_around_a_stop(sleep: u64, stop: u64) -> Request {
        let mut events = vec![
            run(0),
            on(U, run(0)),
            execute(10, T, G),
            on_conn(20, T, nr::READ, 100),
            block(sleep, nr::FUTEX, 0xf00),
            go(stop, U, GoSched::StopTheWorld),
            go(100, U, GoSched::StartTheWorld),
            run(104),
            execute(105, T, G),
            on_conn(110, T, nr::WRITE, 10),
            on_conn(120, T, nr::READ, -11),
        ];
        events.sort_by_key(|e| e.ts);
        let r = feed(&mut go_engine(), events).remove(0);
        assert_sums(&r);
        r
    }

    /// A goroutine preempted for a stop is put back in Go's run queue with no `execute` of
    /// another: its thread sleeps in the runtime (`stopm`) until the world starts, and only
    /// the goroutine's next `execute` tells that it left the thread at the sleep. Its wait
    /// inside the stop is still the GC's.
    #[test]
    fn preempted_for_a_stop_while_its_thread_sleeps_is_gc() {
        let r = left_at_a_sleep_around_a_stop(40, 30);
        assert_eq!(cause(&r, Cause::Gc), 60, "{r:?}");
        assert_eq!(cause(&r, Cause::GoRunqueue), 5, "{r:?}");
    }

    /// The same, its thread's sleep begun before the stop: runnable for Go's scheduler until
    /// the stop, then for the GC.
    #[test]
    fn left_at_a_sleep_before_a_stop_waits_for_the_gc_inside_it() {
        let r = left_at_a_sleep_around_a_stop(25, 30);
        assert_eq!(cause(&r, Cause::Gc), 70, "{r:?}");
        assert_eq!(cause(&r, Cause::GoRunqueue), 10, "{r:?}");
    }

    /// A stop whose restart is among lost records ends at the loss: the goroutines waiting
    /// for it then wait for Go's scheduler, not for the GC until the next stop ends.
    #[test]
    fn a_lost_restart_of_the_world_ends_the_stop_at_the_loss() {
        let r = preempted_for_a_stop([
            Event::lost(50), // the restart among the lost records
            execute(200, T, G),
            on_conn(210, T, nr::WRITE, 10),
            on_conn(220, T, nr::READ, -11),
        ]);
        assert_eq!(cause(&r, Cause::Gc), 10, "{r:?}");
        assert_eq!(cause(&r, Cause::GoRunqueue), 150, "{r:?}");
    }

    /// The goroutine that stops the world (`gcStart`, from an allocation inside its request)
    /// runs `stopTheWorldWithSema` on its own thread, which sleeps in a futex
    /// (`notetsleep(&sched.stopnote)`) until the other Ps have stopped: that wait is the
    /// GC's, not a runtime lock's, and the futex table still lists it with its waker.
    #[test]
    fn the_goroutine_that_stops_the_world_waits_for_it_in_gc() {
        const STOPNOTE: u64 = 0xf00;
        let mut e = go_engine();
        let reqs = feed(
            &mut e,
            [
                run(0),
                on(U, run(0)),
                execute(10, T, G),
                on_conn(20, T, nr::READ, 100),
                go(30, T, GoSched::StopTheWorld),
                block(31, nr::FUTEX, STOPNOTE), // until the other P stops
                run_woken(85, 80),
                go(90, T, GoSched::StartTheWorld),
                block(95, nr::FUTEX, 0xf08), // a runtime lock, once the world runs again
                run_woken(100, 100),
                on_conn(110, T, nr::WRITE, 10),
                on_conn(120, T, nr::READ, -11),
            ],
        );
        let r = &reqs[0];
        assert_eq!(r.latency_ns, 90, "{r:?}");
        assert_eq!(cause(r, Cause::Gc), 80 - 31, "{r:?}");
        assert_eq!(cause(r, Cause::Lock), 100 - 95, "{r:?}");
        assert_eq!(cause(r, Cause::Runqueue), 5, "{r:?}");
        assert_eq!(cause(r, Cause::OnCpu), 11 + 10 + 10, "{r:?}");
        assert_sums(r);
        let (address, stopnote) = e.locks.top(1)[0];
        assert_eq!(address, STOPNOTE);
        assert_eq!((stopnote.waits, stopnote.wakers.top(10).0.len()), (1, 1));
    }

    /// After lost records, the goroutine a thread runs is not known until its next
    /// `execute`: a request read on the thread meanwhile is timed on the thread (its other
    /// goroutines' time included), so it is marked incomplete; one read after the thread's
    /// next `execute` is the goroutine's again, and complete.
    #[test]
    fn a_request_read_before_its_threads_execute_after_a_loss_is_incomplete() {
        let mut e = go_engine();
        let reqs = feed(
            &mut e,
            [
                run(0),
                on(U, run(0)),
                execute(10, T, G),
                Event::lost(15),
                on_conn(20, T, nr::READ, 100), // G's, unknown
                park(30, T, G, CHAN),
                ready(80, G),
                execute(90, T, G),
                on_conn(100, T, nr::WRITE, 10),
                on_conn(110, T, nr::READ, 100), // the next request, G's again
                on_conn(150, T, nr::WRITE, 10),
                on_conn(160, T, nr::READ, -11),
            ],
        );
        assert_eq!(reqs.len(), 2, "{reqs:?}");
        assert!(reqs[0].incomplete, "{:?}", reqs[0]);
        assert_eq!(reqs[0].ctx, ExecCtx::Thread(Tid(T)));
        assert!(!reqs[1].incomplete, "{:?}", reqs[1]);
        assert_eq!(reqs[1].ctx, ExecCtx::Goroutine(GoroutineId(G)));
    }

    /// A thread that never ran a goroutine (a cgo or C library thread of a Go target) is
    /// no goroutine's: its requests after a loss are complete.
    #[test]
    fn a_request_of_a_thread_that_runs_no_goroutine_is_complete_after_a_loss() {
        let mut e = go_engine();
        let reqs = feed(
            &mut e,
            [
                run(0),
                on(U, run(0)),
                execute(10, T, G),
                Event::lost(15),
                on_conn(20, U, nr::READ, 100),
                on_conn(30, U, nr::WRITE, 10),
                on_conn(40, U, nr::READ, -11),
            ],
        );
        assert_eq!(reqs.len(), 1, "{reqs:?}");
        assert!(!reqs[0].incomplete, "{:?}", reqs[0]);
        assert_eq!(reqs[0].ctx, ExecCtx::Thread(Tid(U)));
    }

    /// A park whose wakeup and next run are among lost records: the goroutine's next park
    /// is a new one (its own wait reason, from then), not the park probe firing again as
    /// after a morestack re-entry, which is still one park.
    #[test]
    fn a_park_after_lost_records_is_a_new_park() {
        let mut e = go_engine();
        feed(
            &mut e,
            [
                run(0),
                on(U, run(0)),
                execute(10, T, G),
                park(20, T, G, CHAN),
                Event::lost(30), // G's wakeup and run
                park(50, T, G, LOCK),
                park(51, T, G, LOCK), // the probe again (morestack): the same park
                ready(150, G),
                execute(150, T, G),
            ],
        );
        let parked: std::collections::HashMap<String, u64> = e.go_parked_by_reason().collect();
        assert_eq!(parked["chan receive"], 30, "{parked:?}");
        assert_eq!(parked["sync.Mutex.Lock"], 100, "{parked:?}");
    }

    /// A goroutine allocating while the GC runs parks on one of the GC's own semaphores
    /// (taken in gcStart, gcMarkDone...), with the wait reason a sync.Mutex had before Go
    /// 1.20: it waits for the GC, and it is no lock of the target's.
    #[test]
    fn a_wait_on_the_gcs_own_semaphore_is_gc() {
        let mut e = go_engine();
        let gc_start = 0x40_1000..0x40_2000;
        e.set_go_gc_callers([gc_start].to_vec());
        let reqs = feed(
            &mut e,
            [
                run(0),
                on(U, run(0)),
                execute(10, T, G),
                on_conn(20, T, nr::READ, 100),
                go(
                    30,
                    T,
                    GoSched::Semacquire {
                        goid: G,
                        address: 0x88_0000,
                        caller: 0x40_1234, // in gcStart
                    },
                ),
                park(31, T, G, LOCK),
                ready_by(131, U, G, H),
                execute(131, T, G),
                on_conn(140, T, nr::WRITE, 10),
                on_conn(150, T, nr::READ, -11),
            ],
        );
        let r = &reqs[0];
        assert_eq!(cause(r, Cause::Gc), 100, "{r:?}");
        assert_eq!(cause(r, Cause::Lock), 0, "{r:?}");
        assert!(e.go_locks.top(1).is_empty());
        assert_sums(r);
    }

    /// The goroutine that readies a lock waiter released that semaphore just before: its
    /// release site is the waiting site's unlocker.
    #[test]
    fn the_unlockers_site_is_kept_for_the_waiting_site() {
        let mut e = go_engine();
        let waiting = StackRef {
            id: 1,
            caller: 0x10,
        };
        let unlocking = StackRef {
            id: 2,
            caller: 0x20,
        };
        feed(
            &mut e,
            [
                run(0),
                on(U, run(0)),
                execute(10, T, G),
                execute(10, U, H),
                semacquire(20, T, G, SEMA),
                go(
                    21,
                    T,
                    GoSched::Park {
                        goid: G,
                        reason: LOCK,
                        request_body: false,
                        stack: Some(waiting),
                    },
                ),
                go(
                    120,
                    U,
                    GoSched::Semrelease {
                        goid: H,
                        address: SEMA,
                        stack: Some(unlocking),
                    },
                ),
                ready_by(121, U, G, H),
            ],
        );
        let wakers = e.wait_sites.wakers_of(waiting, 3);
        assert_eq!(wakers.len(), 1);
        assert_eq!(wakers[0].0, unlocking);
    }
}

/// The kernel side sends a wakeup with the switch-in it leads to: the engine gets it late,
/// after other threads' events, and must apply it at its own time.
mod wakeup_reported_by_the_switch_in {
    use super::*;

    #[test]
    fn starts_the_request_of_a_blocked_read_at_its_own_time() {
        let mut e = engine();
        let reqs = feed(
            &mut e,
            [
                block(0, nr::READ, CONN as u64),
                run_woken(1040, 1000),
                read(1050, CONN, 80),
                write(1100, CONN),
                block(1200, nr::READ, CONN as u64),
            ],
        );
        let r = &reqs[0];
        assert_eq!((r.start_ns, r.latency_ns), (1000, 100));
        assert_eq!(cause(r, Cause::Runqueue), 40);
        assert_eq!(cause(r, Cause::NetIo), 0);
        assert_sums(r);
    }

    #[test]
    fn ends_a_futex_wait_and_names_the_waker() {
        let mut e = engine();
        let reqs = feed(
            &mut e,
            [
                read(100, CONN, 50),
                block(200, nr::FUTEX, 0xf00),
                run_woken(600, 500),
                write(700, CONN),
                read(800, CONN, 5),
            ],
        );
        let r = &reqs[0];
        assert_eq!(cause(r, Cause::Lock), 300);
        assert_eq!(cause(r, Cause::Runqueue), 100);
        assert_eq!(cause(r, Cause::OnCpu), 200);
        assert_sums(r);
        let lock = e.locks.get(0xf00).expect("the futex is listed");
        assert_eq!(lock.wakers.get(&waker(200)).map(|t| t.count), Some(1));
        assert_eq!(e.take_waits(), vec![Wait::Runqueue(100), Wait::Futex(400)]);
    }

    #[test]
    fn that_came_before_the_switch_out_is_not_a_block() {
        let mut e = engine();
        let reqs = feed(
            &mut e,
            [
                read(0, CONN, 5),
                // Woken at 100, while still on the CPU, on its way to sleep on a futex.
                block(120, nr::FUTEX, 0xabc),
                run_woken(200, 100),
                write(300, CONN),
                read(400, CONN, 5),
            ],
        );
        let r = &reqs[0];
        assert_eq!(cause(r, Cause::Lock), 0);
        assert_eq!(cause(r, Cause::Runqueue), 80);
        assert_eq!(cause(r, Cause::OnCpu), 220);
        assert_sums(r);
        assert_eq!(e.take_waits(), vec![Wait::Runqueue(80)], "no futex wait");
    }

    #[test]
    fn older_than_the_block_is_not_its_end() {
        let mut e = engine();
        let reqs = feed(
            &mut e,
            [
                read(0, CONN, 5),
                block(1_000_000, nr::FUTEX, 0xabc),
                run_woken(3_000_000, 10), // a wakeup that came while it ran, long before
                write(3_000_100, CONN),
                read(3_000_200, CONN, 5),
            ],
        );
        let r = &reqs[0];
        assert_eq!(cause(r, Cause::Lock), 2_000_000);
        assert_eq!(cause(r, Cause::Runqueue), 0);
        assert_sums(r);
    }

    #[test]
    fn after_a_preemption_changes_nothing() {
        let mut e = engine();
        let reqs = feed(
            &mut e,
            [
                read(0, CONN, 5),
                Event::new(
                    100,
                    Tid(T),
                    EventKind::SwitchOut {
                        run_delay: None,
                        state: PREEMPT_STATE_BIT,
                        syscall: None,
                        stack: None,
                        cpu_steal: None,
                    },
                ),
                run_woken(300, 50), // woken while it ran: it was runnable all along
                write(400, CONN),
                read(500, CONN, 5),
            ],
        );
        let r = &reqs[0];
        assert_eq!(cause(r, Cause::Runqueue), 200);
        assert_eq!(cause(r, Cause::OnCpu), 200);
        assert_sums(r);
    }

    /// A thread's futex wait inside a request, ended by a thread whose futex wake took its
    /// stack: that stack is the waiting site's unlocker; a wait on a socket, woken the same
    /// way, keeps none.
    #[test]
    fn a_threads_unlocker_site_is_kept_for_its_lock_wait() {
        let mut e = engine();
        let waiting = StackRef { id: 1, caller: 0 };
        let unlocking = StackRef { id: 2, caller: 0 };
        let at_socket = StackRef { id: 3, caller: 0 };
        feed(
            &mut e,
            [
                run(0),
                read(10, CONN, 100),
                block_at(20, nr::FUTEX, 0x1000, waiting),
                run_woken_by(120, 110, Some(unlocking)),
                block_at(130, nr::READ, 9, at_socket),
                run_woken_by(220, 210, Some(unlocking)),
                write(230, CONN),
            ],
        );
        let wakers = e.wait_sites.wakers_of(waiting, 3);
        assert_eq!(wakers.len(), 1, "{wakers:?}");
        assert_eq!(wakers[0].0, unlocking);
        assert!(e.wait_sites.wakers_of(at_socket, 3).is_empty());
    }
}

thread_local! {
    /// What each fd is now, for [`FdsNow`] (`None`: not open).
    static FDS_NOW: std::cell::RefCell<std::collections::HashMap<u32, Option<FdKind>>> =
        Default::default();
    /// The inode of each socket fd now, for [`FdsNow`].
    static INODES_NOW: std::cell::RefCell<std::collections::HashMap<u32, u64>> =
        Default::default();
    /// How many times [`FdsNow`] was asked again about an fd.
    static RECHECKS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// `fd` is `kind` now (`None`: closed), as /proc would say.
fn fd_now(fd: u32, kind: Option<FdKind>) {
    FDS_NOW.with(|f| f.borrow_mut().insert(fd, kind));
}

/// A resolver that says what each fd is at the time it is asked (fds close and their numbers
/// are reused), and counts the rechecks.
struct FdsNow;
impl FdResolver for FdsNow {
    fn resolve(&mut self, fd: u32) -> FdKind {
        FDS_NOW.with(|f| {
            f.borrow()
                .get(&fd)
                .copied()
                .flatten()
                .unwrap_or(FdKind::Other)
        })
    }
    fn is_socket_inode(&mut self, fd: u32, inode: u64) -> Option<bool> {
        FDS_NOW.with(|f| f.borrow().get(&fd).copied().flatten())?;
        Some(INODES_NOW.with(|i| i.borrow().get(&fd) == Some(&inode)))
    }
    fn recheck(&mut self, fd: u32) -> Option<FdKind> {
        RECHECKS.with(|r| r.set(r.get() + 1));
        FDS_NOW.with(|f| f.borrow().get(&fd).copied().flatten())
    }
}

fn engine_now() -> Engine<FdsNow> {
    let mut e = Engine::new(FdsNow);
    e.set_fd_kind(CONN, FdKind::Connection);
    e
}

/// fds are numbered lowest free first: a connection's number comes back as a file. A
/// blocking read of that file is disk_io, not net_io as the connection it held, and the
/// connection, closed unseen, is over.
#[test]
fn a_file_read_on_a_closed_connections_fd_number_is_disk_io() {
    const OLD: u32 = 12;
    let mut e = engine_now();
    let reqs = feed(&mut e, [read(0, OLD, 5), write(10, OLD), read(20, OLD, 5)]);
    assert_eq!(reqs.len(), 1);
    // Its second request is answered, then the connection is closed (unseen) and its
    // number opened again as a file.
    feed(&mut e, [write(30, OLD)]);
    fd_now(OLD, Some(FdKind::File));
    let reqs = feed(
        &mut e,
        [
            read(100, CONN, 5),
            block_in(110, nr::READ, OLD as u64, D),
            wake(610),
            run(610),
            write(620, CONN),
            read(700, CONN, 5),
        ],
    );
    let on_conn: Vec<_> = reqs.iter().filter(|r| r.fd == Some(CONN)).collect();
    assert_eq!(on_conn.len(), 1, "{reqs:?}");
    assert_eq!(cause(on_conn[0], Cause::DiskIo), 500, "{:?}", on_conn[0]);
    assert_eq!(cause(on_conn[0], Cause::NetIo), 0);
    assert_sums(on_conn[0]);
    let on_old: Vec<_> = reqs.iter().filter(|r| r.fd == Some(OLD)).collect();
    assert_eq!(
        on_old.len(),
        1,
        "the closed connection's request is over: {reqs:?}"
    );
    assert_eq!(on_old[0].latency_ns, 10);
}

/// An fd first looked up after its close (a file read, then closed before the collector got
/// to its block) is `other`; when its number is a file again, its blocking reads are disk_io.
#[test]
fn an_fd_first_looked_up_after_its_close_is_asked_again() {
    const LATER: u32 = 13;
    let mut e = engine_now();
    fd_now(LATER, None);
    let reqs = feed(
        &mut e,
        [
            read(0, CONN, 5),
            block_in(10, nr::READ, LATER as u64, D),
            wake(60),
            run(60),
            write(70, CONN),
        ],
    );
    assert!(reqs.is_empty());
    fd_now(LATER, Some(FdKind::File));
    let reqs = feed(
        &mut e,
        [
            read(100, CONN, 5),
            block_in(110, nr::READ, LATER as u64, D),
            wake(310),
            run(310),
            write(320, CONN),
            read(400, CONN, 5),
        ],
    );
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        cause(&reqs[0], Cause::Other),
        50,
        "unknowable: closed when looked up"
    );
    assert_eq!(cause(&reqs[1], Cause::DiskIo), 200, "{:?}", reqs[1]);
}

/// The cost: a socket's, a file's and a pipe's usual blocks ask /proc nothing; a block that
/// does not fit its fd's kind asks once, and a socket still a socket keeps its connection.
#[test]
fn only_blocks_that_do_not_fit_their_fds_kind_ask_again() {
    const PIPE: u32 = 14;
    let mut e = engine_now();
    fd_now(BACKEND, Some(FdKind::Socket));
    fd_now(FILE, Some(FdKind::File));
    fd_now(PIPE, Some(FdKind::Other));
    fd_now(CONN, Some(FdKind::Socket));
    let reqs = feed(
        &mut e,
        [
            read(0, CONN, 5),
            write(5, BACKEND),
            block_in(10, nr::READ, BACKEND as u64, S),
            wake(20),
            run(20),
            read(25, BACKEND, 5),
            block_in(30, nr::READ, FILE as u64, D),
            wake(40),
            run(40),
            block_in(50, nr::READ, FILE as u64, D),
            wake(60),
            run(60),
            block_in(70, nr::READ, PIPE as u64, S),
            wake(80),
            run(80),
            block_in(90, nr::READ, PIPE as u64, S),
            wake(100),
            run(100),
        ],
    );
    assert!(reqs.is_empty());
    assert_eq!(
        RECHECKS.with(|r| r.get()),
        0,
        "the first lookup resolves; the rest fit"
    );
    // The connection's own reader waits for its socket's lock (uninterruptible).
    let reqs = feed(
        &mut e,
        [
            block_in(110, nr::WRITE, CONN as u64, D),
            wake(160),
            run(160),
            write(170, CONN),
            read(200, CONN, 5),
        ],
    );
    assert_eq!(RECHECKS.with(|r| r.get()), 1);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(cause(&reqs[0], Cause::NetIo), 60, "{:?}", reqs[0]);
    assert_eq!(cause(&reqs[0], Cause::DiskIo), 20);
    assert_eq!(cause(&reqs[0], Cause::Other), 20);
    assert_eq!(
        e.open_requests(),
        1,
        "the connection's next request is open"
    );
}

/// A read or write of `fd` on a socket the kernel side did not see open (a Unix or UDP
/// socket, or a TCP socket open before the tracer attached): no origin, and the socket's
/// address as its identity.
fn unplaced_io(ts: u64, nr: u32, fd: u32, ret: i64) -> Event {
    Event::new(
        ts,
        Tid(T),
        EventKind::Syscall(SyscallReturn {
            nr,
            fd,
            ret,
            connection: 0xffff_8880_0000_0000 | u64::from(fd),
            origin: SocketOrigin::Unknown,
            tls_record: 0,
        }),
    )
}

/// A connection found open at attach time, closed before any read or write of it was seen
/// (a keep-alive timeout), its number reused by a Unix socket to a backend: that socket's
/// reads are the backend's answers, not requests. A connection found open that is still
/// the same socket at its first read serves requests as before.
#[test]
fn a_connection_found_at_attach_and_closed_unseen_leaves_no_connection_behind() {
    const IDLE: u32 = 20; // closed by the server's keep-alive timeout, unseen
    const BUSY: u32 = 21; // still open, its next request read after attach
    let mut e = engine_now();
    e.seed_connection(IDLE, 5001);
    e.seed_connection(BUSY, 5002);
    fd_now(IDLE, Some(FdKind::Socket));
    INODES_NOW.with(|i| i.borrow_mut().insert(IDLE, 6001)); // the backend's Unix socket
    fd_now(BUSY, Some(FdKind::Socket));
    INODES_NOW.with(|i| i.borrow_mut().insert(BUSY, 5002));
    let reqs = feed(
        &mut e,
        [
            read(0, CONN, 5),
            unplaced_io(10, nr::WRITE, IDLE, 40), // asks the backend
            unplaced_io(50, nr::READ, IDLE, 80),  // its answer
            write(60, CONN),
            unplaced_io(100, nr::READ, BUSY, 5), // a request on the connection still open
            unplaced_io(150, nr::WRITE, BUSY, 10),
            read(200, CONN, 5),
            unplaced_io(210, nr::WRITE, IDLE, 40),
            unplaced_io(250, nr::READ, IDLE, 80),
            write(260, CONN),
        ],
    );
    e.finish_all();
    let reqs: Vec<_> = reqs.into_iter().chain(e.take_requests()).collect();
    let on = |fd| reqs.iter().filter(|r| r.fd == Some(fd)).count();
    assert_eq!(
        on(IDLE),
        0,
        "the backend's answers are no requests: {reqs:?}"
    );
    assert_eq!(on(BUSY), 1, "{reqs:?}");
    assert_eq!(on(CONN), 2, "{reqs:?}");
    assert_eq!(e.aborted(), 0);
}
