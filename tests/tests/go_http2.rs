//! HTTP/2 against a real Go net/http service (`tests/go/go_service.go` run as `h2 CERT KEY`):
//! curl sends several requests as streams of one TLS connection. Each stream's handler runs
//! in a goroutine of its own, and the connection's own goroutines read and write every
//! stream's frames; the tracer must report one request per stream, timed on its handler's
//! goroutine, whose cause matches what the handler measured itself (its X-*-Ns header, as
//! the goroutine attribution test compares them), and no request made of the connection's
//! frames.

use std::{
    collections::{BTreeMap, VecDeque},
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use tracer::{engine::Cause, output::jsonl::RequestRecord};
use tracer_support::go::{build_go_program, go_service_source, GoBuild, Toolchain};
use tracer_tests::{session::Tracer, support::tls::make_cert, TempDir, Workload};

const MS: u64 = 1_000_000;
const ROUNDS: usize = 3;

/// Each endpoint, the cause its handler waits in, and the header that says how long.
const PLAN: [(&str, Cause, &str); 3] = [
    ("/sleep?ms=20", Cause::Sleep, "x-sleep-ns"),
    ("/lock?ms=20", Cause::Lock, "x-lock-ns"),
    ("/chan?ms=20", Cause::Chan, "x-chan-ns"),
];

/// The handlers' headers curl is asked for.
const HEADERS: [&str; 4] = ["x-handler-ns", "x-sleep-ns", "x-lock-ns", "x-chan-ns"];

/// What curl reported of one transfer.
struct Answer {
    http_version: String,
    status: u16,
    /// Each of [`HEADERS`] the response had, with its value.
    headers: BTreeMap<&'static str, u64>,
}

/// `curl --http2` sends `paths` one after another as streams of one connection to `port`.
fn http2_requests(port: u16, paths: &[&str]) -> Vec<Answer> {
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--insecure", "--http2"]);
    // One format for every transfer (it is a global option).
    let headers: Vec<String> = HEADERS.iter().map(|h| format!("%header{{{h}}}")).collect();
    cmd.arg("--write-out").arg(format!(
        "%{{http_version}} %{{http_code}} {}\n",
        headers.join(" ")
    ));
    for path in paths {
        cmd.args(["--output", "/dev/null"])
            .arg(format!("https://127.0.0.1:{port}{path}"));
    }
    let out = cmd.output().expect("run curl");
    assert!(out.status.success(), "curl: {out:?}");
    let stdout = String::from_utf8(out.stdout).expect("curl's output");
    let answers: Vec<Answer> = stdout
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 2 + HEADERS.len(), "curl wrote {line:?}");
            Answer {
                http_version: fields[0].to_string(),
                status: fields[1].parse().expect("status"),
                headers: HEADERS
                    .iter()
                    .zip(&fields[2..])
                    .filter_map(|(&h, v)| Some((h, v.parse().ok()?)))
                    .collect(),
            }
        })
        .collect();
    assert_eq!(answers.len(), paths.len(), "{stdout}");
    answers
}

/// The Go service built with `toolchain` as `build`, serving HTTPS with HTTP/2 offered
/// (`go_service h2 CERT KEY`); its build directory goes with it.
fn start_http2_service(dir: &str, toolchain: Toolchain, build: GoBuild) -> (TempDir, Workload) {
    let dir = TempDir::new(dir);
    let exe = build_go_program(&go_service_source(), dir.path(), build, toolchain)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let cert = make_cert(dir.path()).unwrap_or_else(|e| panic!("{e:#}"));
    let mut cmd = Command::new(&exe);
    cmd.arg("h2").arg(&cert.cert).arg(&cert.key);
    (dir, Workload::start(cmd))
}

/// A request's time runnable (for Go's scheduler or a CPU) or running: what a handler's own
/// measure of a wait holds besides the park itself.
fn runnable_or_running(r: &RequestRecord) -> u64 {
    [Cause::GoRunqueue, Cause::Runqueue, Cause::OnCpu]
        .iter()
        .map(|c| r.breakdown[c])
        .sum()
}

