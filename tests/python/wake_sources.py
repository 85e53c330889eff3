#!/usr/bin/env python3
"""Target of tests/tests/wakers.rs's wake-source test: two threads that block until something
outside the process wakes them.

- `udp-reader` blocks receiving datagrams on a UDP socket on loopback: each datagram's arrival
  wakes it from the softirq that delivers the packet, whatever task that softirq ran on.
- `fifo-reader` blocks reading a FIFO (argv[1], created here): each write wakes it in the
  writer's own context.

Prints `listening 127.0.0.1:<udp port> pid <pid>`, then each thread takes argv[2] wakeups and
ends; the process waits to be killed.
"""

import ctypes
import os
import socket
import sys
import threading

PR_SET_NAME = 15


def name_this_thread(name):
    ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode(), 0, 0, 0)


def udp_reader(sock, count):
    name_this_thread("udp-reader")
    for _ in range(count):
        sock.recvfrom(64)


def fifo_reader(path, count):
    name_this_thread("fifo-reader")
    with open(path, "rb", buffering=0) as fifo:  # waits for the writer to open it
        for _ in range(count):
            if not fifo.read(1):
                return


def main():
    path, count = sys.argv[1], int(sys.argv[2])
    os.mkfifo(path)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    threads = [
        threading.Thread(target=udp_reader, args=(sock, count)),
        threading.Thread(target=fifo_reader, args=(path, count)),
    ]
    for t in threads:
        t.start()
    print(f"listening 127.0.0.1:{sock.getsockname()[1]} pid {os.getpid()}", flush=True)
    for t in threads:
        t.join()
    threading.Event().wait()


if __name__ == "__main__":
    main()
