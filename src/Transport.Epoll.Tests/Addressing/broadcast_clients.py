#!/usr/bin/env python3
"""The clients of BroadcastTests' broadcast to 10,000 connections, in a process of their own.

Why a child process: a test that holds both ends of every connection needs two fds per connection, and the hard
RLIMIT_NOFILE on the test machines (20,000) then caps the test below 10,000 connections. Here the test process holds
only the server's end, this process only the client's.

Usage: broadcast_clients.py HOST PORT COUNT EXPECTED_HEX CHECKPOINTS TIMEOUT_SECONDS
  EXPECTED_HEX: the bytes every connection must receive, whole, in order, and nothing else
  CHECKPOINTS: comma-separated byte offsets into EXPECTED (or "-"), so the test can wait for one broadcast to be
  delivered before it sends the next
  TIMEOUT_SECONDS: bounds each of the two phases below

Protocol (one line each on stdout, flushed; problems go to stderr and a non-zero exit):
  connected N in S s                   every connection is established (connect returned), after S seconds
  reached K                            for each checkpoint K, in order: every connection holds at least K bytes (or
                                       already went wrong, which the next line counts)
  received exact=N short=N wrong=N eof=N reset=N
                                       every connection either holds exactly EXPECTED (exact), or holds bytes that
                                       are not a prefix of it (wrong), or ended early (eof, reset), or the deadline
                                       passed with part of it (short)
then waits for the line "close" on stdin, half-closes every connection (the server's handler ends on the FIN and the
server closes), reads each to its end and prints
  closed clean=N extra=N reset=N timeout=N
                                       clean: nothing arrived after EXPECTED before the server's FIN; extra: something
                                       did
and exits 0.

Standard library only (python3, 3.11+).
"""

import bisect
import errno
import os
import resource
import selectors
import socket
import sys
import time


# Connects started and not yet established at any time: enough that a dropped SYN does not hold up the rest.
CONNECTS_IN_FLIGHT = 128


def fail(message):
    print(message, file=sys.stderr, flush=True)
    sys.exit(2)


def raise_fd_limit(needed):
    # Each connection is one fd here; the soft limit is raised to the hard one (setrlimit(2): an unprivileged process
    # may raise its soft limit up to its hard limit), and a hard limit that is too low fails loudly.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = hard if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as error:
            fail(f"setrlimit(RLIMIT_NOFILE, {target}) failed: {error}")
        soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        fail(f"RLIMIT_NOFILE is {soft} (hard {hard}): {needed} fds are needed for the connections")


