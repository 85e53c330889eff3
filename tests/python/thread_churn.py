#!/usr/bin/env python3
"""A target that creates short-lived threads without end, each holding a shared lock for
1 ms: hundreds of threads a second, each with its own futexes, nearly all of them waiting on
the shared one (started 16 at a time, each batch queues on it). Prints `churning pid PID`
once started. The tracer's memory and output must stay bounded."""
import os
import threading
import time

SHARED = threading.Lock()


def work():
    with SHARED:
        time.sleep(0.001)


def main():
    print(f"churning pid {os.getpid()}", flush=True)
    while True:
        batch = [threading.Thread(target=work) for _ in range(16)]
        for t in batch:
            t.start()
        for t in batch:
            t.join()


if __name__ == "__main__":
    main()