fn each_stream_is_a_request(toolchain: Toolchain, build: GoBuild) {
    let (_dir, service) = start_http2_service("go-http2", toolchain, build);
    let tracer = Tracer::attach(service.pid).args(["--slow", "0"]).start();
    let plan: Vec<&str> = (0..ROUNDS)
        .flat_map(|_| PLAN.iter().map(|&(path, _, _)| path))
        .collect();
    let answers = http2_requests(service.addr.port(), &plan);
    let done = tracer.stop();
    assert!(done.status.success(), "tracer failed: {}", done.describe());
    assert!(
        done.stderr.contains("HTTP/2"),
        "the start-up line names the HTTP/2 probes: {}",
        done.stderr
    );

    // Stacks only where a stream's handler waits: the connection's goroutines, which park
    // between every frame they move, take none (about 13 a stream when they did).
    let stacks = done.summary().stacks.taken;
    assert!(
        stacks <= 6 * plan.len() as u64,
        "{stacks} stacks for {} streams",
        plan.len()
    );
    let mut traced: Vec<&RequestRecord> = done.requests.iter().collect();
    traced.sort_by_key(|r| r.start_ns);
    assert_eq!(
        traced.len(),
        plan.len(),
        "one request per stream, none of the connection's frames: {traced:#?}"
    );
    let goids: std::collections::BTreeSet<Option<u64>> = traced.iter().map(|r| r.goid).collect();
    assert_eq!(
        goids.len(),
        plan.len(),
        "a goroutine per stream: {traced:#?}"
    );
    for ((answer, r), &(path, cause, header)) in
        answers.iter().zip(&traced).zip(PLAN.iter().cycle())
    {
        assert_eq!((answer.http_version.as_str(), answer.status), ("2", 200));
        assert_eq!(r.fd, None, "{path}: a stream, not a connection: {r:?}");
        assert!(r.goid.is_some(), "{path}: {r:?}");
        assert_eq!(
            r.latency_ns,
            r.breakdown.values().sum::<u64>(),
            "{path}: causes sum to the latency: {r:?}"
        );
        // As the goroutine attribution test checks a wait: the traced park is no shorter
        // than what the handler measured less the time it was runnable or running in it, and
        // no longer than the measure plus the request's time outside the handler. Outside
        // it, an HTTP/2 handler's goroutine parks too: it hands its response to the
        // connection's goroutine over channels, and waits for it to write the frames.
        let header_ns = |name: &str| -> u64 {
            *answer
                .headers
                .get(name)
                .unwrap_or_else(|| panic!("{path}: no {name}"))
        };
        let measured = header_ns(header);
        let outside = r.latency_ns.saturating_sub(header_ns("x-handler-ns"));
        let park = r.breakdown[&cause];
        let scheduling = runnable_or_running(r);
        assert!(
            park <= measured + outside + MS && measured <= park + scheduling + MS,
            "{path}: traced {} {park} ns, the handler measured {measured} ns (outside it: \
             {outside} ns; runnable or running: {scheduling} ns): {r:?}",
            cause.name()
        );
        assert_eq!(r.dominant_cause(), Some(cause), "{path}: {r:?}");
        // The handler's goroutine read no request of its own, yet its park is inside the
        // stream's request: named in the handler's code.
        let wait = r
            .largest_wait
            .as_ref()
            .unwrap_or_else(|| panic!("{path}: no largest wait: {r:?}"));
        assert_eq!(wait.cause, cause, "{path}: {r:?}");
        assert!(
            wait.frames.iter().any(|f| f.starts_with("main.")),
            "{path}: the largest wait's site is in the handler's code: {wait:?}"
        );
    }
    // Unharmed: still answering, over HTTP/2.
    assert!(service.alive(), "the traced service is gone");
    let again = http2_requests(service.addr.port(), &["/sleep?ms=1"]);
    assert_eq!(
        (again[0].http_version.as_str(), again[0].status),
        ("2", 200)
    );
}

