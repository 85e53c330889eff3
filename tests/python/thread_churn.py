#!/usr/bin/env python3
"""A target that creates short-lived threads without end, each taking a shared lock once:
thousands of threads a second, each with its own futexes, all waiting on one. Prints
`churning pid PID` once started. The tracer's memory and output must stay bounded."""
import os
import threading

SHARED = threading.Lock()


def work():
    with SHARED:
        pass


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