def connect_all(family, address, count, deadline):
    """Opens count connections, up to CONNECTS_IN_FLIGHT at a time, and returns them (non-blocking)."""
    # Non-blocking connects, many at once: when the server's accept queue is full the kernel drops the SYN and that
    # connect is retried about a second later (the initial retransmission timeout, RFC 6298); the others go on meanwhile
    # instead of waiting behind it, as blocking connects one at a time would.
    connections = []
    selector = selectors.DefaultSelector()
    connecting = 0
    done = 0
    while done < count:
        while len(connections) < count and connecting < CONNECTS_IN_FLIGHT:
            client = socket.socket(family, socket.SOCK_STREAM)
            client.setblocking(False)
            error = client.connect_ex(address)
            connections.append(client)
            if error == 0:
                done += 1
            elif error == errno.EINPROGRESS:
                selector.register(client, selectors.EVENT_WRITE, len(connections))
                connecting += 1
            else:
                fail(f"connect {len(connections)} of {count} failed: {os.strerror(error)}")
        if time.monotonic() >= deadline:
            fail(f"{done} of {count} connected when the deadline passed")
        for key, _ in selector.select(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
            # connect(2): writable once the connection is established or failed; SO_ERROR says which.
            selector.unregister(key.fileobj)
            connecting -= 1
            error = key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                fail(f"connect {key.data} of {count} failed: {os.strerror(error)}")
            done += 1
    selector.close()
    return connections


def readable_chunks(selector, connections, deadline, still_open):
    """Yields (i, bytes) for each connection that became readable while still_open() and before the deadline:
    b"" at EOF, None when the peer reset it."""
    while still_open() and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
            i = key.data
            try:
                yield i, connections[i].recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                yield i, None


def main():
    if len(sys.argv) != 7:
        fail(__doc__)
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    expected = bytes.fromhex(sys.argv[4])
    checkpoints = [] if sys.argv[5] == "-" else sorted(int(k) for k in sys.argv[5].split(","))
    timeout = float(sys.argv[6])
    deadline = time.monotonic() + timeout
    raise_fd_limit(count + 64)

    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    started = time.monotonic()
    connections = connect_all(family, address, count, deadline)
    print(f"connected {len(connections)} in {time.monotonic() - started:.2f} s", flush=True)

    # Phase 1: read until every connection holds exactly the expected bytes, or went wrong.
    received = [bytearray() for _ in connections]
    state = ["pending"] * count
    selector = selectors.DefaultSelector()
    for i, client in enumerate(connections):
        selector.register(client, selectors.EVENT_READ, i)
    pending = count
    # passed[i]: how many checkpoints connection i is past; reached[k]: how many connections are past checkpoint k.
    passed = [0] * count
    reached = [0] * len(checkpoints)
    reported = 0
    for i, chunk in readable_chunks(selector, connections, deadline, lambda: pending > 0):
        if chunk is None:
            state[i] = "reset"
        elif not chunk:
            state[i] = "eof"
        else:
            received[i] += chunk
            if not expected.startswith(received[i]):
                state[i] = "wrong"
            elif len(received[i]) == len(expected):
                state[i] = "exact"
        now_passed = len(checkpoints) if state[i] != "pending" else bisect.bisect_right(checkpoints, len(received[i]))
        for k in range(passed[i], now_passed):
            reached[k] += 1
        passed[i] = now_passed
        while reported < len(checkpoints) and reached[reported] == count:
            print(f"reached {checkpoints[reported]}", flush=True)
            reported += 1
        if state[i] != "pending":
            selector.unregister(connections[i])
            pending -= 1
    for i in range(count):
        if state[i] == "pending":
            state[i] = "short"
    for kind in ("wrong", "short", "eof", "reset"):
        bad = [i for i in range(count) if state[i] == kind]
        if bad:
            i = bad[0]
            print(f"{len(bad)} connections {kind}; the first, #{i}, holds {len(received[i])} of {len(expected)} bytes: "
                  f"{bytes(received[i][:200])!r}", file=sys.stderr, flush=True)
    counts = {kind: state.count(kind) for kind in ("exact", "short", "wrong", "eof", "reset")}
    print("received " + " ".join(f"{kind}={n}" for kind, n in counts.items()), flush=True)

    # Phase 2: on the test's word, half-close everything and read each connection to its end: nothing may follow.
    line = sys.stdin.readline()
    if line.strip() != "close":
        fail(f"expected 'close' on stdin, read {line!r}")
    selector.close()
    selector = selectors.DefaultSelector()
    deadline = time.monotonic() + timeout
    extra_bytes = [0] * count
    ended = ["open"] * count
    for i, client in enumerate(connections):
        try:
            client.shutdown(socket.SHUT_WR)
            selector.register(client, selectors.EVENT_READ, i)
        except OSError:
            ended[i] = "reset"
    open_count = ended.count("open")
    for i, chunk in readable_chunks(selector, connections, deadline, lambda: open_count > 0):
        if chunk is None:
            ended[i] = "reset"
        elif chunk:
            extra_bytes[i] += len(chunk)
            continue
        if ended[i] == "open":
            ended[i] = "extra" if extra_bytes[i] else "clean"
        selector.unregister(connections[i])
        open_count -= 1
    for i in range(count):
        if ended[i] == "open":
            ended[i] = "timeout"
    extras = [i for i in range(count) if extra_bytes[i]]
    if extras:
        print(f"{len(extras)} connections received bytes after the expected ones; #{extras[0]}: {extra_bytes[extras[0]]} bytes",
              file=sys.stderr, flush=True)
    for client in connections:
        client.close()
    counts = {kind: ended.count(kind) for kind in ("clean", "extra", "reset", "timeout")}
    print("closed " + " ".join(f"{kind}={n}" for kind, n in counts.items()), flush=True)


if __name__ == "__main__":
    main()
