//! Ring-buffer records to engine events, and a small reorder window: the ring buffer is shared
//! by all CPUs, so records from different CPUs can arrive slightly out of timestamp order, and
//! a socket read held back on its CPU to pair with its thread's next write (tracer-ebpf's
//! `held_read.rs`) arrives with that write, after the records other programs emitted meanwhile.

use std::{collections::VecDeque, mem::size_of};

use tracer_common::{
    go_sched, nr, tls, waker_context, EventHeader, GoSchedEvent, StretchHandedOver,
    StretchHandover, StretchRequest, StretchRequestBatch, SwitchEvent, SyscallEvent,
    SyscallPairBatch, SyscallPairEvent, ThreadEvent, TlsEvent, WakerId, WakeupEvent, NO_SYSCALL,
    STRETCH_BATCH, STRETCH_SLOTS,
};

use crate::engine::{
    event::GoSched, sites::StackRef, Event, EventKind, GoProbe, GoroutineId, InSyscall, Interrupt,
    SocketOrigin, SslCall, SyscallReturn, Tid, Waker, Woken,
};

fn waker(w: &WakerId) -> Waker {
    match w.context {
        // The softirq daemon runs softirqs in task context, on its own stack.
        waker_context::TASK if w.pid == w.tid && w.comm.starts_with(b"ksoftirqd/") => {
            Waker::Interrupt(Interrupt::Softirq)
        }
        waker_context::TASK => Waker::Thread {
            tid: w.tid,
            pid: w.pid,
            comm: w.comm,
        },
        waker_context::HARDIRQ => Waker::Interrupt(Interrupt::Hardirq(w.detail)),
        waker_context::SOFTIRQ => Waker::Interrupt(Interrupt::Softirq),
        waker_context::TIMER => Waker::Interrupt(Interrupt::Timer),
        _ => Waker::Unknown,
    }
}

/// The stack a task waker took at its futex wake, if any.
fn unlocker(w: &WakerId) -> Option<StackRef> {
    match w.context {
        waker_context::TASK => stack_ref(w.stack_id, 0),
        _ => None,
    }
}

/// The engine's view of a TLS probe: an OpenSSL call on an `SSL*`, or Go's handshake on a
/// goroutine (`handle` is the `SSL*` or the goroutine's `runtime.g`). `None`: an unknown kind.
fn tls_kind(handle: u64, what: u32, ret: i64) -> Option<EventKind> {
    let ssl = |call| Some(EventKind::OpenSsl { ssl: handle, call });
    let go = |probe| {
        Some(EventKind::GoHandshake {
            g: GoroutineId(handle),
            probe,
        })
    };
    match what {
        tls::HANDSHAKE_ENTER => ssl(SslCall::Handshake),
        tls::READ_ENTER => ssl(SslCall::Read),
        tls::WRITE_ENTER => ssl(SslCall::Write),
        tls::RETURN => ssl(SslCall::Return { ret }),
        tls::FREE => ssl(SslCall::Free),
        tls::GO_SERVER_ENTER | tls::GO_CLIENT_ENTER => go(GoProbe::Enter),
        tls::GO_RETURN => go(GoProbe::Return { error: ret }),
        _ => None,
    }
}

/// The engine's view of a Go scheduler probe. `None`: an unknown kind.
fn go_sched_kind(e: &GoSchedEvent) -> Option<GoSched> {
    let goid = e.goid;
    Some(match e.what {
        go_sched::PARK => GoSched::Park {
            goid,
            // A waitReason is a uint8; the kernel side keeps the register's low byte.
            reason: e.detail as u8,
            request_body: e.detail & go_sched::PARK_REQUEST_BODY != 0,
            stack: stack_ref(e.stack_id, e.caller),
        },
        go_sched::READY => GoSched::Ready {
            goid,
            // No goroutine has id 0 (g0 and the other system goroutines' ids are 0).
            waker: (e.detail != 0 && e.detail != go_sched::WAKER_UNREADABLE).then_some(e.detail),
        },
        go_sched::EXECUTE => GoSched::Execute { goid },
        go_sched::EXIT => GoSched::Exit { goid },
        go_sched::SEMACQUIRE => GoSched::Semacquire {
            goid,
            address: e.detail,
            caller: e.caller,
        },
        go_sched::SEMRELEASE => GoSched::Semrelease {
            goid,
            address: e.detail,
            stack: stack_ref(e.stack_id, e.caller),
        },
        go_sched::HTTP2_CONNECTION => GoSched::Http2Connection { goid },
        go_sched::HTTP2_HANDLER => GoSched::Http2Handler { goid },
        go_sched::STOP_THE_WORLD => GoSched::StopTheWorld,
        go_sched::START_THE_WORLD => GoSched::StartTheWorld,
        _ => return None,
    })
}

