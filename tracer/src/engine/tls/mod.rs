//! TLS handshakes: timed from the TLS library's own calls where uprobes see them (OpenSSL's
//! `SSL_*` calls, Go's `serverHandshake` / `clientHandshake`), else from the TLS record
//! framing on the socket; their version and resumption from the record headers. A
//! connection's handshake is carried by its first request (cause `tls_handshake`), and its
//! flights are never taken for request or response bytes.
//!
//! - [`framing`]: records on the socket (any server, e.g. OpenSSL driven through a BIO);
//! - [`openssl`]: `SSL_*` calls;
//! - [`go`]: Go crypto/tls, per goroutine;
//! - [`shape`]: version and resumption.

pub mod framing;
pub mod go;
pub mod openssl;
pub mod shape;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use tracer_common::{is_read, is_write, record_content, tls_content};

use super::{
    cause::{Breakdown, Cause},
    context::{ExecCtx, Tid},
    fds::FdKind,
    requests::{HandshakeTime, RequestOn},
    timeline::Snapshot,
    Engine, FdResolver,
};
use framing::{is_encrypted_alert, TlsWire};
pub use shape::{TlsKind, TlsVersion};

/// Phases of a TLS handshake: the context ran (key exchange, signatures), waited for the
/// peer's next flight, waited for a CPU, or anything else.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsPhases {
    pub cpu: u64,
    pub peer_wait: u64,
    pub runqueue: u64,
    pub other: u64,
}

impl TlsPhases {
    pub(super) fn from_breakdown(b: &Breakdown) -> Self {
        let cpu = b[Cause::OnCpu.index()];
        let peer_wait = b[Cause::NetIo.index()];
        let runqueue = b[Cause::Runqueue.index()];
        TlsPhases {
            cpu,
            peer_wait,
            runqueue,
            other: b.iter().sum::<u64>() - cpu - peer_wait - runqueue,
        }
    }

    pub fn total(&self) -> u64 {
        self.cpu + self.peer_wait + self.runqueue + self.other
    }

    /// Make the phases sum to `total`: what no stretch covered is `other`; an excess (stretches
    /// that overlapped) comes off `other`, then `runqueue`, `cpu` and `peer_wait`.
    pub(super) fn fit(&mut self, total: u64) {
        let sum = self.total();
        if sum <= total {
            self.other += total - sum;
            return;
        }
        let mut excess = sum - total;
        for phase in [
            &mut self.other,
            &mut self.runqueue,
            &mut self.cpu,
            &mut self.peer_wait,
        ] {
            let cut = excess.min(*phase);
            *phase -= cut;
            excess -= cut;
        }
    }
}

/// A completed TLS handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub ctx: ExecCtx,
    pub fd: Option<u32>,
    pub start_ns: u64,
    pub phases: TlsPhases,
    pub kind: TlsKind,
}

/// Where a handshake ended whose last read went past the client's Finished (Go, and OpenSSL
/// with read-ahead as nginx sets it, read as much as the socket holds): the first request
/// may be in the TLS library's buffer already, and no read of it will cross the socket.
struct HandshakeEnd {
    ctx: ExecCtx,
    at: Snapshot,
}

/// Every connection's TLS state.
#[derive(Default)]
pub(super) struct TlsState {
    openssl: openssl::OpenSslHandshakes,
    pub go: go::GoHandshakes,
    /// Handshakes seen only in the TLS record framing on the socket, by fd.
    wire: HashMap<u32, TlsWire>,
    /// Server-side handshakes' record headers, by fd, until the handshake completes.
    shapes: HashMap<u32, shape::Shape>,
    /// Completed handshakes waiting for their connection's first request.
    pending: HashMap<u32, HandshakeTime>,
    /// Connections whose handshake just ended with a read past the client's Finished, until
    /// their next read or write.
    ended_past_finished: HashMap<u32, HandshakeEnd>,
    /// Connections whose Go handshake was in progress, or whose handshake had just ended
    /// past the client's Finished, when events were lost: what follows the loss there may
    /// be the rest of the handshake, and its first request is not known to be whole.
    lost_mid_handshake: HashSet<u32>,
    done: Vec<Handshake>,
    /// `--sample N`: only the sampled connections' reads and writes are seen, so a
    /// handshake seen on no connection (its function's probes fire on every connection) is
    /// an unsampled one's, and is not counted.
    pub connections_sampled: bool,
}

impl TlsState {
    /// The handshake of `fd`'s connection, for its first request.
    pub fn take_pending(&mut self, fd: u32) -> Option<HandshakeTime> {
        self.pending.remove(&fd)
    }

    /// The connections whose handshake `ctx` ended with a read past the client's Finished,
    /// whose first request is still to be opened by their next write.
    pub fn ended_past_finished_by(&self, ctx: ExecCtx) -> Vec<u32> {
        self.ended_past_finished
            .iter()
            .filter(|(_, end)| end.ctx == ctx)
            .map(|(&fd, _)| fd)
            .collect()
    }

    /// The first request on `fd` since events were lost in its handshake: it may have
    /// begun at one of the handshake's flights, or late (returns true once).
    pub fn first_request_after_loss(&mut self, fd: u32) -> bool {
        !self.lost_mid_handshake.is_empty() && self.lost_mid_handshake.remove(&fd)
    }

