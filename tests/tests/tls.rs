//! TLS handshakes of a real OpenSSL server (Debian's `openssl s_server`, libssl.so.3, in its
//! plain mode, which calls `SSL_accept`), driven by real `openssl s_client` processes.
//!
//! A small proxy in the test can hold the client's second flight back for a known time: the
//! server is then blocked waiting for the peer, and that wait must land in `peer_wait`.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tracer::{
    engine::Cause,
    output::{jsonl::RequestRecord, summary::Tls},
};
use tracer_tests::{
    session::Tracer,
    support::{
        go::{build_https_server, GoBuild},
        tls::{start_s_server, CertKey},
    },
    TempDir, Workload,
};

const MS: u64 = 1_000_000;

/// `openssl s_server` on an ephemeral port with a throw-away certificate; killed on drop.
struct SServer {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl SServer {
    fn start(name: &str) -> SServer {
        Self::start_with(name, &[])
    }

    /// `extra`: more s_server flags, e.g. `-www`.
    fn start_with(name: &str, extra: &[&str]) -> SServer {
        let dir = TempDir::new(name);
        let cert = make_cert(dir.path());
        let (child, port) = start_s_server(&cert, extra, |cmd| Ok(cmd.spawn()?))
            .unwrap_or_else(|e| panic!("{e:#}"));
        // That probe connection was a (failed) handshake of its own; let s_server drop it.
        std::thread::sleep(Duration::from_millis(200));
        SServer { child, port, dir }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throw-away certificate and its key in `dir`.
fn make_cert(dir: &Path) -> CertKey {
    tracer_tests::support::tls::make_cert(dir).unwrap_or_else(|e| panic!("{e:#}"))
}

/// An HTTPS test server, `EXE CERT KEY`, that prints its listening line; killed when dropped.
fn https_server(exe: &Path, cert: &CertKey) -> Workload {
    let mut cmd = Command::new(exe);
    cmd.arg(&cert.cert).arg(&cert.key);
    Workload::start(cmd)
}

/// The Go HTTPS server, built into `dir`.
fn go_server(dir: &Path, build: GoBuild) -> PathBuf {
    build_https_server(dir, build).unwrap_or_else(|e| panic!("{e:#}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `openssl s_client FLAGS... -connect 127.0.0.1:PORT`, bounded to 20 s.
fn s_client_command(port: u16, flags: &[&str]) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["20", "openssl", "s_client"])
        .args(flags)
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"));
    cmd
}

/// One full handshake with `openssl s_client`, which then sees EOF on stdin and closes.
fn s_client(port: u16) {
    let out = s_client_command(port, &[])
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("BEGIN CERTIFICATE"),
        "s_client did not complete a handshake: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP proxy to `upstream` that holds part of each connection's traffic back by a delay.
/// Serves connections one at a time until dropped.
struct DelayProxy {
    port: u16,
}

/// What a [`DelayProxy`] holds back.
#[derive(Clone, Copy)]
enum Hold {
    /// Every client chunk after the first (the client's second flight onwards).
    LaterClientChunks,
    /// The server's first chunk (its first flight: ServerHello onwards). Both peers' handshake
    /// times then hold the delay: the client cannot finish before that flight reaches it,
    /// and the server waits for the client's answer to it.
    ServerFirstFlight,
}

impl DelayProxy {
    /// Holds each later client chunk back by `delay`.
    fn start(upstream: u16, delay: Duration) -> DelayProxy {
        Self::holding(upstream, Hold::LaterClientChunks, delay)
    }

    fn holding(upstream: u16, hold: Hold, delay: Duration) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                relay(client, server, hold, delay);
            }
        });
        DelayProxy { port }
    }
}

fn relay(client: TcpStream, server: TcpStream, hold: Hold, delay: Duration) {
    let (c_read, s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let upstream = std::thread::spawn(move || {
        forward(c_read, s_write, delay, |chunk| {
            matches!(hold, Hold::LaterClientChunks) && chunk > 0
        });
    });
    forward(server, client, delay, |chunk| {
        matches!(hold, Hold::ServerFirstFlight) && chunk == 0
    });
    let _ = upstream.join();
}

/// Copy `from` to `to` until EOF, holding back by `delay` each chunk `held` picks (by index).
fn forward(mut from: TcpStream, mut to: TcpStream, delay: Duration, held: impl Fn(usize) -> bool) {
    let mut buf = [0u8; 16384];
    let mut chunk = 0;
    while let Ok(n @ 1..) = from.read(&mut buf) {
        if held(chunk) {
            std::thread::sleep(delay);
        }
        chunk += 1;
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// The handshake time a request carries.
fn tls_ns(r: &RequestRecord) -> u64 {
    r.breakdown[&Cause::TlsHandshake]
}

/// All handshakes' time, by its phases.
fn phases_total(t: &Tls) -> u64 {
    let p = &t.phases;
    p.cpu.total_ns + p.peer_wait.total_ns + p.runqueue.total_ns + p.other.total_ns
}

fn require_openssl() {
    assert!(
        Path::new("/usr/bin/openssl").exists(),
        "openssl is missing: run `cargo xtask setup` (it installs Debian's openssl)"
    );
}

#[test]
#[ignore = "needs root"]
fn openssl_handshakes_are_counted_and_timed() {
    require_openssl();
    let mut server = SServer::start("count");
    let tracer = Tracer::attach(server.pid()).args(["-i", "1"]).start();
    const CONNECTIONS: u64 = 5;
    for _ in 0..CONNECTIONS {
        s_client(server.port);
    }
    let done = tracer.stop();
    assert!(done.status.success(), "tracer failed: {}", done.stderr);
    assert!(
        done.stderr.contains("TLS: OpenSSL libssl.so"),
        "the tracer says what it hooked: {}",
        done.stderr
    );
    let t = &done.summary().tls;
    assert!(
        t.library
            .as_deref()
            .is_some_and(|l| l.starts_with("OpenSSL libssl.so")),
        "{t:?}"
    );
    assert!(t.hooked.iter().any(|f| f == "SSL_do_handshake"), "{t:?}");
    assert_eq!(t.handshakes.duration_ns.count, CONNECTIONS, "{t:?}");
    let phases = phases_total(t);
    assert!(phases > 0, "{t:?}");
    assert!(
        phases <= CONNECTIONS * t.handshakes.duration_ns.max,
        "{t:?}"
    );
    assert!(
        server.alive(),
        "the server keeps running after the tracer detached"
    );
    s_client(server.port);
}

#[test]
#[ignore = "needs root"]
fn a_delayed_client_flight_is_peer_wait() {
    require_openssl();
    const DELAY_MS: u64 = 150;
    const CONNECTIONS: u64 = 4;
    let mut server = SServer::start("delay");
    let proxy = DelayProxy::start(server.port, Duration::from_millis(DELAY_MS));
    let tracer = Tracer::attach(server.pid()).args(["-i", "1"]).start();
    for _ in 0..CONNECTIONS {
        s_client(proxy.port);
    }
    let done = tracer.stop();
    assert!(done.status.success(), "tracer failed: {}", done.stderr);
    assert_delayed_handshakes(&done.summary().tls, CONNECTIONS, DELAY_MS);
    assert!(server.alive());
}

/// `connections` handshakes whose client's second flight was held back `delay_ms`: each
/// takes the delay plus the rest of the handshake (a few ms of ECDHE and signatures here),
/// at least 90% of the delay is `peer_wait`, and the CPU time is below it.
fn assert_delayed_handshakes(t: &Tls, connections: u64, delay_ms: u64) {
    assert_eq!(t.handshakes.duration_ns.count, connections, "{t:?}");
    let p50 = t.handshakes.duration_ns.p50;
    assert!(
        (delay_ms * MS..delay_ms * MS + 100 * MS).contains(&p50),
        "handshake p50 {p50} ns for a {delay_ms} ms delay: {t:?}"
    );
    let peer_wait = t.phases.peer_wait.total_ns;
    assert!(
        peer_wait >= connections * delay_ms * MS * 9 / 10,
        "peer_wait {peer_wait} ns for {connections} handshakes delayed {delay_ms} ms: {t:?}"
    );
    let cpu = t.phases.cpu.total_ns;
    assert!(cpu < peer_wait, "the delay is waiting, not CPU: {t:?}");
}

/// Nothing the peers exchanged reaches the tracer's output, its files or even its full event
/// stream (`TRACER_EVENT_DUMP`): not TLS plaintext sent through s_client, and not plaintext
/// written to the socket (whose first 5 bytes the kernel side classifies).
#[test]
#[ignore = "needs root"]
fn no_payload_bytes_reach_userspace() {
    require_openssl();
    const MARKER: &str = "PAYLOAD-MARKER-7f3a9c-do-not-record";
    let server = SServer::start("payload");
    let dump = TempDir::absent("payload-dump");
    let tracer = Tracer::attach(server.pid())
        .args(["-i", "1", "--slow", "0"])
        .env("TRACER_EVENT_DUMP", dump.path())
        .start();
    let mut client = s_client_command(server.port, &["-quiet", "-no_ign_eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl s_client");
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(format!("{MARKER}\n").as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(stdin);
    let _ = client.wait();
    let mut plain = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    plain.write_all(MARKER.as_bytes()).unwrap();
    drop(plain);
    std::thread::sleep(Duration::from_millis(200));
    let done = tracer.stop();
    assert!(done.status.success(), "tracer failed: {}", done.stderr);
    assert_eq!(done.summary().tls.handshakes.duration_ns.count, 1);
    let out = done.out().to_path_buf();
    let mut outputs = vec![
        ("stdout".to_string(), done.stdout.into_bytes()),
        ("stderr".to_string(), done.stderr.into_bytes()),
        (
            "event dump".to_string(),
            std::fs::read(dump.path()).unwrap(),
        ),
    ];
    for file in std::fs::read_dir(&out).unwrap() {
        let path = file.unwrap().path();
        outputs.push((path.display().to_string(), std::fs::read(&path).unwrap()));
    }
    assert!(outputs[2].1.len() > 1000, "the event dump holds the events");
    for (name, bytes) in outputs {
        for needle in [MARKER, &MARKER[..5]] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{name} holds payload bytes ({needle:?})"
            );
        }
    }
}

/// `openssl s_client` at `version` (`-tls1_2`, `-tls1_3`), saving its session to `session`,
/// or resuming it from there; it stays 300 ms so TLS 1.3 session tickets arrive. Returns
/// whether it says it reused the session.
fn s_client_session(port: u16, version: &str, session: &Path, resume: bool) -> bool {
    let mut client = s_client_command(port, &[version])
        .arg(if resume { "-sess_in" } else { "-sess_out" })
        .arg(session)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl s_client");
    std::thread::sleep(Duration::from_millis(300));
    drop(client.stdin.take());
    let out = client.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Cipher is"), "no handshake: {text}");
    text.contains("\nReused, ")
}

/// TLS 1.2 and 1.3, full and resumed, told apart from record headers alone.
#[test]
#[ignore = "needs root"]
fn versions_and_resumption_are_reported() {
    require_openssl();
    let server = SServer::start("versions");
    let tracer = Tracer::attach(server.pid()).args(["-i", "1"]).start();
    for version in ["-tls1_2", "-tls1_3"] {
        let session = server.dir.path().join(format!("session{version}"));
        assert!(!s_client_session(server.port, version, &session, false));
        assert!(
            s_client_session(server.port, version, &session, true),
            "s_client did not resume its {version} session"
        );
    }
    let done = tracer.stop();
    assert!(done.status.success(), "tracer failed: {}", done.stderr);
    let hs = &done.summary().tls.handshakes;
    assert_eq!(hs.duration_ns.count, 4, "{hs:?}");
    assert_eq!(hs.by_version.tls12, 2, "{hs:?}");
    assert_eq!(hs.by_version.tls13, 2, "{hs:?}");
    assert_eq!(hs.resumed, 2, "{hs:?}");
    assert_eq!(hs.full, 2, "{hs:?}");
    assert!(
        done.stdout
            .contains("TLSv1.3 2, TLSv1.2 2, version unknown 0; resumed 2, full 2"),
        "{}",
        done.stdout
    );
}

#[test]
#[ignore = "needs root"]
fn tls_off_hooks_nothing() {
    require_openssl();
    let server = SServer::start("off");
    let tracer = Tracer::attach(server.pid()).args(["--tls", "off"]).start();
    s_client(server.port);
    let done = tracer.stop();
    let t = &done.summary().tls;
    assert_eq!(t.handshakes.duration_ns.count, 0, "{t:?}");
    assert!(
        t.not_hooked_because
            .as_deref()
            .is_some_and(|b| b.contains("--tls off")),
        "{t:?}"
    );
}

/// `openssl s_server -www` drives OpenSSL through a BIO: no exported handshake, read or write
/// function is called, so no uprobe sees its handshakes. The TLS record framing on the
/// socket does: each connection's handshake is one handshake, not requests, and the
/// connection's one request carries it.
#[test]
#[ignore = "needs root"]
fn bio_driven_server_handshakes_are_seen_in_the_record_framing() {
    require_openssl();
    let server = SServer::start_with("www", &["-www"]);
    let tracer = Tracer::attach(server.pid())
        .args(["-i", "1", "--slow", "0"])
        .start();
    const CONNECTIONS: u64 = 4;
    for _ in 0..CONNECTIONS {
        let out = Command::new("curl")
            .args([
                "-sk",
                "--max-time",
                "20",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg(format!("https://127.0.0.1:{}/", server.port))
            .output()
            .expect("run curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "curl: {out:?}");
    }
    let done = tracer.stop();
    assert!(done.status.success(), "tracer failed: {}", done.stderr);
    let t = &done.summary().tls;
    assert_eq!(t.handshakes.duration_ns.count, CONNECTIONS, "{t:?}");
    assert_eq!(
        done.summary().requests.count,
        CONNECTIONS,
        "one request per connection, not one per handshake flight: {:?}",
        done.requests
    );
    for r in &done.requests {
        let hs = tls_ns(r);
        assert!(
            hs > 0,
            "the connection's first request carries its handshake: {r:?}"
        );
        assert!(hs < r.latency_ns, "{r:?}");
    }
}

/// `tls-server` (the `openssl` crate against the system's libssl.so.3) and
/// `tls-server-static` (the same server with Debian's libssl.a linked in: no libssl.so
/// mapped, the SSL_* functions are in the executable): an explicit `SSL_accept` per
/// connection, then keep-alive HTTPS requests. Only each connection's first request carries
/// the handshake. The static run also probes SSL_read/SSL_write (`--tls-io-probes`): the same
/// results, with the read and write functions hooked.
#[test]
#[ignore = "needs root"]
fn rust_openssl_servers_shared_and_static_carry_the_handshake_on_the_first_request() {
    require_openssl();
    for (binary, library, io_probes) in [
        ("tls-server", "TLS: OpenSSL libssl.so.3", false),
        ("tls-server-static", "TLS: OpenSSL static (", true),
    ] {
        rust_openssl_server(binary, library, io_probes);
    }
}

fn rust_openssl_server(binary: &str, library: &str, io_probes: bool) {
    let dir = TempDir::new(binary);
    let server = https_server(&tracer_tests::bin_path(binary), &make_cert(dir.path()));

    let mut args = vec!["-i", "1", "--slow", "0"];
    if io_probes {
        args.push("--tls-io-probes");
    }
    let tracer = Tracer::attach(server.pid).args(&args).start();
    const CONNECTIONS: usize = 3;
    let urls = ["/", "/sleep?ms=30", "/"].map(|p| format!("https://{}{p}", server.addr));
    for _ in 0..CONNECTIONS {
        // One curl, one connection, three keep-alive requests.
        let out = Command::new("curl")
            .args([
                "-sk",
                "--max-time",
                "20",
                "-w",
                "%{http_code} %{num_connects}\\n",
            ])
            .args(["-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null"])
            .args(&urls)
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text, "200 1\n200 0\n200 0\n",
            "curl reused one connection: {out:?}"
        );
    }
    let done = tracer.stop();
    drop(server);
    assert!(done.status.success(), "tracer failed: {}", done.stderr);
    assert!(
        done.stderr.contains(library),
        "{binary}: the tracer says which OpenSSL it found: {}",
        done.stderr
    );
    assert_eq!(
        done.stderr.contains("SSL_read, "),
        io_probes,
        "{binary}: SSL_read is hooked only with --tls-io-probes: {}",
        done.stderr
    );
    let t = &done.summary().tls;
    assert_eq!(
        t.handshakes.duration_ns.count, CONNECTIONS as u64,
        "{binary}: {t:?}"
    );
    assert_eq!(done.requests.len(), CONNECTIONS * 3, "{:?}", done.requests);
    // Per connection (one server thread each), in order: the first request carries the
    // handshake, the others none; the second one sleeps.
    let mut by_thread: std::collections::BTreeMap<u32, Vec<&RequestRecord>> = Default::default();
    for r in &done.requests {
        by_thread.entry(r.tid).or_default().push(r);
    }
    assert_eq!(by_thread.len(), CONNECTIONS, "{:?}", done.requests);
    for reqs in by_thread.values_mut() {
        reqs.sort_by_key(|r| r.start_ns);
        let hs: Vec<u64> = reqs.iter().map(|r| tls_ns(r)).collect();
        assert!(hs[0] > 0 && hs[1] == 0 && hs[2] == 0, "{reqs:?}");
        let slept = reqs[1].breakdown[&Cause::Sleep];
        assert!(slept >= 27 * MS, "{reqs:?}");
    }
}

/// Debian's nginx (`nginx-light`, libssl.so.3): a master and one worker process, which runs
/// an epoll event loop over non-blocking sockets and drives each handshake with
/// `SSL_do_handshake` calls that return WANT_READ between flights. Its own config, cert and
/// files live in a temp dir; stopped (and its worker killed, if it lingers) on drop.
struct Nginx {
    master: Child,
    worker: u32,
    port: u16,
    /// Its config, certificate and files; removed after nginx has stopped.
    _dir: TempDir,
}

const NGINX: &str = "/usr/sbin/nginx";

impl Nginx {
    fn start(name: &str) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "nginx is missing: run `cargo xtask setup` (it installs Debian's nginx-light)"
        );
        let temp = TempDir::new(&format!("nginx-{name}"));
        let dir = temp.path().to_path_buf();
        let CertKey { cert, key } = make_cert(&dir);
        std::fs::create_dir_all(dir.join("html")).unwrap();
        std::fs::write(dir.join("html/index.html"), "hello from nginx\n").unwrap();
        // A port picked free can be taken before nginx binds it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, nginx_conf(&dir, port, &cert, &key)).unwrap();
            let mut master = Command::new(NGINX)
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(dir.join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nginx");
            let deadline = Instant::now() + tracer_support::tls::LISTEN_WAIT;
            let worker = loop {
                if master.try_wait().unwrap().is_some() {
                    break None; // it could not start (the port was taken?)
                }
                if let Some(worker) = nginx_worker(master.id()) {
                    if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                        break Some(worker);
                    }
                }
                if Instant::now() > deadline {
                    let _ = master.kill();
                    let _ = master.wait();
                    panic!(
                        "nginx did not start serving; its log:\n{}",
                        std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let Some(worker) = worker else {
                continue;
            };
            // Let the worker drop the probe connection before anything is traced.
            std::thread::sleep(Duration::from_millis(200));
            return Nginx {
                master,
                worker,
                port,
                _dir: temp,
            };
        }
        panic!(
            "nginx did not start; its log:\n{}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
    }

    /// The same worker process is still serving (a crashed worker would be replaced by the
    /// master under a new pid).
    fn worker_alive(&mut self) -> bool {
        self.master.try_wait().unwrap().is_none()
            && nginx_worker(self.master.id()) == Some(self.worker)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: fast shutdown, the master stops its worker.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.master.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.master.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.master.kill();
        let _ = self.master.wait();
        if is_nginx_worker(self.worker) {
            // SAFETY: kill(2) on the worker our nginx started, checked by its command line.
            unsafe { libc::kill(self.worker as i32, libc::SIGKILL) };
        }
    }
}

fn nginx_conf(dir: &Path, port: u16, cert: &Path, key: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;
master_process on;
worker_processes 1;
user root root;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        root {d}/html;
    }}
}}
",
        cert = cert.display(),
        key = key.display(),
    )
}

/// The worker process of the nginx master `master`.
fn nginx_worker(master: u32) -> Option<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| parent_of(pid) == Some(master) && is_nginx_worker(pid))
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: the comm may hold spaces and parentheses.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn is_nginx_worker(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| cmdline.starts_with(b"nginx: worker process"))
}

