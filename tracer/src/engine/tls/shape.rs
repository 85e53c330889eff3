//! TLS version and resumption of a server-side handshake, told from record headers on the
//! socket (content type and length; never a record body, never a secret):
//!
//! - the client's second flight starts with a handshake record: a full TLS 1.2 handshake
//!   (ClientKeyExchange; TLS 1.3 encrypts everything after the ServerHello);
//! - it starts with change_cipher_spec: TLS 1.2 resumed (in a full TLS 1.2 handshake the
//!   client's key exchange comes first) when the record after it is a handshake record (the
//!   encrypted Finished), TLS 1.3 when it is application_data (RFC 8446 section 5: TLS 1.3
//!   sends every encrypted message as application_data, and a compatibility-mode client sends
//!   a change_cipher_spec first);
//! - it starts with application_data: TLS 1.3.
//!
//! TLS 1.3 resumption (PSK) cannot be read off the record types: the server's first flight
//! then carries no certificate, so it is inferred from that flight's size
//! ([`TLS13_RESUMED_MAX_FLIGHT`]). A HelloRetryRequest (a small server flight, then a second
//! ClientHello) is reported as version unknown.

use tracer_common::{record_content, record_len, record_next_content, tls_content};

use super::framing::Records;

/// The largest server first flight after its ServerHello (bytes on the wire) of a TLS 1.3
/// handshake resumed with a PSK: a change_cipher_spec, EncryptedExtensions and Finished
/// (~100 bytes), plus session tickets in servers that send them early (Go: ~250). With the
/// smallest real certificate chain (one P-256 certificate, ~500 bytes) and its
/// CertificateVerify it is over 600. Also: a first flight at most this long in all carries
/// no certificate.
pub const TLS13_RESUMED_MAX_FLIGHT: u64 = 450;

/// What a server sends after a HelloRetryRequest before the client's next flight: nothing,
/// or a 6-byte change_cipher_spec. A resumed TLS 1.2 server sends its change_cipher_spec and
/// an encrypted Finished (40 bytes or more).
const HRR_MAX_AFTER_HELLO: u64 = 20;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    #[default]
    Unknown,
    Tls12,
    Tls13,
}

/// What the record framing said about a handshake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsKind {
    pub version: TlsVersion,
    /// `None`: could not tell.
    pub resumed: Option<bool>,
}

/// One server-side connection's handshake, as its record headers show it.
#[derive(Debug, Default)]
pub struct Shape {
    state: State,
    /// Bytes the server wrote between the ClientHello and the client's next flight.
    server_flight: u64,
    /// Of those, the bytes after the ServerHello record.
    after_server_hello: u64,
    /// The client's bytes, in records.
    rx: Records,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum State {
    /// The ClientHello has been read.
    #[default]
    ClientHello,
    /// The server has written (part of) its first flight.
    ServerFlight,
    /// The client's second flight began with change_cipher_spec; the next record decides.
    AfterCcs,
    Done(TlsKind),
}

impl Shape {
    /// A connection whose first read was a ClientHello of `ret` bytes.
    pub fn start(ret: i64, record: u32) -> Shape {
        let mut shape = Shape::default();
        shape.rx.read(ret, record);
        shape
    }

    /// The server wrote `ret` bytes whose first 5 classified as `record`.
    pub fn write(&mut self, ret: i64, record: u32) {
        let ret = ret.max(0) as u64;
        match self.state {
            State::ClientHello => {
                // The first write starts with the ServerHello, a plaintext record of its own
                // in TLS 1.3 (its size varies with the key share: over 1 KB with
                // post-quantum ones).
                let server_hello = if record_content(record) == tls_content::HANDSHAKE {
                    5 + record_len(record) as u64
                } else {
                    0
                };
                self.state = State::ServerFlight;
                self.server_flight = ret;
                self.after_server_hello = ret.saturating_sub(server_hello);
            }
            State::ServerFlight => {
                self.server_flight += ret;
                self.after_server_hello += ret;
            }
            _ => {}
        }
    }

