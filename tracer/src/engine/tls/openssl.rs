//! OpenSSL handshakes, from uprobes on `SSL_do_handshake` (and, with `--tls-io-probes`,
//! `SSL_read` / `SSL_write`, which start a handshake implicitly) and `SSL_free`, keyed by the
//! `SSL*`. The socket reads and writes a thread makes inside such a call on a connection
//! still in its handshake are its flights.

use rustc_hash::FxHashMap as HashMap;
use tracer_common::{is_read, is_write, record_content, tls_content};

use super::{
    super::{
        context::{ExecCtx, Tid},
        event::{SslCall, SyscallReturn},
        fds::FdKind,
        timeline::{RunState, Snapshot},
        Engine, FdResolver,
    },
    framing::read_past_finished,
    TlsPhases,
};

/// A handshake in progress, keyed by its `SSL*`.
struct OpenHandshake {
    tid: Tid,
    start: Snapshot,
    /// The connection its socket traffic went to.
    fd: Option<u32>,
    /// Started by a handshake function (not by a read or write).
    explicit: bool,
    /// A handshake record went over the socket during its calls.
    saw_records: bool,
    /// Its last read went past the client's Finished: the first request may have come
    /// with it.
    read_past_finished: bool,
    /// A socket read or write was seen during its calls (on any socket: a backend's too;
    /// so whenever `fd` is set). With connections sampled, only a picked socket's are.
    socket_seen: bool,
}

/// OpenSSL handshakes in progress, by `SSL*`.
#[derive(Default)]
pub(in crate::engine) struct OpenSslHandshakes(HashMap<u64, OpenHandshake>);

impl OpenSslHandshakes {
    pub fn forget_fd(&mut self, fd: u32) {
        self.0.retain(|_, h| h.fd != Some(fd));
    }
}

impl<R: FdResolver> Engine<R> {
    /// An OpenSSL call on `ssl` entered or returned on thread `tid`.
    pub(in crate::engine) fn ssl_call(&mut self, ts: u64, tid: Tid, ssl: u64, call: SslCall) {
        let thread = self.threads.seen(tid, ts, RunState::Running);
        let ret = match call {
            SslCall::Free => {
                self.tls.openssl.0.remove(&ssl);
                return;
            }
            SslCall::Handshake | SslCall::Read | SslCall::Write => {
                thread.ssl_call = Some((ssl, call));
                let start = thread.timeline.snapshot(ts);
                let h = self.tls.openssl.0.entry(ssl).or_insert(OpenHandshake {
                    tid,
                    start,
                    fd: None,
                    explicit: false,
                    saw_records: false,
                    read_past_finished: false,
                    socket_seen: false,
                });
                h.explicit |= call == SslCall::Handshake;
                return;
            }
            SslCall::Return { ret } => ret,
        };
        let entered = thread.ssl_call.take().map(|(_, call)| call);
        if ret <= 0 {
            return; // a step of a handshake that goes on (WANT_READ / WANT_WRITE) or failed
        }
        let Some(h) = self.tls.openssl.0.remove(&ssl) else {
            return;
        };
        // Without a handshake record on the socket, a read or write that "completed" the
        // handshake was the first call since the tracer attached on a connection whose
        // handshake was over before: nothing to time.
        if h.explicit || h.saw_records {
            let Some(end) = self.threads.snapshot(h.tid, ts) else {
                return;
            };
            let phases = TlsPhases::from_breakdown(&end.since(&h.start));
            let seen = h.socket_seen;
            self.handshake_done(ExecCtx::Thread(h.tid), h.fd, seen, h.start.ts, phases);
            if let Some(fd) = h.fd {
                self.handshake_pending(fd, h.start.ts, phases.total());
                // A handshake function returned: the request bytes read with the Finished
                // (if any) are still in OpenSSL's buffer.
                if entered == Some(SslCall::Handshake) && h.read_past_finished {
                    self.handshake_ended_past_finished(tid, fd, ts);
                }
            }
        }
        // A read that returned data returned a request's bytes (after the handshake, if any).
        if let Some(fd) = h.fd {
            if entered == Some(SslCall::Read) && self.fds.kind(fd) == FdKind::Connection {
                self.request_bytes(ts, tid, fd);
            }
        }
    }

    /// A socket read or write returned on `tid`: when the thread is inside an OpenSSL call
    /// on a connection, it is a handshake flight. Returns true when it was.
    pub(in crate::engine) fn ssl_flight(&mut self, tid: Tid, sys: SyscallReturn) -> bool {
        let Some((ssl, _)) = self.threads.get(tid).and_then(|t| t.ssl_call) else {
            return false;
        };
        let fd = sys.fd;
        if !(is_read(sys.nr) || is_write(sys.nr)) {
            return false;
        }
        // On a connection, a handshake flight: it belongs to the handshake, not to a
        // request. Elsewhere a client's handshake (a backend call): only seen.
        let on_connection = self.fds.kind(fd) == FdKind::Connection;
        // Inside a handshake call a thread moves bytes on that connection only: bytes on
        // another (or a call whose handshake is no longer followed) show that the call
        // returned unseen (its return among lost records): the thread is out of it.
        let left_unseen = on_connection
            && self
                .tls
                .openssl
                .0
                .get(&ssl)
                .is_none_or(|h| h.fd.is_some_and(|own| own != fd));
        if left_unseen {
            if let Some(thread) = self.threads.get_mut(tid) {
                thread.ssl_call = None;
            }
            return false;
        }
        if let Some(h) = self.tls.openssl.0.get_mut(&ssl) {
            h.socket_seen = true;
            if on_connection {
                h.fd.get_or_insert(fd);
                h.saw_records |= record_content(sys.tls_record) == tls_content::HANDSHAKE;
                if is_read(sys.nr) && sys.ret > 0 && h.fd == Some(fd) {
                    h.read_past_finished = read_past_finished(sys.ret, sys.tls_record);
                }
            }
        }
        if !on_connection {
            return false;
        }
        self.tls.timed_by_uprobes(fd);
        true
    }
}
