"""Which local process sent a request: the simulator's view of "who polls this key".

Benchmarks and the cluster tests run several ``poller run`` instances against one simulated
broker and must show, at the broker, that two instances never poll one API key at once. A
loopback TCP peer is a socket of some local process: its port appears in
``/proc/net/tcp`` with an inode, and exactly one process holds ``socket:[inode]`` among its
file descriptors. Looked up once per TCP connection (keep-alive carries many requests).
Linux only; elsewhere, or for a process we may not inspect, the answer is None.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def socket_inode(peer_port: int, server_port: int) -> int | None:
    """The inode of the local socket bound to ``peer_port`` and connected to
    ``server_port`` (IPv4 or IPv6 loopback), or None."""
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, remote = fields[1], fields[2]
            if (int(local.rsplit(":", 1)[1], 16) == peer_port
                    and int(remote.rsplit(":", 1)[1], 16) == server_port):
                return int(fields[9])
    return None


def pid_of_socket(inode: int) -> int | None:
    """The process holding socket ``inode`` among its file descriptors, or None."""
    target = f"socket:[{inode}]"
    me = os.getpid()
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    return int(entry.name)
            except OSError:
                continue
    return None


def pid_of_peer(peer_port: int, server_port: int) -> int | None:
    """The local process on the other end of a loopback connection, or None."""
    inode = socket_inode(peer_port, server_port)
    return None if inode is None else pid_of_socket(inode)