/// A stack id from the kernel (negative: none), with the return address the walk missed.
fn stack_ref(id: i32, caller: u64) -> Option<StackRef> {
    u32::try_from(id).ok().map(|id| StackRef { id, caller })
}

/// Where decoded events go: straight into the reorder window, or a list (tests).
pub trait EventSink {
    fn push(&mut self, event: Event);
}

impl EventSink for Vec<Event> {
    fn push(&mut self, event: Event) {
        Vec::push(self, event);
    }
}

impl EventSink for Reorder {
    fn push(&mut self, event: Event) {
        Reorder::push(self, event);
    }
}

/// What a record was.
#[derive(Debug)]
// Returned by value once per record and matched at once: no allocation is the point.
#[allow(clippy::large_enum_variant)]
pub enum Decoded {
    /// Events, pushed to the sink.
    Events,
    /// Requests the kernel side delimited and timed itself: no events, for the
    /// collector's aggregates (its `requests()`). Held whole, not in a `Vec`: a saturated
    /// event loop sends thousands of these a second, and the allocations showed in perf.
    StretchRequests(StretchRequestBatch),
}

/// Decode one record into engine events (a switch between two target threads is a switch-out
/// and a switch-in; a batch holds many), or requests. `None` when the record is malformed.
pub fn decode(bytes: &[u8], out: &mut impl EventSink) -> Option<Decoded> {
    let hdr: EventHeader = read(bytes)?;
    let (ts, tid) = (hdr.ts_ns, Tid(hdr.tid));
    match tracer_common::EventKind::from_u32(hdr.kind)? {
        tracer_common::EventKind::Switch => {
            let e: SwitchEvent = read(bytes)?;
            let cpu_steal = (e.cpu_steal_ns != 0).then_some(e.cpu_steal_ns);
            if e.hdr.tid != 0 {
                let syscall = (e.syscall_nr != NO_SYSCALL).then_some(InSyscall {
                    nr: e.syscall_nr,
                    arg0: e.syscall_arg0,
                });
                let state = e.prev_state;
                let stack = stack_ref(e.stack_id, 0);
                out.push(Event::new(
                    ts,
                    tid,
                    EventKind::SwitchOut {
                        state,
                        syscall,
                        stack,
                        cpu_steal,
                        run_delay: (e.run_delay_ns != 0).then_some(e.run_delay_ns),
                    },
                ));
            }
            if e.next_tid != 0 {
                out.push(Event::new(
                    ts,
                    Tid(e.next_tid),
                    EventKind::SwitchIn {
                        cpu_steal,
                        woken: (e.woken_at_ns != 0).then(|| Woken {
                            at: e.woken_at_ns,
                            waker: waker(&e.waker),
                            unlocker: unlocker(&e.waker),
                        }),
                        run_delay: (e.next_run_delay_ns != 0).then_some(e.next_run_delay_ns),
                    },
                ));
            }
        }
        tracer_common::EventKind::Wakeup => {
            let e: WakeupEvent = read(bytes)?;
            let waker = waker(&e.waker);
            out.push(Event::new(ts, tid, EventKind::Wakeup { waker }));
        }
        tracer_common::EventKind::Syscall => {
            let e: SyscallEvent = read(bytes)?;
            out.push(syscall_event(&e));
        }
        tracer_common::EventKind::SyscallPair => {
            let e: SyscallPairEvent = read(bytes)?;
            push_pair(&e, out);
        }
        tracer_common::EventKind::SyscallPairBatch => {
            let e: SyscallPairBatch = read(bytes)?;
            decode_pair_batch(&e, out);
        }
        tracer_common::EventKind::ThreadNew => {
            out.push(Event::new(ts, tid, EventKind::ThreadNew));
        }
        tracer_common::EventKind::Tls => {
            let e: TlsEvent = read(bytes)?;
            out.push(Event::new(ts, tid, tls_kind(e.handle, e.what, e.ret)?));
        }
        tracer_common::EventKind::GoSched => {
            let e: GoSchedEvent = read(bytes)?;
            out.push(Event::new(ts, tid, EventKind::Go(go_sched_kind(&e)?)));
        }
        tracer_common::EventKind::ThreadExit => {
            let e: ThreadEvent = read(bytes)?;
            let comm = comm(&e.comm);
            out.push(Event::new(ts, tid, EventKind::ThreadExit { comm }));
        }
        tracer_common::EventKind::StretchRequestBatch => {
            return stretch_request_batch(bytes).map(Decoded::StretchRequests);
        }
        tracer_common::EventKind::StretchHandover => {
            let (count, items) = counted_head(bytes, STRETCH_HANDOVER_HEAD, STRETCH_SLOTS)?;
            for i in 0..count {
                let request: StretchHandedOver =
                    read(items.get(i * size_of::<StretchHandedOver>()..)?)?;
                // 0: a listed connection no longer kept by the thread's stretch.
                if request.start_ns != 0 {
                    push_handed_over(tid, &request, out);
                }
            }
        }
        tracer_common::EventKind::StretchTakesConnection => {
            let e: SyscallEvent = read(bytes)?;
            let (fd, connection) = (e.fd, e.connection);
            out.push(Event::new(
                ts,
                tid,
                EventKind::StretchTakesConnection { fd, connection },
            ));
        }
    }
    Some(Decoded::Events)
}

