#!/usr/bin/env python3
"""A server that answers pipelined requests on one connection, one after the other, each
doing a known kind of work, and says in each response what it measured of its own thread:
for the tracer's test of the requests it delimits and times in the kernel (tracer-ebpf's
`stretch.rs`), which a thread serves without leaving its CPU, and of the handover of those
that do leave it.

    pipelined_server.py serve --port P --requests N --spin-ms S --sleep-ms Z

Prints `listening 127.0.0.1:PORT pid PID`, accepts one connection, waits until the N
requests (`GET /<kind> HTTP/1.1\\r\\n\\r\\n`, kind `spin`, `sleep` or `none`, the client sends
them all at once) are all there, so no read waits, then answers each right after reading it:
`spin` spins S ms of its thread's CPU time, `sleep` sleeps Z ms, `none` does nothing. Each
response carries the server's own measurement, from the read's return to just before the
write: `X-Handler-Ns` (wall), `X-Cpu-Ns` (the thread's CPU time) and `X-Runqueue-Ns` (its
wait for a CPU, from /proc/thread-self/schedstat). Then it spins for at most 120 s with no
system call.
"""
import os
import socket
import sys
import time

KINDS = (b"spin", b"sleep", b"none")


def run_delay_ns():
    with open("/proc/thread-self/schedstat") as f:
        return int(f.read().split()[1])


def read_request(conn):
    """One request head, read alone (its length found with a peek, which the tracer does not
    count as a read): one read per request, as a server that parses as it reads does."""
    ahead = conn.recv(1 << 16, socket.MSG_PEEK)
    end = ahead.find(b"\r\n\r\n")
    if end < 0:
        sys.exit("pipelined_server: a request is missing")
    head = conn.recv(end + 4)
    if len(head) != end + 4:
        sys.exit("pipelined_server: a short read")
    return head[:end]


def main():
    args = sys.argv[1:]

    def arg(name, default):
        return int(args[args.index(name) + 1]) if name in args else default

    port, requests = arg("--port", 0), arg("--requests", 16)
    spin_ns, sleep_s = arg("--spin-ms", 5) * 1_000_000, arg("--sleep-ms", 20) / 1000
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", port))
    listener.listen(1)
    print(f"listening 127.0.0.1:{listener.getsockname()[1]} pid {os.getpid()}", flush=True)
    conn, _ = listener.accept()
    # All of them at once: each read below finds its request already there.
    while conn.recv(1 << 16, socket.MSG_PEEK).count(b"\r\n\r\n") < requests:
        time.sleep(0.01)
    for _ in range(requests):
        head = read_request(conn)
        start, cpu, queued = time.monotonic_ns(), time.thread_time_ns(), run_delay_ns()
        kind = head.split(b" ")[1].lstrip(b"/")
        if kind == b"spin":
            while time.thread_time_ns() - cpu < spin_ns:
                pass
        elif kind == b"sleep":
            time.sleep(sleep_s)
        elif kind not in KINDS:
            sys.exit(f"pipelined_server: unknown request {head!r}")
        cpu, queued = time.thread_time_ns() - cpu, run_delay_ns() - queued
        handler = time.monotonic_ns() - start
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
            + f"X-Handler-Ns: {handler}\r\nX-Cpu-Ns: {cpu}\r\nX-Runqueue-Ns: {queued}\r\n\r\n".encode()
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pass


if __name__ == "__main__":
    main()
