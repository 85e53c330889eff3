//! Handshakes seen in the TLS record framing on the socket, for servers whose handshake no
//! uprobe sees (OpenSSL driven through a BIO, a TLS library we do not hook). Only the 5-byte
//! record headers are read in the kernel: content type and length, never a body.

use tracer_common::{is_change_cipher_spec, record_content, record_len, tls_content};

use super::{
    super::{context::Tid, timeline::Snapshot, Engine, FdResolver},
    TlsPhases,
};

/// The size of a TLS 1.3 encrypted alert record's body (2-byte alert, content type, 16-byte
/// AEAD tag): a close_notify, not request bytes.
const ENCRYPTED_ALERT_LEN: u32 = 19;

/// The longest TLS 1.3 client Finished record: a 5-byte record header, the Finished message
/// (4-byte handshake header, 48-byte SHA-384 verify_data), the content type and a 16-byte
/// AEAD tag. 74 bytes with TLS_AES_256_GCM_SHA384, 58 with the SHA-256 suites.
const MAX_FINISHED_RECORD: i64 = 5 + 4 + 48 + 1 + 16;

/// The longest TLS 1.2 Finished record: a 5-byte record header, a CBC suite's 16-byte
/// explicit IV, the Finished message (4-byte header, 12-byte verify_data) with its 48-byte
/// HMAC-SHA384, padded to the 16-byte block. 45 bytes with AES-GCM.
const MAX_TLS12_FINISHED_RECORD: i64 = 5 + 16 + 4 + 12 + 48 + 16;

/// A TLS 1.3 alert: an application_data record of an alert's encrypted size.
pub fn is_encrypted_alert(record: u32) -> bool {
    record_content(record) == tls_content::APPLICATION_DATA
        && record_len(record) == ENCRYPTED_ALERT_LEN
}

/// Whether a read of `ret` bytes that ends a client's handshake flight, starting with
/// `record`, goes on past the client's Finished: request bytes came with the end of the
/// handshake. The flight's first record says where its Finished ends:
/// - a change_cipher_spec: the Finished follows it, as application_data (TLS 1.3) or as a
///   handshake record (TLS 1.2 resumed);
/// - a handshake record: a TLS 1.2 client's key exchange, then its change_cipher_spec and
///   Finished (a client certificate flight is longer: it looks past, and a request that did
///   not come is then only looked for in the next write, see `after_handshake`);
/// - application_data: a TLS 1.3 Finished.
pub fn read_past_finished(ret: i64, record: u32) -> bool {
    if is_change_cipher_spec(record & 0x00ff_ffff) {
        let finished = if tracer_common::record_next_content(record) == tls_content::HANDSHAKE {
            MAX_TLS12_FINISHED_RECORD
        } else {
            MAX_FINISHED_RECORD
        };
        return ret > 6 + finished;
    }
    let first = 5 + record_len(record) as i64;
    match record_content(record) {
        0 => false,
        tls_content::HANDSHAKE => ret > first + 6 + MAX_TLS12_FINISHED_RECORD,
        _ => ret > first,
    }
}

/// Where a connection's incoming bytes stand in their TLS records: the record being read (its
/// content type) and how many of its bytes are still to come (OpenSSL reads a 5-byte header,
/// then the body).
#[derive(Debug, Default)]
pub struct Records {
    content: u32,
    left: i64,
}

impl Records {
    /// Account a read of `ret` bytes whose first 5 bytes classified as `record`; returns the
    /// content type of the record it belongs to (0: unknown), and whether it also holds bytes
    /// past the end of that record.
    pub fn read(&mut self, ret: i64, record: u32) -> (u32, bool) {
        if self.left > 0 {
            let overflow = ret > self.left;
            self.left = (self.left - ret).max(0);
            return (self.content, overflow);
        }
        if record == 0 {
            return (0, false);
        }
        // A TLS 1.3 alert travels as application_data: classify it by its size.
        self.content = if is_encrypted_alert(record) {
            tls_content::ALERT
        } else {
            record_content(record)
        };
        let whole = 5 + record_len(record) as i64;
        self.left = (whole - ret).max(0);
        (self.content, ret > whole)
    }

    /// The next read starts a new record.
    pub fn at_record_start(&self) -> bool {
        self.left == 0
    }
}

/// A connection's TLS state as its record framing shows it.
pub(super) struct TlsWire {
    phase: WirePhase,
    rx: Records,
}

enum WirePhase {
    Handshaking {
        tid: Tid,
        /// Boxed, like `server_write`: most connections are past their handshake, and their
        /// state stays small.
        start: Box<Snapshot>,
        /// The server has sent its first flight.
        server_flight: bool,
        /// The client has sent its second flight (TLS 1.2 key exchange).
        client_flight: bool,
        /// The server's last flight: its thread's timeline when it was written.
        server_write: Option<Box<Snapshot>>,
    },
    Established,
}

impl TlsWire {
    /// A connection past its handshake (or one the uprobes time).
    pub fn established() -> Self {
        TlsWire {
            phase: WirePhase::Established,
            rx: Records::default(),
        }
    }

    fn read(&mut self, ret: i64, record: u32) -> (u32, bool) {
        self.rx.read(ret, record)
    }
}

