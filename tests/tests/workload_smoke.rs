//! Functional checks of the `workload` binary itself (no root, no tracer).
//!
//! Lives here rather than in `src/` because cargo only provides
//! `CARGO_BIN_EXE_workload` (and only builds the binary) for integration tests.

use std::path::Path;
use std::time::Duration;
use tracer_tests::{load_result, process_running, run_load_exe, wait_for, HttpClient, Workload};

const MS: u64 = 1_000_000;

fn workload_exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_workload"))
}

#[test]
fn endpoints_on_one_keep_alive_connection() {
    let data_dir = std::env::temp_dir();
    let workload = Workload::spawn_exe(workload_exe(), &["--data-dir", data_dir.to_str().unwrap()]);
    assert_eq!(workload.pid, workload.child.id());
    let mut client = HttpClient::connect(workload.addr).unwrap();
    let local_port = client.stream().local_addr().unwrap().port();

    let root = client.get("/").unwrap();
    assert_eq!((root.status, root.body.as_slice()), (200, &b"ok\n"[..]));
    assert_eq!(root.header("x-handler-ns"), Some("0"));

    let sleep = client.get("/sleep?ms=20").unwrap();
    assert_eq!(sleep.status, 200);
    assert!(
        (20 * MS..100 * MS).contains(&sleep.handler_ns()),
        "{sleep:?}"
    );

    let lock = client.get("/lock?ms=30").unwrap();
    assert_eq!(lock.status, 200);
    assert!(lock.handler_ns() >= 25 * MS, "{lock:?}");

    let io = client.get("/io?ms=20").unwrap();
    assert_eq!(io.status, 200);
    assert!(io.handler_ns() >= 18 * MS, "{io:?}");

    let disk = client.get("/disk?kb=256").unwrap();
    assert_eq!(disk.status, 200);
    let fsync_ns: u64 = disk
        .header("X-Fsync-Ns")
        .expect("X-Fsync-Ns")
        .parse()
        .unwrap();
    assert!(fsync_ns <= disk.handler_ns(), "{disk:?}");

    let cpu = client.get("/cpu?ms=10").unwrap();
    assert_eq!(cpu.status, 200);
    assert!(cpu.handler_ns() >= 10 * MS, "{cpu:?}");

    assert_eq!(client.get("/nope").unwrap().status, 404);
    assert_eq!(client.get("/sleep").unwrap().status, 400);
    assert_eq!(client.get("/disk?kb=x").unwrap().status, 400);

    // Everything above went over the same connection.
    assert_eq!(client.stream().local_addr().unwrap().port(), local_port);
    assert_eq!(client.get("/").unwrap().status, 200);
    // The connection's /disk file goes with the connection.
    drop(client);
    let leftovers = || {
        std::fs::read_dir(&data_dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name();
                name.to_string_lossy()
                    .starts_with(&format!("workload-{}-", workload.pid))
            })
            .count()
    };
    wait_for(Duration::from_secs(10), || match leftovers() {
        0 => Ok(()),
        n => Err(format!(
            "/disk left its file behind after the connection closed ({n} files)"
        )),
    });
}

/// Thread per connection: a request is answered while another connection's handler is still
/// sleeping. Decided by order, not by time: the first connection's handler sleeps a minute,
/// far longer than anything the second one can take, and its response must still be pending
/// once the second one's has come.
#[test]
fn concurrent_connections_are_served() {
    use std::io::Write;
    let workload = Workload::spawn_exe(workload_exe(), &[]);
    let sleeping = HttpClient::connect(workload.addr).unwrap();
    sleeping
        .stream()
        .write_all(b"GET /sleep?ms=60000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut other = HttpClient::connect(workload.addr).unwrap();
    assert_eq!(other.get("/cpu?ms=1").unwrap().status, 200);
    sleeping.stream().set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let pending = sleeping.stream().peek(&mut byte);
    assert!(
        matches!(&pending, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the sleeping request must still be pending: {pending:?}"
    );
}

#[test]
fn malformed_request_closes_only_that_connection() {
    use std::io::{Read, Write};
    let workload = Workload::spawn_exe(workload_exe(), &[]);
    let mut raw = std::net::TcpStream::connect(workload.addr).unwrap();
    raw.write_all(b"garbage\r\n\r\n").unwrap();
    let mut reply = String::new();
    raw.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply:?}");
    assert_eq!(workload.client().get("/").unwrap().status, 200);
}

#[test]
fn load_generator_reports_json() {
    let workload = Workload::spawn_exe(workload_exe(), &[]);
    let child = run_load_exe(workload_exe(), workload.addr, &["/"], 2, 1.0, None);
    let result = load_result(child);
    assert!(result.requests > 0, "{result:?}");
    assert_eq!(result.errors, 0, "{result:?}");
    assert!(result.p50_us <= result.p99_us && result.p99_us <= result.max_us);
    assert!((0.9..5.0).contains(&result.duration_s), "{result:?}");
}

#[test]
fn load_generator_honours_request_cap() {
    let workload = Workload::spawn_exe(workload_exe(), &[]);
    let paths = ["/", "/sleep?ms=1"];
    let child = run_load_exe(workload_exe(), workload.addr, &paths, 3, 10.0, Some(20));
    let result = load_result(child);
    assert_eq!(result.requests + result.errors, 20, "{result:?}");
    assert!(result.duration_s < 5.0, "{result:?}");
}

#[test]
fn load_generator_refuses_non_loopback() {
    let out = std::process::Command::new(workload_exe())
        .args([
            "load",
            "--addr",
            "192.0.2.1:80",
            "--path",
            "/",
            "--duration",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("non-loopback"));
}

#[test]
fn backend_dies_with_the_server() {
    let mut workload = Workload::spawn_exe(workload_exe(), &[]);
    let children_file = format!("/proc/{0}/task/{0}/children", workload.pid);
    // CONFIG_PROC_CHILDREN: on in Debian's kernels, and this kernel's.
    let children = std::fs::read_to_string(children_file).expect("the workload's children");
    let backend: u32 = children.trim().parse().expect("exactly one backend child");
    workload.child.kill().unwrap();
    workload.child.wait().unwrap();
    wait_for(Duration::from_secs(5), || {
        (!process_running(backend))
            .then_some(())
            .ok_or(format!("backend {backend} outlived the server"))
    });
}
