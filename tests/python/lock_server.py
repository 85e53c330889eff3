#!/usr/bin/env python3
"""A third-party threaded server for the tracer's waker tests: CPython's own threads, locks and
http.server, nothing of ours inside.

    lock_server.py serve --port P

Prints `listening 127.0.0.1:PORT pid PID`, then serves HTTP/1.1 keep-alive:
  /lock?ms=N   takes one process-wide threading.Lock and holds it N ms: concurrent requests
               hand the lock from one server thread to the next.
A `ticker` thread meanwhile waits, again and again, 20 ms with a timeout on a lock that the
main thread holds for ever: only the timer can end those waits.
"""
import ctypes
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

HANDOFF = threading.Lock()
NEVER_RELEASED = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urlparse(self.path)
        if url.path != "/lock":
            self.reply(404, b"not found\n")
            return
        ms = int(parse_qs(url.query).get("ms", ["0"])[0])
        start = time.monotonic_ns()
        with HANDOFF:
            time.sleep(ms / 1000)
        self.reply(200, b"ok\n", {"X-Handler-Ns": str(time.monotonic_ns() - start)})

    def reply(self, status, body, headers=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def ticker():
    # The thread's name in the kernel (comm), so the test can find its lock: PR_SET_NAME.
    ctypes.CDLL(None).prctl(15, b"ticker", 0, 0, 0)
    while True:
        NEVER_RELEASED.acquire(timeout=0.02)


def main():
    port = 0
    args = sys.argv[1:]
    if args[:1] == ["serve"]:
        args = args[1:]
    if len(args) >= 2 and args[0] == "--port":
        port = int(args[1])
    NEVER_RELEASED.acquire()
    threading.Thread(target=ticker, name="ticker", daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    host, port = server.server_address
    print(f"listening {host}:{port} pid {threading.get_native_id()}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