impl<R: FdResolver> Engine<R> {
    /// A read on a connection, seen through TLS record framing. Returns true when the bytes
    /// were handshake or alert records, not request bytes.
    pub(in crate::engine) fn tls_wire_read(
        &mut self,
        ts: u64,
        tid: Tid,
        fd: u32,
        ret: i64,
        record: u32,
    ) -> bool {
        let Some(wire) = self.tls.wire.get_mut(&fd) else {
            if record_content(record) == tls_content::HANDSHAKE {
                self.tls_wire_start(ts, tid, fd, ret, record);
                return true;
            }
            if record != 0 {
                // An established TLS connection (open before the tracer attached).
                let mut wire = TlsWire::established();
                let (content, _) = wire.read(ret, record);
                self.tls.wire.insert(fd, wire);
                return content == tls_content::ALERT;
            }
            return false; // plaintext
        };
        let header = record;
        let (content, overflow) = wire.read(ret, record);
        match &mut wire.phase {
            WirePhase::Established => {
                content == tls_content::ALERT || content == tls_content::HANDSHAKE
            }
            WirePhase::Handshaking {
                server_flight,
                client_flight,
                server_write,
                ..
            } => {
                if *client_flight && content == tls_content::APPLICATION_DATA {
                    // TLS 1.2 whose last server flight did not start with change_cipher_spec
                    // (NewSessionTicket first, or an abbreviated handshake): it ended with that
                    // flight, and this is the first request.
                    let end = server_write.as_deref().copied();
                    self.tls_wire_done_at(fd, end);
                    return false;
                }
                if !*server_flight || content != tls_content::APPLICATION_DATA {
                    if *server_flight && content == tls_content::HANDSHAKE {
                        *client_flight = true; // TLS 1.2: key exchange and Finished
                    }
                    // A read that starts with the change_cipher_spec and goes on past it holds
                    // the client's Finished (and maybe the request) too.
                    let finished_inside = *server_flight
                        && content == tls_content::CHANGE_CIPHER_SPEC
                        && header != 0
                        && overflow
                        && !*client_flight;
                    if !finished_inside {
                        return true;
                    }
                    wire.rx.left = 0; // the records after it are not tracked
                    self.tls_wire_done(ts, fd);
                    if read_past_finished(ret, header) {
                        self.request_with_finished(ts, tid, fd); // the request came with it
                    }
                    return true;
                }
                // TLS 1.3: the client's Finished, in an application_data record.
                if !wire.rx.at_record_start() {
                    return true; // its body is still to come
                }
                self.tls_wire_done(ts, fd);
                if overflow {
                    self.request_with_finished(ts, tid, fd);
                }
                true
            }
        }
    }

    /// The read at `ts` that ended the handshake on `fd` also held the first request: it
    /// starts where the handshake ended, at that read, not at the wakeup before it (the
    /// handshake counted the wait for the CPU since).
    fn request_with_finished(&mut self, ts: u64, tid: Tid, fd: u32) {
        self.forget_wakeup(tid);
        self.request_bytes(ts, tid, fd);
    }

    fn tls_wire_start(&mut self, ts: u64, tid: Tid, fd: u32, ret: i64, record: u32) {
        let Some(thread) = self.threads.get(tid) else {
            return;
        };
        // From the wakeup that ended its wait for this ClientHello, if it waited.
        let start = match thread.last_wakeup {
            Some(woke) if woke.blocked_reading(fd) || woke.blocked_polling() => woke.at,
            _ => thread.timeline.snapshot(ts),
        };
        let mut wire = TlsWire {
            phase: WirePhase::Handshaking {
                tid,
                start: Box::new(start),
                server_flight: false,
                client_flight: false,
                server_write: None,
            },
            rx: Records::default(),
        };
        wire.read(ret, record);
        self.tls.wire.insert(fd, wire);
    }

    /// A write on a connection, seen through TLS record framing. Returns true when it was a
    /// handshake flight or an alert, not response bytes.
    pub(in crate::engine) fn tls_wire_write(&mut self, ts: u64, fd: u32, record: u32) -> bool {
        let content = record_content(record);
        let handshake_tid = match self.tls.wire.get(&fd) {
            None => return content == tls_content::ALERT,
            Some(TlsWire {
                phase: WirePhase::Handshaking { tid, .. },
                ..
            }) => *tid,
            Some(_) => return content == tls_content::ALERT || is_encrypted_alert(record),
        };
        let now = self.threads.snapshot(handshake_tid, ts);
        let Some(TlsWire {
            phase:
                WirePhase::Handshaking {
                    server_flight,
                    client_flight,
                    server_write,
                    ..
                },
            ..
        }) = self.tls.wire.get_mut(&fd)
        else {
            return true;
        };
        if *client_flight && content == tls_content::CHANGE_CIPHER_SPEC {
            self.tls_wire_done(ts, fd); // TLS 1.2: the server's Finished
        } else {
            *server_flight = true;
            *server_write = now.map(Box::new);
        }
        true
    }

    fn tls_wire_done(&mut self, ts: u64, fd: u32) {
        let end = match self.tls.wire.get(&fd).map(|w| &w.phase) {
            Some(WirePhase::Handshaking { tid, .. }) => self.threads.snapshot(*tid, ts),
            _ => None,
        };
        self.tls_wire_done_at(fd, end);
    }

    /// The framing handshake on `fd` ended at `end` (its thread's timeline then).
    fn tls_wire_done_at(&mut self, fd: u32, end: Option<Snapshot>) {
        let Some(wire) = self.tls.wire.get_mut(&fd) else {
            return;
        };
        let WirePhase::Handshaking { tid, start, .. } =
            std::mem::replace(&mut wire.phase, WirePhase::Established)
        else {
            return;
        };
        let Some(end) = end else {
            return;
        };
        let phases = TlsPhases::from_breakdown(&end.since(&start));
        let ctx = crate::engine::ExecCtx::Thread(tid);
        self.handshake_done(ctx, Some(fd), true, start.ts, phases);
        self.handshake_pending(fd, start.ts, phases.total());
    }
}
