#!/usr/bin/env python3
"""A server that answers a few requests without ever leaving its CPU, then keeps it: for the
tracer's test of the request pairs a CPU gathers (tracer-ebpf's `held_read.rs`), which go out
when their thread leaves the CPU, and otherwise are read from their map when the tracer stops.

    answer_then_spin.py serve --port P --requests N

Prints `listening 127.0.0.1:PORT pid PID`, accepts one connection, and reads N requests of
`GET / HTTP/1.1\\r\\n\\r\\n` (the client sends them all at once, so no read waits), answering
each right after reading it. Then it spins for at most 120 s with no system call.
"""
import os
import socket
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"


def read_exactly(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            sys.exit("answer_then_spin: the client closed early")
        data += chunk
    return data


def main():
    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1]) if "--port" in args else 0
    requests = int(args[args.index("--requests") + 1]) if "--requests" in args else 5
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", port))
    listener.listen(1)
    print(f"listening 127.0.0.1:{listener.getsockname()[1]} pid {os.getpid()}", flush=True)
    conn, _ = listener.accept()
    # All of them at once: each read below finds its request already there.
    while len(conn.recv(len(REQUEST) * requests, socket.MSG_PEEK)) < len(REQUEST) * requests:
        time.sleep(0.01)
    for _ in range(requests):
        read_exactly(conn, len(REQUEST))
        conn.sendall(RESPONSE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pass


if __name__ == "__main__":
    main()