/// A slow upload's pause: the client sends its body this long after its request's head.
const UPLOAD_PAUSE: Duration = Duration::from_millis(50);
const UPLOAD_BODY: &[u8] = b"a slow client's body";
/// Uploads whose handler waited for the body at least [`SLOW_BODY_NS`].
const UPLOADS: usize = 3;
const SLOW_BODY_NS: u64 = UPLOAD_PAUSE.as_nanos() as u64 / 2;

/// Lines of curl's trace shown when an upload fails.
const TRACE_LINES_KEPT: usize = 20;

/// What curl reported of an upload, and the headers it was asked for.
const UPLOAD_HEADERS: [&str; 3] = ["x-handler-ns", "x-body-ns", "x-body-bytes"];

/// `curl --http2` uploads [`UPLOAD_BODY`] to `/upload` (`-T -`, streamed from its standard
/// input: the request's head goes first), the body written to curl [`UPLOAD_PAUSE`] after
/// curl's trace says it sent the head (curl's start and TLS handshake take tens of ms with
/// both cores busy); returns curl's HTTP version and status, and [`UPLOAD_HEADERS`]' values.
fn slow_http2_upload(port: u16) -> (String, u16, Vec<u64>) {
    let headers: Vec<String> = UPLOAD_HEADERS
        .iter()
        .map(|h| format!("%header{{{h}}}"))
        .collect();
    let mut curl = Command::new("curl")
        .args(["--silent", "--show-error", "--insecure", "--http2"])
        .args([
            "-X",
            "POST",
            "-T",
            "-",
            "-H",
            "Expect:",
            "--output",
            "/dev/null",
            "--trace-ascii",
            "%", // to stderr, unbuffered
            "--max-time",
            "60",
        ])
        .arg("--write-out")
        .arg(format!(
            "%{{http_version}} %{{http_code}} {}",
            headers.join(" ")
        ))
        .arg(format!("https://127.0.0.1:{port}/upload"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run curl");
    let mut stdin = curl.stdin.take().expect("curl's stdin");
    // curl's trace, read as it comes (so that curl never waits on the pipe): it says when the
    // head went out, and its last lines say what went wrong if curl fails.
    let stderr = curl.stderr.take().expect("curl's stderr");
    let (head_sent_tx, head_sent) = mpsc::channel();
    let trace = thread::spawn(move || {
        let mut last = VecDeque::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("=> Send header") {
                let _ = head_sent_tx.send(());
            }
            last.push_back(line);
            if last.len() > TRACE_LINES_KEPT {
                last.pop_front();
            }
        }
        Vec::from(last).join("\n")
    });
    // Err: curl ended (its --max-time bounds it) without sending the head.
    let sent = head_sent.recv().is_ok();
    if sent {
        thread::sleep(UPLOAD_PAUSE);
        // A failed write (curl gone) is told by curl's status below.
        let _ = stdin.write_all(UPLOAD_BODY);
    }
    drop(stdin);
    let out = curl.wait_with_output().expect("curl's output");
    let trace = trace.join().expect("curl's trace");
    assert!(
        sent && out.status.success(),
        "curl {} (head sent: {sent}); its trace ends:\n{trace}",
        out.status
    );
    let stdout = String::from_utf8(out.stdout).expect("curl's output");
    let fields: Vec<&str> = stdout.split(' ').collect();
    assert_eq!(
        fields.len(),
        2 + UPLOAD_HEADERS.len(),
        "curl wrote {stdout:?}"
    );
    let values = fields[2..]
        .iter()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("curl wrote {stdout:?}"))
        })
        .collect();
    (
        fields[0].to_string(),
        fields[1].parse().expect("status"),
        values,
    )
}