/// What curl measured for one transfer, in ns from its start (`-w` timings).
#[derive(Debug)]
struct CurlTimes {
    connect: u64,
    appconnect: u64,
    starttransfer: u64,
}

impl CurlTimes {
    /// The handshake as the client measured it: TCP connected to TLS done.
    fn handshake(&self) -> u64 {
        self.appconnect - self.connect
    }

    /// An upper bound of the server's handshake: it starts after the client connected
    /// (the ClientHello is sent then) and ends before the server writes the response, whose
    /// first byte the client receives at `starttransfer` (curl reports whole microseconds).
    fn server_handshake_bound(&self) -> u64 {
        self.starttransfer - self.connect + 1_000
    }
}

/// One curl process, one new connection to `port` at `version` (`--tlsv1.2 --tls-max 1.2`,
/// `--tlsv1.3`), two keep-alive requests: the first transfer's timings.
fn curl_two_requests(port: u16, version: &[&str]) -> CurlTimes {
    let url = format!("https://127.0.0.1:{port}/");
    let out = Command::new("curl")
        .args(["-sk", "--http1.1", "--max-time", "20"])
        .args(version)
        .args(["-o", "/dev/null", "-o", "/dev/null", "-w"])
        .arg("%{http_code} %{num_connects} %{time_connect} %{time_appconnect} %{time_starttransfer}\\n")
        .args([&url, &url])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    let transfer = |i: usize, connects: &str| {
        lines
            .get(i)
            .is_some_and(|l| l.len() == 5 && l[..2] == ["200", connects])
    };
    assert!(
        lines.len() == 2 && transfer(0, "1") && transfer(1, "0"),
        "curl made one connection for two requests: {out:?}"
    );
    let ns = |s: &str| (s.parse::<f64>().unwrap() * 1e6).round() as u64 * 1_000;
    CurlTimes {
        connect: ns(lines[0][2]),
        appconnect: ns(lines[0][3]),
        starttransfer: ns(lines[0][4]),
    }
}

