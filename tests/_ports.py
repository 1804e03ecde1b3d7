"""Ports for the servers tests start (Ray heads, Airflow), picked so that races are unlikely.

Binding port 0 and releasing it hands out a port from the kernel's ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 on Linux), the range every outgoing
connection on the machine also draws from: between the release and the server's own bind, another
process's connection (PostgreSQL, HTTP, Ray's own workers) can take it. `free_port` picks below that
range instead, at a random place (parallel test sessions rarely meet), and checks that nothing
listens there or is bound to it.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOW, _HIGH = 20_000, 32_000  # below the default ephemeral range and above well-known services


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32_768, 60_999


def free_port(attempts: int = 200) -> int:
    """A TCP port on 127.0.0.1 outside the ephemeral range that is free right now."""
    low, high = _ephemeral_range()
    rng = random.SystemRandom()
    for _ in range(attempts):
        port = rng.randrange(_LOW, _HIGH)
        if low <= port <= high:
            continue
        with socket.socket() as sock:  # no SO_REUSEADDR: a port in TIME_WAIT counts as taken
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port found in {_LOW}-{_HIGH} after {attempts} attempts")