    /// The server read `ret` bytes whose first 5 classified as `record`.
    pub fn read(&mut self, ret: i64, record: u32) {
        let starts_record = self.rx.at_record_start();
        self.rx.read(ret, record);
        if !starts_record || record == 0 {
            return;
        }
        let content = record_content(record);
        let resumed13 = Some(self.after_server_hello <= TLS13_RESUMED_MAX_FLIGHT);
        let no_certificate = self.server_flight <= TLS13_RESUMED_MAX_FLIGHT;
        let kind = |version, resumed| State::Done(TlsKind { version, resumed });
        self.state = match (&self.state, content, record_next_content(record)) {
            // A small first flight has no certificate: a HelloRetryRequest (and this is the
            // second ClientHello), or a certificate-less TLS 1.2 cipher suite.
            (State::ServerFlight, tls_content::HANDSHAKE, _) if no_certificate => {
                kind(TlsVersion::Unknown, None)
            }
            (State::ServerFlight, tls_content::HANDSHAKE, _) => {
                kind(TlsVersion::Tls12, Some(false))
            }
            (State::ServerFlight, tls_content::APPLICATION_DATA, _) => {
                kind(TlsVersion::Tls13, resumed13)
            }
            (State::ServerFlight, tls_content::CHANGE_CIPHER_SPEC, 0) => State::AfterCcs,
            (State::ServerFlight | State::AfterCcs, _, next) => {
                let after_ccs = if self.state == State::AfterCcs {
                    content
                } else {
                    next
                };
                match after_ccs {
                    // A compatibility-mode client sends its change_cipher_spec before the
                    // second ClientHello that follows a HelloRetryRequest, which is all the
                    // server sent after its ServerHello (at most a change_cipher_spec).
                    tls_content::HANDSHAKE if self.after_server_hello < HRR_MAX_AFTER_HELLO => {
                        kind(TlsVersion::Unknown, None)
                    }
                    tls_content::HANDSHAKE => kind(TlsVersion::Tls12, Some(true)),
                    tls_content::APPLICATION_DATA => kind(TlsVersion::Tls13, resumed13),
                    _ => kind(TlsVersion::Unknown, None),
                }
            }
            _ => return, // more of the ClientHello, or decided already
        };
    }

    /// The verdict, once the client's second flight has been read.
    pub fn kind(&self) -> TlsKind {
        match self.state {
            State::Done(kind) => kind,
            _ => TlsKind::default(),
        }
    }

    #[cfg(test)]
    pub fn done(&self) -> bool {
        matches!(self.state, State::Done(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::tls_content::*;

    fn rec(content: u32, len: u32) -> u32 {
        content << 16 | len
    }

    fn ccs_then(next: u32) -> u32 {
        rec(CHANGE_CIPHER_SPEC, 1) | next << 24
    }

    #[test]
    fn tls13_full_in_whole_reads() {
        let mut s = Shape::start(517, rec(HANDSHAKE, 512));
        s.write(1473, rec(HANDSHAKE, 122));
        assert!(!s.done());
        s.read(165, ccs_then(APPLICATION_DATA)); // CCS, Finished and a request in one read
        assert_eq!(
            s.kind(),
            TlsKind {
                version: TlsVersion::Tls13,
                resumed: Some(false)
            }
        );
    }

    #[test]
    fn tls13_read_header_by_header_and_resumed() {
        let mut s = Shape::start(5, rec(HANDSHAKE, 512));
        s.read(512, rec(HANDSHAKE, 0x0301)); // the body, whatever its bytes look like
        s.write(250, rec(HANDSHAKE, 122)); // no certificate
        s.read(5, rec(CHANGE_CIPHER_SPEC, 1));
        s.read(1, 0);
        assert!(!s.done());
        s.read(5, rec(APPLICATION_DATA, 53));
        assert_eq!(
            s.kind(),
            TlsKind {
                version: TlsVersion::Tls13,
                resumed: Some(true)
            }
        );
    }

    #[test]
    fn tls12_full_and_resumed() {
        let mut full = Shape::start(300, rec(HANDSHAKE, 295));
        full.write(1200, rec(HANDSHAKE, 85));
        full.read(126, rec(HANDSHAKE, 37)); // ClientKeyExchange
        assert_eq!(
            full.kind(),
            TlsKind {
                version: TlsVersion::Tls12,
                resumed: Some(false)
            }
        );
        let mut resumed = Shape::start(300, rec(HANDSHAKE, 295));
        resumed.write(200, rec(HANDSHAKE, 85)); // ServerHello, CCS, Finished
        resumed.read(51, ccs_then(HANDSHAKE)); // CCS, encrypted Finished
        assert_eq!(
            resumed.kind(),
            TlsKind {
                version: TlsVersion::Tls12,
                resumed: Some(true)
            }
        );
    }

    #[test]
    fn an_alert_instead_of_a_second_flight_is_unknown() {
        let mut s = Shape::start(300, rec(HANDSHAKE, 295));
        s.write(1200, rec(HANDSHAKE, 85));
        s.read(7, rec(ALERT, 2));
        assert_eq!(s.kind(), TlsKind::default());
        assert!(s.done());
    }

    #[test]
    fn hello_retry_request_is_unknown_not_resumed() {
        let mut s = Shape::start(300, rec(HANDSHAKE, 295));
        s.write(99 + 6, rec(HANDSHAKE, 94)); // HelloRetryRequest, CCS
        s.read(600, ccs_then(HANDSHAKE)); // CCS, the second ClientHello
        assert_eq!(s.kind(), TlsKind::default());
    }

    #[test]
    fn a_post_quantum_server_hello_does_not_hide_a_resumption() {
        let mut s = Shape::start(1800, rec(HANDSHAKE, 1795));
        s.write(1220 + 6 + 100, rec(HANDSHAKE, 1215)); // X25519MLKEM768 ServerHello
        s.read(64, ccs_then(APPLICATION_DATA));
        assert_eq!(
            s.kind(),
            TlsKind {
                version: TlsVersion::Tls13,
                resumed: Some(true)
            }
        );
    }
}