/// nginx, traced by its worker's pid: each new connection's handshake is counted once and
/// carried, as `tls_handshake`, by the connection's first request only, which starts when
/// the handshake started. nginx peeks at the first byte of each new connection (MSG_PEEK)
/// before its first SSL_do_handshake, and with TLS 1.3 its last handshake read often holds
/// the request too (it sets read-ahead): neither may cost the request its handshake.
///
/// The tracer's handshake time is checked against curl's own timings, with bounds that follow
/// from the order of events rather than from tolerances: the server's handshake lies between
/// the client's TCP connect and the response's first byte, so it is at most curl's
/// `time_starttransfer - time_connect`. Through a proxy that holds the server's first flight
/// back 100 ms, both peers' handshakes must hold those 100 ms, so the tracer's is at least
/// that, and its total at least 80% of curl's own `time_appconnect - time_connect` total.
/// (Direct handshakes get no such ratio: curl sets up its TLS context after the TCP connect,
/// about half of its measured handshake here before its ClientHello leaves.)
#[test]
#[ignore = "needs root"]
fn nginx_event_loop_handshakes_are_carried_by_each_connections_first_request() {
    require_openssl();
    const DIRECT: usize = 10;
    const DELAYED: usize = 4;
    const DELAY_MS: u64 = 100;
    let tls12: &[&str] = &["--tlsv1.2", "--tls-max", "1.2"];
    let tls13: &[&str] = &["--tlsv1.3"];
    let mut nginx = Nginx::start("loop");
    let proxy = DelayProxy::holding(
        nginx.port,
        Hold::ServerFirstFlight,
        Duration::from_millis(DELAY_MS),
    );
    let tracer = Tracer::attach(nginx.worker)
        .args(["-i", "1", "--slow", "0"])
        .start();
    let mut curls = Vec::new();
    for i in 0..DIRECT {
        curls.push(curl_two_requests(nginx.port, [tls12, tls13][i % 2]));
    }
    for i in 0..DELAYED {
        curls.push(curl_two_requests(proxy.port, [tls12, tls13][i % 2]));
    }
    let done = tracer.stop();
    curl_two_requests(nginx.port, tls13);
    assert!(
        nginx.worker_alive(),
        "the same nginx worker keeps serving after the tracer detached"
    );
    drop(nginx);
    assert!(done.status.success(), "tracer failed: {}", done.stderr);
    assert!(
        done.stderr.contains("TLS: OpenSSL libssl.so.3"),
        "{}",
        done.stderr
    );

    let connections = (DIRECT + DELAYED) as u64;
    let t = &done.summary().tls;
    let hs = &t.handshakes;
    assert_eq!(hs.duration_ns.count, connections, "{t:?}");
    assert_eq!(hs.by_version.tls12, connections / 2, "{hs:?}");
    assert_eq!(hs.by_version.tls13, connections / 2, "{hs:?}");
    assert_eq!(hs.full, connections, "{hs:?}");

    // Two requests per connection; one connection after the other, so in start order the
    // requests pair up with the curl runs.
    let mut reqs: Vec<&RequestRecord> = done.requests.iter().collect();
    assert_eq!(reqs.len(), 2 * curls.len(), "{reqs:#?}");
    reqs.sort_by_key(|r| r.start_ns);
    let mut traced_delayed = 0;
    let mut curl_delayed = 0;
    for (i, (pair, curl)) in reqs.chunks(2).zip(&curls).enumerate() {
        let (first, second) = (pair[0], pair[1]);
        let what = format!("connection {i}: curl {curl:?}, requests {pair:#?}");
        let handshake = tls_ns(first);
        assert!(
            handshake > 0,
            "the first request carries the handshake: {what}"
        );
        assert_eq!(tls_ns(second), 0, "the second carries none: {what}");
        assert!(first.latency_ns > handshake, "{what}");
        assert!(!first.incomplete && !second.incomplete, "{what}");
        assert!(
            handshake <= curl.server_handshake_bound(),
            "the server's handshake lies between curl's connect and its first response \
             byte: {what}"
        );
        if i >= DIRECT {
            assert!(
                handshake >= DELAY_MS * MS,
                "the handshake holds the {DELAY_MS} ms its server flight was held back: {what}"
            );
            traced_delayed += handshake;
            curl_delayed += curl.handshake();
        }
    }
    let direct: u64 = reqs.iter().step_by(2).take(DIRECT).map(|r| tls_ns(r)).sum();
    let curl_direct: u64 = curls[..DIRECT].iter().map(CurlTimes::handshake).sum();
    eprintln!(
        "nginx handshakes, tracer against curl: {DIRECT} direct {} us against {} us, \
         {DELAYED} delayed {} us against {} us",
        direct / 1000,
        curl_direct / 1000,
        traced_delayed / 1000,
        curl_delayed / 1000
    );
    // Both peers' handshakes hold the delay; the client's also holds its TLS set-up and the
    // server's wake-up for the ClientHello, a few ms each.
    assert!(
        traced_delayed * 10 >= curl_delayed * 8,
        "tracer {traced_delayed} ns against curl's {curl_delayed} ns for the {DELAYED} \
         delayed handshakes"
    );

    // Every handshake is carried by exactly one request, in full.
    let carried: u64 = reqs.iter().map(|r| tls_ns(r)).sum();
    assert_eq!(carried, phases_total(t), "{t:?}");
    assert_eq!(
        done.summary().breakdown[&Cause::TlsHandshake].total_ns,
        carried
    );
}