/// The bytes of a [`StretchHandover`] before its requests: the record is as long as the
/// requests it holds.
const STRETCH_HANDOVER_HEAD: usize =
    size_of::<StretchHandover>() - STRETCH_SLOTS * size_of::<StretchHandedOver>();
/// The same for a [`StretchRequestBatch`].
const STRETCH_BATCH_HEAD: usize =
    size_of::<StretchRequestBatch>() - STRETCH_BATCH * size_of::<StretchRequest>();

/// A record of `head` bytes, whose first u32 after the event header is a count of at most
/// `max` items, then as many items: the count and the items' bytes (the items must all be
/// there).
fn counted_head(bytes: &[u8], head: usize, max: usize) -> Option<(usize, &[u8])> {
    let count: u32 = read(bytes.get(size_of::<EventHeader>()..)?)?;
    let count = (count as usize).min(max);
    Some((count, bytes.get(head..)?))
}

/// A [`StretchRequestBatch`] record (as long as its requests), whole.
fn stretch_request_batch(bytes: &[u8]) -> Option<StretchRequestBatch> {
    let (count, items) = counted_head(bytes, STRETCH_BATCH_HEAD, STRETCH_BATCH)?;
    let mut batch = StretchRequestBatch {
        count: count as u32,
        ..Default::default()
    };
    for (i, request) in batch.requests[..count].iter_mut().enumerate() {
        *request = read(items.get(i * size_of::<StretchRequest>()..)?)?;
    }
    Some(batch)
}

/// The requests still kept in the kernel when the programs were detached (thread, request),
/// read from their map, as the events a handover carries.
pub fn decode_kept(kept: &[(u32, StretchHandedOver)], out: &mut impl EventSink) {
    for (tid, request) in kept {
        push_handed_over(Tid(*tid), request, out);
    }
}

/// A request kept in the kernel, handed over: the read that started it and its last write so
/// far, as the collector would have had them.
fn push_handed_over(tid: Tid, request: &StretchHandedOver, out: &mut impl EventSink) {
    let sys = |nr, ret: i32| SyscallReturn {
        nr,
        fd: request.fd,
        ret: i64::from(ret),
        connection: request.connection,
        origin: SocketOrigin::TcpServer,
        tls_record: 0,
    };
    out.push(Event::new(
        request.start_ns,
        tid,
        EventKind::HandedOverRead {
            read: sys(nr::READ, request.read_ret),
            woken: request.woken != 0,
        },
    ));
    if request.last_write_ns != 0 {
        out.push(Event::new(
            request.last_write_ns,
            tid,
            EventKind::Syscall(sys(nr::WRITE, request.write_ret)),
        ));
    }
}

