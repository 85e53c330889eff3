#!/usr/bin/env python3
"""A target that creates short-lived threads without end, as fast as Python can start them
(thousands a second here), each with its own futexes, nearly all of them waiting on a shared
lock: each takes it and yields the interpreter while holding it, and they are started 64
at a time, so each batch queues on it. The tracer's memory and output must stay bounded.

    thread_churn.py [serve --port P]

Prints `listening 127.0.0.1:PORT pid PID` (the port of a socket it never serves, so the
tests start it like any other target)."""
import os
import socket
import threading
import time

SHARED = threading.Lock()


def work():
    with SHARED:
        time.sleep(0)  # lets the rest of the batch run into the held lock


def main():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    host, port = listener.getsockname()
    print(f"listening {host}:{port} pid {os.getpid()}", flush=True)
    while True:
        batch = [threading.Thread(target=work) for _ in range(64)]
        for t in batch:
            t.start()
        for t in batch:
            t.join()


if __name__ == "__main__":
    main()