/// `--sample 3` on nginx serving HTTPS: the handshake probes fire on every connection, the
/// socket programs report the picked connections only. Each picked connection shows as its
/// two requests, the first carrying its handshake; the handshakes counted are the picked
/// connections' only (an unpicked one's handshake, seen on no socket, is not counted), and
/// every handshake counted is carried by a request. 24 connections, one after the other:
/// none picked, or all, happen once in about 10^4 and 10^11 runs.
#[test]
#[ignore = "needs root"]
fn nginx_sampled_connections_count_their_own_handshakes_only() {
    require_openssl();
    const CONNECTIONS: usize = 24;
    let tls13: &[&str] = &["--tlsv1.3"];
    let nginx = Nginx::start("sampled");
    let tracer = Tracer::attach(nginx.worker)
        .args(["-i", "1", "--slow", "0", "--sample", "3"])
        .start();
    for _ in 0..CONNECTIONS {
        curl_two_requests(nginx.port, tls13);
    }
    let done = tracer.stop();
    drop(nginx);
    assert!(done.status.success(), "tracer failed: {}", done.stderr);

    let mut reqs: Vec<&RequestRecord> = done.requests.iter().collect();
    reqs.sort_by_key(|r| r.start_ns);
    let picked = reqs.iter().filter(|r| tls_ns(r) > 0).count();
    assert!(
        (1..CONNECTIONS).contains(&picked),
        "some connections picked, not all: {picked} of {CONNECTIONS}\n{}",
        done.describe()
    );
    assert_eq!(
        reqs.len(),
        2 * picked,
        "both requests of each picked connection, none of the others: {reqs:#?}"
    );
    for pair in reqs.chunks(2) {
        assert!(
            tls_ns(pair[0]) > 0 && tls_ns(pair[1]) == 0,
            "a picked connection's first request carries its handshake: {pair:#?}"
        );
    }
    let t = &done.summary().tls;
    assert_eq!(
        t.handshakes.duration_ns.count, picked as u64,
        "the picked connections' handshakes only: {t:?}"
    );
    let carried: u64 = reqs.iter().map(|r| tls_ns(r)).sum();
    assert_eq!(carried, phases_total(t), "{t:?}");
}

