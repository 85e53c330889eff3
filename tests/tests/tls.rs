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

use serde_json::Value;
use tracer_tests::{is_root, session::TracerSession};

const MS: u64 = 1_000_000;

/// `openssl s_server` on an ephemeral port with a throw-away certificate; killed on drop.
struct SServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl SServer {
    fn start(name: &str) -> SServer {
        Self::start_with(name, &[])
    }

    /// `extra`: more s_server flags, e.g. `-www`.
    fn start_with(name: &str, extra: &[&str]) -> SServer {
        let dir = std::env::temp_dir().join(format!("tracer-tls-{name}-{}", std::process::id()));
        let (cert, key) = make_cert(&dir);
        let port = free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .args(extra)
            // Its stdin stays open (piped, never written): on EOF it would stop serving.
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start openssl s_server");
        wait_listening(port);
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A throw-away self-signed certificate and key in `dir`: (cert, key).
fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-subj", "/CN=localhost", "-days", "1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl req (the openssl package)");
    assert!(status.success(), "openssl req failed");
    (cert, key)
}

/// Start an HTTPS test server (`EXE CERT KEY`) that prints `listening ADDR pid PID`.
/// A test server process, killed when dropped (also when a test fails).
struct Server(Child);

impl Server {
    /// Still running?
    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_https_server(exe: &Path, cert: &Path, key: &Path) -> (Server, std::net::SocketAddr, u32) {
    let mut server = Command::new(exe)
        .arg(cert)
        .arg(key)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let (addr, pid) = tracer_tests::parse_listening_line(&line)
        .unwrap_or_else(|| panic!("{} printed {line:?}", exe.display()));
    (Server(server), addr, pid)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "s_server did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // That probe connection was a (failed) handshake of its own; let s_server drop it.
    std::thread::sleep(Duration::from_millis(200));
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

/// A TCP proxy to `upstream` that forwards the client's first flight at once and holds each
/// later client chunk back by `delay`. Serves connections one at a time until dropped.
struct DelayProxy {
    port: u16,
}

impl DelayProxy {
    fn start(upstream: u16, delay: Duration) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                relay(client, server, delay);
            }
        });
        DelayProxy { port }
    }
}

