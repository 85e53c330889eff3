//! The line every test server prints once it accepts connections:
//! `listening 127.0.0.1:<port> pid <pid>` (the `workload` server, `tls-server`, the Python
//! and Go targets).

use std::{
    io::{self, BufRead as _, BufReader},
    net::SocketAddr,
    process::ChildStdout,
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

/// Parses `listening 127.0.0.1:<port> pid <pid>` (a trailing newline is fine).
pub fn parse_listening_line(line: &str) -> Option<(SocketAddr, u32)> {
    let mut words = line.split_whitespace();
    if words.next()? != "listening" {
        return None;
    }
    let addr = words.next()?.parse().ok()?;
    if words.next()? != "pid" {
        return None;
    }
    let pid = words.next()?.parse().ok()?;
    words.next().is_none().then_some((addr, pid))
}

/// Waits up to `timeout` for a server's first stdout line and parses it as its listening
/// line: (address, pid). The line is read on a thread, so a silent server cannot hang the
/// caller, and that thread then drains the rest of stdout, so the server never blocks on a
/// full pipe.
pub fn read_listening_line(stdout: ChildStdout, timeout: Duration) -> Result<(SocketAddr, u32)> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut first = String::new();
        let read = reader.read_line(&mut first).map(|_| first);
        let _ = tx.send(read);
        let _ = io::copy(&mut reader, &mut io::sink());
    });
    let line = match rx.recv_timeout(timeout) {
        Ok(read) => read.context("reading its first stdout line")?,
        Err(_) => bail!("it printed no line within {timeout:?}"),
    };
    parse_listening_line(&line).with_context(|| {
        format!(
            "its first stdout line was {:?}, not `listening 127.0.0.1:<port> pid <pid>`",
            line.trim_end()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line() {
        let line = "listening 127.0.0.1:8080 pid 42\n";
        assert_eq!(
            parse_listening_line(line),
            Some(("127.0.0.1:8080".parse().unwrap(), 42))
        );
        assert_eq!(parse_listening_line(""), None);
        assert_eq!(parse_listening_line("hello"), None);
        assert_eq!(parse_listening_line("listening 127.0.0.1:8080"), None);
        assert_eq!(parse_listening_line("listening 127.0.0.1 pid 777"), None);
        assert_eq!(parse_listening_line("listening x pid 1"), None);
        assert_eq!(
            parse_listening_line("listening 127.0.0.1:1 pid 1 extra"),
            None
        );
    }

    #[test]
    fn reads_the_line_and_then_drains() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "echo listening 127.0.0.1:1 pid 7; seq 100000"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let read = read_listening_line(stdout, Duration::from_secs(30)).unwrap();
        assert_eq!(read, ("127.0.0.1:1".parse().unwrap(), 7));
        // seq writes far more than a pipe holds: it ends only because the rest is drained.
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn another_first_line_is_an_error() {
        let mut child = std::process::Command::new("echo")
            .arg("hello")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let err =
            read_listening_line(child.stdout.take().unwrap(), Duration::from_secs(30)).unwrap_err();
        assert!(format!("{err:#}").contains("\"hello\""), "{err:#}");
        let _ = child.wait();
    }
}