/// A Go crypto/tls server, plain, stripped, and stripped position-independent: its handshake
/// functions are found (in the symbol table, or in .gopclntab) and hooked at entry and RETs,
/// each connection's first request carries its handshake, and the target keeps serving after
/// the tracer detaches.
#[test]
#[ignore = "needs root"]
fn go_crypto_tls_handshakes_are_hooked_with_uprobes() {
    require_openssl();
    let dir = TempDir::new("go");
    let cert = make_cert(dir.path());
    for (stripped, pie) in [(false, false), (true, false), (true, true)] {
        let server = https_server(&go_server(dir.path(), GoBuild { stripped, pie }), &cert);
        let name = match (stripped, pie) {
            (false, _) => "tls-go",
            (true, false) => "tls-go-stripped",
            (true, true) => "tls-go-stripped-pie",
        };
        let tracer = Tracer::attach(server.pid)
            .args(["-i", "1", "--slow", "0"])
            .start();
        const CONNECTIONS: usize = 3;
        let urls = ["/", "/sleep?ms=30"].map(|p| format!("https://{}{p}", server.addr));
        let curl = || {
            Command::new("curl")
                .args([
                    "-sk",
                    "--http1.1",
                    "--max-time",
                    "20",
                    "-w",
                    "%{http_code} %{num_connects}\\n",
                ])
                .args(["-o", "/dev/null", "-o", "/dev/null"])
                .args(&urls)
                .output()
                .expect("run curl")
        };
        for _ in 0..CONNECTIONS {
            let out = curl();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "200 1\n200 0\n",
                "{out:?}"
            );
        }
        let done = tracer.stop();
        let after = curl();
        let alive = server.alive();
        drop(server);
        assert!(done.status.success(), "tracer failed: {}", done.stderr);
        assert!(
            alive,
            "the Go server keeps running after the tracer detached"
        );
        assert_eq!(String::from_utf8_lossy(&after.stdout), "200 1\n200 0\n");
        let t = &done.summary().tls;
        let found_in = if stripped {
            ".gopclntab"
        } else {
            "symbol table"
        };
        let library = t.library.as_deref().unwrap_or_default();
        assert!(
            library.starts_with("Go crypto/tls (go1.") && library.contains(found_in),
            "{name}: {t:?}"
        );
        assert!(
            done.stderr.contains("TLS: Go crypto/tls")
                && done.stderr.contains("(*Conn).serverHandshake (entry + "),
            "the tracer says what it hooked: {}",
            done.stderr
        );
        let hs = &t.handshakes;
        assert_eq!(hs.duration_ns.count, CONNECTIONS as u64, "{name}: {t:?}");
        assert_eq!(hs.by_version.tls13, CONNECTIONS as u64, "{name}: {hs:?}");
        assert_eq!(hs.full, CONNECTIONS as u64, "{name}: {hs:?}");
        let mut reqs: Vec<&RequestRecord> = done.requests.iter().collect();
        assert_eq!(reqs.len(), CONNECTIONS * 2, "{name}: {reqs:?}");
        reqs.sort_by_key(|r| r.start_ns);
        for pair in reqs.chunks(2) {
            assert!(
                tls_ns(pair[0]) > 0 && tls_ns(pair[1]) == 0,
                "{name}: {pair:?}"
            );
            assert!(pair[1].latency_ns >= 27 * MS, "{name}: {pair:?}");
        }
    }
}

/// A Go server whose clients' second flight is held back: the goroutine parks in the
/// netpoller and may resume on another thread; the wait is `peer_wait`, and the handshake's
/// duration is right.
#[test]
#[ignore = "needs root"]
fn go_handshake_waiting_for_a_delayed_client_is_peer_wait() {
    require_openssl();
    const DELAY_MS: u64 = 150;
    const CONNECTIONS: u64 = 4;
    let dir = TempDir::new("go-delay");
    let server = https_server(
        &go_server(dir.path(), GoBuild::STRIPPED),
        &make_cert(dir.path()),
    );
    let proxy = DelayProxy::start(server.addr.port(), Duration::from_millis(DELAY_MS));
    let tracer = Tracer::attach(server.pid).args(["-i", "1"]).start();
    for _ in 0..CONNECTIONS {
        s_client(proxy.port);
    }
    let done = tracer.stop();
    let alive = server.alive();
    drop(server);
    assert!(done.status.success(), "tracer failed: {}", done.stderr);
    assert!(
        alive,
        "the Go server keeps running after the tracer detached"
    );
    assert_delayed_handshakes(&done.summary().tls, CONNECTIONS, DELAY_MS);
}