/// The pairs a CPU gathered: from the ring, or from the map once detached.
pub fn decode_pair_batch(batch: &SyscallPairBatch, out: &mut impl EventSink) {
    for pair in batch.pairs() {
        push_pair(pair, out);
    }
}

fn push_pair(pair: &SyscallPairEvent, out: &mut impl EventSink) {
    out.push(syscall_event(&pair.read));
    out.push(syscall_event(&pair.write));
}

/// A socket read or write, alone or one of a pair.
fn syscall_event(e: &SyscallEvent) -> Event {
    let sys = SyscallReturn {
        nr: e.nr,
        fd: e.fd,
        ret: e.ret,
        connection: e.connection,
        origin: SocketOrigin::from_kernel(e.origin),
        tls_record: e.tls_record,
    };
    Event::new(e.hdr.ts_ns, Tid(e.hdr.tid), EventKind::Syscall(sys))
}

fn read<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: T is a plain-old-data record and `bytes` holds at least size_of::<T>() bytes.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn comm(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn event_ts(e: &Event) -> u64 {
    e.ts
}

/// How far back from the newest held event a late one's place is looked for one by one
/// before a binary search.
const LATE_LINEAR_SEARCH: usize = 16;

/// Holds events back until no earlier one can still arrive, then releases them in
/// timestamp order (ties in arrival order). Records arrive nearly sorted, so each event is
/// put in its place as it arrives: almost always at the end, a late one a few places back
/// (looked for one by one), rarely far back (by binary search). Sorting the held events on
/// each release instead cost a fifth of the collector's time on a busy target.
pub struct Reorder {
    window_ns: u64,
    /// The held events, in timestamp order.
    pending: VecDeque<Event>,
    newest: u64,
}

impl Reorder {
    pub fn new(window_ns: u64) -> Self {
        Reorder {
            window_ns,
            pending: VecDeque::new(),
            newest: 0,
        }
    }

    pub fn push(&mut self, event: Event) {
        let ts = event_ts(&event);
        self.newest = self.newest.max(ts);
        // After every held event not later than it: ties stay in arrival order. Out of
        // order, a record is usually a few places late (two CPUs' records interleave in the
        // ring), rarely many (a held socket read).
        if self.pending.back().is_none_or(|last| event_ts(last) <= ts) {
            self.pending.push_back(event); // in order: almost every record
            return;
        }
        let held = self.pending.len();
        let nearby = held.saturating_sub(LATE_LINEAR_SEARCH);
        let place = match (nearby..held)
            .rev()
            .find(|&i| event_ts(&self.pending[i]) <= ts)
        {
            Some(before) => before + 1,
            None if nearby == 0 => 0,
            None => self.pending.partition_point(|e| event_ts(e) <= ts),
        };
        self.pending.insert(place, event);
    }

    /// Release the events older than the window (all of them with `all`).
    pub fn release(&mut self, all: bool, sink: impl FnMut(Event)) {
        let horizon = self.newest.saturating_sub(self.window_ns);
        let ready = if all {
            self.pending.len()
        } else {
            self.pending.partition_point(|e| event_ts(e) <= horizon)
        };
        self.pending.drain(..ready).for_each(sink);
    }

    pub fn newest(&self) -> u64 {
        self.newest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T>(v: &T) -> Vec<u8> {
        let p = (v as *const T).cast::<u8>();
        unsafe { std::slice::from_raw_parts(p, std::mem::size_of::<T>()) }.to_vec()
    }

    /// Target thread 10 blocks, and target thread 11 gets its CPU, at 5.
    fn blocked_10_to_11() -> SwitchEvent {
        SwitchEvent {
            hdr: EventHeader {
                ts_ns: 5,
                kind: tracer_common::EventKind::Switch as u32,
                tid: 10,
            },
            next_tid: 11,
            prev_state: 1,
            ..Default::default()
        }
    }

    /// A handover from one target thread that blocks to another whose wakeup was not seen:
    /// each side carries its own thread's total wait for a CPU.
    #[test]
    fn a_handover_carries_each_threads_run_delay() {
        let rec = SwitchEvent {
            syscall_nr: 230,
            stack_id: tracer_common::NO_STACK,
            run_delay_ns: 9_000,
            next_run_delay_ns: 12_000,
            ..blocked_10_to_11()
        };
        let mut out = Vec::new();
        decode(&bytes(&rec), &mut out).unwrap();
        let run_delays: Vec<_> = out
            .iter()
            .map(|e| match e.kind {
                EventKind::SwitchOut { run_delay, .. } => (e.tid, run_delay),
                EventKind::SwitchIn { run_delay, .. } => (e.tid, run_delay),
                _ => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(
            run_delays,
            vec![(Tid(10), Some(9_000)), (Tid(11), Some(12_000))]
        );
    }

    #[test]
    fn switch_between_two_target_threads_is_two_events() {
        let rec = SwitchEvent {
            syscall_nr: 202,
            stack_id: 3,
            syscall_arg0: 0xabc,
            cpu_steal_ns: 7_000,
            woken_at_ns: 4,
            waker: WakerId {
                tid: 12,
                pid: 12,
                context: waker_context::TASK,
                detail: 0,
                comm: *b"unlocker\0\0\0\0\0\0\0\0",
                stack_id: 8,
                _pad: 0,
            },
            run_delay_ns: 9_000,
            ..blocked_10_to_11()
        };
        let mut out = Vec::new();
        decode(&bytes(&rec), &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                Event::new(
                    5,
                    Tid(10),
                    EventKind::SwitchOut {
                        run_delay: Some(9_000),
                        state: 1,
                        syscall: Some(InSyscall {
                            nr: 202,
                            arg0: 0xabc
                        }),
                        stack: Some(StackRef { id: 3, caller: 0 }),
                        cpu_steal: Some(7_000),
                    }
                ),
                Event::new(
                    5,
                    Tid(11),
                    EventKind::SwitchIn {
                        run_delay: None,
                        cpu_steal: Some(7_000),
                        woken: Some(Woken {
                            at: 4,
                            waker: Waker::Thread {
                                tid: 12,
                                pid: 12,
                                comm: *b"unlocker\0\0\0\0\0\0\0\0",
                            },
                            unlocker: Some(StackRef { id: 8, caller: 0 }),
                        }),
                    }
                ),
            ]
        );
    }

    #[test]
    fn a_read_and_write_pair_is_two_socket_events_with_their_own_times() {
        let io = |ts, kind: tracer_common::EventKind, nr, ret| SyscallEvent {
            hdr: EventHeader {
                ts_ns: ts,
                kind: kind as u32,
                tid: 10,
            },
            nr,
            tls_record: 0,
            fd: 7,
            origin: tracer_common::socket_origin::TCP_SERVER,
            ret,
            connection: 0xc0,
        };
        let rec = SyscallPairEvent {
            read: io(5, tracer_common::EventKind::SyscallPair, 0, 120),
            write: io(9, tracer_common::EventKind::Syscall, 1, 600),
        };
        let mut out = Vec::new();
        decode(&bytes(&rec), &mut out).unwrap();
        let socket = |ts, nr, ret| {
            Event::new(
                ts,
                Tid(10),
                EventKind::Syscall(SyscallReturn {
                    nr,
                    fd: 7,
                    ret,
                    connection: 0xc0,
                    origin: SocketOrigin::TcpServer,
                    tls_record: 0,
                }),
            )
        };
        assert_eq!(out, vec![socket(5, 0, 120), socket(9, 1, 600)]);
        // Cut short, it is malformed, not half a pair.
        let mut out = Vec::new();
        assert!(decode(&bytes(&rec)[..60], &mut out).is_none());
        assert!(out.is_empty());
    }

    /// The kernel sends a batch of requests, and a handover, only as long as the requests
    /// they hold; a handover's place left empty (`start_ns` 0) is no request.
    #[test]
    fn stretch_records_are_as_long_as_their_requests() {
        let request = |start_ns, tid| StretchRequest {
            start_ns,
            latency_ns: 50,
            tid,
            fd: 4,
            ..Default::default()
        };
        let mut batch = StretchRequestBatch {
            hdr: EventHeader {
                ts_ns: 100,
                kind: tracer_common::EventKind::StretchRequestBatch as u32,
                tid: 0,
            },
            count: 2,
            ..Default::default()
        };
        batch.requests[..3].copy_from_slice(&[request(10, 1), request(20, 2), request(30, 3)]);
        let sent = &bytes(&batch)[..STRETCH_BATCH_HEAD + 2 * size_of::<StretchRequest>()];
        let mut out = Vec::new();
        match decode(sent, &mut out) {
            Some(Decoded::StretchRequests(got)) => {
                assert_eq!(got.requests(), [request(10, 1), request(20, 2)]);
            }
            other => panic!("{other:?}"),
        }
        assert!(out.is_empty());
        // Shorter than its count says: malformed.
        assert!(decode(&sent[..sent.len() - 1], &mut out).is_none());

        let handed = |connection, start_ns, last_write_ns| StretchHandedOver {
            connection,
            start_ns,
            last_write_ns,
            fd: 4,
            read_ret: 22,
            write_ret: 90,
            woken: u32::from(start_ns == 300),
        };
        let mut handover = StretchHandover {
            hdr: EventHeader {
                ts_ns: 500,
                kind: tracer_common::EventKind::StretchHandover as u32,
                tid: 7,
            },
            count: 3,
            _pad: 0,
            requests: [StretchHandedOver::default(); STRETCH_SLOTS],
        };
        handover.requests[..3].copy_from_slice(&[
            handed(1, 100, 200),
            handed(2, 0, 0), // left out: no longer the thread's
            handed(3, 300, 0),
        ]);
        let sent = &bytes(&handover)[..STRETCH_HANDOVER_HEAD + 3 * size_of::<StretchHandedOver>()];
        let mut out = Vec::new();
        assert!(matches!(decode(sent, &mut out), Some(Decoded::Events)));
        let seen: Vec<(u64, Tid, u32, i64, u64, Option<bool>)> = out
            .iter()
            .map(|e| match &e.kind {
                EventKind::Syscall(s) => (e.ts, e.tid, s.nr, s.ret, s.connection, None),
                EventKind::HandedOverRead { read: s, woken } => {
                    (e.ts, e.tid, s.nr, s.ret, s.connection, Some(*woken))
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            seen,
            [
                (100, Tid(7), nr::READ, 22, 1, Some(false)),
                (200, Tid(7), nr::WRITE, 90, 1, None),
                (300, Tid(7), nr::READ, 22, 3, Some(true)),
            ]
        );
    }

    #[test]
    fn a_batch_is_its_counted_pairs_in_order() {
        let io = |ts, kind: tracer_common::EventKind, nr, tid| SyscallEvent {
            hdr: EventHeader {
                ts_ns: ts,
                kind: kind as u32,
                tid,
            },
            nr,
            fd: 7,
            ret: 10,
            ..Default::default()
        };
        let pair = |ts, tid| SyscallPairEvent {
            read: io(ts, tracer_common::EventKind::SyscallPair, 0, tid),
            write: io(ts + 1, tracer_common::EventKind::Syscall, 1, tid),
        };
        let mut batch = SyscallPairBatch {
            hdr: EventHeader {
                ts_ns: 100,
                kind: tracer_common::EventKind::SyscallPairBatch as u32,
                tid: 0,
            },
            count: 3,
            ..Default::default()
        };
        batch.pairs[..4].copy_from_slice(&[pair(100, 1), pair(200, 2), pair(300, 1), pair(9, 9)]);
        let mut out = Vec::new();
        decode(&bytes(&batch), &mut out).unwrap();
        let seen: Vec<(u64, Tid)> = out.iter().map(|e| (e.ts, e.tid)).collect();
        assert_eq!(
            seen,
            [100, 101, 200, 201, 300, 301].map(|ts| (ts, Tid(if ts / 100 == 2 { 2 } else { 1 })))
        );
        // A count past the array (a corrupt record) is read as a full batch.
        batch.count = 1000;
        let mut out = Vec::new();
        decode(&bytes(&batch), &mut out).unwrap();
        assert_eq!(out.len(), 2 * tracer_common::PAIR_BATCH);
    }

    #[test]
    fn the_softirq_daemon_is_an_interrupt_and_other_threads_are_threads() {
        let task = |pid, tid, name: &[u8]| {
            let mut comm = [0; 16];
            comm[..name.len()].copy_from_slice(name);
            WakerId {
                tid,
                pid,
                context: waker_context::TASK,
                comm,
                ..Default::default()
            }
        };
        assert_eq!(
            waker(&task(15, 15, b"ksoftirqd/1")),
            Waker::Interrupt(Interrupt::Softirq)
        );
        assert!(matches!(
            waker(&task(900, 901, b"ksoftirqd/1")),
            Waker::Thread { tid: 901, .. }
        ));
        let stack_check = WakerId {
            context: waker_context::SOFTIRQ,
            ..Default::default()
        };
        assert_eq!(waker(&stack_check), Waker::Interrupt(Interrupt::Softirq));
    }

    #[test]
    fn a_new_thread_is_a_header_alone() {
        let hdr = EventHeader {
            ts_ns: 7,
            kind: tracer_common::EventKind::ThreadNew as u32,
            tid: 12,
        };
        let mut out = Vec::new();
        decode(&bytes(&hdr), &mut out).unwrap();
        assert_eq!(out, vec![Event::new(7, Tid(12), EventKind::ThreadNew)]);
    }

    #[test]
    fn truncated_or_unknown_records_are_rejected() {
        let mut out = Vec::new();
        assert!(decode(&[0; 8], &mut out).is_none());
        let hdr = EventHeader {
            ts_ns: 1,
            kind: 99,
            tid: 1,
        };
        assert!(decode(&bytes(&hdr), &mut out).is_none());
        assert!(out.is_empty());
    }

    #[test]
    fn tls_probes_become_openssl_calls_or_go_handshakes() {
        assert_eq!(
            tls_kind(0x55, tls::RETURN, 1),
            Some(EventKind::OpenSsl {
                ssl: 0x55,
                call: SslCall::Return { ret: 1 }
            })
        );
        assert_eq!(
            tls_kind(0xc000, tls::GO_RETURN, 0),
            Some(EventKind::GoHandshake {
                g: GoroutineId(0xc000),
                probe: GoProbe::Return { error: 0 }
            })
        );
        assert_eq!(tls_kind(1, 999, 0), None);
    }

    #[test]
    fn go_scheduler_probes_become_goroutine_transitions() {
        let record = |what, goid, detail| GoSchedEvent {
            hdr: EventHeader {
                ts_ns: 42,
                kind: tracer_common::EventKind::GoSched as u32,
                tid: 7,
            },
            goid,
            detail,
            what,
            stack_id: if what == go_sched::PARK { 5 } else { -1 },
            caller: 0x4567,
        };
        let decoded = |rec: GoSchedEvent| {
            let mut out = Vec::new();
            decode(&bytes(&rec), &mut out).map(|_| out)
        };
        let go = |kind| Some(vec![Event::new(42, Tid(7), EventKind::Go(kind))]);
        // gopark's reason register holds garbage above its low byte.
        assert_eq!(
            decoded(record(go_sched::PARK, 18, 0x4a0e)),
            go(GoSched::Park {
                goid: 18,
                reason: 14,
                request_body: false,
                stack: Some(StackRef {
                    id: 5,
                    caller: 0x4567
                }),
            })
        );
        assert_eq!(
            decoded(record(go_sched::PARK, 18, go_sched::PARK_REQUEST_BODY | 14)),
            go(GoSched::Park {
                goid: 18,
                reason: 14,
                request_body: true,
                stack: Some(StackRef {
                    id: 5,
                    caller: 0x4567
                }),
            })
        );
        assert_eq!(
            decoded(record(go_sched::READY, 18, go_sched::WAKER_UNREADABLE)),
            go(GoSched::Ready {
                goid: 18,
                waker: None
            })
        );
        assert_eq!(
            decoded(record(go_sched::SEMACQUIRE, 18, 0xc000_0100)),
            go(GoSched::Semacquire {
                goid: 18,
                address: 0xc000_0100,
                caller: 0x4567,
            })
        );
        assert_eq!(
            decoded(record(go_sched::STOP_THE_WORLD, 0, 0)),
            go(GoSched::StopTheWorld)
        );
        assert_eq!(
            decoded(record(go_sched::READY, 18, 35)),
            go(GoSched::Ready {
                goid: 18,
                waker: Some(35)
            })
        );
        assert_eq!(
            decoded(record(go_sched::READY, 18, 0)),
            go(GoSched::Ready {
                goid: 18,
                waker: None
            }),
            "woken with no goroutine on the thread (a timer)"
        );
        assert_eq!(
            decoded(record(go_sched::EXECUTE, 18, 0)),
            go(GoSched::Execute { goid: 18 })
        );
        assert_eq!(
            decoded(record(go_sched::EXIT, 18, 0)),
            go(GoSched::Exit { goid: 18 })
        );
        assert_eq!(decoded(record(99, 18, 0)), None, "an unknown transition");
        let mut out = Vec::new();
        let short = bytes(&record(go_sched::EXECUTE, 18, 0));
        assert!(
            decode(&short[..32], &mut out).is_none(),
            "a truncated record"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn reorder_releases_in_timestamp_order_after_the_window() {
        let mut r = Reorder::new(100);
        for ts in [50, 10, 30, 200] {
            r.push(Event::lost(ts));
        }
        let tie = Event::new(
            30,
            Tid(9),
            EventKind::SwitchIn {
                run_delay: None,
                cpu_steal: None,
                woken: None,
            },
        );
        r.push(tie.clone()); // a tie keeps arrival order
        let mut got = Vec::new();
        r.release(false, |e| got.push(e));
        assert_eq!(
            got.iter().map(event_ts).collect::<Vec<_>>(),
            vec![10, 30, 30, 50],
            "200 is inside the window"
        );
        assert_eq!(got[2], tie);
        r.release(true, |e| got.push(e));
        assert_eq!(event_ts(&got[4]), 200);
    }

    #[test]
    fn reorder_sorts_records_from_two_cpus_stably_and_releases_a_late_one_next() {
        // Two CPUs' records, each CPU's in order, interleaved as a shared ring might deliver
        // them (in bursts of up to three from one CPU, within the window of each other); tids
        // say which CPU and the sequence within it.
        let cpu = |first: u64, tid_base: u32| {
            (0..200u32).map(move |i| (first + u64::from(i) * 7 / 3, tid_base + i))
        };
        let mut arrivals: Vec<(u64, u32)> = Vec::new();
        let (mut a, mut b) = (cpu(1_000, 0), cpu(1_003, 1_000));
        for i in 0.. {
            let next = if i % 6 < 3 { b.next() } else { a.next() };
            match next.or_else(|| a.next()).or_else(|| b.next()) {
                Some(record) => arrivals.push(record),
                None => break,
            }
        }
        let mut r = Reorder::new(50);
        let mut got = Vec::new();
        for &(ts, tid) in &arrivals {
            r.push(Event::new(ts, Tid(tid), EventKind::ThreadNew));
            r.release(false, |e| got.push(e));
        }
        r.release(true, |e| got.push(e));
        let mut expected = arrivals.clone();
        expected.sort_by_key(|&(ts, _)| ts); // stable: ties in arrival order
        let got: Vec<(u64, u32)> = got.iter().map(|e| (e.ts, e.tid.0)).collect();
        assert_eq!(got, expected);

        // Later than the window: released at the next release, before anything newer.
        let mut r = Reorder::new(10);
        for ts in [100, 200, 300] {
            r.push(Event::lost(ts));
        }
        let mut got = Vec::new();
        r.release(false, |e| got.push(e.ts));
        r.push(Event::lost(150));
        r.push(Event::lost(400));
        r.release(false, |e| got.push(e.ts));
        assert_eq!(got, vec![100, 200, 150, 300]);

        // Far back among the held ones: placed by binary search.
        let mut r = Reorder::new(u64::MAX);
        for ts in (0..40).map(|i| i * 10) {
            r.push(Event::lost(ts));
        }
        r.push(Event::new(55, Tid(1), EventKind::ThreadNew));
        let mut got = Vec::new();
        r.release(true, |e| got.push(e.ts));
        assert!(
            got.is_sorted() && got.len() == 41 && got[6] == 55,
            "{got:?}"
        );
    }
}