    pub fn take_done(&mut self) -> Vec<Handshake> {
        std::mem::take(&mut self.done)
    }

    /// `fd` was closed, or is a new connection: nothing of an earlier one applies.
    pub fn forget_fd(&mut self, fd: u32) {
        self.openssl.forget_fd(fd);
        self.go.forget_fd(fd);
        self.wire.remove(&fd);
        self.shapes.remove(&fd);
        self.pending.remove(&fd);
        self.ended_past_finished.remove(&fd);
        self.lost_mid_handshake.remove(&fd);
    }

    /// Events were lost: a handshake's end may be among them.
    pub fn lost(&mut self) {
        self.lost_mid_handshake.extend(self.go.connections());
        self.lost_mid_handshake
            .extend(self.ended_past_finished.keys().copied());
        self.go.forget_all();
        self.ended_past_finished.clear();
    }

    /// The uprobes time `fd`'s handshake: the framing must not.
    fn timed_by_uprobes(&mut self, fd: u32) {
        self.wire.insert(fd, TlsWire::established());
    }
}

impl<R: FdResolver> Engine<R> {
    /// A read or write returned on `fd`: the TLS tracking that must see it before requests
    /// do. Returns true when it was a Go handshake's flight (nothing else to do with it).
    pub(super) fn tls_io(&mut self, ts: u64, tid: Tid, sys: super::event::SyscallReturn) -> bool {
        let fd = sys.fd;
        if sys.tls_record != 0 || !self.tls.shapes.is_empty() {
            self.tls_shape(fd, sys.nr, sys.ret, sys.tls_record);
        }
        if self.tls.go.any() && self.go_handshake_io(ts, tid, sys) {
            return true;
        }
        if !self.tls.ended_past_finished.is_empty() && sys.ret != -tracer_common::EAGAIN {
            self.after_handshake(fd, sys.nr, sys.ret, sys.tls_record);
        }
        false
    }

    /// A handshake completed: keep it, with what the record framing said of it; a
    /// server-side connection's first request will carry it. `socket_seen`: a socket read or
    /// write was seen during it; with connections sampled, one that saw none is an unpicked
    /// connection's, and is not counted.
    fn handshake_done(
        &mut self,
        ctx: ExecCtx,
        fd: Option<u32>,
        socket_seen: bool,
        start_ns: u64,
        phases: TlsPhases,
    ) {
        if !socket_seen && self.tls.connections_sampled {
            return;
        }
        let kind = fd
            .and_then(|fd| self.tls.shapes.remove(&fd))
            .map(|shape| shape.kind())
            .unwrap_or_default();
        self.tls.done.push(Handshake {
            ctx,
            fd,
            start_ns,
            phases,
            kind,
        });
    }

    /// The handshake on `fd` is timed: its connection's first request carries it.
    fn handshake_pending(&mut self, fd: u32, start_ns: u64, duration_ns: u64) {
        self.tls.pending.insert(
            fd,
            HandshakeTime {
                start_ns,
                duration_ns,
            },
        );
    }

    /// A handshake on `fd` ended at `ts` on `tid` with a read past the client's Finished.
    fn handshake_ended_past_finished(&mut self, tid: Tid, fd: u32, ts: u64) {
        if self.fds.kind(fd) != FdKind::Connection {
            return;
        }
        let ctx = self.current_ctx(tid);
        if let Some(at) = self.ctx_snapshot(ctx, ts) {
            self.tls
                .ended_past_finished
                .insert(fd, HandshakeEnd { ctx, at });
        }
    }

    /// The first read or write on a connection after a handshake whose last read went past
    /// the client's Finished (not counting reads that found nothing: net/http reads in the
    /// background while a request runs, and nginx reads until EAGAIN). The TLS library read
    /// as much as the socket held, so the Finished and the first request often arrived in
    /// one read, inside the handshake: a response written before any further read answers
    /// that request, which started when the handshake ended. It is timed on the thread that
    /// ended the handshake.
    fn after_handshake(&mut self, fd: u32, nr: u32, ret: i64, record: u32) {
        let Some(done) = self.tls.ended_past_finished.remove(&fd) else {
            return;
        };
        let alert = record_content(record) == tls_content::ALERT || is_encrypted_alert(record);
        if !is_write(nr) || ret <= 0 || alert || self.requests.is_open(fd) {
            return;
        }
        self.open_request(done.ctx, RequestOn::Connection(fd), done.at);
    }

    /// Follow the record headers of a server-side connection's handshake (version and
    /// resumption, see [`shape`]).
    fn tls_shape(&mut self, fd: u32, nr: u32, ret: i64, record: u32) {
        if ret <= 0 {
            return;
        }
        if let Some(shape) = self.tls.shapes.get_mut(&fd) {
            if is_read(nr) {
                shape.read(ret, record);
            } else {
                shape.write(ret, record);
            }
        } else if is_read(nr)
            && record_content(record) == tls_content::HANDSHAKE
            && self.fds.kind(fd) == FdKind::Connection
        {
            self.tls.shapes.insert(fd, shape::Shape::start(ret, record));
        }
    }
}