/// An HTTP/2 handler that reads its request's body waits on a `sync.Cond` inside the
/// HTTP/2 server's body read until the connection's goroutine brings the client's DATA:
/// that is a wait for the network (`net_io`), not a lock of the program's.
fn a_slow_upload_waits_on_the_network(toolchain: Toolchain, build: GoBuild) {
    let (_dir, service) = start_http2_service("go-http2-upload", toolchain, build);
    let tracer = Tracer::attach(service.pid).args(["--slow", "0"]).start();
    // The pause runs from when curl sent the head; on a busy machine the handler may still
    // start late. Uploads go on until [`UPLOADS`] of them had the handler wait at least half
    // the pause.
    let mut answers = Vec::new();
    let slow = |(_, _, headers): &(String, u16, Vec<u64>)| headers[1] >= SLOW_BODY_NS;
    while answers.iter().filter(|a| slow(a)).count() < UPLOADS {
        assert!(
            answers.len() < 4 * UPLOADS,
            "the set-up: the handler hardly waited for the bodies: {answers:?}"
        );
        answers.push(slow_http2_upload(service.addr.port()));
    }
    let done = tracer.stop();
    assert!(done.status.success(), "tracer failed: {}", done.describe());
    let mut traced: Vec<&RequestRecord> = done.requests.iter().collect();
    traced.sort_by_key(|r| r.start_ns);
    assert_eq!(
        traced.len(),
        answers.len(),
        "one request per upload: {traced:#?}"
    );
    for ((version, status, headers), r) in answers.iter().zip(&traced) {
        assert_eq!((version.as_str(), *status), ("2", 200));
        let [handler_ns, body_ns, body_bytes] = headers[..] else {
            unreachable!("three headers asked for")
        };
        assert_eq!(body_bytes, UPLOAD_BODY.len() as u64);
        assert_eq!(
            r.latency_ns,
            r.breakdown.values().sum::<u64>(),
            "causes sum to the latency: {r:?}"
        );
        // As `each_stream_is_a_request` checks a park against the handler's measure. The
        // body read also hands each read's size to the connection's goroutine over a
        // channel (`noteBodyReadFromHandler`, for its flow-control window), which waits
        // while that goroutine is busy (4.3 ms of 37 ms with both cores busy): `chan`.
        let outside = r.latency_ns.saturating_sub(handler_ns);
        let net_io = r.breakdown[&Cause::NetIo];
        let handing_over = r.breakdown[&Cause::Chan];
        let scheduling = runnable_or_running(r);
        assert!(
            net_io <= body_ns + outside + MS && body_ns <= net_io + handing_over + scheduling + MS,
            "traced net_io {net_io} ns, the handler's body read took {body_ns} ns (outside \
             it: {outside} ns; chan {handing_over} ns; runnable or running: {scheduling} \
             ns): {r:?}"
        );
        if body_ns >= SLOW_BODY_NS {
            assert!(
                r.breakdown[&Cause::Lock] < body_ns / 2,
                "the wait for the body is no lock: {r:?}"
            );
            assert_eq!(r.dominant_cause(), Some(Cause::NetIo), "{r:?}");
        }
    }
    assert!(service.alive(), "the traced service is gone");
    let again = http2_requests(service.addr.port(), &["/sleep?ms=1"]);
    assert_eq!(again[0].status, 200);
}

tracer_tests::go_tests! {
    check: a_slow_upload_waits_on_the_network;
    /// Debian's Go 1.19: net/http's bundled `http2pipe`.
    go_1_19_http2_upload_waits_on_the_network: Toolchain::System, GoBuild::default();
    /// The newest Go, stripped: `net/http/internal/http2`'s pipe, found in `.gopclntab`.
    go_1_27_stripped_http2_upload_waits_on_the_network:
        Toolchain::GoBin("1.27.3"), GoBuild::STRIPPED;
}

tracer_tests::go_tests! {
    check: each_stream_is_a_request;
    /// Debian's Go 1.19, with its symbol table.
    go_1_19_http2_streams_are_requests: Toolchain::System, GoBuild::default();
    /// The newest Go, stripped: the HTTP/2 server's functions found in `.gopclntab`.
    go_1_27_stripped_http2_streams_are_requests: Toolchain::GoBin("1.27.3"), GoBuild::STRIPPED;
}