fn relay(client: TcpStream, server: TcpStream, delay: Duration) {
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let upstream = std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        let mut chunks = 0;
        while let Ok(n @ 1..) = c_read.read(&mut buf) {
            if chunks > 0 {
                std::thread::sleep(delay);
            }
            chunks += 1;
            if s_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let mut buf = [0u8; 16384];
    while let Ok(n @ 1..) = s_read.read(&mut buf) {
        if c_write.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = c_write.shutdown(Shutdown::Write);
    let _ = upstream.join();
}

fn tls(summary: &Value) -> &Value {
    &summary["tls"]
}

fn skip_unless_ready() -> bool {
    if !is_root() {
        eprintln!("skipped: needs root (loads eBPF programs)");
        return true;
    }
    assert!(
        Path::new("/usr/bin/openssl").exists(),
        "openssl is missing: run `cargo xtask setup` (it installs Debian's openssl)"
    );
    false
}

#[test]
fn openssl_handshakes_are_counted_and_timed() {
    if skip_unless_ready() {
        return;
    }
    let mut server = SServer::start("count");
    let tracer = TracerSession::start(server.pid(), "tls-count", &["-i", "1"]);
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
    let t = tls(&done.summary);
    assert!(
        t["library"]
            .as_str()
            .unwrap()
            .starts_with("OpenSSL libssl.so"),
        "{t}"
    );
    assert!(
        t["hooked"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "SSL_do_handshake"),
        "{t}"
    );
    assert_eq!(t["handshakes"]["count"].as_u64(), Some(CONNECTIONS), "{t}");
    let phases: u64 = ["cpu", "peer_wait", "runqueue", "other"]
        .iter()
        .map(|p| t["phases"][p]["total_ns"].as_u64().unwrap())
        .sum();
    assert!(phases > 0, "{t}");
    assert!(
        phases <= CONNECTIONS * t["handshakes"]["max"].as_u64().unwrap(),
        "{t}"
    );
    assert!(
        server.alive(),
        "the server keeps running after the tracer detached"
    );
    s_client(server.port);
}

#[test]
fn a_delayed_client_flight_is_peer_wait() {
    if skip_unless_ready() {
        return;
    }
    const DELAY_MS: u64 = 150;
    const CONNECTIONS: u64 = 4;
    let mut server = SServer::start("delay");
    let proxy = DelayProxy::start(server.port, Duration::from_millis(DELAY_MS));
    let tracer = TracerSession::start(server.pid(), "tls-delay", &["-i", "1"]);
    for _ in 0..CONNECTIONS {
        s_client(proxy.port);
    }
    let done = tracer.stop();
    assert!(done.status.success(), "tracer failed: {}", done.stderr);
    assert_delayed_handshakes(tls(&done.summary), CONNECTIONS, DELAY_MS);
    assert!(server.alive());
}

/// `connections` handshakes whose client's second flight was held back `delay_ms`: each
/// takes the delay plus the rest of the handshake (a few ms of ECDHE and signatures here),
/// at least 90% of the delay is `peer_wait`, and the CPU time is below it.
fn assert_delayed_handshakes(t: &Value, connections: u64, delay_ms: u64) {
    assert_eq!(t["handshakes"]["count"].as_u64(), Some(connections), "{t}");
    let p50 = t["handshakes"]["p50"].as_u64().unwrap();
    assert!(
        (delay_ms * MS..delay_ms * MS + 100 * MS).contains(&p50),
        "handshake p50 {p50} ns for a {delay_ms} ms delay: {t}"
    );
    let peer_wait = t["phases"]["peer_wait"]["total_ns"].as_u64().unwrap();
    assert!(
        peer_wait >= connections * delay_ms * MS * 9 / 10,
        "peer_wait {peer_wait} ns for {connections} handshakes delayed {delay_ms} ms: {t}"
    );
    let cpu = t["phases"]["cpu"]["total_ns"].as_u64().unwrap();
    assert!(cpu < peer_wait, "the delay is waiting, not CPU: {t}");
}

/// Nothing the peers exchanged reaches the tracer's output, its files or even its full event
/// stream (`TRACER_EVENT_DUMP`): not TLS plaintext sent through s_client, and not plaintext
/// written to the socket (whose first 5 bytes the kernel side classifies).
#[test]
fn no_payload_bytes_reach_userspace() {
    if skip_unless_ready() {
        return;
    }
    const MARKER: &str = "PAYLOAD-MARKER-7f3a9c-do-not-record";
    let server = SServer::start("payload");
    let dump = std::env::temp_dir().join(format!("tracer-payload-dump-{}", std::process::id()));
    let tracer = TracerSession::start_with_env(
        server.pid(),
        "tls-payload",
        &["-i", "1", "--slow", "0"],
        &[("TRACER_EVENT_DUMP", &dump)],
    );
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
    assert_eq!(tls(&done.summary)["handshakes"]["count"].as_u64(), Some(1));
    let mut outputs = vec![
        ("stdout".to_string(), done.stdout.into_bytes()),
        ("stderr".to_string(), done.stderr.into_bytes()),
        ("event dump".to_string(), std::fs::read(&dump).unwrap()),
    ];
    for file in std::fs::read_dir(&done.out).unwrap() {
        let path = file.unwrap().path();
        outputs.push((path.display().to_string(), std::fs::read(&path).unwrap()));
    }
    let _ = std::fs::remove_file(&dump);
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
fn versions_and_resumption_are_reported() {
    if skip_unless_ready() {
        return;
    }
    let server = SServer::start("versions");
    let tracer = TracerSession::start(server.pid(), "tls-versions", &["-i", "1"]);
    for version in ["-tls1_2", "-tls1_3"] {
        let session = server.dir.join(format!("session{version}"));
        assert!(!s_client_session(server.port, version, &session, false));
        assert!(
            s_client_session(server.port, version, &session, true),
            "s_client did not resume its {version} session"
        );
    }
    let done = tracer.stop();
    assert!(done.status.success(), "tracer failed: {}", done.stderr);
    let hs = &tls(&done.summary)["handshakes"];
    assert_eq!(hs["count"].as_u64(), Some(4), "{hs}");
    assert_eq!(hs["by_version"]["TLSv1.2"].as_u64(), Some(2), "{hs}");
    assert_eq!(hs["by_version"]["TLSv1.3"].as_u64(), Some(2), "{hs}");
    assert_eq!(hs["resumed"].as_u64(), Some(2), "{hs}");
    assert_eq!(hs["full"].as_u64(), Some(2), "{hs}");
    assert!(
        done.stdout
            .contains("TLSv1.3 2, TLSv1.2 2, version unknown 0; resumed 2, full 2"),
        "{}",
        done.stdout
    );
}

#[test]
fn tls_off_hooks_nothing() {
    if skip_unless_ready() {
        return;
    }
    let server = SServer::start("off");
    let tracer = TracerSession::start(server.pid(), "tls-off", &["--tls", "off"]);
    s_client(server.port);
    let done = tracer.stop();
    let t = tls(&done.summary);
    assert_eq!(t["handshakes"]["count"].as_u64(), Some(0), "{t}");
    assert!(
        t["not_hooked_because"]
            .as_str()
            .unwrap()
            .contains("--tls off"),
        "{t}"
    );
}

/// `openssl s_server -www` drives OpenSSL through a BIO: no exported handshake, read or write
/// function is called, so no uprobe sees its handshakes. The TLS record framing on the
/// socket does: each connection's handshake is one handshake, not requests, and the
/// connection's one request carries it.
#[test]
fn bio_driven_server_handshakes_are_seen_in_the_record_framing() {
    if skip_unless_ready() {
        return;
    }
    let server = SServer::start_with("www", &["-www"]);
    let tracer = TracerSession::start(server.pid(), "tls-www", &["-i", "1", "--slow", "0"]);
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
    let t = tls(&done.summary);
    assert_eq!(t["handshakes"]["count"].as_u64(), Some(CONNECTIONS), "{t}");
    assert_eq!(
        done.summary["requests"]["count"].as_u64(),
        Some(CONNECTIONS),
        "one request per connection, not one per handshake flight: {:?}",
        done.requests
    );
    for r in &done.requests {
        let hs = r["breakdown"]["tls_handshake"].as_u64().unwrap();
        assert!(
            hs > 0,
            "the connection's first request carries its handshake: {r}"
        );
        assert!(hs < r["latency_ns"].as_u64().unwrap(), "{r}");
    }
}

/// `tls-server` (the `openssl` crate against the system's libssl.so.3) and
/// `tls-server-static` (the same server with Debian's libssl.a linked in: no libssl.so
/// mapped, the SSL_* functions are in the executable): an explicit `SSL_accept` per
/// connection, then keep-alive HTTPS requests. Only each connection's first request carries
/// the handshake. The static run also probes SSL_read/SSL_write (`--tls-io-probes`): the same
/// results, with the read and write functions hooked.
#[test]
fn rust_openssl_servers_shared_and_static_carry_the_handshake_on_the_first_request() {
    if skip_unless_ready() {
        return;
    }
    for (binary, library, io_probes) in [
        ("tls-server", "TLS: OpenSSL libssl.so.3", false),
        ("tls-server-static", "TLS: OpenSSL static (", true),
    ] {
        rust_openssl_server(binary, library, io_probes);
    }
}

fn rust_openssl_server(binary: &str, library: &str, io_probes: bool) {
    let dir = std::env::temp_dir().join(format!("tracer-{binary}-{}", std::process::id()));
    let (cert, key) = make_cert(&dir);
    let (server, addr, pid) = spawn_https_server(&tracer_tests::bin_path(binary), &cert, &key);

    let mut args = vec!["-i", "1", "--slow", "0"];
    if io_probes {
        args.push("--tls-io-probes");
    }
    let tracer = TracerSession::start(pid, binary, &args);
    const CONNECTIONS: usize = 3;
    let urls = ["/", "/sleep?ms=30", "/"].map(|p| format!("https://{addr}{p}"));
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
    let _ = std::fs::remove_dir_all(&dir);
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
    let t = tls(&done.summary);
    assert_eq!(
        t["handshakes"]["count"].as_u64(),
        Some(CONNECTIONS as u64),
        "{binary}: {t}"
    );
    assert_eq!(done.requests.len(), CONNECTIONS * 3, "{:?}", done.requests);
    // Per connection (one server thread each), in order: the first request carries the
    // handshake, the others none; the second one sleeps.
    let mut by_thread: std::collections::BTreeMap<u64, Vec<&Value>> = Default::default();
    for r in &done.requests {
        by_thread
            .entry(r["tid"].as_u64().unwrap())
            .or_default()
            .push(r);
    }
    assert_eq!(by_thread.len(), CONNECTIONS, "{:?}", done.requests);
    for reqs in by_thread.values_mut() {
        reqs.sort_by_key(|r| r["start_ns"].as_u64());
        let hs: Vec<u64> = reqs
            .iter()
            .map(|r| r["breakdown"]["tls_handshake"].as_u64().unwrap())
            .collect();
        assert!(hs[0] > 0 && hs[1] == 0 && hs[2] == 0, "{reqs:?}");
        let slept = reqs[1]["breakdown"]["sleep"].as_u64().unwrap();
        assert!(slept >= 27 * MS, "{reqs:?}");
    }
}

/// How a Go test server is built.
#[derive(Clone, Copy)]
struct GoBuild {
    stripped: bool,
    pie: bool,
}

/// Build `tests/go/https_server.go` with Debian's Go into `dir`.
fn build_go_server(dir: &Path, build: GoBuild) -> PathBuf {
    let go = Path::new("/usr/bin/go");
    assert!(
        go.exists(),
        "go is missing: run `cargo xtask setup` (it installs golang-go)"
    );
    let source = tracer_tests::workspace_root().join("tests/go/https_server.go");
    let out = dir.join(format!(
        "https_server{}{}",
        if build.stripped { "_stripped" } else { "" },
        if build.pie { "_pie" } else { "" }
    ));
    let mut cmd = Command::new(go);
    cmd.arg("build").arg("-o").arg(&out);
    if build.stripped {
        cmd.arg("-ldflags=-s -w");
    }
    if build.pie {
        cmd.arg("-buildmode=pie"); // .gopclntab becomes .data.rel.ro.gopclntab
    }
    let result = cmd
        .arg(&source)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOFLAGS", "-mod=mod")
        .env("GO111MODULE", "off")
        .output()
        .expect("run go build");
    assert!(
        result.status.success(),
        "go build failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

/// A Go crypto/tls server, plain, stripped, and stripped position-independent: its handshake
/// functions are found (in the symbol table, or in .gopclntab) and hooked at entry and RETs,
/// each connection's first request carries its handshake, and the target keeps serving after
/// the tracer detaches.
#[test]
fn go_crypto_tls_handshakes_are_hooked_with_uprobes() {
    if skip_unless_ready() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("tracer-tls-go-{}", std::process::id()));
    let (cert, key) = make_cert(&dir);
    for (stripped, pie) in [(false, false), (true, false), (true, true)] {
        let exe = build_go_server(&dir, GoBuild { stripped, pie });
        let (mut server, addr, pid) = spawn_https_server(&exe, &cert, &key);
        let name = match (stripped, pie) {
            (false, _) => "tls-go",
            (true, false) => "tls-go-stripped",
            (true, true) => "tls-go-stripped-pie",
        };
        let tracer = TracerSession::start(pid, name, &["-i", "1", "--slow", "0"]);
        const CONNECTIONS: usize = 3;
        let urls = ["/", "/sleep?ms=30"].map(|p| format!("https://{addr}{p}"));
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
        let t = tls(&done.summary);
        let found_in = if stripped {
            ".gopclntab"
        } else {
            "symbol table"
        };
        let library = t["library"].as_str().unwrap_or_default();
        assert!(
            library.starts_with("Go crypto/tls (go1.") && library.contains(found_in),
            "{name}: {t}"
        );
        assert!(
            done.stderr.contains("TLS: Go crypto/tls")
                && done.stderr.contains("(*Conn).serverHandshake (entry + "),
            "the tracer says what it hooked: {}",
            done.stderr
        );
        assert_eq!(
            t["handshakes"]["count"].as_u64(),
            Some(CONNECTIONS as u64),
            "{name}: {t}"
        );
        let hs = &t["handshakes"];
        assert_eq!(
            hs["by_version"]["TLSv1.3"].as_u64(),
            Some(CONNECTIONS as u64),
            "{name}: {hs}"
        );
        assert_eq!(
            hs["full"].as_u64(),
            Some(CONNECTIONS as u64),
            "{name}: {hs}"
        );
        let mut reqs: Vec<&Value> = done.requests.iter().collect();
        assert_eq!(reqs.len(), CONNECTIONS * 2, "{name}: {reqs:?}");
        reqs.sort_by_key(|r| r["start_ns"].as_u64());
        for pair in reqs.chunks(2) {
            let hs = |r: &Value| r["breakdown"]["tls_handshake"].as_u64().unwrap();
            assert!(hs(pair[0]) > 0 && hs(pair[1]) == 0, "{name}: {pair:?}");
            assert!(
                pair[1]["latency_ns"].as_u64().unwrap() >= 27 * MS,
                "{name}: {pair:?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Go server whose clients' second flight is held back: the goroutine parks in the
/// netpoller and may resume on another thread; the wait is `peer_wait`, and the handshake's
/// duration is right.
#[test]
fn go_handshake_waiting_for_a_delayed_client_is_peer_wait() {
    if skip_unless_ready() {
        return;
    }
    const DELAY_MS: u64 = 150;
    const CONNECTIONS: u64 = 4;
    let dir = std::env::temp_dir().join(format!("tracer-tls-go-delay-{}", std::process::id()));
    let (cert, key) = make_cert(&dir);
    let exe = build_go_server(
        &dir,
        GoBuild {
            stripped: true,
            pie: false,
        },
    );
    let (mut server, addr, pid) = spawn_https_server(&exe, &cert, &key);
    let proxy = DelayProxy::start(addr.port(), Duration::from_millis(DELAY_MS));
    let tracer = TracerSession::start(pid, "tls-go-delay", &["-i", "1"]);
    for _ in 0..CONNECTIONS {
        s_client(proxy.port);
    }
    let done = tracer.stop();
    let alive = server.alive();
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(done.status.success(), "tracer failed: {}", done.stderr);
    assert!(
        alive,
        "the Go server keeps running after the tracer detached"
    );
    assert_delayed_handshakes(tls(&done.summary), CONNECTIONS, DELAY_MS);
}
